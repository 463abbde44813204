package gather

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// DBPages is a pinned, consistent view of a live SQLite database, read page
// by page: one committed state of the database, fixed when OpenDBPages
// returns, whatever the chat app commits afterwards.
//
// It holds read-only connections of its own (opened through SQLite's C API
// as modernc.org/sqlite/lib exports it, not through database/sql), each in a
// read transaction on that same state: Pages reads the pages on the first,
// Check verifies the state on the others (the check connections, one per
// core, at least two and at most maxCheckConns), so that the reading and
// the parts of the check can run at the same time on several cores. How
// the check connections are made to see the first one's state:
//
//   - WAL mode: each check connection opens its read transaction with
//     sqlite3_snapshot_open on the snapshot sqlite3_snapshot_get took from the
//     first one, which SQLite guarantees reads exactly that state. This fails
//     (SQLITE_ERROR_SNAPSHOT) if the WAL was restarted before the call, which
//     can only happen when the first connection pinned a fully checkpointed
//     WAL; OpenDBPages then lets go and pins afresh, a few times, and at last
//     falls back to checking on the first connection (see Check). A WAL
//     nothing was written to since it was created (the chat app closed) has
//     no snapshot to take: see pair for that case.
//   - Rollback-journal mode: a read transaction holds a SHARED lock on the
//     database file until it ends, and a commit needs the EXCLUSIVE lock, which
//     no other connection can get while any SHARED lock is held. So from the
//     moment the first connection has pinned its state until Close, nobody can
//     commit, and the check connections' read transactions, started in that
//     interval, see the same state. (A writer waiting to commit holds a
//     PENDING lock that makes new readers wait, and waits itself for the first
//     connection: a check connection then gives up quickly and OpenDBPages
//     lets the writer through and pins afresh, as above.)
//
// In both modes OpenDBPages also verifies that each check connection agrees
// with the first (same snapshot, same page count, and in rollback mode the
// same page 1, whose change counter every commit bumps) before it relies on
// them; either all of them join the pinned state or none is used.
//
// As long as a DBPages is open, the chat app's checkpoints cannot pass the
// pinned state (WAL mode) or its commits wait (rollback mode), as with any
// reader: Close it as soon as possible. Pages and Check may be called from
// two goroutines at once; Close must not run concurrently with them.
type DBPages struct {
	src       string
	pageSize  int
	pageCount uint32
	wal       bool

	// pin is the first connection, the one whose read transaction pins the
	// state; Pages reads from it.
	pin *liteConn
	// checks are the check connections, on the same state; empty if they
	// could not be made to see it, and then Check runs on pin. The first
	// has no virtual table modules (dropModules): the whole-file part of
	// the full check runs there.
	checks []*liteConn
	// pins counts the states the first connection pinned (more than one
	// when the check connections could not join the first one's).
	pins int
	// tables are the pinned state's tables, with their estimated sizes.
	tables []dbTable
	// fullConns is the number of check connections the full check uses
	// (fullCheckConns).
	fullConns int
	// unitDone, if set, is told of each unit of a check that ended (tests
	// and measurements).
	unitDone func(what string, c *liteConn, d time.Duration)
}

// pinCachePragma sizes the first connection's page cache (256 KiB).
const pinCachePragma = "cache_size(-256)"

// pagesOpts are the knobs OpenDBPages fixes; tests vary them.
type pagesOpts struct {
	// afterPin, if set, is called each time the first connection has
	// pinned a state, before the second one joins it.
	afterPin func()
	// noPair skips the check connections: Check runs on the pinned one.
	noPair bool
	// conns, if not 0, is the number of check connections (at least 2;
	// default checkConns()); fullConns, if not 0, the number the full
	// check uses (default fullCheckConns()).
	conns, fullConns int
	// pairFailed, if set, is told why a check connection could not join
	// a pinned state.
	pairFailed func(error)
}

const (
	// pinBusyMS is how long SQLite itself waits for a lock before
	// OpenDBPages, which keeps trying for up to busyTimeoutMS, looks at its
	// context again.
	pinBusyMS = 100
	// pairBusyMS is how long a check connection waits for a lock: in
	// rollback mode a writer's PENDING lock blocks it until the first
	// connection lets go, so waiting long is pointless.
	pairBusyMS = 20
	// pairAttempts bounds how often OpenDBPages pins afresh because the
	// check connections could not join the first one's state.
	pairAttempts = 4
)

// errPagesClosed is returned by Pages and Check after Close.
var errPagesClosed = errors.New("chat database pages: already closed")

// OpenDBPages opens the SQLite database at src read-only, starts a read
// transaction that pins its current committed state, and returns once that
// state is pinned (so whatever the caller reads from then on, the media
// folder say, is at least as new). The database and its -wal are never
// modified; like any reader of a WAL database, OpenDBPages may create the
// -shm index and an empty -wal beside it.
//
// A source that is missing or not a SQLite database yields an error naming
// it (wrapping fs.ErrNotExist or ErrNotDatabase), a corrupt schema one
// wrapping ErrCorruptDB, a rollback-journal database with a hot journal an
// error saying so. The caller must Close the result.
func OpenDBPages(ctx context.Context, src string) (*DBPages, error) {
	return openDBPages(ctx, src, pagesOpts{})
}

// PageSize returns the database's page size in bytes.
func (p *DBPages) PageSize() int { return p.pageSize }

// PageCount returns the number of pages of the pinned state.
func (p *DBPages) PageCount() uint32 { return p.pageCount }

// WAL reports whether the source database is in WAL mode (bytes 18 and 19 of
// its header are 2; page 1 as Pages returns it keeps them so).
func (p *DBPages) WAL() bool { return p.wal }

// Pages calls fn for every page 1..PageCount in order, with its bytes as the
// pinned state holds them (from the -wal where it has newer ones): written
// out in order they form a database file holding that state, whose header
// keeps the source's journal mode. data is only valid until fn returns.
// Pages stops at fn's first error and returns it, and once ctx is done.
// It may be called again and reads the same state.
func (p *DBPages) Pages(ctx context.Context, fn func(pgno uint32, data []byte) error) error {
	c := p.pin
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == 0 {
		return errPagesClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// sqlite_dbpage yields the pages in ascending order without ORDER BY
	// (which would make SQLite sort them all in a temporary table if its
	// planner did not see that the table is in order already).
	stmt, err := c.prepare("SELECT pgno, data FROM sqlite_dbpage")
	if err != nil {
		return pagesErr(p.src, err)
	}
	defer c.finalize(stmt)
	buf := make([]byte, p.pageSize)
	var pgno uint32
	for {
		rc := sqlite3.Xsqlite3_step(c.tls, stmt)
		if rc == sqlite3.SQLITE_DONE {
			break
		}
		if rc != sqlite3.SQLITE_ROW {
			return pagesErr(p.src, c.errorFor(rc))
		}
		pgno++
		got := sqlite3.Xsqlite3_column_int64(c.tls, stmt, 0)
		data := sqlite3.Xsqlite3_column_blob(c.tls, stmt, 1)
		n := sqlite3.Xsqlite3_column_bytes(c.tls, stmt, 1)
		if got != int64(pgno) || int(n) != p.pageSize || data == 0 {
			return fmt.Errorf("chat database %s: sqlite_dbpage returned page %d of %d bytes, want page %d of %d", p.src, got, n, pgno, p.pageSize)
		}
		// Copied, so that a slice fn keeps by mistake never points into
		// SQLite's memory: 4 KiB copies cost little next to reading.
		copy(buf, libc.GoBytes(data, int(n)))
		if err := fn(pgno, buf); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if pgno != p.pageCount {
		return fmt.Errorf("chat database %s: sqlite_dbpage returned %d pages, want %d", p.src, pgno, p.pageCount)
	}
	return nil
}

// Close ends the read transactions and closes the connections. It may be
// called more than once.
func (p *DBPages) Close() error {
	var errs []error
	for _, c := range append(append([]*liteConn(nil), p.checks...), p.pin) {
		if c != nil {
			if err := c.close(); err != nil {
				errs = append(errs, pagesErr(p.src, err))
			}
		}
	}
	return errors.Join(errs...)
}

func openDBPages(ctx context.Context, src string, o pagesOpts) (_ *DBPages, err error) {
	fi, err := os.Stat(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("chat database %s: %w", src, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("chat database %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("chat database %s: not a regular file", src)
	}
	uri, err := sqliteURI(src, "mode=ro")
	if err != nil {
		return nil, fmt.Errorf("chat database %s: %w", src, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &DBPages{src: src, fullConns: o.fullConns}
	if p.fullConns == 0 {
		p.fullConns = fullCheckConns()
	}
	if p.pin, err = openLite(uri, pinBusyMS); err != nil {
		return nil, pagesErr(src, err)
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	// Pages reads each page once: a small cache is enough (memory stays
	// bounded whatever the database's size).
	if err := p.pin.exec("PRAGMA " + pinCachePragma); err != nil {
		return nil, pagesErr(src, err)
	}

	deadline := time.Now().Add(busyTimeoutMS * time.Millisecond)
	for attempt := 1; ; attempt++ {
		if err := p.pinState(ctx, deadline); err != nil {
			return nil, ctxErr(ctx, err)
		}
		p.pins++
		if o.afterPin != nil {
			o.afterPin()
		}
		if o.noPair {
			break
		}
		n := o.conns
		if n == 0 {
			n = checkConns()
		}
		perr := p.pairAll(uri, max(n, 2))
		if perr == nil {
			break
		}
		if o.pairFailed != nil {
			o.pairFailed(perr)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if attempt == pairAttempts {
			// Keep the pinned state; Check will run on it after (or
			// before) Pages, which is slower but just as correct.
			var errs []error
			for _, c := range p.checks {
				if err := c.close(); err != nil {
					errs = append(errs, pagesErr(src, err))
				}
			}
			p.checks = nil
			if err := errors.Join(errs...); err != nil {
				return nil, err
			}
			break
		}
		if err := p.pin.exec("ROLLBACK"); err != nil {
			return nil, pagesErr(src, err)
		}
		if err := sleepCtx(ctx, time.Duration(attempt)*5*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if err := p.readSchema(); err != nil {
		return nil, pagesErr(src, err)
	}
	return p, nil
}

// pinState starts the read transaction of the first connection and reads
// what the pinned state is made of. While another connection holds a lock
// that keeps it from reading, it tries again until deadline.
func (p *DBPages) pinState(ctx context.Context, deadline time.Time) error {
	c := p.pin
	for {
		// BEGIN is deferred: the read transaction, and with it the
		// pinned state, starts with the first read.
		err := c.exec("BEGIN")
		if err == nil {
			_, err = c.queryInt("SELECT count(*) FROM sqlite_schema")
		}
		if err == nil {
			break
		}
		c.exec("ROLLBACK") //nolint:errcheck // releasing what may not have started
		if !isBusy(err) || !time.Now().Before(deadline) || ctx.Err() != nil {
			return pagesErr(p.src, err)
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	size, err := c.queryInt("PRAGMA page_size")
	if err != nil {
		return pagesErr(p.src, err)
	}
	count, err := c.queryInt("PRAGMA page_count")
	if err != nil {
		return pagesErr(p.src, err)
	}
	mode, err := c.queryText("PRAGMA journal_mode")
	if err != nil {
		return pagesErr(p.src, err)
	}
	p.pageSize, p.pageCount, p.wal = int(size), uint32(count), strings.EqualFold(mode, "wal")
	return nil
}

// pairAll makes n check connections (opening them the first time) start
// read transactions on the state the first connection pinned, and verifies
// that they did. On failure every check connection is left outside any
// transaction.
func (p *DBPages) pairAll(uri string, n int) error {
	for len(p.checks) < n {
		c, err := openLite(uri, pairBusyMS)
		if err != nil {
			return err
		}
		p.checks = append(p.checks, c)
		if err := c.exec("PRAGMA " + strings.TrimPrefix(checkCachePragma, "_pragma=")); err != nil {
			return err
		}
		if len(p.checks) == 1 {
			if err := c.dropModules(); err != nil {
				return err
			}
		}
	}
	for i, c := range p.checks {
		if err := p.pair(c); err != nil {
			for _, d := range p.checks[:i] {
				d.exec("ROLLBACK") //nolint:errcheck // leaving a joined state
			}
			return err
		}
	}
	return nil
}

// pair makes the check connection c start a read transaction on the state
// the first one pinned, and verifies that it did. On failure c is left
// outside any transaction.
func (p *DBPages) pair(c *liteConn) (err error) {
	defer func() {
		if err != nil {
			c.exec("ROLLBACK") //nolint:errcheck // leaving a failed attempt
		}
	}()
	if p.wal {
		// snapshot_open needs a connection that has opened the WAL
		// already, that is read the database once.
		if !c.walOpen {
			if _, err := c.queryInt("SELECT count(*) FROM sqlite_schema"); err != nil {
				return err
			}
			c.walOpen = true
		}
		if err := c.exec("BEGIN"); err != nil {
			return err
		}
		snap, err := p.pin.snapshotGet()
		if le := (*liteError)(nil); errors.As(err, &le) && le.code == sqlite3.SQLITE_ERROR {
			// sqlite3_snapshot_get refuses (SQLITE_ERROR) to describe a
			// state whose WAL has had no frame written since it was
			// created: one where the database file alone holds the
			// pinned state. No checkpoint can write to the file while
			// the first connection reads it that way (it holds WAL read
			// lock 0, which checkpoints need exclusively). So a plain
			// read transaction sees the same state if its WAL is still
			// unwritten too, which the same refusal proves.
			if _, err := c.queryInt("SELECT count(*) FROM sqlite_schema"); err != nil {
				return err
			}
			got, err := c.snapshotGet()
			if err == nil {
				sqlite3.Xsqlite3_snapshot_free(c.tls, got)
				return errors.New("a commit came between the read transactions")
			}
			if le := (*liteError)(nil); !errors.As(err, &le) || le.code != sqlite3.SQLITE_ERROR {
				return err
			}
		} else {
			if err != nil {
				return err
			}
			defer sqlite3.Xsqlite3_snapshot_free(p.pin.tls, snap)
			if err := c.snapshotOpen(snap); err != nil {
				return err
			}
			got, err := c.snapshotGet()
			if err != nil {
				return err
			}
			same := sqlite3.Xsqlite3_snapshot_cmp(c.tls, snap, got) == 0
			sqlite3.Xsqlite3_snapshot_free(c.tls, got)
			if !same {
				return errors.New("the second connection opened another snapshot")
			}
		}
	} else {
		if err := c.exec("BEGIN"); err != nil {
			return err
		}
		if _, err := c.queryInt("SELECT count(*) FROM sqlite_schema"); err != nil {
			return err
		}
		const page1 = "SELECT data FROM sqlite_dbpage WHERE pgno = 1"
		a, err := p.pin.queryText(page1)
		if err != nil {
			return err
		}
		b, err := c.queryText(page1)
		if err != nil {
			return err
		}
		if a != b {
			return errors.New("the connections read different page 1")
		}
	}
	n, err := c.queryInt("PRAGMA page_count")
	if err != nil {
		return err
	}
	if uint32(n) != p.pageCount {
		return fmt.Errorf("the connections see %d and %d pages", p.pageCount, n)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// liteConn is a read-only SQLite connection driven through the C API. Its
// mutex serialises the calls on it: a libc.TLS is not safe for concurrent
// use.
type liteConn struct {
	mu  sync.Mutex
	tls *libc.TLS
	db  uintptr // sqlite3*; 0 once closed
	// walOpen records that the connection has read the database once.
	walOpen bool
	// plain records that the connection has no virtual table modules
	// (dropModules).
	plain bool
}

// liteError is an SQLite error with its (extended) result code. Like
// sqlite.Error it has a Code method; errors.Is maps it to ErrCorruptDB and
// ErrNotDatabase, so that dbError's fallback (which runCheck uses) keeps
// that meaning too.
type liteError struct {
	code int32
	msg  string
}

func (e *liteError) Error() string { return e.msg }

// Code returns the SQLite result code.
func (e *liteError) Code() int { return int(e.code) }

// Is reports whether e means target.
func (e *liteError) Is(target error) bool {
	switch target {
	case ErrCorruptDB:
		return e.code&0xff == sqlite3.SQLITE_CORRUPT
	case ErrNotDatabase:
		return e.code&0xff == sqlite3.SQLITE_NOTADB
	}
	return false
}

func isBusy(err error) bool {
	var le *liteError
	return errors.As(err, &le) && le.code&0xff == sqlite3.SQLITE_BUSY
}

// pagesErr is dbError for the errors of a liteConn (dbError only knows
// modernc.org/sqlite's error type).
func pagesErr(src string, err error) error {
	var le *liteError
	if !errors.As(err, &le) {
		return dbError(src, err)
	}
	switch le.code {
	case sqlite3.SQLITE_READONLY_ROLLBACK:
		return fmt.Errorf("chat database %s: has a hot journal from an interrupted write that must be rolled back first (let the chat app open it): %w", src, err)
	case sqlite3.SQLITE_READONLY_RECOVERY, sqlite3.SQLITE_READONLY_CANTINIT:
		return fmt.Errorf("chat database %s: its WAL index (-shm) needs rebuilding but cannot be written: %w", src, err)
	}
	switch le.code & 0xff {
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("chat database %s: %w", src, ErrNotDatabase)
	case sqlite3.SQLITE_CORRUPT:
		return &corruptError{msg: fmt.Sprintf("chat database %s is corrupt: %s", src, oneLine(le.msg))}
	}
	return fmt.Errorf("chat database %s: %w", src, err)
}

// newPtr allocates a C pointer variable (an out parameter), set to NULL;
// free it with libc.Xfree.
func newPtr(tls *libc.TLS) (uintptr, error) {
	const size = unsafe.Sizeof(uintptr(0))
	p := libc.Xmalloc(tls, types.Size_t(size))
	if p == 0 {
		return 0, fmt.Errorf("sqlite: cannot allocate %d bytes of memory", size)
	}
	libc.AtomicStorePUintptr(p, 0)
	return p, nil
}

// openLite opens the database at the SQLite URI filename uri read-only, with
// extended result codes and the given busy timeout.
func openLite(uri string, busyMS int32) (*liteConn, error) {
	tls := libc.NewTLS()
	db, err := openV2(tls, uri)
	if err != nil {
		tls.Close()
		return nil, err
	}
	sqlite3.Xsqlite3_busy_timeout(tls, db, busyMS)
	return &liteConn{tls: tls, db: db}, nil
}

func openV2(tls *libc.TLS, uri string) (uintptr, error) {
	z, err := libc.CString(uri)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(tls, z)
	pp, err := newPtr(tls)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(tls, pp)
	rc := sqlite3.Xsqlite3_open_v2(tls, z, pp, sqlite3.SQLITE_OPEN_READONLY|sqlite3.SQLITE_OPEN_URI|
		sqlite3.SQLITE_OPEN_FULLMUTEX|sqlite3.SQLITE_OPEN_EXRESCODE, 0)
	db := libc.AtomicLoadPUintptr(pp)
	if rc != sqlite3.SQLITE_OK {
		err := liteErrorFor(tls, db, rc)
		if db != 0 {
			sqlite3.Xsqlite3_close_v2(tls, db)
		}
		return 0, err
	}
	return db, nil
}

func liteErrorFor(tls *libc.TLS, db uintptr, rc int32) error {
	str := libc.GoString(sqlite3.Xsqlite3_errstr(tls, rc))
	msg := str
	if db != 0 {
		if m := libc.GoString(sqlite3.Xsqlite3_errmsg(tls, db)); m != str {
			msg = str + ": " + m
		}
	}
	return &liteError{code: rc, msg: fmt.Sprintf("%s (%d)", msg, rc)}
}

func (c *liteConn) errorFor(rc int32) error { return liteErrorFor(c.tls, c.db, rc) }

// close closes the connection, which ends its transaction. Statements are
// always finalized by the calls that prepare them.
func (c *liteConn) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == 0 {
		return nil
	}
	var err error
	if rc := sqlite3.Xsqlite3_close_v2(c.tls, c.db); rc != sqlite3.SQLITE_OK {
		err = c.errorFor(rc)
	}
	c.db = 0
	c.tls.Close()
	c.tls = nil
	return err
}

func (c *liteConn) prepare(query string) (uintptr, error) {
	z, err := libc.CString(query)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, z)
	pp, err := newPtr(c.tls)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, pp)
	if rc := sqlite3.Xsqlite3_prepare_v2(c.tls, c.db, z, -1, pp, 0); rc != sqlite3.SQLITE_OK {
		return 0, c.errorFor(rc)
	}
	stmt := libc.AtomicLoadPUintptr(pp)
	if stmt == 0 {
		return 0, fmt.Errorf("sqlite: no statement in %q", query)
	}
	return stmt, nil
}

func (c *liteConn) finalize(stmt uintptr) {
	// Its result repeats the last step's error, already reported.
	sqlite3.Xsqlite3_finalize(c.tls, stmt)
}

// query runs a statement without parameters, calling row (if not nil) on
// each result row.
func (c *liteConn) query(query string, row func(stmt uintptr)) error {
	stmt, err := c.prepare(query)
	if err != nil {
		return err
	}
	defer c.finalize(stmt)
	for {
		switch rc := sqlite3.Xsqlite3_step(c.tls, stmt); rc {
		case sqlite3.SQLITE_DONE:
			return nil
		case sqlite3.SQLITE_ROW:
			if row != nil {
				row(stmt)
			}
		default:
			return c.errorFor(rc)
		}
	}
}

func (c *liteConn) exec(query string) error { return c.query(query, nil) }

// queryInt returns the first column of the last row of a query.
func (c *liteConn) queryInt(query string) (int64, error) {
	var v int64
	err := c.query(query, func(stmt uintptr) { v = sqlite3.Xsqlite3_column_int64(c.tls, stmt, 0) })
	return v, err
}

// queryText returns the first column of the last row of a query as text (a
// blob's bytes).
func (c *liteConn) queryText(query string) (string, error) {
	var v string
	err := c.query(query, func(stmt uintptr) { v = c.columnText(stmt, 0) })
	return v, err
}

func (c *liteConn) columnText(stmt uintptr, i int32) string {
	p := sqlite3.Xsqlite3_column_blob(c.tls, stmt, i)
	n := sqlite3.Xsqlite3_column_bytes(c.tls, stmt, i)
	if p == 0 || n == 0 {
		return ""
	}
	return string(libc.GoBytes(p, int(n)))
}

// snapshotGet returns an sqlite3_snapshot* for the state the connection's
// read transaction sees, to be freed with sqlite3_snapshot_free.
func (c *liteConn) snapshotGet() (uintptr, error) {
	zMain, err := libc.CString("main")
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, zMain)
	pp, err := newPtr(c.tls)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, pp)
	if rc := sqlite3.Xsqlite3_snapshot_get(c.tls, c.db, zMain, pp); rc != sqlite3.SQLITE_OK {
		return 0, c.errorFor(rc)
	}
	return libc.AtomicLoadPUintptr(pp), nil
}

// snapshotOpen starts the read transaction of the connection, which must be
// inside BEGIN and not have read yet, on snap.
func (c *liteConn) snapshotOpen(snap uintptr) error {
	zMain, err := libc.CString("main")
	if err != nil {
		return err
	}
	defer libc.Xfree(c.tls, zMain)
	if rc := sqlite3.Xsqlite3_snapshot_open(c.tls, c.db, zMain, snap); rc != sqlite3.SQLITE_OK {
		return c.errorFor(rc)
	}
	return nil
}

// interruptOn makes SQLite abandon the statement running on c once ctx is
// done. The returned stop must be called before c runs anything else or is
// closed: it returns once no interrupt can be underway.
func (c *liteConn) interruptOn(ctx context.Context) (stop func()) {
	db := c.db
	done := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(done)
		// Not c.tls, which the interrupted call is using.
		tls := libc.NewTLS()
		sqlite3.Xsqlite3_interrupt(tls, db)
		tls.Close()
	})
	return func() {
		if !stopAfter() {
			<-done
		}
	}
}

// checkConn presents a liteConn to database/sql, for runCheck. It only runs
// queries without parameters, and its Close leaves the connection (owned by
// DBPages) open; any number of connections database/sql asks for are that
// same one, so the check can never run outside the pinned transaction.
type checkConn struct{ c *liteConn }

var (
	_ driver.Connector      = checkConn{}
	_ driver.QueryerContext = checkConn{}
)

func (k checkConn) Connect(context.Context) (driver.Conn, error) { return k, nil }
func (k checkConn) Driver() driver.Driver                        { return k }
func (k checkConn) Open(string) (driver.Conn, error)             { return k, nil }
func (checkConn) Close() error                                   { return nil }
func (checkConn) Begin() (driver.Tx, error)                      { return nil, errors.New("checkConn: no transactions") }
func (checkConn) Prepare(string) (driver.Stmt, error) {
	return nil, errors.New("checkConn: no prepared statements")
}

func (k checkConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) > 0 {
		return nil, errors.New("checkConn: no parameters")
	}
	stop := k.c.interruptOn(ctx)
	stmt, err := k.c.prepare(query)
	if err != nil {
		stop()
		return nil, err
	}
	return &checkRows{c: k.c, stmt: stmt, stop: stop}, nil
}

// checkRows returns the first column of each row, as text.
type checkRows struct {
	c    *liteConn
	stmt uintptr
	stop func()
}

func (r *checkRows) Columns() []string { return []string{"result"} }

func (r *checkRows) Close() error {
	if r.stmt != 0 {
		r.stop()
		r.c.finalize(r.stmt)
		r.stmt = 0
	}
	return nil
}

func (r *checkRows) Next(dest []driver.Value) error {
	switch rc := sqlite3.Xsqlite3_step(r.c.tls, r.stmt); rc {
	case sqlite3.SQLITE_ROW:
		dest[0] = r.c.columnText(r.stmt, 0)
		return nil
	case sqlite3.SQLITE_DONE:
		return io.EOF
	default:
		return r.c.errorFor(rc)
	}
}
