package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
)

// remoteStore is a local store seen as a remote one (it hides PutFile, so
// restore reads through pack streams). It counts Gets and can break every
// read to the end of an object after breakAfter bytes, as a reset
// connection would.
type remoteStore struct {
	cloud.Store
	gets, streams atomic.Int64
	breakAfter    int64
}

func (s *remoteStore) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	s.gets.Add(1)
	rc, err := s.Store.Get(ctx, name, off, length)
	if err != nil || length >= 0 {
		return rc, err
	}
	s.streams.Add(1)
	if s.breakAfter > 0 {
		return &breakingReader{ReadCloser: rc, left: s.breakAfter}, nil
	}
	return rc, nil
}

type breakingReader struct {
	io.ReadCloser
	left int64
}

func (b *breakingReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// limitedStore lets at most cap(conns) responses be open at once, as an
// HTTP transport with MaxConnsPerHost does (the Drive store's): a Get
// waits for a connection until another response is closed.
type limitedStore struct {
	*remoteStore
	conns chan struct{}
}

func (s *limitedStore) Connections() int { return cap(s.conns) }

func (s *limitedStore) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	select {
	case s.conns <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	rc, err := s.remoteStore.Get(ctx, name, off, length)
	if err != nil {
		<-s.conns
		return nil, err
	}
	return &releasing{ReadCloser: rc, conns: s.conns}, nil
}

type releasing struct {
	io.ReadCloser
	conns chan struct{}
	done  atomic.Bool
}

func (r *releasing) Close() error {
	if r.done.CompareAndSwap(false, true) {
		<-r.conns
	}
	return r.ReadCloser.Close()
}

// streamTree writes files of 100 KiB to 3 MiB of incompressible data,
// about 60 MiB in all: several packs, many chunks.
func streamTree(t *testing.T, root string) {
	rng := rand.New(rand.NewPCG(5, 6))
	var seed [32]byte
	src := rand.NewChaCha8(seed)
	for i := range 40 {
		data := make([]byte, 100<<10+rng.IntN(3<<20))
		src.Read(data)
		p := filepath.Join(root, fmt.Sprintf("d%d", i%4), fmt.Sprintf("IMG-%03d.jpg", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestoreThroughPackStreams: a restore from a remote store reads each
// pack through a few streams instead of a request per chunk, gives the
// same bytes, falls back to ranged reads when streams break, and still
// detects a damaged pack.
func TestRestoreThroughPackStreams(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "Media")
	streamTree(t, src)
	want := treeDigest(t, src)
	if _, err := tr.Backup(ctx, BackupOptions{Media: src}); err != nil {
		t.Fatal(err)
	}
	var chunks, packs int
	if err := tr.store.List(ctx, "data/", func(cloud.ObjectInfo) error { packs++; return nil }); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name       string
		breakAfter int64
		conns      int // the store's connection limit (0: none)
		damage     bool
	}{
		{name: "healthy"},
		{name: "streams break midway", breakAfter: 700 << 10},
		{name: "as many connections as streams", conns: maxStreams},
		{name: "too few connections for streams", conns: 3},
		{name: "damaged pack", damage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.damage {
				var victim string
				tr.store.List(ctx, "data/", func(o cloud.ObjectInfo) error { victim = o.Name; return nil })
				p := filepath.Join(tr.dir, filepath.FromSlash(victim))
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/3] ^= 0x40
				os.Chmod(p, 0o644)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			st, err := local.Open(tr.dir, false)
			if err != nil {
				t.Fatal(err)
			}
			rs := &remoteStore{Store: st, breakAfter: tc.breakAfter}
			var store cloud.Store = rs
			if tc.conns > 0 {
				store = &limitedStore{remoteStore: rs, conns: make(chan struct{}, tc.conns)}
			}
			r, err := Open(ctx, store)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Unlock(ctx, Credentials{RecoveryKey: &tr.recovery}); err != nil {
				t.Fatal(err)
			}
			r.SetTempDir(t.TempDir())
			snap, err := r.FindSnapshot(ctx, "latest")
			if err != nil {
				t.Fatal(err)
			}
			before := rs.gets.Load()
			out := t.TempDir()
			// Streams holding every connection would make the restore
			// wait for ever: give it a deadline.
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			_, err = r.Restore(rctx, snap, RestoreOptions{Target: out})
			gets := rs.gets.Load() - before
			if tc.damage {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not authenticate") {
					t.Fatalf("restore of a damaged pack: %v, want a chunk that does not authenticate", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			compareTrees(t, want, treeDigest(t, filepath.Join(out, "Media")))
			if chunks == 0 {
				for _, n := range treeNodes(t, r, snap) {
					chunks += len(n.Chunks)
				}
			}
			t.Logf("%d chunks in %d packs: %d Gets, %d of them streams", chunks, packs, gets, rs.streams.Load())
			if tc.breakAfter == 0 && tc.conns != 3 && gets > int64(chunks)/2 {
				t.Errorf("%d Gets for %d chunks: streams are not being reused", gets, chunks)
			}
		})
	}
}

func treeNodes(t *testing.T, r *Repository, s *Snapshot) []*Node {
	t.Helper()
	tr, err := r.OpenTree(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var nodes []*Node
	for {
		n, err := tr.Next()
		if err == io.EOF {
			return nodes
		}
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
}

// TestCheckReadDataInParallel: check --read-data verifies several packs
// at once but reports what it finds in pack order, the same on every run,
// and counts every pack it read.
func TestCheckReadDataInParallel(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "Media")
	streamTree(t, src)
	// A second, different tree: more packs.
	streamTree2 := filepath.Join(t.TempDir(), "More")
	os.MkdirAll(streamTree2, 0o755)
	for i := range 30 {
		data := make([]byte, 1<<20)
		rand.NewChaCha8([32]byte{byte(i), 1}).Read(data)
		os.WriteFile(filepath.Join(streamTree2, fmt.Sprintf("VID-%02d.mp4", i)), data, 0o644)
	}
	if _, err := tr.Backup(ctx, BackupOptions{Media: src}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Backup(ctx, BackupOptions{Media: streamTree2}); err != nil {
		t.Fatal(err)
	}
	var packs []string
	tr.store.List(ctx, "data/", func(o cloud.ObjectInfo) error { packs = append(packs, o.Name); return nil })
	if len(packs) < 4 {
		t.Fatalf("only %d packs; want several", len(packs))
	}
	// Damage every pack in the middle (the trailer stays intact, so each
	// pack yields a finding of its own and the check goes on).
	for _, name := range packs {
		p := filepath.Join(tr.dir, filepath.FromSlash(name))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/4] ^= 1
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var first []string
	for run := range 3 {
		r := tr.reopen(t)
		res, err := r.Check(ctx, CheckOptions{ReadData: true})
		if !errors.Is(err, ErrCheckFailed) {
			t.Fatalf("check of damaged packs: %v", err)
		}
		if res.PacksRead != len(packs) {
			t.Errorf("read %d packs, want %d", res.PacksRead, len(packs))
		}
		var found []string
		for _, e := range res.Errors {
			// Only the read-data findings, one per pack: the snapshots whose
			// directory pieces sat in a damaged pack are named too.
			if strings.HasPrefix(e, "data/") && strings.Contains(e, "does not authenticate") {
				found = append(found, e)
			}
		}
		if len(found) != len(packs) {
			t.Fatalf("%d findings for %d damaged packs: %q", len(found), len(packs), res.Errors)
		}
		if run == 0 {
			first = found
			continue
		}
		if !slices.Equal(found, first) {
			t.Fatalf("findings in another order on run %d:\n%q\nvs\n%q", run, found, first)
		}
	}
	if !slices.IsSortedFunc(first, func(a, b string) int {
		return strings.Compare(a[strings.Index(a, "data/"):], b[strings.Index(b, "data/"):])
	}) {
		t.Errorf("findings not in pack order: %q", first)
	}
}

// TestPlanRanges: blobs are grouped by pack, and those of a pack at most
// a gap apart make one range.
func TestPlanRanges(t *testing.T) {
	pa, pb := packInfo{id: ID{1}}, packInfo{id: ID{2}}
	blob := func(p packInfo, off, n uint32) packBlob {
		return packBlob{pack: p, e: blobEntry{ID: ID{byte(off), byte(off >> 8), byte(off >> 16)}, Offset: off, Length: n}}
	}
	type rng struct {
		pack       byte
		start, end int64
		blobs      int
	}
	for _, tc := range []struct {
		name  string
		blobs []packBlob
		gap   int64
		want  []rng
	}{
		{name: "none"},
		{name: "one", blobs: []packBlob{blob(pa, 100, 50)}, gap: 10, want: []rng{{1, 100, 150, 1}}},
		{name: "adjacent", blobs: []packBlob{blob(pa, 0, 50), blob(pa, 50, 50)}, gap: 0, want: []rng{{1, 0, 100, 2}}},
		{name: "gap at the limit", blobs: []packBlob{blob(pa, 0, 50), blob(pa, 60, 5)}, gap: 10, want: []rng{{1, 0, 65, 2}}},
		{name: "gap over the limit", blobs: []packBlob{blob(pa, 0, 50), blob(pa, 61, 5)}, gap: 10, want: []rng{{1, 0, 50, 1}, {1, 61, 66, 1}}},
		{name: "out of order", blobs: []packBlob{blob(pa, 500, 10), blob(pa, 0, 10), blob(pa, 20, 10)}, gap: 100, want: []rng{{1, 0, 30, 2}, {1, 500, 510, 1}}},
		{name: "twice", blobs: []packBlob{blob(pa, 0, 10), blob(pa, 0, 10)}, gap: 0, want: []rng{{1, 0, 10, 1}}},
		{name: "two packs", blobs: []packBlob{blob(pb, 0, 10), blob(pa, 0, 10), blob(pb, 10, 10)}, gap: 0, want: []rng{{2, 0, 20, 2}, {1, 0, 10, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planRanges(tc.blobs, tc.gap)
			var g []rng
			for _, r := range got {
				g = append(g, rng{r.pack.id[0], r.start, r.end, len(r.blobs)})
				for i := 1; i < len(r.blobs); i++ {
					if r.blobs[i].Offset <= r.blobs[i-1].Offset {
						t.Errorf("blobs out of order: %+v", r.blobs)
					}
				}
			}
			if !slices.Equal(g, tc.want) {
				t.Errorf("ranges %v, want %v", g, tc.want)
			}
		})
	}
}
