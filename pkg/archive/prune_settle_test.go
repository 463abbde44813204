package archive

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// storeState is every object of a local repository with its size and
// modification time.
func storeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if filepath.Dir(rel) == "locks" {
			return nil
		}
		out[rel] = fi.ModTime().Format(time.RFC3339Nano) + " " + string(rune(fi.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPruneSettles is issue 26, item 3: a prune after a prune, on an
// unchanged repository, changes nothing in the store and says it did
// nothing — also when the repository holds small packs (a snapshot of a
// few small files makes packs of a few hundred bytes, whose trailer is
// more than a fifth of them).
func TestPruneSettles(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	for i, body := range []string{"a", "bb", "ccc"} {
		if err := os.WriteFile(filepath.Join(src, string(rune('x'+i))), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := tr.reopen(t).Backup(ctx, BackupOptions{Media: src}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "x"), []byte(time.Now().String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.reopen(t).Forget(ctx, Policy{Last: 1}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.reopen(t).Prune(ctx, false); err != nil {
		t.Fatal(err)
	}
	before := storeState(t, tr.dir)
	for i := range 2 {
		time.Sleep(10 * time.Millisecond) // a rewrite would show in the times
		res, err := tr.reopen(t).Prune(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if res.PacksDeleted != 0 || res.PacksRepacked != 0 || res.TreesDeleted != 0 || res.BytesFreed != 0 || !res.Nothing {
			t.Fatalf("prune %d after a prune: %+v", i+2, res)
		}
		after := storeState(t, tr.dir)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("prune %d changed %s", i+2, k)
			}
		}
		for k := range after {
			if _, ok := before[k]; !ok {
				t.Errorf("prune %d wrote %s", i+2, k)
			}
		}
	}
}
