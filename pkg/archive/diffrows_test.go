package archive

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// execDB writes a database file at p by running stmts on it with real
// SQLite (and closes it, so a WAL-mode file is left without -wal or -shm,
// as a rebuilt one is).
func execDB(t testing.TB, p string, stmts []string) {
	t.Helper()
	db, err := sql.Open("sqlite", p)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func TestDiffRowsFiles(t *testing.T) {
	// Three messages, ids 1..3.
	base := []string{
		"CREATE TABLE message (_id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT)",
		"INSERT INTO message (text) VALUES ('a'), ('b'), ('c')",
	}
	rowid := func(name string, before, after, added, removed int64) TableRows {
		return TableRows{Name: name, Before: before, After: after, Added: added, Removed: removed, ByRowid: true}
	}
	counted := func(name, module string, before, after int64) TableRows {
		return TableRows{Name: name, Module: module, Before: before, After: after, Added: max(after-before, 0), Removed: max(before-after, 0)}
	}
	cases := []struct {
		name     string
		old, new []string // nil: no database on that side
		want     []TableRows
	}{{
		name: "rows appended",
		old:  base,
		new:  append(base[:2:2], "INSERT INTO message (text) VALUES ('d'), ('e')"),
		want: []TableRows{rowid("message", 3, 5, 2, 0)},
	}, {
		// The count alone would say nothing changed.
		name: "one deleted, one added: same count",
		old:  base,
		new:  append(base[:2:2], "DELETE FROM message WHERE _id = 2", "INSERT INTO message (text) VALUES ('d')"),
		want: []TableRows{rowid("message", 3, 3, 1, 1)},
	}, {
		// A rowid below the old maximum, re-used after a delete: still added.
		name: "rowid re-used below the old maximum",
		old:  []string{"CREATE TABLE t (id INTEGER PRIMARY KEY, v)", "INSERT INTO t VALUES (1, 'x'), (5, 'y'), (9, 'z')"},
		new:  []string{"CREATE TABLE t (id INTEGER PRIMARY KEY, v)", "INSERT INTO t VALUES (1, 'x'), (3, 'new'), (9, 'z'), (10, 'new')"},
		want: []TableRows{rowid("t", 3, 4, 2, 1)},
	}, {
		name: "without rowid: net count only",
		old:  []string{"CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID", "INSERT INTO kv VALUES ('a', 1), ('b', 2), ('c', 3)"},
		new:  []string{"CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID", "INSERT INTO kv VALUES ('a', 1), ('x', 2)"},
		want: []TableRows{counted("kv", "", 3, 2)},
	}, {
		name: "fts5 counted once, its shadow tables left out",
		old: append(base[:2:2], "CREATE VIRTUAL TABLE message_fts USING fts5(content)",
			"INSERT INTO message_fts (rowid, content) SELECT _id, text FROM message"),
		new: append(base[:2:2], "CREATE VIRTUAL TABLE message_fts USING fts5(content)",
			"INSERT INTO message (text) VALUES ('d')",
			"INSERT INTO message_fts (rowid, content) SELECT _id, text FROM message"),
		want: []TableRows{rowid("message", 3, 4, 1, 0), counted("message_fts", "fts5", 3, 4)},
	}, {
		// (This SQLite has no FTS3/4; R*Tree has shadow tables too.)
		name: "rtree too",
		old:  []string{"CREATE VIRTUAL TABLE f USING RTREE(id, x0, x1)", "INSERT INTO f VALUES (1, 0, 1), (2, 0, 2)"},
		new:  []string{"CREATE VIRTUAL TABLE f USING RTREE(id, x0, x1)", "INSERT INTO f VALUES (1, 0, 1)"},
		want: []TableRows{counted("f", "rtree", 2, 1)},
	}, {
		name: "sqlite_sequence, sqlite_stat1 and views left out",
		old:  base,
		new:  append(base[:2:2], "CREATE VIEW v AS SELECT * FROM message", "ANALYZE"),
		want: []TableRows{rowid("message", 3, 3, 0, 0)},
	}, {
		name: "a table created and a table dropped",
		old:  append(base[:2:2], "CREATE TABLE gone (x)", "INSERT INTO gone VALUES (1), (2)"),
		new:  append(base[:2:2], "CREATE TABLE fresh (x)", "INSERT INTO fresh VALUES (1)"),
		want: []TableRows{rowid("fresh", 0, 1, 1, 0), rowid("gone", 2, 0, 0, 2), rowid("message", 3, 3, 0, 0)},
	}, {
		name: "the database added",
		new:  base,
		want: []TableRows{rowid("message", 0, 3, 3, 0)},
	}, {
		name: "the database removed",
		old:  base,
		want: []TableRows{rowid("message", 3, 0, 0, 3)},
	}, {
		name: "no tables",
		old:  []string{"PRAGMA user_version = 1"},
		new:  []string{"PRAGMA user_version = 2"},
		want: []TableRows{},
	}, {
		name: "a column called rowid: compared by _rowid_",
		old:  []string{"CREATE TABLE t (rowid TEXT, v)", "INSERT INTO t VALUES ('same', 1), ('same', 2)"},
		new:  []string{"CREATE TABLE t (rowid TEXT, v)", "INSERT INTO t VALUES ('same', 1), ('same', 2), ('same', 3)"},
		want: []TableRows{rowid("t", 2, 3, 1, 0)},
	}, {
		name: "every rowid name taken by a column: net count only",
		old:  []string{"CREATE TABLE t (rowid, _rowid_, oid)", "INSERT INTO t VALUES (1, 1, 1)"},
		new:  []string{"CREATE TABLE t (rowid, _rowid_, oid)", "INSERT INTO t VALUES (1, 1, 1), (2, 2, 2)"},
		want: []TableRows{counted("t", "", 1, 2)},
	}, {
		name: "rowid in the old, without rowid in the new: net count",
		old:  []string{"CREATE TABLE t (k TEXT PRIMARY KEY)", "INSERT INTO t VALUES ('a'), ('b')"},
		new:  []string{"CREATE TABLE t (k TEXT PRIMARY KEY) WITHOUT ROWID", "INSERT INTO t VALUES ('a'), ('b'), ('c')"},
		want: []TableRows{counted("t", "", 2, 3)},
	}, {
		name: "odd table names",
		old:  []string{`CREATE TABLE "we ""quote"" it" (x)`, `INSERT INTO "we ""quote"" it" VALUES (1)`},
		new:  []string{`CREATE TABLE "we ""quote"" it" (x)`},
		want: []TableRows{rowid(`we "quote" it`, 1, 0, 0, 1)},
	}, {
		// The chat app's WAL-mode file, rebuilt without -wal and -shm,
		// opens read-only (immutable).
		name: "WAL mode",
		old:  append([]string{"PRAGMA journal_mode = WAL"}, base...),
		new:  append([]string{"PRAGMA journal_mode = WAL"}, append(base[:2:2], "INSERT INTO message (text) VALUES ('d')")...),
		want: []TableRows{rowid("message", 3, 4, 1, 0)},
	}, {
		// A module this build lacks (the chat app's own tokenizer, say):
		// the table cannot be counted, and its shadow tables, which
		// SQLite no longer knows as such, are left out with it.
		name: "a virtual table SQLite cannot open",
		old: append(base[:2:2], "CREATE VIRTUAL TABLE v USING fts5(x)", "INSERT INTO v VALUES ('a')", "CREATE TABLE v_keep_me (x)",
			"PRAGMA writable_schema = ON", "UPDATE sqlite_schema SET sql = replace(sql, 'fts5', 'nosuchmodule') WHERE name = 'v'"),
		new: append(base[:2:2], "CREATE VIRTUAL TABLE v USING fts5(x)", "INSERT INTO v VALUES ('a')", "CREATE TABLE v_keep_me (x)",
			"PRAGMA writable_schema = ON", "UPDATE sqlite_schema SET sql = replace(sql, 'fts5', 'nosuchmodule') WHERE name = 'v'"),
		want: []TableRows{rowid("message", 3, 3, 0, 0), rowid("v_keep_me", 0, 0, 0, 0)},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths [2]string
			for i, stmts := range [][]string{c.old, c.new} {
				if stmts == nil {
					continue
				}
				paths[i] = filepath.Join(dir, []string{"old.db", "new.db"}[i])
				execDB(t, paths[i], stmts)
			}
			got, err := diffRowsFiles(context.Background(), paths[0], paths[1])
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
			for _, tr := range got {
				if tr.ByRowid && tr.Before-tr.Removed+tr.Added != tr.After {
					t.Errorf("%s: %d - %d + %d != %d", tr.Name, tr.Before, tr.Removed, tr.Added, tr.After)
				}
			}
			// Opened read-only and immutable: no -wal, -shm or journal
			// appears, and the files are as they were.
			ents, _ := os.ReadDir(dir)
			if len(ents) != countNonEmpty(paths[:]) {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("files beside the databases afterwards: %v", names)
			}
		})
	}
}

func countNonEmpty(ss []string) int {
	n := 0
	for _, s := range ss {
		if s != "" {
			n++
		}
	}
	return n
}

func TestDiffRowsCancelled(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.db")
	execDB(t, p, []string{"CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := diffRowsFiles(ctx, p, p); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// DiffRows on two snapshots of a real backup: both versions are rebuilt
// from the repository (and the temporary files removed afterwards).
func TestDiffRowsSnapshots(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	execDB(t, dbPath, []string{"PRAGMA journal_mode = WAL",
		"CREATE TABLE message (_id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO message (text) SELECT printf('message %d of the first day', i) FROM n"})
	s1, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	execDB(t, dbPath, []string{"DELETE FROM message WHERE _id <= 10",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) INSERT INTO message (text) SELECT printf('message %d of the second day', i) FROM n"})
	s2, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	var ch *Change
	err = tr.Diff(ctx, s1, s2, func(c Change) error {
		if c.Path == "msgstore.db" {
			ch = &c
		}
		return nil
	})
	if err != nil || ch == nil {
		t.Fatalf("diff: %v, change %v", err, ch)
	}
	tmp := t.TempDir()
	got, err := tr.DiffRows(ctx, ch.Old, ch.New, tmp)
	if err != nil {
		t.Fatal(err)
	}
	want := []TableRows{{Name: "message", Before: 3000, After: 4490, Added: 1500, Removed: 10, ByRowid: true}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in the temporary directory: %v", ents)
	}
	// Added: only the new version.
	got, err = tr.DiffRows(ctx, nil, ch.New, tmp)
	if err != nil || len(got) != 1 || got[0].Added != 4490 {
		t.Fatalf("database added: %+v %v", got, err)
	}
}
