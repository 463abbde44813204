// Package cloudtest is the conformance suite every cloud.Store backend must
// pass. A backend's test calls Run with a function that returns a fresh,
// empty store.
package cloudtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// Options tunes the suite for slow backends.
type Options struct {
	// LargeSize is the size of the large-object test (default 40 MiB).
	LargeSize int64
	// ManyObjects is how many objects the pagination test writes (default
	// 1100, more than one S3/Drive page).
	ManyObjects int
}

// Run runs the whole suite. newStore must return a fresh, empty store.
func Run(t *testing.T, newStore func(t *testing.T) cloud.Store, opt Options) {
	if opt.LargeSize == 0 {
		opt.LargeSize = 40 << 20
	}
	if opt.ManyObjects == 0 {
		opt.ManyObjects = 1100
	}
	ctx := context.Background()
	t.Run("PutGetStat", func(t *testing.T) {
		s := newStore(t)
		data := []byte("hello, chunk")
		put(t, s, "keys/abc", data)
		if got := get(t, s, "keys/abc", 0, -1); !bytes.Equal(got, data) {
			t.Fatalf("get = %q, want %q", got, data)
		}
		fi, err := s.Stat(ctx, "keys/abc")
		if err != nil || fi.Size != int64(len(data)) || fi.Name != "keys/abc" {
			t.Fatalf("stat = %+v, %v", fi, err)
		}
		put(t, s, "config", nil)
		if got := get(t, s, "config", 0, -1); len(got) != 0 {
			t.Fatalf("empty object read back %d bytes", len(got))
		}
	})
	t.Run("RangeGet", func(t *testing.T) {
		s := newStore(t)
		data := randBytes(1, 100000)
		put(t, s, "data/00/range", data)
		for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 100000}, {1, 10}, {99999, 1}, {50000, -1}, {12345, 54321}, {0, -1}} {
			want := data[c.off:]
			if c.n >= 0 {
				want = want[:c.n]
			}
			if got := get(t, s, "data/00/range", c.off, c.n); !bytes.Equal(got, want) {
				t.Errorf("range %d+%d: got %d bytes, want %d", c.off, c.n, len(got), len(want))
			}
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Stat(ctx, "nope"); !errors.Is(err, cloud.ErrNotFound) {
			t.Errorf("Stat missing: %v, want ErrNotFound", err)
		}
		if rc, err := s.Get(ctx, "nope", 0, -1); !errors.Is(err, cloud.ErrNotFound) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Get missing: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "nope"); !errors.Is(err, cloud.ErrNotFound) {
			t.Errorf("Delete missing: %v, want ErrNotFound", err)
		}
	})
	t.Run("Overwrite", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "locks/x", []byte("first version, longer"))
		put(t, s, "locks/x", []byte("second"))
		if got := get(t, s, "locks/x", 0, -1); string(got) != "second" {
			t.Fatalf("after overwrite got %q", got)
		}
		if n := len(Names(t, s, "locks/")); n != 1 {
			t.Fatalf("overwrite left %d objects", n)
		}
	})
	t.Run("ListPrefix", func(t *testing.T) {
		s := newStore(t)
		names := []string{"config", "keys/k1", "keys/k2", "snapshots/s1", "data/ab/ab01", "data/ab/ab02", "data/cd/cd01", "index/i1"}
		for _, n := range names {
			put(t, s, n, []byte(n))
		}
		check := func(prefix string, want ...string) {
			t.Helper()
			got := Names(t, s, prefix)
			sort.Strings(want)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("list %q = %v, want %v", prefix, got, want)
			}
		}
		check("keys/", "keys/k1", "keys/k2")
		check("data/", "data/ab/ab01", "data/ab/ab02", "data/cd/cd01")
		check("data/ab/", "data/ab/ab01", "data/ab/ab02")
		check("data/ab/ab0", "data/ab/ab01", "data/ab/ab02")
		check("snap", "snapshots/s1")
		check("nothing/")
		check("", names...)
		// sizes are reported
		err := s.List(ctx, "keys/", func(fi cloud.ObjectInfo) error {
			if fi.Size != int64(len(fi.Name)) {
				t.Errorf("list %s: size %d", fi.Name, fi.Size)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		stop := errors.New("stop")
		if err := s.List(ctx, "", func(cloud.ObjectInfo) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("List did not return the callback's error: %v", err)
		}
	})
	t.Run("Pagination", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		errs := make(chan error, opt.ManyObjects)
		for i := 0; i < opt.ManyObjects; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				b := []byte(fmt.Sprint(i))
				errs <- s.Put(ctx, fmt.Sprintf("index/%05d", i), bytes.NewReader(b), int64(len(b)))
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := Names(t, s, "index/"); len(got) != opt.ManyObjects {
			t.Fatalf("listed %d objects, want %d", len(got), opt.ManyObjects)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "snapshots/a", []byte("a"))
		put(t, s, "snapshots/b", []byte("b"))
		if err := s.Delete(ctx, "snapshots/a"); err != nil {
			t.Fatal(err)
		}
		if got := Names(t, s, "snapshots/"); len(got) != 1 || got[0] != "snapshots/b" {
			t.Fatalf("after delete: %v", got)
		}
		if _, err := s.Stat(ctx, "snapshots/a"); !errors.Is(err, cloud.ErrNotFound) {
			t.Fatalf("deleted object still there: %v", err)
		}
	})
	t.Run("LargeObject", func(t *testing.T) {
		s := newStore(t)
		size := opt.LargeSize
		if err := s.Put(ctx, "data/ff/large", newPattern(7, size), size); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Get(ctx, "data/ff/large", 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if err := comparePattern(rc, newPattern(7, size)); err != nil {
			t.Fatal(err)
		}
		off, n := size/2+12345, int64(3<<20)
		got := get(t, s, "data/ff/large", off, n)
		want := make([]byte, n)
		p := newPattern(7, size)
		io.CopyN(io.Discard, p, off)
		io.ReadFull(p, want)
		if !bytes.Equal(got, want) {
			t.Fatal("range read of large object differs")
		}
	})
	t.Run("ConcurrentPuts", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				data := randBytes(uint64(i), 300000+i)
				if err := s.Put(ctx, fmt.Sprintf("data/cc/%02d", i), bytes.NewReader(data), int64(len(data))); err != nil {
					t.Error(err)
				}
			}(i)
		}
		wg.Wait()
		for i := 0; i < 8; i++ {
			if got := get(t, s, fmt.Sprintf("data/cc/%02d", i), 0, -1); !bytes.Equal(got, randBytes(uint64(i), 300000+i)) {
				t.Errorf("object %d differs", i)
			}
		}
	})
	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		s := newStore(t)
		// reader fails half way
		err := s.Put(ctx, "data/ee/broken", io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), errReader{}), 2<<20)
		if err == nil {
			t.Fatal("Put with a failing reader succeeded")
		}
		// reader shorter than size
		if err := s.Put(ctx, "data/ee/short", bytes.NewReader([]byte("abc")), 10); err == nil {
			t.Fatal("Put with a short reader succeeded")
		}
		// reader longer than size must not store a different object than announced
		if err := s.Put(ctx, "data/ee/long", bytes.NewReader([]byte("abcdef")), 3); err == nil {
			if got := get(t, s, "data/ee/long", 0, -1); string(got) != "abc" {
				t.Fatalf("long reader stored %q", got)
			}
		}
		for _, n := range []string{"data/ee/broken", "data/ee/short"} {
			if _, err := s.Stat(ctx, n); !errors.Is(err, cloud.ErrNotFound) {
				t.Errorf("%s: failed Put left an object (stat err %v)", n, err)
			}
		}
		for _, n := range Names(t, s, "") {
			if n != "data/ee/long" {
				t.Errorf("failed Put left %s visible", n)
			}
		}
	})
	t.Run("Cancel", func(t *testing.T) {
		s := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		r := &slowReader{r: newPattern(3, 8<<20), cancel: cancel, after: 2 << 20}
		if err := s.Put(cctx, "data/dd/cancelled", r, 8<<20); err == nil {
			t.Fatal("cancelled Put succeeded")
		}
		if _, err := s.Stat(ctx, "data/dd/cancelled"); !errors.Is(err, cloud.ErrNotFound) {
			t.Fatalf("cancelled Put left an object: %v", err)
		}
		done, cancel2 := context.WithCancel(ctx)
		cancel2()
		if _, err := s.Get(done, "data/dd/cancelled", 0, -1); err == nil {
			t.Error("Get with a cancelled context succeeded")
		}
	})
}

func put(t *testing.T, s cloud.Store, name string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
}

func get(t *testing.T, s cloud.Store, name string, off, n int64) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), name, off, n)
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

// Names lists the names under prefix, sorted.
func Names(t *testing.T, s cloud.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := s.List(context.Background(), prefix, func(fi cloud.ObjectInfo) error {
		out = append(out, fi.Name)
		return nil
	}); err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	sort.Strings(out)
	return out
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 99))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// pattern is a deterministic, incompressible stream generated on the fly,
// so large objects never sit in memory.
type pattern struct {
	c *rand.ChaCha8
	n int64
}

func newPattern(seed byte, n int64) io.Reader {
	var s [32]byte
	s[0] = seed
	return &pattern{c: rand.NewChaCha8(s), n: n}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	n, _ := p.c.Read(b)
	p.n -= int64(n)
	return n, nil
}

func comparePattern(got, want io.Reader) error {
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(want, b)
		if n > 0 {
			m, gerr := io.ReadFull(got, a[:n])
			if m != n || !bytes.Equal(a[:n], b[:n]) {
				return fmt.Errorf("content differs near offset %d (%v)", off, gerr)
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if m, _ := got.Read(a[:1]); m != 0 {
				return fmt.Errorf("object longer than %d bytes", off)
			}
			return nil
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("injected read failure") }

type slowReader struct {
	r      io.Reader
	cancel func()
	after  int64
	n      int64
}

func (s *slowReader) Read(b []byte) (int, error) {
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	n, err := s.r.Read(b)
	s.n += int64(n)
	if s.n >= s.after && s.cancel != nil {
		s.cancel()
		s.cancel = nil
		time.Sleep(10 * time.Millisecond)
	}
	return n, err
}
