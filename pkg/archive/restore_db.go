package archive

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/wabackup/wabackup/pkg/gather"
)

// loadFunc hands the plaintext of blob id to use (valid during the call).
type loadFunc func(ctx context.Context, id ID, use func([]byte) error) error

// contentSource is how a restore reads the blobs of a node.
type contentSource struct {
	// load reads one blob: a file's chunks; with r unset, a database's
	// page groups too.
	load loadFunc
	// meta reads a page map's root and segments; nil: through load.
	meta loadBlobFunc
	// r, if set, reads a database's page groups in planned ranges
	// (readGroups), with its metadata prefetched through the cache a
	// window at a time; load then only reads the groups those missed.
	r *Repository
	// written, if set, is told the bytes of every page group a planned
	// read wrote (load's caller counts the others).
	written func(n int)
}

// writeContents writes a file node's chunks, or a database node's pages,
// into f (dst names it in messages) and checks the size, one blob at a
// time through load.
func writeContents(ctx context.Context, f *os.File, dst string, n *Node, load loadFunc) error {
	return writeContentsFrom(ctx, f, dst, n, contentSource{load: load})
}

// writeContentsFrom is writeContents reading through src.
func writeContentsFrom(ctx context.Context, f *os.File, dst string, n *Node, src contentSource) error {
	if n.Type == TypeDB {
		return writePages(ctx, f, dst, n, src)
	}
	var written int64
	for _, c := range n.Chunks {
		id, err := ParseID(c)
		if err != nil {
			return err
		}
		err = src.load(ctx, id, func(data []byte) error {
			if _, err := f.Write(data); err != nil {
				return fmt.Errorf("writing %s: %w", dst, err)
			}
			written += int64(len(data))
			return nil
		})
		if err != nil {
			return err
		}
	}
	if written != n.Size {
		return fmt.Errorf("restoring %s: got %d bytes, snapshot says %d: %w", n.Path, written, n.Size, ErrCorrupt)
	}
	return nil
}

// writePages rebuilds a database file from its page map: window by
// window, each group a window needs is read once and its pages are
// written where they belong. Every page of the database is covered once
// (the page map's segments say so), so the file is the page image of the
// state the backup pinned, byte for byte.
func writePages(ctx context.Context, f *os.File, dst string, n *Node, src contentSource) error {
	root, err := ParseID(n.PageMap)
	if err != nil {
		return fmt.Errorf("restoring %s: %v: %w", n.Path, err, ErrCorrupt)
	}
	loadMeta := src.meta
	if loadMeta == nil {
		var meta []byte
		loadMeta = func(ctx context.Context, id ID) ([]byte, error) {
			err := src.load(ctx, id, func(data []byte) error {
				meta = append(meta[:0], data...)
				return nil
			})
			return meta, err
		}
	}
	var prefetch func([]ID)
	if src.r != nil && src.meta != nil {
		prefetch = func(ids []ID) { src.r.prefetchMeta(ctx, ids, nil) }
	}
	var mu sync.Mutex // written, from the planned reads' goroutines
	m, err := eachPageWindow(ctx, loadMeta, prefetch, root, func(m *pageMap, groups []groupPages) error {
		ps := int(m.pageSize)
		put := func(g *groupPages, data []byte) error {
			if len(data)%ps != 0 {
				return fmt.Errorf("restoring %s: page group %s is %d bytes, not whole pages: %w", n.Path, g.id.Short(), len(data), ErrCorrupt)
			}
			for _, p := range g.pages {
				end := (int(p.slot) + 1) * ps
				if end > len(data) {
					return fmt.Errorf("restoring %s: page %d: group %s has no slot %d: %w", n.Path, p.pgno, g.id.Short(), p.slot, ErrCorrupt)
				}
				if _, err := f.WriteAt(data[end-ps:end], int64(p.pgno-1)*int64(ps)); err != nil {
					return fmt.Errorf("writing %s: %w", dst, err)
				}
			}
			return nil
		}
		if src.r == nil {
			for i := range groups {
				g := &groups[i]
				if err := src.load(ctx, g.id, func(data []byte) error { return put(g, data) }); err != nil {
					return err
				}
			}
			return nil
		}
		return src.r.readGroups(ctx, groups, func(g *groupPages, data []byte) error {
			if err := put(g, data); err != nil {
				return err
			}
			if src.written != nil {
				mu.Lock()
				src.written(len(data))
				mu.Unlock()
			}
			return nil
		}, func(g *groupPages) error {
			return src.load(ctx, g.id, func(data []byte) error { return put(g, data) })
		})
	})
	if err != nil {
		return err
	}
	if int64(m.pageCount)*int64(m.pageSize) != n.Size {
		return fmt.Errorf("restoring %s: page map holds %d pages of %d bytes, snapshot says %d bytes: %w", n.Path, m.pageCount, m.pageSize, n.Size, ErrCorrupt)
	}
	return nil
}

// readGroups reads the page groups of a restore window in planned ranges
// (grouped by pack, groups at most readGap apart read with one request),
// rangeConns requests at once, and calls put with each group's
// authenticated plaintext, from the ranges' goroutines (several at once).
// A group the index does not locate, that its range did not deliver or
// that did not open is then read on its own, one after another, with
// single (its alternatives, unindexed packs, and the errors of a single
// read). Memory: one group (sealed and opened) per request in flight.
func (r *Repository) readGroups(ctx context.Context, groups []groupPages, put func(g *groupPages, data []byte) error, single func(g *groupPages) error) error {
	byID := make(map[ID]int, len(groups))
	var blobs []packBlob
	var later []int // indexes into groups
	for i := range groups {
		g := &groups[i]
		loc, pack, ok := r.idx.lookup(g.id)
		if !ok {
			later = append(later, i)
			continue
		}
		byID[g.id] = i
		blobs = append(blobs, packBlob{pack: pack, e: blobEntry{ID: g.id, Flags: loc.flags, Counter: loc.counter, Offset: loc.offset, Length: loc.length, RawLen: loc.rawLen}})
	}
	conns := r.rangeConns()
	readers := make([]*blobReader, conns)
	defer func() {
		for _, br := range readers {
			if br != nil {
				br.close()
			}
		}
	}()
	var mu sync.Mutex
	retry := func(i int) {
		mu.Lock()
		later = append(later, i)
		mu.Unlock()
	}
	err := r.readRanges(ctx, planRanges(blobs, r.rangeGap()), conns, func(w int, pr *packRange, e blobEntry, sealed []byte) error {
		if readers[w] == nil {
			readers[w] = r.newBlobReader()
		}
		i := byID[e.ID]
		if r.chunkReadHook != nil {
			r.chunkReadHook(int(e.Length))
		}
		plain, err := readers[w].open(pr.pack.id, e, sealed)
		if err != nil {
			retry(i)
			return nil
		}
		return put(&groups[i], plain)
	}, func(_ int, _ *packRange, e blobEntry) error {
		retry(byID[e.ID])
		return nil
	})
	if err != nil {
		return err
	}
	// In the window's order, so the error reported is the same each time.
	slices.Sort(later)
	for _, i := range later {
		if err := single(&groups[i]); err != nil {
			return err
		}
	}
	return nil
}

// CheckStoredDB rebuilds the chat database called name ("" for the
// first) that a snapshot holds into a temporary file (in dir) and runs
// PRAGMA integrity_check on it, without the source. A snapshot without
// that database is an error wrapping ErrNoSnapshot; damage to the stored
// pages wraps ErrCorrupt, a database that fails the check wraps
// gather.ErrCorruptDB.
func (r *Repository) CheckStoredDB(ctx context.Context, snap *Snapshot, name, dir string) error {
	db, err := snap.Database(name)
	if err != nil {
		return err
	}
	path, done, err := r.storedDBNamed(ctx, snap, db.Name(), dir, false)
	if err != nil {
		return err
	}
	defer done()
	return gather.CheckDB(ctx, path, fmt.Sprintf("%s (snapshot %s)", db.Path, snap.ID.Short()), false)
}

// Database returns the snapshot's database called name: its name in the
// tree (msgstore.db) or its source path; "" is the first. A snapshot
// without any database is an error wrapping ErrNoSnapshot.
func (s *Snapshot) Database(name string) (SnapshotDB, error) {
	dbs := s.Databases()
	if len(dbs) == 0 {
		return SnapshotDB{}, fmt.Errorf("snapshot %s holds no database: %w", s.ID.Short(), ErrNoSnapshot)
	}
	if name == "" {
		return dbs[0], nil
	}
	var names []string
	for _, d := range dbs {
		if d.Name() == name || d.Path == name {
			return d, nil
		}
		names = append(names, d.Name())
	}
	return SnapshotDB{}, fmt.Errorf("snapshot %s holds no database %q (it holds %s)", s.ID.Short(), name, strings.Join(names, ", "))
}

// StoredDBNamed rebuilds the chat database called name (as for Database)
// that a snapshot holds into a temporary file in dir (every page
// verified) and returns its path and a function that removes it. Errors
// as for CheckStoredDB.
func (r *Repository) StoredDBNamed(ctx context.Context, snap *Snapshot, name, dir string) (string, func(), error) {
	return r.storedDBNamed(ctx, snap, name, dir, true)
}

// storedDBNamed is StoredDBNamed; cached reads the page map through the
// metadata cache (check --db reads it from the store).
func (r *Repository) storedDBNamed(ctx context.Context, snap *Snapshot, name, dir string, cached bool) (string, func(), error) {
	none := func() {}
	if err := r.LoadIndex(ctx); err != nil {
		return "", none, err
	}
	db, err := snap.Database(name)
	if err != nil {
		return "", none, err
	}
	n, err := r.findTopNodeWith(ctx, snap, db.Name(), cached)
	if err != nil {
		return "", none, err
	}
	if n == nil || n.Type != TypeDB && n.Type != TypeFile {
		return "", none, fmt.Errorf("snapshot %s: its database %s cannot be found in the tree: %w", snap.ID.Short(), db.Name(), ErrCorrupt)
	}
	return r.storedNodeDBFrom(ctx, "snapshot "+snap.ID.Short(), n, dir, cached)
}

// storedNodeDB rebuilds the database node n (of the snapshot label names
// in messages) into a temporary file in dir, every page verified, and
// returns its path and a function that removes it.
func (r *Repository) storedNodeDB(ctx context.Context, label string, n *Node, dir string) (string, func(), error) {
	return r.storedNodeDBFrom(ctx, label, n, dir, true)
}

// storedNodeDBFrom is storedNodeDB; cached reads the page map through the
// metadata cache.
func (r *Repository) storedNodeDBFrom(ctx context.Context, label string, n *Node, dir string, cached bool) (string, func(), error) {
	none := func() {}
	tmp, err := os.MkdirTemp(dir, "wabackup-db-")
	if err != nil {
		return "", none, err
	}
	done := func() { os.RemoveAll(tmp) }
	path := filepath.Join(tmp, filepath.Base(filepath.FromSlash(n.Path)))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		done()
		return "", none, err
	}
	br := r.newBlobReader()
	defer br.close()
	load := func(ctx context.Context, id ID, use func([]byte) error) error {
		data, err := br.chunk(ctx, id)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", label, n.Path, err)
		}
		return use(data)
	}
	src := contentSource{load: load, r: r}
	if cached {
		src.meta = func(ctx context.Context, id ID) ([]byte, error) {
			data, err := br.meta(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", label, n.Path, err)
			}
			return data, nil
		}
	}
	err = writeContentsFrom(ctx, f, path, n, src)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		done()
		return "", none, err
	}
	return path, done, nil
}
