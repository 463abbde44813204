package main

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// sampleDir is the committed sample, relative to this package.
const sampleDir = "../sample"

type mediaInfo struct {
	size int64
	hash string // base64 SHA-256, as in message_media.file_hash
}

// readMedia fingerprints every file under dir/Media, by slash path.
func readMedia(t *testing.T, dir string) map[string]mediaInfo {
	t.Helper()
	root := filepath.Join(dir, "Media")
	m := map[string]mediaInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sum := sha256.Sum256(b)
		m[filepath.ToSlash(rel)] = mediaInfo{int64(len(b)), base64.StdEncoding.EncodeToString(sum[:])}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// openRO opens a database read-only, so the committed sample is never
// touched.
func openRO(t *testing.T, path string) *sql.DB {
	t.Helper()
	uri, err := sqliteURI(path, "mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// checkDB checks that the database passes integrity_check, is a single file
// in the wanted journal mode, and returns a digest of its whole logical
// content.
func checkDB(t *testing.T, path string, wal bool) string {
	t.Helper()
	hdr := make([]byte, 100)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := byte(1)
	if wal {
		want = 2
	}
	if hdr[18] != want || hdr[19] != want {
		t.Errorf("%s: header read/write versions %d/%d, want %d (wal=%v)", path, hdr[18], hdr[19], want, wal)
	}
	for _, sfx := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Lstat(path + sfx); err == nil {
			t.Errorf("%s left beside the database", path+sfx)
		}
	}

	db := openRO(t, path)
	defer db.Close() // now: an open connection would keep a -wal
	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		t.Fatalf("%s: integrity_check %q, %v", path, ic, err)
	}
	// Every real table (a virtual table's content is in its shadow tables),
	// in rowid order or, without a rowid, in key order.
	rows, err := db.Query(`SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
		AND sql NOT LIKE 'CREATE VIRTUAL %' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables, orders []string
	for rows.Next() {
		var name, ddl string
		rows.Scan(&name, &ddl)
		order := "rowid"
		if strings.Contains(strings.ToUpper(ddl), "WITHOUT ROWID") {
			order = "1, 2"
		}
		tables, orders = append(tables, name), append(orders, order)
	}
	rows.Close()
	h := sha256.New()
	for i, table := range tables {
		rows, err := db.Query("SELECT * FROM " + table + " ORDER BY " + orders[i])
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(h, "%s%v\n", table, vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// checkReferences checks that message_media and the media files match one
// to one (apart from .nomedia markers), by size and hash.
func checkReferences(t *testing.T, dir string, media map[string]mediaInfo) {
	t.Helper()
	db := openRO(t, filepath.Join(dir, "msgstore.db"))
	defer db.Close()
	rows, err := db.Query(`SELECT mm.file_path, mm.file_size, mm.file_hash, m.message_type
		FROM message_media mm JOIN message m ON m._id = mm.message_row_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var path, hash string
		var size int64
		var typ int
		if err := rows.Scan(&path, &size, &hash, &typ); err != nil {
			t.Fatal(err)
		}
		rel, ok := strings.CutPrefix(path, "Media/")
		mi, exists := media[rel]
		if !ok || !exists {
			t.Errorf("message_media references missing %q", path)
			continue
		}
		if seen[rel] {
			t.Errorf("%s referenced twice", rel)
		}
		seen[rel] = true
		if mi.size != size || mi.hash != hash {
			t.Errorf("%s: db says %d bytes %s, file has %d bytes %s", rel, size, hash, mi.size, mi.hash)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for rel := range media {
		if !seen[rel] && !strings.HasSuffix(rel, "/.nomedia") {
			t.Errorf("%s is not referenced by message_media", rel)
		}
	}
}

// TestSample checks the committed sample and that the generator still
// produces it: same media bytes and same database content (the database
// file itself need not be byte-identical).
func TestSample(t *testing.T) {
	out := t.TempDir()
	if _, err := generate(context.Background(), config{out: out, seed: 1, small: true}); err != nil {
		t.Fatal(err)
	}
	regen := checkDB(t, filepath.Join(out, "msgstore.db"), false)
	committed := checkDB(t, filepath.Join(sampleDir, "msgstore.db"), false)
	const hint = "; regenerate with: rm -r testdata/sample && go run ./testdata/gen --small --out testdata/sample"
	if regen != committed {
		t.Errorf("regenerated msgstore.db differs in content from the committed sample" + hint)
	}
	if got, want := waContacts(t, out), waContacts(t, sampleDir); got != want || !strings.Contains(got, "@s.whatsapp.net") {
		t.Errorf("regenerated wa.db differs in content from the committed sample%s\n got %.200s\nwant %.200s", hint, got, want)
	}
	gotMedia, wantMedia := readMedia(t, out), readMedia(t, sampleDir)
	if fmt.Sprint(gotMedia) != fmt.Sprint(wantMedia) {
		t.Errorf("regenerated media differ from the committed sample%s\n got %v\nwant %v", hint, gotMedia, wantMedia)
	}
	checkReferences(t, sampleDir, wantMedia)

	// The sample is small and has the promised cases.
	var total int64
	filepath.WalkDir(sampleDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			total += fi.Size()
		}
		return nil
	})
	if total > 300<<10 {
		t.Errorf("sample is %d bytes, want well under 300 KB", total)
	}
	var unicode, voiceNote, empty bool
	for rel, mi := range wantMedia {
		if strings.ContainsFunc(rel, func(r rune) bool { return r > 0x7f }) {
			unicode = true
		}
		if strings.HasPrefix(rel, "WhatsApp Voice Notes/") {
			voiceNote = true
		}
		if mi.size == 0 {
			empty = true
		}
	}
	if len(wantMedia) < 5 || !unicode || !voiceNote || !empty {
		t.Errorf("sample media %v: want ~6 files with a unicode name, a voice note and an empty file", wantMedia)
	}
	db := openRO(t, filepath.Join(sampleDir, "msgstore.db"))
	var messages, chats int
	if err := db.QueryRow("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM chat)").Scan(&messages, &chats); err != nil {
		t.Fatal(err)
	}
	if messages < 150 || messages > 300 || chats < 3 {
		t.Errorf("sample has %d messages in %d chats", messages, chats)
	}
}

var (
	voiceDir = regexp.MustCompile(`^WhatsApp Voice Notes/\d{4}(0[1-9]|[1-4]\d|5[0-3])/PTT-\d{8}-WA\d{4}\.opus$`)
	magic    = map[string][]byte{
		".jpg": jpegHead, ".mp4": mp4Head, ".opus": opusHead, ".pdf": pdfHead,
	}
)

func TestGenerate(t *testing.T) {
	const dbBytes, mediaBytes = 3 << 20, 24 << 20
	gen := func(seed uint64) string {
		out := t.TempDir()
		st, err := generate(context.Background(), config{out: out, dbBytes: dbBytes, mediaBytes: mediaBytes, seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("seed %d: %+v", seed, st)
		return out
	}
	out := gen(7)

	fi, err := os.Stat(filepath.Join(out, "msgstore.db"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < dbBytes || fi.Size() > dbBytes+dbBytes/4 {
		t.Errorf("msgstore.db is %d bytes, want about %d", fi.Size(), dbBytes)
	}
	digest := checkDB(t, filepath.Join(out, "msgstore.db"), true)
	media := readMedia(t, out)
	checkReferences(t, out, media)

	var total int64
	kinds := map[string]int{}
	for rel, mi := range media {
		total += mi.size
		top, _, _ := strings.Cut(rel, "/")
		kinds[top]++
		if strings.HasPrefix(rel, "WhatsApp Voice Notes/") && !voiceDir.MatchString(rel) {
			t.Errorf("voice note %q not in a YYYYWW folder", rel)
		}
		b, err := os.ReadFile(filepath.Join(out, "Media", filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		if m := magic[filepath.Ext(rel)]; m != nil && len(b) > len(m)+2 && !bytes.HasPrefix(b, m) {
			t.Errorf("%s does not start with its format's magic", rel)
		}
	}
	if total != mediaBytes {
		t.Errorf("media total %d, want exactly %d", total, mediaBytes)
	}
	for _, k := range []string{"WhatsApp Images", "WhatsApp Video", "WhatsApp Voice Notes", "WhatsApp Documents"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in %v", k, kinds)
		}
	}
	if _, ok := media["WhatsApp Images/Sent/.nomedia"]; !ok {
		t.Errorf("no WhatsApp Images/Sent/.nomedia")
	}

	// Media are incompressible, chat text is not.
	var biggest string
	for rel, mi := range media {
		if mi.size > media[biggest].size {
			biggest = rel
		}
	}
	b, _ := os.ReadFile(filepath.Join(out, "Media", filepath.FromSlash(biggest)))
	if r := compressRatio(b[:min(len(b), 1<<20)]); r < 0.99 {
		t.Errorf("%s compresses to %.2f; want incompressible", biggest, r)
	}
	db := openRO(t, filepath.Join(out, "msgstore.db"))
	var text string
	if err := db.QueryRow("SELECT group_concat(text_data, char(10)) FROM (SELECT text_data FROM message WHERE text_data IS NOT NULL LIMIT 20000)").Scan(&text); err != nil {
		t.Fatal(err)
	}
	if r := compressRatio([]byte(text)); r > 0.5 {
		t.Errorf("chat text compresses to %.2f; want compressible", r)
	}

	// Deterministic for a seed, different for another.
	again := gen(7)
	if got := checkDB(t, filepath.Join(again, "msgstore.db"), true); got != digest {
		t.Errorf("same seed, different database content")
	}
	if fmt.Sprint(readMedia(t, again)) != fmt.Sprint(media) {
		t.Errorf("same seed, different media")
	}
	other := gen(8)
	if checkDB(t, filepath.Join(other, "msgstore.db"), true) == digest {
		t.Errorf("seed 8 gave the same database as seed 7")
	}
}

func compressRatio(b []byte) float64 {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	w.Write(b)
	w.Close()
	return float64(buf.Len()) / float64(len(b))
}

func TestGenerateRefusesExistingOutput(t *testing.T) {
	out := t.TempDir()
	c := config{out: out, seed: 1, small: true}
	if _, err := generate(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if _, err := generate(context.Background(), c); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second generate into the same directory: %v", err)
	}
}

// genRealistic makes a small full-schema dataset in a new directory.
func genRealistic(t *testing.T, seed uint64, dbBytes, mediaBytes int64) string {
	t.Helper()
	out := t.TempDir()
	if _, err := generate(context.Background(), config{out: out, dbBytes: dbBytes, mediaBytes: mediaBytes, seed: seed}); err != nil {
		t.Fatal(err)
	}
	return out
}

// copyDataset copies a dataset directory (files and folders, with mtimes).
func copyDataset(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if err := os.WriteFile(target, b, 0o644); err != nil {
			return err
		}
		return os.Chtimes(target, fi.ModTime(), fi.ModTime())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// count runs a query of one integer.
func count(t *testing.T, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// expectedReceipts counts the receipts the messages I sent from _id > after
// should have: one per other member of a group, one in a one-to-one chat.
const expectedReceipts = `SELECT count(*) FROM message m JOIN chat c ON c._id = m.chat_row_id
	JOIN jid j ON j._id = c.jid_row_id
	LEFT JOIN group_participant_user g ON g.group_jid_row_id = c.jid_row_id
	WHERE m.from_me = 1 AND m._id > ? AND (j.server = 's.whatsapp.net' OR g._id IS NOT NULL)`

// TestRealisticSchema checks the full-size schema: five indexes on message
// (one unique over the random key_id), the FTS5 table with a row per text and caption,
// and the receipts of the messages I sent.
func TestRealisticSchema(t *testing.T) {
	out := genRealistic(t, 3, 2<<20, 8<<20)
	checkDB(t, filepath.Join(out, "msgstore.db"), true)
	checkReferences(t, out, readMedia(t, out))
	db := openRO(t, filepath.Join(out, "msgstore.db"))
	messages := count(t, db, `SELECT count(*) FROM message`)
	texts := count(t, db, `SELECT count(*) FROM message WHERE text_data IS NOT NULL`)
	if messages < 3000 || texts < messages/2 {
		t.Fatalf("%d messages, %d with text", messages, texts)
	}
	for _, c := range []struct {
		name, query string
		want        int
	}{
		{"indexes on message", `SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'message'`, 5},
		{"unique index over key_id", `SELECT count(*) FROM pragma_index_list('message') l, pragma_index_info(l.name) i
			WHERE l."unique" AND i.name = 'key_id'`, 1},
		{"distinct key ids", `SELECT count(DISTINCT key_id) FROM message`, messages},
		{"fts5 table", `SELECT count(*) FROM sqlite_schema WHERE name = 'message_ftsv2' AND sql LIKE '%USING fts5%'`, 1},
		{"fts row per text", `SELECT count(*) FROM message_ftsv2`, texts},
		{"fts rows match", `SELECT count(*) FROM message m JOIN message_ftsv2 f ON f.rowid = m._id WHERE f.content = m.text_data`, texts},
		{"captions indexed", `SELECT count(*) FROM message_media mm JOIN message_ftsv2 f ON f.rowid = mm.message_row_id
			WHERE mm.media_caption IS NOT NULL`, count(t, db, `SELECT count(*) FROM message_media WHERE media_caption IS NOT NULL`)},
		{"fts searchable", `SELECT count(*) > 0 FROM message_ftsv2 WHERE message_ftsv2 MATCH 'tomorrow'`, 1},
		{"receipts", `SELECT count(*) FROM receipt_user`, count(t, db, expectedReceipts, 0)},
		{"receipts of received messages", `SELECT count(*) FROM receipt_user r JOIN message m ON m._id = r.message_row_id WHERE m.from_me = 0`, 0},
		{"unique receipt index", `SELECT count(*) FROM pragma_index_list('receipt_user') WHERE "unique"`, 1},
		{"read receipts", `SELECT count(*) > 0 FROM receipt_user WHERE read_timestamp > receipt_timestamp`, 1},
		{"media rows", `SELECT count(*) > 5 FROM message_media`, 1},
		{"no free pages", `SELECT freelist_count < 50 FROM pragma_freelist_count()`, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := count(t, db, c.query); got != c.want {
				t.Errorf("got %d, want %d", got, c.want)
			}
		})
	}
	if testing.Verbose() {
		t.Logf("%d messages, %d texts, %d receipts", messages, texts, count(t, db, `SELECT count(*) FROM receipt_user`))
	}
}

// pagesDiffer counts the 4 KiB pages of b that differ from a's page of the
// same number, and b's pages.
func pagesDiffer(t *testing.T, a, b string) (differ, pages int) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(y); off += 4096 {
		pages++
		if off+4096 > len(x) || !bytes.Equal(x[off:off+4096], y[off:off+4096]) {
			differ++
		}
	}
	return differ, pages
}

func TestDay(t *testing.T) {
	ctx := context.Background()
	const seed = 5
	base := genRealistic(t, seed, 2<<20, 40<<20)
	baseMedia := readMedia(t, base)
	baseDB := openRO(t, filepath.Join(base, "msgstore.db"))
	maxID := count(t, baseDB, `SELECT max(_id) FROM message`)
	baseRows := count(t, baseDB, `SELECT count(*) FROM message_media`)
	baseFTS := count(t, baseDB, `SELECT count(*) FROM message_ftsv2`)
	baseReceipts := count(t, baseDB, `SELECT count(*) FROM receipt_user`)
	baseDB.Close()

	day := func(dir string, k int) dayStats {
		t.Helper()
		st, err := applyDay(ctx, config{out: dir, seed: seed}, k)
		if err != nil {
			t.Fatalf("day %d: %v", k, err)
		}
		return st
	}
	dir := copyDataset(t, base)
	st := day(dir, 1)
	t.Logf("day 1: %+v", st)
	digest := checkDB(t, filepath.Join(dir, "msgstore.db"), true) // integrity, WAL mode, no -wal left
	media := readMedia(t, dir)
	checkReferences(t, dir, media)
	if differ, pages := pagesDiffer(t, filepath.Join(base, "msgstore.db"), filepath.Join(dir, "msgstore.db")); testing.Verbose() {
		t.Logf("day 1 changed %d of %d pages", differ, pages)
	}

	var added, deleted int
	var addedBytes int64
	for rel, mi := range media {
		if _, ok := baseMedia[rel]; !ok && !strings.HasSuffix(rel, "/.nomedia") {
			added++
			addedBytes += mi.size
		}
	}
	for rel := range baseMedia {
		if _, ok := media[rel]; !ok {
			deleted++
		}
	}
	db := openRO(t, filepath.Join(dir, "msgstore.db"))
	last := count(t, db, `SELECT max(_id) FROM message`)
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"messages", count(t, db, `SELECT count(*) FROM message WHERE _id > ?`, maxID), dayMessages},
		{"stats messages", st.messages, dayMessages},
		{"chats", count(t, db, `SELECT count(DISTINCT chat_row_id) FROM message WHERE _id > ?`, maxID), dayChats},
		{"fts rows", count(t, db, `SELECT count(*) FROM message_ftsv2`) - baseFTS,
			count(t, db, `SELECT count(*) FROM message WHERE _id > ? AND text_data IS NOT NULL`, maxID)},
		{"receipts", count(t, db, `SELECT count(*) FROM receipt_user`) - baseReceipts, count(t, db, expectedReceipts, maxID)},
		{"media messages", count(t, db, `SELECT count(*) FROM message_media WHERE message_row_id > ?`, maxID), st.mediaMessages},
		{"media rows", count(t, db, `SELECT count(*) FROM message_media`), baseRows + st.mediaMessages - dayDeletes},
		{"media bytes", int(addedBytes), dayMediaBytes},
		{"stats media bytes", int(st.mediaBytes), dayMediaBytes},
		{"deleted files", deleted, dayDeletes},
		{"stats deleted", st.deleted, dayDeletes},
		{"read (sent, recent)", count(t, db, `SELECT count(*) FROM message WHERE _id > ? AND _id <= ? AND from_me = 1 AND status <> 13`,
			last-dayRecent, last-dayUnread), 0},
		{"still unread", count(t, db, `SELECT count(*) FROM message WHERE _id > ? AND from_me = 1 AND status <> 5`, last-dayUnread), 0},
		{"receipts read", count(t, db, `SELECT count(*) FROM receipt_user WHERE message_row_id > ? AND message_row_id <= ? AND read_timestamp IS NULL`,
			last-dayRecent, last-dayUnread), 0},
		{"receipts unread", count(t, db, `SELECT count(*) > 0 FROM receipt_user WHERE message_row_id > ? AND read_timestamp IS NULL`, last-dayUnread), 1},
		{"journal mode", count(t, db, `SELECT journal_mode = 'wal' FROM pragma_journal_mode()`), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
	if added < 5 || st.mediaMessages != added {
		t.Errorf("%d new media files, %d media messages", added, st.mediaMessages)
	}
	for rel := range media {
		if _, ok := baseMedia[rel]; !ok && !voiceDir.MatchString(rel) && strings.HasPrefix(rel, "WhatsApp Voice Notes/") {
			t.Errorf("new voice note %q not in a weekly folder", rel)
		}
	}

	// Deterministic: the same day on another copy gives the same state.
	again := copyDataset(t, base)
	day(again, 1)
	if checkDB(t, filepath.Join(again, "msgstore.db"), true) != digest {
		t.Errorf("day 1 twice from the same base: different databases")
	}
	if fmt.Sprint(readMedia(t, again)) != fmt.Sprint(media) {
		t.Errorf("day 1 twice from the same base: different media")
	}

	// Day 2 follows day 1. (Another connection open would keep the -wal.)
	db.Close()
	st2 := day(dir, 2)
	checkDB(t, filepath.Join(dir, "msgstore.db"), true)
	checkReferences(t, dir, readMedia(t, dir))
	db = openRO(t, filepath.Join(dir, "msgstore.db"))
	if st2.messages != dayMessages || count(t, db, `SELECT count(*) FROM message WHERE _id > ?`, last) != dayMessages {
		t.Errorf("day 2: %+v", st2)
	}

	// Refusals, each one line.
	sample := copyDataset(t, sampleDir)
	for _, c := range []struct {
		name, dir string
		day       int
		want      string
	}{
		{"again", dir, 2, "already applied"},
		{"earlier", dir, 1, "already applied"},
		{"empty", t.TempDir(), 1, "no dataset"},
		{"no media", func() string {
			d := t.TempDir()
			os.WriteFile(filepath.Join(d, "msgstore.db"), []byte("x"), 0o644)
			return d
		}(), 1, "no dataset"},
		{"small sample", sample, 1, "WAL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := applyDay(ctx, config{out: c.dir, seed: seed}, c.day)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line with %q", err, c.want)
			}
		})
	}
	if checkDB(t, filepath.Join(sample, "msgstore.db"), false) != checkDB(t, filepath.Join(sampleDir, "msgstore.db"), false) {
		t.Errorf("the refused day changed the sample")
	}
}

func TestMany(t *testing.T) {
	ctx := context.Background()
	type fingerprint struct {
		size  int64
		hash  string
		mtime int64
	}
	gen := func(t *testing.T, n int, seed uint64) (string, map[string]fingerprint) {
		out := t.TempDir()
		st, err := generateMany(ctx, config{out: out, seed: seed}, n)
		if err != nil {
			t.Fatal(err)
		}
		if st.files != n {
			t.Errorf("stats say %d files, want %d", st.files, n)
		}
		fp := map[string]fingerprint{}
		for rel, mi := range readMedia(t, out) {
			fi, err := os.Stat(filepath.Join(out, "Media", filepath.FromSlash(rel)))
			if err != nil {
				t.Fatal(err)
			}
			fp[rel] = fingerprint{mi.size, mi.hash, fi.ModTime().Unix()}
		}
		return out, fp
	}
	for _, c := range []struct {
		n       int
		seed    uint64
		minDirs int
	}{
		{2000, 1, 150},
		{500, 9, 50},
	} {
		t.Run(fmt.Sprint(c.n, "/", c.seed), func(t *testing.T) {
			out, files := gen(t, c.n, c.seed)
			if len(files) != c.n {
				t.Fatalf("%d files, want %d", len(files), c.n)
			}
			if _, err := os.Lstat(filepath.Join(out, "msgstore.db")); err == nil {
				t.Errorf("--many wrote a database")
			}
			dirs := map[string]bool{}
			exts := map[string]int{}
			var total int64
			for rel, f := range files {
				if f.size < manyMin || f.size > manyMax {
					t.Errorf("%s: %d bytes, want %d–%d", rel, f.size, manyMin, manyMax)
				}
				total += f.size
				dirs[filepath.Dir(rel)] = true
				exts[filepath.Ext(rel)]++
				if strings.HasPrefix(rel, "WhatsApp Voice Notes/") && !voiceDir.MatchString(rel) {
					t.Errorf("voice note %q not in a weekly folder", rel)
				}
			}
			if len(dirs) < c.minDirs {
				t.Errorf("%d folders, want at least %d", len(dirs), c.minDirs)
			}
			for _, e := range []string{".webp", ".jpg", ".opus", ".txt", ".json"} {
				if exts[e] < c.n/50 {
					t.Errorf("%d %s files of %d: %v", exts[e], e, c.n, exts)
				}
			}
			if mean := total / int64(c.n); mean < 6<<10 || mean > 20<<10 {
				t.Errorf("mean size %d, want log-uniform-ish 2–40 KiB", mean)
			}
			// Documents compress, the rest does not; formats have their magic.
			var text, random []byte
			for rel := range files {
				b, err := os.ReadFile(filepath.Join(out, "Media", filepath.FromSlash(rel)))
				if err != nil {
					t.Fatal(err)
				}
				switch filepath.Ext(rel) {
				case ".txt", ".json":
					text = append(text, b...)
				case ".webp":
					if !bytes.HasPrefix(b, []byte("RIFF")) {
						t.Errorf("%s does not start with RIFF", rel)
					}
					random = append(random, b[64:]...)
				default:
					if m := magic[filepath.Ext(rel)]; !bytes.HasPrefix(b, m) {
						t.Errorf("%s does not start with its format's magic", rel)
					}
				}
			}
			if r := compressRatio(text); r > 0.5 {
				t.Errorf("documents compress to %.2f; want compressible", r)
			}
			if r := compressRatio(random[:min(len(random), 1<<20)]); r < 0.99 {
				t.Errorf("stickers compress to %.2f; want incompressible", r)
			}
			if _, err := generateMany(ctx, config{out: out, seed: c.seed}, c.n); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Errorf("second --many into the same directory: %v", err)
			}
		})
	}
	t.Run("deterministic", func(t *testing.T) {
		_, a := gen(t, 300, 4)
		_, b := gen(t, 300, 4)
		_, c := gen(t, 300, 5)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("same seed, different files")
		}
		if fmt.Sprint(a) == fmt.Sprint(c) {
			t.Errorf("seeds 4 and 5 gave the same files")
		}
	})
}

// waContacts returns wa.db's contacts in DIR, one line each, and checks
// that each is a person of msgstore.db.
func waContacts(t *testing.T, dir string) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "wa.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`ATTACH ? AS m`, "file:"+filepath.Join(dir, "msgstore.db")+"?mode=ro"); err != nil {
		t.Fatal(err)
	}
	var orphans int
	if err := db.QueryRow(`SELECT count(*) FROM wa_contacts WHERE jid NOT IN (SELECT raw_string FROM m.jid)`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%s/wa.db: %d contacts that msgstore.db does not know", dir, orphans)
	}
	rows, err := db.Query(`SELECT _id, jid, status, number, display_name, sort_name FROM wa_contacts ORDER BY _id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var id int
		var jid, status, number, name, sortName string
		if err := rows.Scan(&id, &jid, &status, &number, &name, &sortName); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%d %s %s %s %s %s\n", id, jid, status, number, name, sortName)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
