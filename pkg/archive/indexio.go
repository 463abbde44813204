package archive

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/wabackup/wabackup/pkg/cloud"
)

func indexName(id ID) string { return "index/" + id.String() }

// openIndexCache opens the index cache (once).
func (r *Repository) openIndexCache() error {
	if r.idx != nil {
		return nil
	}
	path := ""
	if r.cacheDir != "" {
		path = filepath.Join(r.cacheDir, r.cfg.ID, "index.sqlite")
	}
	x, err := openIndex(path, r.tmpDir)
	if err != nil && path != "" {
		// An unusable cache directory costs speed, not correctness.
		x, err = openIndex("", r.tmpDir)
	}
	if err != nil {
		return err
	}
	r.idx = x
	return nil
}

// LoadIndex brings the index cache up to date with the repository's
// index objects (once per process): objects it has not seen are read and
// added; if an object it holds is gone (a prune ran), it is rebuilt.
func (r *Repository) LoadIndex(ctx context.Context) error {
	r.idxMu.Lock()
	defer r.idxMu.Unlock()
	if r.idxLoaded {
		return nil
	}
	if err := r.openIndexCache(); err != nil {
		return err
	}
	objs, err := r.listNames(ctx, "index/")
	if err != nil {
		return err
	}
	cached, err := r.idx.files()
	if err != nil {
		return err
	}
	listed := map[string]bool{}
	for _, o := range objs {
		listed[o.Name] = true
	}
	for n := range cached {
		if !listed[n] {
			if err := r.idx.reset(); err != nil {
				return err
			}
			cached = map[string]bool{}
			break
		}
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 4)
	)
	for _, o := range objs {
		if cached[o.Name] {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(name string) {
			defer wg.Done()
			defer func() { <-sem }()
			err := r.loadIndexObject(ctx, r.idx, name)
			mu.Lock()
			if err != nil && first == nil {
				first = err
			}
			mu.Unlock()
		}(o.Name)
	}
	wg.Wait()
	if first != nil {
		return first
	}
	r.idxLoaded = true
	return nil
}

// loadIndexObject adds one index object to idx, in batches, and records
// it as loaded.
func (r *Repository) loadIndexObject(ctx context.Context, idx *Index, name string) error {
	var batch []packIndex
	n := 0
	err := r.readIndexObject(ctx, name, func(p packIndex) error {
		batch = append(batch, p)
		n += len(p.entries)
		if n >= 1<<14 {
			err := idx.addPacks(batch, "")
			batch, n = batch[:0], 0
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return idx.addPacks(batch, name)
}

func (r *Repository) readIndexObject(ctx context.Context, name string, fn func(packIndex) error) error {
	rc, err := r.openObject(ctx, name, false)
	if err != nil {
		return err
	}
	defer rc.Close()
	err = decodeIndex(rc, fn)
	if errors.Is(err, errIndexFormat) {
		return fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	return err
}

// writeIndex stores an index object describing packs, records it in the
// cache, and returns its name and stored size.
func (r *Repository) writeIndex(ctx context.Context, packs []packIndex) (string, int64, error) {
	name := indexName(NewRandomID())
	size, err := r.saveObject(ctx, name, false, func(w io.Writer) error { return encodeIndex(w, packs) })
	if err == nil && r.idx != nil {
		err = r.idx.addPacks(packs, name)
	}
	return name, size, err
}

// readTrailer fetches and authenticates the trailer of a stored pack.
func (r *Repository) readTrailer(ctx context.Context, id ID, size int64) ([]blobEntry, error) {
	name := packName(id)
	if size < 4+tagSize {
		return nil, fmt.Errorf("%s: pack too short (%d bytes): %w", name, size, ErrCorrupt)
	}
	rc, err := r.store.Get(ctx, name, size-4, 4)
	if err != nil {
		return nil, err
	}
	var lb [4]byte
	_, err = io.ReadFull(rc, lb[:])
	rc.Close()
	if truncated(err) {
		return nil, fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	tl := int64(binary.BigEndian.Uint32(lb[:]))
	if tl < tagSize || tl > maxTrailer || tl > size-4 {
		return nil, fmt.Errorf("%s: bad trailer length: %w", name, ErrCorrupt)
	}
	rc, err = r.store.Get(ctx, name, size-4-tl, tl)
	if err != nil {
		return nil, err
	}
	sealed := make([]byte, tl)
	_, err = io.ReadFull(rc, sealed)
	rc.Close()
	if truncated(err) {
		return nil, fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return r.parseTrailer(id, sealed, size)
}

// packIDFromName parses "data/xx/<64 hex>".
func packIDFromName(name string) (ID, bool) {
	base := path.Base(name)
	id, err := ParseID(base)
	if err != nil || name != packName(id) {
		return ID{}, false
	}
	return id, true
}

// listPacks lists the stored packs.
func (r *Repository) listPacks(ctx context.Context) (map[ID]int64, []string, error) {
	packs := map[ID]int64{}
	var strays []string
	err := r.store.List(ctx, "data/", func(fi cloud.ObjectInfo) error {
		id, ok := packIDFromName(fi.Name)
		if !ok {
			strays = append(strays, fi.Name)
			return nil
		}
		packs[id] = fi.Size
		return nil
	})
	return packs, strays, err
}

// adoptPacks finds stored packs that no index object lists (left by an
// interrupted backup) and reads their trailers, so their chunks can be
// reused instead of re-sent. It returns them (the caller writes them to a
// new index object, which is what adds them to the index cache) and one
// warning per pack it could not read.
func (r *Repository) adoptPacks(ctx context.Context) ([]packIndex, []string, error) {
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, nil, err
	}
	return r.adoptPacksFrom(ctx, stored)
}

// adoptPacksFrom is adoptPacks with the listing already made.
func (r *Repository) adoptPacksFrom(ctx context.Context, stored map[ID]int64) ([]packIndex, []string, error) {
	var adopted []packIndex
	var warns []string
	for id, size := range stored {
		if r.idx.hasPack(id) {
			continue
		}
		entries, err := r.readTrailer(ctx, id, size)
		if err != nil {
			if errors.Is(err, ErrCorrupt) {
				warns = append(warns, err.Error())
				continue
			}
			return nil, nil, err
		}
		adopted = append(adopted, packIndex{id: id, size: size, entries: entries})
	}
	return adopted, warns, nil
}

func shortName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 && len(name)-i > 12 {
		return name[:i+1] + name[i+1:i+13] + "…"
	}
	return name
}

// badPacks is what markBadPacks found.
type badPacks struct {
	ids    map[ID]bool // the packs marked bad
	lost   []ID        // their chunks no other pack holds
	lostIn map[ID]int  // how many of those each bad pack held
	warn   []string    // one warning about the bad packs, if any
}

// markBadPacks compares the index with a listing of the store: an indexed
// pack the store does not have, or has at another size, is marked bad in
// the index (its chunks are located in other copies, or count as not
// stored).
func (r *Repository) markBadPacks(stored map[ID]int64) (*badPacks, error) {
	packs, err := r.idx.allPacks()
	if err != nil {
		return nil, err
	}
	res := &badPacks{ids: map[ID]bool{}}
	var bad []ID
	var names []string
	for _, p := range packs {
		if size, ok := stored[p.id]; !ok || size != p.size {
			bad = append(bad, p.id)
			res.ids[p.id] = true
			names = append(names, shortName(packName(p.id)))
		}
	}
	if res.lost, res.lostIn, err = r.idx.markBad(bad); err != nil || len(bad) == 0 {
		return res, err
	}
	if len(names) > 3 {
		names = append(names[:3], "…")
	}
	what := "their chunks are all stored in other packs (prune, or repair index, drops the reference)"
	if len(res.lost) > 0 {
		what = fmt.Sprintf("%d of their chunks are stored nowhere else: sent again if the source still has them", len(res.lost))
	}
	res.warn = []string{fmt.Sprintf("%d pack(s) the index lists are missing or truncated in the store (%s): %s", len(bad), strings.Join(names, ", "), what)}
	return res, nil
}
