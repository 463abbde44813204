package archive

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/gather"
)

func makeDB(t *testing.T, path string, rows int) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"PRAGMA journal_mode=WAL", "CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY, body TEXT)", "CREATE INDEX IF NOT EXISTS mb ON message(body)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	tx, _ := db.Begin()
	for i := 0; i < rows; i++ {
		tx.Exec("INSERT INTO message (body) VALUES (?)", strings.Repeat("x", i%300))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// An unchanged database is neither copied nor checked again; a changed
// one is.
func TestUnchangedDatabaseIsReused(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	makeDB(t, dbPath, 3000)
	s1, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	if s1.DBStamp == nil || s1.Stats.ReadBytes == 0 {
		t.Fatalf("first backup: stamp %v, read %d", s1.DBStamp, s1.Stats.ReadBytes)
	}
	s2, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Stats.ReadBytes != 0 || s2.Stats.Unchanged != 1 {
		t.Fatalf("unchanged database was read again: %+v", s2.Stats)
	}
	makeDB(t, dbPath, 10) // a write: the stamp changes
	s3, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	if s3.Stats.ReadBytes == 0 {
		t.Fatal("changed database was not read")
	}
	out := t.TempDir()
	if _, err := tr.Restore(ctx, s3, RestoreOptions{Target: out}); err != nil {
		t.Fatal(err)
	}
	db, _ := sql.Open("sqlite", filepath.Join(out, "msgstore.db"))
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM message").Scan(&n); err != nil || n != 3010 {
		t.Fatalf("restored %d messages (%v), want 3010", n, err)
	}
}

// corruptMiddlePage checkpoints the database into its main file and
// overwrites the page in its middle with garbage.
func corruptMiddlePage(t *testing.T, dbPath string) {
	t.Helper()
	db, _ := sql.Open("sqlite", dbPath)
	db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
	db.Exec("PRAGMA journal_mode=DELETE")
	db.Close()
	f, err := os.OpenFile(dbPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(i * 7)
	}
	if _, err := f.WriteAt(garbage, (fi.Size()/4096/2)*4096); err != nil {
		t.Fatal(err)
	}
}

// A corrupt database fails the backup; no snapshot claims it.
func TestCorruptDatabaseFailsBackup(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	makeDB(t, dbPath, 20000)
	corruptMiddlePage(t, dbPath)
	for _, mode := range []string{"full", "quick", "auto"} {
		_, err := tr.Backup(ctx, BackupOptions{DB: dbPath, DBCheck: mode})
		if !errors.Is(err, gather.ErrCorruptDB) {
			t.Fatalf("%s: backup of a corrupt database: %v, want ErrCorruptDB", mode, err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
	}
	snaps, err := tr.Snapshots(ctx)
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after failed backups: %d, %v", len(snaps), err)
	}
}

// The auto schedule: a full check when none of this database is recent
// enough, a quick one otherwise; an unchanged database keeps its parent's.
func TestDBCheckSchedule(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	makeDB(t, dbPath, 2000)
	for i, step := range []struct {
		write bool
		every time.Duration
		want  string
	}{
		{true, 0, "full"},               // none yet
		{true, 0, "quick"},              // the first is within the week
		{false, 0, "quick"},             // unchanged: the parent's node and check
		{true, time.Nanosecond, "full"}, // the last full check is too old
		{true, time.Hour, "quick"},      // and now recent again
	} {
		if step.write {
			makeDB(t, dbPath, 10)
		}
		s, err := tr.Backup(ctx, BackupOptions{DB: dbPath, DBFullCheckEvery: step.every})
		if err != nil {
			t.Fatal(err)
		}
		if s.DBCheck != step.want || s.DBFullCheck == nil {
			t.Fatalf("backup %d: check %q, last full %v; want %q", i, s.DBCheck, s.DBFullCheck, step.want)
		}
		if step.want == "full" && !s.DBFullCheck.Equal(s.Time) {
			t.Errorf("backup %d ran the full check but records it at %v, not %v", i, s.DBFullCheck, s.Time)
		}
	}
}
