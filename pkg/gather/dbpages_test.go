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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeImage writes the pages of p, in order, to a new file at dst.
func writeImage(t testing.TB, p *DBPages, dst string) {
	t.Helper()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = p.Pages(context.Background(), func(pgno uint32, data []byte) error {
		if len(data) != p.PageSize() {
			return fmt.Errorf("page %d has %d bytes", pgno, len(data))
		}
		_, err := f.Write(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// header reads the first 100 bytes of a database file.
func header(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 100)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	return hdr
}

// checkImage verifies a database file written from pages: it opens (in the
// journal mode its header says), passes integrity_check, has the page size
// and count of p, and its messages are exactly 1..counter. It returns the
// counter.
func checkImage(t testing.TB, p *DBPages, path string) int {
	t.Helper()
	hdr := header(t, path)
	if !bytes.HasPrefix(hdr, []byte("SQLite format 3\x00")) {
		t.Fatalf("%s: no SQLite header", path)
	}
	want := byte(1)
	if p.WAL() {
		want = 2
	}
	if hdr[18] != want || hdr[19] != want {
		t.Errorf("%s: header read/write versions %d/%d, want %d (WAL %v)", path, hdr[18], hdr[19], want, p.WAL())
	}
	db := openRW(t, path)
	defer db.Close()
	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		t.Fatalf("%s: integrity_check = %q, %v", path, ic, err)
	}
	var size, pages int
	if err := db.QueryRow("SELECT (SELECT page_size FROM pragma_page_size), (SELECT page_count FROM pragma_page_count)").Scan(&size, &pages); err != nil {
		t.Fatal(err)
	}
	if size != p.PageSize() || uint32(pages) != p.PageCount() {
		t.Errorf("%s: page size %d, %d pages; want %d, %d", path, size, pages, p.PageSize(), p.PageCount())
	}
	return consistentCounter(t, db, path)
}

// consistentCounter returns the counter of a test database after checking
// that its messages are exactly 1..counter.
func consistentCounter(t testing.TB, db interface {
	QueryRow(string, ...any) *sql.Row
}, name string) int {
	t.Helper()
	var counter, count, lo, hi int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&counter); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM message").Scan(&count, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	want := [3]int{counter, min(counter, 1), counter}
	if got := [3]int{count, lo, hi}; got != want {
		t.Fatalf("%s: not a consistent state: counter=%d but count/min/max = %v", name, counter, got)
	}
	return counter
}

// checkConnCounter reads the counter on the connections Check uses, which
// must all see the same.
func checkConnCounter(t testing.TB, p *DBPages) int {
	t.Helper()
	conns := p.checks
	if len(conns) == 0 {
		conns = []*liteConn{p.pin}
	}
	seen := -1
	for i, c := range conns {
		c.mu.Lock()
		n, err := c.queryInt("SELECT n FROM counter")
		c.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && int(n) != seen {
			t.Fatalf("check connection %d sees counter %d, connection 0 %d", i, n, seen)
		}
		seen = int(n)
	}
	return seen
}

// currentCounter reads the counter on a fresh connection.
func currentCounter(t testing.TB, src string) int {
	t.Helper()
	uri, err := sqliteURI(src, "mode=ro", "_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDBPagesImage(t *testing.T) {
	tests := []struct {
		name    string
		dir     string
		journal string
		rows    int
		// keepOpen leaves a connection open with its commits still in the
		// -wal; crashed copies the database and -wal without the -shm.
		keepOpen, crashed bool
		pageSize          int
		noPair            bool
	}{
		{name: "wal closed", dir: "src", journal: "WAL", rows: 3000},
		{name: "wal open with uncheckpointed commits", dir: "src", journal: "WAL", rows: 3000, keepOpen: true},
		{name: "wal left by a killed app", dir: "src", journal: "WAL", rows: 3000, keepOpen: true, crashed: true},
		{name: "rollback journal", dir: "src", journal: "DELETE", rows: 3000},
		{name: "rollback journal, truncate", dir: "src", journal: "TRUNCATE", rows: 500},
		{name: "empty tables", dir: "src", journal: "WAL", rows: 0},
		{name: "page size 1024", dir: "src", journal: "WAL", rows: 500, keepOpen: true, pageSize: 1024},
		{name: "odd path", dir: "we?ird #%41 dir ü", journal: "WAL", rows: 50, keepOpen: true},
		{name: "single connection", dir: "src", journal: "WAL", rows: 500, keepOpen: true, noPair: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			srcDir := filepath.Join(base, tc.dir)
			if err := os.Mkdir(srcDir, 0o755); err != nil {
				t.Fatal(err)
			}
			src := filepath.Join(srcDir, "msgstore.db")
			var pragmas []string
			if tc.pageSize != 0 {
				pragmas = append(pragmas, fmt.Sprintf("_pragma=page_size(%d)", tc.pageSize))
			}
			db := openRW(t, src, pragmas...)
			for _, q := range []string{"PRAGMA journal_mode=" + tc.journal, "PRAGMA synchronous=NORMAL", testSchema} {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			want := 0
			if tc.rows > 0 {
				want = bulkFill(t, db, rand.New(rand.NewPCG(1, 2)), tc.rows)
			}
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
			srcHdr := header(t, src)

			before := dirState(t, srcDir)
			p, err := openDBPages(context.Background(), src, pagesOpts{noPair: tc.noPair})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if paired := len(p.checks) > 0; paired == tc.noPair {
				t.Errorf("check connections in use: %v", paired)
			}
			if wantWAL := tc.journal == "WAL"; p.WAL() != wantWAL {
				t.Errorf("WAL() = %v, want %v", p.WAL(), wantWAL)
			}
			if tc.pageSize != 0 && p.PageSize() != tc.pageSize {
				t.Errorf("PageSize() = %d, want %d", p.PageSize(), tc.pageSize)
			}
			img := filepath.Join(base, "image.db")
			writeImage(t, p, img)
			for _, level := range []CheckLevel{CheckQuick, CheckFull} {
				if err := p.Check(context.Background(), level); err != nil {
					t.Errorf("Check(%v): %v", level, err)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			imgHdr := header(t, img)
			if imgHdr[18] != srcHdr[18] || imgHdr[19] != srcHdr[19] {
				t.Errorf("image header bytes 18/19 = %d/%d, source %d/%d", imgHdr[18], imgHdr[19], srcHdr[18], srcHdr[19])
			}
			if got := checkImage(t, p, img); got != want {
				t.Errorf("image has counter %d, want %d", got, want)
			}
			checkUntouched(t, before, dirState(t, srcDir))
		})
	}
}

// TestDBPagesPinned commits to the source while Pages runs and Check runs
// beside it: the image and the check hold the state pinned by OpenDBPages.
func TestDBPagesPinned(t *testing.T) {
	for _, journal := range []string{"WAL", "DELETE"} {
		t.Run(journal, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "msgstore.db")
			db := createDB(t, src, journal, 5000)
			defer db.Close()
			r := rand.New(rand.NewPCG(7, 8))
			start := appendMessages(t, db, r, 1)

			p, err := OpenDBPages(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if len(p.checks) < 2 {
				t.Fatalf("%d check connections, want at least 2", len(p.checks))
			}

			// The writer commits one message per 16 pages read. In
			// rollback mode it waits for Close: run it in a goroutine
			// and hand it the numbers to commit.
			commits := make(chan int, 1000)
			committed := make(chan error, 1)
			var done sync.WaitGroup
			done.Add(1)
			go func() {
				defer done.Done()
				wr := rand.New(rand.NewPCG(9, 10))
				for n := range commits {
					if err := commitMessage(db, wr, n); err != nil {
						committed <- err
						return
					}
					if journal == "WAL" {
						committed <- nil
					}
				}
				committed <- nil
			}()
			next := start
			var checkErr error
			var checking sync.WaitGroup
			checking.Add(1)
			go func() {
				defer checking.Done()
				checkErr = p.Check(context.Background(), CheckFull)
			}()
			img := filepath.Join(dir, "image.db")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			err = p.Pages(context.Background(), func(pgno uint32, data []byte) error {
				if pgno%16 == 0 {
					next++
					commits <- next
					if journal == "WAL" {
						if err := <-committed; err != nil {
							return err
						}
					}
				}
				_, err := f.Write(data)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			checking.Wait()
			if checkErr != nil {
				t.Errorf("concurrent Check: %v", checkErr)
			}
			if got := checkConnCounter(t, p); got != start {
				t.Errorf("check connection sees counter %d, want %d", got, start)
			}
			if journal == "WAL" {
				if now := currentCounter(t, src); now != next || next < start+10 {
					t.Errorf("writer committed up to %d, source now says %d", next, now)
				}
			} else {
				select {
				case err := <-committed:
					t.Fatalf("a writer finished while the state was pinned: %v", err)
				case <-time.After(50 * time.Millisecond):
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			close(commits)
			done.Wait()
			if err := <-committed; err != nil {
				t.Fatal(err)
			}
			if got := checkImage(t, p, img); got != start {
				t.Errorf("image holds counter %d, want %d (the pinned state)", got, start)
			}
			if now := currentCounter(t, src); now != next {
				t.Errorf("source counter %d after Close, want %d", now, next)
			}
		})
	}
}

// TestDBPagesRepin: when the second connection cannot join the state the
// first one pinned, OpenDBPages lets go and pins afresh.
func TestDBPagesRepin(t *testing.T) {
	tests := []struct {
		name    string
		journal string
		// prepare runs before OpenDBPages, interfere when the first
		// connection has pinned the first time.
		// prepare may replace the writer.
		prepare   func(t *testing.T, src string, db *sql.DB, r *rand.Rand) *sql.DB
		interfere func(t *testing.T, src string, db *sql.DB, r *rand.Rand)
		// why the first attempt fails
		reason string
	}{
		{
			// With the whole WAL backfilled, the first connection reads
			// the database file alone and the next commit restarts the
			// WAL: sqlite3_snapshot_open fails (SQLITE_ERROR_SNAPSHOT).
			name:    "WAL restarted",
			journal: "WAL",
			prepare: func(t *testing.T, _ string, db *sql.DB, r *rand.Rand) *sql.DB {
				appendMessages(t, db, r, 5)
				var busy, logFrames, ckpt int
				if err := db.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &ckpt); err != nil || busy != 0 || logFrames == 0 || ckpt != logFrames {
					t.Fatalf("checkpoint: busy %d, %d frames, %d checkpointed, %v", busy, logFrames, ckpt, err)
				}
				return db
			},
			interfere: func(t *testing.T, _ string, db *sql.DB, r *rand.Rand) {
				appendMessages(t, db, r, 1)
			},
			reason: "(769)", // SQLITE_ERROR_SNAPSHOT
		},
		{
			// When the last connection closes, SQLite deletes the WAL;
			// in a new one nothing has been written, and the first
			// connection reads the database file alone. A commit before
			// the second connection reads makes it see another state.
			name:    "new WAL written",
			journal: "WAL",
			prepare: func(t *testing.T, src string, db *sql.DB, _ *rand.Rand) *sql.DB {
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(src + "-wal"); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("WAL left after closing: %v", err)
				}
				return openRW(t, src)
			},
			interfere: func(t *testing.T, _ string, db *sql.DB, r *rand.Rand) {
				appendMessages(t, db, r, 1)
			},
			reason: "a commit came between",
		},
		{
			// A writer waiting to commit holds a PENDING lock, which
			// keeps the second connection from reading, and waits for
			// the first one.
			name:    "rollback writer waiting",
			journal: "DELETE",
			prepare: func(_ *testing.T, _ string, db *sql.DB, _ *rand.Rand) *sql.DB { return db },
			interfere: func(t *testing.T, src string, db *sql.DB, r *rand.Rand) {
				var n int
				if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
					t.Fatal(err)
				}
				go commitMessage(db, r, n+1) //nolint:errcheck // checked by the counters
				waitPending(t, src)
			},
			reason: "(5)", // SQLITE_BUSY
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "msgstore.db")
			db := createDB(t, src, tc.journal, 2000)
			r := rand.New(rand.NewPCG(11, 12))
			db = tc.prepare(t, src, db, r)
			defer db.Close()
			start := currentCounter(t, src)
			calls := 0
			var reasons []string
			p, err := openDBPages(context.Background(), src, pagesOpts{
				afterPin: func() {
					calls++
					if calls == 1 {
						tc.interfere(t, src, db, r)
					}
				},
				pairFailed: func(err error) { reasons = append(reasons, err.Error()) },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.pins != 2 || calls != 2 || len(reasons) != 1 || !strings.Contains(reasons[0], tc.reason) {
				t.Fatalf("pinned %d times (%d calls) after failures %q, want 2 after one with %q", p.pins, calls, reasons, tc.reason)
			}
			t.Logf("first attempt: %s", reasons[0])
			if len(p.checks) == 0 {
				t.Fatal("no check connections after pinning again")
			}
			if got := checkConnCounter(t, p); got != start+1 {
				t.Errorf("check connection sees %d, want %d (after the commit)", got, start+1)
			}
			img := filepath.Join(dir, "image.db")
			writeImage(t, p, img)
			if err := p.Check(context.Background(), CheckQuick); err != nil {
				t.Fatal(err)
			}
			p.Close()
			if got := checkImage(t, p, img); got != start+1 {
				t.Errorf("image holds %d, want %d", got, start+1)
			}
		})
	}
}

// waitPending returns once a writer waits to commit to the rollback-journal
// database at src: it holds the PENDING lock, so new readers get
// SQLITE_BUSY.
func waitPending(t *testing.T, src string) {
	t.Helper()
	uri, err := sqliteURI(src, "mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	c, err := openLite(uri, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := c.queryInt("SELECT count(*) FROM sqlite_schema"); isBusy(err) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("no writer is waiting")
}

// TestDBPagesSingleConnection: without a second connection, Check runs on
// the pinned one and waits for Pages.
func TestDBPagesSingleConnection(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 3000)
	defer db.Close()
	r := rand.New(rand.NewPCG(13, 14))
	start := appendMessages(t, db, r, 1)
	p, err := openDBPages(context.Background(), src, pagesOpts{noPair: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	appendMessages(t, db, r, 20)
	checked := make(chan error, 1)
	err = p.Pages(context.Background(), func(pgno uint32, _ []byte) error {
		if pgno == 1 {
			go func() { checked <- p.Check(context.Background(), CheckQuick) }()
		}
		if pgno == 3 {
			select {
			case err := <-checked:
				return fmt.Errorf("Check ran during Pages on the same connection: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if got := checkConnCounter(t, p); got != start {
		t.Errorf("check connection sees %d, want %d", got, start)
	}
}

func TestDBPagesErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, src string)
		is      error  // errors.Is target, if any
		contain string // substring of the message
		// check, if set: OpenDBPages succeeds and Check(quick) fails.
		check bool
	}{
		{
			name:    "missing",
			setup:   func(*testing.T, string) {},
			is:      fs.ErrNotExist,
			contain: "chat database ",
		},
		{
			name: "not a database",
			setup: func(t *testing.T, src string) {
				if err := os.WriteFile(src, bytes.Repeat([]byte("this is not SQLite\n"), 300), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			is:      ErrNotDatabase,
			contain: "file is not a database",
		},
		{
			name: "short garbage",
			setup: func(t *testing.T, src string) {
				if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			is:      ErrNotDatabase,
			contain: "file is not a database",
		},
		{
			name: "directory",
			setup: func(t *testing.T, src string) {
				if err := os.Mkdir(src, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			contain: "not a regular file",
		},
		{
			name: "corrupt page",
			setup: func(t *testing.T, src string) {
				db := createDB(t, src, "WAL", 3000)
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				corruptMiddlePage(t, src)
			},
			check:   true,
			is:      ErrCorruptDB,
			contain: "failed quick_check of message: *** in database main *** ",
		},
		{
			name: "corrupt schema",
			setup: func(t *testing.T, src string) {
				db := createDB(t, src, "DELETE", 10)
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				// Page 1 holds sqlite_schema after the header.
				f, err := os.OpenFile(src, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteAt(bytes.Repeat([]byte{0xff}, 400), 100); err != nil {
					t.Fatal(err)
				}
			},
			is:      ErrCorruptDB,
			contain: "is corrupt: ",
		},
		{
			name: "hot journal",
			setup: func(t *testing.T, src string) {
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "msgstore.db")
			tc.setup(t, src)
			p, err := OpenDBPages(context.Background(), src)
			if tc.check {
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				if err := p.Pages(context.Background(), func(uint32, []byte) error { return nil }); err != nil {
					t.Errorf("Pages: %v", err)
				}
				err = p.Check(context.Background(), CheckQuick)
				if err2 := p.Check(context.Background(), CheckFull); !errors.Is(err2, ErrCorruptDB) {
					t.Errorf("integrity_check: %v", err2)
				} else {
					t.Logf("integrity_check: %v", err2)
				}
			} else if err == nil {
				p.Close()
				t.Fatal("OpenDBPages succeeded")
			}
			if err == nil {
				t.Fatal("no error")
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
		})
	}
}

func TestDBPagesCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 20000) // about 8 MB
	defer db.Close()
	r := rand.New(rand.NewPCG(17, 18))
	start := appendMessages(t, db, r, 1)

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := OpenDBPages(canceled, src); !errors.Is(err, context.Canceled) {
		t.Errorf("OpenDBPages with a canceled context: %v", err)
	}

	p, err := OpenDBPages(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	appendMessages(t, db, r, 5)

	t.Run("pages", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls := 0
		err := p.Pages(ctx, func(pgno uint32, _ []byte) error {
			calls++
			if pgno == 3 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) || calls != 3 {
			t.Errorf("got %v after %d pages, want context.Canceled after 3", err, calls)
		}
	})
	t.Run("check", func(t *testing.T) {
		if err := p.Check(canceled, CheckQuick); !errors.Is(err, context.Canceled) {
			t.Errorf("Check with a canceled context: %v", err)
		}
		start := time.Now()
		if err := p.Check(context.Background(), CheckFull); err != nil {
			t.Fatal(err)
		}
		full := time.Since(start)
		// A busy machine may delay the return: try a few times.
		for try := 1; ; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), full/10)
			start = time.Now()
			err := p.Check(ctx, CheckFull)
			took := time.Since(start)
			cancel()
			t.Logf("integrity_check takes %v; canceled after %v it returned after %v: %v", full, full/10, took, err)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want context.DeadlineExceeded", err)
			}
			if took <= full/2 {
				break
			}
			if try == 3 {
				t.Fatalf("canceled check took %v of %v", took, full)
			}
		}
	})
	// Both still work, on the same state.
	if err := p.Check(context.Background(), CheckQuick); err != nil {
		t.Errorf("Check after cancellations: %v", err)
	}
	if got := checkConnCounter(t, p); got != start {
		t.Errorf("check connection sees %d after cancellations, want %d", got, start)
	}
	img := filepath.Join(dir, "image.db")
	writeImage(t, p, img)
	p.Close()
	if got := checkImage(t, p, img); got != start {
		t.Errorf("image holds %d, want %d", got, start)
	}
}

// TestDBPagesClose: Close releases both connections and their
// transactions: a writer can checkpoint the whole WAL afterwards, and no
// goroutine or file descriptor is left.
func TestDBPagesClose(t *testing.T) {
	for _, journal := range []string{"WAL", "DELETE"} {
		t.Run(journal, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "msgstore.db")
			goroutines, fds := runtime.NumGoroutine(), openFDs(t)
			db := createDB(t, src, journal, 2000)
			defer db.Close()
			if _, err := db.Exec("PRAGMA wal_autocheckpoint=0"); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(15, 16))
			appendMessages(t, db, r, 2)

			p, err := OpenDBPages(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.checks) < 2 {
				t.Fatalf("%d check connections, want at least 2", len(p.checks))
			}
			ctx, cancel := context.WithCancel(context.Background())
			if err := p.Pages(ctx, func(uint32, []byte) error { return nil }); err != nil {
				t.Fatal(err)
			}
			if err := p.Check(ctx, CheckQuick); err != nil {
				t.Fatal(err)
			}
			cancel()
			if journal == "WAL" {
				appendMessages(t, db, r, 2)
				var busy, logFrames, ckpt int
				if err := db.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &ckpt); err != nil {
					t.Fatal(err)
				}
				if ckpt == logFrames {
					t.Errorf("checkpointed all %d frames while the state was pinned", logFrames)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if err := p.Pages(context.Background(), func(uint32, []byte) error { return nil }); !errors.Is(err, errPagesClosed) {
				t.Errorf("Pages after Close: %v", err)
			}
			if err := p.Check(context.Background(), CheckQuick); !errors.Is(err, errPagesClosed) {
				t.Errorf("Check after Close: %v", err)
			}

			appendMessages(t, db, r, 2) // waits for no lock
			if journal == "WAL" {
				var busy, logFrames, ckpt int
				if err := db.QueryRow("PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &ckpt); err != nil || busy != 0 {
					t.Errorf("checkpoint after Close: busy %d, %v", busy, err)
				}
				if fi, err := os.Stat(src + "-wal"); err != nil || fi.Size() != 0 {
					t.Errorf("WAL not truncated after Close: %v", err)
				}
			}
			// SQLite keeps the descriptors of a closed connection open
			// while another connection of the process holds POSIX locks
			// on the file (closing them would drop those locks): count
			// once the writer is closed too.
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > goroutines {
				t.Errorf("%d goroutines after Close, %d before", n, goroutines)
			}
			if n := openFDs(t); n > fds {
				t.Errorf("%d open files after Close, %d before", n, fds)
			}
		})
	}
}

// openFDs counts the process's open file descriptors (-1 where /proc is
// missing).
func openFDs(t *testing.T) int {
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(des)
}

// TestDBPagesLiveWriter reads pages and checks them, concurrently, while
// another process commits as fast as it can (with automatic checkpoints,
// so the WAL restarts now and then).
func TestDBPagesLiveWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "msgstore.db")
	db := createDB(t, src, "WAL", 5000)
	db.Close()

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

	prev := 0
	for i := range 6 {
		before := currentCounter(t, src)
		p, err := OpenDBPages(context.Background(), src)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		after := currentCounter(t, src)
		checked := make(chan error, 1)
		level := CheckFull
		if i%2 == 0 {
			level = CheckQuick
		}
		go func() { checked <- p.Check(context.Background(), level) }()
		img := filepath.Join(dir, fmt.Sprintf("image%d.db", i))
		writeImage(t, p, img)
		if err := <-checked; err != nil {
			t.Errorf("check %d: %v", i, err)
		}
		pinned := checkConnCounter(t, p)
		paired, pins := len(p.checks) > 0, p.pins
		p.Close()
		k := checkImage(t, p, img)
		t.Logf("open %d: counter %d (source %d before, %d after), check connection %d, paired %v after %d pins", i, k, before, after, pinned, paired, pins)
		if k < before || k > after || pinned != k {
			t.Errorf("pin %d holds counter %d, check connection %d, outside [%d, %d]", i, k, pinned, before, after)
		}
		if k < prev {
			t.Errorf("pin %d went back in time: %d < %d", i, k, prev)
		}
		prev = k
	}
	stdin.Close()
	if !lines.Scan() {
		t.Fatalf("writer exited without a report: %v", cmd.Wait())
	}
	final, _ := strconv.Atoi(strings.TrimPrefix(lines.Text(), "done "))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("writer committed up to %d", final)
}

// TestDBPagesMeasure times Pages (hashing each page), Check and the two
// together on the database named by $GATHER_PAGES_BENCH_DB, e.g. one made
// by go run ./testdata/gen; $GATHER_PAGES_BENCH_OP picks one of pages,
// quick, full (Check at that level), pragma-quick, pragma-full (SQLite's
// PRAGMA quick_check or integrity_check of the whole file on one
// connection, virtual tables included: the check before issue 24),
// concurrent, concurrent-full (Pages beside Check) (default: all, one after
// the other); $GATHER_PAGES_BENCH_CONNS sets the number of check
// connections and $GATHER_PAGES_BENCH_FULL_CONNS the number the full check
// uses; $GATHER_PAGES_BENCH_PRAGMA is run on every check connection first. Each unit of a check is logged with its time. Run one operation
// per process to read its peak RSS.
func TestDBPagesMeasure(t *testing.T) {
	src := os.Getenv("GATHER_PAGES_BENCH_DB")
	if src == "" {
		t.Skip("set GATHER_PAGES_BENCH_DB")
	}
	ops := []string{"pages", "quick", "full", "pragma-quick", "pragma-full", "concurrent", "concurrent-full"}
	if op := os.Getenv("GATHER_PAGES_BENCH_OP"); op != "" {
		ops = []string{op}
	}
	conns, _ := strconv.Atoi(os.Getenv("GATHER_PAGES_BENCH_CONNS"))
	fullConns, _ := strconv.Atoi(os.Getenv("GATHER_PAGES_BENCH_FULL_CONNS"))
	ctx := context.Background()
	hashPages := func(p *DBPages) (time.Duration, error) {
		start := time.Now()
		err := p.Pages(ctx, func(_ uint32, data []byte) error {
			sha256.Sum256(data)
			return nil
		})
		return time.Since(start), err
	}
	check := func(p *DBPages, op string) (time.Duration, error) {
		start := time.Now()
		var err error
		switch op {
		case "quick", "concurrent":
			err = p.Check(ctx, CheckQuick)
		case "full", "concurrent-full":
			err = p.Check(ctx, CheckFull)
		case "pragma-quick", "pragma-full":
			pragma := strings.TrimPrefix(op, "pragma-") + "_check"
			if pragma == "full_check" {
				pragma = "integrity_check"
			}
			// The last check connection has the modules.
			err = runUnits(ctx, p.src, p.checks[len(p.checks)-1:], []checkUnit{{query: "PRAGMA " + pragma, what: pragma}}, p.unitDone)
		}
		return time.Since(start), err
	}
	for _, op := range ops {
		var ms0 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		start := time.Now()
		p, err := openDBPages(ctx, src, pagesOpts{conns: conns, fullConns: fullConns})
		if err != nil {
			t.Fatal(err)
		}
		opened := time.Since(start)
		if len(p.checks) == 0 {
			t.Fatal("no check connections")
		}
		if q := os.Getenv("GATHER_PAGES_BENCH_PRAGMA"); q != "" {
			// e.g. "PRAGMA cache_size=-1024".
			for _, c := range p.checks {
				if err := c.exec(q); err != nil {
					t.Fatal(err)
				}
			}
		}
		var mu sync.Mutex
		p.unitDone = func(what string, c *liteConn, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("  %s on check connection %d: %v", what, slices.Index(p.checks, c), d)
		}
		var report string
		switch op {
		case "pages":
			d, err := hashPages(p)
			if err != nil {
				t.Fatal(err)
			}
			report = fmt.Sprintf("pages %v", d)
		case "quick", "full", "pragma-quick", "pragma-full":
			d, err := check(p, op)
			if err != nil {
				t.Fatal(err)
			}
			report = fmt.Sprintf("check %v on %d connections", d, len(p.checks))
		case "concurrent", "concurrent-full":
			var cd time.Duration
			var cerr error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				cd, cerr = check(p, op)
			}()
			pd, err := hashPages(p)
			if err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if cerr != nil {
				t.Fatal(cerr)
			}
			report = fmt.Sprintf("pages %v, check %v on %d connections, wall %v", pd, cd, len(p.checks), time.Since(start)-opened)
		default:
			t.Fatalf("unknown op %q", op)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("%s: %d pages of %d, open %v, %s; Go allocated %.1f MiB in %d objects, Go heap sys %.1f MiB; %s",
			op, p.PageCount(), p.PageSize(), opened, report,
			float64(ms.TotalAlloc-ms0.TotalAlloc)/(1<<20), ms.Mallocs-ms0.Mallocs, float64(ms.HeapSys)/(1<<20), peakRSS())
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// peakRSS reports the process's peak resident set size, from /proc.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "peak RSS unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			return "peak RSS " + strings.Join(strings.Fields(strings.TrimPrefix(line, "VmHWM:")), " ")
		}
	}
	return "peak RSS unknown"
}
