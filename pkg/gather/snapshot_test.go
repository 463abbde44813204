package gather

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"modernc.org/sqlite"
)

// The test databases hold messages numbered 1..n (seq) and a counter row
// equal to n, always changed in the same transaction, so any
// transaction-consistent copy has seq exactly 1..counter.
const testSchema = `
CREATE TABLE message (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE INDEX message_body ON message(body);
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO counter VALUES (1, 0);
`

func openRW(t testing.TB, path string, pragmas ...string) *sql.DB {
	t.Helper()
	uri, err := sqliteURI(path, append([]string{"_pragma=busy_timeout(10000)"}, pragmas...)...)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

func randBody(r *rand.Rand) string {
	const letters = "abcdefghijklmnopqrstuvwxyz      "
	b := make([]byte, 100+r.IntN(300))
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}

// appendMessages commits count transactions, each adding the next message
// and raising the counter to it; it returns the new counter.
func appendMessages(t testing.TB, db *sql.DB, r *rand.Rand, count int) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	for range count {
		n++
		if err := commitMessage(db, r, n); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func commitMessage(db *sql.DB, r *rand.Rand, n int) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.Exec("INSERT INTO message(seq, body) VALUES (?, ?)", n, randBody(r)); err != nil {
		return err
	}
	if n%7 == 0 {
		// Rewrite an older row too, so pages all over the file change.
		if _, err := tx.Exec("UPDATE message SET body = ? WHERE seq = ?", randBody(r), 1+r.IntN(n)); err != nil {
			return err
		}
	}
	if _, err := tx.Exec("UPDATE counter SET n = ?", n); err != nil {
		return err
	}
	return tx.Commit()
}

// bulkFill adds count messages in one transaction.
func bulkFill(t testing.TB, db *sql.DB, r *rand.Rand, count int) int {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	for range count {
		n++
		if _, err := tx.Exec("INSERT INTO message(seq, body) VALUES (?, ?)", n, randBody(r)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec("UPDATE counter SET n = ?", n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return n
}

// createDB makes a test database in the given journal mode with rows
// messages and returns the open handle.
func createDB(t testing.TB, path, journal string, rows int) *sql.DB {
	t.Helper()
	db := openRW(t, path, "_pragma=journal_mode("+journal+")", "_pragma=synchronous(NORMAL)")
	if _, err := db.Exec(testSchema); err != nil {
		t.Fatal(err)
	}
	if rows > 0 {
		bulkFill(t, db, rand.New(rand.NewPCG(1, 2)), rows)
	}
	return db
}

// checkSnapshot verifies a snapshot file: a self-contained rollback-journal
// database passing integrity_check whose messages are exactly 1..counter.
// It returns the counter.
func checkSnapshot(t testing.TB, path string) int {
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
	if !bytes.HasPrefix(hdr, []byte("SQLite format 3\x00")) {
		t.Fatalf("%s: no SQLite header", path)
	}
	if hdr[18] != 1 || hdr[19] != 1 {
		t.Errorf("%s: header read/write versions %d/%d, want 1/1 (not WAL)", path, hdr[18], hdr[19])
	}
	for _, sfx := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Lstat(path + sfx); err == nil {
			t.Errorf("%s exists next to the snapshot", path+sfx)
		}
	}

	uri, err := sqliteURI(path, "mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		t.Fatalf("%s: integrity_check = %q, %v", path, ic, err)
	}
	var counter, count, lo, hi int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&counter); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM message").Scan(&count, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	want := [3]int{counter, min(counter, 1), counter}
	if got := [3]int{count, lo, hi}; got != want {
		t.Fatalf("%s: not a consistent prefix: counter=%d but count/min/max = %v", path, counter, got)
	}
	return counter
}

// dirState fingerprints every file in dir (name → sha256).
func dirState(t testing.TB, dir string) map[string]string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[de.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return m
}

func TestSnapshotDB(t *testing.T) {
	tests := []struct {
		name    string
		dir     string // source directory name, to exercise URI escaping
		journal string
		rows    int
		// keepOpen leaves a connection open with its commits still in
		// the -wal (autocheckpoint off), as while the chat app runs.
		keepOpen bool
		// crashed copies the database and its -wal, but not the -shm,
		// elsewhere while a connection has them open: the state an app
		// killed without closing its database leaves behind.
		crashed bool
	}{
		{name: "wal closed", dir: "src", journal: "WAL", rows: 3000},
		{name: "wal open with uncheckpointed commits", dir: "src", journal: "WAL", rows: 3000, keepOpen: true},
		{name: "wal left by a killed app", dir: "src", journal: "WAL", rows: 3000, keepOpen: true, crashed: true},
		{name: "rollback journal", dir: "src", journal: "DELETE", rows: 3000},
		{name: "empty tables", dir: "src", journal: "WAL", rows: 0},
		{name: "odd path", dir: "we?ird #%41 dir ü", journal: "WAL", rows: 50, keepOpen: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			srcDir := filepath.Join(base, tc.dir)
			if err := os.Mkdir(srcDir, 0o755); err != nil {
				t.Fatal(err)
			}
			src := filepath.Join(srcDir, "msgstore.db")
			db := createDB(t, src, tc.journal, tc.rows)
			want := tc.rows
			if tc.keepOpen {
				if _, err := db.Exec("PRAGMA wal_autocheckpoint=0"); err != nil {
					t.Fatal(err)
				}
				want = appendMessages(t, db, rand.New(rand.NewPCG(3, 4)), 40)
				defer db.Close()
				if fi, err := os.Stat(src + "-wal"); err != nil || fi.Size() == 0 {
					t.Fatalf("expected a non-empty -wal: %v", err)
				}
				if tc.crashed {
					srcDir = filepath.Join(base, "crashed")
					if err := os.Mkdir(srcDir, 0o755); err != nil {
						t.Fatal(err)
					}
					for _, name := range []string{"msgstore.db", "msgstore.db-wal"} {
						b, err := os.ReadFile(filepath.Join(filepath.Dir(src), name))
						if err != nil {
							t.Fatal(err)
						}
						if err := os.WriteFile(filepath.Join(srcDir, name), b, 0o644); err != nil {
							t.Fatal(err)
						}
					}
					src = filepath.Join(srcDir, "msgstore.db")
				}
			} else if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			before := dirState(t, srcDir)
			dst := filepath.Join(base, "snap.db")
			if err := SnapshotDB(context.Background(), src, dst); err != nil {
				t.Fatal(err)
			}
			if got := checkSnapshot(t, dst); got != want {
				t.Errorf("snapshot has counter %d, want %d", got, want)
			}
			after := dirState(t, srcDir)
			checkUntouched(t, before, after)
		})
	}
}

// checkUntouched compares a source directory's fingerprints before and after
// a snapshot. The database and its -wal must be unchanged. Like any SQLite
// reader, the read-only snapshot connection may have had to create the
// -shm index and an empty -wal for a WAL database nobody had open.
func checkUntouched(t *testing.T, before, after map[string]string) {
	t.Helper()
	const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for name, sum := range after {
		if _, ok := before[name]; ok {
			continue
		}
		if strings.HasSuffix(name, "-shm") || strings.HasSuffix(name, "-wal") && sum == empty {
			delete(after, name)
		}
	}
	delete(before, "msgstore.db-shm")
	delete(after, "msgstore.db-shm")
	if !mapsEqual(before, after) {
		t.Errorf("source directory changed:\nbefore %v\nafter  %v", before, after)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// corruptMiddlePage overwrites one page in the middle of a closed database
// file with garbage and returns its page number.
func corruptMiddlePage(t *testing.T, path string) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 100)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	pageSize := int64(hdr[16])<<8 | int64(hdr[17])
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pages := fi.Size() / pageSize
	if pages < 10 {
		t.Fatalf("database has only %d pages", pages)
	}
	page := pages / 2
	garbage := make([]byte, pageSize)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range garbage {
		garbage[i] = byte(r.Uint32())
	}
	if _, err := f.WriteAt(garbage, (page-1)*pageSize); err != nil {
		t.Fatal(err)
	}
	return int(page)
}

func TestSnapshotDBErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, src, dst string)
		is      error  // errors.Is target, if any
		contain string // substring of the message
	}{
		{
			name:    "missing",
			setup:   func(*testing.T, string, string) {},
			is:      fs.ErrNotExist,
			contain: "chat database ",
		},
		{
			name: "not a database",
			setup: func(t *testing.T, src, _ string) {
				if err := os.WriteFile(src, bytes.Repeat([]byte("this is not SQLite\n"), 300), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			is:      ErrNotDatabase,
			contain: "file is not a database",
		},
		{
			name: "short garbage",
			setup: func(t *testing.T, src, _ string) {
				if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			is:      ErrNotDatabase,
			contain: "file is not a database",
		},
		{
			name: "directory",
			setup: func(t *testing.T, src, _ string) {
				if err := os.Mkdir(src, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			contain: "not a regular file",
		},
		{
			name: "corrupt page",
			setup: func(t *testing.T, src, _ string) {
				db := createDB(t, src, "WAL", 3000)
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				corruptMiddlePage(t, src)
			},
			is:      ErrCorruptDB,
			contain: "failed integrity_check: *** in database main *** ",
		},
		{
			name: "hot journal",
			setup: func(t *testing.T, src, _ string) {
				// Copy a rollback-journal database and its journal
				// in the middle of a write transaction.
				dir := t.TempDir()
				live := filepath.Join(dir, "live.db")
				db := createDB(t, live, "DELETE", 3000)
				defer db.Close()
				if _, err := db.Exec("PRAGMA cache_size=5"); err != nil {
					t.Fatal(err)
				}
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				r := rand.New(rand.NewPCG(1, 1))
				for i := range 500 {
					if _, err := tx.Exec("UPDATE message SET body = ? WHERE seq = ?", randBody(r), i+1); err != nil {
						t.Fatal(err)
					}
				}
				for _, sfx := range []string{"", "-journal"} {
					b, err := os.ReadFile(live + sfx)
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(src+sfx, b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			},
			contain: "hot journal",
		},
		{
			name: "destination exists",
			setup: func(t *testing.T, src, dst string) {
				db := createDB(t, src, "WAL", 10)
				db.Close()
				if err := os.WriteFile(dst, []byte("keep me"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			is: fs.ErrExist,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "msgstore.db")
			dst := filepath.Join(dir, "snap.db")
			tc.setup(t, src, dst)
			_, dstErr := os.Stat(dst)
			err := SnapshotDB(context.Background(), src, dst)
			if err == nil {
				t.Fatal("SnapshotDB succeeded")
			}
			t.Logf("error: %v", err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.contain) {
				t.Errorf("error %q does not contain %q", err, tc.contain)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error message spans lines: %q", err)
			}
			if dstErr != nil {
				// SnapshotDB created dst, so it must have removed it.
				left, _ := filepath.Glob(dst + "*")
				if len(left) > 0 {
					t.Errorf("left behind: %v", left)
				}
			} else if b, _ := os.ReadFile(dst); string(b) != "keep me" {
				t.Errorf("existing destination was changed")
			}
		})
	}
}

func TestSnapshotDBCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 3000)
	db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dst := filepath.Join(dir, "snap.db")
	steps := 0
	err := snapshotDB(ctx, src, dst, snapOpts{stepPages: 8, onStep: func(int, int) {
		steps++
		if steps == 3 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if left, _ := filepath.Glob(dst + "*"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestSnapshotPinsReadTransaction commits to the source between backup
// steps. SnapshotDB holds one read transaction over the whole copy, so the
// backup must neither restart nor see the new commits.
func TestSnapshotPinsReadTransaction(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 5000)
	defer db.Close()
	r := rand.New(rand.NewPCG(7, 8))
	start := appendMessages(t, db, r, 1)

	dst := filepath.Join(dir, "snap.db")
	var copied []int
	total0 := -1
	err := snapshotDB(context.Background(), src, dst, snapOpts{stepPages: 16, onStep: func(c, total int) {
		if total0 < 0 {
			total0 = total
		} else if total != total0 {
			t.Errorf("source page count changed mid-copy: %d -> %d", total0, total)
		}
		copied = append(copied, c)
		appendMessages(t, db, r, 3)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(copied) < 10 {
		t.Fatalf("copy took only %d steps; want many", len(copied))
	}
	if !slices.IsSorted(copied) || hasDup(copied) {
		t.Errorf("backup restarted: pages copied after each step %v", copied)
	}
	if got := checkSnapshot(t, dst); got != start {
		t.Errorf("snapshot counter %d, want %d (the state when the copy started)", got, start)
	}
}

func hasDup(s []int) bool {
	for i := 1; i < len(s); i++ {
		if s[i] == s[i-1] {
			return true
		}
	}
	return false
}

// TestBackupAPIRestarts documents the SQLite behaviour SnapshotDB avoids by
// pinning a read transaction: without one, a commit by another connection
// between steps makes the backup start over, and the finished copy is still
// consistent (it holds the newer state).
func TestBackupAPIRestarts(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	writer := createDB(t, src, "WAL", 5000)
	defer writer.Close()
	r := rand.New(rand.NewPCG(9, 10))

	reader := openRW(t, src)
	defer reader.Close()
	conn, err := reader.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := filepath.Join(dir, "copy.db")
	uri, _ := sqliteURI(dst)
	var want int
	err = conn.Raw(func(dc any) error {
		b, err := dc.(interface {
			NewBackup(string) (*sqlite.Backup, error)
		}).NewBackup(uri)
		if err != nil {
			return err
		}
		defer b.Finish()
		var copied []int
		for i := 0; ; i++ {
			more, err := b.Step(32)
			if err != nil {
				return err
			}
			copied = append(copied, b.PageCount()-b.Remaining())
			if !more {
				break
			}
			if i == 5 {
				want = appendMessages(t, writer, r, 2)
			}
		}
		if copied[6] > copied[5] {
			t.Errorf("backup did not restart after a concurrent commit: %v", copied[:8])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The copy still says WAL in its header; checkSnapshot wants a
	// SnapshotDB result, so only check consistency here.
	db := openRW(t, dst, "_pragma=journal_mode(DELETE)")
	defer db.Close()
	var n, count int
	if err := db.QueryRow("SELECT (SELECT n FROM counter), (SELECT count(*) FROM message)").Scan(&n, &count); err != nil {
		t.Fatal(err)
	}
	if n != want || count != want {
		t.Errorf("copy has counter %d and %d messages, want %d", n, count, want)
	}
}

// TestSnapshotLiveWriter snapshots a database while another process commits
// to it as fast as it can.
func TestSnapshotLiveWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 15000) // a few MB
	db.Close()
	if fi, err := os.Stat(src); err != nil || fi.Size() < 4<<20 {
		t.Fatalf("source too small: %v %v", fi.Size(), err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$")
	cmd.Env = append(os.Environ(), "GATHER_TEST_WRITER_DB="+src)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("writer did not start: %q", lines.Text())
	}

	counter := func() int {
		uri, _ := sqliteURI(src, "mode=ro", "_pragma=busy_timeout(10000)")
		rdb, err := sql.Open("sqlite", uri)
		if err != nil {
			t.Fatal(err)
		}
		defer rdb.Close()
		var n int
		if err := rdb.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	concurrent := 0
	prev := 0
	for i := range 6 {
		dst := filepath.Join(dir, fmt.Sprintf("snap%d.db", i))
		before := counter()
		var err error
		var steps int
		if i%2 == 0 {
			err = SnapshotDB(context.Background(), src, dst)
		} else {
			// Small steps, slowed down, so the copy spans many commits.
			err = snapshotDB(context.Background(), src, dst, snapOpts{stepPages: 50, onStep: func(int, int) {
				steps++
				time.Sleep(time.Millisecond)
			}})
		}
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
		after := counter()
		k := checkSnapshot(t, dst)
		t.Logf("snapshot %d: counter %d (source %d before, %d after; %d small steps)", i, k, before, after, steps)
		if k < before || k > after {
			t.Errorf("snapshot %d holds counter %d, outside [%d, %d]", i, k, before, after)
		}
		if k < prev {
			t.Errorf("snapshot %d went back in time: %d < %d", i, k, prev)
		}
		prev = k
		if after > before {
			concurrent++
		}
	}
	stdin.Close()
	if !lines.Scan() {
		t.Fatalf("writer exited without a report: %v", cmd.Wait())
	}
	final, _ := strconv.Atoi(strings.TrimPrefix(lines.Text(), "done "))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("writer committed up to %d; %d snapshots overlapped commits", final, concurrent)
	if concurrent < 3 {
		t.Errorf("only %d snapshots ran while the writer committed", concurrent)
	}
}

// TestHelperWriter is the writer process of TestSnapshotLiveWriter: it
// commits numbered transactions until its stdin closes.
func TestHelperWriter(t *testing.T) {
	src := os.Getenv("GATHER_TEST_WRITER_DB")
	if src == "" {
		t.Skip("helper process for TestSnapshotLiveWriter")
	}
	db := openRW(t, src, "_pragma=synchronous(NORMAL)")
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() {
		var b [1]byte
		os.Stdin.Read(b[:])
		close(stop)
	}()
	fmt.Println("ready")
	r := rand.New(rand.NewPCG(11, 12))
	for {
		select {
		case <-stop:
			fmt.Printf("done %d\n", n)
			return
		default:
		}
		n++
		if err := commitMessage(db, r, n); err != nil {
			t.Fatalf("commit %d: %v", n, err)
		}
	}
}

// TestCopyDBPinnedCallback: CopyDB reports the moment the copied state is
// fixed, before the pages are copied; commits made from then on are not
// in the copy. The backup starts its media walk at that moment.
func TestCopyDBPinnedCallback(t *testing.T) {
	for _, journal := range []string{"WAL", "DELETE"} {
		t.Run(journal, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "msgstore.db")
			db := createDB(t, src, journal, 3000)
			defer db.Close()
			r := rand.New(rand.NewPCG(3, 4))
			start := appendMessages(t, db, r, 1)
			dst := filepath.Join(dir, "copy.db")
			calls := 0
			committed := make(chan error, 1)
			err := CopyDB(context.Background(), src, dst, func() {
				calls++
				if journal == "DELETE" {
					// A writer waits for the copy's read lock: it commits
					// after the copy, so check from another goroutine.
					go func() { committed <- commitMessage(db, r, start+1) }()
					return
				}
				committed <- commitMessage(db, r, start+1)
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := <-committed; err != nil {
				t.Fatal(err)
			}
			if calls != 1 {
				t.Fatalf("pinned called %d times, want 1", calls)
			}
			if got := checkSnapshot(t, dst); got != start {
				t.Errorf("copy holds counter %d, want %d (the state when pinned was called)", got, start)
			}
		})
	}
}
