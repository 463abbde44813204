package archive

import (
	"bufio"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/wabackup/wabackup/internal/anonfile"
	"github.com/wabackup/wabackup/pkg/cloud"
)

// Blob flags (FORMAT.md §Packs).
const (
	flagZstd = 1 << 0
)

// blobEntry locates one encrypted chunk inside a pack.
type blobEntry struct {
	ID      ID
	Flags   uint8
	Counter uint32 // nonce counter: the blob's position in the pack
	Offset  uint32 // of the ciphertext in the pack
	Length  uint32 // ciphertext length (plaintext + 16)
	RawLen  uint32 // chunk length before compression
}

const trailerEntrySize = 32 + 1 + 4*4

// blobAAD is the associated data of a blob: its chunk id and flags.
func blobAAD(dst *[33]byte, id ID, flags uint8) []byte {
	copy(dst[:32], id[:])
	dst[32] = flags
	return dst[:]
}

var trailerAAD = []byte("wabackup v1 pack trailer")

// packWriter builds one pack in a temporary file.
type packWriter struct {
	id      ID
	aead    cipher.AEAD
	f       *os.File
	w       *bufio.Writer
	size    int64
	entries []blobEntry
	sealBuf []byte
	anon    bool // the file has no name to remove
}

// newPackWriter starts a pack in a new file in dir. It is anonymous
// where the file system supports it (O_TMPFILE: no name at all until a
// FileStore links it into place), so a killed process leaves nothing.
// Where it does not, the file is named, and with unlinked it is unlinked
// at once (it is then read back through its descriptor, never linked).
func (k *keySet) newPackWriter(dir string, unlinked bool) (*packWriter, error) {
	f, err := anonfile.Open(dir, true)
	anonymous := err == nil
	if !anonymous {
		f, err = os.CreateTemp(dir, "pack-*.tmp")
		if err == nil && unlinked {
			os.Remove(f.Name())
			anonymous = true
		}
	}
	if err != nil {
		return nil, fmt.Errorf("temporary pack file: %w", err)
	}
	id := NewRandomID()
	return &packWriter{id: id, aead: k.packAEAD(id), f: f, w: bufio.NewWriterSize(f, 256<<10), anon: anonymous}, nil
}

// add encrypts payload (already compressed or raw per flags) and appends
// it. The payload is sealed in place when its capacity leaves room for the
// tag (the backup pipeline's buffers do), so payload is clobbered.
func (p *packWriter) add(id ID, flags uint8, payload []byte, rawLen int) error {
	counter := uint32(len(p.entries))
	var nonce [12]byte
	var aad [33]byte
	dst := payload[:0]
	if cap(payload)-len(payload) < tagSize {
		dst = p.sealBuf[:0]
	}
	sealed := p.aead.Seal(dst, packNonce(&nonce, uint64(counter)), payload, blobAAD(&aad, id, flags))
	if cap(payload)-len(payload) < tagSize {
		p.sealBuf = sealed
	}
	if _, err := p.w.Write(sealed); err != nil {
		return err
	}
	p.entries = append(p.entries, blobEntry{ID: id, Flags: flags, Counter: counter, Offset: uint32(p.size), Length: uint32(len(sealed)), RawLen: uint32(rawLen)})
	p.size += int64(len(sealed))
	return nil
}

// finish writes the trailer and returns the pack's total size. The file
// is left open and positioned at the start for uploading.
func (p *packWriter) finish() (int64, error) {
	plain := make([]byte, 0, 8+len(p.entries)*trailerEntrySize)
	plain = append(plain, "WPK1"...)
	plain = binary.BigEndian.AppendUint32(plain, uint32(len(p.entries)))
	for _, e := range p.entries {
		plain = append(plain, e.ID[:]...)
		plain = append(plain, e.Flags)
		plain = binary.BigEndian.AppendUint32(plain, e.Counter)
		plain = binary.BigEndian.AppendUint32(plain, e.Offset)
		plain = binary.BigEndian.AppendUint32(plain, e.Length)
		plain = binary.BigEndian.AppendUint32(plain, e.RawLen)
	}
	var nonce [12]byte
	sealed := p.aead.Seal(nil, packNonce(&nonce, trailerCounter), plain, trailerAAD)
	sealed = binary.BigEndian.AppendUint32(sealed, uint32(len(sealed)))
	if _, err := p.w.Write(sealed); err != nil {
		return 0, err
	}
	p.size += int64(len(sealed))
	if err := p.w.Flush(); err != nil {
		return 0, err
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	return p.size, nil
}

func (p *packWriter) discard() {
	p.f.Close()
	if !p.anon {
		os.Remove(p.f.Name())
	}
}

// maxTrailer bounds the trailer a reader accepts (a hostile store must not
// make us allocate much): enough for 1M blobs.
const maxTrailer = 1 << 20 * trailerEntrySize

// parseTrailer decrypts and parses a pack trailer (the sealed bytes, without
// the 4-byte length). packSize is the pack's total size, to bound offsets.
func (k *keySet) parseTrailer(packID ID, sealed []byte, packSize int64) ([]blobEntry, error) {
	name := packName(packID)
	var nonce [12]byte
	plain, err := k.packAEAD(packID).Open(nil, packNonce(&nonce, trailerCounter), sealed, trailerAAD)
	if err != nil {
		return nil, fmt.Errorf("%s: pack trailer does not authenticate: %w", name, ErrCorrupt)
	}
	if len(plain) < 8 || string(plain[:4]) != "WPK1" {
		return nil, fmt.Errorf("%s: bad pack trailer: %w", name, ErrCorrupt)
	}
	n := binary.BigEndian.Uint32(plain[4:8])
	if uint64(len(plain)-8) != uint64(n)*trailerEntrySize {
		return nil, fmt.Errorf("%s: pack trailer length mismatch: %w", name, ErrCorrupt)
	}
	dataEnd := packSize - int64(len(sealed)) - 4
	out := make([]blobEntry, n)
	b := plain[8:]
	var next int64
	for i := range out {
		e := &out[i]
		copy(e.ID[:], b[:32])
		e.Flags = b[32]
		e.Counter = binary.BigEndian.Uint32(b[33:])
		e.Offset = binary.BigEndian.Uint32(b[37:])
		e.Length = binary.BigEndian.Uint32(b[41:])
		e.RawLen = binary.BigEndian.Uint32(b[45:])
		b = b[trailerEntrySize:]
		if e.Counter != uint32(i) || int64(e.Offset) != next || e.Length < tagSize || e.Flags&^flagZstd != 0 || e.RawLen > maxChunkSize {
			return nil, fmt.Errorf("%s: inconsistent pack trailer entry %d: %w", name, i, ErrCorrupt)
		}
		next += int64(e.Length)
	}
	if next != dataEnd {
		return nil, fmt.Errorf("%s: pack trailer does not cover the pack: %w", name, ErrCorrupt)
	}
	return out, nil
}

func packName(id ID) string {
	s := id.String()
	return "data/" + s[:2] + "/" + s
}

// packDir is where packs are staged: the store's own staging directory
// when it can take files without a copy, unless a temp dir was set.
func (r *Repository) packDir() string {
	if fs, ok := r.store.(cloud.FileStore); ok && !r.tmpDirSet {
		return fs.StagingDir()
	}
	return r.tmpDir
}

// newPackWriter starts a pack staged in packDir. Unless the store will
// take the file by name (a FileStore's staging directory), the file is
// anonymous: written and read back through its descriptor, so a killed
// process leaves nothing in the temp directory.
func (r *Repository) newPackWriter() (*packWriter, error) {
	dir := r.packDir()
	fs, ok := r.store.(cloud.FileStore)
	return r.keys.newPackWriter(dir, !ok || dir != fs.StagingDir())
}

// putPack stores a finished pack, moving (or linking) the file when the
// store allows.
func (r *Repository) putPack(ctx context.Context, pw *packWriter) error {
	// The parity object first: a pack is never stored without it (an
	// orphan parity object is harmless; prune removes it).
	if err := r.putParity(ctx, pw.id, pw.f, pw.size); err != nil {
		return fmt.Errorf("parity of %s: %w", packName(pw.id), err)
	}
	if fs, ok := r.store.(cloud.FileStore); ok && r.packDir() == fs.StagingDir() {
		return fs.PutFile(ctx, packName(pw.id), pw.f, pw.size)
	}
	return r.store.Put(ctx, packName(pw.id), pw.f, pw.size)
}
