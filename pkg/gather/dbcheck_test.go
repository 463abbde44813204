package gather

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// checkSchema is a small chat database with what the check has to cover:
// a table with indexes (one partial), a full-text index (FTS5) and its
// shadow tables, a WITHOUT ROWID table.
const checkSchema = `
CREATE TABLE message (seq INTEGER PRIMARY KEY, chat INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX message_chat ON message(chat, seq);
CREATE INDEX message_body ON message(body);
CREATE INDEX message_even ON message(chat) WHERE seq % 2 = 0;
CREATE VIRTUAL TABLE message_fts USING fts5(body);
CREATE TABLE props (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
INSERT INTO props VALUES ('version', '1');
`

// createCheckDB makes a rollback-journal database of checkSchema with rows
// messages (then deletes every tenth, leaving free pages) and closes it.
func createCheckDB(t testing.TB, path string, rows int) {
	t.Helper()
	db := openRW(t, path, "_pragma=journal_mode(DELETE)")
	defer db.Close()
	if _, err := db.Exec(checkSchema); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(21, 22))
	for i := 1; i <= rows; i++ {
		body := randBody(r)
		if _, err := tx.Exec("INSERT INTO message VALUES (?, ?, ?)", i, r.IntN(50), body); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO message_fts(rowid, body) VALUES (?, ?)", i, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DELETE FROM message WHERE seq % 10 = 0 AND seq > ?", rows/2); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// pageOf returns the number of a page of the b-tree name (an index or a
// table), from the dbstat table.
func pageOf(t testing.TB, path, name string) int64 {
	t.Helper()
	db := openRW(t, path)
	defer db.Close()
	var pgno int64
	if err := db.QueryRow("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 3", name).Scan(&pgno); err != nil {
		t.Fatal(err)
	}
	return pgno
}

// overwrite writes data at off in the file at path.
func overwrite(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// execRW runs statements on the database at path (read-write).
func execRW(t testing.TB, path string, stmts ...string) {
	t.Helper()
	db := openRW(t, path)
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestCheckLevels: each level finds what FORMAT.md §7.5 says it checks,
// on real database files damaged by the test, and lets pass what it says
// it leaves to the other level, with any number of check connections and
// with none (the check on the first connection).
func TestCheckLevels(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, src string)
		// quick and full: the substring of each level's error; "" for
		// no error.
		quick, full string
	}{
		{
			name:   "intact",
			damage: func(*testing.T, string) {},
		},
		{
			// A leaf page of an index overwritten with garbage: the
			// quick check of the index's table finds it.
			name: "index page garbage",
			damage: func(t *testing.T, src string) {
				pgno := pageOf(t, src, "message_body")
				r := rand.New(rand.NewPCG(23, 24))
				garbage := make([]byte, 4096)
				for i := range garbage {
					garbage[i] = byte(r.Uint32())
				}
				overwrite(t, src, (pgno-1)*4096, garbage)
			},
			quick: "failed quick_check of message: *** in database main *** Tree ",
			full:  "failed integrity_check: *** in database main *** Tree ",
		},
		{
			// An index whose definition no longer matches its
			// entries (its two columns swapped): every b-tree is
			// sound and the index has an entry per row, only matching
			// the index with the rows finds it.
			name: "index entries wrong",
			damage: func(t *testing.T, src string) {
				execRW(t, src, "PRAGMA writable_schema=ON",
					"UPDATE sqlite_schema SET sql = 'CREATE INDEX message_chat ON message(seq, chat)' WHERE name = 'message_chat'")
			},
			full: "missing from index message_chat",
		},
		{
			// A full index missing half its entries: the quick check
			// counts them.
			name: "index entries missing",
			damage: func(t *testing.T, src string) {
				execRW(t, src, "PRAGMA writable_schema=ON",
					"UPDATE sqlite_schema SET sql = 'CREATE INDEX message_even ON message(chat)' WHERE name = 'message_even'")
			},
			quick: "failed quick_check of message: wrong # of entries in index message_even",
			full:  "failed integrity_check: wrong # of entries in index message_even",
		},
		{
			// A segment of the full-text index changed: its b-tree
			// and records are sound, only FTS5's own check (the
			// index against the content) finds it.
			name: "FTS5 segment changed",
			damage: func(t *testing.T, src string) {
				db := openRW(t, src)
				defer db.Close()
				var id int64
				var block []byte
				if err := db.QueryRow("SELECT id, block FROM message_fts_data WHERE id > 10 ORDER BY length(block) DESC LIMIT 1").Scan(&id, &block); err != nil {
					t.Fatal(err)
				}
				for i := len(block) / 2; i < len(block)/2+8; i++ {
					block[i] ^= 0x55
				}
				if _, err := db.Exec("UPDATE message_fts_data SET block = ? WHERE id = ?", block, id); err != nil {
					t.Fatal(err)
				}
			},
			full: "message_fts",
		},
		{
			// The free list cut off from the header: its pages are
			// in no b-tree and on no list. Only the whole-file
			// accounting of the full check finds them.
			name: "free pages lost",
			damage: func(t *testing.T, src string) {
				hdr := header(t, src)
				if n := int(hdr[36])<<24 | int(hdr[37])<<16 | int(hdr[38])<<8 | int(hdr[39]); n == 0 {
					t.Fatal("no free pages")
				}
				overwrite(t, src, 32, make([]byte, 8))
			},
			full: "never used",
		},
		{
			// The free list's first trunk page pointing into a table:
			// the quick check of sqlite_schema checks the free list.
			name: "free list into a table",
			damage: func(t *testing.T, src string) {
				overwrite(t, src, 32, []byte{0, 0, 0, 2})
			},
			quick: "failed quick_check of sqlite_schema: ",
			full:  "failed integrity_check: ",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "msgstore.db")
			createCheckDB(t, src, 3000)
			tc.damage(t, src)
			// The check connections, and how many of them the full check
			// uses; none: the check on the first connection.
			for _, o := range []pagesOpts{{noPair: true}, {conns: 2, fullConns: 1}, {conns: 2, fullConns: 2}, {conns: 3, fullConns: 3}, {conns: 4, fullConns: 4}} {
				conns := fmt.Sprintf("%d/%d", o.conns, o.fullConns)
				p, err := openDBPages(context.Background(), src, o)
				if err != nil {
					t.Fatal(err)
				}
				if got := len(p.checks); got != o.conns {
					t.Fatalf("%d check connections, want %d", got, o.conns)
				}
				for _, lv := range []struct {
					level CheckLevel
					want  string
				}{{CheckQuick, tc.quick}, {CheckFull, tc.full}} {
					err := p.Check(context.Background(), lv.level)
					switch {
					case lv.want == "" && err != nil:
						t.Errorf("%s connections, %v check: %v", conns, lv.level, err)
					case lv.want != "" && (!errors.Is(err, ErrCorruptDB) || !strings.Contains(err.Error(), lv.want) || strings.Contains(err.Error(), "\n")):
						t.Errorf("%s connections, %v check: %v; want one line with %q, wrapping ErrCorruptDB", conns, lv.level, err, lv.want)
					case err != nil && o.conns == 2:
						t.Logf("%s connections, %v check: %v", conns, lv.level, err)
					}
				}
				p.Close()
			}
			// check --db's check of a rebuilt copy is SQLite's whole
			// integrity_check: everything the full check finds.
			if err := CheckDB(context.Background(), src, "copy", false); (err != nil) != (tc.full != "") || err != nil && !errors.Is(err, ErrCorruptDB) {
				t.Errorf("CheckDB: %v, want an error: %v", err, tc.full != "")
			}
		})
	}
}

// TestCheckSplit: the quick check runs one unit per table, spread over the
// check connections; the full check runs the whole file on the first
// connection (without modules) and the FTS5 table on another, or, when it
// may use one connection only, SQLite's whole check on one that has the
// modules; Unchecked names the virtual tables each level leaves out, and a
// module this SQLite lacks (FTS4) is left out at both.
func TestCheckSplit(t *testing.T) {
	src := filepath.Join(t.TempDir(), "msgstore.db")
	createCheckDB(t, src, 3000)
	// A table of an earlier FTS version, as WhatsApp's msgstore.db has
	// one; modernc.org/sqlite has no FTS4 module.
	execRW(t, src, "PRAGMA writable_schema=ON",
		"INSERT INTO sqlite_schema VALUES ('table', 'old_fts', 'old_fts', 0, 'CREATE VIRTUAL TABLE \"old_fts\" USING fts4(body)')")
	quick := map[string]bool{
		"quick_check of sqlite_schema": false, "quick_check of message": false, "quick_check of props": false,
		"quick_check of message_fts_data": false, "quick_check of message_fts_idx": false, "quick_check of message_fts_content": false,
		"quick_check of message_fts_docsize": false, "quick_check of message_fts_config": false,
	}
	tests := []struct {
		level     CheckLevel
		fullConns int
		// units: what → whether it must run on a connection without
		// modules (true) or with them (false).
		units     map[string]bool
		spread    bool // on more than one connection
		unchecked []string
	}{
		{CheckQuick, 3, quick, true, []string{"message_fts", "old_fts"}},
		{CheckQuick, 1, quick, true, []string{"message_fts", "old_fts"}},
		{CheckFull, 3, map[string]bool{"integrity_check": true, "integrity_check of message_fts": false}, true, []string{"old_fts"}},
		{CheckFull, 2, map[string]bool{"integrity_check": true, "integrity_check of message_fts": false}, true, []string{"old_fts"}},
		{CheckFull, 1, map[string]bool{"integrity_check": false}, false, []string{"old_fts"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v/%d", tc.level, tc.fullConns), func(t *testing.T) {
			p, err := openDBPages(context.Background(), src, pagesOpts{conns: 3, fullConns: tc.fullConns})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			var mu sync.Mutex
			ran := map[string]*liteConn{}
			conns := map[*liteConn]bool{}
			p.unitDone = func(what string, c *liteConn, _ time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				if ran[what] != nil {
					t.Errorf("%s ran twice", what)
				}
				ran[what] = c
				conns[c] = true
			}
			if err := p.Check(context.Background(), tc.level); err != nil {
				t.Fatal(err)
			}
			for what, c := range ran {
				plain, ok := tc.units[what]
				switch {
				case !ok:
					t.Errorf("unexpected unit %q", what)
				case tc.level == CheckFull && c.plain != plain:
					t.Errorf("%s ran on a connection with no modules: %v, want %v", what, c.plain, plain)
				case !slices.Contains(p.checks, c):
					t.Errorf("%s ran on the first connection", what)
				}
			}
			if len(ran) != len(tc.units) {
				t.Errorf("ran %d units, want %d: %v", len(ran), len(tc.units), tc.units)
			}
			if spread := len(conns) > 1; spread != tc.spread {
				t.Errorf("ran on %d connections", len(conns))
			}
			if got := p.Unchecked(tc.level); !slices.Equal(got, tc.unchecked) {
				t.Errorf("Unchecked(%v) = %q, want %q", tc.level, got, tc.unchecked)
			}
		})
	}
}

func TestVirtualModule(t *testing.T) {
	tests := []struct{ sql, want string }{
		{"CREATE VIRTUAL TABLE message_ftsv2 USING fts5(content, tokenize='unicode61')", "fts5"},
		{"CREATE VIRTUAL TABLE \"x\" USING FTS4(body)", "fts4"},
		{"create virtual table [using] using rtree(id, a, b)", "rtree"},
		{"CREATE VIRTUAL TABLE \"a \"\"using\"\" b\" USING fts5(c)", "fts5"},
		{"CREATE VIRTUAL TABLE `using` USING\n\tgeopoly", "geopoly"},
		{"CREATE VIRTUAL TABLE t USING", ""},
		{"CREATE VIRTUAL TABLE t(x)", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := virtualModule(tc.sql); got != tc.want {
			t.Errorf("virtualModule(%q) = %q, want %q", tc.sql, got, tc.want)
		}
	}
}

// TestTreeEstimate: the leftmost-path estimate of a b-tree's pages is
// within a factor of three of its size (dbstat), for the trees large
// enough to matter.
func TestTreeEstimate(t *testing.T) {
	src := filepath.Join(t.TempDir(), "msgstore.db")
	createCheckDB(t, src, 20000)
	p, err := OpenDBPages(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	db := openRW(t, src)
	defer db.Close()
	for _, tb := range p.tables {
		if tb.virtual {
			continue
		}
		var n int64
		err := db.QueryRow("SELECT count(*) FROM dbstat WHERE name = ?1 OR name IN (SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1)", tb.name).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if tb.name == "sqlite_schema" {
			n = 1 // dbstat calls it sqlite_master
		}
		t.Logf("%s: estimated %d pages, has %d", tb.name, tb.pages, n)
		if n >= 50 && (tb.pages*3 < n || tb.pages > 3*n) || n < 50 && tb.pages > 3*n+10 {
			t.Errorf("%s: estimated %d pages, has %d", tb.name, tb.pages, n)
		}
	}
}

// BenchmarkCheck times each check level split over the check connections
// (split; full/one: the full check on one connection, as on two cores)
// against SQLite's one PRAGMA over the whole file on one connection
// (pragma: the check before issue 24, virtual tables included), on the
// database named by $GATHER_PAGES_BENCH_DB (the bench database, say) or a
// generated one of 20,000 messages. -cpu sets GOMAXPROCS and with it the
// number of check connections.
func BenchmarkCheck(b *testing.B) {
	src := os.Getenv("GATHER_PAGES_BENCH_DB")
	if src == "" {
		src = filepath.Join(b.TempDir(), "msgstore.db")
		createCheckDB(b, src, 20000)
	}
	for _, bc := range []struct {
		name      string
		level     CheckLevel
		pragma    string
		fullConns int
	}{
		{"quick/pragma", 0, "quick_check", 0},
		{"quick/split", CheckQuick, "", 0},
		{"full/pragma", 0, "integrity_check", 0},
		{"full/one", CheckFull, "", 1},
		{"full/split", CheckFull, "", 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			p, err := openDBPages(ctx, src, pagesOpts{fullConns: bc.fullConns})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			for b.Loop() {
				if bc.pragma != "" {
					// The last check connection has the modules.
					err = runUnits(ctx, p.src, p.checks[len(p.checks)-1:], []checkUnit{{query: "PRAGMA " + bc.pragma, what: bc.pragma}}, nil)
				} else {
					err = p.Check(ctx, bc.level)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(p.PageCount())*float64(b.N)/b.Elapsed().Seconds(), "pages/s")
		})
	}
}
