package archive

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

// cacheEnv is a repository in a local directory opened the way another
// process would open it, through a counting store that hides the local
// store's shortcuts (so it is read as a remote store is: with Gets).
type cacheEnv struct {
	t     *testing.T
	store func() *countStore // a new process's store
	rk    keys.Key
	src   string // msgstore.db and Media
}

func newCacheEnv(t *testing.T) *cacheEnv {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := local.Open(dir, true); err != nil {
		t.Fatal(err)
	}
	return newCacheEnvOn(t, func() *countStore {
		ls, err := local.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return newCountStore(ls)
	})
}

// newCacheEnvOn makes a repository in the stores store opens, and a
// source to back up.
func newCacheEnvOn(t *testing.T, store func() *countStore) *cacheEnv {
	t.Helper()
	r, rk, err := Init(context.Background(), store(), InitOptions{Argon2: testArgon})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	e := &cacheEnv{t: t, store: store, rk: rk, src: t.TempDir()}
	makeDB(t, e.db(), 20000)
	randomTree(t, e.media(), 5)
	return e
}

func (e *cacheEnv) db() string    { return filepath.Join(e.src, "msgstore.db") }
func (e *cacheEnv) media() string { return filepath.Join(e.src, "Media") }

// open opens the repository with its caches in cacheDir ("" for none).
func (e *cacheEnv) open(cacheDir string) (*Repository, *countStore) {
	e.t.Helper()
	st := e.store()
	r, err := Open(context.Background(), st)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := r.Unlock(context.Background(), Credentials{RecoveryKey: &e.rk}); err != nil {
		e.t.Fatal(err)
	}
	r.SetTempDir(e.t.TempDir())
	r.SetCacheDir(cacheDir)
	st.reset()
	return r, st
}

// backup backs up the source in a process of its own.
func (e *cacheEnv) backup(cacheDir string) (*Snapshot, *countStore, MetaCacheStats) {
	e.t.Helper()
	r, st := e.open(cacheDir)
	defer r.Close()
	s, err := r.Backup(context.Background(), BackupOptions{DB: e.db(), Media: e.media(), Host: "h", DBCheck: "quick"})
	if err != nil {
		e.t.Fatal(err)
	}
	return s, st, r.MetaCacheStats()
}

// dayOfUse changes the database and the media folder a little.
func (e *cacheEnv) dayOfUse(day int) {
	e.t.Helper()
	execDB(e.t, e.db(), []string{
		fmt.Sprintf("INSERT INTO message (body) SELECT 'day %d ' || id FROM message WHERE id %% 97 = 0", day),
		fmt.Sprintf("UPDATE message SET body = 'read %d' WHERE id %% 1013 = 0", day),
	})
	p := filepath.Join(e.media(), "WhatsApp Images", fmt.Sprintf("IMG-day%d.jpg", day))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(fmt.Sprintf("a photo of day %d", day)), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// checkRestore restores snap with r and compares it with the source.
func (e *cacheEnv) checkRestore(r *Repository, snap *Snapshot) {
	e.t.Helper()
	out := e.t.TempDir()
	if _, err := r.Restore(context.Background(), snap, RestoreOptions{Target: out, NoSync: true}); err != nil {
		e.t.Fatal(err)
	}
	compareTrees(e.t, treeDigest(e.t, e.media()), treeDigest(e.t, filepath.Join(out, "Media")))
	if got, want := dbRows(e.t, filepath.Join(out, "msgstore.db")), dbRows(e.t, e.db()); got != want {
		e.t.Errorf("restored database: %s, source: %s", got, want)
	}
}

// dbRows describes a database's messages (and checks it).
func dbRows(t *testing.T, p string) string {
	t.Helper()
	db, err := sql.Open("sqlite", p)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	var sum float64
	var ok string
	if err := db.QueryRow("SELECT count(*), total(length(body) * id) FROM message").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d messages, sum %.0f, %s", n, sum, ok)
}

// A nightly backup with the cache of the previous one reads none of its
// parent's description from the store: the first backup cached what it
// wrote, the nightly reads it from there (and caches what it writes). A
// machine without the cache reads it in a few planned ranges.
func TestMetaCacheWarmNightly(t *testing.T) {
	e := newCacheEnv(t)
	cache := filepath.Join(t.TempDir(), "cache")
	if _, _, ms := e.backup(cache); ms.Stored == 0 {
		t.Fatalf("the first backup cached nothing: %+v", ms)
	}
	for day := 1; day <= 2; day++ {
		e.dayOfUse(day)
		_, st, ms := e.backup(cache)
		t.Logf("nightly %d: %v; cache %+v", day, st, ms)
		if n := st.get("get data"); n != 0 || ms.StoreBlobs != 0 || ms.Hits == 0 {
			t.Errorf("nightly %d with a warm cache: %d pack reads, %d metadata blobs from the store, %d from the cache", day, n, ms.StoreBlobs, ms.Hits)
		}
	}
	_, st, ms := e.backup(cache)
	t.Logf("no change: %v; cache %+v", st, ms)
	if n := st.get("get data"); n != 0 || ms.StoreBlobs != 0 || st.total() > 8 {
		t.Errorf("no-change backup: %v, %d metadata blobs from the store", st, ms.StoreBlobs)
	}

	// Another machine: no cache yet.
	e.dayOfUse(3)
	cold := filepath.Join(t.TempDir(), "cold")
	snap, st, ms := e.backup(cold)
	t.Logf("cold nightly: %v; cache %+v", st, ms)
	if ms.StoreBlobs == 0 || st.get("get data") > 12 {
		t.Errorf("cold nightly: %v, %d metadata blobs from the store; want them in a few requests", st, ms.StoreBlobs)
	}
	r, _ := e.open(cold)
	defer r.Close()
	e.checkRestore(r, snap)
}

// TestMetaCacheDamagedEntries: whatever a cache entry holds in place of
// the blob it is named by, a read gets the blob's plaintext (fetched again
// from the store), drops the bad entry and caches the good one; a good
// entry costs no request.
func TestMetaCacheDamagedEntries(t *testing.T) {
	e := newCacheEnv(t)
	cache := filepath.Join(t.TempDir(), "cache")
	snap, _, _ := e.backup(cache)
	root, err := ParseID(snap.Root[0])
	if err != nil {
		t.Fatal(err)
	}
	r0, _ := e.open("")
	if err := r0.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	br := r0.newBlobReader()
	plain, err := br.chunk(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	want := string(plain)
	// Another blob of the repository, and a blob of another repository,
	// both cached.
	var other ID
	filepath.WalkDir(filepath.Join(cache, r0.cfg.ID, "meta"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && len(d.Name()) == 64 && d.Name() != root.String() {
			other, _ = ParseID(d.Name())
		}
		return nil
	})
	br.close()
	r0.Close()
	e2 := newCacheEnv(t)
	cache2 := filepath.Join(t.TempDir(), "cache2")
	e2.backup(cache2)
	var foreign string
	filepath.WalkDir(cache2, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && len(d.Name()) == 64 {
			foreign = p
		}
		return nil
	})

	entry := func(id ID) string {
		h := id.String()
		return filepath.Join(cache, r0.cfg.ID, "meta", h[:2], h)
	}
	p := entry(root)
	good, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	otherEntry, _ := os.ReadFile(entry(other))
	foreignEntry, _ := os.ReadFile(foreign)
	flip := func(i int) func() {
		return func() {
			b := slices.Clone(good)
			b[(i+len(b))%len(b)] ^= 1
			os.WriteFile(p, b, 0o600)
		}
	}
	write := func(b []byte) func() { return func() { os.WriteFile(p, b, 0o600) } }
	for _, tc := range []struct {
		name   string
		damage func()
		bad    bool // the entry is dropped (and fetched)
		gone   bool // the entry is missing (fetched, nothing dropped)
	}{
		{name: "intact", damage: func() {}},
		{name: "missing", damage: func() { os.Remove(p) }, gone: true},
		{name: "a bit of the blob flipped", damage: flip(-3), bad: true},
		{name: "a bit of the tag flipped", damage: flip(-16), bad: true},
		{name: "truncated by a crash", damage: write(good[:len(good)/2]), bad: true},
		{name: "header only", damage: write(good[:metaEntryHeader]), bad: true},
		{name: "empty", damage: write(nil), bad: true},
		{name: "not an entry", damage: write([]byte("WMC2" + string(good[4:]))), bad: true},
		{name: "another pack", damage: flip(4), bad: true},
		{name: "another counter", damage: flip(39), bad: true},
		{name: "other flags", damage: flip(40), bad: true},
		{name: "flags out of range", damage: func() { b := slices.Clone(good); b[40] = 0x80; os.WriteFile(p, b, 0o600) }, bad: true},
		{name: "another raw length", damage: flip(44), bad: true},
		{name: "another blob's entry", damage: write(otherEntry), bad: true},
		{name: "another repository's entry", damage: write(foreignEntry), bad: true},
		{name: "oversized", damage: write(append(slices.Clone(good), make([]byte, metaMaxSealed)...)), bad: true},
		{name: "a symlink to the good entry", damage: func() {
			keep := filepath.Join(t.TempDir(), "kept")
			os.WriteFile(keep, good, 0o600)
			os.Remove(p)
			os.Symlink(keep, p)
		}, bad: true},
		{name: "a FIFO", damage: func() { os.Remove(p); unix.Mkfifo(p, 0o600) }, bad: true},
		{name: "a directory", damage: func() { os.Remove(p); os.Mkdir(p, 0o700) }, gone: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(p)
			if err := os.WriteFile(p, good, 0o600); err != nil {
				t.Fatal(err)
			}
			tc.damage()
			r, st := e.open(cache)
			if err := r.LoadIndex(context.Background()); err != nil {
				t.Fatal(err)
			}
			st.reset()
			br := r.newBlobReader()
			done := make(chan struct{})
			var got []byte
			go func() {
				defer close(done)
				got, err = br.meta(context.Background(), root)
			}()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("the read hangs")
			}
			br.close()
			ms := r.MetaCacheStats()
			r.Close()
			if err != nil || string(got) != want {
				t.Fatalf("read %d bytes (%v), want the root piece's %d", len(got), err, len(want))
			}
			fetched := st.get("get data")
			switch {
			case !tc.bad && !tc.gone && (fetched != 0 || ms.Hits != 1):
				t.Errorf("a good entry: %d pack reads, %d hits", fetched, ms.Hits)
			case tc.bad && (fetched != 1 || ms.Dropped != 1):
				t.Errorf("a bad entry: %d pack reads, %d dropped; want 1 and 1", fetched, ms.Dropped)
			case tc.gone && fetched != 1:
				t.Errorf("no entry: %d pack reads, want 1", fetched)
			}
			// The entry is good again: the next process reads it.
			r, st = e.open(cache)
			if err := r.LoadIndex(context.Background()); err != nil {
				t.Fatal(err)
			}
			st.reset()
			br = r.newBlobReader()
			got, err = br.meta(context.Background(), root)
			br.close()
			r.Close()
			if err != nil || string(got) != want || st.get("get data") != 0 {
				t.Errorf("after the refetch: %v, %d pack reads", err, st.get("get data"))
			}
		})
	}
}

// TestMetaCacheAfterRewrite: entries sealed under a key epoch that `key
// rotate --rewrite` retired no longer open: they are stale, dropped and
// fetched again, and restores go on as before.
func TestMetaCacheAfterRewrite(t *testing.T) {
	ctx := context.Background()
	e := newCacheEnv(t)
	cache := filepath.Join(t.TempDir(), "cache")
	snap, _, _ := e.backup(cache)
	r, _ := e.open(cache)
	if _, err := r.Rotate(ctx, RotateOptions{Keep: []KeepSlot{{ID: r.UnlockedWith(), Secret: e.rk[:]}}, Rewrite: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rewrite(ctx, nil); err != nil {
		t.Fatal(err)
	}
	r.Close()
	for _, run := range []string{"stale entries", "fetched again"} {
		r, st := e.open(cache)
		e.checkRestore(r, snap)
		ms := r.MetaCacheStats()
		r.Close()
		t.Logf("%s: %v; cache %+v", run, st, ms)
		if run == "stale entries" && (ms.Dropped == 0 || ms.StoreBlobs == 0) {
			t.Errorf("entries of the retired epoch: %d dropped, %d blobs read from the store", ms.Dropped, ms.StoreBlobs)
		}
		if run == "fetched again" && (ms.Dropped != 0 || ms.StoreBlobs != 0) {
			t.Errorf("after the refetch: %d dropped, %d blobs read from the store", ms.Dropped, ms.StoreBlobs)
		}
	}
}

// TestMetaCacheBound: the cache stays within its size, evicting the least
// recently used entries first.
func TestMetaCacheBound(t *testing.T) {
	t.Run("eviction order", func(t *testing.T) {
		dir := t.TempDir()
		c, err := openMetaCache(dir, false, 64*metaBlock)
		if err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		var ids []ID
		for i := 0; i < 100; i++ {
			id := NewRandomID()
			ids = append(ids, id)
			os.MkdirAll(filepath.Dir(c.path(id)), 0o700)
			if err := os.WriteFile(c.path(id), make([]byte, 100), 0o600); err != nil {
				t.Fatal(err)
			}
			at := old.Add(time.Duration(i) * time.Second)
			os.Chtimes(c.path(id), at, at)
		}
		// The ten oldest were used a moment ago.
		for _, id := range ids[:10] {
			now := time.Now()
			os.Chtimes(c.path(id), now, now)
		}
		total, removed := trimMetaDir(dir, c.limit)
		if total > c.limit*9/10 || removed < 100-57 {
			t.Errorf("after the trim: %d bytes, %d removed; want at most %d", total, removed, c.limit*9/10)
		}
		for i, id := range ids {
			kept := c.has(id)
			switch {
			case i < 10 && !kept:
				t.Errorf("entry %d, used last, was evicted", i)
			case i >= 10 && i < 10+removed && kept:
				t.Errorf("entry %d, among the least recently used, was kept", i)
			case i >= 10+removed && !kept:
				t.Errorf("entry %d, newer than those evicted, was evicted", i)
			}
		}
	})
	t.Run("a repository's cache", func(t *testing.T) {
		e := newCacheEnv(t)
		cache := filepath.Join(t.TempDir(), "cache")
		const limit = 40 * metaBlock
		var snap *Snapshot
		for day := 0; day < 3; day++ {
			e.dayOfUse(day)
			r, _ := e.open(cache)
			r.SetMetaCacheSize(limit)
			var err error
			if snap, err = r.Backup(context.Background(), BackupOptions{DB: e.db(), Media: e.media(), Host: "h", DBCheck: "quick"}); err != nil {
				t.Fatal(err)
			}
			ms := r.MetaCacheStats()
			r.Close()
			used, entries := metaDirUsage(t, filepath.Join(cache, r.cfg.ID, "meta"))
			t.Logf("day %d: %d entries, %d bytes; %+v", day, entries, used, ms)
			if used > limit {
				t.Errorf("day %d: the cache takes %d bytes, more than its %d", day, used, limit)
			}
		}
		r, _ := e.open(cache)
		r.SetMetaCacheSize(limit)
		defer r.Close()
		e.checkRestore(r, snap)
	})
}

// TestMetaCacheSymlinks: a symlink planted in the cache directory does not
// lead eviction or writes to files elsewhere.
func TestMetaCacheSymlinks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "meta")
	c, err := openMetaCache(dir, false, metaBlock)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	old := time.Now().Add(-48 * time.Hour)
	victims := []string{"notes.txt", ".tmp-x", strings.Repeat("00", 32)}
	for _, n := range victims {
		p := filepath.Join(outside, n)
		if err := os.WriteFile(p, make([]byte, 10000), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "00")); err != nil {
		t.Fatal(err)
	}
	trimMetaDir(dir, metaBlock)
	id := ID{0, 1} // its entry goes into 00/
	c.put(ID{1}, blobEntry{ID: id, RawLen: 1}, make([]byte, 40))
	for _, n := range victims {
		if _, err := os.Stat(filepath.Join(outside, n)); err != nil {
			t.Errorf("%s, behind a symlink in the cache, was removed: %v", n, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, "00")); err != nil || !fi.IsDir() {
		t.Errorf("the symlink was not replaced by a directory of the cache: %v", err)
	}
	if !c.has(id) {
		t.Error("the entry was not written")
	}
	if _, err := os.Stat(filepath.Join(outside, id.String())); err == nil {
		t.Error("the entry was written through the symlink")
	}
	// A cache directory that is itself a symlink is not used.
	link := filepath.Join(t.TempDir(), "meta")
	os.Symlink(outside, link)
	if _, err := openMetaCache(link, false, 0); err == nil {
		t.Error("a symlink was opened as a cache directory")
	}
}

func metaDirUsage(t *testing.T, dir string) (int64, int) {
	t.Helper()
	var total int64
	n := 0
	if err := walkMetaDir(dir, func(e metaEntryInfo) { total += e.size; n++ }); err != nil {
		t.Fatal(err)
	}
	return total, n
}

// countStore counts the requests made to a store, by kind and, for Gets,
// by object kind (the name's first component: data, index, snapshots, …).
// Optional interfaces of the wrapped store are not passed on, so the
// repository sees a plain remote store.
type countStore struct {
	cloud.Store
	mu     sync.Mutex
	counts map[string]int // "get data", "list", "put", …
	down   atomic.Int64   // bytes read from Get bodies
}

func newCountStore(st cloud.Store) *countStore {
	return &countStore{Store: st, counts: map[string]int{}}
}

func (s *countStore) add(k string) {
	s.mu.Lock()
	s.counts[k]++
	s.mu.Unlock()
}

func objectKind(name string) string {
	if i := strings.IndexByte(name, '/'); i > 0 {
		return name[:i]
	}
	return name
}

func (s *countStore) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	s.add("get " + objectKind(name))
	rc, err := s.Store.Get(ctx, name, off, length)
	if err != nil {
		return nil, err
	}
	return &countReader{ReadCloser: rc, n: &s.down}, nil
}

func (s *countStore) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	s.add("put")
	return s.Store.Put(ctx, name, r, size)
}

func (s *countStore) Stat(ctx context.Context, name string) (cloud.ObjectInfo, error) {
	s.add("stat")
	return s.Store.Stat(ctx, name)
}

func (s *countStore) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	s.add("list")
	return s.Store.List(ctx, prefix, fn)
}

func (s *countStore) Delete(ctx context.Context, name string) error {
	s.add("delete")
	return s.Store.Delete(ctx, name)
}

// get returns the count of one kind ("get data", "list", …); "get" sums
// every Get.
func (s *countStore) get(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kind == "get" {
		n := 0
		for k, v := range s.counts {
			if strings.HasPrefix(k, "get ") {
				n += v
			}
		}
		return n
	}
	return s.counts[kind]
}

func (s *countStore) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.counts {
		n += v
	}
	return n
}

func (s *countStore) reset() {
	s.mu.Lock()
	s.counts = map[string]int{}
	s.mu.Unlock()
	s.down.Store(0)
}

func (s *countStore) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ks []string
	total := 0
	for k, v := range s.counts {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
		total += v
	}
	sort.Strings(ks)
	return fmt.Sprintf("%d requests (%s), %d bytes down", total, strings.Join(ks, " "), s.down.Load())
}

type countReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}
