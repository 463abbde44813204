package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
)

// rangeFaultStore breaks the planned reads of a restore: the body of
// every Get longer than cutLonger ends with a reset after cutAfter bytes,
// and the first Get of each of the packs in fail is refused.
type rangeFaultStore struct {
	*countStore
	cutLonger, cutAfter int64
	mu                  sync.Mutex
	fail                map[string]bool
}

func (s *rangeFaultStore) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	s.mu.Lock()
	refuse := s.fail[name]
	delete(s.fail, name)
	s.mu.Unlock()
	if refuse {
		s.add("get refused")
		return nil, fmt.Errorf("%s: 503 SlowDown", name)
	}
	rc, err := s.countStore.Get(ctx, name, off, length)
	if err != nil || s.cutLonger == 0 || length <= s.cutLonger {
		return rc, err
	}
	return &breakingReader{ReadCloser: rc, left: s.cutAfter}, nil
}

// makeNoisyDB makes a database of about rows × 300 bytes that compresses
// little (its groups are about as large as their pages).
func makeNoisyDB(t *testing.T, path string, rows int) {
	t.Helper()
	execDB(t, path, []string{
		"PRAGMA journal_mode=WAL",
		"CREATE TABLE message (id INTEGER PRIMARY KEY, body TEXT)",
		fmt.Sprintf("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < %d) INSERT INTO message (body) SELECT hex(randomblob(150)) FROM n", rows),
	})
}

// TestDatabaseRestoreRanges: a database restore reads its page groups in
// planned ranges, one request per pack when the groups lie together, and
// whatever goes wrong with a range — a refused request, a connection
// reset midway, a damaged group, few connections — it restores the
// database exactly or says which file it could not restore.
func TestDatabaseRestoreRanges(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	db := filepath.Join(src, "msgstore.db")
	makeNoisyDB(t, db, 30000) // ≈ 10 MiB: ten groups
	randomTree(t, filepath.Join(src, "Media"), 3)
	s1, err := tr.Backup(ctx, BackupOptions{DB: db, Media: filepath.Join(src, "Media")})
	if err != nil {
		t.Fatal(err)
	}
	execDB(t, db, []string{"UPDATE message SET body = hex(randomblob(150)) WHERE id % 50 = 0"})
	snap, err := tr.Backup(ctx, BackupOptions{DB: db, Media: filepath.Join(src, "Media")})
	if err != nil {
		t.Fatal(err)
	}
	want := dbRows(t, db)
	groupPacks := map[ID]bool{}
	for _, s := range []*Snapshot{s1, snap} {
		n, err := tr.findTopNode(ctx, s, "msgstore.db")
		if err != nil || n == nil {
			t.Fatal(n, err)
		}
		root, _ := ParseID(n.PageMap)
		if _, err := eachPageGroup(ctx, tr.newBlobReader().chunk, root, func(_ *pageMap, g ID, _ []pageLoc) error {
			_, p, ok := tr.idx.lookup(g)
			if ok {
				groupPacks[p.id] = true
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name   string
		store  func(cs *countStore) cloud.Store
		damage bool
		maxGet int // Gets of packs, at most (0: not checked)
	}{
		{name: "healthy", maxGet: len(groupPacks) + 6},
		{name: "requests refused", store: func(cs *countStore) cloud.Store {
			fail := map[string]bool{}
			for p := range groupPacks {
				fail[packName(p)] = true
			}
			return &rangeFaultStore{countStore: cs, fail: fail}
		}},
		{name: "connections reset midway", store: func(cs *countStore) cloud.Store {
			return &rangeFaultStore{countStore: cs, cutLonger: 2 << 20, cutAfter: 1 << 20, fail: map[string]bool{}}
		}},
		{name: "two connections", store: func(cs *countStore) cloud.Store {
			return &limitedCountStore{countStore: cs, conns: make(chan struct{}, 2)}
		}},
		{name: "a damaged group", damage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tr.dir
			if tc.damage {
				// A copy of the repository with a byte of the current
				// database's first group flipped.
				dir = filepath.Join(t.TempDir(), "repo")
				if err := os.CopyFS(dir, os.DirFS(tr.dir)); err != nil {
					t.Fatal(err)
				}
				n, _ := tr.findTopNode(ctx, snap, "msgstore.db")
				root, _ := ParseID(n.PageMap)
				var g ID
				eachPageGroup(ctx, tr.newBlobReader().chunk, root, func(_ *pageMap, id ID, _ []pageLoc) error {
					if g == (ID{}) {
						g = id
					}
					return nil
				})
				loc, p, _ := tr.idx.lookup(g)
				f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(packName(p.id))), os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				f.ReadAt(b, int64(loc.offset)+10)
				b[0] ^= 0x20
				f.WriteAt(b, int64(loc.offset)+10)
				f.Close()
			}
			ls, err := local.Open(dir, false)
			if err != nil {
				t.Fatal(err)
			}
			cs := newCountStore(ls)
			var store cloud.Store = cs
			if tc.store != nil {
				store = tc.store(cs)
			}
			r, err := Open(ctx, store)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := r.Unlock(ctx, Credentials{RecoveryKey: &tr.recovery}); err != nil {
				t.Fatal(err)
			}
			r.SetTempDir(t.TempDir())
			if err := r.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			cs.reset()
			out := t.TempDir()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			_, err = r.Restore(rctx, snap, RestoreOptions{Target: out, Include: []string{"msgstore.db"}, NoSync: true})
			t.Logf("%v", cs)
			if tc.damage {
				var inc *IncompleteError
				if !errors.As(err, &inc) || len(inc.Failed) != 1 || !inc.Failed[0].DB || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not authenticate") {
					t.Fatalf("restore of a damaged group: %v; want the database not restored, its group not authenticating", err)
				}
				if _, err := os.Stat(filepath.Join(out, "msgstore.db")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a damaged database was left under its name: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := dbRows(t, filepath.Join(out, "msgstore.db")); got != want {
				t.Errorf("restored %s, want %s", got, want)
			}
			if n := cs.get("get data"); tc.maxGet > 0 && n > tc.maxGet {
				t.Errorf("%d pack reads for groups in %d packs: the ranges are not planned", n, len(groupPacks))
			}
		})
	}
}

// limitedCountStore lets at most cap(conns) responses be open at once
// (as the Drive store's transport does).
type limitedCountStore struct {
	*countStore
	conns chan struct{}
}

func (s *limitedCountStore) Connections() int { return cap(s.conns) }

func (s *limitedCountStore) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	select {
	case s.conns <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	rc, err := s.countStore.Get(ctx, name, off, length)
	if err != nil {
		<-s.conns
		return nil, err
	}
	return &releaseOnClose{ReadCloser: rc, release: func() { <-s.conns }}, nil
}

type releaseOnClose struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (r *releaseOnClose) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.release)
	return err
}
