package cloud_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/cloudtest"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// TestCountingConformance: a local store wrapped by Count is still a
// store (the conformance suite), and its counts add up.
func TestCountingConformance(t *testing.T) {
	var counters []*cloud.Counter
	cloudtest.Run(t, func(t *testing.T) cloud.Store {
		st, err := local.Open(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		c := &cloud.Counter{}
		counters = append(counters, c)
		return cloud.Count(st, c)
	}, cloudtest.Options{LargeSize: 8 << 20, ManyObjects: 50})
	var sum cloud.Counts
	for _, c := range counters {
		sum = sum.Add(c.Counts())
	}
	t.Logf("the conformance suite through Count: %s", fmtCounts(sum))
	for _, k := range cloud.Kinds() {
		if sum.Of(k) == 0 {
			t.Errorf("the suite made no %s request", k)
		}
	}
	if sum.BytesUp < 8<<20 || sum.BytesDown < 8<<20 {
		t.Errorf("the suite moved its large object, but %d bytes up and %d down were counted", sum.BytesUp, sum.BytesDown)
	}
}

// Count keeps exactly the optional interfaces the store has, and Unwrap
// gives the store back.
func TestCountKeepsInterfaces(t *testing.T) {
	st, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	fs, ra := cloud.FileStore(st), cloud.ReaderAtStore(st)
	cl := conns(3)
	for _, tc := range []struct {
		name       string
		s          cloud.Store
		fs, ra, cl bool
	}{
		{"plain", struct{ cloud.Store }{st}, false, false, false},
		{"file", struct {
			cloud.Store
			cloud.FileStore
		}{st, fs}, true, false, false},
		{"readerat", struct {
			cloud.Store
			cloud.ReaderAtStore
		}{st, ra}, false, true, false},
		{"conns", struct {
			cloud.Store
			cloud.ConnectionLimited
		}{st, cl}, false, false, true},
		{"file+readerat (local)", st, true, true, false},
		{"file+conns", struct {
			cloud.Store
			cloud.FileStore
			cloud.ConnectionLimited
		}{st, fs, cl}, true, false, true},
		{"readerat+conns", struct {
			cloud.Store
			cloud.ReaderAtStore
			cloud.ConnectionLimited
		}{st, ra, cl}, false, true, true},
		{"all", struct {
			cloud.Store
			cloud.FileStore
			cloud.ReaderAtStore
			cloud.ConnectionLimited
		}{st, fs, ra, cl}, true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := cloud.Count(tc.s, &cloud.Counter{})
			_, isFS := w.(cloud.FileStore)
			_, isRA := w.(cloud.ReaderAtStore)
			wcl, isCL := w.(cloud.ConnectionLimited)
			if isFS != tc.fs || isRA != tc.ra || isCL != tc.cl {
				t.Errorf("wrapped: FileStore %v, ReaderAtStore %v, ConnectionLimited %v; want %v, %v, %v", isFS, isRA, isCL, tc.fs, tc.ra, tc.cl)
			}
			if isCL && wcl.Connections() != 3 {
				t.Errorf("Connections() = %d, want 3", wcl.Connections())
			}
			if cloud.Unwrap(w) != tc.s {
				t.Errorf("Unwrap did not give the store back")
			}
		})
	}
}

type conns int

func (c conns) Connections() int { return int(c) }

// A store whose backend counts on the wire is not wrapped.
func TestCountWiredStoreIsNotWrapped(t *testing.T) {
	emu := driveemu.Start(t, driveemu.Options{Token: emuToken})
	c := &cloud.Counter{}
	st := openDrive(t, cloud.WithCounter(context.Background(), c), emu)
	if !c.Wired() {
		t.Fatal("the Drive store did not count into the context's Counter")
	}
	if w := cloud.Count(st, c); w != cloud.Store(st) {
		t.Errorf("Count wrapped a store that counts on the wire: %T", w)
	}
	if got := c.Counts().Total(); got == 0 {
		t.Errorf("opening the Drive store made no counted request")
	}
}

// reqCounts is an expected figure: requests by kind, and bytes (-1: not
// checked exactly; see the test).
type reqCounts struct {
	list, get, stat, put, del int64
}

func (w reqCounts) of(k cloud.Kind) int64 {
	return [...]int64{w.list, w.get, w.stat, w.put, w.del}[k]
}

// TestRequestCounts: the requests each store operation makes, by kind,
// exactly, against the real backends — a local directory (through
// Count), versitygw and the Drive emulator (counted on the wire) — with
// every count on the wire checked against what reached the server (a
// counting proxy in front of versitygw; the emulator's own count). The
// table is the reference for what one operation costs on each backend.
func TestRequestCounts(t *testing.T) {
	type backend struct {
		name   string
		open   func(t *testing.T) (cloud.Store, *cloud.Counter)
		served func() int64 // requests the server saw, nil for none
		exact  bool         // bytes counted are the payload's exactly
		opened reqCounts    // the requests of the opening
	}
	var backends []backend
	backends = append(backends, backend{name: "local", exact: true, open: func(t *testing.T) (cloud.Store, *cloud.Counter) {
		st, err := local.Open(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		c := &cloud.Counter{}
		return cloud.Count(st, c), c
	}})
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	proxy := newCountingProxy(t, srv.Endpoint)
	// S3: the probe of the bucket (a one-key listing) and its creation
	backends = append(backends, backend{name: "s3", served: proxy.served, opened: reqCounts{list: 1, put: 1}, open: func(t *testing.T) (cloud.Store, *cloud.Counter) {
		c := &cloud.Counter{}
		return openS3(t, cloud.WithCounter(context.Background(), c), srv, proxy.addr, true), c
	}})
	emu := driveemu.Start(t, driveemu.Options{Token: emuToken})
	// Drive: the lookup of the repository folder and its creation
	backends = append(backends, backend{name: "gdrive", opened: reqCounts{list: 1, put: 1}, served: func() int64 { return int64(emu.Calls(driveemu.OpAny)) }, open: func(t *testing.T) (cloud.Store, *cloud.Counter) {
		c := &cloud.Counter{}
		return openDrive(t, cloud.WithCounter(context.Background(), c), emu), c
	}})

	small := bytes.Repeat([]byte("0123456789"), 100) // 1000 bytes
	ctx := context.Background()
	// The operations run in this order on one fresh store per backend.
	ops := []struct {
		name     string
		do       func(st cloud.Store) error
		up, down int64 // payload bytes
		want     map[string]reqCounts
	}{
		{"put config (a top-level object)", func(st cloud.Store) error {
			return st.Put(ctx, "config", bytes.NewReader(small[:100]), 100)
		}, 100, 0, map[string]reqCounts{
			"local": {put: 1},
			"s3":    {put: 1},
			// the upload, and the listing of the name's versions (to
			// drop older ones)
			"gdrive": {put: 1, list: 1},
		}},
		{"put data/ab/x1 (new directories)", func(st cloud.Store) error {
			return st.Put(ctx, "data/ab/x1", bytes.NewReader(small), 1000)
		}, 1000, 0, map[string]reqCounts{
			"local": {put: 1},
			"s3":    {put: 1},
			// look up data and data/ab (missing), create both, upload,
			// list the name's versions
			"gdrive": {list: 3, put: 3},
		}},
		{"put data/ab/x2 (known directories)", func(st cloud.Store) error {
			return st.Put(ctx, "data/ab/x2", bytes.NewReader(small), 1000)
		}, 1000, 0, map[string]reqCounts{
			"local":  {put: 1},
			"s3":     {put: 1},
			"gdrive": {list: 1, put: 1},
		}},
		{"put data/ab/x1 again (a replacement)", func(st cloud.Store) error {
			return st.Put(ctx, "data/ab/x1", bytes.NewReader(small), 1000)
		}, 1000, 0, map[string]reqCounts{
			"local": {put: 1},
			"s3":    {put: 1},
			// and the older file of the name is deleted
			"gdrive": {list: 1, put: 1, del: 1},
		}},
		{"get data/ab/x1 whole", func(st cloud.Store) error {
			return readAll(st.Get(ctx, "data/ab/x1", 0, -1))
		}, 0, 1000, map[string]reqCounts{
			"local": {get: 1},
			"s3":    {get: 1},
			// the name lookup, then the download
			"gdrive": {list: 1, get: 1},
		}},
		{"get 10 bytes of data/ab/x2", func(st cloud.Store) error {
			return readAll(st.Get(ctx, "data/ab/x2", 10, 10))
		}, 0, 10, map[string]reqCounts{
			"local":  {get: 1},
			"s3":     {get: 1},
			"gdrive": {list: 1, get: 1},
		}},
		{"stat config", func(st cloud.Store) error {
			_, err := st.Stat(ctx, "config")
			return err
		}, 0, 0, map[string]reqCounts{
			"local":  {stat: 1},
			"s3":     {stat: 1},
			"gdrive": {list: 1}, // a name lookup
		}},
		{"stat a missing object", func(st cloud.Store) error {
			if _, err := st.Stat(ctx, "data/ab/none"); !errors.Is(err, cloud.ErrNotFound) {
				return fmt.Errorf("stat of a missing object: %v", err)
			}
			return nil
		}, 0, 0, map[string]reqCounts{
			"local":  {stat: 1},
			"s3":     {stat: 1},
			"gdrive": {list: 1},
		}},
		{"list data/", func(st cloud.Store) error {
			return countList(st, "data/", 2)
		}, 0, 0, map[string]reqCounts{
			"local": {list: 1},
			"s3":    {list: 1},
			// the folder data, then its subfolder ab
			"gdrive": {list: 2},
		}},
		{"list everything", func(st cloud.Store) error {
			return countList(st, "", 3)
		}, 0, 0, map[string]reqCounts{
			"local":  {list: 1},
			"s3":     {list: 1},
			"gdrive": {list: 3},
		}},
		{"delete data/ab/x2", func(st cloud.Store) error {
			return st.Delete(ctx, "data/ab/x2")
		}, 0, 0, map[string]reqCounts{
			"local": {del: 1},
			// a HEAD first, to report a missing object
			"s3": {stat: 1, del: 1},
			// the name's files, then each deleted
			"gdrive": {list: 1, del: 1},
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var served0 int64
			if b.served != nil {
				served0 = b.served()
			}
			st, c := b.open(t)
			opened := c.Counts()
			t.Logf("open: %s", fmtCounts(opened))
			for _, k := range cloud.Kinds() {
				if opened.Of(k) != b.opened.of(k) {
					t.Errorf("open: %d %s requests, want %d (all: %s)", opened.Of(k), k, b.opened.of(k), fmtCounts(opened))
				}
			}
			if b.served != nil {
				if got := b.served() - served0; got != opened.Total() {
					t.Errorf("open: %d requests counted, the server saw %d", opened.Total(), got)
				}
			}
			for _, op := range ops {
				before := c.Counts()
				var served int64
				if b.served != nil {
					served = b.served()
				}
				if err := op.do(st); err != nil {
					t.Fatalf("%s: %v", op.name, err)
				}
				got := c.Counts().Sub(before)
				t.Logf("%s: %s", op.name, fmtCounts(got))
				want := op.want[b.name]
				for _, k := range cloud.Kinds() {
					if got.Of(k) != want.of(k) {
						t.Errorf("%s: %d %s requests, want %d (all: %s)", op.name, got.Of(k), k, want.of(k), fmtCounts(got))
					}
				}
				if b.served != nil {
					if n := b.served() - served; n != got.Total() {
						t.Errorf("%s: %d requests counted, the server saw %d", op.name, got.Total(), n)
					}
				}
				switch {
				case b.exact && (got.BytesUp != op.up || got.BytesDown != op.down):
					t.Errorf("%s: %d bytes up, %d down; want %d, %d", op.name, got.BytesUp, got.BytesDown, op.up, op.down)
				case !b.exact && (got.BytesUp < op.up || got.BytesDown < op.down):
					// on the wire: the payload and the protocol's own
					// bodies (listings, Drive's metadata)
					t.Errorf("%s: %d bytes up, %d down; want at least %d, %d", op.name, got.BytesUp, got.BytesDown, op.up, op.down)
				}
			}
		})
	}
}

// TestRequestCountsPaged: a listing longer than a page costs a request
// per page on S3 (ListObjectsV2: 1000 keys) and Drive (files.list: 1000
// files), one call through Count on a local store.
func TestRequestCountsPaged(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1001 objects to each backend")
	}
	const n = 1001
	ctx := context.Background()
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	emu := driveemu.Start(t, driveemu.Options{Token: emuToken})
	for _, tc := range []struct {
		name  string
		open  func(t *testing.T) (cloud.Store, *cloud.Counter)
		lists int64
	}{
		{"local", func(t *testing.T) (cloud.Store, *cloud.Counter) {
			st, err := local.Open(t.TempDir(), false)
			if err != nil {
				t.Fatal(err)
			}
			c := &cloud.Counter{}
			return cloud.Count(st, c), c
		}, 1},
		{"s3", func(t *testing.T) (cloud.Store, *cloud.Counter) {
			c := &cloud.Counter{}
			return openS3(t, cloud.WithCounter(ctx, c), srv, srv.Endpoint, true), c
		}, 2},
		{"gdrive", func(t *testing.T) (cloud.Store, *cloud.Counter) {
			c := &cloud.Counter{}
			return openDrive(t, cloud.WithCounter(ctx, c), emu), c
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, c := tc.open(t)
			if err := st.Put(ctx, "index/first", strings.NewReader("x"), 1); err != nil {
				t.Fatal(err) // makes the folder first on Drive
			}
			var wg sync.WaitGroup
			var failed atomic.Value
			sem := make(chan struct{}, 16)
			for i := 1; i < n; i++ {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					if err := st.Put(ctx, fmt.Sprintf("index/%04d", i), strings.NewReader("x"), 1); err != nil {
						failed.Store(err)
					}
				}()
			}
			wg.Wait()
			if err, _ := failed.Load().(error); err != nil {
				t.Fatal(err)
			}
			before := c.Counts()
			if err := countList(st, "index/", n); err != nil {
				t.Fatal(err)
			}
			got := c.Counts().Sub(before)
			t.Logf("list of %d objects: %s", n, fmtCounts(got))
			if got.Of(cloud.KindList) != tc.lists || got.Total() != tc.lists {
				t.Errorf("list of %d objects: %s, want %d list requests and nothing else", n, fmtCounts(got), tc.lists)
			}
		})
	}
}

// TestRequestCountsRetries: a request the store sends again counts each
// time (on the wire, below the retries).
func TestRequestCountsRetries(t *testing.T) {
	emu := driveemu.Start(t, driveemu.Options{Token: emuToken})
	c := &cloud.Counter{}
	ctx := context.Background()
	st := openDrive(t, cloud.WithCounter(ctx, c), emu)
	if err := st.Put(ctx, "config", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	// one failed attempt: the store waits a second before the next
	emu.Inject(driveemu.Rule{Op: driveemu.OpDownload, Fault: driveemu.FaultServerError, Count: 1})
	before, served := c.Counts(), emu.Calls(driveemu.OpAny)
	if err := readAll(st.Get(ctx, "config", 0, -1)); err != nil {
		t.Fatal(err)
	}
	got := c.Counts().Sub(before)
	t.Logf("a get whose download failed once with a 500: %s", fmtCounts(got))
	if got.Of(cloud.KindGet) != 2 || got.Of(cloud.KindList) != 1 || got.Total() != 3 {
		t.Errorf("got %s, want 1 list and 2 get (the failed attempt and the good one)", fmtCounts(got))
	}
	if n := int64(emu.Calls(driveemu.OpAny) - served); n != got.Total() {
		t.Errorf("%d requests counted, the emulator saw %d", got.Total(), n)
	}
}

const emuToken = "emu-static-token"

func openDrive(t *testing.T, ctx context.Context, emu *driveemu.Server) *gdrive.Store {
	t.Helper()
	st, err := gdrive.New(ctx, gdrive.Config{
		Space:       gdrive.SpaceAppData,
		Path:        fmt.Sprintf("repo-%d", seq.Add(1)),
		Endpoint:    emu.URL,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: emuToken}),
		RetryBudget: 20 * time.Second,
		Create:      true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var seq atomic.Int64

func openS3(t *testing.T, ctx context.Context, srv *testservers.Server, endpoint string, create bool) *s3.Store {
	t.Helper()
	st, err := s3.New(ctx, s3.Config{
		Endpoint:     endpoint,
		Bucket:       fmt.Sprintf("wab-count-%d-%d", os.Getpid(), seq.Add(1)),
		Region:       srv.Region,
		RetryBudget:  10 * time.Second,
		IdleTimeout:  10 * time.Second,
		CreateBucket: create,
		Credentials:  credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// countingProxy is a reverse proxy that counts the HTTP requests it
// passes on: the server's view of what a client sent.
type countingProxy struct {
	addr string
	n    atomic.Int64
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.n.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	p.addr = strings.TrimPrefix(hs.URL, "http://")
	return p
}

func (p *countingProxy) served() int64 { return p.n.Load() }

func readAll(rc io.ReadCloser, err error) error {
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

func countList(st cloud.Store, prefix string, want int) error {
	n := 0
	if err := st.List(context.Background(), prefix, func(cloud.ObjectInfo) error { n++; return nil }); err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("list %q: %d objects, want %d", prefix, n, want)
	}
	return nil
}

func fmtCounts(c cloud.Counts) string {
	var parts []string
	for _, k := range cloud.Kinds() {
		parts = append(parts, fmt.Sprintf("%d %s", c.Of(k), k))
	}
	return fmt.Sprintf("%d requests (%s), %d bytes up, %d down", c.Total(), strings.Join(parts, ", "), c.BytesUp, c.BytesDown)
}
