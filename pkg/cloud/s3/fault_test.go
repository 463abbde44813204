package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// faultSetup is a bucket on a fresh gateway, a store that reaches it
// through a fault proxy, and a store that reaches it directly.
type faultSetup struct {
	srv    *testservers.Server
	proxy  *testservers.Proxy
	st     *s3.Store // through the proxy
	direct *s3.Store
	bucket string
}

func newFaultSetup(t *testing.T, tweak func(*s3.Config)) *faultSetup {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	f := &faultSetup{srv: srv, bucket: freshBucket()}
	f.proxy = testservers.FaultProxy(t, srv.Endpoint)
	cfg := config(srv, "", f.bucket)
	cfg.CreateBucket = true
	f.direct = open(t, cfg)
	cfg = config(srv, f.proxy.Addr(), f.bucket)
	if tweak != nil {
		tweak(&cfg)
	}
	f.st = open(t, cfg)
	return f
}

func randData(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func readAll(t *testing.T, st cloud.Store, name string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noUploads fails the test if multipart uploads are left in the bucket.
func noUploads(t *testing.T, f *faultSetup) {
	t.Helper()
	res, err := rawClient(t, f.srv).ListMultipartUploads(context.Background(), f.bucket, "", "", "", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Uploads) != 0 {
		t.Fatalf("%d incomplete multipart uploads left", len(res.Uploads))
	}
}

const size40 = 40 << 20 // three parts of 16 MiB (16+16+8)

func TestIntermittentFaults(t *testing.T) {
	data := randData(1, size40)
	ctx := context.Background()

	t.Run("SlowDown", func(t *testing.T) {
		f := newFaultSetup(t, nil)
		f.proxy.SlowDown(4)
		if err := f.st.Put(ctx, "data/aa/slow", bytes.NewReader(data), size40); err != nil {
			t.Fatal(err)
		}
		if got := f.proxy.Stats().Failed; got != 4 {
			t.Errorf("proxy answered %d requests with SlowDown, want 4", got)
		}
		if !bytes.Equal(readAll(t, f.direct, "data/aa/slow"), data) {
			t.Fatal("object differs")
		}
		noUploads(t, f)
		t.Log(f.proxy)
	})
	t.Run("Resets", func(t *testing.T) {
		f := newFaultSetup(t, nil)
		// Every connection dies after 5 MiB, three times: each part
		// upload in turn is cut off once and retried.
		f.proxy.ResetAfterBytes(5<<20, 3)
		if err := f.st.Put(ctx, "data/aa/reset", bytes.NewReader(data), size40); err != nil {
			t.Fatal(err)
		}
		if got := f.proxy.Stats().Resets; got != 3 {
			t.Errorf("%d resets, want 3", got)
		}
		if !bytes.Equal(readAll(t, f.direct, "data/aa/reset"), data) {
			t.Fatal("object differs")
		}
		noUploads(t, f)
		// Reading through the same faults: the reader resumes where the
		// connection broke.
		f.proxy.ResetAfterBytes(7<<20, 3)
		if !bytes.Equal(readAll(t, f.st, "data/aa/reset"), data) {
			t.Fatal("object read through resets differs")
		}
		if got := f.proxy.Stats().Resets; got != 6 {
			t.Errorf("%d resets, want 6", got)
		}
		t.Log(f.proxy)
	})
	t.Run("Stall", func(t *testing.T) {
		f := newFaultSetup(t, func(c *s3.Config) { c.IdleTimeout = 500 * time.Millisecond })
		r := &hookReader{r: bytes.NewReader(data), at: 20 << 20, hook: func() { f.proxy.Stall(1500 * time.Millisecond) }}
		start := time.Now()
		if err := f.st.Put(ctx, "data/aa/stall", r, size40); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < time.Second {
			t.Errorf("Put took only %v: did the stall happen?", took)
		}
		if !bytes.Equal(readAll(t, f.direct, "data/aa/stall"), data) {
			t.Fatal("object differs")
		}
		noUploads(t, f)
	})
	t.Run("Mixed", func(t *testing.T) {
		f := newFaultSetup(t, nil)
		f.proxy.SlowDown(2)
		f.proxy.ResetAfterBytes(3<<20, 2)
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := randData(uint64(10+i), 9<<20+i)
				name := "data/bb/" + string(rune('a'+i))
				if err := f.st.Put(ctx, name, bytes.NewReader(d), int64(len(d))); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(readAll(t, f.st, name), d) {
					t.Errorf("%s differs", name)
				}
			}()
		}
		wg.Wait()
		t.Log(f.proxy)
	})
}

// hookReader calls hook once, when the reader has delivered at bytes.
type hookReader struct {
	r    io.Reader
	n    int64
	at   int64
	hook func()
}

func (h *hookReader) Read(p []byte) (int, error) {
	if h.hook != nil && h.n+int64(len(p)) > h.at {
		p = p[:max(h.at-h.n, 1)]
	}
	n, err := h.r.Read(p)
	h.n += int64(n)
	if h.hook != nil && h.n >= h.at {
		h.hook()
		h.hook = nil
	}
	return n, err
}

// TestLostAnswers: the server acts on a request but the answer never
// arrives. Retrying a PUT is harmless; retrying CompleteMultipartUpload
// meets NoSuchUpload, and Put recognises its own object by its ETag.
func TestLostAnswers(t *testing.T) {
	ctx := context.Background()
	f := newFaultSetup(t, nil)
	small := randData(5, 1000)
	f.proxy.DropResponse("PUT /"+f.bucket+"/keys/dropped ", 1)
	if err := f.st.Put(ctx, "keys/dropped", bytes.NewReader(small), int64(len(small))); err != nil {
		t.Fatal(err)
	}
	big := randData(6, size40)
	f.proxy.DropResponse("POST /"+f.bucket+"/data/ff/lost?uploadId=", 1)
	if err := f.st.Put(ctx, "data/ff/lost", bytes.NewReader(big), size40); err != nil {
		t.Fatal(err)
	}
	// versitygw accepts the repeated completion; servers that answer
	// NoSuchUpload instead (MinIO) are played by the proxy here.
	f.proxy.DropResponse("POST /"+f.bucket+"/data/ff/lost2?uploadId=", 1)
	f.proxy.FailRequests("POST /"+f.bucket+"/data/ff/lost2?uploadId=", 1, 404, "NoSuchUpload")
	if err := f.st.Put(ctx, "data/ff/lost2", bytes.NewReader(big), size40); err != nil {
		t.Fatal(err)
	}
	if s := f.proxy.Stats(); s.Dropped != 3 || s.Failed != 1 {
		t.Fatalf("%d answers dropped, %d failed; want 3, 1", s.Dropped, s.Failed)
	}
	if !bytes.Equal(readAll(t, f.direct, "keys/dropped"), small) || !bytes.Equal(readAll(t, f.direct, "data/ff/lost"), big) ||
		!bytes.Equal(readAll(t, f.direct, "data/ff/lost2"), big) {
		t.Fatal("objects differ")
	}
	noUploads(t, f)
	t.Log(f.proxy)
}

func TestServerGone(t *testing.T) {
	ctx := context.Background()
	budget := 3 * time.Second
	f := newFaultSetup(t, func(c *s3.Config) { c.RetryBudget = budget })
	data := randData(2, size40)

	// Small object: the server is gone before the Put starts.
	f.proxy.Down()
	start := time.Now()
	err := f.st.Put(ctx, "keys/k", bytes.NewReader(data[:1000]), 1000)
	took := time.Since(start)
	if !errors.Is(err, s3.ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach S3 server "+f.proxy.Addr()) {
		t.Fatalf("Put to a dead server: %v", err)
	}
	if took > budget+2*time.Second {
		t.Errorf("Put failed after %v with a %v budget", took, budget)
	}
	t.Logf("%v (after %v)", err, took.Round(time.Millisecond))
	if _, err := f.direct.Stat(ctx, "keys/k"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("failed Put left an object: %v", err)
	}

	// Multipart: the server disappears after the first part.
	f.proxy.Up()
	r := &hookReader{r: bytes.NewReader(data), at: 17 << 20, hook: f.proxy.Down}
	start = time.Now()
	err = f.st.Put(ctx, "data/cc/big", r, size40)
	took = time.Since(start)
	if !errors.Is(err, s3.ErrUnreachable) || !strings.Contains(err.Error(), "wabackup cleanup") {
		t.Fatalf("multipart Put to a vanishing server: %v", err)
	}
	// budget for the part, a quarter of it for the abort, plus slack
	if took > budget+budget/4+3*time.Second {
		t.Errorf("Put failed after %v with a %v budget", took, budget)
	}
	t.Logf("%v (after %v)", err, took.Round(time.Millisecond))
	if _, err := f.direct.Stat(ctx, "data/cc/big"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("failed Put left an object: %v", err)
	}
	// The abandoned upload is what CleanupIncomplete is for.
	f.proxy.Up()
	n, err := f.st.CleanupIncomplete(ctx, 0)
	if err != nil || n != 1 {
		t.Fatalf("CleanupIncomplete = %d, %v; want 1", n, err)
	}
	noUploads(t, f)
}

// TestRetryBudget: a server that only ever says SlowDown is given up on
// after about RetryBudget, with the reason in the message.
func TestRetryBudget(t *testing.T) {
	budget := 2 * time.Second
	f := newFaultSetup(t, func(c *s3.Config) { c.RetryBudget = budget })
	f.proxy.SlowDown(1 << 30)
	start := time.Now()
	err := f.st.Put(context.Background(), "keys/k", strings.NewReader("abc"), 3)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "SlowDown") || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("Put against constant SlowDown: %v", err)
	}
	if took > budget+time.Second || took < budget/4 {
		t.Errorf("gave up after %v with a %v budget", took, budget)
	}
	t.Logf("%v (after %v, %d requests)", err, took.Round(time.Millisecond), f.proxy.Stats().Failed)
}

// TestCancelAbortsUpload: cancelling a multipart Put aborts the upload
// although the context it was given is dead.
func TestCancelAbortsUpload(t *testing.T) {
	f := newFaultSetup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	r := &hookReader{r: bytes.NewReader(randData(3, size40)), at: 20 << 20, hook: cancel}
	err := f.st.Put(ctx, "data/dd/cancelled", r, size40)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: %v", err)
	}
	if _, err := f.direct.Stat(context.Background(), "data/dd/cancelled"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("cancelled Put left an object: %v", err)
	}
	noUploads(t, f)

	// Cancelled while a part is on the wire (the network stalls, the
	// caller gives up): the request is abandoned, the upload aborted once
	// the network is back.
	ctx, cancel = context.WithCancel(context.Background())
	r = &hookReader{r: bytes.NewReader(randData(3, size40)), at: 16<<20 + 1, hook: func() {
		f.proxy.Stall(time.Second)
		time.AfterFunc(300*time.Millisecond, cancel)
	}}
	start := time.Now()
	err = f.st.Put(ctx, "data/dd/cancelled2", r, size40)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: %v", err)
	}
	t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))
	if _, err := f.direct.Stat(context.Background(), "data/dd/cancelled2"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("cancelled Put left an object: %v", err)
	}
	noUploads(t, f)
}

func TestCleanupIncomplete(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	ctx := context.Background()
	bucket := freshBucket()
	cfg := config(srv, "", bucket)
	cfg.CreateBucket = true
	cfg.Prefix = "repo"
	st := open(t, cfg)
	core := rawClient(t, srv)

	start := func(key string) {
		t.Helper()
		id, err := core.NewMultipartUpload(ctx, bucket, key, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		part := randData(4, 6<<20)
		if _, err := core.PutObjectPart(ctx, bucket, key, id, 1, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start("repo/data/ee/abandoned")
	start("repo/data/ee/abandoned2")
	start("other/data/x") // another repository's: not ours to touch

	if n, err := st.CleanupIncomplete(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("CleanupIncomplete(1h) = %d, %v; want 0 (the uploads are fresh)", n, err)
	}
	if n, err := st.CleanupIncomplete(ctx, 0); err != nil || n != 2 {
		t.Fatalf("CleanupIncomplete(0) = %d, %v; want 2", n, err)
	}
	res, err := core.ListMultipartUploads(ctx, bucket, "", "", "", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Uploads) != 1 || res.Uploads[0].Key != "other/data/x" {
		t.Fatalf("uploads left: %+v", res.Uploads)
	}
	if _, err := st.Stat(ctx, "data/ee/abandoned"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("aborted upload became an object: %v", err)
	}
}

// TestServerVerifiesContentMD5 shows why Put sends Content-MD5: the
// server refuses a body that does not match it.
func TestServerVerifiesContentMD5(t *testing.T) {
	f := newFaultSetup(t, nil)
	core := rawClient(t, f.srv)
	wrong := "AAAAAAAAAAAAAAAAAAAAAA==" // MD5 of something else
	_, err := core.PutObject(context.Background(), f.bucket, "x", strings.NewReader("hello"), 5, wrong, "", minio.PutObjectOptions{})
	if code := minio.ToErrorResponse(err).Code; code != "BadDigest" {
		t.Fatalf("PUT with a wrong Content-MD5: %v (code %q), want BadDigest", err, code)
	}
}
