package vault

import (
	"encoding/binary"
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// boltRatchet is a RatchetStore's storage in one bbolt file, which one
// vault process holds (bbolt locks it): the values in bucket "vault", the
// key table in "key-table" (its id, the root, the epoch key's id, the
// buckets "b/" || uint16be(n)). Its revision counts this process's
// commits.
type boltRatchet struct {
	db   *bolt.DB
	path string
	mu   sync.Mutex
	rev  uint64
}

var (
	ratchetValues = []byte("vault")
	ratchetTable  = []byte("key-table")
	ratchetRoot   = []byte("root")
	ratchetEpoch  = []byte("epoch")
)

// OpenRatchet opens (creating) the store in the bbolt file at path, its
// key table anchored in r. A file written by BoltStore is taken over: its
// values are moved under the key table on first open.
func OpenRatchet(path string, r Ratchet) (*RatchetStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	s, err := NewRatchetStore(&boltRatchet{db: db, path: path}, r)
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func bucketName16(n int) []byte { return binary.BigEndian.AppendUint16([]byte("b/"), uint16(n)) }

func (b *boltRatchet) Init(newID []byte) (id []byte, err error) {
	err = b.db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(ratchetValues); err != nil {
			return err
		}
		t, err := tx.CreateBucketIfNotExists(ratchetTable)
		if err != nil {
			return err
		}
		if v := t.Get([]byte("id")); v != nil {
			id = append([]byte(nil), v...)
			return nil
		}
		id = newID
		return t.Put([]byte("id"), id)
	})
	return id, err
}

func (b *boltRatchet) Root(uint64) (*RatchetRoot, error) {
	r := &RatchetRoot{Buckets: map[int][]byte{}}
	err := b.db.View(func(tx *bolt.Tx) error {
		t := tx.Bucket(ratchetTable)
		if v := t.Get(ratchetRoot); v != nil {
			r.Sealed = append([]byte(nil), v...)
		}
		if v := t.Get(ratchetEpoch); v != nil {
			r.Epoch = append([]byte(nil), v...)
		}
		for i := range ratchetBuckets + ratchetGroups {
			if v := t.Get(bucketName16(i)); v != nil {
				r.Buckets[i] = append([]byte(nil), v...)
			}
		}
		return nil
	})
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.Sealed != nil && b.rev == 0 {
		b.rev = 1
	}
	r.Rev = b.rev
	return r, err
}

// Value reads the value; the root never moves under this process (it is
// the only writer), so there is never a fresh one.
func (b *boltRatchet) Value(key []byte, _ uint64) (sealed []byte, fresh *RatchetRoot, err error) {
	err = b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(ratchetValues).Get(key); v != nil {
			sealed = append([]byte(nil), v...)
		}
		return nil
	})
	return sealed, nil, err
}

// Legacy returns BoltStore's values (an 8-byte version, then the value):
// every value of a file that has no root yet.
func (b *boltRatchet) Legacy(int) (map[string][]byte, uint64, error) {
	legacy := map[string][]byte{}
	var floor uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(ratchetTable).Get(ratchetRoot) != nil {
			return nil
		}
		floor = tx.Bucket(ratchetValues).Sequence()
		return tx.Bucket(ratchetValues).ForEach(func(k, v []byte) error {
			if len(v) < 8 {
				return errors.New("vault: malformed stored value")
			}
			legacy[string(k)] = append([]byte(nil), v[8:]...)
			return nil
		})
	})
	return legacy, floor, err
}

func (b *boltRatchet) Commit(c *RatchetCommit, rev uint64) (uint64, *RatchetRoot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rev != b.rev {
		return 0, nil, ErrStale
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		vb, t := tx.Bucket(ratchetValues), tx.Bucket(ratchetTable)
		for _, p := range c.Puts {
			if err := vb.Put(p.Key, p.Sealed); err != nil {
				return err
			}
		}
		for _, k := range c.Dels {
			if err := vb.Delete(k); err != nil {
				return err
			}
		}
		// Legacy values share the values' keys: each was overwritten by
		// its Put (or, already taken over, is left as it is).
		for n, blob := range c.Buckets {
			if err := t.Put(bucketName16(n), blob); err != nil {
				return err
			}
		}
		if err := t.Put(ratchetEpoch, c.Epoch); err != nil {
			return err
		}
		return t.Put(ratchetRoot, c.Root)
	})
	if err != nil {
		return 0, nil, err
	}
	b.rev++
	return b.rev, nil, nil
}

func (b *boltRatchet) MaxWrites() int { return 0 }
func (b *boltRatchet) Shared() bool   { return false }
func (b *boltRatchet) Where() string  { return b.path }
func (b *boltRatchet) Close() error   { return b.db.Close() }
