package s3_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// patternReader yields n deterministic bytes without holding them.
type patternReader struct{ n, off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		b[i] = byte((p.off + int64(i)) * 2654435761 >> 13)
	}
	p.off += int64(len(b))
	return len(b), nil
}

// TestPutMemory measures what a Put allocates: about one part, whatever
// the object's size.
func TestPutMemory(t *testing.T) {
	st := freshStore(t)
	ctx := context.Background()
	const partSize = s3.DefaultPartSize

	for _, size := range []int64{1 << 20, 64 << 20} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if err := st.Put(ctx, fmt.Sprintf("data/mm/%d", size), &patternReader{n: size}, size); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("Put of %d MiB allocated %.1f MiB", size>>20, float64(alloc)/(1<<20))
		if limit := uint64(min(size, partSize)) + 4<<20; alloc > limit {
			t.Errorf("Put of %d bytes allocated %d bytes, more than %d", size, alloc, limit)
		}
	}

	// Four 40 MiB Puts at once: the live heap grows by about four parts.
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	runtime.GC()
	base := heap()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if h := heap(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := st.Put(ctx, fmt.Sprintf("data/mm/c%d", i), &patternReader{n: 40 << 20}, 40<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-done
	grew := peak.Load() - min(base, peak.Load())
	t.Logf("4 concurrent 40 MiB Puts: heap peaked %.1f MiB above the start", float64(grew)/(1<<20))
	if limit := uint64(4*partSize + 16<<20); grew > limit {
		t.Errorf("heap grew by %d bytes, more than %d", grew, limit)
	}
	if got := readAll(t, st, "data/mm/c2"); !bytes.Equal(got[:1<<20], mustRead(&patternReader{n: 1 << 20})) {
		t.Error("object content differs")
	}
}

func mustRead(r io.Reader) []byte {
	b, _ := io.ReadAll(r)
	return b
}

// BenchmarkPut uploads 32 MiB objects (two 16 MiB parts) to versitygw on
// loopback, one at a time and four at once.
func BenchmarkPut(b *testing.B) {
	srv := testservers.StartVersityGW(b, testservers.VersityGWOptions{})
	cfg := config(srv, "", freshBucket())
	cfg.CreateBucket = true
	cfg.RetryBudget = 0
	st := open(b, cfg)
	const size = 32 << 20
	data := make([]byte, size)
	(&patternReader{n: size}).Read(data)
	ctx := context.Background()
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("concurrent=%d", par), func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			var n atomic.Int64
			b.SetParallelism(par)
			// RunParallel runs GOMAXPROCS*par goroutines; normalise to par.
			sem := make(chan struct{}, par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					sem <- struct{}{}
					i := n.Add(1)
					if err := st.Put(ctx, fmt.Sprintf("data/bench/%d", i%8), bytes.NewReader(data), size); err != nil {
						b.Error(err)
					}
					<-sem
				}
			})
		})
	}
}

// TestPutFromFile: a Put from a file (how packs are sent) reads the parts
// in place from the file's current offset, holds no part buffer, leaves
// the offset past the object, and refuses a file that is shorter or
// longer than announced.
func TestPutFromFile(t *testing.T) {
	st := freshStore(t)
	ctx := context.Background()

	const head, size = 1000, 40 << 20 // three parts, the last one short
	f, err := os.CreateTemp(t.TempDir(), "pack")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := mustRead(&patternReader{n: head + size})
	if _, err := f.Write(want); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		size    int64
		wantErr string
	}{
		{"exact", size, ""},
		{"shorter", size + 1, "data ended after"},
		{"longer", size - 1, "longer than the announced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.Seek(head, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err := st.Put(ctx, "data/ff/"+tc.name, f, tc.size)
			runtime.ReadMemStats(&after)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Put: %v, want an error saying %q", err, tc.wantErr)
				}
				if _, serr := st.Stat(ctx, "data/ff/"+tc.name); serr == nil {
					t.Error("a refused Put left an object behind")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("Put of a %d MiB file allocated %.2f MiB", size>>20, float64(alloc)/(1<<20))
			if alloc > 2<<20 {
				t.Errorf("Put from a file allocated %d bytes; want no part buffer", alloc)
			}
			if off, _ := f.Seek(0, io.SeekCurrent); off != head+size {
				t.Errorf("file offset after Put %d, want %d", off, head+size)
			}
			if got := readAll(t, st, "data/ff/"+tc.name); !bytes.Equal(got, want[head:]) {
				t.Error("object content differs from the file's bytes after the offset")
			}
		})
	}
}
