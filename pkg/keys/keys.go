// Package keys holds a repository's key material and the key slots that
// protect it: its one job is to turn something the user has (a 64-digit
// recovery key, a password, later a key-vault secret) into the repository's
// master key, and to derive the purpose-specific subkeys the rest of
// wabackup uses from that master key.
//
// # Keys
//
// Every repository has a random 256-bit master key that the user never
// sees. Subkeys for individual purposes (chunk ids, encryption, the
// chunker) are derived from it with [Derive]:
//
//	subkey = HKDF-SHA256(ikm = key, salt = none, info = "wabackup v1 " || label, L = 32)
//
// A recovery key is a separate random 256-bit key, shown to the user as 64
// lowercase hex digits in 16 groups of 4 (see [FormatRecoveryKey] and
// [ParseRecoveryKey]).
//
// # Key slots
//
// A key slot wraps (encrypts) the master key under a secret the user holds.
// A repository can have any number of slots; each is stored as a plaintext
// JSON object (see [Slot] for the fields) because it protects itself, so
// adding or changing a password re-uploads nothing else.
//
// A slot is created as follows. First, fresh values are read from
// crypto/rand: a 16-byte id (stored as 32 lowercase hex digits), a 32-byte
// salt and a 12-byte nonce. Then the 32-byte wrapping key W is derived from
// the user's secret. For "password" slots, with the slot's Argon2id
// parameters t (passes), m (memory in KiB) and p (lanes):
//
//	W = Argon2id(password, salt, t, m, p, 32)
//
// For "recovery" and "vault" slots, whose secret is a 32-byte uniformly
// random key:
//
//	W = HKDF-SHA256(ikm = secret, salt = salt, info = "wabackup v1 slot wrap", L = 32)
//
// The associated data is a canonical encoding of the slot's header, so that
// a hostile store cannot swap kinds, ids or Argon2 parameters between slots
// (t, m and p are all zero for non-password slots):
//
//	AAD = "wabackup-slot-v1"           16 ASCII bytes
//	   || uint8(len(kind)) || kind     kind in ASCII: "recovery", "password" or "vault"
//	   || id                           16 bytes: the hex-decoded id
//	   || uint32be(t)                  4 bytes
//	   || uint32be(m)                  4 bytes
//	   || uint8(p)                     1 byte
//
// Finally the master key is sealed (ciphertext and 16-byte tag, 48 bytes):
//
//	wrapped = AES-256-GCM(key = W, nonce = nonce, plaintext = master key, AAD)
//
// Because the salt is fresh and random for every slot, so is W: each
// wrapping key encrypts exactly one message, and the random nonce is there
// only as a second line of defence against nonce reuse. Rewrapping (for
// example when a password changes) always creates a new slot with a new
// salt and nonce.
//
// A vault slot binds its extra fields (the vault's address, fingerprint
// and name) too: when it has any, its associated data goes on with them,
// names in byte order, each name and value length-prefixed:
//
//	AAD_vault = AAD || "extra" || uint8(n)
//	   || for each field: uint16be(len(name)) || name || uint16be(len(value)) || value
//
// (Vault slots made before this sealed their key under AAD alone; they
// still open, and [Slot.ExtraAuthentic] reports them.)
//
// Unwrapping recomputes W and opens the ciphertext; any wrong secret or any
// change to the salt, nonce, wrapped key, kind, id or Argon2 parameters
// (or a vault slot's extra fields) makes it fail with [ErrWrongKey]. The
// label and creation time, and the extra fields of other kinds, are
// informational and NOT authenticated. A vault slot's extra fields are
// authenticated only once the slot is opened, which needs the secret the
// vault releases: before that, whatever they say about the vault must be
// checked against what the user pinned (a fingerprint given out of band,
// or the local pin file).
//
// Argon2 parameters read from a slot are checked against hard caps (see
// [Argon2Params.Check]) before any key derivation runs, so a hostile
// repository cannot make a client allocate gigabytes or spin for minutes.
package keys

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// KeySize is the size in bytes of every key in wabackup.
const KeySize = 32

// Key is a 256-bit key: a repository master key, a recovery key or a
// derived subkey.
type Key [KeySize]byte

// NewKey returns a fresh random key read from crypto/rand.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("keys: reading random key: %w", err)
	}
	return k, nil
}

// deriveInfoPrefix prefixes every Derive label in the HKDF info string.
const deriveInfoPrefix = "wabackup v1 "

// Derive returns the 32-byte subkey of k for a purpose label, computed as
// HKDF-SHA256 with ikm = k, no salt and info = "wabackup v1 " + label.
// The same k and label always give the same subkey; different labels give
// independent subkeys. Labels are fixed strings chosen by the caller, such
// as "chunk id" or "chunker".
func Derive(k Key, label string) Key {
	b, err := hkdf.Key(sha256.New, k[:], nil, deriveInfoPrefix+label, KeySize)
	if err != nil {
		// Only possible for an output longer than 255*32 bytes.
		panic("keys: hkdf: " + err.Error())
	}
	var out Key
	copy(out[:], b)
	return out
}
