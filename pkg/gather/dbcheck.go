package gather

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// CheckLevel says how much of the pinned state DBPages.Check verifies
// (FORMAT.md §7.5 says what each level guarantees).
type CheckLevel int

const (
	// CheckQuick runs PRAGMA quick_check on each table (with its indexes)
	// and on sqlite_schema (with the free list), the tables split over
	// the check connections: every b-tree's structure, every record's
	// format, NOT NULL, CHECK and column types. It does not match index
	// entries with table rows, does not run the virtual tables' own
	// integrity methods (FTS5), and does not verify that every page of
	// the file is in exactly one b-tree or the free list.
	CheckQuick CheckLevel = iota + 1
	// CheckFull checks what PRAGMA integrity_check of the whole file
	// does: every check SQLite has for tables, indexes, the free list and
	// the use of every page, and each virtual table's own integrity
	// method (FTS5: the inverted index against the content). Given more
	// than one check connection (fullCheckConns), it checks the whole
	// file without the virtual tables on one and each virtual table on
	// the others, at the same time.
	CheckFull
)

func (l CheckLevel) String() string {
	switch l {
	case CheckQuick:
		return "quick"
	case CheckFull:
		return "full"
	}
	return fmt.Sprintf("CheckLevel(%d)", int(l))
}

// maxCheckConns bounds the check connections (each holds a page cache of
// checkCachePragma): past the database's largest table, more do not help.
const maxCheckConns = 4

// checkConns is the number of check connections OpenDBPages opens: one per
// core, at least two (the full check runs the virtual tables beside the
// rest of the file), at most maxCheckConns.
func checkConns() int {
	return min(max(runtime.GOMAXPROCS(0), 2), maxCheckConns)
}

// fullCheckConns is the number of check connections the full check uses
// at once: one core fewer than there are, so that the rest of the backup
// keeps one (the backup gives the full check a core of its own the same
// way). Its largest part, the whole file, is one long job; running the
// virtual tables beside it on the backup's core made it wait for that core
// (measured on two cores: first backup 6.7–6.9 s with the full check on
// one connection, 7.4–8.0 s with FTS5's check beside it). With one, the
// full check is SQLite's whole integrity_check, virtual tables included,
// on a connection that has the modules.
func fullCheckConns() int {
	return max(runtime.GOMAXPROCS(0)-1, 1)
}

// dbTable is a table of the pinned state, as Check plans its work.
type dbTable struct {
	name    string
	virtual bool
	// module is a virtual table's module (after USING, lower case);
	// known reports whether this SQLite has it.
	module string
	known  bool
	// pages estimates the pages of its b-trees (table and indexes).
	pages int64
}

// checkUnit is one PRAGMA of a check, run on one connection.
type checkUnit struct {
	query string
	what  string // the check, for messages: "quick_check of message"
	cost  int64  // estimated pages it reads
	// plain: only on a connection without virtual table modules (the
	// whole-file check, which must leave the virtual tables to the
	// others); modules: only on one with them.
	plain, modules bool
	order          int // schema order: the first failed unit is reported
}

// quoteSQL quotes s as an SQL string literal.
func quoteSQL(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// plan returns the units of a check at level on conns connections (0: on
// the first connection alone; 1 at the full level: on a check connection
// with the modules).
func (p *DBPages) plan(level CheckLevel, conns int) []checkUnit {
	var units []checkUnit
	switch {
	case level == CheckFull && conns <= 1:
		// One connection, with the modules: SQLite's whole check.
		return []checkUnit{{query: "PRAGMA main.integrity_check", what: "integrity_check", cost: int64(p.pageCount)}}
	case level == CheckFull:
		units = append(units, checkUnit{query: "PRAGMA main.integrity_check", what: "integrity_check", cost: int64(p.pageCount), plain: true})
		for i, t := range p.tables {
			if t.virtual && t.known {
				// FTS5 reads its content and its index: weigh it by
				// the pages of its shadow tables.
				units = append(units, checkUnit{query: "PRAGMA main.integrity_check(" + quoteSQL(t.name) + ")",
					what: "integrity_check of " + t.name, cost: 4 * p.shadowPages(t.name), modules: true, order: i + 1})
			}
		}
	default:
		for i, t := range p.tables {
			if !t.virtual {
				units = append(units, checkUnit{query: "PRAGMA main.quick_check(" + quoteSQL(t.name) + ")",
					what: "quick_check of " + t.name, cost: t.pages, order: i})
			}
		}
	}
	// Longest first, so that the largest table does not start last.
	sort.SliceStable(units, func(i, j int) bool { return units[i].cost > units[j].cost })
	return units
}

// shadowPages estimates the pages of the ordinary tables named
// "<name>_…", a virtual table's shadow tables.
func (p *DBPages) shadowPages(name string) int64 {
	var n int64
	for _, t := range p.tables {
		if !t.virtual && strings.HasPrefix(strings.ToLower(t.name), strings.ToLower(name)+"_") {
			n += t.pages
		}
	}
	return n
}

// Unchecked returns the virtual tables (FTS indexes) whose own integrity
// check a Check at level does not run, in schema order: all of them at
// CheckQuick, and at CheckFull those whose module this SQLite does not
// have (FTS3 and FTS4, say: modernc.org/sqlite is built with FTS5 only).
// Their shadow tables, ordinary tables, are checked at every level.
func (p *DBPages) Unchecked(level CheckLevel) []string {
	var out []string
	for _, t := range p.tables {
		if t.virtual && (level != CheckFull || !t.known) {
			out = append(out, t.name)
		}
	}
	return out
}

// Check verifies the pinned state at level and turns any finding into an
// error wrapping ErrCorruptDB that quotes the first problem on one line.
// Its units (plan) run on the check connections (the quick check on all of
// them, the full check on fullCheckConns), each taking the largest unit
// left that it may run, so they can run beside Pages; if OpenDBPages could
// not give them the pinned state, they run one after the other on the
// first connection, waiting for Pages (or Pages for them). The first unit
// to fail stops the others. The page caches are bounded (checkCachePragma
// each). The check stops once ctx is done.
func (p *DBPages) Check(ctx context.Context, level CheckLevel) error {
	if level != CheckQuick && level != CheckFull {
		return fmt.Errorf("chat database %s: unknown check level %v", p.src, level)
	}
	conns := p.checks
	if level == CheckFull && len(conns) > 0 {
		if p.fullConns < 2 {
			conns = conns[len(conns)-1:] // not the first: it has no modules
		} else {
			conns = conns[:min(p.fullConns, len(conns))]
		}
	}
	units := p.plan(level, len(conns))
	if len(conns) == 0 {
		conns = []*liteConn{p.pin}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return runUnits(ctx, p.src, conns, units, p.unitDone)
}

// runUnits runs units on conns, one goroutine per connection, and tells
// done (if not nil) of each unit that ended, with its connection and its
// time.
func runUnits(ctx context.Context, src string, conns []*liteConn, units []checkUnit, done func(what string, c *liteConn, d time.Duration)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		taken   = make([]bool, len(units))
		errs    = make([]error, len(units))
		failed  bool
		closed  bool
		workers sync.WaitGroup
	)
	// take returns the next unit c may run: first those only its kind
	// may run, then the largest left; -1 when none is left for it.
	take := func(c *liteConn) int {
		mu.Lock()
		defer mu.Unlock()
		if failed {
			return -1
		}
		next := -1
		for i, u := range units {
			if taken[i] || u.plain && !c.plain || u.modules && c.plain {
				continue
			}
			if u.plain || u.modules {
				next = i
				break
			}
			if next < 0 {
				next = i
			}
		}
		if next >= 0 {
			taken[next] = true
		}
		return next
	}
	for _, c := range conns {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				i := take(c)
				if i < 0 {
					return
				}
				start := time.Now()
				err := runUnit(ctx, src, c, units[i])
				if done != nil {
					done(units[i].what, c, time.Since(start))
				}
				if err != nil {
					mu.Lock()
					if errors.Is(err, errPagesClosed) {
						closed = true
					}
					errs[i], failed = err, true
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
	workers.Wait()
	if closed {
		return errPagesClosed
	}
	// The finding of the first unit in schema order, not a unit that
	// was stopped because of it.
	var first error
	order := -1
	for i, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) && (order < 0 || units[i].order < order) {
			first, order = err, units[i].order
		}
	}
	if first == nil {
		for _, err := range errs {
			if err != nil {
				first = err
				break
			}
		}
	}
	return first
}

// runUnit runs one unit on c.
func runUnit(ctx context.Context, src string, c *liteConn, u checkUnit) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == 0 {
		return errPagesClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	db := sql.OpenDB(checkConn{c})
	defer db.Close()
	return ctxErr(ctx, runCheck(ctx, db, src, u.query, u.what))
}

// readSchema reads the tables of the pinned state on the first connection
// and estimates their sizes, for plan.
func (p *DBPages) readSchema() error {
	c := p.pin
	modules := map[string]bool{}
	err := c.query("SELECT name FROM pragma_module_list", func(stmt uintptr) {
		modules[strings.ToLower(c.columnText(stmt, 0))] = true
	})
	if err != nil {
		return err
	}
	p.tables = []dbTable{{name: "sqlite_schema"}}
	byName := map[string]int{"sqlite_schema": 0}
	type root struct {
		table string
		page  int64
	}
	roots := []root{{"sqlite_schema", 1}}
	err = c.query("SELECT type, name, tbl_name, rootpage, sql FROM main.sqlite_schema", func(stmt uintptr) {
		typ, name, tbl := c.columnText(stmt, 0), c.columnText(stmt, 1), c.columnText(stmt, 2)
		page := sqlite3.Xsqlite3_column_int64(c.tls, stmt, 3)
		switch typ {
		case "table":
			t := dbTable{name: name}
			if page == 0 {
				t.virtual = true
				t.module = virtualModule(c.columnText(stmt, 4))
				t.known = modules[t.module]
			}
			byName[strings.ToLower(name)] = len(p.tables)
			p.tables = append(p.tables, t)
		case "index":
		default:
			return
		}
		if page > 0 {
			roots = append(roots, root{tbl, page})
		}
	})
	if err != nil {
		return err
	}
	est := c.treeEstimator(p.pageCount)
	defer est.close()
	for _, r := range roots {
		if i, ok := byName[strings.ToLower(r.table)]; ok {
			p.tables[i].pages += est.pages(uint32(r.page))
		}
	}
	return nil
}

// virtualModule returns the module a CREATE VIRTUAL TABLE statement names
// after USING, in lower case ("" if there is none).
func virtualModule(stmt string) string {
	s := stmt
	for s != "" {
		switch c := s[0]; {
		case c == '"' || c == '`' || c == '[' || c == '\'':
			end := c
			if c == '[' {
				end = ']'
			}
			i := 1
			for i < len(s) {
				if s[i] == end {
					if end != ']' && i+1 < len(s) && s[i+1] == end {
						i += 2
						continue
					}
					break
				}
				i++
			}
			s = s[min(i+1, len(s)):]
		case isIdentByte(c):
			i := 0
			for i < len(s) && isIdentByte(s[i]) {
				i++
			}
			word := s[:i]
			s = s[i:]
			if strings.EqualFold(word, "using") {
				s = strings.TrimLeft(s, " \t\r\n")
				j := 0
				for j < len(s) && isIdentByte(s[j]) {
					j++
				}
				return strings.ToLower(s[:j])
			}
		case c == '(':
			return "" // the arguments come after the module
		default:
			s = s[1:]
		}
	}
	return ""
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// treeEstimator estimates the size of b-trees from the pages on their
// leftmost path, read through sqlite_dbpage: the product of the fan-outs
// of the interior pages. Damaged pages end an estimate early; they are the
// check's to report.
type treeEstimator struct {
	c     *liteConn
	stmt  uintptr
	count uint32
}

func (c *liteConn) treeEstimator(count uint32) *treeEstimator {
	stmt, err := c.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
	if err != nil {
		stmt = 0 // no estimates: every tree counts one page
	}
	return &treeEstimator{c: c, stmt: stmt, count: count}
}

func (e *treeEstimator) close() {
	if e.stmt != 0 {
		e.c.finalize(e.stmt)
	}
}

// page returns a copy of page pgno (nil if it cannot be read).
func (e *treeEstimator) page(pgno uint32) []byte {
	if e.stmt == 0 || pgno < 1 || pgno > e.count {
		return nil
	}
	c := e.c
	defer sqlite3.Xsqlite3_reset(c.tls, e.stmt)
	if sqlite3.Xsqlite3_bind_int64(c.tls, e.stmt, 1, int64(pgno)) != sqlite3.SQLITE_OK ||
		sqlite3.Xsqlite3_step(c.tls, e.stmt) != sqlite3.SQLITE_ROW {
		return nil
	}
	data := sqlite3.Xsqlite3_column_blob(c.tls, e.stmt, 0)
	n := sqlite3.Xsqlite3_column_bytes(c.tls, e.stmt, 0)
	if data == 0 || n <= 0 {
		return nil
	}
	return append([]byte(nil), libc.GoBytes(data, int(n))...)
}

// pages estimates the number of pages of the b-tree whose root is pgno
// (at least 1, at most the database's page count).
func (e *treeEstimator) pages(root uint32) int64 {
	total, width := int64(1), int64(1)
	pgno := root
	for depth := 0; depth < 20; depth++ {
		data := e.page(pgno)
		off := 0
		if pgno == 1 {
			off = 100
		}
		if len(data) < off+12 {
			break
		}
		typ := data[off]
		if typ != 2 && typ != 5 { // not an interior page
			break
		}
		cells := int(binary.BigEndian.Uint16(data[off+3:]))
		if cells == 0 || off+12+2 > len(data) {
			break
		}
		width *= int64(cells) + 1
		if width > int64(e.count) {
			width = int64(e.count)
		}
		total += width
		cell := int(binary.BigEndian.Uint16(data[off+12:]))
		if cell+4 > len(data) {
			break
		}
		pgno = binary.BigEndian.Uint32(data[cell:])
	}
	return min(total, int64(e.count))
}

// dropModules removes the virtual table modules from c except
// sqlite_dbpage, so that a whole-file check on c leaves the virtual tables
// out (SQLite skips a virtual table whose module it does not have, before
// the table is first used on the connection). c must not have used a
// virtual table other than sqlite_dbpage yet.
func (c *liteConn) dropModules() error {
	keep, err := libc.CString("sqlite_dbpage")
	if err != nil {
		return err
	}
	defer libc.Xfree(c.tls, keep)
	// A NULL-terminated array of one name.
	const ptr = unsafe.Sizeof(uintptr(0))
	arr := libc.Xmalloc(c.tls, types.Size_t(2*ptr))
	if arr == 0 {
		return fmt.Errorf("sqlite: cannot allocate %d bytes of memory", 2*ptr)
	}
	defer libc.Xfree(c.tls, arr)
	libc.AtomicStorePUintptr(arr, keep)
	libc.AtomicStorePUintptr(arr+ptr, 0)
	if rc := sqlite3.Xsqlite3_drop_modules(c.tls, c.db, arr); rc != sqlite3.SQLITE_OK {
		return c.errorFor(rc)
	}
	c.plain = true
	return nil
}
