package keys

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// A Keyring says which key slots open a repository (format version 3,
// FORMAT.md §2.4), so that the store cannot put a removed slot back, and
// carries the master keys of the repository's earlier epochs, so that data
// written before a key rotation stays readable through the slots of the
// current epoch. It is stored encrypted and authenticated under the
// current epoch's master key; this package only encodes it.
type Keyring struct {
	V       int       `json:"v"`       // 1
	Version uint64    `json:"version"` // grows by one with every change
	Time    time.Time `json:"time"`
	// Epoch is the epoch of the master key that seals the keyring and
	// that every slot in Slots wraps.
	Epoch uint32 `json:"epoch"`
	// Content holds the keys of a repository's content (chunk ids, the
	// chunker, database page tags), which never change with the epoch so
	// that backups keep deduplicating against older data: absent in
	// epoch 0, where they are derived from the master key.
	Content *ContentKeys `json:"content,omitempty"`
	// Old are the master keys of earlier epochs whose objects may still
	// be in the store; rotate --rewrite empties it.
	Old []EpochKey `json:"old,omitempty"`
	// Retired are the earlier epochs whose keys were destroyed (every
	// object re-encrypted): informational.
	Retired []RetiredEpoch `json:"retired,omitempty"`
	Slots   []SlotRef      `json:"slots"`
	Removed []RemovedSlot  `json:"removed,omitempty"`
	// Rewrite says a rotate --rewrite is re-encrypting the objects of the
	// Old epochs; it is cleared, with Old, when that is done.
	Rewrite bool `json:"rewrite,omitempty"`
}

// ContentKeys are the keys of the repository's content (see Keyring).
type ContentKeys struct {
	ChunkID []byte `json:"chunk_id"`
	Chunker []byte `json:"chunker"`
	PageTag []byte `json:"page_tag"`
}

// EpochKey is the master key of an earlier epoch.
type EpochKey struct {
	Epoch   uint32    `json:"epoch"`
	Key     []byte    `json:"key"`
	Created time.Time `json:"created"`
}

// RetiredEpoch is an epoch whose key no longer exists.
type RetiredEpoch struct {
	Epoch uint32    `json:"epoch"`
	Time  time.Time `json:"time"`
}

// SlotRef names a slot object that opens the repository: its id and the
// SHA-256 of its stored bytes (an altered slot is not this one).
type SlotRef struct {
	ID     string `json:"id"`
	SHA256 string `json:"sha256"`
}

// RemovedSlot is a slot that no longer opens the repository: removed by
// key remove or key passwd, or left behind by key rotate.
type RemovedSlot struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Why  string    `json:"why"` // "removed" or "rotated"
}

// ErrBadKeyring is wrapped by every error of ParseKeyring and Marshal.
var ErrBadKeyring = errors.New("malformed keyring")

const maxKeyringSize = 1 << 20

// SlotDigest is the SHA-256, hex, of a slot object's stored bytes.
func SlotDigest(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// Slot returns the reference of the slot with this id, if listed.
func (k *Keyring) Slot(id string) (SlotRef, bool) {
	for _, s := range k.Slots {
		if s.ID == id {
			return s, true
		}
	}
	return SlotRef{}, false
}

// RemovedSlot returns the removal record of the slot with this id, if any.
func (k *Keyring) RemovedSlot(id string) (RemovedSlot, bool) {
	for _, s := range k.Removed {
		if s.ID == id {
			return s, true
		}
	}
	return RemovedSlot{}, false
}

func (k *Keyring) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadKeyring, fmt.Sprintf(format, args...))
	}
	if k.V != 1 {
		return bad("unsupported keyring version %d", k.V)
	}
	if k.Version == 0 {
		return bad("version 0")
	}
	if len(k.Slots) == 0 {
		return bad("no slots")
	}
	if k.Rewrite && len(k.Old) == 0 {
		return bad("a rewrite with no old epoch to rewrite")
	}
	if (k.Epoch == 0) != (k.Content == nil) {
		return bad("content keys are present exactly when the epoch is not 0")
	}
	if c := k.Content; c != nil && (len(c.ChunkID) != KeySize || len(c.Chunker) != KeySize || len(c.PageTag) != KeySize) {
		return bad("content keys must be %d bytes", KeySize)
	}
	epochs := map[uint32]bool{}
	for _, e := range k.Old {
		if e.Epoch >= k.Epoch || epochs[e.Epoch] {
			return bad("old epoch %d (current %d) repeated or not older", e.Epoch, k.Epoch)
		}
		if len(e.Key) != KeySize {
			return bad("epoch %d key is %d bytes", e.Epoch, len(e.Key))
		}
		epochs[e.Epoch] = true
	}
	for _, e := range k.Retired {
		if e.Epoch >= k.Epoch || epochs[e.Epoch] {
			return bad("retired epoch %d (current %d) repeated, still held or not older", e.Epoch, k.Epoch)
		}
		epochs[e.Epoch] = true
	}
	ids := map[string]bool{}
	for _, s := range k.Slots {
		if !isLowerHex(s.ID, 32) || !isLowerHex(s.SHA256, 64) {
			return bad("slot reference %s", quoteShort(s.ID))
		}
		if ids[s.ID] {
			return bad("slot %s listed twice", s.ID)
		}
		ids[s.ID] = true
	}
	removed := map[string]bool{}
	for _, s := range k.Removed {
		if !isLowerHex(s.ID, 32) || removed[s.ID] || ids[s.ID] {
			return bad("removed slot %s malformed, repeated or still listed", quoteShort(s.ID))
		}
		if s.Why != "removed" && s.Why != "rotated" {
			return bad("removed slot %s: reason %s", s.ID, quoteShort(s.Why))
		}
		removed[s.ID] = true
	}
	return nil
}

// Marshal returns the keyring's JSON encoding (the plaintext of the
// keyring object).
func (k *Keyring) Marshal() ([]byte, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyring, err)
	}
	if len(b) > maxKeyringSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadKeyring, len(b), maxKeyringSize)
	}
	return b, nil
}

var keyringFields = map[string]bool{"v": true, "version": true, "time": true, "epoch": true, "content": true, "old": true, "retired": true, "slots": true, "removed": true, "rewrite": true}

// ParseKeyring decodes a keyring written by Marshal, strictly: one JSON
// object, no trailing data, no unknown or duplicated fields, every
// reference well formed. Every error wraps ErrBadKeyring.
func ParseKeyring(data []byte) (*Keyring, error) {
	if len(data) > maxKeyringSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadKeyring, len(data), maxKeyringSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadKeyring)
	}
	if err := walkObject(dec, keyringFields, ""); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %w", ErrBadKeyring, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadKeyring)
	}
	var k Keyring
	strict := json.NewDecoder(bytes.NewReader(data))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&k); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyring, err)
	}
	if err := k.check(); err != nil {
		return nil, err
	}
	return &k, nil
}
