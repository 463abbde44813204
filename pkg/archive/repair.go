package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
)

// RepairIndexResult says what RepairIndex did (or, dry, would do).
type RepairIndexResult struct {
	Packs    int // packs indexed from their own trailers
	Chunks   int
	Replaced int // index objects replaced
	// Damaged are the packs whose trailer does not open: the chunks the
	// old index located in their stored bytes that still read intact
	// (Salvaged) were copied into new packs, the rest (Lost) are gone;
	// the damaged packs were moved to damaged/.
	Damaged  []string
	Salvaged int
	Lost     int
}

// RepairIndex rebuilds the index from the packs themselves: every stored
// pack's trailer lists its chunks. Packs whose trailer does not open are
// salvaged (the chunks the old index located in them that still read
// intact are copied into new packs) and moved aside to damaged/. The
// caller holds an exclusive lock. Order, as for prune (FORMAT.md §8): new
// packs, then the new index objects, then deletion of the old ones, then
// the damaged packs moved: an interruption leaves a complete index.
func (r *Repository) RepairIndex(ctx context.Context, dryRun bool) (*RepairIndexResult, error) {
	res := &RepairIndexResult{}
	// The old index (as far as it loads) locates chunks in damaged packs.
	if err := r.LoadIndex(ctx); err != nil && !errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]ID, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	var good []packIndex
	var salvage []blobEntry
	var damaged []ID
	for _, id := range ids {
		size := stored[id]
		entries, err := r.readTrailer(ctx, id, size)
		if err == nil {
			good = append(good, packIndex{id: id, size: size, entries: entries})
			res.Chunks += len(entries)
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		damaged = append(damaged, id)
		res.Damaged = append(res.Damaged, packName(id))
		if r.idx != nil {
			old, err := r.idx.packEntries(id)
			if err != nil {
				return nil, err
			}
			for _, e := range old {
				if int64(e.Offset)+int64(e.Length) <= size {
					salvage = append(salvage, e)
				} else {
					res.Lost++
				}
			}
		}
	}
	res.Packs = len(good)
	oldIndex, err := r.listNames(ctx, "index/")
	if err != nil {
		return nil, err
	}
	res.Replaced = len(oldIndex)
	if dryRun {
		res.Salvaged = len(salvage)
		return res, nil
	}
	copied, skipped, err := r.copyChunks(ctx, salvage, true)
	if err != nil {
		return nil, err
	}
	res.Lost += skipped
	for _, p := range copied {
		res.Salvaged += len(p.entries)
	}
	all := append(good, copied...)
	written := map[string]bool{}
	for i := 0; i < len(all); i += indexBatch {
		batch := all[i:min(i+indexBatch, len(all))]
		name := indexName(NewRandomID())
		if _, err := r.saveObject(ctx, name, false, func(w io.Writer) error { return encodeIndex(w, batch) }); err != nil {
			return nil, err
		}
		written[name] = true
	}
	for _, o := range oldIndex {
		if !written[o.Name] {
			if err := r.store.Delete(ctx, o.Name); err != nil {
				return nil, fmt.Errorf("deleting old index object %s: %w", o.Name, err)
			}
		}
	}
	for _, id := range damaged {
		if err := r.moveAside(ctx, id); err != nil {
			return nil, err
		}
	}
	// The cache is rebuilt from the new index objects on the next open.
	if r.idx != nil {
		if err := r.idx.reset(); err != nil {
			return nil, err
		}
	}
	r.idxLoaded = false
	return res, nil
}

// moveAside copies a damaged pack to damaged/<pack id> and deletes it from
// data/, so nothing reads it again but its bytes are kept for a human.
func (r *Repository) moveAside(ctx context.Context, id ID) error {
	name := packName(id)
	fi, err := r.store.Stat(ctx, name)
	if err != nil {
		return err
	}
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return err
	}
	err = r.store.Put(ctx, "damaged/"+id.String(), rc, fi.Size)
	rc.Close()
	if err != nil {
		return fmt.Errorf("moving %s aside: %w", name, err)
	}
	return r.store.Delete(ctx, name)
}
