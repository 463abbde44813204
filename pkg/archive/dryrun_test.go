package archive

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

// storeFiles lists a local repository's objects (locks aside).
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(filepath.Dir(p)) != "locks" {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// A dry-run backup stores nothing, and says what the backup would add:
// the same new chunks and bytes the real one then adds (issue 13, point
// 4).
func TestBackupDryRun(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	db := filepath.Join(src, "msgstore.db")
	makeDB(t, db, 2000)
	media := filepath.Join(src, "Media")
	randomTree(t, media, 3)
	if _, err := tr.Backup(ctx, BackupOptions{DB: db, Media: media}); err != nil {
		t.Fatal(err)
	}
	makeDB(t, db, 500)
	randomTree(t, filepath.Join(media, "new"), 4)
	before := storeFiles(t, tr.dir)
	plan, err := tr.Backup(ctx, BackupOptions{DB: db, Media: media, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if after := storeFiles(t, tr.dir); len(after) != len(before) {
		t.Fatalf("a dry run changed the store: %d objects before, %d after", len(before), len(after))
	}
	if plan.ID != (ID{}) {
		t.Errorf("a dry run has snapshot id %s", plan.ID)
	}
	snaps, err := tr.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("%d snapshots after a dry run (%v), want 1", len(snaps), err)
	}
	if plan.Stats.NewChunks == 0 || plan.Stats.AddedBytes == 0 {
		t.Fatalf("dry run says nothing would be added: %+v", plan.Stats)
	}
	real, err := tr.Backup(ctx, BackupOptions{DB: db, Media: media})
	if err != nil {
		t.Fatal(err)
	}
	p, r := plan.Stats, real.Stats
	if p.Files != r.Files || p.Bytes != r.Bytes || p.Unchanged != r.Unchanged || p.ReadBytes != r.ReadBytes || p.NewChunks != r.NewChunks || p.NewBytes != r.NewBytes {
		t.Errorf("dry run %+v, real backup %+v", p, r)
	}
	// The real backup adds the packs the dry run counted, plus its index
	// and snapshot header.
	if p.AddedBytes > r.AddedBytes || r.AddedBytes-p.AddedBytes > 64<<10 {
		t.Errorf("dry run would add %d bytes, the backup added %d", p.AddedBytes, r.AddedBytes)
	}
}

// Backup progress moves within a large file, chunk by chunk, not only
// when the file is done.
func TestBackupProgressWithinAFile(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	media := t.TempDir()
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i * 2654435761 >> 13)
	}
	if err := os.WriteFile(filepath.Join(media, "VID-1.mp4"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	var within []int64
	_, err := tr.Backup(ctx, BackupOptions{Media: media, Progress: func(p BackupProgress) {
		if p.Files == 0 && p.Current == filepath.Base(media)+"/VID-1.mp4" {
			within = append(within, p.Bytes)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(within) < 3 || within[len(within)-1] <= within[0] || within[len(within)-1] > int64(len(big)) {
		t.Fatalf("progress inside the 24 MiB file: %v", within)
	}
}

// Restore progress too moves within a large file.
func TestRestoreProgressWithinAFile(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	media := t.TempDir()
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i * 2654435761 >> 13)
	}
	os.WriteFile(filepath.Join(media, "VID-1.mp4"), big, 0o644)
	s, err := tr.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	var within []int64
	var mu sync.Mutex
	if _, err := tr.Restore(ctx, s, RestoreOptions{Target: t.TempDir(), NoSync: true, Progress: func(p RestoreProgress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Files == 0 {
			within = append(within, p.Bytes)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	if len(within) < 3 || within[len(within)-1] <= within[0] || within[len(within)-1] > int64(len(big)) {
		t.Fatalf("progress inside the 24 MiB file: %v", within)
	}
}
