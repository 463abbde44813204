package archive

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/keys"
)

// RewriteResult counts what Rewrite did; Skipped objects were under the
// current epoch already (done by an earlier, interrupted run).
type RewriteResult struct {
	// Packs counts the packs under an older epoch that this run moved to
	// the current one: copied, or deleted in favour of the copy an
	// interrupted run had made (not counted in PacksSkipped).
	Packs, PacksSkipped     int
	Objects, ObjectsSkipped int
	Bytes                   int64 // pack bytes re-encrypted by this run
	Retired                 []uint32
	// Damaged lists the objects in damaged/ (moved aside by repair), left
	// under their old key.
	Damaged int
}

// RewriteProgress is reported after every pack.
type RewriteProgress struct {
	Packs, TotalPacks int
	Bytes             int64
}

// Rewrite re-encrypts every object still under an older key epoch
// (FORMAT.md §2.4) under the current one, then destroys the older
// epochs' keys: the keyring forgets them and the older keyring objects are
// deleted, so an old key opens nothing at all. The caller holds the
// exclusive lock.
//
// A pack is copied, blob by blob, into a new pack with a fresh random id
// (so under a pack key no other pack, and no other run, ever had: see
// rewritePacks), the index objects that list it are replaced by ones that
// list the copy, and then it is deleted. Index, snapshot and tree objects
// are re-encrypted in place, under their own names, by one Put each (a
// fresh STREAM salt each time). Readers try every epoch the keyring
// holds, so an interruption at any point leaves a repository that opens
// and checks, and the next run skips what is done. One blob and one index
// object are in memory at a time.
func (r *Repository) Rewrite(ctx context.Context, progress func(RewriteProgress)) (*RewriteResult, error) {
	res := &RewriteResult{}
	if r.keyring == nil {
		return nil, fmt.Errorf("repository format %d has no keyring: run 'wabackup migrate' once first: %w", r.cfg.Version, ErrNeedsMigration)
	}
	if len(r.epochs.old) > 0 {
		if !r.keyring.Rewrite {
			if err := r.updateKeyring(ctx, func(kr *keys.Keyring) { kr.Rewrite = true }); err != nil {
				return nil, err
			}
		}
		// Index objects are replaced and packs deleted: the index cache
		// of this process is read again from the store when next needed.
		defer func() {
			r.idxMu.Lock()
			r.idxLoaded = false
			r.idxMu.Unlock()
		}()
		if err := r.rewritePacks(ctx, res, progress); err != nil {
			return res, err
		}
		for _, prefix := range []string{"index/", "snapshots/", "trees/"} {
			objs, err := r.listNames(ctx, prefix)
			if err != nil {
				return res, err
			}
			for _, o := range objs {
				done, err := r.rewriteObject(ctx, o.Name)
				if err != nil {
					return res, err
				}
				if done {
					res.Objects++
				} else {
					res.ObjectsSkipped++
				}
			}
		}
	}
	// Every object is under the current epoch: the older keys go.
	now := time.Now().UTC().Truncate(time.Second)
	if len(r.keyring.Old) > 0 || r.keyring.Rewrite {
		for _, e := range r.keyring.Old {
			res.Retired = append(res.Retired, e.Epoch)
		}
		if err := r.updateKeyring(ctx, func(kr *keys.Keyring) {
			for _, e := range kr.Old {
				kr.Retired = append(kr.Retired, keys.RetiredEpoch{Epoch: e.Epoch, Time: now})
			}
			kr.Old, kr.Rewrite = nil, false
		}); err != nil {
			return res, err
		}
		r.epochs = epochState{}
	}
	vs, err := r.keyringVersions(ctx)
	if err != nil {
		return res, err
	}
	for _, v := range vs {
		if v < r.keyring.Version {
			if err := r.store.Delete(ctx, keyringName(v)); err != nil {
				return res, fmt.Errorf("deleting the old keyring %s: %w", keyringName(v), err)
			}
		}
	}
	if damaged, err := r.listNames(ctx, "damaged/"); err == nil {
		res.Damaged = len(damaged)
	}
	return res, nil
}

// rwPack is a stored pack as rewritePacks sees it.
type rwPack struct {
	id       ID
	size     int64
	layout   [32]byte // packLayout of its trailer
	old      bool     // under an older epoch
	copy     *rwPack  // an old pack's copy under the current epoch, made by an earlier run
	listedIn []string // the index objects that list it
}

// packLayout is a digest of a pack's size and blob list (chunk id, flags,
// counter, offset, length, raw length): a copy rewritePacks made of a
// pack has the layout of the pack.
func packLayout(size int64, entries []blobEntry) [32]byte {
	h := sha256.New()
	b := binary.BigEndian.AppendUint64(nil, uint64(size))
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = append(b, e.Flags)
		b = binary.BigEndian.AppendUint32(b, e.Counter)
		b = binary.BigEndian.AppendUint32(b, e.Offset)
		b = binary.BigEndian.AppendUint32(b, e.Length)
		b = binary.BigEndian.AppendUint32(b, e.RawLen)
		h.Write(b)
		b = b[:0]
	}
	h.Write(b)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// rewritePacks moves every pack under an older epoch to the current one
// (FORMAT.md §2.4, Rewrite), one pack at a time: (1) a copy of it is
// stored under a new random pack id, its blobs opened under the old
// epoch's key and sealed, in the same order and with the same payloads,
// under the current epoch's key for the new id; (2) every index object
// that lists the pack is replaced by one, under a new name, that lists
// the copy instead (its entries as the copy's trailer gives them); (3)
// the pack's parity object and then the pack are deleted.
//
// The copy's pack key, HKDF(K_pack, new id), is a key nothing else ever
// sealed under — the id is 32 fresh random bytes — so whatever the store
// shows a resumed run under an old pack's name (a pack forged with a
// leaked old key, say), the run seals it under a key of its own: the
// same (key, nonce) never seals two plaintexts (the old scheme, which
// sealed in place under HKDF(K_pack, old id), did so when the store
// swapped packs between runs). A run after an interruption between (1)
// and (3) finds the copy by its layout and uses it instead of copying
// again, so it neither redoes the work nor leaves a second copy.
func (r *Repository) rewritePacks(ctx context.Context, res *RewriteResult, progress func(RewriteProgress)) error {
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return err
	}
	ids := make([]ID, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return comparePaths(ids[i].String(), ids[j].String()) < 0 })
	packs := make(map[ID]*rwPack, len(ids))
	var old []*rwPack
	current := map[[32]byte][]*rwPack{} // by layout
	for _, id := range ids {
		r.epochs.packEpochs.Delete(id)
		entries, err := r.readTrailer(ctx, id, stored[id])
		if err != nil {
			return fmt.Errorf("%w (repair it first: wabackup check --read-data, repair index)", err)
		}
		p := &rwPack{id: id, size: stored[id], layout: packLayout(stored[id], entries)}
		_, p.old = r.epochs.packEpochs.Load(id)
		if p.old {
			old = append(old, p)
		} else {
			current[p.layout] = append(current[p.layout], p)
		}
		packs[id] = p
	}
	if len(old) == 0 {
		res.PacksSkipped = len(ids)
		return nil
	}
	objs, err := r.listNames(ctx, "index/")
	if err != nil {
		return err
	}
	for _, o := range objs {
		err := r.readIndexObject(ctx, o.Name, func(pi packIndex) error {
			if p := packs[pi.id]; p != nil && !slices.Contains(p.listedIn, o.Name) {
				p.listedIn = append(p.listedIn, o.Name)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%w (wabackup repair index rebuilds the index)", err)
		}
	}
	// The packs one index object lists one after another, so that object
	// is held once; copies left by an interrupted run found.
	first := func(p *rwPack) string {
		if len(p.listedIn) == 0 {
			return ""
		}
		return slices.Min(p.listedIn)
	}
	sort.SliceStable(old, func(i, j int) bool { return first(old[i]) < first(old[j]) })
	found := 0
	for _, p := range old {
		if c := current[p.layout]; len(c) > 0 {
			p.copy, current[p.layout] = c[0], c[1:]
			found++
		}
	}
	res.PacksSkipped = len(ids) - len(old) - found
	total := res.PacksSkipped + len(old)
	if progress != nil && res.PacksSkipped > 0 {
		progress(RewriteProgress{Packs: res.PacksSkipped, TotalPacks: total})
	}
	var held heldIndex
	for i, p := range old {
		to := p.copy
		var entries []blobEntry
		if to == nil {
			if to, entries, err = r.copyPack(ctx, p); err != nil {
				return err
			}
			packs[to.id] = to
			res.Bytes += p.size
		} else {
			r.epochs.packEpochs.Delete(to.id)
			if entries, err = r.readTrailer(ctx, to.id, to.size); err != nil {
				return err
			}
			if _, changed := r.epochs.packEpochs.Load(to.id); changed {
				return fmt.Errorf("%s: under an older key epoch now, under the current one when this run began: %w", packName(to.id), ErrCorrupt)
			}
		}
		for _, name := range slices.Clone(p.listedIn) {
			if err := r.relistPack(ctx, &held, name, p.id, packIndex{id: to.id, size: to.size, entries: entries}, packs); err != nil {
				return err
			}
		}
		// The parity object first: a pack left without it by an
		// interruption is listed nowhere, and the next run deletes it.
		if err := r.store.Delete(ctx, parityName(p.id)); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return fmt.Errorf("deleting %s: %w", parityName(p.id), err)
		}
		if err := r.store.Delete(ctx, packName(p.id)); err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return fmt.Errorf("deleting %s (copied to %s): %w", packName(p.id), packName(to.id), err)
		}
		r.epochs.packEpochs.Delete(p.id)
		res.Packs++
		if progress != nil {
			progress(RewriteProgress{Packs: res.PacksSkipped + i + 1, TotalPacks: total, Bytes: res.Bytes})
		}
	}
	return nil
}

// copyPack stores a copy of old pack p under a new random pack id and the
// current epoch's keys: the same blobs (payload, chunk id, flags) in the
// same order, so the same layout. It returns the copy and its entries.
func (r *Repository) copyPack(ctx context.Context, p *rwPack) (*rwPack, []blobEntry, error) {
	name := packName(p.id)
	r.epochs.packEpochs.Delete(p.id)
	entries, err := r.readTrailer(ctx, p.id, p.size)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (repair it first: wabackup check --read-data, repair index)", err)
	}
	ko, old := r.epochs.packEpochs.Load(p.id)
	if !old {
		return nil, nil, fmt.Errorf("%s: no longer under an older key epoch while it is being rewritten: %w", name, ErrCorrupt)
	}
	from := ko.(*keySet)
	sort.Slice(entries, func(i, j int) bool { return entries[i].Offset < entries[j].Offset })
	// A new pack writer: a fresh random id, and the current epoch's key
	// for it.
	pw, err := r.newPackWriter()
	if err != nil {
		return nil, nil, err
	}
	defer pw.discard()
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 256<<10)
	aead := from.packAEAD(p.id)
	var pos int64
	var buf []byte
	for i, e := range entries {
		if int(e.Counter) != i || int64(e.Offset) != pos {
			return nil, nil, fmt.Errorf("%s: blobs are not in nonce order without gaps (blob %d: counter %d, offset %d): %w", name, i, e.Counter, e.Offset, ErrCorrupt)
		}
		if cap(buf) < int(e.Length) {
			buf = make([]byte, e.Length)
		}
		buf = buf[:e.Length]
		if _, err := io.ReadFull(br, buf); err != nil {
			if truncated(err) {
				err = fmt.Errorf("%v: %w", err, ErrCorrupt)
			}
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		pos += int64(e.Length)
		var nonce [12]byte
		var aad [33]byte
		plain, err := aead.Open(buf[:0], packNonce(&nonce, uint64(e.Counter)), buf, blobAAD(&aad, e.ID, e.Flags))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: chunk %s does not authenticate (repair it first): %w", name, e.ID.Short(), ErrCorrupt)
		}
		// plain has buf's capacity, so add seals it in place.
		if err := pw.add(e.ID, e.Flags, plain, int(e.RawLen)); err != nil {
			return nil, nil, err
		}
		if ne := pw.entries[i]; ne.Offset != e.Offset || ne.Length != e.Length {
			return nil, nil, fmt.Errorf("internal error: %s copied to another layout", name)
		}
	}
	n, err := pw.finish()
	if err != nil {
		return nil, nil, err
	}
	if n != p.size {
		return nil, nil, fmt.Errorf("internal error: %s copied to %d bytes, was %d", name, n, p.size)
	}
	if err := r.putPack(ctx, pw); err != nil {
		return nil, nil, fmt.Errorf("storing %s, the copy of %s: %w", packName(pw.id), name, err)
	}
	return &rwPack{id: pw.id, size: n, layout: p.layout}, pw.entries, nil
}

// heldIndex is the index object relistPack wrote last, kept so that the
// next pack it lists needs no download.
type heldIndex struct {
	name  string
	packs []packIndex
}

// relistPack replaces index object name by one under a new name (and the
// current epoch) that lists copy instead of pack from, and notes the new
// name in packs. The new object is stored before the old one is deleted,
// so every pack stays listed.
func (r *Repository) relistPack(ctx context.Context, held *heldIndex, name string, from ID, cp packIndex, packs map[ID]*rwPack) error {
	list := held.packs
	if held.name != name {
		list = nil
		if err := r.readIndexObject(ctx, name, func(pi packIndex) error {
			list = append(list, pi)
			return nil
		}); err != nil {
			return err
		}
	}
	listsCopy := slices.ContainsFunc(list, func(pi packIndex) bool { return pi.id == cp.id })
	out := make([]packIndex, 0, len(list))
	for _, pi := range list {
		switch {
		case pi.id != from:
			out = append(out, pi)
		case !listsCopy:
			out = append(out, cp)
			listsCopy = true
		}
	}
	newName := indexName(NewRandomID())
	if _, err := r.saveObject(ctx, newName, false, func(w io.Writer) error { return encodeIndex(w, out) }); err != nil {
		return fmt.Errorf("storing %s (in place of %s): %w", newName, name, err)
	}
	if err := r.store.Delete(ctx, name); err != nil && !errors.Is(err, cloud.ErrNotFound) {
		return fmt.Errorf("deleting %s (replaced by %s): %w", name, newName, err)
	}
	if p := packs[from]; p != nil {
		p.listedIn = slices.DeleteFunc(p.listedIn, func(n string) bool { return n == name })
	}
	for _, pi := range out {
		if p := packs[pi.id]; p != nil {
			p.listedIn = slices.DeleteFunc(p.listedIn, func(n string) bool { return n == name })
			p.listedIn = append(p.listedIn, newName)
		}
	}
	held.name, held.packs = newName, out
	return nil
}

// rewriteObject re-encrypts a STREAM object under the current epoch, in
// place, unless it is under it already. Its plaintext is copied as it is
// (a compressed object stays compressed).
func (r *Repository) rewriteObject(ctx context.Context, name string) (bool, error) {
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	sr, err := newStreamReaderKeys(rc, name, r.readKeys())
	if err != nil {
		return false, err
	}
	first := make([]byte, segmentSize)
	n, err := io.ReadFull(sr, first)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		if errors.Is(err, ErrCorrupt) && strings.HasPrefix(name, "snapshots/") {
			return false, fmt.Errorf("%w (repair snapshots, or forget it, first)", err)
		}
		return false, err
	}
	if sr.epoch == r.keys.epoch {
		return false, nil
	}
	_, err = r.saveObject(ctx, name, false, func(w io.Writer) error {
		if _, err := w.Write(first[:n]); err != nil {
			return err
		}
		_, err := io.Copy(w, sr)
		return err
	})
	return err == nil, err
}
