package s3_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/cloudtest"
)

func TestConformance(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	t.Run("BucketRoot", func(t *testing.T) {
		cloudtest.Run(t, func(t *testing.T) cloud.Store {
			cfg := config(srv, "", freshBucket())
			cfg.CreateBucket = true
			return open(t, cfg)
		}, cloudtest.Options{})
	})
	t.Run("Prefix", func(t *testing.T) {
		// One bucket, a fresh prefix per store: the store must not see
		// its neighbours' objects.
		bucket := freshBucket()
		cfg := config(srv, "", bucket)
		cfg.CreateBucket = true
		neighbour := open(t, cfg)
		n := 0
		cloudtest.Run(t, func(t *testing.T) cloud.Store {
			n++
			cfg := config(srv, "", bucket)
			cfg.Prefix = "repos/r" + string(rune('a'+n%26)) + "x" + itoa(n)
			return open(t, cfg)
		}, cloudtest.Options{LargeSize: 20 << 20, ManyObjects: 1050})
		var names []string
		if err := neighbour.List(t.Context(), "", func(fi cloud.ObjectInfo) error {
			names = append(names, fi.Name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if len(name) < 6 || name[:6] != "repos/" {
				t.Errorf("bucket root shows stray object %q", name)
			}
		}
	})
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestDirectoryLikeNames: on a file-system backed server, "data/ab" is a
// directory once "data/ab/x" exists; it must still not look like an object.
func TestDirectoryLikeNames(t *testing.T) {
	st := freshStore(t)
	ctx := t.Context()
	if err := st.Put(ctx, "data/ab/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, "data/ab"); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Stat of a directory: %v", err)
	}
	if rc, err := st.Get(ctx, "data/ab", 0, -1); !errors.Is(err, cloud.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Get of a directory: %v", err)
	}
	if err := st.Delete(ctx, "data/ab"); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Delete of a directory: %v", err)
	}
	if err := st.Delete(ctx, "data/ab/x"); err != nil {
		t.Fatal(err)
	}
	var names []string
	st.List(ctx, "", func(fi cloud.ObjectInfo) error { names = append(names, fi.Name); return nil })
	if len(names) != 0 {
		t.Errorf("after deleting the only object, List shows %v", names)
	}
	// Offsets past the end, and zero lengths.
	if err := st.Put(ctx, "keys/k", strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{10, -1}, {10, 5}, {20, 1}, {3, 0}, {8, 100}} {
		rc, err := st.Get(ctx, "keys/k", c.off, c.n)
		if err != nil {
			t.Errorf("Get(%d, %d): %v", c.off, c.n, err)
			continue
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		want := ""
		if c.off < 10 && c.n != 0 {
			want = "0123456789"[c.off:min(10, c.off+c.n)]
		}
		if err != nil || string(b) != want {
			t.Errorf("Get(%d, %d) = %q, %v; want %q", c.off, c.n, b, err, want)
		}
	}
	if _, err := st.Get(ctx, "keys/none", 5, 0); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("zero-length Get of a missing object: %v", err)
	}
	if _, err := st.Get(ctx, "keys/none", 50, 10); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("Get past the end of a missing object: %v", err)
	}
}
