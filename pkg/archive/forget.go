package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// Policy says which snapshots to keep (FORMAT.md does not depend on it;
// it is the same idea as restic's and borg's).
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// Empty reports whether no rule is set.
func (p Policy) Empty() bool { return p == Policy{} }

// Decision is one snapshot's fate.
type Decision struct {
	Snapshot *Snapshot
	Keep     bool
	Reasons  []string
}

// ApplyPolicy decides, per group of snapshots with the same host and
// sources, which to keep. The result is newest first.
func ApplyPolicy(snaps []*Snapshot, p Policy) []Decision {
	groups := map[string][]*Snapshot{}
	var keys []string
	for _, s := range snaps {
		k := s.SourceKey()
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], s)
	}
	sort.Strings(keys)
	var out []Decision
	for _, k := range keys {
		g := groups[k]
		sort.Slice(g, func(i, j int) bool { return g[i].Time.After(g[j].Time) })
		rules := []struct {
			name string
			n    int
			key  func(time.Time) string
		}{
			{"last", p.Last, func(t time.Time) string { return t.Format(time.RFC3339Nano) }},
			{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15") }},
			{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
			{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-%02d", y, w) }},
			{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
			{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
		}
		counts := make([]int, len(rules))
		lastKey := make([]string, len(rules))
		for i, s := range g {
			d := Decision{Snapshot: s}
			lt := s.Time.Local()
			for ri, rule := range rules {
				if counts[ri] >= rule.n {
					continue
				}
				key := rule.key(lt)
				if rule.name == "last" {
					key = fmt.Sprint(i)
				}
				if key != lastKey[ri] {
					lastKey[ri] = key
					counts[ri]++
					d.Keep = true
					d.Reasons = append(d.Reasons, rule.name)
				}
			}
			out = append(out, d)
		}
	}
	return out
}

// Forget deletes the snapshots the policy does not keep (the caller holds
// an exclusive lock). Data is freed by Prune.
func (r *Repository) Forget(ctx context.Context, p Policy, dryRun bool) ([]Decision, error) {
	if p.Empty() {
		return nil, errors.New("no keep policy given (use --keep-last, --keep-daily, …); refusing to forget every snapshot")
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	ds := ApplyPolicy(snaps, p)
	if dryRun {
		return ds, nil
	}
	removed := map[ID]bool{}
	defer func() { r.forgotHighWater(removed, snaps) }()
	for _, d := range ds {
		if !d.Keep {
			if err := r.store.Delete(ctx, snapshotName(d.Snapshot.ID)); err != nil {
				return ds, err
			}
			removed[d.Snapshot.ID] = true
		}
	}
	return ds, nil
}

// PruneResult counts what Prune did.
type PruneResult struct {
	PacksDeleted  int
	PacksRepacked int
	PacksKept     int
	TreesDeleted  int
	BytesFreed    int64
	// Nothing: there was nothing to prune, and the store was not changed.
	Nothing bool
}

// repackThreshold: a pack whose unused blobs are more than this fraction
// of it is rewritten. Only blobs count as unused, never the pack's own
// header and trailer: a small pack whose every blob is used is kept (its
// trailer may be a third of it, and a copy would have the same one, so
// repacking it would repack it again at every prune).
const repackThreshold = 0.2

// Prune removes data no snapshot references. The caller holds an
// exclusive lock. Order: new packs, then the new index, then deletion of
// old index objects, then of packs and trees: an interruption leaves a
// repository that check passes.
func (r *Repository) Prune(ctx context.Context, dryRun bool) (*PruneResult, error) {
	res := &PruneResult{}
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	// Packs of interrupted backups get an index object first, so the
	// classification below sees them (unused ones are then dropped).
	adopted, _, err := r.adoptPacks(ctx)
	if err != nil {
		return nil, err
	}
	if len(adopted) > 0 && !dryRun {
		if _, _, err := r.writeIndex(ctx, adopted); err != nil {
			return nil, err
		}
	}
	// Packs the index lists that are missing or truncated: their chunks
	// are located in other copies where there are some, so the packs
	// holding those copies are kept; a truncated pack is left as it is
	// (it may still hold readable chunks) and out of the new index.
	stored0, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	bad, err := r.markBadPacks(stored0)
	if err != nil {
		return nil, err
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	used, err := r.idx.newUsedSet()
	if err != nil {
		return nil, err
	}
	defer used.drop()
	trees := map[string]bool{}
	seenSegs := map[ID]bool{}     // page map segments marked so far
	seenDirs := map[string]bool{} // directories (by pieces) marked so far
	for _, s := range snaps {
		trees[s.Tree] = true
		if err := r.markUsed(ctx, s, used, seenSegs, seenDirs); err != nil {
			return nil, err
		}
	}
	if err := used.flush(); err != nil {
		return nil, err
	}
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	// Classify packs one at a time; only the repack list (chunks to copy)
	// and pack ids are held in memory.
	var keep []ID
	var drop []ID
	var repack []blobEntry
	unindexed := 0 // packs the new index leaves out that the old one lists
	err = r.idx.eachPack(func(p packInfo, entries []blobEntry) error {
		size, ok := stored[p.id]
		if !ok {
			unindexed++
			return nil // listed in an index but gone: dropped from it
		}
		delete(stored, p.id)
		if bad.ids[p.id] {
			unindexed++
			return nil // truncated: kept in the store, not indexed
		}
		var usedBytes, unusedBytes int64
		var usedEntries []blobEntry
		for _, e := range entries {
			if used.has(e.ID) {
				usedEntries = append(usedEntries, e)
				usedBytes += int64(e.Length)
			} else {
				unusedBytes += int64(e.Length)
			}
		}
		switch {
		case len(usedEntries) == 0:
			drop = append(drop, p.id)
			res.BytesFreed += size
		case float64(unusedBytes) > repackThreshold*float64(size):
			drop = append(drop, p.id)
			res.PacksRepacked++
			res.BytesFreed += size - usedBytes
			repack = append(repack, usedEntries...)
		default:
			keep = append(keep, p.id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id, size := range stored { // stored but unreadable packs: nothing uses them
		drop = append(drop, id)
		res.BytesFreed += size
	}
	res.PacksDeleted = len(drop) - res.PacksRepacked
	res.PacksKept = len(keep)
	treeObjs, err := r.listNames(ctx, "trees/")
	if err != nil {
		return nil, err
	}
	var dropTrees []string
	for _, o := range treeObjs {
		if !trees[strings.TrimPrefix(o.Name, "trees/")] {
			dropTrees = append(dropTrees, o.Name)
		}
	}
	res.TreesDeleted = len(dropTrees)
	if len(drop) == 0 && len(dropTrees) == 0 && len(adopted) == 0 && unindexed == 0 {
		// Nothing to prune: the index stays as it is.
		res.Nothing = true
		return res, nil
	}
	if dryRun {
		return res, nil
	}
	newPacks, err := r.repack(ctx, repack)
	if err != nil {
		return nil, err
	}
	oldIndex, err := r.listNames(ctx, "index/")
	if err != nil {
		return nil, err
	}
	// New index objects for every kept pack, in batches.
	keepSet := map[ID]bool{}
	for _, id := range keep {
		keepSet[id] = true
	}
	written := map[string]bool{}
	var batch []packIndex
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		name := indexName(NewRandomID())
		if _, err := r.saveObject(ctx, name, false, func(w io.Writer) error { return encodeIndex(w, batch) }); err != nil {
			return err
		}
		written[name] = true
		batch = batch[:0]
		return nil
	}
	err = r.idx.eachPack(func(p packInfo, entries []blobEntry) error {
		if !keepSet[p.id] {
			return nil
		}
		batch = append(batch, packIndex{id: p.id, size: p.size, entries: entries})
		if len(batch) >= indexBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	batch = append(batch, newPacks...)
	if err := flush(); err != nil {
		return nil, err
	}
	for _, o := range oldIndex {
		if !written[o.Name] {
			if err := r.store.Delete(ctx, o.Name); err != nil {
				return nil, err
			}
		}
	}
	for _, id := range drop {
		if err := r.store.Delete(ctx, packName(id)); err != nil {
			return nil, err
		}
		if err := r.store.Delete(ctx, parityName(id)); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return nil, err
		}
	}
	for _, t := range dropTrees {
		if err := r.store.Delete(ctx, t); err != nil {
			return nil, err
		}
	}
	// The cache now lists deleted index objects: the next LoadIndex
	// rebuilds it.
	r.idxLoaded = false
	return res, nil
}

// markUsed adds every blob a snapshot needs to used: its files' chunks,
// and in version 2 its directory pieces and its databases' page maps
// (root, segments, groups).
// Segments in seenSegs and directories in seenDirs were marked for an
// earlier snapshot (with their groups, or everything below them) and are
// not read again.
func (r *Repository) markUsed(ctx context.Context, s *Snapshot, used *usedSet, seenSegs map[ID]bool, seenDirs map[string]bool) error {
	var addErr error
	add := func(id ID) {
		if err := used.add(id); err != nil && addErr == nil {
			addErr = err
		}
	}
	tr, err := r.openTree(ctx, s, add, seenDirs)
	if err != nil {
		return err
	}
	defer tr.Close()
	br := r.newBlobReader()
	defer br.close()
	for addErr == nil {
		n, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("prune needs every snapshot readable: %w", err)
		}
		if n.Type == TypeDB {
			root, err := ParseID(n.PageMap)
			if err != nil {
				return fmt.Errorf("prune needs every snapshot readable: %s: %v: %w", n.Path, err, ErrCorrupt)
			}
			_, err = walkSegments(ctx, br.chunk, root, seenSegs, add, func(_ *pageMap, seg *pageSegment) error {
				for _, g := range seg.groups {
					add(g)
				}
				return addErr
			})
			if err != nil {
				return fmt.Errorf("prune needs every snapshot readable: %w", err)
			}
			continue
		}
		for _, c := range n.Chunks {
			id, _ := ParseID(c)
			add(id)
		}
	}
	return addErr
}

// repack copies the given chunks into new packs and stores them.
func (r *Repository) repack(ctx context.Context, entries []blobEntry) ([]packIndex, error) {
	out, _, err := r.copyChunks(ctx, entries, false)
	return out, err
}

// copyChunks stores the given chunks again in new packs; with
// skipDamaged, a chunk that cannot be read intact is left out and
// counted instead of failing.
func (r *Repository) copyChunks(ctx context.Context, entries []blobEntry, skipDamaged bool) ([]packIndex, int, error) {
	if len(entries) == 0 {
		return nil, 0, nil
	}
	skipped := 0
	br := r.newBlobReader()
	defer br.close()
	z := newCompressor(chunkWindow)
	defer z.close()
	var out []packIndex
	var pw *packWriter
	flush := func() error {
		if pw == nil {
			return nil
		}
		defer pw.discard()
		size, err := pw.finish()
		if err != nil {
			return err
		}
		if err := r.putPack(ctx, pw); err != nil {
			return err
		}
		out = append(out, packIndex{id: pw.id, size: size, entries: pw.entries})
		pw = nil
		return nil
	}
	buf := make([]byte, 0, r.cfg.MaxChunk+tagSize)
	for _, e := range entries {
		data, err := br.chunk(ctx, e.ID)
		if err != nil && skipDamaged && isDataDamage(err) {
			skipped++
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		buf = append(buf[:0], data...)
		payload, flags := z.compress(buf, hintAuto)
		if pw == nil {
			if pw, err = r.newPackWriter(); err != nil {
				return nil, 0, err
			}
		}
		if err := pw.add(e.ID, flags, payload, len(buf)); err != nil {
			return nil, 0, err
		}
		if pw.size >= r.cfg.PackSize {
			if err := flush(); err != nil {
				return nil, 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, 0, err
	}
	return out, skipped, nil
}
