package archive

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/gather"
)

// writeFTSDB adds rows messages to a WAL database with a full-text index
// (FTS5) on their bodies, creating it the first time.
func writeFTSDB(t *testing.T, path string, rows int) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{"PRAGMA journal_mode=WAL",
		"CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY, body TEXT)",
		"CREATE INDEX IF NOT EXISTS message_body ON message(body)",
		"CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5(body)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rows; i++ {
		body := strings.Repeat("see you at the usual place ", 1+i%9) + time.Duration(i).String()
		res, err := tx.Exec("INSERT INTO message (body) VALUES (?)", body)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := res.LastInsertId()
		if _, err := tx.Exec("INSERT INTO message_fts (rowid, body) VALUES (?, ?)", id, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// damageFTS changes bytes in the largest segment of the full-text index:
// every b-tree of the file stays sound.
func damageFTS(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
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
}

// TestFTSCheckSchedule: the FTS index's own check runs on the first
// backup, is skipped (and the snapshot says so) until the last full check
// is older than DBFullCheckEvery, and runs whenever the full check is
// asked for; an unchanged database keeps its parent's record. What each
// snapshot says is read back from the repository.
func TestFTSCheckSchedule(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	writeFTSDB(t, dbPath, 2000)
	skipped := []string{"message_fts"}
	for i, step := range []struct {
		name      string
		write     bool
		mode      string
		every     time.Duration
		check     string
		unchecked []string
	}{
		{"first backup", true, "", 0, "full", nil},
		{"within the week", true, "", 0, "quick", skipped},
		{"unchanged: the parent's", false, "", 0, "quick", skipped},
		{"a week passed", true, "", time.Nanosecond, "full", nil},
		{"within the week again", true, "", time.Hour, "quick", skipped},
		{"full asked for", true, "full", 0, "full", nil},
		{"quick asked for", true, "quick", time.Nanosecond, "quick", skipped},
	} {
		if step.write {
			writeFTSDB(t, dbPath, 10)
		}
		s, err := tr.Backup(ctx, BackupOptions{DB: dbPath, DBCheck: step.mode, DBFullCheckEvery: step.every})
		if err != nil {
			t.Fatalf("%d %s: %v", i, step.name, err)
		}
		snaps, err := tr.reopen(t).Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := snaps[len(snaps)-1].Databases()[0]
		if got.Check != step.check || !slices.Equal(got.Unchecked, step.unchecked) || !slices.Equal(s.DBUnchecked, step.unchecked) {
			t.Errorf("%d %s: check %q, unchecked %q (returned %q); want %q, %q", i, step.name, got.Check, got.Unchecked, s.DBUnchecked, step.check, step.unchecked)
		}
	}
}

// TestFTSDamageFoundByFullCheck: a damaged segment of the full-text index
// passes the nightly quick check (recorded as not checked) and fails the
// scheduled full check and the one asked for; no snapshot claims it.
func TestFTSDamageFoundByFullCheck(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	writeFTSDB(t, dbPath, 3000)
	if _, err := tr.Backup(ctx, BackupOptions{DB: dbPath}); err != nil {
		t.Fatal(err)
	}
	damageFTS(t, dbPath)
	s, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatalf("quick check of a database whose FTS index is damaged: %v", err)
	}
	if s.DBCheck != "quick" || !slices.Equal(s.DBUnchecked, []string{"message_fts"}) {
		t.Errorf("nightly snapshot: check %q, unchecked %q", s.DBCheck, s.DBUnchecked)
	}
	for _, opt := range []BackupOptions{
		{DB: dbPath, DBFullCheckEvery: time.Nanosecond}, // the schedule
		{DB: dbPath, DBCheck: "full"},                   // asked for
	} {
		// A change elsewhere, so that the database is read again.
		db, err := sql.Open("sqlite", dbPath)
		if err != nil {
			t.Fatal(err)
		}
		_, err = db.Exec("INSERT INTO message (body) VALUES ('a new message')")
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, err = tr.Backup(ctx, opt)
		if !errors.Is(err, gather.ErrCorruptDB) || !strings.Contains(err.Error(), "failed integrity_check") || !strings.Contains(err.Error(), "message_fts") {
			t.Errorf("full check (%+v): %v, want ErrCorruptDB naming message_fts", opt, err)
		}
	}
	snaps, err := tr.Snapshots(ctx)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("%d snapshots (%v), want the 2 before the full checks", len(snaps), err)
	}
}
