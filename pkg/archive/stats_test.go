package archive

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestStatsFigures is issue 26, item 5: each figure of stats means what
// its name says (restic's restore-size and raw-data modes): the restore
// size is what restoring every snapshot writes; raw data is the distinct
// data those snapshots reference, uncompressed — for a database the
// distinct pages, not the whole page groups some of whose pages later
// nights replaced — so the deduplication ratio, restore size / raw data,
// is never below 1: one snapshot of distinct data is 1.00x, and every
// night that keeps most pages raises it.
func TestStatsFigures(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "msgstore.db")
	db := makeChatDB(t, dbPath, 20000)
	checkpoint(t, db)
	var snaps []*Snapshot
	for night := range 4 {
		if night > 0 {
			chatRows(t, db, 20000+night*300, 300)
			if _, err := db.Exec("UPDATE message SET status = ? WHERE _id > ?", night, 19000+night*300); err != nil {
				t.Fatal(err)
			}
			checkpoint(t, db)
		}
		s, err := tr.reopen(t).Backup(ctx, BackupOptions{DB: dbPath})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, s)
		fi, _ := os.Stat(dbPath)
		st, err := tr.reopen(t).Stats(ctx, snaps)
		if err != nil {
			t.Fatal(err)
		}
		ratio := float64(st.RestoreSize) / float64(st.RawSize)
		t.Logf("night %d: restore %d, raw %d, stored %d, ratio %.2f", night, st.RestoreSize, st.RawSize, st.StoredSize, ratio)
		var restore int64
		for _, s := range snaps {
			restore += s.Stats.Bytes
		}
		if st.RestoreSize != restore {
			t.Errorf("night %d: restore size %d, want the snapshots' %d", night, st.RestoreSize, restore)
		}
		if ratio < 1 {
			t.Errorf("night %d: deduplication ratio %.2f below 1", night, ratio)
		}
		if night == 0 && st.RawSize != fi.Size() {
			t.Errorf("one snapshot of one database: raw data %d, want its %d bytes", st.RawSize, fi.Size())
		}
		// The night alone: its database's distinct pages are its size.
		one, err := tr.reopen(t).Stats(ctx, []*Snapshot{s})
		if err != nil {
			t.Fatal(err)
		}
		if one.RawSize != fi.Size() || one.RestoreSize != fi.Size() {
			t.Errorf("night %d alone: restore %d, raw %d, want both the database's %d bytes (ratio %.2f)", night, one.RestoreSize, one.RawSize, fi.Size(), float64(one.RestoreSize)/float64(one.RawSize))
		}
	}
}
