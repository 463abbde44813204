package gdrive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	drive "google.golang.org/api/drive/v3"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/cloudtest"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
)

const emuToken = "emu-static-token"

var repoSeq atomic.Int64

func startEmu(t *testing.T) *driveemu.Server {
	return driveemu.Start(t, driveemu.Options{Token: emuToken})
}

// testConfig points a store at emu with short waits and small chunks, so
// that uploads of a few hundred KiB already take the resumable path.
func testConfig(emu *driveemu.Server) Config {
	return Config{
		Space:       SpaceAppData,
		Path:        fmt.Sprintf("repo-%d", repoSeq.Add(1)),
		Endpoint:    emu.URL,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: emuToken}),
		ChunkSize:   256 << 10,
		RetryBudget: 20 * time.Second,
		Create:      true,
		minBackoff:  time.Millisecond,
	}
}

func openStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformanceAppData(t *testing.T) {
	emu := startEmu(t)
	cloudtest.Run(t, func(t *testing.T) cloud.Store { return openStore(t, testConfig(emu)) },
		cloudtest.Options{LargeSize: 20 << 20, ManyObjects: 1100})
}

func TestConformanceFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	emu := startEmu(t)
	cloudtest.Run(t, func(t *testing.T) cloud.Store {
		cfg := testConfig(emu)
		cfg.Space = SpaceFolder
		cfg.Path = "Backups/wabackup-" + cfg.Path
		cfg.ChunkSize = 0 // the default 8 MiB: most objects go up as one multipart request
		return openStore(t, cfg)
	}, cloudtest.Options{LargeSize: 20 << 20, ManyObjects: 1100})
}

func put(t *testing.T, s *Store, name string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
}

func get(t *testing.T, s *Store, name string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), name, 0, -1)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func randData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestOpenMissing(t *testing.T) {
	emu := startEmu(t)
	cfg := testConfig(emu)
	cfg.Create = false
	if _, err := New(context.Background(), cfg); !errors.Is(err, cloud.ErrNoRepository) {
		t.Fatalf("open missing: %v", err)
	}
	cfg.Create = true
	s := openStore(t, cfg)
	if s.Location() != "gdrive://appdata/"+cfg.Path {
		t.Fatalf("location %q", s.Location())
	}
	cfg.Create = false
	openStore(t, cfg) // now it exists
}

func TestRateLimitBurst(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	data := randData(700 << 10) // three chunks
	emu.FailNext(driveemu.OpAny, driveemu.FaultRateLimit, 3)
	emu.FailNext(driveemu.OpChunk, driveemu.FaultRateLimit, 2) // the client itself never retries 403s on chunks
	emu.FailNext(driveemu.OpList, driveemu.FaultProjectRateLimit, 2)
	put(t, s, "data/ab/x", data)
	emu.FailNext(driveemu.OpAny, driveemu.FaultTooManyRequests, 3)
	if got := cloudtest.Names(t, s, "data/"); len(got) != 1 {
		t.Fatalf("list: %v", got)
	}
	if !bytes.Equal(get(t, s, "data/ab/x"), data) {
		t.Fatal("content differs")
	}
	if n := emu.Fired(); n != 10 {
		t.Fatalf("%d faults fired, want 10", n)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	emu.Inject(driveemu.Rule{Op: driveemu.OpList, Fault: driveemu.FaultTooManyRequests, Count: 1, RetryAfter: time.Second})
	t0 := time.Now()
	cloudtest.Names(t, s, "")
	if d := time.Since(t0); d < time.Second {
		t.Fatalf("retried after %v despite Retry-After: 1", d)
	}
}

func TestServerErrorBurst(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	data := randData(1<<20 + 77)
	emu.FailNext(driveemu.OpAny, driveemu.FaultUnavailable, 4)
	emu.Inject(driveemu.Rule{Op: driveemu.OpChunk, Fault: driveemu.FaultServerError, After: 1, Count: 2})
	emu.FailNext(driveemu.OpDownload, driveemu.FaultBadGateway, 2)
	put(t, s, "index/i1", data)
	if !bytes.Equal(get(t, s, "index/i1"), data) {
		t.Fatal("content differs")
	}
	emu.FailNext(driveemu.OpDelete, driveemu.FaultServerError, 2)
	if err := s.Delete(context.Background(), "index/i1"); err != nil {
		t.Fatal(err)
	}
	if emu.Fired() != 10 {
		t.Fatalf("%d faults fired, want 10", emu.Fired())
	}
}

func TestRetryBudgetEnds(t *testing.T) {
	emu := startEmu(t)
	cfg := testConfig(emu)
	cfg.RetryBudget = 300 * time.Millisecond
	s := openStore(t, cfg)
	emu.Inject(driveemu.Rule{Op: driveemu.OpList, Fault: driveemu.FaultUnavailable}) // forever
	t0 := time.Now()
	_, err := s.Stat(context.Background(), "config")
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) || gerr.Code != 503 {
		t.Fatalf("stat during an outage: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("gave up after %v with a 300ms budget", d)
	}
}

func TestDroppedConnectionMidChunk(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	data := randData(2<<20 + 12345)
	emu.Inject(driveemu.Rule{Op: driveemu.OpChunk, Fault: driveemu.FaultDrop, After: 3, Count: 1},
		driveemu.Rule{Op: driveemu.OpChunk, Fault: driveemu.FaultDrop, After: 6, Count: 1})
	put(t, s, "data/dd/big", data)
	if n := emu.Dropped(driveemu.OpChunk); n != 2 {
		t.Fatalf("%d chunk connections dropped, want 2", n)
	}
	if !bytes.Equal(get(t, s, "data/dd/big"), data) {
		t.Fatal("object differs after a resumed upload")
	}
	// a dropped single-request upload is sent again
	small := randData(1000)
	emu.FailNext(driveemu.OpUpload, driveemu.FaultDrop, 1)
	put(t, s, "keys/k", small)
	if !bytes.Equal(get(t, s, "keys/k"), small) || len(cloudtest.Names(t, s, "keys/")) != 1 {
		t.Fatal("dropped multipart upload")
	}
	// a download cut half way is resumed where it broke
	emu.FailNext(driveemu.OpDownload, driveemu.FaultDrop, 2)
	if !bytes.Equal(get(t, s, "data/dd/big"), data) {
		t.Fatal("resumed download differs")
	}
	rc, err := s.Get(context.Background(), "data/dd/big", 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	emu.FailNext(driveemu.OpDownload, driveemu.FaultDrop, 1)
	rc.Close()
	rc, err = s.Get(context.Background(), "data/dd/big", 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(b, data[1000:1000+1<<20]) {
		t.Fatalf("resumed range read: %d bytes, %v", len(b), err)
	}
	if emu.Dropped(driveemu.OpDownload) != 3 {
		t.Fatalf("%d downloads dropped, want 3", emu.Dropped(driveemu.OpDownload))
	}
}

func TestUploadCap(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	emu.SetUploadCap(600 << 10)
	put(t, s, "data/aa/1", randData(300<<10))
	put(t, s, "data/aa/2", randData(300<<10))
	callsBefore := emu.Calls(driveemu.OpUpload)
	t0 := time.Now()
	err := s.Put(context.Background(), "data/aa/3", bytes.NewReader(randData(300<<10)), 300<<10)
	if !errors.Is(err, ErrUploadCap) {
		t.Fatalf("put over the cap: %v", err)
	}
	if d := time.Since(t0); d > time.Second || emu.Calls(driveemu.OpUpload) != callsBefore+1 {
		t.Fatalf("the cap was retried: %v, %d upload calls", d, emu.Calls(driveemu.OpUpload)-callsBefore)
	}
	if got := cloudtest.Names(t, s, ""); strings.Join(got, ",") != "data/aa/1,data/aa/2" {
		t.Fatalf("visible after the cap: %v", got)
	}
	// the cap can also strike mid-upload: nothing partial shows
	emu.SetUploadCap(0)
	emu.Inject(driveemu.Rule{Op: driveemu.OpChunk, Fault: driveemu.FaultUploadCap, After: 1, Count: 1})
	if err := s.Put(context.Background(), "data/aa/4", bytes.NewReader(randData(1<<20)), 1<<20); !errors.Is(err, ErrUploadCap) {
		t.Fatalf("cap mid-upload: %v", err)
	}
	if _, err := s.Stat(context.Background(), "data/aa/4"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("partial object visible: %v", err)
	}
	// an ordinary rate limit on the same call is retried, not mistaken for the cap
	emu.FailNext(driveemu.OpUpload, driveemu.FaultRateLimit, 2)
	put(t, s, "data/aa/5", []byte("five"))
}

func TestStorageQuota(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	put(t, s, "config", []byte("c"))
	emu.SetStorageQuota(1 << 20)
	err := s.Put(context.Background(), "data/q/big", bytes.NewReader(randData(2<<20)), 2<<20)
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("put over quota: %v", err)
	}
	if got := cloudtest.Names(t, s, ""); len(got) != 1 {
		t.Fatalf("visible after quota error: %v", got)
	}
	emu.SetStorageQuota(0)
	emu.FailNext(driveemu.OpUpload, driveemu.FaultStorageQuota, 1)
	if err := s.Put(context.Background(), "k", strings.NewReader("x"), 1); !errors.Is(err, ErrQuota) {
		t.Fatalf("injected quota error: %v", err)
	}
}

// rawClient talks to the emulator directly, to build states the store
// itself never creates.
func rawClient(t *testing.T, emu *driveemu.Server) *drive.Service {
	hc := &http.Client{Transport: &oauth2.Transport{Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: emuToken})}}
	svc, err := drive.NewService(context.Background(), option.WithHTTPClient(hc), option.WithEndpoint(emu.DriveEndpoint()))
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestDuplicateNames(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	svc := rawClient(t, emu)
	put(t, s, "locks/a", []byte("mine"))
	dirs, err := s.dir(context.Background(), "locks", false)
	if err != nil || len(dirs) != 1 {
		t.Fatalf("dir: %v %v", dirs, err)
	}
	// another client adds two files of the same name, the newest last
	for _, c := range []string{"other-1", "other-2"} {
		if _, err := svc.Files.Create(&drive.File{Name: "a", Parents: dirs}).Media(strings.NewReader(c)).Do(); err != nil {
			t.Fatal(err)
		}
	}
	if got := string(get(t, s, "locks/a")); got != "other-2" {
		t.Fatalf("get picked %q, want the newest", got)
	}
	if fi, err := s.Stat(context.Background(), "locks/a"); err != nil || fi.Size != int64(len("other-2")) {
		t.Fatalf("stat: %+v %v", fi, err)
	}
	if got := cloudtest.Names(t, s, "locks/"); len(got) != 1 {
		t.Fatalf("list reported %v", got)
	}
	put(t, s, "locks/a", []byte("final"))
	l, err := svc.Files.List().Spaces("appDataFolder").Q("name = 'a' and trashed = false").Do()
	if err != nil || len(l.Files) != 1 {
		t.Fatalf("after Put %d files remain (%v)", len(l.Files), err)
	}
	// Delete removes every copy
	if _, err := svc.Files.Create(&drive.File{Name: "a", Parents: dirs}).Media(strings.NewReader("again")).Do(); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(context.Background(), "locks/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(context.Background(), "locks/a"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	// a duplicated folder (two clients created "snapshots" at once) is merged
	root := s.dirs[""]
	for i := 0; i < 2; i++ {
		f, err := svc.Files.Create(&drive.File{Name: "snapshots", MimeType: folderMime, Parents: root}).Do()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Files.Create(&drive.File{Name: fmt.Sprintf("s%d", i), Parents: []string{f.Id}}).Media(strings.NewReader("x")).Do(); err != nil {
			t.Fatal(err)
		}
	}
	s2 := openStore(t, Config{Space: s.cfg.Space, Path: s.cfg.Path, Endpoint: emu.URL, TokenSource: s.cfg.TokenSource, minBackoff: time.Millisecond})
	if got := strings.Join(cloudtest.Names(t, s2, "snapshots/"), ","); got != "snapshots/s0,snapshots/s1" {
		t.Fatalf("merged folders list %q", got)
	}
	if got := string(get(t, s2, "snapshots/s1")); got != "x" {
		t.Fatal("get from the second duplicate folder")
	}
}

func TestConcurrentPutsMakeOneFolder(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := []byte(fmt.Sprint(i))
			if err := s.Put(context.Background(), fmt.Sprintf("data/%02d/new/x%d", i%2, i), bytes.NewReader(b), int64(len(b))); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	svc := rawClient(t, emu)
	for _, n := range []string{"data", "00", "01", "new"} {
		l, err := svc.Files.List().Spaces("appDataFolder").Q("name = '" + n + "' and mimeType = '" + folderMime + "'").Do()
		want := 1
		if n == "new" {
			want = 2
		}
		if err != nil || len(l.Files) != want {
			t.Fatalf("%d folders named %s (%v)", len(l.Files), n, err)
		}
	}
	if got := cloudtest.Names(t, s, "data/"); len(got) != 16 {
		t.Fatalf("listed %d", len(got))
	}
}

func TestPutValidation(t *testing.T) {
	emu := startEmu(t)
	s := openStore(t, testConfig(emu))
	ctx := context.Background()
	for _, n := range []string{"", "/a", "a//b", "a/./b", "A", "a/", "a/../b"} {
		if err := s.Put(ctx, n, strings.NewReader(""), 0); err == nil {
			t.Errorf("Put(%q) succeeded", n)
		}
	}
	if emu.Calls(driveemu.OpUpload) != 0 {
		t.Fatal("invalid names reached Drive")
	}
}

func TestNotLoggedInIsOneLine(t *testing.T) {
	emu := startEmu(t)
	cfg := testConfig(emu)
	cfg.TokenSource = oauth2.TokenSource(failingSource{})
	_, err := New(context.Background(), cfg)
	if !errors.Is(err, ErrNotLoggedIn) || err.Error() != ErrNotLoggedIn.Error() {
		t.Fatalf("err = %v", err)
	}
}

type failingSource struct{}

func (failingSource) Token() (*oauth2.Token, error) { return nil, ErrNotLoggedIn }
