package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// config is what the command line asks for.
type config struct {
	out        string
	dbBytes    int64 // fill msgstore.db to at least this size
	mediaBytes int64 // total size of the media files
	seed       uint64
	small      bool // the committed sample instead
}

// stats summarises what generate wrote.
type stats struct {
	dbBytes    int64
	messages   int
	mediaFiles int
	mediaBytes int64
}

type mediaKind int

const (
	image mediaKind = iota
	video
	voice
	document
	nomedia // the empty .nomedia marker WhatsApp keeps in some folders
)

// kindInfo describes each kind of media as WhatsApp stores it.
var kindInfo = [...]struct {
	dir, prefix, ext, mime string
	msgType                int     // message.message_type
	minSize, maxSize       int64   // realistic size range
	share                  float64 // of the media bytes
}{
	image:    {"WhatsApp Images", "IMG", ".jpg", "image/jpeg", 1, 100 << 10, 4 << 20, 0.45},
	video:    {"WhatsApp Video", "VID", ".mp4", "video/mp4", 3, 2 << 20, 40 << 20, 0.42},
	voice:    {"WhatsApp Voice Notes", "PTT", ".opus", "audio/ogg; codecs=opus", 2, 5 << 10, 200 << 10, 0.015},
	document: {"WhatsApp Documents", "", ".pdf", "application/pdf", 9, 50 << 10, 5 << 20, 0.115},
	nomedia:  {"", "", "", "", 0, 0, 0, 0},
}

// mediaFile is one planned file under Media/.
type mediaFile struct {
	kind    mediaKind
	rel     string // slash-separated, relative to Media/
	size    int64
	when    time.Time
	fromMe  bool   // lives in a Sent/ folder
	docName string // original name of a document
	seed    uint64 // of the file's content
	hash    [32]byte
}

// profile fixes the shape of a dataset.
type profile struct {
	contacts, groups int
	start, end       time.Time
	messages         int   // > 0: exactly this many text messages
	dbBytes          int64 // else: until msgstore.db reaches this size
	journal          string
	thumbMax         int  // largest thumbnail blob
	realistic        bool // the full schema: key_id index, FTS, receipts
	media            []*mediaFile
}

func newProfile(c config) *profile {
	if c.small {
		p := &profile{
			contacts: 5, groups: 2,
			start:    time.Date(2024, 3, 10, 8, 0, 0, 0, time.UTC),
			end:      time.Date(2024, 3, 16, 22, 0, 0, 0, time.UTC),
			messages: 200, journal: "DELETE", thumbMax: 900,
		}
		r := rand.New(rand.NewPCG(c.seed, 0x736d616c6c))
		p.media = planMedia(r, p.start, p.end, []*mediaFile{
			{kind: image, size: 6<<10 + 123},
			{kind: image, size: 4<<10 + 7, fromMe: true},
			{kind: video, size: 9 << 10},
			{kind: voice, size: 3<<10 + 500},
			{kind: document, size: 5 << 10, docName: "Präsentation – Grüße 😀 日本.pdf"},
		})
		return p
	}
	p := &profile{
		contacts: 80, groups: 18,
		start:   time.Date(2019, 6, 1, 0, 0, 0, 0, time.UTC),
		end:     time.Date(2024, 11, 30, 0, 0, 0, 0, time.UTC),
		dbBytes: c.dbBytes, journal: "WAL", thumbMax: 8 << 10,
		realistic: true,
	}
	r := rand.New(rand.NewPCG(c.seed, 0x6d65646961))
	p.media = planMedia(r, p.start, p.end, drawMedia(r, c.mediaBytes))
	return p
}

// drawMedia picks kinds and log-uniform sizes until they add up to exactly
// budget bytes. Kinds are drawn so that each gets about its share of the
// bytes (small voice notes are many, videos few).
func drawMedia(r *rand.Rand, budget int64) []*mediaFile {
	var weights [document + 1]float64
	sum := 0.0
	for k := range weights {
		ki := kindInfo[k]
		mean := float64(ki.maxSize-ki.minSize) / math.Log(float64(ki.maxSize)/float64(ki.minSize))
		weights[k] = ki.share / mean
		sum += weights[k]
	}
	var files []*mediaFile
	for total := int64(0); total < budget; {
		// One of each kind first, so that even a small dataset has all.
		k := mediaKind(len(files))
		if k > document {
			u := r.Float64() * sum
			for k = image; k < document && u >= weights[k]; k++ {
				u -= weights[k]
			}
		}
		ki := kindInfo[k]
		size := int64(float64(ki.minSize) * math.Pow(float64(ki.maxSize)/float64(ki.minSize), r.Float64()))
		fromMe := r.IntN(10) < 3
		if len(files) <= int(document) {
			// Leave room for the rest, and have a Sent/ folder.
			size = min(size, budget/8)
			fromMe = k == image
		}
		size = min(size, budget-total)
		files = append(files, &mediaFile{kind: k, size: size, fromMe: fromMe})
		total += size
	}
	return files
}

var docNames = []string{
	"Rechnung 2023-04", "Boarding pass", "Mietvertrag Entwurf", "CV – Jane Doe",
	"Überweisung", "会议记录", "Menu 🍕", "Einladung Hochzeit", "Tickets", "scan",
	"Arbeitsvertrag", "Impfpass", "Kontoauszug", "Präsentation Q3", "Itinerary",
	"Lebenslauf", "Angebot Küche", "Steuererklärung", "Флаер", "صورة الهوية",
}

// planMedia gives each file a time, a seed and its WhatsApp path, and adds
// the .nomedia markers.
func planMedia(r *rand.Rand, start, end time.Time, files []*mediaFile) []*mediaFile {
	span := end.Sub(start)
	for _, f := range files {
		f.when = start.Add(time.Duration(r.Int64N(int64(span)))).Truncate(time.Second)
		f.seed = r.Uint64()
		if f.kind == document && f.docName == "" {
			f.docName = docNames[r.IntN(len(docNames))] + ".pdf"
		}
	}
	slices.SortStableFunc(files, func(a, b *mediaFile) int { return a.when.Compare(b.when) })

	counters := map[string]int{}
	used := map[string]bool{}
	sentDirs := map[string]bool{}
	for _, f := range files {
		ki := kindInfo[f.kind]
		dir := ki.dir
		if f.kind == voice {
			y, w := f.when.ISOWeek()
			dir += fmt.Sprintf("/%04d%02d", y, w)
		}
		if f.fromMe && f.kind != voice {
			dir += "/Sent"
			sentDirs[dir] = true
		}
		var name string
		if f.kind == document {
			name = f.docName
			base := strings.TrimSuffix(name, ".pdf")
			for i := 1; used[dir+"/"+name]; i++ {
				name = fmt.Sprintf("%s (%d).pdf", base, i)
			}
		} else {
			day := f.when.Format("20060102")
			key := ki.prefix + day
			name = fmt.Sprintf("%s-%s-WA%04d%s", ki.prefix, day, counters[key], ki.ext)
			counters[key]++
		}
		f.rel = dir + "/" + name
		used[f.rel] = true
	}
	dirs := make([]string, 0, len(sentDirs))
	for d := range sentDirs {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		files = append(files, &mediaFile{kind: nomedia, rel: d + "/.nomedia", when: start})
	}
	return files
}

// generate writes the dataset into c.out.
func generate(ctx context.Context, c config) (stats, error) {
	var st stats
	dbPath := filepath.Join(c.out, "msgstore.db")
	mediaDir := filepath.Join(c.out, "Media")
	for _, p := range []string{dbPath, dbPath + "-wal", dbPath + "-journal", mediaDir, filepath.Join(c.out, "wa.db")} {
		if _, err := os.Lstat(p); err == nil {
			return st, fmt.Errorf("%s already exists", p)
		}
	}
	if err := os.MkdirAll(mediaDir, 0o755); err != nil {
		return st, err
	}
	p := newProfile(c)

	// Media files are written in the background while the database fills.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mediaErr := make(chan error, 1)
	go func() { mediaErr <- writeMedia(ctx, mediaDir, p.media) }()

	ddl := schema
	if p.realistic {
		ddl += realisticSchema
	}
	db, err := openDB(dbPath, ddl)
	if err != nil {
		cancel()
		<-mediaErr
		return st, err
	}
	defer db.Close()
	g := &dbGen{db: db, p: p, r: rand.New(rand.NewPCG(c.seed, 0x6d7367)), keySalt: keySalt(c.seed)}
	if err := g.fill(ctx); err != nil {
		cancel()
		<-mediaErr
		return st, err
	}
	if err := <-mediaErr; err != nil {
		return st, err
	}
	if err := g.finish(ctx); err != nil {
		return st, err
	}
	people, err := waPeople(ctx, db)
	if err != nil {
		return st, err
	}
	if err := db.Close(); err != nil {
		return st, err
	}
	if err := writeWA(ctx, c.out, c.seed, p.journal, people); err != nil {
		return st, err
	}
	fi, err := os.Stat(dbPath)
	if err != nil {
		return st, err
	}
	st.dbBytes = fi.Size()
	st.messages = g.nextID - 1
	for _, f := range p.media {
		if f.kind != nomedia {
			st.mediaFiles++
			st.mediaBytes += f.size
		}
	}
	return st, nil
}

// writeMedia writes every planned file, a few at a time.
func writeMedia(ctx context.Context, root string, files []*mediaFile) error {
	work := make(chan *mediaFile)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range max(2, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for f := range work {
				if err := writeFile(root, f, buf); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
feed:
	for _, f := range files {
		select {
		case work <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// File headers and trailers that make the random payload look like the
// format its name claims.
var (
	jpegHead = []byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
	jpegTail = []byte("\xff\xd9")
	mp4Head  = []byte("\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free\x7f\xff\xff\xf8mdat")
	opusHead = []byte("OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13" +
		"OpusHead\x01\x01\x38\x01\x80\x3e\x00\x00\x00\x00\x00")
	pdfHead  = []byte("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Length 0 >>\nstream\n")
	pdfTail  = []byte("\nendstream\nendobj\n%%EOF\n")
	webpHead = []byte("RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00\xff\x01\x00\xff\x01\x00ANIM")
)

func framing(k mediaKind) (head, tail []byte) {
	switch k {
	case image, thumb:
		return jpegHead, jpegTail
	case sticker:
		return webpHead, nil
	case video:
		return mp4Head, nil
	case voice:
		return opusHead, nil
	case document:
		return pdfHead, pdfTail
	}
	return nil, nil
}

// writeFile streams one file: header, seeded random bytes, trailer, in
// blocks of len(buf) (or, for a text document, its seeded text). It records
// the content's SHA-256 in f.hash.
func writeFile(root string, f *mediaFile, buf []byte) error {
	path := filepath.Join(root, filepath.FromSlash(f.rel))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	w := io.MultiWriter(out, h)
	if f.kind == chatExport || f.kind == jsonDoc {
		_, err = w.Write(textContent(f.kind, f.seed, f.size))
	} else {
		err = writeRandom(w, f, buf)
	}
	if err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	copy(f.hash[:], h.Sum(nil))
	return os.Chtimes(path, f.when, f.when)
}

// writeRandom writes f's framed random content to w.
func writeRandom(w io.Writer, f *mediaFile, buf []byte) error {
	head, tail := framing(f.kind)
	if int64(len(head)+len(tail)) > f.size {
		head, tail = nil, nil
	}
	rng := rand.NewPCG(f.seed, 0x66696c65)
	for off := int64(0); off < f.size; {
		n := int(min(int64(len(buf)), f.size-off))
		b := buf[:n]
		fillRandom(rng, b)
		if off == 0 {
			copy(b, head)
		}
		if off+int64(n) == f.size && len(tail) > 0 {
			copy(b[n-min(n, len(tail)):], tail[max(0, len(tail)-n):])
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// fillRandom fills b from a PCG, 8 bytes per step.
func fillRandom(r *rand.PCG, b []byte) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	if i < len(b) {
		var last [8]byte
		binary.LittleEndian.PutUint64(last[:], r.Uint64())
		copy(b[i:], last[:])
	}
}

// sqliteURI makes an SQLite URI filename of any path.
func sqliteURI(path string, params ...string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	u := "file:" + esc.Replace(filepath.ToSlash(abs))
	if len(params) > 0 {
		u += "?" + strings.Join(params, "&")
	}
	return u, nil
}

// openDB creates the database for a bulk load: no journal, no syncs, one
// exclusive connection with a big cache (128 MiB) for the indexes, and
// runs ddl. finish sets the real journal mode.
func openDB(path, ddl string) (*sql.DB, error) {
	uri, err := sqliteURI(path,
		"_pragma=page_size(4096)",
		"_pragma=locking_mode(EXCLUSIVE)",
		"_pragma=journal_mode(OFF)",
		"_pragma=synchronous(OFF)",
		"_pragma=cache_size(-131072)",
		"_pragma=temp_store(MEMORY)",
	)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(ddl); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema: %w", err)
	}
	return db, nil
}

// schema follows WhatsApp's msgstore.db closely enough for a backup tool to
// see the same shapes: row ids everywhere, a few wide tables, unique and
// secondary indexes, text and small blobs.
const schema = `
CREATE TABLE jid (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	user TEXT NOT NULL, server TEXT NOT NULL,
	agent INTEGER, device INTEGER, type INTEGER, raw_string TEXT);
CREATE UNIQUE INDEX jid_key_index ON jid (user, server, agent, device);
CREATE TABLE chat (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	jid_row_id INTEGER UNIQUE, hidden INTEGER, subject TEXT,
	created_timestamp INTEGER, display_message_row_id INTEGER,
	last_message_row_id INTEGER, last_read_message_row_id INTEGER,
	archived INTEGER, sort_timestamp INTEGER, mod_tag INTEGER,
	unseen_message_count INTEGER, group_type INTEGER);
CREATE TABLE group_participant_user (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	group_jid_row_id INTEGER NOT NULL, user_jid_row_id INTEGER NOT NULL,
	rank INTEGER, pending INTEGER);
CREATE UNIQUE INDEX group_participant_user_table_idx ON group_participant_user (group_jid_row_id, user_jid_row_id);
CREATE TABLE message (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	chat_row_id INTEGER NOT NULL, from_me INTEGER NOT NULL, key_id TEXT NOT NULL,
	sender_jid_row_id INTEGER, status INTEGER, broadcast INTEGER,
	recipient_count INTEGER, participant_hash TEXT, origination_flags INTEGER,
	origin INTEGER, timestamp INTEGER, received_timestamp INTEGER,
	receipt_server_timestamp INTEGER, message_type INTEGER, text_data TEXT,
	starred INTEGER, lookup_tables INTEGER, sort_id INTEGER NOT NULL DEFAULT 0,
	message_add_on_flags INTEGER);
CREATE UNIQUE INDEX message_key_index ON message (chat_row_id, from_me, key_id, sender_jid_row_id);
CREATE INDEX message_sort_id_index ON message (sort_id);
CREATE INDEX message_chat_id_index ON message (chat_row_id, sort_id);
CREATE INDEX message_starred_index ON message (starred) WHERE starred = 1;
CREATE TABLE message_media (
	message_row_id INTEGER PRIMARY KEY, chat_row_id INTEGER,
	autotransfer_retry_enabled INTEGER, multicast_id TEXT, media_job_uuid TEXT,
	transferred INTEGER, transcoded INTEGER, file_path TEXT, file_size INTEGER,
	suspicious_content INTEGER, trim_from INTEGER, trim_to INTEGER,
	face_x INTEGER, face_y INTEGER, media_key BLOB, media_key_timestamp INTEGER,
	width INTEGER, height INTEGER, has_streaming_sidecar INTEGER,
	gif_attribution INTEGER, thumbnail_height_width_ratio REAL,
	direct_path TEXT, first_scan_sidecar BLOB, first_scan_length INTEGER,
	message_url TEXT, mime_type TEXT, file_length INTEGER, media_name TEXT,
	file_hash TEXT, media_duration INTEGER, page_count INTEGER,
	enc_file_hash TEXT, partial_media_hash TEXT, partial_media_enc_hash TEXT,
	is_animated_sticker INTEGER, original_file_hash TEXT, mute_video INTEGER,
	media_caption TEXT);
CREATE INDEX message_media_chat_index ON message_media (chat_row_id, message_row_id);
CREATE INDEX message_media_file_path_index ON message_media (file_path);
CREATE TABLE message_thumbnail (message_row_id INTEGER PRIMARY KEY, thumbnail BLOB);
CREATE TABLE props (_id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, value TEXT);
`

// realisticSchema completes schema for the full-size dataset (the committed
// sample predates it): a fifth index on message, by time (the unique
// message_key_index already holds the random key ids, so every insert
// lands at a random place of it, as in WhatsApp), WhatsApp's full-text index of
// the message text and captions (an FTS5 table, rowid = message._id), and
// the per-recipient receipts of the messages I sent.
//
// The full-text index merges its segments only 16 of a level at a time
// (automerge off, FTS5's crisismerge), as WhatsApp's FTS4 table does; FTS5's
// default incremental merging would rewrite big segments every day. fill
// merges the index into one segment (optimize) shortly before the database
// is full, as years of merges would have.
const realisticSchema = `
CREATE INDEX message_timestamp_index ON message (timestamp);
CREATE VIRTUAL TABLE message_ftsv2 USING fts5(content, tokenize='unicode61');
INSERT INTO message_ftsv2(message_ftsv2, rank) VALUES ('automerge', 0);
CREATE TABLE receipt_user (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	message_row_id INTEGER NOT NULL, receipt_user_jid_row_id INTEGER NOT NULL,
	receipt_timestamp INTEGER, read_timestamp INTEGER, played_timestamp INTEGER);
CREATE UNIQUE INDEX receipt_user_message_index ON receipt_user (message_row_id, receipt_user_jid_row_id);
`

// Statements that complete the messages from _id ?1 on (realistic schema):
// their full-text rows, and a receipt per recipient of those sent by me,
// read (?2 true) or only delivered. The delays are pseudo-random functions
// of the ids, so deterministic.
const (
	ftsInsert = `INSERT INTO message_ftsv2(rowid, content)
		SELECT _id, text_data FROM message WHERE _id >= ?1 AND text_data IS NOT NULL ORDER BY _id`
	receiptInsert = `INSERT INTO receipt_user(message_row_id, receipt_user_jid_row_id,
		receipt_timestamp, read_timestamp, played_timestamp)
		SELECT id, jid, ts + u % 4000,
			CASE WHEN ?2 AND u % 20 <> 0 THEN ts + 4000 + (u % 1000) * (u % 997) * 7 END,
			CASE WHEN ?2 AND u % 20 <> 0 AND typ = 2 THEN ts + 4000 + (u % 1000) * (u % 997) * 7 + u % 60000 END
		FROM (SELECT m._id AS id, r.jid AS jid, m.receipt_server_timestamp AS ts, m.message_type AS typ,
				(m._id * 2654435761 + r.jid * 40503) % 1000003 AS u
			FROM message m JOIN temp.recipient r ON r.chat = m.chat_row_id
			WHERE m._id >= ?1 AND m.from_me = 1)
		ORDER BY id, jid`
)

// createRecipients makes temp.recipient: who gets a message I send in each
// chat (the other members of a group, the contact of a one-to-one chat).
func createRecipients(tx *sql.Tx, chats []chatInfo) error {
	if _, err := tx.Exec(`CREATE TEMP TABLE recipient (chat INTEGER, jid INTEGER, PRIMARY KEY (chat, jid)) WITHOUT ROWID`); err != nil {
		return err
	}
	for _, c := range chats {
		for _, m := range c.members {
			if _, err := tx.Exec(`INSERT INTO temp.recipient VALUES (?, ?)`, c.id, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// complete runs ftsInsert and receiptInsert for the messages from id on.
func complete(tx *sql.Tx, id int, read bool) error {
	if _, err := tx.Exec(ftsInsert, id); err != nil {
		return fmt.Errorf("fts: %w", err)
	}
	if _, err := tx.Exec(receiptInsert, id, read); err != nil {
		return fmt.Errorf("receipts: %w", err)
	}
	return nil
}

// dbGen fills the database.
type dbGen struct {
	db     *sql.DB
	p      *profile
	r      *rand.Rand
	chats  []chatInfo
	pick   *rand.Zipf // chat of the next message
	words  *rand.Zipf // word of the vocabulary
	nextID int
	now    time.Time
	gap    float64 // mean seconds between messages
	dbSize int64   // size of the database after the last batch
	dbFull bool    // the database has reached its target size

	keySalt   uint64 // of the realistic key ids
	unread    bool   // messages I send are only delivered, not yet read
	ftsMerged bool   // the full-text index has been optimized
}

type chatInfo struct {
	id      int
	group   bool
	members []int // jid row ids of the other participants
}

const (
	batch           = 20000 // messages per transaction
	bytesPerMessage = 340   // database bytes per message, measured (realistic schema)
	ftsShare        = 7     // percent of the database that is full-text index data, measured
)

func (g *dbGen) fill(ctx context.Context) error {
	if err := g.people(); err != nil {
		return err
	}
	g.pick = rand.NewZipf(g.r, 1.2, 1, uint64(len(g.chats)-1))
	g.words = rand.NewZipf(g.r, 1.1, 2, uint64(len(vocabulary)-1))
	g.nextID = 1
	g.now = g.p.start
	estimate := float64(g.p.messages)
	if estimate == 0 {
		estimate = float64(g.p.dbBytes) / bytesPerMessage
	}
	g.gap = g.p.end.Sub(g.p.start).Seconds() / estimate

	next := 0 // next media file to attach
	media := slices.DeleteFunc(slices.Clone(g.p.media), func(f *mediaFile) bool { return f.kind == nomedia })
	texts := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		tx, err := g.db.Begin()
		if err != nil {
			return err
		}
		ins, err := newInserter(tx)
		if err != nil {
			tx.Rollback()
			return err
		}
		first := g.nextID
		n := batch
		if g.p.messages == 0 && !g.dbFull {
			// Near the target size, smaller batches avoid overshooting.
			n = int(min(int64(batch), (g.p.dbBytes-g.dbSize)/bytesPerMessage+100))
		}
		for range n {
			if next < len(media) && !media[next].when.After(g.now) {
				err = g.mediaMessage(ins, media[next])
				next++
			} else if !g.textDone(texts) {
				err = g.textMessage(ins)
				texts++
			} else if next < len(media) {
				err = g.mediaMessage(ins, media[next])
				next++
			} else {
				break
			}
			if err != nil {
				ins.close()
				tx.Rollback()
				return err
			}
		}
		err = ins.flush()
		ins.close()
		if err == nil && g.p.realistic {
			err = complete(tx, first, true)
		}
		if err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		if next == len(media) && g.textDone(texts) {
			return nil
		}
		if g.p.messages == 0 {
			var pages, free int64
			if err := g.db.QueryRow("SELECT * FROM pragma_page_count(), pragma_freelist_count()").Scan(&pages, &free); err != nil {
				return err
			}
			if g.p.realistic && !g.ftsMerged && (pages-free)*4096 >= g.p.dbBytes-g.p.dbBytes*ftsShare/100 {
				// Early enough that the pages it frees are reused by the
				// messages still to come.
				if _, err := g.db.ExecContext(ctx, `INSERT INTO message_ftsv2(message_ftsv2) VALUES ('optimize')`); err != nil {
					return fmt.Errorf("fts optimize: %w", err)
				}
				g.ftsMerged = true
				if err := g.db.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
					return err
				}
			}
			g.dbSize = pages * 4096
			g.dbFull = g.dbSize >= g.p.dbBytes
		}
	}
}

// textDone reports whether enough text messages have been written.
func (g *dbGen) textDone(texts int) bool {
	if g.p.messages > 0 {
		return texts >= g.p.messages
	}
	return g.dbFull
}

// people creates the jids, chats and group memberships.
func (g *dbGen) people() error {
	tx, err := g.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	exec := func(q string, args ...any) (int, error) {
		res, err := tx.Exec(q, args...)
		if err != nil {
			return 0, err
		}
		id, err := res.LastInsertId()
		return int(id), err
	}
	if _, err := exec(`INSERT INTO props(key, value) VALUES ('version', '2.24.23.78'), ('db_schema_version', '1')`); err != nil {
		return err
	}
	var people []int
	for i := range g.p.contacts {
		user := "49" + strconv.Itoa(151_0000_0000+int(g.r.Int64N(9_0000_0000))) + strconv.Itoa(i%10)
		id, err := exec(`INSERT INTO jid(user, server, agent, device, type, raw_string) VALUES (?, 's.whatsapp.net', 0, 0, 0, ?)`,
			user, user+"@s.whatsapp.net")
		if err != nil {
			return err
		}
		people = append(people, id)
	}
	created := g.p.start.Add(-time.Duration(g.r.Int64N(int64(400 * 24 * time.Hour)))).UnixMilli()
	for i, pid := range people {
		if i >= g.p.contacts*2/3 && i > 1 {
			break // not everyone has a one-to-one chat
		}
		id, err := exec(`INSERT INTO chat(jid_row_id, hidden, created_timestamp, archived, group_type) VALUES (?, 0, ?, 0, 0)`, pid, created)
		if err != nil {
			return err
		}
		g.chats = append(g.chats, chatInfo{id: id, members: []int{pid}})
	}
	for i := range g.p.groups {
		user := "120363" + strconv.FormatInt(100_000_000_000+g.r.Int64N(900_000_000_000), 10)
		jidID, err := exec(`INSERT INTO jid(user, server, agent, device, type, raw_string) VALUES (?, 'g.us', 0, 0, 1, ?)`, user, user+"@g.us")
		if err != nil {
			return err
		}
		id, err := exec(`INSERT INTO chat(jid_row_id, hidden, subject, created_timestamp, archived, group_type) VALUES (?, 0, ?, ?, 0, 0)`,
			jidID, groupSubjects[i%len(groupSubjects)], created)
		if err != nil {
			return err
		}
		c := chatInfo{id: id, group: true}
		n := 2 + g.r.IntN(min(12, len(people)-1))
		for _, k := range g.r.Perm(len(people))[:n] {
			c.members = append(c.members, people[k])
			if _, err := exec(`INSERT INTO group_participant_user(group_jid_row_id, user_jid_row_id, rank, pending) VALUES (?, ?, 0, 0)`,
				jidID, people[k]); err != nil {
				return err
			}
		}
		g.chats = append(g.chats, c)
	}
	// Interleave groups with one-to-one chats so that the busiest chats
	// (the Zipf head) are a mix of both.
	g.r.Shuffle(len(g.chats), func(i, j int) { g.chats[i], g.chats[j] = g.chats[j], g.chats[i] })
	if g.p.realistic {
		if err := createRecipients(tx, g.chats); err != nil {
			return err
		}
	}
	return tx.Commit()
}

var groupSubjects = []string{
	"Family 👨‍👩‍👧", "Football Sunday ⚽", "Book club", "Work – Project Phoenix",
	"Urlaub 2024 🏖️", "Nachbarn Hausnr. 12", "Climbing crew", "Uni friends",
	"Elternabend 3b", "Band practice 🎸", "Weihnachtsmarkt", "Flat 4B",
	"Running club", "Cousins", "Board games night", "Gartenverein", "Alumni 2015", "Trip to Lisbon",
}

// inserter holds the prepared statements of one transaction. Messages are
// inserted msgRows at a time, which halves the per-row cost.
type inserter struct {
	tx                   *sql.Tx
	msg, msgs, media, th *sql.Stmt
	pending              []any // parameters of messages not yet inserted
}

const (
	msgCols = `_id, chat_row_id, from_me, key_id, sender_jid_row_id,
		status, broadcast, recipient_count, origination_flags, origin, timestamp, received_timestamp,
		receipt_server_timestamp, message_type, text_data, starred, lookup_tables, sort_id, message_add_on_flags`
	msgValues = `(?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?, ?, ?, ?, ?, ?, 0, ?, 0)`
	msgParams = 13
	msgRows   = 100
)

func newInserter(tx *sql.Tx) (*inserter, error) {
	ins := &inserter{tx: tx, pending: make([]any, 0, msgRows*msgParams)}
	var err error
	if ins.msg, err = tx.Prepare(`INSERT INTO message(` + msgCols + `) VALUES ` + msgValues); err != nil {
		return nil, err
	}
	many := `INSERT INTO message(` + msgCols + `) VALUES ` + msgValues + strings.Repeat(", "+msgValues, msgRows-1)
	if ins.msgs, err = tx.Prepare(many); err != nil {
		ins.close()
		return nil, err
	}
	if ins.media, err = tx.Prepare(`INSERT INTO message_media(message_row_id, chat_row_id,
		autotransfer_retry_enabled, transferred, transcoded, file_path, file_size, suspicious_content,
		media_key, media_key_timestamp, width, height, has_streaming_sidecar, direct_path, message_url,
		mime_type, file_length, media_name, media_duration, page_count, enc_file_hash, media_caption)
		VALUES (?, ?, 0, 1, 0, ?, ?, 0, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)`); err != nil {
		ins.close()
		return nil, err
	}
	if ins.th, err = tx.Prepare(`INSERT INTO message_thumbnail(message_row_id, thumbnail) VALUES (?, ?)`); err != nil {
		ins.close()
		return nil, err
	}
	return ins, nil
}

// message queues one message row's parameters.
func (ins *inserter) message(args ...any) error {
	ins.pending = append(ins.pending, args...)
	if len(ins.pending) == cap(ins.pending) {
		if _, err := ins.msgs.Exec(ins.pending...); err != nil {
			return err
		}
		ins.pending = ins.pending[:0]
	}
	return nil
}

// flush inserts the queued messages.
func (ins *inserter) flush() error {
	for i := 0; i < len(ins.pending); i += msgParams {
		if _, err := ins.msg.Exec(ins.pending[i : i+msgParams]...); err != nil {
			return err
		}
	}
	ins.pending = ins.pending[:0]
	return nil
}

func (ins *inserter) close() {
	for _, s := range []*sql.Stmt{ins.msg, ins.msgs, ins.media, ins.th} {
		if s != nil {
			s.Close()
		}
	}
}

// header of a message: who sent it where and when.
type header struct {
	id, chat, sender int
	fromMe           bool
	ts               int64 // ms
}

func (g *dbGen) header(chatIdx int, fromMe bool) header {
	c := g.chats[chatIdx]
	h := header{id: g.nextID, chat: c.id, fromMe: fromMe, ts: g.now.UnixMilli()}
	g.nextID++
	if c.group && !fromMe {
		h.sender = c.members[g.r.IntN(len(c.members))]
	}
	return h
}

func (g *dbGen) insertMessage(ins *inserter, h header, msgType int, text any) error {
	var fromMe, status, sender any = 0, 0, nil
	if h.fromMe {
		fromMe, status = 1, 13 // read by recipient
		if g.unread {
			status = 5 // delivered
		}
	}
	if h.sender != 0 {
		sender = h.sender
	}
	starred := 0
	if g.r.IntN(500) == 0 {
		starred = 1
	}
	recv := h.ts + int64(g.r.IntN(3000))
	return ins.message(h.id, h.chat, fromMe, g.keyID(h.id, h.fromMe), sender, status,
		h.ts, recv, recv+int64(g.r.IntN(500)), msgType, text, starred, h.id)
}

func (g *dbGen) advance() {
	g.now = g.now.Add(time.Duration(g.r.ExpFloat64() * g.gap * float64(time.Second)))
}

func (g *dbGen) textMessage(ins *inserter) error {
	g.advance()
	return g.textIn(ins, int(g.pick.Uint64()), g.r.IntN(10) < 4)
}

// textIn writes a text message at g.now in chat g.chats[chatIdx].
func (g *dbGen) textIn(ins *inserter, chatIdx int, fromMe bool) error {
	h := g.header(chatIdx, fromMe)
	return g.insertMessage(ins, h, 0, g.sentence())
}

func (g *dbGen) mediaMessage(ins *inserter, f *mediaFile) error {
	if f.when.After(g.now) {
		g.now = f.when
	}
	return g.mediaIn(ins, f, int(g.pick.Uint64()))
}

// mediaIn writes the message of media file f at g.now in chat
// g.chats[chatIdx]: its message, message_media and thumbnail rows.
func (g *dbGen) mediaIn(ins *inserter, f *mediaFile, chatIdx int) error {
	// Sent files come from me; received ones from someone else.
	h := g.header(chatIdx, f.fromMe)
	ki := kindInfo[f.kind]
	var caption any
	if f.kind == image || f.kind == video {
		if g.r.IntN(4) == 0 {
			caption = g.sentence()
		}
	}
	if err := g.insertMessage(ins, h, ki.msgType, caption); err != nil {
		return err
	}
	var width, height, duration, pages any
	switch f.kind {
	case image, video:
		w, hgt := 1600, 1200
		if g.r.IntN(2) == 0 {
			w, hgt = hgt, w
		}
		width, height = w, hgt
		if f.kind == video {
			duration = 5 + g.r.IntN(180)
		}
	case voice:
		duration = 1 + int(f.size/2000)
	case document:
		pages = 1 + g.r.IntN(30)
	}
	var name any
	if f.kind == document {
		name = f.docName
	}
	key := make([]byte, 32)
	fillBytes(g.r, key)
	encHash := make([]byte, 32)
	fillBytes(g.r, encHash)
	direct := fmt.Sprintf("/v/t62.%d-24/%d_%d_n.enc?ccb=11-4&oh=%s", 7118+int(f.kind), 10000000+g.r.IntN(90000000), g.r.Uint64()>>20, hex.EncodeToString(key[:12]))
	if _, err := ins.media.Exec(h.id, h.chat, "Media/"+f.rel, f.size, key, h.ts/1000,
		width, height, direct, "https://mmg.whatsapp.net"+direct, ki.mime, f.size, name, duration, pages,
		base64.StdEncoding.EncodeToString(encHash), caption); err != nil {
		return err
	}
	if f.kind == image || f.kind == video {
		thumb := make([]byte, g.p.thumbMax/4+g.r.IntN(g.p.thumbMax*3/4))
		fillBytes(g.r, thumb)
		copy(thumb, jpegHead)
		if _, err := ins.th.Exec(h.id, thumb); err != nil {
			return err
		}
	}
	return nil
}

func fillBytes(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

const hexDigits = "0123456789ABCDEF"

// keyID makes a WhatsApp-style message id for message id: 20 hex digits
// starting 3EB0 for messages from this (web) device, 32 for others.
//
// In the realistic dataset the ids are unique by construction:
// their first 16 random-looking digits are a bijection of the message id
// (mix64 of id + a salt of the seed), the lengths keep the two kinds apart.
func (g *dbGen) keyID(id int, fromMe bool) string {
	var b [32]byte
	if g.p.realistic {
		x := mix64(uint64(id) + g.keySalt)
		if fromMe {
			copy(b[:], "3EB0")
			putHex(b[4:20], x)
			return string(b[:20])
		}
		putHex(b[:16], x)
		putHex(b[16:], g.r.Uint64())
		return string(b[:])
	}
	n := 32
	if fromMe {
		n = 20
	}
	for i := range n {
		b[i] = hexDigits[g.r.IntN(16)]
	}
	if fromMe {
		copy(b[:], "3EB0")
	}
	return string(b[:n])
}

// putHex writes x as 16 hex digits into b.
func putHex(b []byte, x uint64) {
	for i := 15; i >= 0; i-- {
		b[i] = hexDigits[x&15]
		x >>= 4
	}
}

// mix64 is SplitMix64's finalizer, a bijection of uint64 that looks random.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// keySalt is the key id salt of a seed's dataset (and its days).
func keySalt(seed uint64) uint64 { return mix64(seed ^ 0x6b65795f6964) }

// finish records the media hashes and the per-chat summary columns.
func (g *dbGen) finish(ctx context.Context) error {
	tx, err := g.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	st, err := tx.Prepare(`UPDATE message_media SET file_hash = ? WHERE file_path = ?`)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, f := range g.p.media {
		if f.kind == nomedia {
			continue
		}
		if _, err := st.Exec(base64.StdEncoding.EncodeToString(f.hash[:]), "Media/"+f.rel); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(`UPDATE chat SET
		last_message_row_id = (SELECT max(_id) FROM message WHERE chat_row_id = chat._id),
		display_message_row_id = (SELECT max(_id) FROM message WHERE chat_row_id = chat._id),
		last_read_message_row_id = (SELECT max(_id) FROM message WHERE chat_row_id = chat._id),
		sort_timestamp = (SELECT max(timestamp) FROM message WHERE chat_row_id = chat._id),
		unseen_message_count = 0`); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	var mode string
	if err := g.db.QueryRow("PRAGMA journal_mode=" + g.p.journal).Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, g.p.journal) {
		return fmt.Errorf("cannot set journal_mode %s (got %s)", g.p.journal, mode)
	}
	return nil
}
