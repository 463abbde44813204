package gather

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrCorruptDB is returned (wrapped) by SnapshotDB when the chat database,
// or the copy taken of it, fails SQLite's integrity check or cannot be read
// because it is malformed. Test with errors.Is.
var ErrCorruptDB = errors.New("chat database is corrupt")

// ErrNotDatabase is returned (wrapped) by SnapshotDB when the source file is
// not a SQLite database at all. Test with errors.Is.
var ErrNotDatabase = errors.New("file is not a database")

// busyTimeoutMS bounds how long SnapshotDB waits for the chat app's locks
// (in WAL mode readers rarely wait, but WAL recovery and checkpoints can
// briefly hold them).
const busyTimeoutMS = 10000

// defaultStepPages is how many pages one backup step copies; between steps
// SnapshotDB checks for cancellation. 1024 pages is 4 MiB at the usual page
// size.
const defaultStepPages = 1024

// snapOpts are the knobs SnapshotDB fixes; tests vary them.
type snapOpts struct {
	stepPages int32
	// onStep, if set, is called after every backup step with the pages
	// copied so far and the source's page count.
	onStep func(copied, total int)
	// noCheck skips integrity_check, noSync the fsync (CopyDB).
	noCheck, noSync bool
	// pinned, if set, is called once the read transaction has pinned the
	// state being copied.
	pinned func()
}

// SnapshotDB writes a transaction-consistent copy of the SQLite database at
// src to dst (which must not exist) and verifies it with PRAGMA
// integrity_check.
//
// The database may be in use by the chat app, in WAL or rollback-journal
// mode. It is never copied as a file: SnapshotDB opens it read-only, starts
// a read transaction (which pins one committed state of the database) and
// copies that state page by page with SQLite's online backup API. Because
// the read transaction stays open for the whole copy, the backup never has
// to restart when the app commits meanwhile. In WAL mode the app's writes
// carry on unhindered (its checkpoints just cannot pass the pinned state
// until the copy ends); in rollback-journal mode its writers wait for the
// copy, as for any reader.
//
// The database file and its -wal are never modified. Like any SQLite reader
// of a WAL database, SnapshotDB may create the -shm index and an empty -wal
// beside it if they are missing (SQLite gives them the database's owner
// when running as root). A rollback-journal database with a hot journal
// left by a crash cannot be read read-only; that is an error saying so.
//
// The copy is a self-contained file: its journal mode is DELETE (no -wal or
// -shm beside it) and it is fsync'ed, as is its directory, before SnapshotDB
// returns. On any error dst is removed.
//
// A source that is missing or not a SQLite database yields an error naming
// it (wrapping fs.ErrNotExist or ErrNotDatabase); a corrupt one an error
// wrapping ErrCorruptDB whose message quotes the first problem found.
func SnapshotDB(ctx context.Context, src, dst string) error {
	return snapshotDB(ctx, src, dst, snapOpts{stepPages: defaultStepPages})
}

// CopyDB is SnapshotDB without the integrity check and without the fsync:
// for callers that verify the copy with CheckDB while they read it, and
// that do not keep it. The copy is a self-contained DELETE-mode database.
//
// pinned, if not nil, is called as soon as the state being copied is
// fixed (the read transaction has started), before the pages are copied:
// whatever the caller reads from then on is at least as new as the copy.
func CopyDB(ctx context.Context, src, dst string, pinned func()) error {
	return snapshotDB(ctx, src, dst, snapOpts{stepPages: defaultStepPages, noCheck: true, noSync: true, pinned: pinned})
}

// CheckDB runs PRAGMA integrity_check (or, with quick, PRAGMA quick_check,
// which skips matching index entries to table rows) on the database file
// at path (a copy made by CopyDB); label names the chat database in
// messages. Any finding is an error wrapping ErrCorruptDB.
func CheckDB(ctx context.Context, path, label string, quick bool) error {
	uri, err := sqliteURI(path, "mode=ro", checkCachePragma)
	if err != nil {
		return err
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	pragma := "integrity_check"
	if quick {
		pragma = "quick_check"
	}
	return ctxErr(ctx, runCheck(ctx, db, label, pragma))
}

// checkCachePragma pins integrity_check to a 2 MiB page cache (measured:
// 8 and 32 MiB were no faster; the check is CPU-bound), so memory stays
// bounded whatever the size of the database.
const checkCachePragma = "_pragma=cache_size(-2048)"

func snapshotDB(ctx context.Context, src, dst string, o snapOpts) (err error) {
	fi, err := os.Stat(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("chat database %s: %w", src, fs.ErrNotExist)
		}
		return fmt.Errorf("chat database %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("chat database %s: not a regular file", src)
	}
	srcURI, err := sqliteURI(src, "mode=ro", fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS))
	if err != nil {
		return fmt.Errorf("chat database %s: %w", src, err)
	}
	dstURI, err := sqliteURI(dst)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", dst, err)
	}

	// A leftover journal beside dst would be taken for a hot journal and
	// "rolled back" into the fresh copy, so refuse those too.
	for _, p := range []string{dst + "-journal", dst + "-wal", dst + "-shm"} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("snapshot %s: %s already exists", dst, p)
		}
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	f.Close()
	defer func() {
		if err != nil {
			removeDB(dst)
		}
	}()

	if err := backup(ctx, src, srcURI, dstURI, o); err != nil {
		return ctxErr(ctx, err)
	}
	if err := finishCopy(ctx, src, dst, dstURI, !o.noCheck); err != nil {
		return ctxErr(ctx, err)
	}
	if o.noSync {
		return nil
	}
	return syncFile(dst)
}

// ctxErr prefers the context's own error once it has ended: SQLite reports
// an interrupted statement without saying why.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// backup copies the database at srcURI to dstURI with the online backup API,
// inside one read transaction on the source.
func backup(ctx context.Context, src, srcURI, dstURI string, o snapOpts) error {
	db, err := sql.Open("sqlite", srcURI)
	if err != nil {
		return fmt.Errorf("chat database %s: %w", src, err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return dbError(src, err)
	}
	defer conn.Close()

	// BEGIN is deferred: the read transaction, and with it the pinned
	// snapshot, starts with the first read.
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		return dbError(src, err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK") //nolint:errcheck // releasing a read transaction
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil {
		return dbError(src, err)
	}
	if o.pinned != nil {
		o.pinned()
	}

	err = conn.Raw(func(dc any) error {
		bc, ok := dc.(interface {
			NewBackup(string) (*sqlite.Backup, error)
		})
		if !ok {
			return fmt.Errorf("sqlite driver connection %T has no backup API", dc)
		}
		b, err := bc.NewBackup(dstURI)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		for {
			if err := ctx.Err(); err != nil {
				b.Finish()
				return err
			}
			more, err := b.Step(o.stepPages)
			if err != nil {
				b.Finish()
				return dbError(src, err)
			}
			if o.onStep != nil {
				total := b.PageCount()
				copied := total - b.Remaining()
				if !more {
					copied = total
				}
				o.onStep(copied, total)
			}
			if !more {
				break
			}
		}
		if err := b.Finish(); err != nil {
			return dbError(src, err)
		}
		return nil
	})
	return err
}

// finishCopy verifies the fresh copy and makes it a self-contained
// rollback-journal database (the backup API copies the source's header,
// which still says WAL).
func finishCopy(ctx context.Context, src, dst, dstURI string, check bool) error {
	if check {
		sep := "?"
		if strings.Contains(dstURI, "?") {
			sep = "&"
		}
		dstURI += sep + checkCachePragma
	}
	db, err := sql.Open("sqlite", dstURI)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", dst, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	if check {
		if err := integrityCheck(ctx, db, src); err != nil {
			return err
		}
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode=DELETE").Scan(&mode); err != nil {
		return dbError(src, err)
	}
	if !strings.EqualFold(mode, "delete") {
		return fmt.Errorf("snapshot %s: cannot set journal_mode=DELETE (still %s)", dst, mode)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("snapshot %s: %w", dst, err)
	}
	for _, p := range []string{dst + "-wal", dst + "-shm", dst + "-journal"} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("snapshot %s: %s left behind", dst, p)
		}
	}
	return nil
}

// integrityCheck runs PRAGMA integrity_check on db and turns any finding into
// an error wrapping ErrCorruptDB that quotes the first problem on one line.
func integrityCheck(ctx context.Context, db *sql.DB, src string) error {
	return runCheck(ctx, db, src, "integrity_check")
}

// runCheck runs PRAGMA integrity_check or quick_check (pragma).
func runCheck(ctx context.Context, db *sql.DB, src, pragma string) error {
	rows, err := db.QueryContext(ctx, "PRAGMA "+pragma)
	if err != nil {
		return dbError(src, err)
	}
	defer rows.Close()
	// Each row may hold several newline-separated problems, the first one
	// prefixed by a "*** in database main ***" line.
	var header, first string
	ok, problems := false, 0
	for rows.Next() {
		var report string
		if err := rows.Scan(&report); err != nil {
			return dbError(src, err)
		}
		if report == "ok" {
			ok = true
			continue
		}
		for _, line := range strings.Split(report, "\n") {
			switch {
			case strings.HasPrefix(line, "*** "):
				if header == "" && first == "" {
					header = line + " "
				}
			case strings.TrimSpace(line) == "":
			default:
				if problems == 0 {
					first = line
				}
				problems++
			}
		}
	}
	// SQLite may end a report on a badly damaged file with an error;
	// the problems found so far describe it better.
	if err := rows.Err(); err != nil && problems == 0 {
		return dbError(src, err)
	}
	if ok && problems == 0 {
		return nil
	}
	if problems == 0 {
		first = "no result"
	}
	msg := fmt.Sprintf("chat database %s failed %s: %s", src, pragma, oneLine(header+first))
	if problems > 1 {
		msg += fmt.Sprintf(" (and %d more problems)", problems-1)
	}
	return &corruptError{msg: msg}
}

// corruptError carries its own message and wraps ErrCorruptDB.
type corruptError struct{ msg string }

func (e *corruptError) Error() string { return e.msg }
func (e *corruptError) Unwrap() error { return ErrCorruptDB }

// dbError names the chat database in err and maps SQLite's "not a database"
// and "malformed" result codes to ErrNotDatabase and ErrCorruptDB.
func dbError(src string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_READONLY_ROLLBACK:
			return fmt.Errorf("chat database %s: has a hot journal from an interrupted write that must be rolled back first (let the chat app open it): %w", src, err)
		case sqlite3.SQLITE_READONLY_RECOVERY, sqlite3.SQLITE_READONLY_CANTINIT:
			return fmt.Errorf("chat database %s: its WAL index (-shm) needs rebuilding but cannot be written: %w", src, err)
		}
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("chat database %s: %w", src, ErrNotDatabase)
		case sqlite3.SQLITE_CORRUPT:
			return &corruptError{msg: fmt.Sprintf("chat database %s is corrupt: %s", src, oneLine(se.Error()))}
		}
	}
	return fmt.Errorf("chat database %s: %w", src, err)
}

// oneLine folds a multi-line SQLite message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// sqliteURI turns a file path into an SQLite URI filename with the given
// query parameters, escaping the characters URIs give meaning to so that any
// path name works.
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

// syncFile fsyncs the file at path and the directory holding it.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("snapshot: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("snapshot: sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// removeDB deletes a failed snapshot and whatever SQLite left beside it.
func removeDB(path string) {
	for _, p := range []string{path, path + "-journal", path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
}
