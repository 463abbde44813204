package gather

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrCorruptDB is returned (wrapped) by DBPages.Check and CheckDB when a
// database fails SQLite's check, and when one cannot be read because it is
// malformed. Test with errors.Is.
var ErrCorruptDB = errors.New("chat database is corrupt")

// ErrNotDatabase is returned (wrapped) by OpenDBPages when the source file
// is not a SQLite database at all. Test with errors.Is.
var ErrNotDatabase = errors.New("file is not a database")

// busyTimeoutMS bounds how long OpenDBPages waits for the chat app's locks
// (in WAL mode readers rarely wait, but WAL recovery and checkpoints can
// briefly hold them).
const busyTimeoutMS = 10000

// CheckDB runs PRAGMA integrity_check (or, with quick, PRAGMA quick_check,
// which skips matching index entries to table rows) on the database file
// at path (a stored database rebuilt by check --db); label names it in
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
	return ctxErr(ctx, runCheck(ctx, db, label, "PRAGMA "+pragma, pragma))
}

// QueryDB runs one read-only query on the database file at path (opened
// read-only, with query_only set, so nothing can write it) and calls fn
// with the column names once, then with each row. The file must not
// change meanwhile (a private rebuilt copy): it is opened immutable, so
// SQLite makes no -wal or -shm beside it, whatever its journal mode.
func QueryDB(ctx context.Context, path, query string, cols func([]string) error, row func([]any) error) error {
	uri, err := sqliteURI(path, "mode=ro", "immutable=1", "_pragma=query_only(1)", checkCachePragma)
	if err != nil {
		return err
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		return err
	}
	if err := cols(names); err != nil {
		return err
	}
	vals := make([]any, len(names))
	ptrs := make([]any, len(names))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		if err := row(vals); err != nil {
			return err
		}
	}
	return ctxErr(ctx, rows.Err())
}

// checkCachePragma pins integrity_check to a 2 MiB page cache (measured:
// 8 and 32 MiB were no faster; the check is CPU-bound), so memory stays
// bounded whatever the size of the database.
const checkCachePragma = "_pragma=cache_size(-2048)"

// ctxErr prefers the context's own error once it has ended: SQLite reports
// an interrupted statement without saying why.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// runCheck runs query, a PRAGMA integrity_check or quick_check, and turns
// its findings into an error naming what (the check, for the message).
func runCheck(ctx context.Context, db *sql.DB, src, query, what string) error {
	rows, err := db.QueryContext(ctx, query)
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
	msg := fmt.Sprintf("chat database %s failed %s: %s", src, what, oneLine(header+first))
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

// SQLiteURI is sqliteURI, for the packages that open a database file
// themselves.
func SQLiteURI(path string, params ...string) (string, error) { return sqliteURI(path, params...) }

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
