package archive

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/wabackup/wabackup/pkg/keys"
)

// ErrCorrupt marks data that failed authentication or parsing: a damaged,
// truncated, swapped or tampered object. Messages name the object.
var ErrCorrupt = errors.New("corrupted or tampered data")

// ID is a 32-byte identifier: a chunk id (keyed hash of the plaintext) or
// a random object id.
type ID [32]byte

func (id ID) String() string { return fmt.Sprintf("%x", id[:]) }

// Short is the first 8 hex digits, for messages.
func (id ID) Short() string { return fmt.Sprintf("%x", id[:4]) }

// ParseID parses 64 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("invalid id %q", s)
	}
	for i := 0; i < 32; i++ {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return id, fmt.Errorf("invalid id %q", s)
		}
		id[i] = hi<<4 | lo
	}
	return id, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// NewRandomID returns 32 bytes from crypto/rand.
func NewRandomID() ID {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		panic(err)
	}
	return id
}

// keySet holds the subkeys derived from the master key (FORMAT.md §Keys)
// of one key epoch (§2.4): epoch 0 derives all of them from its master
// key; a later epoch derives the pack, object and config keys from its
// own and keeps the content keys (chunk id, chunker, page tag) of epoch 0.
type keySet struct {
	epoch   uint32
	master  keys.Key
	chunkID keys.Key // HMAC-SHA256 key for chunk ids
	pack    keys.Key // HKDF input for per-pack keys
	object  keys.Key // HKDF input for per-object STREAM keys
	chunker keys.Key // keys the FastCDC gear table
	config  keys.Key // HMAC-SHA256 key for the config MAC
	pageTag keys.Key // HMAC-SHA256 key for database page tags (format 2)
}

// epochKeys derives the keys of an epoch with the content keys of the
// keyring (nil in epoch 0: derived from master).
func epochKeys(epoch uint32, master keys.Key, content *keys.ContentKeys) *keySet {
	k := deriveKeys(master)
	k.epoch = epoch
	if content != nil {
		copy(k.chunkID[:], content.ChunkID)
		copy(k.chunker[:], content.Chunker)
		copy(k.pageTag[:], content.PageTag)
	}
	return k
}

func deriveKeys(master keys.Key) *keySet {
	return &keySet{
		master:  master,
		chunkID: keys.Derive(master, "chunk id"),
		pack:    keys.Derive(master, "pack"),
		object:  keys.Derive(master, "object"),
		chunker: keys.Derive(master, "chunker"),
		config:  keys.Derive(master, "config mac"),
		pageTag: keys.Derive(master, "page tag"),
	}
}

// newIDHasher returns an HMAC-SHA256 keyed for chunk ids. Not safe for
// concurrent use: one per worker.
func (k *keySet) newIDHasher() hash.Hash { return hmac.New(sha256.New, k.chunkID[:]) }

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func hkdfKey(ikm keys.Key, salt []byte, info string) []byte {
	k, err := hkdf.Key(sha256.New, ikm[:], salt, info, 32)
	if err != nil {
		panic(err)
	}
	return k
}

// packAEAD returns the AES-256-GCM instance for the pack with the given id.
func (k *keySet) packAEAD(packID ID) cipher.AEAD {
	return newGCM(hkdfKey(k.pack, packID[:], "wabackup v1 pack"))
}

// packNonce is the 12-byte nonce of blob number counter inside one pack:
// the counter as 8 bytes big-endian followed by 4 zero bytes.
func packNonce(dst *[12]byte, counter uint64) []byte {
	binary.BigEndian.PutUint64(dst[:8], counter)
	dst[8], dst[9], dst[10], dst[11] = 0, 0, 0, 0
	return dst[:]
}

// trailerCounter is the nonce counter reserved for a pack's trailer.
const trailerCounter = ^uint64(0)

// STREAM framing (FORMAT.md §Objects): salt(16) then segments of
// segmentSize plaintext bytes, each sealed with nonce = counter(11 bytes
// BE) || last-flag(1 byte).
const (
	saltSize    = 16
	segmentSize = 64 << 10
	tagSize     = 16
)

func (k *keySet) objectAEAD(salt []byte, name string) cipher.AEAD {
	return newGCM(hkdfKey(k.object, salt, "wabackup v1 object "+name))
}

func streamNonce(dst *[12]byte, counter uint64, last bool) []byte {
	*dst = [12]byte{}
	binary.BigEndian.PutUint64(dst[3:11], counter)
	if last {
		dst[11] = 1
	}
	return dst[:]
}

// streamWriter encrypts a stream into w with the STREAM construction. It
// holds one segment in memory.
type streamWriter struct {
	w       io.Writer
	aead    cipher.AEAD
	buf     []byte
	out     []byte
	counter uint64
	err     error
}

func (k *keySet) newStreamWriter(w io.Writer, name string) (*streamWriter, error) {
	salt := make([]byte, saltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := w.Write(salt); err != nil {
		return nil, err
	}
	return &streamWriter{w: w, aead: k.objectAEAD(salt, name), buf: make([]byte, 0, segmentSize), out: make([]byte, 0, segmentSize+tagSize)}, nil
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := 0
	for len(p) > 0 {
		if len(s.buf) == segmentSize {
			// Only flush a full segment once more data arrives, so the
			// last segment is always sealed with the last flag.
			if err := s.flush(false); err != nil {
				return n, err
			}
		}
		c := copy(s.buf[len(s.buf):segmentSize], p)
		s.buf = s.buf[:len(s.buf)+c]
		p = p[c:]
		n += c
	}
	return n, nil
}

func (s *streamWriter) flush(last bool) error {
	var nonce [12]byte
	s.out = s.aead.Seal(s.out[:0], streamNonce(&nonce, s.counter, last), s.buf, nil)
	s.counter++
	s.buf = s.buf[:0]
	if _, err := s.w.Write(s.out); err != nil {
		s.err = err
		return err
	}
	return nil
}

// Close seals the final segment. It does not close the underlying writer.
func (s *streamWriter) Close() error {
	if s.err != nil {
		return s.err
	}
	s.err = errors.New("stream writer closed")
	return s.flush(true)
}

// truncated reports whether a read failed because the object ended early,
// which is damage, rather than because reading failed (a network error, a
// cancelled context), which is not and must not be reported as ErrCorrupt.
func truncated(err error) bool { return err == io.EOF || err == io.ErrUnexpectedEOF }

// srcErr remembers the last error other than io.EOF its reader returned,
// so a decoder's own "malformed" error can be told from a failure of its
// source.
type srcErr struct {
	r   io.Reader
	err error
}

func (s *srcErr) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// streamReader decrypts a STREAM object. It returns an error wrapping
// ErrCorrupt on any authentication failure, truncation or trailing data.
type streamReader struct {
	r    io.Reader
	name string
	aead cipher.AEAD
	// more are the AEADs of the other epochs a first segment that does
	// not open under aead is tried with; epoch is the epoch that opened.
	more    []cipher.AEAD
	moreEp  []uint32
	epoch   uint32
	onOld   func() // called when the first segment opens under more
	buf     []byte // ciphertext segment + one byte look-ahead
	plain   []byte
	pos     int
	counter uint64
	done    bool
	err     error
}

func (k *keySet) newStreamReader(r io.Reader, name string) (*streamReader, error) {
	return newStreamReaderKeys(r, name, []*keySet{k})
}

// newStreamReaderKeys reads an object written under any of ks (the
// current epoch first): the first segment says which.
func newStreamReaderKeys(r io.Reader, name string, ks []*keySet) (*streamReader, error) {
	salt := make([]byte, saltSize)
	if _, err := io.ReadFull(r, salt); err != nil {
		if truncated(err) {
			return nil, fmt.Errorf("%s: truncated object header: %w", name, ErrCorrupt)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	sr := &streamReader{r: r, name: name, aead: ks[0].objectAEAD(salt, name), epoch: ks[0].epoch, buf: make([]byte, 0, segmentSize+tagSize+1)}
	for _, k := range ks[1:] {
		sr.more = append(sr.more, k.objectAEAD(salt, name))
		sr.moreEp = append(sr.moreEp, k.epoch)
	}
	return sr, nil
}

func (s *streamReader) Read(p []byte) (int, error) {
	for s.pos == len(s.plain) {
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		s.err = s.next()
	}
	n := copy(p, s.plain[s.pos:])
	s.pos += n
	return n, nil
}

// next reads one segment. A segment is known to be the last when fewer
// than a full segment follows it.
func (s *streamReader) next() error {
	full := segmentSize + tagSize
	// s.buf may hold one look-ahead byte from the previous call.
	n, err := io.ReadFull(s.r, s.buf[len(s.buf):full+1])
	s.buf = s.buf[:len(s.buf)+n]
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	last := len(s.buf) <= full
	seg := s.buf
	if !last {
		seg = s.buf[:full]
	}
	if len(seg) < tagSize {
		return fmt.Errorf("%s: truncated: %w", s.name, ErrCorrupt)
	}
	var nonce [12]byte
	plain, oerr := s.aead.Open(s.plain[:0], streamNonce(&nonce, s.counter, last), seg, nil)
	if oerr != nil && s.counter == 0 {
		// Written in another epoch? (seg is not overwritten: the
		// plaintext goes to s.plain.)
		for i, a := range s.more {
			if plain, oerr = a.Open(s.plain[:0], streamNonce(&nonce, 0, last), seg, nil); oerr == nil {
				s.aead, s.epoch = a, s.moreEp[i]
				if s.onOld != nil {
					s.onOld()
				}
				break
			}
		}
	}
	if oerr != nil {
		if !last {
			// A full segment that fails may be the last one of a stream
			// whose plaintext is an exact multiple of the segment size.
			return fmt.Errorf("%s: segment %d: %w", s.name, s.counter, ErrCorrupt)
		}
		return fmt.Errorf("%s: segment %d (truncated or tampered): %w", s.name, s.counter, ErrCorrupt)
	}
	if len(plain) == 0 && s.counter > 0 {
		return fmt.Errorf("%s: empty final segment: %w", s.name, ErrCorrupt)
	}
	s.plain, s.pos = plain, 0
	s.counter++
	if last {
		s.done = true
		s.buf = s.buf[:0]
	} else {
		la := s.buf[full]
		s.buf = append(s.buf[:0], la)
	}
	return nil
}
