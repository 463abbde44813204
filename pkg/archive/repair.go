package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"time"
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

// RepairedSnapshot is a snapshot made by RepairSnapshots.
type RepairedSnapshot struct {
	From    *Snapshot
	New     *Snapshot // nil if nothing was lost (no new snapshot made)
	Dropped []string  // the files (and databases) left out
}

// RepairSnapshots makes, for each given snapshot that references data no
// longer stored, a new snapshot without the files (and database) that
// need it, marked RepairedFrom the original. Originals are kept (until
// forget); check then reports their damage as warnings that point at the
// repaired copy. What is lost is judged against a listing of the store
// (missing or truncated packs) and the index, as check without
// --read-data judges it. The caller holds an exclusive lock.
func (r *Repository) RepairSnapshots(ctx context.Context, snaps []*Snapshot, dryRun bool) ([]RepairedSnapshot, error) {
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := r.markBadPacks(stored); err != nil {
		return nil, err
	}
	saver := &plainSaver{r: r, h: r.keys.newIDHasher(), z: newCompressor(256 << 10)}
	defer saver.z.close()
	var out []RepairedSnapshot
	for _, s := range snaps {
		rep, err := r.repairSnapshot(ctx, s, saver, dryRun)
		if err != nil {
			return out, fmt.Errorf("snapshot %s: %w", s.ID.Short(), err)
		}
		out = append(out, rep)
	}
	return out, nil
}

func (r *Repository) repairSnapshot(ctx context.Context, s *Snapshot, saver *plainSaver, dryRun bool) (RepairedSnapshot, error) {
	rep := RepairedSnapshot{From: s}
	tr, err := r.OpenTree(ctx, s)
	if err != nil {
		return rep, err
	}
	defer tr.Close()
	tw := newDirTreeWriter(ctx, saver)
	var stats Stats
	br := r.newBlobReader()
	defer br.close()
	for {
		n, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return rep, err
		}
		if n.Type == TypeFile || n.Type == TypeDB {
			if !r.nodeStored(ctx, br, n) {
				rep.Dropped = append(rep.Dropped, n.Path)
				continue
			}
			stats.Files++
			stats.Bytes += n.Size
		}
		if n.Type == TypeDir {
			stats.Dirs++
		}
		if err := tw.add(n); err != nil {
			return rep, err
		}
	}
	if len(rep.Dropped) == 0 || dryRun {
		return rep, nil
	}
	root, err := tw.finish()
	if err != nil {
		return rep, err
	}
	if err := saver.flush(ctx); err != nil {
		return rep, err
	}
	ns := *s
	ns.Version = 2 // the snapshot header version (not the repository format)
	ns.Tree = ""
	ns.Root = nil
	for _, id := range root {
		ns.Root = append(ns.Root, id.String())
	}
	// The same moment as the original, one nanosecond later, so that
	// "latest" names the repaired copy.
	ns.Time = s.Time.Add(time.Nanosecond)
	ns.RepairedFrom = s.ID.String()
	ns.Dropped = len(rep.Dropped)
	ns.Stats = stats
	ns.ID = NewRandomID()
	data, err := json.Marshal(&ns)
	if err != nil {
		return rep, err
	}
	if _, err := r.saveObject(ctx, snapshotName(ns.ID), false, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}); err != nil {
		return rep, err
	}
	rep.New = &ns
	return rep, nil
}

// nodeStored reports whether everything a file or database node needs is
// indexed in a stored pack.
func (r *Repository) nodeStored(ctx context.Context, br *blobReader, n *Node) bool {
	if n.Type == TypeFile {
		for _, c := range n.Chunks {
			id, err := ParseID(c)
			if err != nil || !r.idx.Has(id) {
				return false
			}
		}
		return true
	}
	root, err := ParseID(n.PageMap)
	if err != nil || !r.idx.Has(root) {
		return false
	}
	ok := true
	_, err = walkSegments(ctx, br.chunk, root, map[ID]bool{}, nil, func(m *pageMap, seg *pageSegment) error {
		for _, g := range seg.groups {
			if !r.idx.Has(g) {
				ok = false
				return errStopWalk
			}
		}
		return nil
	})
	return ok && err == nil
}

var errStopWalk = errors.New("stop")

// plainSaver stores tree blobs outside a backup: deduplicated against the
// index, in packs of their own, described by one index object at flush.
type plainSaver struct {
	r     *Repository
	h     hash.Hash
	z     *compressor
	pw    *packWriter
	packs []packIndex
	buf   []byte
	seen  map[ID]bool
}

func (p *plainSaver) saveTreeBlob(ctx context.Context, data []byte) (ID, error) {
	var id ID
	p.h.Reset()
	p.h.Write(data)
	p.h.Sum(id[:0])
	if p.seen == nil {
		p.seen = map[ID]bool{}
	}
	if p.seen[id] || p.r.idx.Has(id) {
		return id, nil
	}
	p.seen[id] = true
	if cap(p.buf) < len(data)+tagSize {
		p.buf = make([]byte, 0, len(data)+tagSize)
	}
	p.buf = append(p.buf[:0], data...)
	payload, flags := p.z.compress(p.buf, hintAuto)
	if p.pw == nil {
		pw, err := p.r.newPackWriter()
		if err != nil {
			return id, err
		}
		p.pw = pw
	}
	if err := p.pw.add(id, flags, payload, len(data)); err != nil {
		return id, err
	}
	if p.pw.size >= p.r.cfg.PackSize {
		return id, p.finishPack(ctx)
	}
	return id, nil
}

func (p *plainSaver) finishPack(ctx context.Context) error {
	pw := p.pw
	p.pw = nil
	defer pw.discard()
	size, err := pw.finish()
	if err != nil {
		return err
	}
	if err := p.r.putPack(ctx, pw); err != nil {
		return err
	}
	p.packs = append(p.packs, packIndex{id: pw.id, size: size, entries: pw.entries})
	return nil
}

// flush stores the open pack and writes an index object for the packs.
func (p *plainSaver) flush(ctx context.Context) error {
	if p.pw != nil {
		if err := p.finishPack(ctx); err != nil {
			return err
		}
	}
	if len(p.packs) == 0 {
		return nil
	}
	_, _, err := p.r.writeIndex(ctx, p.packs)
	p.packs = nil
	return err
}
