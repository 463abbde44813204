package vault

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RatchetStore is the single-site Store that a copy of its storage cannot
// roll back. Each value is sealed under its own random data key, used for
// that one write; the data keys live in a key table (a root and
// ratchetBuckets buckets, each bucket sealed under its own key, the root
// under an epoch key of the Ratchet — the HSM). Every commit writes the
// changed values, their buckets and the root under a new epoch key, then
// destroys the epoch key before it. So:
//
//   - a value put back from an older copy of vault.db was sealed under a
//     data key the table no longer holds: it does not open (Get fails), and
//     the vault answers nothing from it;
//   - a whole older vault.db has its root sealed under an epoch key the
//     HSM has destroyed: the store does not open;
//   - a deleted or overwritten value (a destroyed record) is gone from
//     every copy, since the only key that opened it is.
//
// Commits of concurrent writes are grouped (one epoch key, one fsync per
// group). docs/VAULT.md, "Rollback", gives the format.
type RatchetStore struct {
	db *bolt.DB
	r  Ratchet

	mu      sync.RWMutex // guards the fields below; held for writing while a commit lands
	buckets [ratchetBuckets]map[string]ratchetSlot
	bkeys   [ratchetBuckets][32]byte // zero: empty bucket, never written
	epoch   []byte
	seq     uint64 // the last version given out
	tableID []byte // 8 random bytes: the prefix of this store's epoch key ids

	ops    chan *ratchetOp
	stop   chan struct{}
	done   chan struct{}
	closed sync.Once

	// Epoch keys are made ahead (an HSM may take milliseconds to make a
	// token key: SoftHSM2 takes about 16 ms) and old ones destroyed in
	// the background, so a commit waits for neither; while it waits for a
	// fresh key, writes gather into one larger commit.
	spare   chan []byte
	doomed  chan []byte
	workers sync.WaitGroup
	keyErr  chan error // the key maker's errors, answered to a waiting commit

	// Logf, if set, logs what cannot be returned (default: nothing).
	Logf func(format string, args ...any)

	loadErr error // the first open's commit failed

	// failCommit, set by tests, makes a commit fail after the new epoch
	// key was made and before the transaction commits.
	failCommit func() bool
}

type ratchetSlot struct {
	dk  [32]byte
	ver uint64
}

type ratchetOp struct {
	key, val []byte
	old      uint64
	del      bool
	ver      uint64
	err      error
	done     chan struct{}
}

const ratchetBuckets = 1024

var (
	ratchetValues = []byte("vault")
	ratchetTable  = []byte("key-table")
	ratchetRoot   = []byte("root")

	ratchetRootAAD   = []byte("wabackup-vault ratchet root v1")
	ratchetMagic     = []byte("WRT1")
	ratchetBucketAAD = "wabackup-vault ratchet bucket v1/"
	ratchetValueAAD  = "wabackup-vault ratchet value v1/"
)

// ErrRolledBack is returned when stored data does not match the key
// table: it was put back from an older copy, or altered.
var ErrRolledBack = errors.New("vault: stored data does not match the vault's key table (put back from an older copy of the storage, or altered): refused")

func ratchetBucket(key []byte) int {
	h := sha256.Sum256(key)
	return int(binary.BigEndian.Uint16(h[:]) % ratchetBuckets)
}

// sealOnce seals under a key used for this one value: the all-zero nonce
// is never reused under a key.
func sealOnce(key, plaintext, aad []byte) []byte {
	a, _ := gcm(key) // a 32-byte key: cannot fail
	return a.Seal(nil, make([]byte, 12), plaintext, aad)
}

func openOnce(key, sealed, aad []byte) ([]byte, error) {
	a, _ := gcm(key)
	return a.Open(nil, make([]byte, 12), sealed, aad)
}

func valueAAD(key []byte, ver uint64) []byte {
	b := append([]byte(ratchetValueAAD), key...)
	return binary.BigEndian.AppendUint64(b, ver)
}

func bucketAAD(n int) []byte {
	return binary.BigEndian.AppendUint16([]byte(ratchetBucketAAD), uint16(n))
}

// OpenRatchet opens (creating) the store in the bbolt file at path, its
// key table anchored in r. A file written by BoltStore is taken over: its
// values are moved under the key table on first open.
func OpenRatchet(path string, r Ratchet) (*RatchetStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	s := &RatchetStore{db: db, r: r, ops: make(chan *ratchetOp), stop: make(chan struct{}), done: make(chan struct{}),
		spare: make(chan []byte, 2), doomed: make(chan []byte, 64), keyErr: make(chan error, 1)}
	for i := range s.buckets {
		s.buckets[i] = map[string]ratchetSlot{}
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	s.workers.Add(2)
	go s.makeKeys()
	go s.destroyKeys()
	go s.committer()
	return s, nil
}

// makeKeys keeps spare epoch keys ready.
func (s *RatchetStore) makeKeys() {
	defer s.workers.Done()
	for {
		id, err := s.r.NewEpochKey(s.tableID)
		if err != nil {
			select {
			case s.keyErr <- err:
			default:
			}
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case s.spare <- id:
		case <-s.stop:
			_ = s.r.DestroyEpochKey(id)
			return
		}
	}
}

// destroyKeys destroys the epoch keys commits left behind.
func (s *RatchetStore) destroyKeys() {
	defer s.workers.Done()
	for id := range s.doomed {
		// If this fails the next start destroys it; until then a copy of
		// the storage from before that commit still opens.
		if err := s.r.DestroyEpochKey(id); err != nil && s.Logf != nil {
			s.Logf("vault: destroying a previous epoch key: %v", err)
		}
	}
}

// nextKey waits for a spare epoch key, gathering the writes that arrive
// meanwhile into batch.
func (s *RatchetStore) nextKey(batch *[]*ratchetOp) ([]byte, error) {
	for {
		select {
		case id := <-s.spare:
			return id, nil
		case err := <-s.keyErr:
			return nil, err
		case op := <-s.ops:
			*batch = append(*batch, op)
		}
	}
}

// load reads the key table: the root opens under exactly one of the
// ratchet's epoch keys (others are left over from a crash between making
// a key and destroying the one before: destroyed now).
func (s *RatchetStore) load() error {
	var root []byte
	var bucketBlobs [ratchetBuckets][]byte
	var legacy map[string][]byte
	err := s.db.Update(func(tx *bolt.Tx) error {
		vb, err := tx.CreateBucketIfNotExists(ratchetValues)
		if err != nil {
			return err
		}
		t := tx.Bucket(ratchetTable)
		if t == nil {
			// New, or a BoltStore file: its values (8-byte version, then
			// the value) are taken over below.
			legacy = map[string][]byte{}
			if err := vb.ForEach(func(k, v []byte) error {
				if len(v) < 8 {
					return errors.New("vault: malformed stored value")
				}
				legacy[string(k)] = append([]byte(nil), v[8:]...)
				return nil
			}); err != nil {
				return err
			}
			s.seq = vb.Sequence()
			t, err := tx.CreateBucket(ratchetTable)
			if err != nil {
				return err
			}
			s.tableID = randBytes(8)
			return t.Put([]byte("id"), s.tableID)
		}
		s.tableID = append([]byte(nil), t.Get([]byte("id"))...)
		root = append([]byte(nil), t.Get(ratchetRoot)...)
		for i := range bucketBlobs {
			if v := t.Get(binary.BigEndian.AppendUint16([]byte("b/"), uint16(i))); v != nil {
				bucketBlobs[i] = append([]byte(nil), v...)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	ids, err := s.r.EpochKeys(s.tableID)
	if err != nil {
		return err
	}
	if legacy != nil {
		// First open: a fresh epoch; old epoch keys are someone else's.
		if len(ids) > 0 {
			return fmt.Errorf("vault: the sealer already holds %d epoch keys but vault.db has no key table: it is not this vault's database (or its key table was removed)", len(ids))
		}
		s.epoch, err = s.r.NewEpochKey(s.tableID)
		if err != nil {
			return err
		}
		var ops []*ratchetOp
		for k, v := range legacy {
			ops = append(ops, &ratchetOp{key: []byte(k), val: v, done: make(chan struct{})})
		}
		// Write the root (and the taken-over values) under a second epoch
		// key, so the first is destroyed like any other.
		s.commit(ops, true)
		for _, op := range ops {
			if op.err != nil {
				return op.err
			}
		}
		return s.loadErr
	}
	var pt []byte
	for _, id := range ids {
		if p, err := s.r.OpenEpoch(id, root, ratchetRootAAD); err == nil {
			s.epoch, pt = id, p
			break
		}
	}
	if s.epoch == nil {
		return fmt.Errorf("vault: the key table opens under none of the %d epoch keys the HSM holds: vault.db was put back from an older copy, replaced, or belongs to another HSM; refusing to serve from it", len(ids))
	}
	for _, id := range ids {
		if !bytes.Equal(id, s.epoch) {
			if err := s.r.DestroyEpochKey(id); err != nil {
				return err
			}
		}
	}
	if len(pt) != len(ratchetMagic)+8+ratchetBuckets*32 || !bytes.Equal(pt[:4], ratchetMagic) {
		return fmt.Errorf("vault: malformed key table root")
	}
	s.seq = binary.BigEndian.Uint64(pt[4:])
	for i := range s.bkeys {
		copy(s.bkeys[i][:], pt[12+32*i:])
		if s.bkeys[i] == ([32]byte{}) {
			continue
		}
		if bucketBlobs[i] == nil {
			return fmt.Errorf("%w: key table bucket %d is missing", ErrRolledBack, i)
		}
		b, err := openOnce(s.bkeys[i][:], bucketBlobs[i], bucketAAD(i))
		if err != nil {
			return fmt.Errorf("%w: key table bucket %d does not open", ErrRolledBack, i)
		}
		for len(b) > 0 {
			if len(b) < 2 {
				return fmt.Errorf("vault: malformed key table bucket %d", i)
			}
			n := int(binary.BigEndian.Uint16(b))
			if len(b) < 2+n+40 {
				return fmt.Errorf("vault: malformed key table bucket %d", i)
			}
			var sl ratchetSlot
			k := string(b[2 : 2+n])
			copy(sl.dk[:], b[2+n:])
			sl.ver = binary.BigEndian.Uint64(b[2+n+32:])
			s.buckets[i][k] = sl
			b = b[2+n+40:]
		}
	}
	return nil
}

// SealsValues implements ValueSealer.
func (s *RatchetStore) SealsValues() {}

// Get implements Store. A value that does not open under the key table
// (put back from an older copy, or altered) fails with ErrRolledBack,
// with the version the table holds for the key: a write can replace it.
func (s *RatchetStore) Get(key []byte) (val []byte, version uint64, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sl, ok := s.buckets[ratchetBucket(key)][string(key)]
	if !ok {
		return nil, 0, nil
	}
	var sealed []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		sealed = append([]byte(nil), tx.Bucket(ratchetValues).Get(key)...)
		return nil
	}); err != nil {
		return nil, 0, err
	}
	pt, err := openOnce(sl.dk[:], sealed, valueAAD(key, sl.ver))
	if err != nil {
		return nil, sl.ver, ErrRolledBack
	}
	return pt, sl.ver, nil
}

func (s *RatchetStore) do(op *ratchetOp) error {
	op.done = make(chan struct{})
	select {
	case s.ops <- op:
	case <-s.stop:
		return errors.New("vault: store closed")
	}
	<-op.done
	return op.err
}

// CompareAndSwap implements Store.
func (s *RatchetStore) CompareAndSwap(key []byte, old uint64, val []byte) (uint64, error) {
	op := &ratchetOp{key: key, old: old, val: val}
	err := s.do(op)
	return op.ver, err
}

// Delete implements Store.
func (s *RatchetStore) Delete(key []byte, old uint64) error {
	if old == 0 {
		return ErrConflict
	}
	return s.do(&ratchetOp{key: key, old: old, del: true})
}

// committer groups the writes that arrive within 2 ms (at most 128) into
// one commit.
func (s *RatchetStore) committer() {
	defer close(s.done)
	for {
		var batch []*ratchetOp
		select {
		case op := <-s.ops:
			batch = append(batch, op)
		case <-s.stop:
			return
		}
		timer := time.NewTimer(time.Millisecond)
	collect:
		for len(batch) < 128 {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		id, err := s.nextKey(&batch)
		if err != nil {
			for _, op := range batch {
				op.err = fmt.Errorf("%w: making an epoch key: %v", ErrUnavailable, err)
				close(op.done)
			}
			continue
		}
		s.commitWith(batch, false, id)
	}
}

// commit is commitWith with an epoch key made now (the first open).
func (s *RatchetStore) commit(batch []*ratchetOp, force bool) {
	id, err := s.r.NewEpochKey(s.tableID)
	if err != nil {
		s.loadErr = err
		for _, op := range batch {
			op.err = err
			close(op.done)
		}
		return
	}
	s.commitWith(batch, force, id)
}

// commitWith applies the batch in one bbolt transaction with its key
// table under the new epoch key, has the old one destroyed, and answers
// each op.
func (s *RatchetStore) commitWith(batch []*ratchetOp, force bool, epoch []byte) {
	defer func() {
		for _, op := range batch {
			close(op.done)
		}
	}()
	fail := func(err error) {
		s.loadErr = err
		for _, op := range batch {
			if op.err == nil {
				op.err = err
			}
		}
	}
	s.mu.RLock()
	seq := s.seq
	staged := map[string]*ratchetSlot{} // nil: deleted
	cur := func(key string) uint64 {
		if sl, ok := staged[key]; ok {
			if sl == nil {
				return 0
			}
			return sl.ver
		}
		return s.buckets[ratchetBucket([]byte(key))][key].ver
	}
	type put struct{ key, sealed []byte }
	var puts []put
	var dels [][]byte
	touched := map[int]bool{}
	for _, op := range batch {
		if cur(string(op.key)) != op.old || (op.del && op.old == 0) {
			op.err = ErrConflict
			continue
		}
		touched[ratchetBucket(op.key)] = true
		if op.del {
			staged[string(op.key)] = nil
			dels = append(dels, op.key)
			continue
		}
		seq++
		sl := &ratchetSlot{ver: seq}
		copy(sl.dk[:], randBytes(32))
		staged[string(op.key)] = sl
		puts = append(puts, put{op.key, sealOnce(sl.dk[:], op.val, valueAAD(op.key, seq))})
		op.ver = seq
	}
	if len(touched) == 0 && !force {
		s.mu.RUnlock()
		_ = s.r.DestroyEpochKey(epoch)
		return
	}
	// The touched buckets, each under a new key, and the root.
	newBuckets := map[int]map[string]ratchetSlot{}
	blobs := map[int][]byte{}
	bkeys := s.bkeys
	for n := range touched {
		m := make(map[string]ratchetSlot, len(s.buckets[n]))
		for k, v := range s.buckets[n] {
			m[k] = v
		}
		for k, sl := range staged {
			if ratchetBucket([]byte(k)) != n {
				continue
			}
			if sl == nil {
				delete(m, k)
			} else {
				m[k] = *sl
			}
		}
		var pt []byte
		for k, sl := range m {
			pt = binary.BigEndian.AppendUint16(pt, uint16(len(k)))
			pt = append(pt, k...)
			pt = append(pt, sl.dk[:]...)
			pt = binary.BigEndian.AppendUint64(pt, sl.ver)
		}
		copy(bkeys[n][:], randBytes(32))
		newBuckets[n] = m
		blobs[n] = sealOnce(bkeys[n][:], pt, bucketAAD(n))
	}
	s.mu.RUnlock()
	root := append([]byte(nil), ratchetMagic...)
	root = binary.BigEndian.AppendUint64(root, seq)
	for i := range bkeys {
		root = append(root, bkeys[i][:]...)
	}
	sealedRoot, err := s.r.SealEpoch(epoch, root, ratchetRootAAD)
	if err != nil {
		_ = s.r.DestroyEpochKey(epoch)
		fail(err)
		return
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		_ = s.r.DestroyEpochKey(epoch)
		fail(err)
		return
	}
	err = func() error {
		vb, t := tx.Bucket(ratchetValues), tx.Bucket(ratchetTable)
		for _, p := range puts {
			if err := vb.Put(p.key, p.sealed); err != nil {
				return err
			}
		}
		for _, k := range dels {
			if err := vb.Delete(k); err != nil {
				return err
			}
		}
		for n, b := range blobs {
			if err := t.Put(binary.BigEndian.AppendUint16([]byte("b/"), uint16(n)), b); err != nil {
				return err
			}
		}
		if err := t.Put(ratchetRoot, sealedRoot); err != nil {
			return err
		}
		if s.failCommit != nil && s.failCommit() {
			return errors.New("vault test: commit failed")
		}
		return nil
	}()
	if err != nil {
		_ = tx.Rollback()
		_ = s.r.DestroyEpochKey(epoch)
		fail(err)
		return
	}
	s.mu.Lock()
	err = tx.Commit()
	if err == nil {
		for n, m := range newBuckets {
			s.buckets[n] = m
		}
		s.bkeys = bkeys
		s.seq = seq
	}
	old := s.epoch
	if err == nil {
		s.epoch = epoch
	}
	s.mu.Unlock()
	if err != nil {
		_ = s.r.DestroyEpochKey(epoch)
		fail(err)
		return
	}
	if old != nil {
		s.doomed <- old
	}
}

// Close implements Store. It waits for the old epoch keys to be
// destroyed and destroys the spare ones.
func (s *RatchetStore) Close() error {
	s.closed.Do(func() {
		close(s.stop)
		<-s.done
		close(s.doomed)
		s.workers.Wait()
		for {
			select {
			case id := <-s.spare:
				_ = s.r.DestroyEpochKey(id)
				continue
			default:
			}
			break
		}
	})
	return s.db.Close()
}
