package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// The metadata cache (FORMAT.md §12) keeps, on the local disk, the blobs
// that describe snapshots — directory pieces, page map roots and
// segments — so that a nightly backup reads its parent's description
// without asking the store, and a restore on a machine that has one reads
// it once.
//
// An entry is a blob exactly as its pack holds it, encrypted, with what
// opening it takes:
//
//	entry = "WMC1" || pack id (32) || uint32be(counter) || flags (1) || uint32be(raw_length) || sealed blob
//
// in the file <cache>/<repository id>/meta/<2 hex>/<64 hex blob id>. An
// entry is believed only once it opens like a blob read from its pack
// (AES-GCM under the pack's key, nonce from the counter, the blob id and
// flags as associated data; decompressed to raw_length) and
// HMAC(K_id, plaintext) equals the id its file is named by. One that does
// not is removed and the blob read from the store again. So the cache
// holds nothing the store does not (it is encrypted as the packs are), an
// entry of another repository or of a key epoch retired since never opens
// (the pack key differs), and a blob's content never goes stale: its id
// names it.

const (
	// DefaultMetaCacheSize is the disk space the metadata cache of one
	// repository may take: a 200 MiB chat database's page map takes
	// about 6 MiB of it, a tree of 100,000 files about 12 MiB, so a
	// nightly backup's parent fits many times over.
	DefaultMetaCacheSize = 256 << 20

	metaCacheMagic  = "WMC1"
	metaEntryHeader = 4 + 32 + 4 + 1 + 4
	// metaMaxSealed is the largest sealed blob (a blob's raw length is at
	// most maxChunkSize and it is kept compressed only when smaller).
	metaMaxSealed = maxChunkSize + tagSize
	// metaBlock is the least an entry counts for: a file takes whole
	// blocks of the file system.
	metaBlock = 4096
	// metaUsageFile holds the last full count of the cache's size (a
	// hint: it only decides when the cache is counted again).
	metaUsageFile = "usage"
	// metaRescan is how old that count may be before the end of a run
	// that stored entries counts the cache again.
	metaRescan = 24 * time.Hour
	// metaStaleTemp is how old a temporary file (of a writer that died)
	// is before a trim removes it.
	metaStaleTemp = time.Hour
	// metaTrimBuckets is the resolution of the eviction's age histogram.
	metaTrimBuckets = 1024
)

// metaCache is one repository's metadata cache directory. Safe for
// concurrent use, and for use by several processes at once: entries are
// written under a temporary name and renamed into place, and anything
// missing or damaged is only a miss.
type metaCache struct {
	dir   string
	temp  bool // this process's own (no cache directory): removed by close
	limit int64
	start time.Time

	mu    sync.Mutex
	made  [256]bool
	added int64 // bytes stored since the last count
	wrote bool
	seq   atomic.Uint64

	hits, misses, dropped, stored atomic.Int64
	// suspect is set once an entry did not authenticate: entries may be
	// stale (a retired key epoch) or tampered with, so a prefetch opens
	// the ones it finds instead of taking them for present.
	suspect atomic.Bool

	// Entries a backup creates are written by a goroutine of their own
	// (putLater), at most metaQueueBytes of them waiting.
	queueOnce sync.Once
	queue     chan metaPut
	queueDone chan struct{}
	queueMu   sync.Mutex
	queueCond *sync.Cond
	queued    int64
}

// metaPut is an entry waiting to be written.
type metaPut struct {
	pack   ID
	e      blobEntry
	sealed []byte
}

// metaQueueBytes bounds the entries waiting to be written.
const metaQueueBytes = 4 << 20

// MetaCacheStats counts what the metadata cache did in one process.
type MetaCacheStats struct {
	Hits    int64 // blobs read from the cache
	Misses  int64 // blobs looked up and not found
	Dropped int64 // entries that did not authenticate, removed
	Stored  int64 // entries written
	// StoreBlobs is how many metadata blobs were read from the store.
	StoreBlobs int64
}

func openMetaCache(dir string, temp bool, limit int64) (*metaCache, error) {
	if limit <= 0 {
		limit = DefaultMetaCacheSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := realDir(dir); err != nil {
		return nil, err
	}
	// Writable? (A read-only cache would make every run fetch again.)
	probe := filepath.Join(dir, fmt.Sprintf(".tmp-probe-%d", os.Getpid()))
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return nil, err
	}
	os.Remove(probe)
	return &metaCache{dir: dir, temp: temp, limit: limit, start: time.Now()}, nil
}

// realDir checks that dir is a directory and not a symlink: the cache
// writes and removes files below it, and its directory is as little
// trusted as the store (a symlink planted there must not point them at
// other files).
func realDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

func (c *metaCache) path(id ID) string {
	h := id.String()
	return filepath.Join(c.dir, h[:2], h)
}

// has reports whether an entry for id exists (not whether it is good).
func (c *metaCache) has(id ID) bool {
	fi, err := os.Lstat(c.path(id))
	return err == nil && fi.Mode().IsRegular()
}

// present reports whether the cache holds an entry for id that a read
// will find: one that exists, or, once entries were found bad, one that
// authenticates (b is used for that).
func (c *metaCache) present(b *blobReader, id ID) bool {
	if !c.suspect.Load() {
		return c.has(id)
	}
	_, ok := c.read(b, id)
	return ok
}

// get returns the plaintext of blob id from its entry, authenticated, or
// false. The slice is valid until b's next read.
func (c *metaCache) get(b *blobReader, id ID) ([]byte, bool) {
	plain, ok := c.read(b, id)
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return plain, ok
}

// read is get without the counting.
func (c *metaCache) read(b *blobReader, id ID) ([]byte, bool) {
	p := c.path(id)
	// No symlink is followed and no FIFO waited for: the cache directory
	// is as little trusted as the store.
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			c.drop(p)
		}
		return nil, false
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() < metaEntryHeader+tagSize || fi.Size() > metaEntryHeader+metaMaxSealed {
		c.drop(p)
		return nil, false
	}
	n := int(fi.Size())
	if cap(b.cbuf) < n {
		b.cbuf = make([]byte, n)
	}
	buf := b.cbuf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		c.drop(p)
		return nil, false
	}
	pack, e, sealed, ok := parseMetaEntry(id, buf)
	var plain []byte
	if ok {
		plain, err = b.open(pack, e, sealed)
		ok = err == nil
	}
	if !ok {
		c.drop(p)
		return nil, false
	}
	if fi.ModTime().Before(c.start) {
		// Used: the least recently used entries are evicted first. Once
		// per run is enough.
		now := time.Now()
		_ = os.Chtimes(p, now, now)
	}
	return plain, true
}

// parseMetaEntry splits an entry into the pack it was read from, its
// trailer fields and the sealed blob.
func parseMetaEntry(id ID, buf []byte) (ID, blobEntry, []byte, bool) {
	var pack ID
	if len(buf) < metaEntryHeader+tagSize || string(buf[:4]) != metaCacheMagic {
		return pack, blobEntry{}, nil, false
	}
	copy(pack[:], buf[4:36])
	e := blobEntry{ID: id, Counter: binary.BigEndian.Uint32(buf[36:40]), Flags: buf[40], RawLen: binary.BigEndian.Uint32(buf[41:45])}
	sealed := buf[metaEntryHeader:]
	e.Length = uint32(len(sealed))
	if e.Flags&^flagZstd != 0 || e.RawLen > maxChunkSize {
		return pack, e, nil, false
	}
	return pack, e, sealed, true
}

func appendMetaHeader(b []byte, pack ID, e blobEntry) []byte {
	b = append(b, metaCacheMagic...)
	b = append(b, pack[:]...)
	b = binary.BigEndian.AppendUint32(b, e.Counter)
	b = append(b, e.Flags)
	return binary.BigEndian.AppendUint32(b, e.RawLen)
}

func (c *metaCache) drop(p string) {
	c.suspect.Store(true)
	if realDir(filepath.Dir(p)) != nil {
		return // not through a symlink
	}
	if os.RemoveAll(p) == nil {
		c.dropped.Add(1)
	}
}

// put stores the sealed blob e of pack (already authenticated by the
// caller). Failures are ignored: it is a cache.
func (c *metaCache) put(pack ID, e blobEntry, sealed []byte) {
	if len(sealed) < tagSize || len(sealed) > metaMaxSealed {
		return
	}
	h := e.ID.String()
	sub := filepath.Join(c.dir, h[:2])
	c.mu.Lock()
	made := c.made[e.ID[0]]
	c.mu.Unlock()
	if !made {
		if err := os.Mkdir(sub, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return
		}
		if realDir(sub) != nil {
			// Not ours (a symlink, a file): replaced by a directory.
			if os.Remove(sub) != nil || os.Mkdir(sub, 0o700) != nil {
				return
			}
		}
		c.mu.Lock()
		c.made[e.ID[0]] = true
		c.mu.Unlock()
	}
	tmp := filepath.Join(sub, fmt.Sprintf(".tmp-%d-%d", os.Getpid(), c.seq.Add(1)))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return
	}
	var hdr [metaEntryHeader]byte
	_, err = f.Write(appendMetaHeader(hdr[:0], pack, e))
	if err == nil {
		_, err = f.Write(sealed)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	// No fsync: an entry a crash truncates fails to authenticate and is
	// fetched again.
	if err == nil {
		err = os.Rename(tmp, filepath.Join(sub, h))
	}
	if err != nil {
		os.Remove(tmp)
		return
	}
	c.stored.Add(1)
	c.mu.Lock()
	c.added += blocks(int64(metaEntryHeader + len(sealed)))
	c.wrote = true
	over := c.added > c.limit/8
	c.mu.Unlock()
	if over {
		// A run that stores much (a cold read of a large tree) keeps the
		// cache within its bound as it goes.
		c.trim()
	}
}

// putLater is put, done by the cache's writer goroutine: a backup's
// metaSaver does not wait for the file system (a write costs about 0.2
// ms, a night stores some 600 entries). sealed is copied. It waits while
// metaQueueBytes are waiting already.
func (c *metaCache) putLater(pack ID, e blobEntry, sealed []byte) {
	c.queueOnce.Do(func() {
		c.queue = make(chan metaPut, 1024)
		c.queueDone = make(chan struct{})
		c.queueCond = sync.NewCond(&c.queueMu)
		go func() {
			defer close(c.queueDone)
			for p := range c.queue {
				c.put(p.pack, p.e, p.sealed)
				c.queueMu.Lock()
				c.queued -= int64(len(p.sealed))
				c.queueCond.Broadcast()
				c.queueMu.Unlock()
			}
		}()
	})
	n := int64(len(sealed))
	c.queueMu.Lock()
	for c.queued > 0 && c.queued+n > metaQueueBytes {
		c.queueCond.Wait()
	}
	c.queued += n
	c.queueMu.Unlock()
	c.queue <- metaPut{pack: pack, e: e, sealed: append([]byte(nil), sealed...)}
}

// blocks is the space n bytes take in whole file-system blocks.
func blocks(n int64) int64 { return (n + metaBlock - 1) / metaBlock * metaBlock }

// diskSize is the space a file takes (its blocks, where known).
func diskSize(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks > 0 {
		return st.Blocks * 512
	}
	return blocks(fi.Size())
}

// close ends the process's use of the cache: a temporary one is removed;
// after entries were stored, the cache is kept within its bound.
func (c *metaCache) close() {
	if c == nil {
		return
	}
	if c.queue != nil {
		close(c.queue)
		<-c.queueDone
	}
	if c.temp {
		os.RemoveAll(c.dir)
		return
	}
	c.mu.Lock()
	wrote, added := c.wrote, c.added
	c.mu.Unlock()
	if !wrote {
		return
	}
	total, counted, ok := c.readUsage()
	if !ok || time.Since(counted) > metaRescan || total+added > c.limit {
		c.trim()
		return
	}
	c.writeUsage(total+added, counted)
	c.mu.Lock()
	c.added = 0
	c.mu.Unlock()
}

func (c *metaCache) readUsage() (int64, time.Time, bool) {
	b, err := os.ReadFile(filepath.Join(c.dir, metaUsageFile))
	if err != nil || len(b) > 64 {
		return 0, time.Time{}, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, time.Time{}, false
	}
	total, err1 := strconv.ParseInt(f[0], 10, 64)
	at, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || total < 0 {
		return 0, time.Time{}, false
	}
	return total, time.Unix(at, 0), true
}

func (c *metaCache) writeUsage(total int64, counted time.Time) {
	tmp := filepath.Join(c.dir, fmt.Sprintf(".tmp-usage-%d-%d", os.Getpid(), c.seq.Add(1)))
	if os.WriteFile(tmp, []byte(fmt.Sprintf("%d %d\n", total, counted.Unix())), 0o600) != nil {
		os.Remove(tmp)
		return
	}
	if os.Rename(tmp, filepath.Join(c.dir, metaUsageFile)) != nil {
		os.Remove(tmp)
	}
}

// trim counts the cache and, if it takes more than its bound, removes
// the least recently used entries until it takes 90 % of it.
func (c *metaCache) trim() {
	c.mu.Lock()
	c.added = 0
	c.mu.Unlock()
	total, _ := trimMetaDir(c.dir, c.limit)
	c.writeUsage(total, time.Now())
}

// metaEntryInfo is what eviction needs of an entry.
type metaEntryInfo struct {
	path  string
	size  int64
	mtime int64
}

// walkMetaDir calls fn for every entry file of a cache directory, and
// removes temporary files left by writers that died. Entries are read a
// directory at a time, in batches: memory does not grow with the cache.
// Only real directories are walked (never a symlink), and nothing but
// entries and temporary files is looked at or removed.
func walkMetaDir(dir string, fn func(metaEntryInfo)) error {
	if err := realDir(dir); err != nil {
		return err
	}
	for i := 0; i < 256; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("%02x", i))
		if realDir(sub) != nil {
			continue
		}
		fd, err := unix.Open(sub, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		d := os.NewFile(uintptr(fd), sub)
		for {
			ents, err := d.ReadDir(1024)
			for _, de := range ents {
				name := de.Name()
				fi, ierr := de.Info()
				if ierr != nil {
					continue
				}
				if strings.HasPrefix(name, ".tmp-") {
					if fi.Mode().IsRegular() && time.Since(fi.ModTime()) > metaStaleTemp {
						os.Remove(filepath.Join(sub, name))
					}
					continue
				}
				if len(name) != 64 || name[:2] != sub[len(sub)-2:] || !fi.Mode().IsRegular() {
					continue // not an entry: never read, not counted
				}
				fn(metaEntryInfo{path: filepath.Join(sub, name), size: diskSize(fi), mtime: fi.ModTime().UnixNano()})
			}
			if err == io.EOF || len(ents) == 0 {
				break
			}
			if err != nil {
				d.Close()
				return err
			}
		}
		d.Close()
	}
	return nil
}

// trimMetaDir evicts the least recently used entries of a cache directory
// that takes more than limit, down to 90 % of it, and returns what it
// takes then and how many entries it removed. It walks the directory
// three times (size, a histogram of ages, removal), holding a fixed-size
// histogram, not a list of entries: entries are removed oldest first at a
// resolution of 1/1024 of the span between the oldest and the newest.
func trimMetaDir(dir string, limit int64) (int64, int) {
	var total int64
	lo, hi := int64(1<<63-1), int64(-1<<63)
	if walkMetaDir(dir, func(e metaEntryInfo) {
		total += e.size
		lo, hi = min(lo, e.mtime), max(hi, e.mtime)
	}) != nil || total <= limit {
		return total, 0
	}
	span := hi - lo + 1
	bucket := func(t int64) int {
		return int(min(metaTrimBuckets-1, max(0, (t-lo)/(span/metaTrimBuckets+1))))
	}
	var hist [metaTrimBuckets]int64
	walkMetaDir(dir, func(e metaEntryInfo) { hist[bucket(e.mtime)] += e.size })
	target := limit / 10 * 9
	cut := 0 // buckets below cut are removed
	for left := total; cut < metaTrimBuckets && left > target; cut++ {
		left -= hist[cut]
	}
	removed := 0
	walkMetaDir(dir, func(e metaEntryInfo) {
		if bucket(e.mtime) < cut && os.Remove(e.path) == nil {
			total -= e.size
			removed++
		}
	})
	return total, removed
}

// metaCacheFor returns the repository's metadata cache, opened on first
// use: in the cache directory beside the index cache, or, without one (or
// if it cannot be written), in a temporary directory for this process.
// nil for a repository in a local directory (its packs are read as fast
// as the cache, which would only cost writes), or if no directory can be
// made.
func (r *Repository) metaCacheFor() *metaCache {
	r.metaOnce.Do(func() {
		if _, local := r.store.(cloud.FileStore); local {
			return
		}
		if r.cacheDir != "" && r.cfg != nil {
			repoDir := filepath.Join(r.cacheDir, r.cfg.ID)
			if c, err := openMetaCache(filepath.Join(repoDir, "meta"), false, r.metaLimit); err == nil {
				now := time.Now()
				_ = os.Chtimes(repoDir, now, now) // when the cache was last used (wabackup cache)
				r.metaC = c
				return
			}
		}
		// Those of runs that were killed go after a day.
		if old, _ := filepath.Glob(filepath.Join(r.tmpDir, "wabackup-meta-*")); len(old) > 0 {
			for _, p := range old {
				if fi, err := os.Lstat(p); err == nil && fi.IsDir() && time.Since(fi.ModTime()) > 24*time.Hour {
					os.RemoveAll(p)
				}
			}
		}
		dir, err := os.MkdirTemp(r.tmpDir, "wabackup-meta-")
		if err != nil {
			return
		}
		if c, err := openMetaCache(dir, true, r.metaLimit); err == nil {
			r.metaC = c
		} else {
			os.RemoveAll(dir)
		}
	})
	return r.metaC
}

// SetMetaCacheSize sets the disk space the metadata cache may take
// (0: DefaultMetaCacheSize). Call it before the repository is used.
func (r *Repository) SetMetaCacheSize(n int64) { r.metaLimit = n }

// MetaCacheStats returns what the metadata cache did so far.
func (r *Repository) MetaCacheStats() MetaCacheStats {
	s := MetaCacheStats{StoreBlobs: r.metaStoreBlobs.Load()}
	if c := r.metaC; c != nil {
		s.Hits, s.Misses, s.Dropped, s.Stored = c.hits.Load(), c.misses.Load(), c.dropped.Load(), c.stored.Load()
	}
	return s
}

// isMetaBlob reports whether a plaintext is a blob the cache keeps: a
// directory piece, a page map root or a segment.
func isMetaBlob(plain []byte) bool {
	return bytes.HasPrefix(plain, []byte(dirPieceMagic)) || bytes.HasPrefix(plain, []byte(pageMapMagic)) || bytes.HasPrefix(plain, []byte(pageSegMagic))
}
