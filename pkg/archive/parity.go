package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/reedsolomon"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// Parity (FORMAT.md §5.1): with `init --parity N`, every pack gets a
// parity object parity/<pack id> holding Reed–Solomon parity over the
// pack's bytes, so a pack with a few damaged or missing bytes can be
// repaired in place (check --read-data --repair).
//
// The pack is cut into 16 KiB shards (the last one zero-padded); shard j
// belongs to group j mod G, with G = ceil(shards / 100), so every group
// has at most 100 data shards and a contiguous damaged stretch spreads
// over the groups. Each group gets N parity shards (N the percentage).
// Damaged shards are found by their checksums (the first 8 bytes of
// SHA-256 of each data and parity shard, stored in the parity object) and
// rebuilt as erasures. So any damage touching at most N shards of each
// group is repaired; in particular any one contiguous stretch of up to
// N·G shards (about N % of the pack, a truncated end included), or up to
// N scattered damaged shards per group.

const (
	parityShard     = 16 << 10
	parityGroupData = 100
	parityMagic     = "WPR1"
	maxParity       = 10 // percent
)

func parityName(id ID) string { return "parity/" + id.String() }

type parityLayout struct {
	packSize int64
	shards   int // data shards
	groups   int
	parity   int // parity shards per group
}

func newParityLayout(size int64, percent int) parityLayout {
	n := int((size + parityShard - 1) / parityShard)
	g := (n + parityGroupData - 1) / parityGroupData
	return parityLayout{packSize: size, shards: n, groups: max(g, 1), parity: percent}
}

// members returns the data shards of group g.
func (l parityLayout) members(g int) []int {
	var out []int
	for j := g; j < l.shards; j += l.groups {
		out = append(out, j)
	}
	return out
}

func shardSum(b []byte) [8]byte {
	h := sha256.Sum256(b)
	var s [8]byte
	copy(s[:], h[:8])
	return s
}

// readShard reads data shard j of a pack file (zero-padded past its end
// or a short file).
func readShard(f io.ReaderAt, j int, buf []byte) {
	clear(buf)
	_, _ = f.ReadAt(buf, int64(j)*parityShard)
}

// encodeParity computes the parity object of the pack in f (size bytes).
// Memory: one group (≤ 100 shards of 16 KiB) at a time.
func encodeParity(f io.ReaderAt, size int64, percent int) ([]byte, error) {
	l := newParityLayout(size, percent)
	enc, err := reedsolomon.New(parityGroupData, l.parity)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.WriteString(parityMagic)
	var hdr [4 + 2 + 2 + 8]byte
	binary.BigEndian.PutUint32(hdr[0:], parityShard)
	binary.BigEndian.PutUint16(hdr[4:], parityGroupData)
	binary.BigEndian.PutUint16(hdr[6:], uint16(l.parity))
	binary.BigEndian.PutUint64(hdr[8:], uint64(size))
	out.Write(hdr[:])
	// Data shard checksums, in pack order.
	buf := make([]byte, parityShard)
	for j := 0; j < l.shards; j++ {
		readShard(f, j, buf)
		s := shardSum(buf)
		out.Write(s[:])
	}
	shards := make([][]byte, parityGroupData+l.parity)
	for i := range shards {
		shards[i] = make([]byte, parityShard)
	}
	var paritySums bytes.Buffer
	var parityData bytes.Buffer
	for g := 0; g < l.groups; g++ {
		m := l.members(g)
		for i := 0; i < parityGroupData; i++ {
			if i < len(m) {
				readShard(f, m[i], shards[i])
			} else {
				clear(shards[i])
			}
		}
		if err := enc.Encode(shards); err != nil {
			return nil, err
		}
		for _, p := range shards[parityGroupData:] {
			s := shardSum(p)
			paritySums.Write(s[:])
			parityData.Write(p)
		}
	}
	out.Write(paritySums.Bytes())
	out.Write(parityData.Bytes())
	return out.Bytes(), nil
}

type parityObject struct {
	l          parityLayout
	dataSums   [][8]byte
	paritySums [][8]byte
	parity     []byte // groups × parity × shard
}

func decodeParity(b []byte) (*parityObject, error) {
	bad := func(why string) error { return fmt.Errorf("parity object: %s: %w", why, ErrCorrupt) }
	if len(b) < 4+16 || string(b[:4]) != parityMagic {
		return nil, bad("bad header")
	}
	if binary.BigEndian.Uint32(b[4:]) != parityShard || binary.BigEndian.Uint16(b[8:]) != parityGroupData {
		return nil, bad("unknown layout")
	}
	percent := int(binary.BigEndian.Uint16(b[10:]))
	size := int64(binary.BigEndian.Uint64(b[12:]))
	if percent < 1 || percent > maxParity || size < 0 || size > 1<<31 {
		return nil, bad("parameters out of range")
	}
	l := newParityLayout(size, percent)
	rest := b[20:]
	need := l.shards*8 + l.groups*l.parity*8 + l.groups*l.parity*parityShard
	if len(rest) != need {
		return nil, bad(fmt.Sprintf("%d bytes, want %d", len(rest), need))
	}
	p := &parityObject{l: l}
	for j := 0; j < l.shards; j++ {
		var s [8]byte
		copy(s[:], rest[j*8:])
		p.dataSums = append(p.dataSums, s)
	}
	rest = rest[l.shards*8:]
	for k := 0; k < l.groups*l.parity; k++ {
		var s [8]byte
		copy(s[:], rest[k*8:])
		p.paritySums = append(p.paritySums, s)
	}
	p.parity = rest[l.groups*l.parity*8:]
	return p, nil
}

// ErrBeyondParity is returned when a pack's damage exceeds what its
// parity can rebuild.
var ErrBeyondParity = errors.New("damage beyond the pack's parity")

// repairWithParity rebuilds the damaged shards of the pack file f (read
// and written in place; it is extended to the pack's size if short) and
// returns how many shards it rebuilt.
func repairWithParity(f *os.File, p *parityObject) (int, error) {
	l := p.l
	enc, err := reedsolomon.New(parityGroupData, l.parity)
	if err != nil {
		return 0, err
	}
	rebuilt := 0
	buf := make([]byte, parityShard)
	for g := 0; g < l.groups; g++ {
		m := l.members(g)
		shards := make([][]byte, parityGroupData+l.parity)
		var bad []int
		for i := 0; i < parityGroupData; i++ {
			if i >= len(m) {
				shards[i] = make([]byte, parityShard)
				continue
			}
			readShard(f, m[i], buf)
			if shardSum(buf) != p.dataSums[m[i]] {
				bad = append(bad, i)
				continue // nil: an erasure
			}
			shards[i] = append([]byte(nil), buf...)
		}
		for k := 0; k < l.parity; k++ {
			idx := g*l.parity + k
			ps := p.parity[idx*parityShard : (idx+1)*parityShard]
			if shardSum(ps) == p.paritySums[idx] {
				shards[parityGroupData+k] = append([]byte(nil), ps...)
			}
		}
		if len(bad) == 0 {
			continue
		}
		if err := enc.ReconstructData(shards); err != nil {
			return rebuilt, fmt.Errorf("%d damaged shards in group %d: %w", len(bad), g, ErrBeyondParity)
		}
		for _, i := range bad {
			j := m[i]
			data := shards[i]
			if shardSum(data) != p.dataSums[j] {
				return rebuilt, fmt.Errorf("shard %d rebuilt wrong: %w", j, ErrBeyondParity)
			}
			end := min(int64(j+1)*parityShard, l.packSize)
			if _, err := f.WriteAt(data[:end-int64(j)*parityShard], int64(j)*parityShard); err != nil {
				return rebuilt, err
			}
			rebuilt++
		}
	}
	if err := f.Truncate(l.packSize); err != nil {
		return rebuilt, err
	}
	return rebuilt, nil
}

// putParity stores the parity object of a finished pack (its file is
// still open), if the repository keeps parity.
func (r *Repository) putParity(ctx context.Context, id ID, f *os.File, size int64) error {
	if r.cfg.Parity <= 0 {
		return nil
	}
	data, err := encodeParity(f, size, r.cfg.Parity)
	if err != nil {
		return err
	}
	return r.store.Put(ctx, parityName(id), bytes.NewReader(data), int64(len(data)))
}

// RepairPack repairs a damaged pack in place from its parity object: it
// downloads the pack and its parity, rebuilds the damaged shards, checks
// that every blob of the repaired pack authenticates, and stores it
// again under its name. It returns the number of 16 KiB shards rebuilt.
func (r *Repository) RepairPack(ctx context.Context, id ID) (int, error) {
	rc, err := r.store.Get(ctx, parityName(id), 0, -1)
	if err != nil {
		return 0, fmt.Errorf("%s has no parity: %w", packName(id), err)
	}
	pdata, err := io.ReadAll(io.LimitReader(rc, 1<<30))
	rc.Close()
	if err != nil {
		return 0, err
	}
	p, err := decodeParity(pdata)
	if err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(r.tmpDir, "repair-*.pack")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if rc, err := r.store.Get(ctx, packName(id), 0, -1); err == nil {
		_, err = io.Copy(f, io.LimitReader(rc, p.l.packSize))
		rc.Close()
		if err != nil && !truncated(err) {
			return 0, err
		}
	} else if !errors.Is(err, cloud.ErrNotFound) {
		return 0, err
	}
	n, err := repairWithParity(f, p)
	if err != nil {
		return n, fmt.Errorf("%s: %w", packName(id), err)
	}
	if n == 0 {
		return 0, nil
	}
	// Every blob must authenticate before the repaired pack replaces the
	// stored one.
	if _, err := verifyPackFile(r, id, f, p.l.packSize); err != nil {
		return n, fmt.Errorf("%s: repaired pack does not verify: %w", packName(id), err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return n, err
	}
	if err := r.store.Put(ctx, packName(id), f, p.l.packSize); err != nil {
		return n, err
	}
	return n, nil
}

// verifyPackFile checks a local copy of a pack: its trailer
// authenticates and every blob opens.
func verifyPackFile(r *Repository, id ID, f *os.File, size int64) ([]blobEntry, error) {
	if size < 4+tagSize {
		return nil, ErrCorrupt
	}
	var lb [4]byte
	if _, err := f.ReadAt(lb[:], size-4); err != nil {
		return nil, err
	}
	tl := int64(binary.BigEndian.Uint32(lb[:]))
	if tl < tagSize || tl > maxTrailer || tl > size-4 {
		return nil, ErrCorrupt
	}
	sealed := make([]byte, tl)
	if _, err := f.ReadAt(sealed, size-4-tl); err != nil {
		return nil, err
	}
	entries, err := r.parseTrailer(id, sealed, size)
	if err != nil {
		return nil, err
	}
	br := r.newBlobReader()
	defer br.close()
	for _, e := range entries {
		buf := make([]byte, e.Length)
		if _, err := f.ReadAt(buf, int64(e.Offset)); err != nil {
			return nil, err
		}
		if _, err := br.open(id, e, buf); err != nil {
			return nil, err
		}
	}
	return entries, nil
}
