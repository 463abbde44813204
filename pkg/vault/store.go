package vault

import (
	"encoding/binary"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps the vault's sealed values under byte-string keys, with
// compare-and-swap semantics: every value carries a version, and a write
// names the version it replaces. Version 0 means "absent". Versions never
// repeat for a key, even across a delete, so a stale version cannot match
// again. A successful write is durable when the call returns.
type Store interface {
	// Get returns the value and its version, or (nil, 0, nil) if absent.
	Get(key []byte) (val []byte, version uint64, err error)
	// CompareAndSwap stores val if the current version is old (0: absent)
	// and returns the new version; otherwise it returns ErrConflict.
	CompareAndSwap(key []byte, old uint64, val []byte) (uint64, error)
	// Delete removes the value if its version is old; otherwise it
	// returns ErrConflict.
	Delete(key []byte, old uint64) error
	// Close closes the store.
	Close() error
}

// ErrConflict is returned by a compare-and-swap whose version is stale.
var ErrConflict = errors.New("vault: store version conflict")

// ErrUnavailable wraps the errors of a replicated store that cannot reach
// a quorum in time. The outcome of a write that failed this way is
// unknown: it may have been committed. The server answers such requests
// with 503 and never goes on uncounted.
var ErrUnavailable = errors.New("vault: store unavailable")

var bucketName = []byte("vault")

// BoltStore is the embedded Store: one bbolt file. Writes go through
// bbolt's Batch, which commits many concurrent writes in one transaction
// and one fsync; each caller returns only after the commit that holds its
// write, so a write is durable before its caller goes on.
type BoltStore struct{ db *bolt.DB }

// OpenBolt opens (creating) the bbolt file at path.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketName)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &BoltStore{db: db}, nil
}

// Get implements Store.
func (s *BoltStore) Get(key []byte) (val []byte, version uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketName).Get(key)
		if v == nil {
			return nil
		}
		if len(v) < 8 {
			return errors.New("vault: malformed stored value")
		}
		version = binary.BigEndian.Uint64(v)
		val = append([]byte(nil), v[8:]...)
		return nil
	})
	return val, version, err
}

func current(b *bolt.Bucket, key []byte) uint64 {
	v := b.Get(key)
	if len(v) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// CompareAndSwap implements Store. The new version is the bucket's next
// sequence number, so versions never repeat.
func (s *BoltStore) CompareAndSwap(key []byte, old uint64, val []byte) (uint64, error) {
	// A conflict is reported through a variable, not as the function's
	// error: an error would roll back the whole batch and make bbolt run
	// every other write in it again.
	var ver uint64
	var conflict bool
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		conflict = current(b, key) != old
		if conflict {
			return nil
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		v := make([]byte, 8+len(val))
		binary.BigEndian.PutUint64(v, seq)
		copy(v[8:], val)
		ver = seq
		return b.Put(key, v)
	})
	if err == nil && conflict {
		return 0, ErrConflict
	}
	return ver, err
}

// Delete implements Store.
func (s *BoltStore) Delete(key []byte, old uint64) error {
	var conflict bool
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		conflict = current(b, key) != old || old == 0
		if conflict {
			return nil
		}
		return b.Delete(key)
	})
	if err == nil && conflict {
		return ErrConflict
	}
	return err
}

// Close implements Store.
func (s *BoltStore) Close() error { return s.db.Close() }

// Compactor is implemented by stores that keep superseded values (etcd
// keeps every revision until compacted). The vault calls Compact after it
// destroys or deletes a record, so no old copy of it stays readable
// through the store's history.
type Compactor interface {
	Compact() error
}

// ValueSealer is implemented by stores that seal every value themselves,
// bound to its key and version, under keys anchored in the Sealer
// (RatchetStore): the vault then stores entries as they are, instead of
// sealing each once more with the Sealer. Values sealed by the Sealer
// before (a taken-over BoltStore file) still open.
type ValueSealer interface {
	SealsValues()
}
