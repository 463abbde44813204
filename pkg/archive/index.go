package archive

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// blobLoc is where a chunk lives: 24 bytes per chunk in memory.
type blobLoc struct {
	pack    uint32 // position in Index.packs
	counter uint32
	offset  uint32
	length  uint32
	rawLen  uint32
	flags   uint8
}

type packInfo struct {
	id   ID
	size int64
}

// Index maps chunk ids to their place in the packs. It is safe for
// concurrent use.
type Index struct {
	mu      sync.RWMutex
	packs   []packInfo
	packIdx map[ID]uint32
	blobs   map[ID]blobLoc
}

func newIndex() *Index {
	return &Index{packIdx: map[ID]uint32{}, blobs: map[ID]blobLoc{}}
}

// addPack records a pack and its blobs. Chunks already indexed elsewhere
// keep their first location.
func (x *Index) addPack(id ID, size int64, entries []blobEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pi, ok := x.packIdx[id]
	if !ok {
		pi = uint32(len(x.packs))
		x.packs = append(x.packs, packInfo{id: id, size: size})
		x.packIdx[id] = pi
	}
	for _, e := range entries {
		if _, dup := x.blobs[e.ID]; dup {
			continue
		}
		x.blobs[e.ID] = blobLoc{pack: pi, counter: e.Counter, offset: e.Offset, length: e.Length, rawLen: e.RawLen, flags: e.Flags}
	}
}

// Has reports whether the chunk is stored.
func (x *Index) Has(id ID) bool {
	x.mu.RLock()
	_, ok := x.blobs[id]
	x.mu.RUnlock()
	return ok
}

func (x *Index) lookup(id ID) (blobLoc, packInfo, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.blobs[id]
	if !ok {
		return l, packInfo{}, false
	}
	return l, x.packs[l.pack], true
}

func (x *Index) hasPack(id ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packIdx[id]
	return ok
}

// Len returns the number of chunks and packs.
func (x *Index) Len() (chunks, packs int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs), len(x.packs)
}

// byPack groups the index's blobs by pack, in counter order.
func (x *Index) byPack() map[ID][]blobEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make(map[ID][]blobEntry, len(x.packs))
	for id, l := range x.blobs {
		p := x.packs[l.pack].id
		out[p] = append(out[p], blobEntry{ID: id, Flags: l.flags, Counter: l.counter, Offset: l.offset, Length: l.length, RawLen: l.rawLen})
	}
	for _, p := range x.packs {
		es := out[p.id]
		sortEntries(es)
	}
	return out
}

func sortEntries(es []blobEntry) {
	// insertion sort is fine for the few dozen blobs of a pack
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Counter < es[j-1].Counter; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// packIndex is one pack's part of an index object.
type packIndex struct {
	id      ID
	size    int64
	entries []blobEntry
}

const indexMagic = "WIX1"

// Bounds a decoder enforces (a hostile or damaged object must not make us
// allocate without limit).
const (
	maxPacksPerIndex = 1 << 20
	maxBlobsPerPack  = 1 << 20
	maxPackSize      = 1 << 32
)

func encodeIndex(w io.Writer, packs []packIndex) error {
	bw := bufio.NewWriter(w)
	var buf []byte
	buf = append(buf, indexMagic...)
	buf = binary.AppendUvarint(buf, uint64(len(packs)))
	for _, p := range packs {
		buf = append(buf, p.id[:]...)
		buf = binary.AppendUvarint(buf, uint64(p.size))
		buf = binary.AppendUvarint(buf, uint64(len(p.entries)))
		for _, e := range p.entries {
			buf = append(buf, e.ID[:]...)
			buf = append(buf, e.Flags)
			buf = binary.AppendUvarint(buf, uint64(e.Counter))
			buf = binary.AppendUvarint(buf, uint64(e.Offset))
			buf = binary.AppendUvarint(buf, uint64(e.Length))
			buf = binary.AppendUvarint(buf, uint64(e.RawLen))
			if len(buf) > 32<<10 {
				if _, err := bw.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	return bw.Flush()
}

var errIndexFormat = errors.New("malformed index")

// decodeIndex parses an index object's plaintext, calling fn per pack.
func decodeIndex(r io.Reader, fn func(packIndex) error) error {
	br := bufio.NewReader(r)
	var magic [4]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil || string(magic[:]) != indexMagic {
		return errIndexFormat
	}
	uv := func(max uint64) (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err != nil || v > max {
			return 0, errIndexFormat
		}
		return v, nil
	}
	np, err := uv(maxPacksPerIndex)
	if err != nil {
		return err
	}
	for i := uint64(0); i < np; i++ {
		var p packIndex
		if _, err := io.ReadFull(br, p.id[:]); err != nil {
			return errIndexFormat
		}
		size, err := uv(maxPackSize)
		if err != nil {
			return err
		}
		p.size = int64(size)
		ne, err := uv(maxBlobsPerPack)
		if err != nil {
			return err
		}
		p.entries = make([]blobEntry, 0, min(ne, 4096))
		for j := uint64(0); j < ne; j++ {
			var e blobEntry
			if _, err := io.ReadFull(br, e.ID[:]); err != nil {
				return errIndexFormat
			}
			if e.Flags, err = br.ReadByte(); err != nil || e.Flags&^flagZstd != 0 {
				return errIndexFormat
			}
			var v [4]uint64
			for k := range v {
				if v[k], err = uv(1<<32 - 1); err != nil {
					return err
				}
			}
			e.Counter, e.Offset, e.Length, e.RawLen = uint32(v[0]), uint32(v[1]), uint32(v[2]), uint32(v[3])
			if uint64(e.Offset)+uint64(e.Length) > size || e.Length < tagSize || e.RawLen > maxChunkSize {
				return errIndexFormat
			}
			p.entries = append(p.entries, e)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return fmt.Errorf("%w: trailing data", errIndexFormat)
	}
	return nil
}
