package archive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
)

// RewriteResult counts what Rewrite did; Skipped objects were under the
// current epoch already (done by an earlier, interrupted run).
type RewriteResult struct {
	Packs, PacksSkipped     int
	Objects, ObjectsSkipped int
	Bytes                   int64 // pack bytes re-encrypted
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
// Each object is replaced in place, under its own name, by one Put:
// readers try every epoch the keyring holds, so an interruption at any
// point leaves a repository that opens and checks, and the next run skips
// what is done. A pack keeps its id, blob order and offsets (the index
// stays valid); its blobs are sealed again with the same nonces under the
// new epoch's pack key, which only this re-encryption uses for that pack,
// so a repeated run seals the same plaintexts with the same key and nonce
// and writes the same bytes. One blob is in memory at a time.
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
		packs, _, err := r.listPacks(ctx)
		if err != nil {
			return nil, err
		}
		ids := make([]ID, 0, len(packs))
		for id := range packs {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return comparePaths(ids[i].String(), ids[j].String()) < 0 })
		for i, id := range ids {
			done, err := r.rewritePack(ctx, id, packs[id])
			if err != nil {
				return res, err
			}
			if done {
				res.Packs++
				res.Bytes += packs[id]
			} else {
				res.PacksSkipped++
			}
			if progress != nil {
				progress(RewriteProgress{Packs: i + 1, TotalPacks: len(ids), Bytes: res.Bytes})
			}
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

// rewritePack re-encrypts pack id under the current epoch, unless it is
// under it already.
func (r *Repository) rewritePack(ctx context.Context, id ID, size int64) (bool, error) {
	r.epochs.packEpochs.Delete(id)
	entries, err := r.readTrailer(ctx, id, size)
	if err != nil {
		return false, fmt.Errorf("%w (repair it first: wabackup check --read-data, repair index)", err)
	}
	ko, old := r.epochs.packEpochs.Load(id)
	if !old {
		return false, nil
	}
	from := ko.(*keySet)
	name := packName(id)
	sort.Slice(entries, func(i, j int) bool { return entries[i].Offset < entries[j].Offset })
	pw, err := r.newPackWriter()
	if err != nil {
		return false, err
	}
	defer pw.discard()
	pw.id, pw.aead = id, r.keys.packAEAD(id)
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 256<<10)
	aead := from.packAEAD(id)
	var pos int64
	var buf []byte
	for i, e := range entries {
		if int(e.Counter) != i || int64(e.Offset) != pos {
			return false, fmt.Errorf("%s: blobs are not in nonce order without gaps (blob %d: counter %d, offset %d): cannot re-encrypt it in place: %w", name, i, e.Counter, e.Offset, ErrCorrupt)
		}
		if cap(buf) < int(e.Length) {
			buf = make([]byte, e.Length)
		}
		buf = buf[:e.Length]
		if _, err := io.ReadFull(br, buf); err != nil {
			if truncated(err) {
				err = fmt.Errorf("%v: %w", err, ErrCorrupt)
			}
			return false, fmt.Errorf("%s: %w", name, err)
		}
		pos += int64(e.Length)
		var nonce [12]byte
		var aad [33]byte
		plain, err := aead.Open(buf[:0], packNonce(&nonce, uint64(e.Counter)), buf, blobAAD(&aad, e.ID, e.Flags))
		if err != nil {
			return false, fmt.Errorf("%s: chunk %s does not authenticate (repair it first): %w", name, e.ID.Short(), ErrCorrupt)
		}
		// plain has buf's capacity, so add seals it in place.
		if err := pw.add(e.ID, e.Flags, plain, int(e.RawLen)); err != nil {
			return false, err
		}
		if ne := pw.entries[i]; ne.Offset != e.Offset || ne.Length != e.Length {
			return false, fmt.Errorf("internal error: %s re-encrypted to another layout", name)
		}
	}
	n, err := pw.finish()
	if err != nil {
		return false, err
	}
	if n != size {
		return false, fmt.Errorf("internal error: %s re-encrypted to %d bytes, was %d", name, n, size)
	}
	// Replaced in place (not linked: the name exists), its parity first.
	if err := r.putParity(ctx, id, pw.f, pw.size); err != nil {
		return false, fmt.Errorf("parity of %s: %w", name, err)
	}
	if _, err := pw.f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	if err := r.store.Put(ctx, name, pw.f, pw.size); err != nil {
		return false, fmt.Errorf("storing %s: %w", name, err)
	}
	return true, nil
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
