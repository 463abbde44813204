package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// CheckOptions select how deep Check looks.
type CheckOptions struct {
	// ReadData downloads every pack (or a subset) and verifies every chunk.
	ReadData bool
	// Repair (with ReadData) rebuilds damaged or truncated packs in place
	// from their parity objects (repositories made with --parity).
	Repair bool
	// Subset, when 0 < Subset < 1, reads only that fraction of the packs,
	// chosen at random.
	Subset float64
	// Progress is called once with done 0 when the reading of packs
	// starts, then after each pack read.
	Progress func(done, total int)
}

// CheckResult lists what Check found. Errors are damage; Warnings are
// harmless leftovers (e.g. packs of an interrupted backup).
type CheckResult struct {
	Errors    []string
	Warnings  []string
	Snapshots int
	Packs     int
	PacksRead int
	Chunks    int
	// BadPacks are the packs the index lists that the store lacks or has
	// at another size (reported above; not read).
	BadPacks []ID
	// Repaired are the packs rebuilt from their parity (Repair), with
	// the number of 16 KiB shards rebuilt in each.
	Repaired map[string]int
}

// ErrCheckFailed is returned when Check found damage.
var ErrCheckFailed = errors.New("repository check found errors")

// Check verifies the repository's structure: every index and snapshot
// decrypts, every chunk a snapshot needs is indexed in a stored pack of
// the right size, and (with ReadData) every stored chunk authenticates.
func (r *Repository) Check(ctx context.Context, opt CheckOptions) (*CheckResult, error) {
	res := &CheckResult{}
	errf := func(format string, a ...any) { res.Errors = append(res.Errors, fmt.Sprintf(format, a...)) }

	// Index objects: each must decrypt; load them one by one so a damaged
	// one is named and the rest still checked.
	idxObjs, err := r.listNames(ctx, "index/")
	if err != nil {
		return nil, err
	}
	// Check builds its own index from scratch rather than trusting the cache.
	idx, err := openIndex("", r.tmpDir)
	if err != nil {
		return nil, err
	}
	r.idx.close()
	r.idx = idx
	for _, o := range idxObjs {
		err := r.loadIndexObject(ctx, idx, o.Name)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && ctx.Err() != nil {
				return nil, err
			}
			errf("%v", err)
		}
	}
	r.idxLoaded = true
	res.Chunks, res.Packs = r.idx.Len()

	stored, strays, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range strays {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s: unexpected object in data/", s))
	}
	packs, err := r.idx.allPacks()
	if err != nil {
		return nil, err
	}
	// With Repair, a truncated pack is first rebuilt from its parity.
	if opt.Repair && opt.ReadData {
		for _, p := range packs {
			if size, ok := stored[p.id]; ok && size != p.size {
				if n, err := r.RepairPack(ctx, p.id); err == nil && n > 0 {
					res.repaired(p.id, n)
					stored[p.id] = p.size
				}
			}
		}
	}
	// Packs missing or truncated: their chunks are located in other
	// copies where there are some (a backup that healed the repository);
	// a pack whose chunks are all stored elsewhere loses nothing.
	bad, err := r.markBadPacks(stored)
	if err != nil {
		return nil, err
	}
	for _, p := range packs {
		size, ok := stored[p.id]
		what := ""
		switch {
		case !ok:
			what = "pack is missing (listed in the index)"
		case size != p.size:
			what = fmt.Sprintf("pack size is %d, index says %d (truncated or replaced)", size, p.size)
		default:
			continue
		}
		res.BadPacks = append(res.BadPacks, p.id)
		if n := bad.lostIn[p.id]; n > 0 {
			// Lost data is reported below, with the snapshots and files
			// that need it (none, if no snapshot does).
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %s: %d chunk(s) it held are stored nowhere else", packName(p.id), what, n))
		} else {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %s, but every chunk it held is stored in another pack: nothing is lost (repair index or prune drops the reference)", packName(p.id), what))
		}
	}
	// Packs no index object lists: an interrupted backup's, or an index
	// object went missing. Their chunks are read from the packs' own
	// trailers (as restore does), so they are not reported lost.
	unindexed := 0
	for id, size := range stored {
		if r.idx.hasPack(id) {
			continue
		}
		unindexed++
		entries, err := r.readTrailer(ctx, id, size)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			errf("%v", err)
			continue
		}
		if err := r.idx.addPacks([]packIndex{{id: id, size: size, entries: entries}}, ""); err != nil {
			return nil, err
		}
	}
	if unindexed > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%d pack(s) are not in any index (an interrupted backup, or a missing index object): their data is intact and was checked from the packs themselves; the next backup or repair index adds them to the index, prune removes unused ones", unindexed))
	}

	// Snapshots and their trees.
	snapObjs, err := r.listNames(ctx, "snapshots/")
	if err != nil {
		return nil, err
	}
	trees := map[string]bool{}
	seenSegs := map[ID]bool{}     // page map segments verified so far
	seenDirs := map[string]bool{} // directories (by pieces) verified so far
	// Snapshots repair snapshots made a repaired copy of: their damage is
	// known and superseded, so it is reported as warnings.
	repairedAs := map[string]string{}
	if all, _, err := r.loadSnapshots(ctx); err == nil {
		for _, s := range all {
			if s.RepairedFrom != "" {
				repairedAs[s.RepairedFrom] = s.ID.Short()
			}
		}
	}
	for _, o := range snapObjs {
		id, err := ParseID(strings.TrimPrefix(o.Name, "snapshots/"))
		if err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: unexpected object in snapshots/", o.Name))
			continue
		}
		s, err := r.LoadSnapshot(ctx, id)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && ctx.Err() != nil {
				return nil, err
			}
			errf("%v", err)
			continue
		}
		res.Snapshots++
		trees[s.Tree] = true
		report := errf
		if rep, ok := repairedAs[s.ID.String()]; ok {
			n := 0
			report = func(format string, a ...any) {
				if n++; n <= 3 {
					res.Warnings = append(res.Warnings, fmt.Sprintf(format, a...)+fmt.Sprintf(" (snapshot %s has a repaired copy, %s: forget it when you no longer want it)", s.ID.Short(), rep))
				}
			}
		}
		if err := r.checkTree(ctx, s, seenSegs, seenDirs, report); err != nil {
			return nil, err
		}
	}
	treeObjs, err := r.listNames(ctx, "trees/")
	if err != nil {
		return nil, err
	}
	orphans := 0
	for _, o := range treeObjs {
		if !trees[strings.TrimPrefix(o.Name, "trees/")] {
			orphans++
		}
	}
	if orphans > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%d tree object(s) belong to no snapshot (an interrupted backup, or a deleted snapshot); prune removes them", orphans))
	}

	if opt.ReadData {
		if err := r.readData(ctx, opt, stored, res, errf); err != nil {
			return nil, err
		}
	}
	if w := r.oldEpochWarning(ctx, opt.ReadData); w != "" {
		res.Warnings = append(res.Warnings, w)
	}
	if len(res.Errors) > 0 {
		return res, ErrCheckFailed
	}
	return res, nil
}

// oldEpochWarning says how many of the objects check read are still under
// an older key epoch than the current one (FORMAT.md §2.4), and the
// key slots whose objects are in the store but not in the keyring.
func (r *Repository) oldEpochWarning(ctx context.Context, readData bool) string {
	var parts []string
	if len(r.epochs.old) > 0 {
		packs := 0
		r.epochs.packEpochs.Range(func(_, _ any) bool { packs++; return true })
		what := fmt.Sprintf("%d index and snapshot object(s)", r.epochs.oldObjects.Load())
		if readData {
			what += fmt.Sprintf(" and %d pack(s)", packs)
		}
		var epochs []string
		for _, k := range r.epochs.old {
			epochs = append(epochs, fmt.Sprint(k.epoch))
		}
		parts = append(parts, fmt.Sprintf("%s are still under key epoch %s, from before the last key rotation (a key revoked then still decrypts them, if it was copied): wabackup key rotate --rewrite re-encrypts them", what, strings.Join(epochs, ", ")))
	}
	if kr := r.keyring; kr != nil {
		slots, _, err := r.loadSlots(ctx)
		if err == nil {
			n := 0
			for _, s := range slots {
				if _, ok := kr.Slot(s.ID); !ok {
					n++
				}
			}
			if n > 0 {
				parts = append(parts, fmt.Sprintf("%d key slot object(s) are not in the keyring and open nothing (removed, revoked, or left by an interrupted key command; wabackup key list shows them)", n))
			}
		}
	}
	return strings.Join(parts, "; ")
}

func (r *Repository) checkTree(ctx context.Context, s *Snapshot, seenSegs map[ID]bool, seenDirs map[string]bool, errf func(string, ...any)) error {
	tr, err := r.openTree(ctx, s, nil, seenDirs)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		errf("%v", err) // OpenTree names the snapshot
		return nil
	}
	defer tr.Close()
	missing := 0
	for {
		n, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			errf("snapshot %s: %v", s.ID.Short(), err)
			break
		}
		if n.Type == TypeDB {
			r.checkPageMap(ctx, s, n, seenSegs, errf)
			continue
		}
		var size int64
		for _, c := range n.Chunks {
			id, _ := ParseID(c)
			loc, _, ok := r.idx.lookup(id)
			if !ok {
				if missing < 10 {
					errf("snapshot %s: %s: chunk %s is missing%s", s.ID.Short(), n.Path, id.Short(), r.whereLost(id))
				}
				missing++
				continue
			}
			size += int64(loc.rawLen)
		}
		if missing == 0 && n.Type == TypeFile && size != n.Size {
			errf("snapshot %s: %s: chunks add up to %d bytes, file is %d", s.ID.Short(), n.Path, size, n.Size)
		}
	}
	if missing > 10 {
		errf("snapshot %s: %d more missing chunks", s.ID.Short(), missing-10)
	}
	return nil
}

// checkPageMap verifies a database node's page map: its root and
// segments decrypt and agree, every group it names is indexed and holds
// the slots used, and the pages add up to the node's size. Segments in
// seen were verified for an earlier snapshot and are not read again.
func (r *Repository) checkPageMap(ctx context.Context, s *Snapshot, n *Node, seen map[ID]bool, errf func(string, ...any)) {
	root, err := ParseID(n.PageMap)
	if err != nil {
		errf("snapshot %s: %s: %v", s.ID.Short(), n.Path, err)
		return
	}
	br := r.newBlobReader()
	defer br.close()
	problems := 0
	m, err := walkSegments(ctx, br.chunk, root, seen, nil, func(m *pageMap, seg *pageSegment) error {
		locs := make([]blobLoc, len(seg.groups))
		ok := make([]bool, len(seg.groups))
		for g, id := range seg.groups {
			if locs[g], _, ok[g] = r.idx.lookup(id); !ok[g] {
				if problems < 10 {
					errf("snapshot %s: %s: page group %s (pages %d…) is missing%s", s.ID.Short(), n.Path, id.Short(), seg.first, r.whereLost(id))
				}
				problems++
			}
		}
		for k, ref := range seg.refs {
			loc := locs[ref.group]
			if ok[ref.group] && (loc.rawLen%m.pageSize != 0 || (ref.slot+1)*m.pageSize > loc.rawLen) {
				if problems < 10 {
					errf("snapshot %s: %s: page %d: group %s has no slot %d", s.ID.Short(), n.Path, seg.first+uint32(k), seg.groups[ref.group].Short(), ref.slot)
				}
				problems++
			}
		}
		return nil
	})
	switch {
	case err != nil:
		errf("snapshot %s: %s: %v", s.ID.Short(), n.Path, err)
	case int64(m.pageCount)*int64(m.pageSize) != n.Size:
		errf("snapshot %s: %s: page map holds %d pages of %d bytes, the node says %d bytes", s.ID.Short(), n.Path, m.pageCount, m.pageSize, n.Size)
	}
	if problems > 10 {
		errf("snapshot %s: %s: %d more problems with page groups", s.ID.Short(), n.Path, problems-10)
	}
}

// readData downloads packs and verifies each blob against the index.
func (r *Repository) readData(ctx context.Context, opt CheckOptions, stored map[ID]int64, res *CheckResult, errf func(string, ...any)) error {
	ids := make([]ID, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return strings.Compare(ids[i].String(), ids[j].String()) < 0 })
	if opt.Subset > 0 && opt.Subset < 1 {
		rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
		n := int(float64(len(ids))*opt.Subset + 0.999)
		ids = ids[:min(n, len(ids))]
	}
	// Packs are verified a few at a time (each by its own reader: the
	// work is decryption and hashing, and, on a remote store, waiting);
	// their findings are reported in the order above whatever the order
	// they finish in.
	if opt.Progress != nil {
		opt.Progress(0, len(ids))
	}
	workers := min(max(runtime.GOMAXPROCS(0), 2), 4, len(ids))
	found := make([]error, len(ids))
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		done     int
		fatal    error
		fatalIdx = len(ids)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := r.newBlobReader()
			defer br.close()
			for i := range next {
				id := ids[i]
				indexed, err := r.idx.packEntries(id)
				if err == nil {
					err = r.verifyPack(ctx, br, id, stored[id], indexed)
					if err != nil && (errors.Is(err, ErrCorrupt) || ctx.Err() == nil) {
						found[i], err = err, nil
					}
				}
				mu.Lock()
				if err != nil && i < fatalIdx {
					fatal, fatalIdx = err, i
				}
				done++
				if opt.Progress != nil {
					opt.Progress(done, len(ids))
				}
				mu.Unlock()
			}
		}()
	}
	for i := range ids {
		if ctx.Err() != nil {
			break
		}
		mu.Lock()
		stop := fatal != nil
		mu.Unlock()
		if stop {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if fatal != nil {
		return fatal
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, err := range found {
		if err == nil {
			continue
		}
		if opt.Repair && errors.Is(err, ErrCorrupt) {
			n, rerr := r.RepairPack(ctx, ids[i])
			if rerr == nil && n > 0 {
				res.repaired(ids[i], n)
				continue
			}
			if rerr != nil {
				err = fmt.Errorf("%v; repair: %v", err, rerr)
			}
		}
		errf("%v", err)
	}
	res.PacksRead += len(ids)
	return nil
}

// verifyPack streams one pack: the trailer must authenticate and agree
// with the index, and every blob must authenticate and match its id.
func (r *Repository) verifyPack(ctx context.Context, br *blobReader, id ID, size int64, indexed []blobEntry) error {
	name := packName(id)
	trailer, err := r.readTrailer(ctx, id, size)
	if err != nil {
		return err
	}
	if indexed != nil {
		want := map[ID]blobEntry{}
		for _, e := range trailer {
			want[e.ID] = e
		}
		for _, e := range indexed {
			t, ok := want[e.ID]
			if !ok || t.Offset != e.Offset || t.Length != e.Length || t.Counter != e.Counter || t.Flags != e.Flags || t.RawLen != e.RawLen {
				return fmt.Errorf("%s: chunk %s: index and pack trailer disagree: %w", name, e.ID.Short(), ErrCorrupt)
			}
		}
	}
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	var buf []byte
	for _, e := range trailer {
		if cap(buf) < int(e.Length) {
			buf = make([]byte, e.Length)
		}
		buf = buf[:e.Length]
		if _, err := io.ReadFull(rc, buf); err != nil {
			if truncated(err) {
				return fmt.Errorf("%s: short read: %w", name, ErrCorrupt)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		if _, err := br.open(id, e, buf); err != nil {
			return err
		}
	}
	return nil
}

// whereLost names the pack a missing chunk was in, if the index knew one
// (a pack missing or truncated in the store).
func (r *Repository) whereLost(id ID) string {
	for _, a := range r.idx.alternatives(id) {
		return fmt.Sprintf(" (its pack %s is missing or truncated)", packName(a.pack.id))
	}
	return ""
}

func (res *CheckResult) repaired(id ID, shards int) {
	if res.Repaired == nil {
		res.Repaired = map[string]int{}
	}
	res.Repaired[packName(id)] = shards
	res.Warnings = append(res.Warnings, fmt.Sprintf("%s: damaged; %d shard(s) of 16 KiB rebuilt from its parity and the pack stored again", packName(id), shards))
}
