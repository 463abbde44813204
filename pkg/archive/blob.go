package archive

import (
	"bytes"
	"context"
	"crypto/cipher"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// blobReader fetches, authenticates and decompresses chunks. One per
// goroutine.
type blobReader struct {
	r     *Repository
	h     hash.Hash
	zd    *zstd.Decoder
	ct    []byte
	out   []byte
	sum   []byte
	trial []byte // plaintext of a blob tried under several epochs
	cbuf  []byte // a metadata cache entry

	// streams, if set, serves reads from open pack streams (restore
	// from a remote store).
	streams *packStreams

	// packFile is the last pack opened for ranged reads on a local store
	// (cloud.ReaderAtStore), kept open for the next chunk of it.
	packFile     cloud.ReaderAtCloser
	packFileName string

	// aead is the cipher of pack aeadPack (consecutive chunks usually
	// come from one pack).
	aead     cipher.AEAD
	aeadPack ID
}

func (r *Repository) newBlobReader() *blobReader {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxChunkSize), zstd.WithDecoderMaxWindow(maxChunkSize))
	if err != nil {
		panic(err)
	}
	return &blobReader{r: r, h: r.keys.newIDHasher(), zd: zd}
}

func (b *blobReader) close() {
	b.zd.Close()
	if b.packFile != nil {
		b.packFile.Close()
	}
}

// readAt fills b.ct from pack name at off through a kept-open file, or
// returns false if the store has no such files.
func (b *blobReader) readAt(ctx context.Context, name string, off int64) (bool, error) {
	ras, ok := b.r.store.(cloud.ReaderAtStore)
	if !ok {
		return false, nil
	}
	if b.packFileName != name {
		if b.packFile != nil {
			b.packFile.Close()
			b.packFile, b.packFileName = nil, ""
		}
		f, err := ras.OpenReaderAt(ctx, name)
		if err != nil {
			return true, err
		}
		b.packFile, b.packFileName = f, name
	}
	_, err := b.packFile.ReadAt(b.ct, off)
	return true, err
}

// chunk returns the plaintext of chunk id. The slice is valid until the
// next call. Errors name the pack and wrap ErrCorrupt when the data does
// not authenticate.
func (b *blobReader) chunk(ctx context.Context, id ID) ([]byte, error) {
	loc, pack, ok := b.r.idx.lookup(id)
	if !ok {
		loc, pack, ok = b.r.orphanLookup(ctx, id)
	}
	if !ok {
		if w := b.r.whereLost(id); w != "" {
			// Its copies are in packs marked bad (missing or truncated):
			// a truncated pack may still hold it intact.
			for _, alt := range b.r.idx.alternatives(id) {
				if d, err := b.read(ctx, id, alt.loc, alt.pack); err == nil {
					return d, nil
				}
			}
			return nil, fmt.Errorf("chunk %s is lost%s: %w", id.Short(), w, ErrCorrupt)
		}
		return nil, fmt.Errorf("chunk %s is not in the index: %w", id.Short(), ErrCorrupt)
	}
	data, err := b.read(ctx, id, loc, pack)
	if err != nil && isDataDamage(err) {
		// Another copy (a backup that healed the repository sent it
		// again, or two sent it at once)?
		for _, alt := range b.r.idx.alternatives(id) {
			if alt.pack.id == pack.id {
				continue
			}
			if d, aerr := b.read(ctx, id, alt.loc, alt.pack); aerr == nil {
				return d, nil
			}
		}
	}
	return data, err
}

// read reads and opens the copy of chunk id at loc in pack.
func (b *blobReader) read(ctx context.Context, id ID, loc blobLoc, pack packInfo) ([]byte, error) {
	name := packName(pack.id)
	b.r.blobBytesRead.Add(int64(loc.length))
	if b.r.chunkReadHook != nil {
		b.r.chunkReadHook(int(loc.length))
	}
	if cap(b.ct) < int(loc.length) {
		b.ct = make([]byte, loc.length)
	}
	b.ct = b.ct[:loc.length]
	direct := func() error {
		var err error
		if ok, rerr := b.readAt(ctx, name, int64(loc.offset)); ok {
			err = rerr
		} else {
			rc, gerr := b.r.store.Get(ctx, name, int64(loc.offset), int64(loc.length))
			if gerr != nil {
				return fmt.Errorf("reading %s: %w", shortName(name), gerr)
			}
			_, err = io.ReadFull(rc, b.ct)
			rc.Close()
		}
		if truncated(err) {
			return fmt.Errorf("%s: chunk %s: short read (%v): %w", shortName(name), id.Short(), err, ErrCorrupt)
		}
		if err != nil {
			return fmt.Errorf("reading %s: chunk %s: %w", shortName(name), id.Short(), err)
		}
		return nil
	}
	var err error
	if b.streams != nil {
		err = b.streams.read(ctx, name, int64(loc.offset), b.ct, direct)
	} else {
		err = direct()
	}
	if err != nil {
		return nil, err
	}
	e := blobEntry{ID: id, Flags: loc.flags, Counter: loc.counter, RawLen: loc.rawLen}
	return b.open(pack.id, e, b.ct)
}

// open authenticates one sealed blob of pack packID and checks its id.
func (b *blobReader) open(packID ID, e blobEntry, sealed []byte) ([]byte, error) {
	name := packName(packID)
	var nonce [12]byte
	var aad [33]byte
	var plain []byte
	var err error
	if b.aead != nil && b.aeadPack == packID || len(b.r.epochs.old) == 0 {
		if b.aead == nil || b.aeadPack != packID {
			b.aead, b.aeadPack = b.r.keys.packAEAD(packID), packID
		}
		plain, err = b.aead.Open(sealed[:0], packNonce(&nonce, uint64(e.Counter)), sealed, blobAAD(&aad, e.ID, e.Flags))
	} else {
		// A new pack, and several epochs: which one wrote it, tried into
		// a buffer of its own (a failed in-place Open overwrites sealed).
		for _, k := range b.r.packKeys(packID) {
			a := k.packAEAD(packID)
			if plain, err = a.Open(b.trial[:0], packNonce(&nonce, uint64(e.Counter)), sealed, blobAAD(&aad, e.ID, e.Flags)); err == nil {
				b.trial = plain
				b.r.notePackEpoch(packID, k)
				b.aead, b.aeadPack = a, packID
				break
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: chunk %s does not authenticate: %w", shortName(name), e.ID.Short(), ErrCorrupt)
	}
	if e.Flags&flagZstd != 0 {
		b.out, err = b.zd.DecodeAll(plain, b.out[:0])
		if err != nil {
			return nil, fmt.Errorf("%s: chunk %s: decompression failed (%v): %w", shortName(name), e.ID.Short(), err, ErrCorrupt)
		}
		plain = b.out
	}
	if len(plain) != int(e.RawLen) {
		return nil, fmt.Errorf("%s: chunk %s: length %d, index says %d: %w", shortName(name), e.ID.Short(), len(plain), e.RawLen, ErrCorrupt)
	}
	b.h.Reset()
	b.h.Write(plain)
	b.sum = b.h.Sum(b.sum[:0])
	if !bytes.Equal(b.sum, e.ID[:]) {
		return nil, fmt.Errorf("%s: chunk %s: content does not match its id: %w", shortName(name), e.ID.Short(), ErrCorrupt)
	}
	return plain, nil
}

// orphanLookup finds a chunk in a stored pack that no index object lists
// (an interrupted backup's, or one whose index object was lost): the
// trailers of such packs are read once per process. Their chunks are
// authenticated like any other, so a restore can use them.
func (r *Repository) orphanLookup(ctx context.Context, id ID) (blobLoc, packInfo, bool) {
	r.orphanOnce.Do(func() {
		packs, _, err := r.adoptPacks(ctx)
		if err != nil {
			return
		}
		r.orphans = map[ID]orphanLoc{}
		for _, p := range packs {
			for _, e := range p.entries {
				r.orphans[e.ID] = orphanLoc{blobLoc{counter: e.Counter, offset: e.Offset, length: e.Length, rawLen: e.RawLen, flags: e.Flags}, packInfo{id: p.id, size: p.size}}
			}
		}
	})
	o, ok := r.orphans[id]
	return o.loc, o.pack, ok
}

type orphanLoc struct {
	loc  blobLoc
	pack packInfo
}
