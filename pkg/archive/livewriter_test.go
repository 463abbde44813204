package archive

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// TestBackupWhileAppWrites backs up a WAL-mode chat database while a
// writer keeps committing transactions, then restores it: the restored
// database passes integrity_check and holds a transaction-consistent
// prefix of the writes (messages 1..k with no gap, and the counter row
// says k).
func TestBackupWhileAppWrites(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "msgstore.db")
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, q := range []string{
		"CREATE TABLE message (seq INTEGER PRIMARY KEY, body TEXT)",
		"CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)",
		"INSERT INTO counter VALUES (1, 0)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// Some volume first, so the copy takes several backup steps.
	pad := string(make([]byte, 2000))
	tx, _ := db.Begin()
	for i := 1; i <= 3000; i++ {
		tx.Exec("INSERT INTO message VALUES (?, ?)", i, fmt.Sprintf("m%d %s", i, pad))
	}
	tx.Exec("UPDATE counter SET n = 3000")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var wrote atomic.Int64
	wrote.Store(3000)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := int64(3001); !stop.Load(); n++ {
			tx, err := db.Begin()
			if err != nil {
				t.Error(err)
				return
			}
			tx.Exec("INSERT INTO message VALUES (?, ?)", n, fmt.Sprintf("m%d", n))
			tx.Exec("UPDATE counter SET n = ?", n)
			if err := tx.Commit(); err != nil {
				t.Error(err)
				return
			}
			wrote.Store(n)
		}
	}()

	tr := newTestRepo(t)
	media := filepath.Join(dir, "Media")
	os.MkdirAll(media, 0o755)
	os.WriteFile(filepath.Join(media, "a.jpg"), []byte("jpeg"), 0o644)
	var snaps []*Snapshot
	for i := 0; i < 3; i++ {
		s, err := tr.Backup(ctx, BackupOptions{DB: dbPath, Media: media})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, s)
		time.Sleep(20 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if wrote.Load() < 3100 {
		t.Logf("writer committed only %d transactions", wrote.Load()-3000)
	}

	r2 := tr.reopen(t)
	for _, s := range snaps {
		out := t.TempDir()
		if _, err := r2.Restore(ctx, s, RestoreOptions{Target: out}); err != nil {
			t.Fatal(err)
		}
		rdb, err := sql.Open("sqlite", filepath.Join(out, "msgstore.db"))
		if err != nil {
			t.Fatal(err)
		}
		var check string
		if err := rdb.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
			t.Fatalf("restored db integrity_check = %q, %v", check, err)
		}
		var count, maxSeq, counter int64
		rdb.QueryRow("SELECT count(*), max(seq) FROM message").Scan(&count, &maxSeq)
		rdb.QueryRow("SELECT n FROM counter").Scan(&counter)
		rdb.Close()
		if count != maxSeq || counter != maxSeq || maxSeq < 3000 {
			t.Fatalf("snapshot %s: %d messages, max seq %d, counter %d: not a consistent prefix", s.ID.Short(), count, maxSeq, counter)
		}
		t.Logf("snapshot %s holds a consistent prefix of %d transactions", s.ID.Short(), maxSeq)
	}
}
