package main

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// One day of use, as applied by --day.
const (
	dayMessages   = 1500     // new messages
	dayChats      = 30       // in this many chats
	dayMediaBytes = 40 << 20 // new media files
	dayDeletes    = 10       // old media files deleted
	dayRecent     = 3000     // most recent messages whose read status is updated
	dayUnread     = 30       // of the day's last messages stay unread until the next day
	dayBurst      = 5        // at most this many messages per transaction
)

// dayStats summarises a day.
type dayStats struct {
	messages, mediaMessages, chats int
	mediaBytes                     int64 // of the new media files
	deleted                        int
	deletedBytes                   int64
	dbBytes                        int64 // msgstore.db afterwards
}

// applyDay applies day number day to the dataset in c.out, as the chat app
// would through SQLite in WAL mode: new messages with their full-text rows,
// receipts and media (files and rows), read-status updates of the recent
// messages, and a few old media files deleted. It ends with a TRUNCATE
// checkpoint, so msgstore.db alone holds the state. Everything drawn comes
// from (c.seed, day) and the dataset's state.
func applyDay(ctx context.Context, c config, day int) (dayStats, error) {
	var st dayStats
	dbPath := filepath.Join(c.out, "msgstore.db")
	mediaDir := filepath.Join(c.out, "Media")
	if fi, err := os.Stat(dbPath); err != nil || !fi.Mode().IsRegular() {
		return st, fmt.Errorf("%s holds no dataset (no msgstore.db)", c.out)
	}
	if fi, err := os.Stat(mediaDir); err != nil || !fi.IsDir() {
		return st, fmt.Errorf("%s holds no dataset (no Media/)", c.out)
	}
	// Read the header before opening the database for writing: a sample in
	// rollback-journal mode (or any other file) is left alone.
	if hdr, err := readHeader(dbPath); err != nil {
		return st, err
	} else if string(hdr[:16]) != "SQLite format 3\x00" {
		return st, fmt.Errorf("%s is not an SQLite database", dbPath)
	} else if hdr[18] != 2 || hdr[19] != 2 {
		return st, fmt.Errorf("%s is not in WAL mode (a --small sample?)", dbPath)
	}
	uri, err := sqliteURI(dbPath, "mode=rw", "_pragma=busy_timeout(10000)", "_pragma=synchronous(NORMAL)")
	if err != nil {
		return st, err
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		return st, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if err := checkDayDB(db, day); err != nil {
		return st, fmt.Errorf("%s: %w", dbPath, err)
	}

	d := &dayRun{db: db, c: c, day: day, mediaDir: mediaDir,
		r: rand.New(rand.NewPCG(c.seed, 0x646179<<16|uint64(day)))}
	if err := d.load(); err != nil {
		return st, err
	}
	media := d.planMedia()
	if err := writeMedia(ctx, mediaDir, media); err != nil {
		return st, err
	}
	if err := d.messages(ctx, media); err != nil {
		return st, err
	}
	if err := d.readStatus(ctx); err != nil {
		return st, err
	}
	if err := d.deleteMedia(ctx); err != nil {
		return st, err
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO props(key, value) VALUES ('gen_day', ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, strconv.Itoa(day)); err != nil {
		return st, err
	}
	var busy, logPages, done int
	if err := db.QueryRow("PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logPages, &done); err != nil {
		return st, fmt.Errorf("checkpoint: %w", err)
	}
	if busy != 0 {
		return st, errors.New("checkpoint: database busy")
	}
	if err := db.Close(); err != nil {
		return st, err
	}
	if err := waDay(ctx, c.out, c.seed, day); err != nil {
		return st, fmt.Errorf("wa.db: %w", err)
	}
	fi, err := os.Stat(dbPath)
	if err != nil {
		return st, err
	}
	st = d.st
	st.dbBytes = fi.Size()
	for _, f := range media {
		st.mediaBytes += f.size
	}
	return st, nil
}

// readHeader reads the first 100 bytes of an SQLite database.
func readHeader(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hdr := make([]byte, 100)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return hdr, nil
}

// checkDayDB checks that db is a full-size dataset in WAL mode to which
// day has not been applied yet.
func checkDayDB(db *sql.DB, day int) error {
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if mode != "wal" {
		return fmt.Errorf("journal_mode is %s, want wal (a --small sample?)", mode)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table'
		AND name IN ('message', 'message_media', 'message_thumbnail', 'chat', 'props', 'message_ftsv2', 'receipt_user')`).Scan(&n); err != nil {
		return err
	}
	if n != 7 {
		return errors.New("not a full-size dataset of this generator (tables missing)")
	}
	var last sql.NullString
	if err := db.QueryRow(`SELECT value FROM props WHERE key = 'gen_day'`).Scan(&last); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if k, _ := strconv.Atoi(last.String); last.Valid && k >= day {
		return fmt.Errorf("day %d already applied (days up to %d are)", day, k)
	}
	return nil
}

// dayRun is the state of one day being applied.
type dayRun struct {
	db       *sql.DB
	c        config
	day      int
	mediaDir string
	r        *rand.Rand
	g        *dbGen
	maxID    int       // the last message before the day
	start    time.Time // of the day's messages
	st       dayStats
}

// load reads the chats and picks the day's, and sets up the message
// writer.
func (d *dayRun) load() error {
	var maxID, lastTS int64
	if err := d.db.QueryRow(`SELECT ifnull(max(_id), 0), ifnull(max(timestamp), 0) FROM message`).Scan(&maxID, &lastTS); err != nil {
		return err
	}
	d.maxID = int(maxID)
	// The day starts at 7:00 on the day after the last message.
	d.start = time.UnixMilli(lastTS).UTC().Truncate(24 * time.Hour).Add(31 * time.Hour)

	rows, err := d.db.Query(`SELECT c._id, c.jid_row_id, j.server = 'g.us' FROM chat c JOIN jid j ON j._id = c.jid_row_id
		ORDER BY c.sort_timestamp DESC, c._id`)
	if err != nil {
		return err
	}
	var all []chatInfo
	var groupJIDs []int // of each chat, 0 for a one-to-one chat
	for rows.Next() {
		var ci chatInfo
		var jid int
		if err := rows.Scan(&ci.id, &jid, &ci.group); err != nil {
			rows.Close()
			return err
		}
		gjid := 0
		if ci.group {
			gjid = jid
		} else {
			ci.members = []int{jid}
		}
		all = append(all, ci)
		groupJIDs = append(groupJIDs, gjid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, gjid := range groupJIDs {
		if gjid == 0 {
			continue
		}
		rows, err := d.db.Query(`SELECT user_jid_row_id FROM group_participant_user WHERE group_jid_row_id = ? ORDER BY _id`, gjid)
		if err != nil {
			return err
		}
		for rows.Next() {
			var m int
			if err := rows.Scan(&m); err != nil {
				rows.Close()
				return err
			}
			all[i].members = append(all[i].members, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	all = slices.DeleteFunc(all, func(c chatInfo) bool { return len(c.members) == 0 })
	if len(all) == 0 {
		return errors.New("the dataset has no chats")
	}

	// The day's chats: mostly the recent ones (Zipf over the chats by last
	// activity), busiest first.
	var chats []chatInfo
	taken := map[int]bool{}
	z := rand.NewZipf(d.r, 1.1, 2, uint64(len(all)-1))
	for len(chats) < min(dayChats, len(all)) {
		if i := int(z.Uint64()); !taken[i] {
			taken[i] = true
			chats = append(chats, all[i])
		}
	}
	g := &dbGen{db: d.db, p: &profile{realistic: true, thumbMax: 8 << 10}, r: d.r, chats: chats,
		nextID: d.maxID + 1, now: d.start, keySalt: keySalt(d.c.seed), unread: true}
	g.pick = rand.NewZipf(d.r, 1.1, 1, uint64(len(chats)-1))
	g.words = rand.NewZipf(d.r, 1.1, 2, uint64(len(vocabulary)-1))
	d.g = g
	d.st.chats = len(chats)
	tx, err := d.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := createRecipients(tx, chats); err != nil {
		return err
	}
	return tx.Commit()
}

// planMedia draws the day's media files, named as WhatsApp would and
// different from every file already there.
func (d *dayRun) planMedia() []*mediaFile {
	end := d.start.Add(16 * time.Hour)
	files := planMedia(d.r, d.start, end, drawMedia(d.r, dayMediaBytes))
	taken := map[string]bool{}
	for _, f := range files {
		taken[f.rel] = true
	}
	exists := func(rel string) bool {
		_, err := os.Lstat(filepath.Join(d.mediaDir, filepath.FromSlash(rel)))
		return err == nil
	}
	var out []*mediaFile
	for _, f := range files {
		if !exists(f.rel) {
			out = append(out, f)
			continue
		}
		if f.kind == nomedia {
			continue // the folder has its marker already
		}
		dir, name := path.Split(f.rel)
		ext := path.Ext(name)
		base := strings.TrimSuffix(name, ext)
		for i := 1; ; i++ {
			rel := fmt.Sprintf("%s%s (%d)%s", dir, base, i, ext)
			if !taken[rel] && !exists(rel) {
				f.rel = rel
				taken[rel] = true
				break
			}
		}
		out = append(out, f)
	}
	return out
}

// dayEvent is one message of the day.
type dayEvent struct {
	when  time.Time
	media *mediaFile // nil: a text message
}

// messages writes the day's messages in small transactions, a burst of one
// to dayBurst messages in one chat each.
func (d *dayRun) messages(ctx context.Context, media []*mediaFile) error {
	var events []dayEvent
	for _, f := range media {
		if f.kind != nomedia {
			events = append(events, dayEvent{when: f.when, media: f})
		}
	}
	span := int64(16 * time.Hour)
	for len(events) < dayMessages {
		events = append(events, dayEvent{when: d.start.Add(time.Duration(d.r.Int64N(span)))})
	}
	slices.SortStableFunc(events, func(a, b dayEvent) int { return a.when.Compare(b.when) })
	g := d.g
	for len(events) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(len(events), 1+d.r.IntN(dayBurst))
		if err := d.burst(int(g.pick.Uint64()), events[:n]); err != nil {
			return err
		}
		events = events[n:]
	}
	return nil
}

// burst writes one transaction's messages, all in chat g.chats[chatIdx].
func (d *dayRun) burst(chatIdx int, events []dayEvent) error {
	g := d.g
	tx, err := d.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ins, err := newInserter(tx)
	if err != nil {
		return err
	}
	defer ins.close()
	first := g.nextID
	received := 0
	type hashed struct {
		id   int
		hash [32]byte
	}
	var hashes []hashed
	for _, ev := range events {
		g.now = ev.when
		if ev.media != nil {
			f := ev.media
			hashes = append(hashes, hashed{g.nextID, f.hash})
			if !f.fromMe {
				received++
			}
			err = g.mediaIn(ins, f, chatIdx)
			d.st.mediaMessages++
		} else {
			fromMe := g.r.IntN(10) < 4
			if !fromMe {
				received++
			}
			err = g.textIn(ins, chatIdx, fromMe)
		}
		if err != nil {
			return err
		}
		d.st.messages++
	}
	if err := ins.flush(); err != nil {
		return err
	}
	if err := complete(tx, first, false); err != nil {
		return err
	}
	for _, h := range hashes {
		if _, err := tx.Exec(`UPDATE message_media SET file_hash = ? WHERE message_row_id = ?`,
			base64.StdEncoding.EncodeToString(h.hash[:]), h.id); err != nil {
			return err
		}
	}
	last := g.nextID - 1
	if _, err := tx.Exec(`UPDATE chat SET last_message_row_id = ?1, display_message_row_id = ?1, sort_timestamp = ?2,
		unseen_message_count = ifnull(unseen_message_count, 0) + ?3 WHERE _id = ?4`,
		last, g.now.UnixMilli(), received, g.chats[chatIdx].id); err != nil {
		return err
	}
	return tx.Commit()
}

// readStatus marks the most recent messages I sent as read, with their
// receipts, in transactions of a few hundred messages; the day's last few
// stay unread until the next day.
func (d *dayRun) readStatus(ctx context.Context) error {
	last := d.g.nextID - 1
	from, to := max(0, last-dayRecent), last-dayUnread
	const step = 250
	for lo := from; lo < to; lo += step {
		hi := min(lo+step, to)
		tx, err := d.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, q := range []string{
			`UPDATE message SET status = 13 WHERE _id > ?1 AND _id <= ?2 AND from_me = 1 AND status <> 13`,
			`UPDATE receipt_user SET read_timestamp = receipt_timestamp + 2000 + (_id * 2654435761) % 3600000
				WHERE message_row_id > ?1 AND message_row_id <= ?2 AND read_timestamp IS NULL`,
			`UPDATE receipt_user SET played_timestamp = read_timestamp + 1000 + (_id * 40503) % 60000
				WHERE message_row_id IN (SELECT _id FROM message WHERE _id > ?1 AND _id <= ?2 AND message_type = 2)
				AND played_timestamp IS NULL`,
			`UPDATE chat SET last_read_message_row_id = (SELECT max(_id) FROM message WHERE chat_row_id = chat._id AND _id <= ?2),
				unseen_message_count = 0
				WHERE _id IN (SELECT DISTINCT chat_row_id FROM message WHERE _id > ?1 AND _id <= ?2)`,
		} {
			if _, err := tx.Exec(q, lo, hi); err != nil {
				tx.Rollback()
				return err
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// deleteMedia deletes dayDeletes media files of the older three quarters of
// the messages, with their message_media rows, one transaction each.
func (d *dayRun) deleteMedia(ctx context.Context) error {
	rows, err := d.db.QueryContext(ctx, `SELECT message_row_id, file_path, file_size FROM message_media
		WHERE file_path LIKE 'Media/%' AND message_row_id <= ? ORDER BY message_row_id`, d.maxID/4*3)
	if err != nil {
		return err
	}
	type old struct {
		id   int
		path string
		size int64
	}
	var olds []old
	for rows.Next() {
		var o old
		if err := rows.Scan(&o.id, &o.path, &o.size); err != nil {
			rows.Close()
			return err
		}
		olds = append(olds, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, i := range d.r.Perm(len(olds))[:min(dayDeletes, len(olds))] {
		o := olds[i]
		if _, err := d.db.ExecContext(ctx, `DELETE FROM message_media WHERE message_row_id = ?`, o.id); err != nil {
			return err
		}
		p := filepath.Join(d.c.out, filepath.FromSlash(o.path))
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		d.st.deleted++
		d.st.deletedBytes += o.size
	}
	return nil
}
