package vault

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// RatchetStore is the Store that a copy of its storage cannot roll back.
// Each value is sealed under its own random data key, used for that one
// write; the data keys live in a key table (a root and ratchetBuckets
// buckets, each bucket sealed under its own key, the root under an epoch
// key of the Ratchet — the HSM). Every commit writes the changed values,
// their buckets and the root under a new epoch key, then destroys the
// epoch key before it. So:
//
//   - a value put back from an older copy of the storage was sealed under
//     a data key the table no longer holds: it does not open (Get fails),
//     and the vault answers nothing from it;
//   - a whole older copy has its root sealed under an epoch key the HSM
//     has destroyed: the store does not open;
//   - a deleted or overwritten value (a destroyed record) is gone from
//     every copy, since the only key that opened it is.
//
// The storage is a bbolt file (OpenRatchet: one vault process) or an etcd
// prefix shared by several instances (etcdstore.OpenRatchet), whose
// commits are compare-and-swaps on the root. Commits of concurrent writes
// are grouped (one epoch key, one storage transaction per group).
// docs/VAULT.md, "Rollback", gives the format.
type RatchetStore struct {
	st RatchetStorage
	r  Ratchet

	mu      sync.RWMutex // guards the fields below; held for writing while a commit or a reload lands
	buckets [ratchetBuckets]map[string]ratchetSlot
	bkeys   [ratchetBuckets][32]byte // zero: empty bucket, never written
	epoch   []byte
	prev    []byte // the epoch key the root names as the one before it (shared storage)
	pending bool   // the root says values of the store this one replaced remain to be taken over
	seq     uint64 // the last version given out
	rev     uint64 // the storage revision of the root the fields above are from (0: none)
	tableID []byte // 8 random bytes: the prefix of this store's epoch key ids

	maxBatch int
	recent   [][]byte // the epoch keys doomed last (committer only)

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

// RatchetStorage is where a RatchetStore keeps its sealed values and its
// key table. Revisions identify versions of the root: a storage shared by
// several instances gives a new one to every commit, so a reader can tell
// that its copy of the table is stale.
type RatchetStorage interface {
	// Init returns the id of the stored key table, first storing newID as
	// the id if there is none.
	Init(newID []byte) (id []byte, err error)
	// Root returns the sealed root, the id of the epoch key that sealed
	// it (nil if the storage does not say) and its revision (0: no root
	// yet).
	Root() (sealed, epoch []byte, rev uint64, err error)
	// Buckets returns the sealed buckets idx as they were at revision
	// rev (a bucket never written is absent), or ErrStale if the storage
	// no longer has that revision.
	Buckets(idx []int, rev uint64) (map[int][]byte, error)
	// Value returns the sealed value of key (nil if absent) and, read in
	// the same instant, the root's revision.
	Value(key []byte) (sealed []byte, rev uint64, err error)
	// Legacy returns up to n values (0: all) kept by the store this one
	// replaces, which are taken over into the key table, and the highest
	// version that store may have given out (versions go on above it).
	Legacy(n int) (values map[string][]byte, floor uint64, err error)
	// Commit applies c in one transaction if the root is still at
	// revision rev, and returns the new revision; ErrStale if the root
	// moved. An error wrapping ErrUnavailable leaves the outcome unknown.
	Commit(c *RatchetCommit, rev uint64) (uint64, error)
	// MaxWrites is the most values one commit may write (0: no limit).
	MaxWrites() int
	// Shared reports whether other instances commit to the same table
	// (they may hold epoch keys of it that this one must not destroy).
	Shared() bool
	Close() error
}

// RatchetCommit is what one commit writes.
type RatchetCommit struct {
	Puts       []RatchetPut
	Dels       [][]byte
	DropLegacy [][]byte       // legacy values taken over by this commit
	Buckets    map[int][]byte // the sealed buckets written
	Root       []byte         // the sealed root
	Epoch      []byte         // the id of the epoch key that sealed Root
}

// RatchetPut is one sealed value a commit writes.
type RatchetPut struct{ Key, Sealed []byte }

// ErrStale is returned by a RatchetStorage whose root moved since the
// revision a commit or read names.
var ErrStale = errors.New("vault: the key table changed meanwhile")

type ratchetSlot struct {
	dk  [32]byte
	ver uint64
}

type ratchetOp struct {
	key, val []byte
	old      uint64
	del      bool
	takeover bool // a legacy value moved into the table
	ver      uint64
	err      error
	done     chan struct{}
}

const ratchetBuckets = 1024

var (
	ratchetRootAAD   = []byte("wabackup-vault ratchet root v1")
	ratchetMagic     = []byte("WRT1")
	ratchetMagic2    = []byte("WRT2")
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

// rootPlain is the root's plaintext: "WRT2" || uint64be(seq) || flags ||
// uint8(len(prev)) || prev || bucket keys. ("WRT1" roots, written before,
// have neither flags nor prev.)
type rootPlain struct {
	seq     uint64
	pending bool
	prev    []byte
	bkeys   [ratchetBuckets][32]byte
}

const rootPending = 1

func (p *rootPlain) encode() []byte {
	b := append([]byte(nil), ratchetMagic2...)
	b = binary.BigEndian.AppendUint64(b, p.seq)
	var flags byte
	if p.pending {
		flags |= rootPending
	}
	b = append(b, flags, byte(len(p.prev)))
	b = append(b, p.prev...)
	for i := range p.bkeys {
		b = append(b, p.bkeys[i][:]...)
	}
	return b
}

func decodeRoot(b []byte) (*rootPlain, error) {
	bad := errors.New("vault: malformed key table root")
	var p rootPlain
	switch {
	case len(b) == len(ratchetMagic)+8+ratchetBuckets*32 && bytes.Equal(b[:4], ratchetMagic):
		p.seq = binary.BigEndian.Uint64(b[4:])
		b = b[12:]
	case len(b) >= 14 && bytes.Equal(b[:4], ratchetMagic2):
		p.seq = binary.BigEndian.Uint64(b[4:])
		if b[12]&^rootPending != 0 {
			return nil, bad
		}
		p.pending = b[12]&rootPending != 0
		n := int(b[13])
		b = b[14:]
		if len(b) != n+ratchetBuckets*32 {
			return nil, bad
		}
		if n > 0 {
			p.prev = append([]byte(nil), b[:n]...)
		}
		b = b[n:]
	default:
		return nil, bad
	}
	for i := range p.bkeys {
		copy(p.bkeys[i][:], b[32*i:])
	}
	return &p, nil
}

func encodeBucket(m map[string]ratchetSlot) []byte {
	var pt []byte
	for k, sl := range m {
		pt = binary.BigEndian.AppendUint16(pt, uint16(len(k)))
		pt = append(pt, k...)
		pt = append(pt, sl.dk[:]...)
		pt = binary.BigEndian.AppendUint64(pt, sl.ver)
	}
	return pt
}

func decodeBucket(i int, b []byte) (map[string]ratchetSlot, error) {
	m := map[string]ratchetSlot{}
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, fmt.Errorf("vault: malformed key table bucket %d", i)
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n+40 {
			return nil, fmt.Errorf("vault: malformed key table bucket %d", i)
		}
		var sl ratchetSlot
		k := string(b[2 : 2+n])
		copy(sl.dk[:], b[2+n:])
		sl.ver = binary.BigEndian.Uint64(b[2+n+32:])
		m[k] = sl
		b = b[2+n+40:]
	}
	return m, nil
}

// NewRatchetStore opens the store kept in st, its key table anchored in
// r, creating the table (and taking over st's legacy values) if there is
// none.
func NewRatchetStore(st RatchetStorage, r Ratchet) (*RatchetStore, error) {
	s := &RatchetStore{st: st, r: r, ops: make(chan *ratchetOp), stop: make(chan struct{}), done: make(chan struct{}),
		spare: make(chan []byte, 2), doomed: make(chan []byte, 64), keyErr: make(chan error, 1)}
	s.maxBatch = 128
	if w := st.MaxWrites(); w > 0 && w < s.maxBatch {
		s.maxBatch = w
	}
	for i := range s.buckets {
		s.buckets[i] = map[string]ratchetSlot{}
	}
	if err := s.load(); err != nil {
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
		// If this fails the next start (or, shared, the next commit)
		// destroys it; until then a copy of the storage from before that
		// commit still opens.
		if err := s.r.DestroyEpochKey(id); err != nil && s.Logf != nil {
			s.Logf("vault: destroying a previous epoch key: %v", err)
		}
	}
}

// nextKey waits for a spare epoch key, gathering the writes that arrive
// meanwhile into batch (up to the batch limit).
func (s *RatchetStore) nextKey(batch *[]*ratchetOp) ([]byte, error) {
	for {
		ops := s.ops
		if len(*batch) >= s.maxBatch {
			ops = nil
		}
		select {
		case id := <-s.spare:
			return id, nil
		case err := <-s.keyErr:
			return nil, err
		case op := <-ops:
			*batch = append(*batch, op)
		}
	}
}

// load reads the key table, creating it if there is none, and takes over
// the legacy values of the store this one replaces: all in the first
// commit, or, on a storage that limits a commit's writes, in commits of
// that many, the root saying "pending" until none are left.
func (s *RatchetStore) load() error {
	id, err := s.st.Init(randBytes(8))
	if err != nil {
		return err
	}
	s.tableID = id
	if err := s.reload(true); err != nil {
		return err
	}
	chunk := s.st.MaxWrites()
	first := s.rev == 0
	for first || s.pending {
		legacy, floor, err := s.st.Legacy(chunk)
		if err != nil {
			return err
		}
		if len(legacy) > 0 && floor > s.seq {
			s.seq = floor
		}
		var ops []*ratchetOp
		for k, v := range legacy {
			ops = append(ops, &ratchetOp{key: []byte(k), val: v, takeover: true, done: make(chan struct{})})
		}
		s.commit(ops, true, chunk > 0 && len(legacy) > 0)
		for _, op := range ops {
			if s.loadErr == nil && op.err != nil {
				s.loadErr = op.err
			}
		}
		switch {
		case first && errors.Is(s.loadErr, ErrStale):
			// Another instance made the first root meanwhile.
			if err := s.reload(false); err != nil {
				return err
			}
		case s.loadErr != nil:
			return s.loadErr
		}
		first = false
	}
	return nil
}

// reload reads the root and the buckets whose keys changed since the
// copy held. At the first open of an unshared storage it also destroys
// every other epoch key of the table (left by a crash between making a key
// and destroying the one before); a shared one destroys the key the root
// names as the one before its own.
func (s *RatchetStore) reload(first bool) error {
	for tries := 0; ; tries++ {
		err := s.reloadOnce(first)
		if !errors.Is(err, ErrStale) || tries >= 20 {
			return err
		}
	}
}

func (s *RatchetStore) reloadOnce(first bool) error {
	sealed, epoch, rev, err := s.st.Root()
	if err != nil {
		return err
	}
	s.mu.RLock()
	same := rev == s.rev && !first
	s.mu.RUnlock()
	if same || rev == 0 {
		return nil
	}
	var ids [][]byte
	if epoch != nil {
		ids = [][]byte{epoch}
	} else if ids, err = s.r.EpochKeys(s.tableID); err != nil {
		return err
	}
	var pt []byte
	var opened []byte
	for _, id := range ids {
		if p, err := s.r.OpenEpoch(id, sealed, ratchetRootAAD); err == nil {
			opened, pt = id, p
			break
		}
	}
	if opened == nil {
		if s.st.Shared() {
			// Another instance may have committed and destroyed that key
			// since the read: a root that moved is read again.
			if _, _, now, err := s.st.Root(); err == nil && now != rev {
				return ErrStale
			}
		}
		return fmt.Errorf("vault: the key table opens under none of the epoch keys the HSM holds: the storage was put back from an older copy, replaced, or belongs to another HSM; refusing to serve from it")
	}
	root, err := decodeRoot(pt)
	if err != nil {
		return err
	}
	s.mu.RLock()
	var changed []int
	for i := range root.bkeys {
		if root.bkeys[i] != ([32]byte{}) && (first || root.bkeys[i] != s.bkeys[i]) {
			changed = append(changed, i)
		}
	}
	s.mu.RUnlock()
	blobs, err := s.st.Buckets(changed, rev)
	if err != nil {
		return err
	}
	fresh := map[int]map[string]ratchetSlot{}
	for _, i := range changed {
		if blobs[i] == nil {
			return fmt.Errorf("%w: key table bucket %d is missing", ErrRolledBack, i)
		}
		b, err := openOnce(root.bkeys[i][:], blobs[i], bucketAAD(i))
		if err != nil {
			return fmt.Errorf("%w: key table bucket %d does not open", ErrRolledBack, i)
		}
		if fresh[i], err = decodeBucket(i, b); err != nil {
			return err
		}
	}
	s.mu.Lock()
	for i := range root.bkeys {
		if m, ok := fresh[i]; ok {
			s.buckets[i] = m
		} else if root.bkeys[i] == ([32]byte{}) {
			s.buckets[i] = map[string]ratchetSlot{}
		}
	}
	s.bkeys, s.seq, s.rev, s.epoch, s.prev, s.pending = root.bkeys, root.seq, rev, opened, root.prev, root.pending
	s.mu.Unlock()
	if first {
		if !s.st.Shared() {
			all, err := s.r.EpochKeys(s.tableID)
			if err != nil {
				return err
			}
			for _, id := range all {
				if !bytes.Equal(id, opened) {
					if err := s.r.DestroyEpochKey(id); err != nil {
						return err
					}
				}
			}
		} else if root.prev != nil && !bytes.Equal(root.prev, opened) {
			_ = s.r.DestroyEpochKey(root.prev)
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
	shared := s.st.Shared()
	for tries := 0; ; tries++ {
		if !shared {
			// One writer, this one: the table and the value are read
			// under the lock a commit holds while it lands.
			s.mu.RLock()
		}
		sealed, rev, err := s.st.Value(key)
		if err != nil {
			if !shared {
				s.mu.RUnlock()
			}
			return nil, 0, err
		}
		if shared {
			s.mu.RLock()
		}
		if shared && rev != s.rev {
			s.mu.RUnlock()
			if tries >= 20 {
				return nil, 0, fmt.Errorf("%w: the key table keeps changing", ErrUnavailable)
			}
			// Another instance committed: read its table, then the value
			// again (it may have moved on once more).
			if err := s.reload(false); err != nil {
				return nil, 0, err
			}
			continue
		}
		sl, ok := s.buckets[ratchetBucket(key)][string(key)]
		s.mu.RUnlock()
		if !ok {
			return nil, 0, nil
		}
		pt, err := openOnce(sl.dk[:], sealed, valueAAD(key, sl.ver))
		if err != nil {
			return nil, sl.ver, ErrRolledBack
		}
		return pt, sl.ver, nil
	}
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

// Compact implements Compactor for a storage that keeps superseded
// values (etcd's history).
func (s *RatchetStore) Compact() error {
	if c, ok := s.st.(Compactor); ok {
		return c.Compact()
	}
	return nil
}

// committer groups the writes that arrive within 1 ms (up to the batch
// limit) into one commit.
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
		for len(batch) < s.maxBatch {
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
		s.commitWith(batch, false, false, id)
	}
}

// commit is commitWith with an epoch key made now (the first open).
func (s *RatchetStore) commit(batch []*ratchetOp, force, pending bool) {
	s.loadErr = nil
	id, err := s.r.NewEpochKey(s.tableID)
	if err != nil {
		s.loadErr = err
		for _, op := range batch {
			op.err = err
			close(op.done)
		}
		return
	}
	s.commitWith(batch, force, pending, id)
}

// staged is a commit prepared against one revision of the table.
type staged struct {
	c          RatchetCommit
	newBuckets map[int]map[string]ratchetSlot
	root       rootPlain
	rev        uint64
	oldEpoch   []byte
	oldPrev    []byte
}

// stage prepares batch against the table as it is: each op is checked
// against the version the table holds (op.err = ErrConflict if stale), the
// touched buckets get new keys, and the root is sealed under epoch. It
// returns nil if nothing is to be written.
func (s *RatchetStore) stage(batch []*ratchetOp, force, pending bool, epoch []byte) (*staged, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := &staged{rev: s.rev, oldEpoch: s.epoch, oldPrev: s.prev}
	seq := s.seq
	staging := map[string]*ratchetSlot{} // nil: deleted
	cur := func(key string) uint64 {
		if sl, ok := staging[key]; ok {
			if sl == nil {
				return 0
			}
			return sl.ver
		}
		return s.buckets[ratchetBucket([]byte(key))][key].ver
	}
	touched := map[int]bool{}
	for _, op := range batch {
		op.err, op.ver = nil, 0
		if op.takeover {
			st.c.DropLegacy = append(st.c.DropLegacy, op.key)
			if cur(string(op.key)) != 0 {
				continue // taken over already (the legacy copy is dropped)
			}
		} else if cur(string(op.key)) != op.old || (op.del && op.old == 0) {
			op.err = ErrConflict
			continue
		}
		touched[ratchetBucket(op.key)] = true
		if op.del {
			staging[string(op.key)] = nil
			st.c.Dels = append(st.c.Dels, op.key)
			continue
		}
		seq++
		sl := &ratchetSlot{ver: seq}
		copy(sl.dk[:], randBytes(32))
		staging[string(op.key)] = sl
		st.c.Puts = append(st.c.Puts, RatchetPut{op.key, sealOnce(sl.dk[:], op.val, valueAAD(op.key, seq))})
		op.ver = seq
	}
	if len(touched) == 0 && len(st.c.DropLegacy) == 0 && !force {
		return nil, nil
	}
	// The touched buckets, each under a new key, and the root.
	st.newBuckets = map[int]map[string]ratchetSlot{}
	st.c.Buckets = map[int][]byte{}
	st.root = rootPlain{seq: seq, pending: pending, bkeys: s.bkeys}
	if s.st.Shared() {
		st.root.prev = s.epoch
	}
	for n := range touched {
		m := make(map[string]ratchetSlot, len(s.buckets[n]))
		for k, v := range s.buckets[n] {
			m[k] = v
		}
		for k, sl := range staging {
			if ratchetBucket([]byte(k)) != n {
				continue
			}
			if sl == nil {
				delete(m, k)
			} else {
				m[k] = *sl
			}
		}
		copy(st.root.bkeys[n][:], randBytes(32))
		st.newBuckets[n] = m
		st.c.Buckets[n] = sealOnce(st.root.bkeys[n][:], encodeBucket(m), bucketAAD(n))
	}
	sealed, err := s.r.SealEpoch(epoch, st.root.encode(), ratchetRootAAD)
	if err != nil {
		return nil, err
	}
	st.c.Root, st.c.Epoch = sealed, epoch
	return st, nil
}

// commitWith applies the batch in one storage transaction with its key
// table under the new epoch key, has the old one destroyed, and answers
// each op. If a shared storage's root moved meanwhile, it reads the new
// table and stages the batch again.
func (s *RatchetStore) commitWith(batch []*ratchetOp, force, pending bool, epoch []byte) {
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
	for {
		st, err := s.stage(batch, force, pending, epoch)
		if err != nil {
			_ = s.r.DestroyEpochKey(epoch)
			fail(err)
			return
		}
		if st == nil {
			_ = s.r.DestroyEpochKey(epoch)
			return
		}
		if s.failCommit != nil && s.failCommit() {
			_ = s.r.DestroyEpochKey(epoch)
			fail(errors.New("vault test: commit failed"))
			return
		}
		shared := s.st.Shared()
		if !shared {
			// Readers hold the lock across reading a value and its slot.
			s.mu.Lock()
		}
		rev, err := s.st.Commit(&st.c, st.rev)
		if !shared && err != nil {
			s.mu.Unlock()
		}
		if errors.Is(err, ErrStale) && shared && st.rev != 0 {
			if err := s.reload(false); err != nil {
				_ = s.r.DestroyEpochKey(epoch)
				fail(err)
				return
			}
			continue
		}
		if err != nil {
			if errors.Is(err, ErrUnavailable) {
				// The commit may have landed, its root under this key: the
				// key stays (the next commit over that root destroys it).
				fail(err)
				return
			}
			_ = s.r.DestroyEpochKey(epoch)
			fail(err)
			return
		}
		if shared {
			s.mu.Lock()
		}
		for n, m := range st.newBuckets {
			s.buckets[n] = m
		}
		s.bkeys, s.seq, s.rev, s.epoch, s.prev, s.pending = st.root.bkeys, st.root.seq, rev, epoch, st.root.prev, st.root.pending
		s.mu.Unlock()
		if st.oldEpoch != nil {
			s.doom(st.oldEpoch)
		}
		if st.oldPrev != nil && !bytes.Equal(st.oldPrev, st.oldEpoch) {
			// The key before that one, in case its committer could not
			// destroy it (shared storage).
			s.doom(st.oldPrev)
		}
		return
	}
}

// doom has id destroyed in the background, unless this store did so
// lately.
func (s *RatchetStore) doom(id []byte) {
	for _, d := range s.recent {
		if bytes.Equal(d, id) {
			return
		}
	}
	s.recent = append(s.recent, id)
	if len(s.recent) > 4 {
		s.recent = s.recent[1:]
	}
	s.doomed <- id
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
	return s.st.Close()
}
