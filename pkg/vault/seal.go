package vault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/wabackup/wabackup/internal/atomicfile"
)

// Sealer encrypts the vault's secrets and records at rest. The production
// sealer (package hsm) keeps its key inside a PKCS#11 token; FileSealer is
// for development only.
type Sealer interface {
	// Seal encrypts and authenticates plaintext, binding aad.
	Seal(plaintext, aad []byte) ([]byte, error)
	// Open reverses Seal; it fails if the ciphertext or aad was altered.
	Open(sealed, aad []byte) ([]byte, error)
	// Close releases the sealer's resources.
	Close() error
}

// ErrUnseal is returned when a sealed value does not open.
var ErrUnseal = errors.New("vault: sealed value does not open (wrong sealing key or tampered data)")

// Ratchet is implemented by sealers that can also make and destroy keys
// on demand: the HSM (a token object per key) and, for development, the
// file sealer. RatchetStore seals its key table under a new epoch key at
// every commit and destroys the one before, so no copy of the storage
// taken earlier opens again (docs/VAULT.md, "Rollback").
type Ratchet interface {
	// NewEpochKey makes a new key and returns its id, which starts with
	// prefix (the store's own, so several stores may share a sealer).
	NewEpochKey(prefix []byte) (id []byte, err error)
	// EpochKeys lists the ids of the epoch keys the sealer holds that
	// start with prefix.
	EpochKeys(prefix []byte) ([][]byte, error)
	// DestroyEpochKey destroys a key for good.
	DestroyEpochKey(id []byte) error
	// SealEpoch and OpenEpoch are Seal and Open under an epoch key.
	SealEpoch(id, plaintext, aad []byte) ([]byte, error)
	OpenEpoch(id, sealed, aad []byte) ([]byte, error)
	// Record keeps rec (a few bytes) in the sealer's own state, beside
	// its keys and apart from any storage, for good; keeping a record
	// kept already changes nothing. Records returns every record kept.
	// RatchetStore records there that it is making, and has made, a key
	// table (docs/VAULT.md, "Rollback"), so that no copy of the storage
	// from before that can be taken over again.
	Record(rec []byte) error
	Records() ([][]byte, error)
}

// FileSealer seals with an AES-256-GCM key kept in a file. The key sits
// next to the data it protects, so it only protects against nothing more
// than a careless copy of the database: use it for development only. Its
// epoch keys (Ratchet) are files in an "epoch" directory beside the key
// file, or, for NewKeySealer, kept in memory.
type FileSealer struct {
	aead     cipher.AEAD
	epochDir string // "": in memory
	mu       sync.Mutex
	epochs   map[string][]byte
	records  [][]byte // in memory only
}

// OpenFileSealer reads the 32-byte key at path, creating it (mode 0600) if
// create is set and it does not exist.
func OpenFileSealer(path string, create bool) (*FileSealer, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(key); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("vault: sealing key file %s holds %d bytes, want 32", path, len(key))
	}
	fs, err := NewKeySealer(key)
	if err != nil {
		return nil, err
	}
	fs.epochDir = filepath.Join(filepath.Dir(path), "epoch")
	return fs, nil
}

// NewKeySealer seals with the given 32-byte AES key (tests, development).
func NewKeySealer(key []byte) (*FileSealer, error) {
	a, err := gcm(key)
	if err != nil {
		return nil, err
	}
	return &FileSealer{aead: a, epochs: map[string][]byte{}}, nil
}

// Seal implements Sealer: nonce(12) || ciphertext || tag(16).
func (s *FileSealer) Seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, 12, 12+len(plaintext)+16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, aad), nil
}

// Open implements Sealer.
func (s *FileSealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 28 {
		return nil, ErrUnseal
	}
	pt, err := s.aead.Open(nil, sealed[:12], sealed[12:], aad)
	if err != nil {
		return nil, ErrUnseal
	}
	return pt, nil
}

// Close implements Sealer.
func (s *FileSealer) Close() error { return nil }

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// NewEpochKey implements Ratchet.
func (s *FileSealer) NewEpochKey(prefix []byte) ([]byte, error) {
	id, key := append(bytes.Clone(prefix), randBytes(8)...), randBytes(32)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epochDir == "" {
		s.epochs[hex.EncodeToString(id)] = key
		return id, nil
	}
	if err := os.MkdirAll(s.epochDir, 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(s.epochDir, hex.EncodeToString(id)+".key"), key, 0o600); err != nil {
		return nil, err
	}
	return id, nil
}

// EpochKeys implements Ratchet.
func (s *FileSealer) EpochKeys(prefix []byte) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids [][]byte
	if s.epochDir == "" {
		for h := range s.epochs {
			if id, _ := hex.DecodeString(h); bytes.HasPrefix(id, prefix) {
				ids = append(ids, id)
			}
		}
		return ids, nil
	}
	des, err := os.ReadDir(s.epochDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, de := range des {
		if h, ok := strings.CutSuffix(de.Name(), ".key"); ok {
			if id, err := hex.DecodeString(h); err == nil && bytes.HasPrefix(id, prefix) {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// DestroyEpochKey implements Ratchet: the file is removed and the
// directory synced.
func (s *FileSealer) DestroyEpochKey(id []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := hex.EncodeToString(id)
	if s.epochDir == "" {
		delete(s.epochs, h)
		return nil
	}
	if err := os.Remove(filepath.Join(s.epochDir, h+".key")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	d, err := os.Open(s.epochDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *FileSealer) epochAEAD(id []byte) (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := hex.EncodeToString(id)
	key := s.epochs[h]
	if key == nil && s.epochDir != "" {
		var err error
		if key, err = os.ReadFile(filepath.Join(s.epochDir, h+".key")); err != nil {
			return nil, fmt.Errorf("vault: epoch key %s: %w", h, err)
		}
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("vault: no epoch key %s", h)
	}
	return gcm(key)
}

// SealEpoch implements Ratchet.
func (s *FileSealer) SealEpoch(id, plaintext, aad []byte) ([]byte, error) {
	a, err := s.epochAEAD(id)
	if err != nil {
		return nil, err
	}
	nonce := randBytes(12)
	return a.Seal(nonce, nonce, plaintext, aad), nil
}

// OpenEpoch implements Ratchet.
func (s *FileSealer) OpenEpoch(id, sealed, aad []byte) ([]byte, error) {
	a, err := s.epochAEAD(id)
	if err != nil {
		return nil, err
	}
	if len(sealed) < 28 {
		return nil, ErrUnseal
	}
	pt, err := a.Open(nil, sealed[:12], sealed[12:], aad)
	if err != nil {
		return nil, ErrUnseal
	}
	return pt, nil
}

// recordsFile holds a FileSealer's records (Ratchet), one hex line each,
// in its epoch directory.
const recordsFile = "records"

// Record implements Ratchet: in memory, or in the file "records" of the
// epoch directory (rewritten whole, synced).
func (s *FileSealer) Record(rec []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.readRecords()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if bytes.Equal(r, rec) {
			return nil
		}
	}
	if s.epochDir == "" {
		s.records = append(s.records, bytes.Clone(rec))
		return nil
	}
	var b []byte
	for _, r := range append(recs, rec) {
		b = append(hex.AppendEncode(b, r), '\n')
	}
	return atomicfile.Write(filepath.Join(s.epochDir, recordsFile), b, 0o600)
}

// Records implements Ratchet.
func (s *FileSealer) Records() ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readRecords()
}

func (s *FileSealer) readRecords() ([][]byte, error) {
	if s.epochDir == "" {
		var recs [][]byte
		for _, r := range s.records {
			recs = append(recs, bytes.Clone(r))
		}
		return recs, nil
	}
	b, err := os.ReadFile(filepath.Join(s.epochDir, recordsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var recs [][]byte
	for _, line := range strings.Fields(string(b)) {
		r, err := hex.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("vault: malformed record in %s", filepath.Join(s.epochDir, recordsFile))
		}
		recs = append(recs, r)
	}
	return recs, nil
}
