package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// The inspect commands on the realistic generated dataset (issue 13,
// acceptance 3): testdata/gen's WhatsApp-like msgstore.db (indexes, FTS5,
// receipts; WAL mode) and Media/ folders, backed up as made (day 0) and
// after a day of use (day 1), each command checked against the source.

// genBin builds the dataset generator, testdata/gen, into the test's
// temporary directory.
func genBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gen")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/gen")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/gen: %v\n%s", err, out)
	}
	return bin
}

// realRepo runs wabackup (the test binary, as intrBin) in dir on the
// repository dir/repo with the key dir/key.txt, and its temporary files
// in dir/tmp (TMPDIR).
type realRepo struct {
	t        *testing.T
	bin, dir string
}

func newRealRepo(t *testing.T, dir string) *realRepo {
	r := &realRepo{t: t, bin: intrBin(t), dir: dir}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	r.run("init", "--key-out", "key.txt", "-q")
	return r
}

func (r *realRepo) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(r.dir, ".config"), "XDG_CACHE_HOME="+filepath.Join(r.dir, ".cache"),
		"WABACKUP_REPO="+filepath.Join(r.dir, "repo"), "WABACKUP_KEY_FILE="+filepath.Join(r.dir, "key.txt"), "TMPDIR="+filepath.Join(r.dir, "tmp"))
	return cmd
}

// tmpEmpty checks that wabackup left nothing in its temporary directory
// (dump, sql and diff rebuild databases there).
func (r *realRepo) tmpEmpty() {
	r.t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.dir, "tmp"))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, e := range ents {
		r.t.Errorf("left in the temporary directory: %s", e.Name())
	}
}

// run runs wabackup with args, which must succeed, and returns its
// standard output.
func (r *realRepo) run(args ...string) string {
	r.t.Helper()
	cmd := r.cmd(args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("wabackup %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// runErr is run, returning standard error too.
func (r *realRepo) runErr(args ...string) (string, string) {
	r.t.Helper()
	cmd := r.cmd(args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("wabackup %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// toFile runs wabackup with args, its standard output into the file out,
// and returns the process state (for its resource usage).
func (r *realRepo) toFile(out string, args ...string) *os.ProcessState {
	r.t.Helper()
	ps, _ := r.toFileMeasured(out, false, args...)
	return ps
}

// toFileMeasured is toFile that, if measure is set, also returns the
// command's peak RSS in KiB.
func (r *realRepo) toFileMeasured(out string, measure bool, args ...string) (*os.ProcessState, int64) {
	r.t.Helper()
	f, err := os.Create(out)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	cmd := r.cmd(args...)
	peak := func() int64 { return 0 }
	if measure {
		peak = measuredRSS(r.t, cmd)
	}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("wabackup %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	return cmd.ProcessState, peak()
}

// backup runs backup with args and returns the snapshot's id.
func (r *realRepo) backup(args ...string) string {
	r.t.Helper()
	out := r.run(append(append([]string{"backup"}, args...), "--json")...)
	for _, m := range jsonLines(r.t, out) {
		if m["message_type"] == "summary" {
			return m["snapshot_id"].(string)
		}
	}
	r.t.Fatalf("no summary: %s", out)
	return ""
}

// srcEntry is one path of the source dataset.
type srcEntry struct {
	fi   fs.FileInfo
	hash string // of a regular file
}

// listSource lists data/msgstore.db and data/Media/... by their paths in a
// snapshot (slash-separated, Media/... and msgstore.db), hashing files.
func listSource(t *testing.T, data string) map[string]srcEntry {
	t.Helper()
	out := map[string]srcEntry{}
	add := func(p, rel string) {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		e := srcEntry{fi: fi}
		if fi.Mode().IsRegular() {
			e.hash = fileHash(t, p)
		}
		out[rel] = e
	}
	add(filepath.Join(data, "msgstore.db"), "msgstore.db")
	err := filepath.WalkDir(filepath.Join(data, "Media"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(data, p)
		add(p, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fileHash hashes a file as it streams it.
func fileHash(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// genTables are the tables of the generator's realistic schema (its FTS5
// index counted once, as a table), sampleTables those of the committed
// sample's older, smaller one.
var (
	genTables    = []string{"chat", "group_participant_user", "jid", "message", "message_ftsv2", "message_media", "message_thumbnail", "props", "receipt_user"}
	sampleTables = []string{"chat", "group_participant_user", "jid", "message", "message_media", "message_thumbnail", "props"}
)

// tableCounts counts the rows of each of tables in the database at p,
// opened read-only and immutable (nothing writes it meanwhile; no -shm is
// made beside it), after an integrity_check.
func tableCounts(t *testing.T, p string, tables []string) map[string]int64 {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+p+"?mode=ro&immutable=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]int64{}
	for _, name := range tables {
		var n int64
		if err := db.QueryRow("SELECT count(*) FROM " + name).Scan(&n); err != nil {
			t.Fatalf("%s: %s: %v", p, name, err)
		}
		out[name] = n
	}
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		t.Fatalf("%s: integrity_check: %q %v", p, res, err)
	}
	return out
}

// genRun runs the generator and returns its one line of output.
func genRun(t *testing.T, gen string, args ...string) string {
	t.Helper()
	out, err := exec.Command(gen, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("gen: %s", strings.TrimSpace(string(out)))
	return string(out)
}

// ls, find, dump, stats and sql on a backup of the dataset as made (day
// 0, a 20 MiB database, 40 MiB of media) and after a day of use; diff
// between the two.
func TestRealisticDataset(t *testing.T) {
	gen := genBin(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	genRun(t, gen, "--out", data, "--db-mb", "20", "--media-mb", "40")
	r := newRealRepo(t, dir)

	src0 := listSource(t, data)
	counts0 := tableCounts(t, filepath.Join(data, "msgstore.db"), genTables)
	s0 := r.backup("--db", filepath.Join(data, "msgstore.db"), "--media", filepath.Join(data, "Media"))
	checkInspect(t, r, s0, src0, counts0)

	// Day 1: 1,500 messages, new media files, 10 old ones deleted.
	out := genRun(t, gen, "--out", data, "--day", "1")
	m := regexp.MustCompile(`added (\d+) messages in \d+ chats, (\d+) new media files .*; deleted (\d+) old media files`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("gen --day: unexpected output %q", out)
	}
	dayMessages, _ := strconv.ParseInt(m[1], 10, 64)
	dayMedia, _ := strconv.Atoi(m[2])
	dayDeleted, _ := strconv.Atoi(m[3])
	if dayMessages != 1500 || dayDeleted != 10 || dayMedia == 0 {
		t.Fatalf("gen --day did not do what it says it does: %q", out)
	}
	src1 := listSource(t, data)
	counts1 := tableCounts(t, filepath.Join(data, "msgstore.db"), genTables)
	s1 := r.backup("--db", filepath.Join(data, "msgstore.db"), "--media", filepath.Join(data, "Media"))
	checkInspect(t, r, s1, src1, counts1)

	// stats over both: the restore sizes add up.
	var st map[string]any
	for _, m := range jsonLines(t, r.run("stats", "--json")) {
		st = m
	}
	if got, want := int64(st["restore_size"].(float64)), restoreSize(src0)+restoreSize(src1); got != want || st["snapshots"].(float64) != 2 {
		t.Errorf("stats of both snapshots: restore size %d, want %d (%v)", got, want, st)
	}

	checkDiff(t, r, s0, s1, src0, src1, counts0, counts1, dayMessages, dayMedia, dayDeleted)
	r.tmpEmpty()
}

// The same on the committed sample (testdata/sample: a rollback-journal
// database of the older schema, a handful of tiny media files).
func TestInspectSample(t *testing.T) {
	sample, err := filepath.Abs(filepath.Join("..", "..", "testdata", "sample"))
	if err != nil {
		t.Fatal(err)
	}
	src := listSource(t, sample)
	counts := tableCounts(t, filepath.Join(sample, "msgstore.db"), sampleTables)
	r := newRealRepo(t, t.TempDir())
	snap := r.backup("--db", filepath.Join(sample, "msgstore.db"), "--media", filepath.Join(sample, "Media"))
	checkInspect(t, r, snap, src, counts)
	// A second backup of the same: diff finds nothing.
	s1 := r.backup("--db", filepath.Join(sample, "msgstore.db"), "--media", filepath.Join(sample, "Media"))
	if out, stderr := r.runErr("diff", snap, s1); out != "" || !strings.Contains(stderr, "0 added, 0 removed, 0 changed") {
		t.Errorf("diff of two backups of the same: %q %q", out, stderr)
	}
	r.tmpEmpty()
}

// restoreSize is what restoring a snapshot of src writes: every file's
// size.
func restoreSize(src map[string]srcEntry) int64 {
	var n int64
	for _, e := range src {
		if e.fi.Mode().IsRegular() {
			n += e.fi.Size()
		}
	}
	return n
}

// checkInspect checks ls, find, dump, stats and sql on snapshot snap of a
// dataset whose state was src and counts (the rows of its tables).
func checkInspect(t *testing.T, r *realRepo, snap string, src map[string]srcEntry, counts map[string]int64) {
	short := snap[:8]

	// ls: ls -l's long format, one line per path of the source; mode,
	// size (files) and time as the source has them.
	line := regexp.MustCompile(`^(\S{10}) +(\d+) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.+)$`)
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(r.run("ls", snap)))
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("ls: not a long-format line: %q", sc.Text())
		}
		p := m[4]
		if q, ok := strings.CutSuffix(p, "  (database)"); ok {
			if q != "msgstore.db" {
				t.Errorf("ls: %q marked a database", q)
			}
			p = q
		}
		e, ok := src[p]
		if !ok {
			t.Errorf("ls: %q is not in the source", p)
			continue
		}
		seen[p] = true
		if m[1] != e.fi.Mode().String() {
			t.Errorf("ls: %s: mode %s, the source has %s", p, m[1], e.fi.Mode())
		}
		if size, _ := strconv.ParseInt(m[2], 10, 64); e.fi.Mode().IsRegular() && size != e.fi.Size() {
			t.Errorf("ls: %s: size %d, the source has %d", p, size, e.fi.Size())
		}
		if want := e.fi.ModTime().Format("2006-01-02 15:04:05"); m[3] != want {
			t.Errorf("ls: %s: time %s, the source has %s", p, m[3], want)
		}
	}
	if len(seen) != len(src) {
		for p := range src {
			if !seen[p] {
				t.Errorf("ls: %s is missing", p)
			}
		}
	}

	// find '*.opus': the voice notes, and nothing else.
	var opus []string
	for p := range src {
		if strings.HasSuffix(p, ".opus") {
			opus = append(opus, p)
		}
	}
	if len(opus) == 0 {
		t.Fatal("the generator wrote no voice notes")
	}
	var found []string
	for _, m := range jsonLines(t, r.run("find", "*.opus", "--snapshot", snap, "--json")) {
		if m["message_type"] == "find_summary" {
			if int(m["matches"].(float64)) != len(opus) {
				t.Errorf("find summary: %v, want %d matches", m, len(opus))
			}
			continue
		}
		if m["snapshot_id"] != snap || m["type"] != "file" || int64(m["size"].(float64)) != src[m["path"].(string)].fi.Size() {
			t.Errorf("find: %v", m)
		}
		found = append(found, m["path"].(string))
	}
	slices.Sort(opus)
	slices.Sort(found)
	if !slices.Equal(found, opus) {
		t.Errorf("find '*.opus' found %d files, the source has %d voice notes:\n%v\n%v", len(found), len(opus), found, opus)
	}
	if _, stderr := r.runErr("find", "*.opus", "--snapshot", snap); !strings.Contains(stderr, fmt.Sprintf("%d match(es) in 1 snapshot(s)", len(opus))) {
		t.Errorf("find: %q", stderr)
	}

	// dump of the database: what restore writes, byte for byte; and the
	// source's state (integrity_check, rows per table).
	dumped := filepath.Join(r.dir, "dump-"+short+".db")
	r.toFile(dumped, "dump", snap, "msgstore.db")
	restored := filepath.Join(r.dir, "restore-"+short)
	r.run("restore", snap, "--target", restored, "--include", "msgstore.db", "-q")
	if got, want := fileHash(t, dumped), fileHash(t, filepath.Join(restored, "msgstore.db")); got != want {
		t.Errorf("dump of the database differs from its restore")
	}
	if got := tableCounts(t, dumped, slices.Sorted(maps.Keys(counts))); !maps.Equal(got, counts) {
		t.Errorf("dumped database: rows %v, the source has %v", got, counts)
	}
	os.Remove(dumped)

	// dump of a folder as tar: its listing and contents are the folder's.
	cmd := r.cmd("dump", snap, "Media")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(pipe)
	inTar := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		inTar++
		name := strings.TrimSuffix(h.Name, "/")
		e, ok := src[name]
		if !ok || !strings.HasPrefix(name, "Media") {
			t.Errorf("tar: %q is not in the source's Media", h.Name)
			continue
		}
		switch {
		case e.fi.IsDir():
			if h.Typeflag != tar.TypeDir || !strings.HasSuffix(h.Name, "/") {
				t.Errorf("tar: %s: type %c, want a directory", h.Name, h.Typeflag)
			}
		case e.fi.Mode().IsRegular():
			hh := sha256.New()
			n, err := io.Copy(hh, tr)
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag != tar.TypeReg || n != e.fi.Size() || h.Size != e.fi.Size() || hex.EncodeToString(hh.Sum(nil)) != e.hash {
				t.Errorf("tar: %s: %d bytes (header %d), not the source's %d bytes", h.Name, n, h.Size, e.fi.Size())
			}
		}
		if fs.FileMode(h.Mode).Perm() != e.fi.Mode().Perm() || !h.ModTime.Equal(e.fi.ModTime()) {
			t.Errorf("tar: %s: mode %o, time %v; the source has %v, %v", h.Name, h.Mode, h.ModTime, e.fi.Mode(), e.fi.ModTime())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dump Media: %v", err)
	}
	if want := len(src) - 1; inTar != want {
		t.Errorf("tar: %d entries, the source's Media has %d", inTar, want)
	}

	// stats: the restore size is the sum of the file sizes.
	st := jsonLines(t, r.run("stats", snap, "--json"))[0]
	files := 0
	for _, e := range src {
		if e.fi.Mode().IsRegular() {
			files++
		}
	}
	if int64(st["restore_size"].(float64)) != restoreSize(src) || int(st["files"].(float64)) != files {
		t.Errorf("stats: %v; the source has %d files, %d bytes", st, files, restoreSize(src))
	}

	// sql: the message count is the source's.
	rows := jsonLines(t, r.run("sql", snap, "SELECT count(*) AS n FROM message", "--json"))
	if len(rows) != 1 || int64(rows[0]["n"].(float64)) != counts["message"] {
		t.Errorf("sql: %v, the source has %d messages", rows, counts["message"])
	}
	if out := r.run("sql", snap, "SELECT count(*) FROM message"); out != fmt.Sprintf("count(*)\n%d\n", counts["message"]) {
		t.Errorf("sql: %q", out)
	}
}

// checkDiff checks diff s0 s1 against what the day changed in the source.
func checkDiff(t *testing.T, r *realRepo, s0, s1 string, src0, src1 map[string]srcEntry, counts0, counts1 map[string]int64, dayMessages int64, dayMedia, dayDeleted int) {
	var wantAdded, wantRemoved, addedFiles, removedFiles []string
	for p, e := range src1 {
		if _, ok := src0[p]; !ok {
			wantAdded = append(wantAdded, p)
			if e.fi.Mode().IsRegular() && !strings.HasSuffix(p, "/.nomedia") {
				addedFiles = append(addedFiles, p)
			}
		}
	}
	for p, e := range src0 {
		if _, ok := src1[p]; !ok {
			wantRemoved = append(wantRemoved, p)
			if e.fi.Mode().IsRegular() {
				removedFiles = append(removedFiles, p)
			}
		}
	}
	if len(addedFiles) != dayMedia || len(removedFiles) != dayDeleted {
		t.Fatalf("the day added %d media files and removed %d; gen says %d and %d", len(addedFiles), len(removedFiles), dayMedia, dayDeleted)
	}
	var added, removed, changed []string
	var db map[string]any
	for _, m := range jsonLines(t, r.run("diff", s0, s1, "--json")) {
		switch m["message_type"] {
		case "change":
			p := m["path"].(string)
			switch m["change"] {
			case "added":
				added = append(added, p)
			case "removed":
				removed = append(removed, p)
			case "changed":
				changed = append(changed, p)
				if p == "msgstore.db" {
					db = m
				}
			}
			if _, ok := m["tables"]; ok && p != "msgstore.db" {
				t.Errorf("diff: %s has tables", p)
			}
		case "diff_summary":
			if int(m["added"].(float64)) != len(wantAdded) || int(m["removed"].(float64)) != len(wantRemoved) || m["changed"].(float64) != 1 {
				t.Errorf("diff summary: %v", m)
			}
		}
	}
	for _, l := range [][]string{wantAdded, wantRemoved, added, removed} {
		slices.Sort(l)
	}
	if !slices.Equal(added, wantAdded) || !slices.Equal(removed, wantRemoved) || !slices.Equal(changed, []string{"msgstore.db"}) {
		t.Fatalf("diff: added %v\nremoved %v\nchanged %v\nwant added %v\nremoved %v", added, removed, changed, wantAdded, wantRemoved)
	}
	if db["pages_changed"] == nil || db["pages_changed"].(float64) < 1 {
		t.Errorf("diff: msgstore.db: %v", db)
	}

	// Rows per table: the source's counts before and after; by rowid, the
	// day's 1,500 messages, its media rows added and the 10 deleted.
	type row struct {
		Table, Module  string
		Before, After  int64
		Added, Removed int64
		ByRowid        bool `json:"by_rowid"`
	}
	raw, _ := json.Marshal(db["tables"])
	var tables []row
	if err := json.Unmarshal(raw, &tables); err != nil {
		t.Fatal(err)
	}
	byName := map[string]row{}
	var names []string
	for _, tr := range tables {
		byName[tr.Table] = tr
		names = append(names, tr.Table)
		if tr.Before != counts0[tr.Table] || tr.After != counts1[tr.Table] {
			t.Errorf("diff: %s: %d → %d rows, the source had %d → %d", tr.Table, tr.Before, tr.After, counts0[tr.Table], counts1[tr.Table])
		}
		if tr.ByRowid && tr.Before-tr.Removed+tr.Added != tr.After {
			t.Errorf("diff: %s: %d - %d + %d != %d", tr.Table, tr.Before, tr.Removed, tr.Added, tr.After)
		}
	}
	if !slices.Equal(names, genTables) {
		t.Errorf("diff: tables %v, want %v", names, genTables)
	}
	if m := byName["message"]; !m.ByRowid || m.Added != dayMessages || m.Removed != 0 {
		t.Errorf("diff: message: %+v, want %d added", m, dayMessages)
	}
	if m := byName["message_media"]; !m.ByRowid || m.Added != int64(dayMedia) || m.Removed != int64(dayDeleted) {
		t.Errorf("diff: message_media: %+v, want %d added and %d removed", m, dayMedia, dayDeleted)
	}
	if m := byName["message_ftsv2"]; m.ByRowid || m.Module != "fts5" || m.Added != counts1["message_ftsv2"]-counts0["message_ftsv2"] || m.Added == 0 {
		t.Errorf("diff: message_ftsv2: %+v", m)
	}
	if m := byName["receipt_user"]; m.Added == 0 {
		t.Errorf("diff: receipt_user: %+v: no receipts added", m)
	}

	// The text form: the table under the database's line.
	out := r.run("diff", s0, s1)
	want := regexp.MustCompile(fmt.Sprintf(`(?m)^M  msgstore.db  \(\d+ pages changed\)\n     TABLE +BEFORE +AFTER +ADDED +REMOVED\n(     .*\n)*     message +%d +%d +%d +0\n`,
		counts0["message"], counts1["message"], dayMessages))
	if !want.MatchString(out) {
		t.Errorf("diff: no table of rows under the database:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("-  %s\n", removedFiles[0])) {
		t.Errorf("diff: %s is not shown removed:\n%s", removedFiles[0], out)
	}
}

// A dump of a 200 MiB database streams: peak RSS ≤ 64 MB, and the output
// is the source, byte for byte (issue 13, acceptance 3). Then, after a day
// of use, diff's rows per table over the two 200 MiB versions stays in
// the same bound.
func TestDumpBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("generates a 200 MiB database")
	}
	gen := genBin(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	genRun(t, gen, "--out", data, "--db-mb", "200", "--media-mb", "0")
	src := filepath.Join(data, "msgstore.db")
	fi, err := os.Stat(src)
	if err != nil || fi.Size() < 200<<20 {
		t.Fatalf("the generated database: %v %v", fi, err)
	}
	r := newRealRepo(t, dir)
	s0 := r.backup("--db", src)
	out := filepath.Join(dir, "dumped.db")
	_, peak := r.toFileMeasured(out, true, "dump", "latest", "msgstore.db")
	t.Logf("dump of a %.1f MiB database: peak RSS %d KiB (%.1f MB)", float64(fi.Size())/(1<<20), peak, float64(peak)/1024)
	if peak > 64<<10 {
		t.Errorf("dump: peak RSS %d KiB, want ≤ 64 MB", peak)
	}
	if got, want := fileHash(t, out), fileHash(t, src); got != want {
		t.Errorf("the dumped database differs from the source")
	}
	os.Remove(out)

	genRun(t, gen, "--out", data, "--day", "1")
	s1 := r.backup("--db", src)
	cmd := r.cmd("diff", "--json", s0, s1)
	diffPeak := measuredRSS(t, cmd)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("diff: %v %s", err, stderr.String())
	}
	took := time.Since(start)
	peak = diffPeak()
	t.Logf("diff with rows per table of the database's two versions: %v, peak RSS %d KiB (%.1f MB)", took.Round(time.Millisecond), peak, float64(peak)/1024)
	if peak > 64<<10 {
		t.Errorf("diff: peak RSS %d KiB, want ≤ 64 MB", peak)
	}
	var msgs map[string]any
	for _, m := range jsonLines(t, stdout.String()) {
		if m["path"] == "msgstore.db" {
			for _, tr := range m["tables"].([]any) {
				if tr := tr.(map[string]any); tr["table"] == "message" {
					msgs = tr
				}
			}
		}
	}
	if msgs == nil || msgs["added"] != 1500.0 || msgs["removed"] != 0.0 || msgs["by_rowid"] != true {
		t.Errorf("diff: message rows %v, want 1500 added", msgs)
	}
	r.tmpEmpty()
}
