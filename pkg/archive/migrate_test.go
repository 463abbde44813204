package archive

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

// openV1Fixture copies testdata/v1repo (made by the last version-1
// release) and opens it with its key.
func openV1Fixture(t *testing.T) (*Repository, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if err := os.CopyFS(dir, os.DirFS("../../testdata/v1repo/repo")); err != nil {
		t.Fatal(err)
	}
	return openV1At(t, dir), dir
}

func openV1At(t *testing.T, dir string) *Repository {
	t.Helper()
	keyText, err := os.ReadFile("../../testdata/v1repo/key.txt")
	if err != nil {
		t.Fatal(err)
	}
	k, err := keys.ParseRecoveryKey(string(keyText))
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Unlock(context.Background(), Credentials{RecoveryKey: &k}); err != nil {
		t.Fatal(err)
	}
	r.SetTempDir(t.TempDir())
	t.Cleanup(func() { r.Close() })
	return r
}

// restoreMatchesSample restores snap and compares it with testdata/sample.
func restoreMatchesSample(t *testing.T, r *Repository, snap *Snapshot) {
	t.Helper()
	target := t.TempDir()
	if _, err := r.Restore(context.Background(), snap, RestoreOptions{Target: target}); err != nil {
		t.Fatalf("restore of snapshot %s (v%d): %v", snap.ID.Short(), snap.Version, err)
	}
	// The sample's times are those of the checkout: compare contents
	// and modes.
	compareTrees(t, withoutTimes(treeDigest(t, "../../testdata/sample/Media")), withoutTimes(treeDigest(t, filepath.Join(target, "Media"))))
	want, _ := os.ReadFile("../../testdata/sample/msgstore.db")
	got, err := os.ReadFile(filepath.Join(target, "msgstore.db"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("restored msgstore.db of snapshot %s differs from the sample (%v)", snap.ID.Short(), err)
	}
}

func checkReadData(t *testing.T, r *Repository) *CheckResult {
	t.Helper()
	res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
	if err != nil {
		t.Fatalf("check --read-data: %v %q", err, res.Errors)
	}
	return res
}

// A version-1 repository opens, lists, checks and restores byte for byte;
// a backup asks for the upgrade; migrate rewrites the config only; after
// it the old snapshots still restore, and the next backup reuses the
// stored media chunks (only the database is stored anew, as pages).
func TestVersion1Fixture(t *testing.T) {
	ctx := context.Background()
	r, dir := openV1Fixture(t)
	if v := r.Config().Version; v != 1 {
		t.Fatalf("fixture has format version %d", v)
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("snapshots: %d, %v", len(snaps), err)
	}
	for _, s := range snaps {
		if s.Version != 1 {
			t.Fatalf("snapshot %s has version %d", s.ID.Short(), s.Version)
		}
		restoreMatchesSample(t, r, s)
	}
	checkReadData(t, r)

	if _, err := r.Backup(ctx, BackupOptions{DB: "../../testdata/sample/msgstore.db", Media: "../../testdata/sample/Media"}); !errors.Is(err, ErrNeedsMigration) {
		t.Fatalf("backup into a version-1 repository: %v, want ErrNeedsMigration", err)
	}

	before := listObjects(t, dir)
	changed, err := r.Migrate(ctx)
	if err != nil || !changed {
		t.Fatalf("migrate: %v, %v", changed, err)
	}
	after := listObjects(t, dir)
	for name, data := range before {
		if name != "config" && !bytes.Equal(after[name], data) {
			t.Errorf("migrate changed %s", name)
		}
	}
	// The config, and one new object: the keyring (format 3).
	if len(after) != len(before)+1 || bytes.Equal(after["config"], before["config"]) || after[keyringName(1)] == nil {
		t.Fatalf("migrate wrote %d objects (was %d); config changed: %v", len(after), len(before), !bytes.Equal(after["config"], before["config"]))
	}
	if again, err := r.Migrate(ctx); err != nil || again {
		t.Fatalf("second migrate: %v, %v", again, err)
	}

	// A new process sees version 2 and the old snapshots.
	r2 := openV1At(t, dir)
	if v := r2.Config().Version; v != FormatVersion {
		t.Fatalf("after migrate: format version %d", v)
	}
	checkReadData(t, r2)
	snaps, _ = r2.Snapshots(ctx)
	for _, s := range snaps {
		restoreMatchesSample(t, r2, s)
	}
	// (The fixture's source paths are those of the machine that made it,
	// so this backup has no parent: it reads everything, and stores only
	// the database, now as pages, and the new tree. The media chunks are
	// the stored ones.)
	s3, err := r2.Backup(ctx, BackupOptions{DB: "../../testdata/sample/msgstore.db", Media: "../../testdata/sample/Media"})
	if err != nil {
		t.Fatal(err)
	}
	if s3.Version != 2 {
		t.Fatalf("first backup after migrate: version %d", s3.Version)
	}
	db, _ := os.Stat("../../testdata/sample/msgstore.db")
	if s3.Stats.NewBytes > db.Size()+16<<10 {
		t.Errorf("first backup after migrate stored %d new bytes; want only the database (%d) and the tree: the media chunks are stored already", s3.Stats.NewBytes, db.Size())
	}
	restoreMatchesSample(t, r2, s3)
	checkReadData(t, openV1At(t, dir))
}

// listObjects reads every object of a local repository.
func listObjects(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if filepath.Base(filepath.Dir(p)) == ".tmp" || filepath.Dir(rel) == "locks" {
			return nil
		}
		data, err := os.ReadFile(p)
		out[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// withoutTimes drops the mtimes from a treeDigest.
func withoutTimes(d map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range d {
		if i := strings.Index(v, " mtime="); i >= 0 {
			v = v[:i]
		}
		out[k] = v
	}
	return out
}
