//go:build unix

package archive

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// s3Bucket is a bucket on a versitygw gateway of the test's own.
type s3Bucket struct {
	srv    *testservers.Server
	bucket string
	made   bool
}

var s3BucketSeq atomic.Int64

func newS3Bucket(t testing.TB) *s3Bucket {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	return &s3Bucket{srv: srv, bucket: fmt.Sprintf("wab-archive-%d-%d", os.Getpid(), s3BucketSeq.Add(1))}
}

// open opens a new store on the bucket (a new process's), counted. Its
// Close is left to the repository, or to the end of the test.
func (b *s3Bucket) open(t testing.TB) *countStore {
	t.Helper()
	st, err := s3.New(context.Background(), s3.Config{
		Endpoint: b.srv.Endpoint, Bucket: b.bucket, CreateBucket: !b.made,
		RetryBudget: 20 * time.Second, IdleTimeout: 20 * time.Second,
		Credentials: credentials.NewStaticV4(b.srv.AccessKey, b.srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.made = true
	cs := newCountStore(st)
	t.Cleanup(func() { st.Close() })
	return cs
}

// TestMeasureRoundTrips measures the requests of a nightly backup and of a
// cold database restore against versitygw on a copy of a dataset made by
// testdata/gen (WABACKUP_TEST_MEASURE_DATA names it, e.g.
// bench/out/data-200-800; the test is skipped without it). It prints the
// counts; the bounds are asserted by the tests beside it on small data.
func TestMeasureRoundTrips(t *testing.T) {
	data := os.Getenv("WABACKUP_TEST_MEASURE_DATA")
	if data == "" {
		t.Skip("WABACKUP_TEST_MEASURE_DATA not set")
	}
	ctx := context.Background()
	dir := t.TempDir()
	copyDir := filepath.Join(dir, "data")
	if out, err := exec.Command("cp", "-a", data, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	gen := filepath.Join(dir, "gen")
	build := exec.Command("go", "build", "-o", gen, "./testdata/gen")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building gen: %v\n%s", err, out)
	}
	b := newS3Bucket(t)
	cacheDir := filepath.Join(dir, "cache")
	st := b.open(t)
	r, rk, err := Init(ctx, st, InitOptions{Argon2: testArgon})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	open := func(cache string) (*Repository, *countStore) {
		st := b.open(t)
		r, err := Open(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Unlock(ctx, Credentials{RecoveryKey: &rk}); err != nil {
			t.Fatal(err)
		}
		r.SetTempDir(t.TempDir())
		r.SetCacheDir(cache)
		st.reset()
		return r, st
	}
	opt := BackupOptions{DB: filepath.Join(copyDir, "msgstore.db"), Media: filepath.Join(copyDir, "Media"), Host: "h", DBCheck: "quick"}
	backup := func(label string) {
		r, st := open(cacheDir)
		defer r.Close()
		t0 := time.Now()
		if _, err := r.Backup(ctx, opt); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v in %v; cache %+v", label, st, time.Since(t0).Round(time.Millisecond), r.MetaCacheStats())
	}
	backup("first backup")
	backup("no-change backup")
	for day := 1; day <= 2; day++ {
		if out, err := exec.Command(gen, "--out", copyDir, "--seed", "1", "--day", fmt.Sprint(day)).CombinedOutput(); err != nil {
			t.Fatalf("gen --day: %v\n%s", err, out)
		}
		backup(fmt.Sprintf("nightly %d", day))
	}
	for _, label := range []string{"cold database restore", "warm database restore"} {
		r, st := open(cacheDir + "-restore")
		snap, err := r.FindSnapshot(ctx, "latest")
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, "restore-"+strings.Fields(label)[0])
		t0 := time.Now()
		if _, err := r.Restore(ctx, snap, RestoreOptions{Target: target, Include: []string{"msgstore.db"}, NoSync: true}); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v in %v; cache %+v", label, st, time.Since(t0).Round(time.Millisecond), r.MetaCacheStats())
		r.Close()
	}
}

// TestS3RequestCounts: the requests of nightly backups and of database
// restores against a real S3 server (issue 24). With the metadata cache
// warm, a backup reads nothing of its parent's description from the
// store; a database restore on a new machine reads its page map in a few
// planned ranges and its page groups in one range per pack.
func TestS3RequestCounts(t *testing.T) {
	b := newS3Bucket(t)
	e := newCacheEnvOn(t, func() *countStore { return b.open(t) })
	cache := filepath.Join(t.TempDir(), "cache")
	e.backup(cache)
	for day := 1; day <= 2; day++ {
		e.dayOfUse(day)
		_, st, ms := e.backup(cache)
		t.Logf("nightly %d: %v; cache %+v", day, st, ms)
		// Issue 24's target: 30 + the new packs.
		if n := st.get("get data"); n != 0 || ms.StoreBlobs != 0 || st.total() > 30+st.get("put") {
			t.Errorf("nightly %d with a warm cache: %v, %d metadata blobs from the store", day, st, ms.StoreBlobs)
		}
	}
	_, st, ms := e.backup(cache)
	t.Logf("no change: %v; cache %+v", st, ms)
	if n := st.get("get data"); n != 0 || ms.StoreBlobs != 0 || st.total() > 15 {
		t.Errorf("no-change nightly: %v, %d metadata blobs from the store; want at most 15 requests", st, ms.StoreBlobs)
	}

	// A database restore on a new machine, then again with its cache.
	restoreCache := filepath.Join(t.TempDir(), "new machine")
	snap, err := func() (*Snapshot, error) {
		r, _ := e.open(restoreCache)
		defer r.Close()
		return r.FindSnapshot(context.Background(), "latest")
	}()
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(restoreCache)
	for _, run := range []struct {
		name string
		max  int
	}{{"cold", 20}, {"warm", 12}} {
		st := b.open(t)
		r, err := Open(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Unlock(context.Background(), Credentials{RecoveryKey: &e.rk}); err != nil {
			t.Fatal(err)
		}
		r.SetTempDir(t.TempDir())
		r.SetCacheDir(restoreCache)
		out := t.TempDir()
		if _, err := r.Restore(context.Background(), snap, RestoreOptions{Target: out, Include: []string{"msgstore.db"}, NoSync: true}); err != nil {
			t.Fatal(err)
		}
		ms := r.MetaCacheStats()
		r.Close()
		t.Logf("%s database restore: %v; cache %+v", run.name, st, ms)
		if st.total() > run.max {
			t.Errorf("%s database restore: %v; want at most %d requests (from opening the repository on)", run.name, st, run.max)
		}
		if got, want := dbRows(t, filepath.Join(out, "msgstore.db")), dbRows(t, e.db()); got != want {
			t.Errorf("%s restore: %s, source %s", run.name, got, want)
		}
	}
}
