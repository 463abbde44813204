package archive

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The persistent index cache must only know what index objects say: a
// backup interrupted after some packs were stored, followed by a backup
// that shares the cache, must still index those packs (regression: the
// cache learned them at upload time, so they were never adopted).
func TestInterruptedBackupWithPersistentCache(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	cache := t.TempDir()
	src := filepath.Join(t.TempDir(), "Media")
	randomTree(t, src, 11)
	big := make([]byte, 40<<20)
	for i := range big {
		big[i] = byte(i*2654435761>>13) ^ byte(i>>9)
	}
	os.WriteFile(filepath.Join(src, "VID-large.mp4"), big, 0o644)

	r1 := tr.reopen(t)
	r1.SetCacheDir(cache)
	cctx, cancel := context.WithCancel(ctx)
	uploaded := make(chan struct{}, 1)
	go func() {
		// Cancel once the first pack is in the store.
		for {
			objs, _ := r1.listNames(ctx, "data/")
			if len(objs) > 0 {
				cancel()
				uploaded <- struct{}{}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	_, err := r1.Backup(cctx, BackupOptions{Media: src})
	<-uploaded
	if err == nil {
		t.Skip("backup finished before it could be interrupted")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted backup: %v", err)
	}
	r1.Close()

	r2 := tr.reopen(t)
	r2.SetCacheDir(cache)
	if _, err := r2.Backup(ctx, BackupOptions{Media: src}); err != nil {
		t.Fatal(err)
	}
	r2.Close()
	r3 := tr.reopen(t)
	if res, err := r3.Check(ctx, CheckOptions{}); err != nil {
		t.Fatalf("check: %v %q", err, res.Errors)
	}
}
