package vault

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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
	gkeys   [ratchetGroups][32]byte  // zero: a group of empty buckets
	flat    bool                     // the root is a "WRT1" one, with the bucket keys in it (no groups yet)
	epoch   []byte
	prev    []byte // the epoch key the root names as the one before it (shared storage)
	pending bool   // the root says values of the store this one replaced remain to be taken over
	seq     uint64 // the last version given out
	rev     uint64 // the storage revision of the root the fields above are from (0: none)
	tableID []byte // 8 random bytes: the prefix of this store's epoch key ids

	maxBatch int
	gap      time.Duration // the least time from one commit's end to the next's start (0: none)
	recent   [][]byte      // the epoch keys doomed last (committer only)

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
	// Root returns the root and the buckets written after revision
	// since (0: every bucket); Rev 0 if there is no root yet.
	Root(since uint64) (*RatchetRoot, error)
	// Value returns the sealed value of key (nil if absent), read in one
	// instant with the root: if the root's revision is not rev, that root
	// too (as Root(rev) gives it), else nil.
	Value(key []byte, rev uint64) (sealed []byte, fresh *RatchetRoot, err error)
	// Legacy returns up to n values (0: all) kept by the store this one
	// replaces, which are taken over into the key table, and the highest
	// version that store may have given out (versions go on above it).
	Legacy(n int) (values map[string][]byte, floor uint64, err error)
	// Commit applies c in one transaction if the root is still at
	// revision rev, and returns the new revision; if the root moved, it
	// returns ErrStale and the root as Root(rev) gives it (or nil). An
	// error wrapping ErrUnavailable leaves the outcome unknown.
	Commit(c *RatchetCommit, rev uint64) (newRev uint64, fresh *RatchetRoot, err error)
	// MaxWrites is the most values one commit may write (0: no limit).
	MaxWrites() int
	// Shared reports whether other instances commit to the same table
	// (they may hold epoch keys of it that this one must not destroy).
	Shared() bool
	// Where names the storage in messages: a file's path, an etcd prefix.
	Where() string
	Close() error
}

// RatchetWatcher is implemented by a shared storage that can push the
// roots other instances commit, so that an instance's table is fresh
// before it reads or commits.
type RatchetWatcher interface {
	// Watch calls apply with every root committed after revision from,
	// with the buckets written since the one before, until stop is closed
	// (nil) or the watch fails.
	Watch(stop <-chan struct{}, from uint64, apply func(*RatchetRoot)) error
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

// RatchetRoot is a root as stored, with buckets read in the same instant.
type RatchetRoot struct {
	Sealed  []byte         // the sealed root
	Epoch   []byte         // the id of the epoch key that sealed it (nil if the storage does not say)
	Rev     uint64         // its revision (0: no root yet)
	Since   uint64         // Buckets holds every bucket written after this revision
	Buckets map[int][]byte // sealed buckets
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
	ratchetGroupAAD  = "wabackup-vault ratchet group v1/"
	ratchetValueAAD  = "wabackup-vault ratchet value v1/"
)

// ErrRolledBack is returned when stored data does not match the key
// table: it was put back from an older copy, or altered.
var ErrRolledBack = errors.New("vault: stored data does not match the vault's key table (put back from an older copy of the storage, or altered): refused")

// ErrPreUpgradeCopy is returned when the storage holds the values of the
// plain store a RatchetStore replaces, and no key table, while the
// sealer records that a key table was made already (or holds epoch keys
// of one): the storage is a copy from before the upgrade (or was made to
// look like one), and taking it over would bring back its records as
// they were then, destroyed ones too.
var ErrPreUpgradeCopy = errors.New("vault: a copy of the storage from before the key table upgrade")

// preUpgradeError is an ErrPreUpgradeCopy that says where and why.
type preUpgradeError struct{ msg string }

func (e *preUpgradeError) Error() string        { return e.msg }
func (e *preUpgradeError) Is(target error) bool { return target == ErrPreUpgradeCopy }

// The records a RatchetStore keeps in its sealer (Ratchet.Record), each
// followed by a table id: that table's first commit is being made (kept
// before the commit's epoch key is made), and that table was made (kept
// after its first commit, before the store serves). A storage that holds
// the plain store's values and no key table is not taken over once a
// table was made, nor while the sealer holds epoch keys of a table no
// "making" record names (made by an earlier version, which kept no
// records).
var (
	recordMaking = []byte("wabackup-vault key table making v1/")
	recordMade   = []byte("wabackup-vault key table made v1/")
)

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

// The bucket keys are in ratchetGroups groups of groupBuckets (bucket n
// in group n / groupBuckets), each group sealed under its own key; the
// root holds the group keys. So a commit writes the root (2 KiB), the
// groups and the buckets it touches.
const (
	ratchetGroups = 64
	groupBuckets  = ratchetBuckets / ratchetGroups
)

// groupBlob is the storage index of group g's blob (after the buckets').
func groupBlob(g int) int { return ratchetBuckets + g }

func groupAAD(g int) []byte {
	return binary.BigEndian.AppendUint16([]byte(ratchetGroupAAD), uint16(g))
}

// rootPlain is the root's plaintext: "WRT2" || uint64be(seq) || flags ||
// uint8(len(prev)) || prev || the group keys. ("WRT1" roots, written by
// earlier versions, have the 1,024 bucket keys after seq and nothing
// else: flat.)
type rootPlain struct {
	seq     uint64
	pending bool
	prev    []byte
	gkeys   [ratchetGroups][32]byte
	flat    bool
	bkeys   [ratchetBuckets][32]byte // flat only
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
	for i := range p.gkeys {
		b = append(b, p.gkeys[i][:]...)
	}
	return b
}

func decodeRoot(b []byte) (*rootPlain, error) {
	bad := errors.New("vault: malformed key table root")
	var p rootPlain
	switch {
	case len(b) == len(ratchetMagic)+8+ratchetBuckets*32 && bytes.Equal(b[:4], ratchetMagic):
		p.seq = binary.BigEndian.Uint64(b[4:])
		p.flat = true
		for i := range p.bkeys {
			copy(p.bkeys[i][:], b[12+32*i:])
		}
		return &p, nil
	case len(b) >= 14 && bytes.Equal(b[:4], ratchetMagic2):
		p.seq = binary.BigEndian.Uint64(b[4:])
		if b[12]&^rootPending != 0 {
			return nil, bad
		}
		p.pending = b[12]&rootPending != 0
		n := int(b[13])
		b = b[14:]
		if len(b) != n+ratchetGroups*32 {
			return nil, bad
		}
		if n > 0 {
			p.prev = append([]byte(nil), b[:n]...)
		}
		b = b[n:]
		for i := range p.gkeys {
			copy(p.gkeys[i][:], b[32*i:])
		}
		return &p, nil
	}
	return nil, bad
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
	if st.Shared() {
		// Under load, fewer and larger commits: each costs an epoch key
		// and a consensus round on the root, and each commit of another
		// instance makes this one's next commit start over.
		s.gap = 60 * time.Millisecond
	}
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
	if w, ok := st.(RatchetWatcher); ok {
		s.workers.Add(1)
		go s.follow(w)
	}
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

// follow applies the roots the storage pushes; after a failed watch it
// reads the table and watches again.
func (s *RatchetStore) follow(w RatchetWatcher) {
	defer s.workers.Done()
	for {
		s.mu.RLock()
		from := s.rev
		s.mu.RUnlock()
		err := w.Watch(s.stop, from, func(f *RatchetRoot) { _ = s.apply(f, false) })
		select {
		case <-s.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		if err != nil && s.Logf != nil {
			s.Logf("vault: watching the key table: %v", err)
		}
		_ = s.reload(false)
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
//
// The first root is made only if the sealer allows it (mayMakeTable): a
// storage with the plain store's values is not taken over once this
// sealer has a key table. Every open that ends with a table records in
// the sealer that the table was made, before the store serves.
func (s *RatchetStore) load() error {
	id, err := s.st.Init(randBytes(8))
	if err != nil {
		return err
	}
	if len(id) != 8 {
		return fmt.Errorf("%w: malformed key table id in %s", ErrRolledBack, s.st.Where())
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
		if first {
			if err := s.mayMakeTable(len(legacy) > 0); errors.Is(err, ErrStale) {
				// Another instance made the first root meanwhile.
				if err := s.reload(false); err != nil {
					return err
				}
				first = false
				continue
			} else if err != nil {
				return err
			}
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
	// Also for a table an earlier version made, which kept no record.
	return s.r.Record(append(bytes.Clone(recordMade), s.tableID...))
}

// mayMakeTable is called before the first root is made. If the storage
// holds values of the plain store (takeover), it refuses them once the
// sealer records that a key table was made, or holds an epoch key of a
// table no "making" record names: then the storage is a copy from before
// the upgrade. Else it records in the sealer that this table is being
// made. ErrStale: a root was committed since it was read (another
// instance's first commit), read it.
func (s *RatchetStore) mayMakeTable(takeover bool) error {
	if takeover {
		// The epoch keys before the records: a table's first epoch key is
		// made after its "making" record, so a key listed here was made
		// after its record was kept.
		ids, err := s.r.EpochKeys(nil)
		if err != nil {
			return err
		}
		recs, err := s.r.Records()
		if err != nil {
			return err
		}
		making := map[string]bool{}
		var made, earlier []byte
		for _, r := range recs {
			if t, ok := bytes.CutPrefix(r, recordMade); ok && made == nil {
				made = t
			} else if t, ok := bytes.CutPrefix(r, recordMaking); ok {
				making[string(t)] = true
			}
		}
		for _, id := range ids {
			if len(id) < 8 || !making[string(id[:8])] {
				earlier = id
				break
			}
		}
		if made != nil || earlier != nil {
			// The record of a table made is kept after its first root
			// was committed: if another instance's is, read it.
			if r, err := s.st.Root(0); err != nil {
				return err
			} else if r.Rev != 0 {
				return ErrStale
			}
			why := fmt.Sprintf("the sealer records that key table %x was made", made)
			if made == nil {
				why = fmt.Sprintf("the sealer holds epoch key %x of a key table (made by an earlier version)", earlier)
			}
			where := s.st.Where()
			return &preUpgradeError{fmt.Sprintf("vault: %s is a copy from before the key table upgrade: it holds the plain store's values and no key table, "+
				"but %s; taking it over would bring its records back as they were then, destroyed ones too, so the vault refuses it: "+
				"put back the current state of %s (a copy made since the upgrade), see docs/VAULT.md, \"Rollback\"", where, why, where)}
		}
	} else {
		// A table the sealer records as made has a root: without one (its
		// root deleted or emptied, the id kept) a new, empty table would
		// take its place, and every record would be lost silently.
		recs, err := s.r.Records()
		if err != nil {
			return err
		}
		made := append(bytes.Clone(recordMade), s.tableID...)
		if slices.ContainsFunc(recs, func(r []byte) bool { return bytes.Equal(r, made) }) {
			if r, err := s.st.Root(0); err != nil {
				return err
			} else if r.Rev != 0 {
				return ErrStale
			}
			where := s.st.Where()
			return fmt.Errorf("%w: the root of key table %x is gone from %s, though the sealer records that the table was made: a new, empty table is not made in its place; put back the current state of %s", ErrRolledBack, s.tableID, where, where)
		}
	}
	return s.r.Record(append(bytes.Clone(recordMaking), s.tableID...))
}

// reload reads the root and the buckets written since the copy held. At
// the first open of an unshared storage it also destroys every other epoch
// key of the table (left by a crash between making a key and destroying
// the one before); a shared one destroys the key the root names as the one
// before its own.
func (s *RatchetStore) reload(first bool) error {
	for tries := 0; ; tries++ {
		since := uint64(0)
		if !first {
			s.mu.RLock()
			since = s.rev
			s.mu.RUnlock()
		}
		fresh, err := s.st.Root(since)
		if err == nil {
			err = s.apply(fresh, first)
		}
		if !errors.Is(err, ErrStale) || tries >= 20 {
			return err
		}
	}
}

// apply makes fresh the table held, unless a later one is held already.
// ErrStale: fresh could not be applied (its epoch key was destroyed since,
// or it lacks a bucket), read the root again.
func (s *RatchetStore) apply(fresh *RatchetRoot, first bool) error {
	s.mu.RLock()
	held := s.rev
	s.mu.RUnlock()
	if fresh.Rev == 0 {
		if held != 0 && !first {
			// A root is never deleted: the storage was replaced.
			return fmt.Errorf("vault: the key table's root is gone from %s (put back from a copy from before the key table upgrade, or deleted): refusing to serve from it", s.st.Where())
		}
		return nil
	}
	if !first && fresh.Rev <= held {
		return nil
	}
	if fresh.Epoch != nil && !bytes.HasPrefix(fresh.Epoch, s.tableID) {
		// Epoch keys belong to the token, not to one table: a root that
		// names another table's key (its id, or the id beside it, altered)
		// is not opened, so no key of another table is destroyed below.
		return fmt.Errorf("%w: the key table root in %s names epoch key %x, which is not of key table %x (the id stored beside it)", ErrRolledBack, s.st.Where(), fresh.Epoch, s.tableID)
	}
	var ids [][]byte
	var err error
	if fresh.Epoch != nil {
		ids = [][]byte{fresh.Epoch}
	} else if ids, err = s.r.EpochKeys(s.tableID); err != nil {
		return err
	}
	var pt []byte
	var opened []byte
	for _, id := range ids {
		if p, err := s.r.OpenEpoch(id, fresh.Sealed, ratchetRootAAD); err == nil {
			opened, pt = id, p
			break
		}
	}
	if opened == nil {
		if s.st.Shared() {
			// Another instance may have committed and destroyed that key
			// since the read: a root that moved is read again.
			if now, err := s.st.Root(fresh.Rev); err == nil && now.Rev != fresh.Rev {
				return ErrStale
			}
		}
		return fmt.Errorf("vault: the key table opens under none of the epoch keys the HSM holds: the storage was put back from an older copy, replaced, or belongs to another HSM; refusing to serve from it")
	}
	root, err := decodeRoot(pt)
	if err != nil {
		return err
	}
	fromScratch := first || fresh.Since == 0
	s.mu.RLock()
	if !fromScratch && fresh.Since > s.rev {
		// Buckets written between the table held and Since are missing.
		s.mu.RUnlock()
		return ErrStale
	}
	held = s.rev
	bkeys := root.bkeys
	if !root.flat {
		for g := range root.gkeys {
			switch {
			case root.gkeys[g] == ([32]byte{}):
				clear(bkeys[g*groupBuckets : (g+1)*groupBuckets])
			case !fromScratch && !s.flat && root.gkeys[g] == s.gkeys[g]:
				copy(bkeys[g*groupBuckets:(g+1)*groupBuckets], s.bkeys[g*groupBuckets:])
			default:
				blob := fresh.Buckets[groupBlob(g)]
				if blob == nil {
					s.mu.RUnlock()
					if fromScratch {
						return fmt.Errorf("%w: key table group %d is missing", ErrRolledBack, g)
					}
					return ErrStale
				}
				pt, err := openOnce(root.gkeys[g][:], blob, groupAAD(g))
				if err != nil || len(pt) != groupBuckets*32 {
					s.mu.RUnlock()
					return fmt.Errorf("%w: key table group %d does not open", ErrRolledBack, g)
				}
				for i := range groupBuckets {
					copy(bkeys[g*groupBuckets+i][:], pt[32*i:])
				}
			}
		}
	}
	var changed []int
	for i := range bkeys {
		if bkeys[i] != ([32]byte{}) && (fromScratch || bkeys[i] != s.bkeys[i]) {
			changed = append(changed, i)
		}
	}
	s.mu.RUnlock()
	built := map[int]map[string]ratchetSlot{}
	for _, i := range changed {
		blob := fresh.Buckets[i]
		if blob == nil {
			if fromScratch {
				return fmt.Errorf("%w: key table bucket %d is missing", ErrRolledBack, i)
			}
			return ErrStale
		}
		b, err := openOnce(bkeys[i][:], blob, bucketAAD(i))
		if err != nil {
			return fmt.Errorf("%w: key table bucket %d does not open", ErrRolledBack, i)
		}
		if built[i], err = decodeBucket(i, b); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if !first && (fresh.Rev <= s.rev || s.rev != held) {
		// A commit or another reload got there first (revisions only
		// grow), or moved the table the changes were found against.
		later := fresh.Rev <= s.rev
		s.mu.Unlock()
		if later {
			return nil
		}
		return ErrStale
	}
	for i := range bkeys {
		if m, ok := built[i]; ok {
			s.buckets[i] = m
		} else if bkeys[i] == ([32]byte{}) {
			s.buckets[i] = map[string]ratchetSlot{}
		}
	}
	s.bkeys, s.gkeys, s.flat = bkeys, root.gkeys, root.flat
	s.seq, s.rev, s.epoch, s.prev, s.pending = root.seq, fresh.Rev, opened, root.prev, root.pending
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
		s.mu.RLock()
		rev := s.rev
		if shared {
			s.mu.RUnlock()
		} // else: one writer, this one: the table and the value are read under the lock a commit holds while it lands
		sealed, fresh, err := s.st.Value(key, rev)
		if shared {
			if err == nil && fresh != nil {
				// Another instance committed: its table came with the value.
				err = s.apply(fresh, false)
				if errors.Is(err, ErrStale) && tries < 20 {
					continue
				}
			}
			if err != nil {
				return nil, 0, err
			}
			s.mu.RLock()
			if fresh != nil && s.rev != fresh.Rev {
				// The table moved on again while it was read.
				s.mu.RUnlock()
				if tries >= 20 {
					return nil, 0, fmt.Errorf("%w: the key table keeps changing", ErrUnavailable)
				}
				continue
			}
			if fresh == nil && s.rev != rev && tries < 20 {
				s.mu.RUnlock()
				continue
			}
		} else if err != nil {
			s.mu.RUnlock()
			return nil, 0, err
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

// committer groups the writes that arrive within 1 ms of the first (up
// to the batch limit) into one commit. Under load — the commit before held
// more than one write — they gather until the gap since that commit ended
// has passed, if that is later. So a lone write waits 1 ms.
func (s *RatchetStore) committer() {
	defer close(s.done)
	var last time.Time
	busy := false
	for {
		var batch []*ratchetOp
		select {
		case op := <-s.ops:
			batch = append(batch, op)
		case <-s.stop:
			return
		}
		wait := time.Millisecond
		if busy {
			wait = max(wait, s.gap-time.Since(last))
		}
		timer := time.NewTimer(wait)
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
		last, busy = time.Now(), len(batch) > 1
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
	bkeys      [ratchetBuckets][32]byte
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
	st.root = rootPlain{seq: seq, pending: pending, gkeys: s.gkeys}
	st.bkeys = s.bkeys
	if s.st.Shared() {
		st.root.prev = s.epoch
	}
	groups := map[int]bool{}
	if s.flat {
		// The first root with groups: every group that has a bucket.
		for i := range s.bkeys {
			if s.bkeys[i] != ([32]byte{}) {
				groups[i/groupBuckets] = true
			}
		}
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
		copy(st.bkeys[n][:], randBytes(32))
		st.newBuckets[n] = m
		st.c.Buckets[n] = sealOnce(st.bkeys[n][:], encodeBucket(m), bucketAAD(n))
		groups[n/groupBuckets] = true
	}
	for g := range groups {
		var pt []byte
		for i := range groupBuckets {
			pt = append(pt, st.bkeys[g*groupBuckets+i][:]...)
		}
		copy(st.root.gkeys[g][:], randBytes(32))
		st.c.Buckets[groupBlob(g)] = sealOnce(st.root.gkeys[g][:], pt, groupAAD(g))
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
		if shared {
			s.mu.RLock()
			moved := s.rev != st.rev
			s.mu.RUnlock()
			if moved {
				// A newer root arrived (pushed, or read by a Get) since
				// staging: this commit would fail, stage it again.
				continue
			}
		} else {
			// Readers hold the lock across reading a value and its slot.
			s.mu.Lock()
		}
		rev, fresh, err := s.st.Commit(&st.c, st.rev)
		if !shared && err != nil {
			s.mu.Unlock()
		}
		if errors.Is(err, ErrStale) && shared && st.rev != 0 {
			if fresh != nil {
				err = s.apply(fresh, false)
			}
			if fresh == nil || errors.Is(err, ErrStale) {
				err = s.reload(false)
			}
			if err != nil {
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
		// A reader may have read this root (or a later one) meanwhile.
		if s.rev == st.rev {
			for n, m := range st.newBuckets {
				s.buckets[n] = m
			}
			s.bkeys, s.gkeys, s.flat = st.bkeys, st.root.gkeys, false
			s.seq, s.rev, s.epoch, s.prev, s.pending = st.root.seq, rev, epoch, st.root.prev, st.root.pending
		}
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
