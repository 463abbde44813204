package vault

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
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

// FileSealer seals with an AES-256-GCM key kept in a file. The key sits
// next to the data it protects, so it only protects against nothing more
// than a careless copy of the database: use it for development only.
type FileSealer struct{ aead cipher.AEAD }

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
	return NewKeySealer(key)
}

// NewKeySealer seals with the given 32-byte AES key (tests, development).
func NewKeySealer(key []byte) (*FileSealer, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &FileSealer{aead: a}, nil
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
