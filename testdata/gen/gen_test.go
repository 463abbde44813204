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
	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		t.Fatalf("%s: integrity_check %q, %v", path, ic, err)
	}
	rows, err := db.Query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		rows.Scan(&name)
		tables = append(tables, name)
	}
	rows.Close()
	h := sha256.New()
	for _, table := range tables {
		rows, err := db.Query("SELECT * FROM " + table + " ORDER BY rowid")
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
