package main

import (
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/wabackup/wabackup/pkg/archive"
)

// TestSnapshotsShowDBCheck: snapshots shows what each run's database check
// covered: the first backup's full check, a nightly quick one that left the
// FTS index out (named), a full one asked for; --json says the same.
func TestSnapshotsShowDBCheck(t *testing.T) {
	dir := t.TempDir()
	r := newRealRepo(t, dir)
	dbPath := filepath.Join(dir, "msgstore.db")
	db, err := sql.Open("sqlite", dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"PRAGMA journal_mode=WAL",
		"CREATE TABLE message (id INTEGER PRIMARY KEY, body TEXT)",
		"CREATE VIRTUAL TABLE message_fts USING fts5(body)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO message SELECT i, 'see you at the usual place ' || i FROM n",
		"INSERT INTO message_fts (rowid, body) SELECT id, body FROM message"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	touch := func() {
		// A write, as far as the backup's stamp can tell: the database
		// is read and checked again.
		now := time.Now().Add(time.Second)
		if err := os.Chtimes(dbPath, now, now); err != nil {
			t.Fatal(err)
		}
	}
	r.run("backup", "--db", dbPath, "-q")
	touch()
	r.run("backup", "--db", dbPath, "-q")
	touch()
	r.run("backup", "--db", dbPath, "--db-check", "full", "-q")

	out := r.run("snapshots")
	var notes []string
	for _, line := range strings.Split(out, "\n") {
		if m := regexp.MustCompile(`  (full|quick[^/]*?)  `).FindStringSubmatch(line); m != nil {
			notes = append(notes, m[1])
		}
	}
	want := []string{"full", "quick (full <1h before; skipped message_fts)", "full"}
	if !slices.Equal(notes, want) {
		t.Errorf("DB CHECK column %q, want %q in:\n%s", notes, want, out)
	}

	var list struct {
		Snapshots []struct {
			DBCheck     string   `json:"db_check"`
			DBUnchecked []string `json:"db_unchecked"`
			DBs         []struct {
				DBCheck     string   `json:"db_check"`
				DBUnchecked []string `json:"db_unchecked"`
			} `json:"dbs"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(r.run("snapshots", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list.Snapshots {
		if len(s.DBs) != 1 || s.DBs[0].DBCheck != s.DBCheck || !slices.Equal(s.DBs[0].DBUnchecked, s.DBUnchecked) {
			t.Errorf("snapshot's db fields %q %q differ from its dbs entry %+v", s.DBCheck, s.DBUnchecked, s.DBs)
		}
		got = append(got, s.DBCheck+" "+strings.Join(s.DBUnchecked, ","))
	}
	if want := []string{"full ", "quick message_fts", "full "}; !slices.Equal(got, want) {
		t.Errorf("snapshots --json: %q, want %q", got, want)
	}
}

func TestDBCheckNote(t *testing.T) {
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) *time.Time { t := at.Add(-d); return &t }
	tests := []struct {
		db   archive.SnapshotDB
		want string
	}{
		{archive.SnapshotDB{}, "-"},
		{archive.SnapshotDB{Check: "full", FullCheck: ago(0)}, "full"},
		{archive.SnapshotDB{Check: "full", FullCheck: ago(0), Unchecked: []string{"old_fts"}}, "full (skipped old_fts)"},
		{archive.SnapshotDB{Check: "quick"}, "quick"},
		{archive.SnapshotDB{Check: "quick", FullCheck: ago(10 * time.Minute)}, "quick (full <1h before)"},
		{archive.SnapshotDB{Check: "quick", FullCheck: ago(30 * time.Hour), Unchecked: []string{"message_ftsv2"}}, "quick (full 30h before; skipped message_ftsv2)"},
		{archive.SnapshotDB{Check: "quick", FullCheck: ago(75 * time.Hour), Unchecked: []string{"a", "b"}}, "quick (full 3d before; skipped a b)"},
	}
	for _, tc := range tests {
		if got := dbCheckNoteOne(at, tc.db); got != tc.want {
			t.Errorf("dbCheckNoteOne(%+v) = %q, want %q", tc.db, got, tc.want)
		}
	}
}
