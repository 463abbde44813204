package archive

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wabackup/wabackup/internal/atomicfile"
	"github.com/wabackup/wabackup/pkg/keys"
)

// The keyring (format 3, FORMAT.md §2.4) is the authenticated list of the
// key slots that open the repository, and the keys of its earlier epochs.
// Its object is keyring/<version, 20 decimal digits>, a STREAM object under
// the current epoch's object key; the newest version is the keyring.

const keyringPrefix = "keyring/"

func keyringName(v uint64) string { return fmt.Sprintf("%s%020d", keyringPrefix, v) }

// ErrRolledBack is returned when the store shows an older state than this
// machine has already seen: an older keyring, or the newest snapshot gone
// without this machine forgetting it (SetAllowRollback accepts it).
var ErrRolledBack = errors.New("the repository store shows an older state than this machine has seen (rolled back?)")

// ErrRetiredKey wraps ErrWrongKey for a slot that opened but no longer
// belongs to the repository: removed, or of an epoch key rotate retired.
var ErrRetiredKey = fmt.Errorf("%w (a removed or retired key slot)", keys.ErrWrongKey)

// keyringVersions lists the keyring versions in the store, newest first.
func (r *Repository) keyringVersions(ctx context.Context) ([]uint64, error) {
	objs, err := r.listNames(ctx, keyringPrefix)
	if err != nil {
		return nil, err
	}
	var vs []uint64
	for _, o := range objs {
		digits := strings.TrimPrefix(o.Name, keyringPrefix)
		v, err := strconv.ParseUint(digits, 10, 64)
		if err != nil || keyringName(v) != o.Name || v == 0 {
			return nil, fmt.Errorf("%s: not a keyring name: %w", o.Name, ErrCorrupt)
		}
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] > vs[j] })
	return vs, nil
}

// readKeyring opens keyring version v under the object keys of k.
func (r *Repository) readKeyring(ctx context.Context, v uint64, k *keySet) (*keys.Keyring, error) {
	name := keyringName(v)
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	sr, err := k.newStreamReader(rc, name)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(sr, 1<<20+1))
	if err != nil {
		return nil, err
	}
	kr, err := keys.ParseKeyring(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	if kr.Version != v {
		return nil, fmt.Errorf("%s: holds version %d: %w", name, kr.Version, ErrCorrupt)
	}
	return kr, nil
}

// writeKeyring stores kr under the object keys of k. A version that
// exists is never overwritten: the caller holds the exclusive lock, so
// one there means another writer raced it.
func (r *Repository) writeKeyring(ctx context.Context, kr *keys.Keyring, k *keySet) error {
	data, err := kr.Marshal()
	if err != nil {
		return err
	}
	name := keyringName(kr.Version)
	if _, err := r.store.Stat(ctx, name); err == nil {
		return fmt.Errorf("%s exists already: another process changed the keys at the same time; run the command again", name)
	}
	_, err = r.saveObjectWith(ctx, k, name, false, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	return err
}

// openKeyring reads the newest keyring with the master key a slot gave,
// checks that the slot is listed in it, and sets the repository's epoch
// keys. A repository without a keyring (before format 3) uses master as
// its only key.
func (r *Repository) openKeyring(ctx context.Context, slot *keys.Slot, slotData []byte, master keys.Key) error {
	vs, err := r.keyringVersions(ctx)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		if r.cfg.Version >= 3 {
			return r.rollbackOr(fmt.Errorf("the repository has no keyring (format %d needs one): the store lost it or was rolled back to before it was made: %w", r.cfg.Version, ErrCorrupt))
		}
		r.keys = deriveKeys(master)
		return nil
	}
	if r.cfg.Version < 3 {
		// A migrate interrupted after its keyring and before the config:
		// an epoch-0 keyring is then unused (migrate writes the next
		// version). A later epoch's means the config was downgraded.
		if kr, err := r.readKeyring(ctx, vs[0], deriveKeys(master)); err == nil && kr.Epoch == 0 {
			r.keys = deriveKeys(master)
			return nil
		}
		return fmt.Errorf("the config says format version %d, but the repository has a keyring of a later key epoch (format 3): the config was downgraded: %w", r.cfg.Version, ErrCorrupt)
	}
	if err := r.checkHighWater(vs[0]); err != nil {
		return err
	}
	k0 := deriveKeys(master) // object keys depend on the master key alone
	kr, err := r.readKeyring(ctx, vs[0], k0)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			return err
		}
		// Not of the current epoch? An older keyring it opens says so.
		for _, v := range vs[1:] {
			if old, oerr := r.readKeyring(ctx, v, k0); oerr == nil {
				return fmt.Errorf("key slot %.8s opens only keyring version %d, of key epoch %d; the repository is at version %d: the slot was retired by key rotate and no longer opens it: %w", slot.ID, v, old.Epoch, vs[0], ErrRetiredKey)
			}
		}
		return fmt.Errorf("%s does not open with key slot %.8s (damaged, or the slot was not made for this repository): %w", keyringName(vs[0]), slot.ID, ErrCorrupt)
	}
	ref, listed := kr.Slot(slot.ID)
	switch {
	case !listed:
		if rm, ok := kr.RemovedSlot(slot.ID); ok {
			how := "removed"
			if rm.Why == "rotated" {
				how = "retired by key rotate"
			}
			return fmt.Errorf("key slot %.8s was %s on %s: the repository store may have been rolled back (its object is back): %w", slot.ID, how, rm.Time.Local().Format("2006-01-02 15:04"), ErrRetiredKey)
		}
		return fmt.Errorf("key slot %.8s is not in the repository's keyring (added behind wabackup's back): %w", slot.ID, ErrRetiredKey)
	case ref.SHA256 != keys.SlotDigest(slotData):
		return fmt.Errorf("keys/%s: the key slot differs from the one the keyring lists (altered): %w", slot.ID, ErrCorrupt)
	}
	r.setKeyring(kr, master)
	r.noteHighWater(func(h *highWater) { h.Keyring = max(h.Keyring, kr.Version) })
	return nil
}

// setKeyring makes kr, whose epoch's master key is master, the
// repository's keyring and derives the keys of every epoch it holds.
func (r *Repository) setKeyring(kr *keys.Keyring, master keys.Key) {
	r.keyring = kr
	r.keys = epochKeys(kr.Epoch, master, kr.Content)
	r.epochs = epochState{}
	old := append([]keys.EpochKey(nil), kr.Old...)
	sort.Slice(old, func(i, j int) bool { return old[i].Epoch > old[j].Epoch })
	for _, e := range old {
		var k keys.Key
		copy(k[:], e.Key)
		r.epochs.old = append(r.epochs.old, epochKeys(e.Epoch, k, kr.Content))
	}
}

// configMACOK verifies the config MAC under the current epoch or, after a
// rotation interrupted before it rewrote the config, an older one.
func (r *Repository) configMACOK() bool {
	for _, k := range r.readKeys() {
		if hmac.Equal([]byte(r.cfg.mac(k)), []byte(r.cfg.MAC)) {
			return true
		}
	}
	return false
}

// Keyring returns the repository's keyring (nil before format 3).
func (r *Repository) Keyring() *keys.Keyring { return r.keyring }

// Epoch returns the current key epoch.
func (r *Repository) Epoch() uint32 { return r.keys.epoch }

// updateKeyring writes the next keyring version: fn changes a copy of the
// current one. The caller holds the exclusive lock.
func (r *Repository) updateKeyring(ctx context.Context, fn func(kr *keys.Keyring)) error {
	if r.keyring == nil {
		return nil
	}
	b, err := r.keyring.Marshal()
	if err != nil {
		return err
	}
	next, err := keys.ParseKeyring(b)
	if err != nil {
		return err
	}
	fn(next)
	next.Version = r.keyring.Version + 1
	next.Time = time.Now().UTC().Truncate(time.Second)
	if err := r.writeKeyring(ctx, next, r.keys); err != nil {
		return err
	}
	r.keyring = next
	r.noteHighWater(func(h *highWater) { h.Keyring = max(h.Keyring, next.Version) })
	return nil
}

// newKeyring is the first keyring of a repository: epoch 0, these slots.
func newKeyring(refs []keys.SlotRef) *keys.Keyring {
	return &keys.Keyring{V: 1, Version: 1, Time: time.Now().UTC().Truncate(time.Second), Slots: refs}
}

// The high-water mark: what this machine has seen of a repository (the
// newest keyring version, the newest snapshot), kept in the cache
// directory, so that a store showing an older state is noticed.
type highWater struct {
	Keyring      uint64    `json:"keyring"`
	Snapshot     string    `json:"snapshot,omitempty"` // id of the newest snapshot seen
	SnapshotTime time.Time `json:"snapshot_time,omitempty"`
}

// SetAllowRollback makes an older state than this machine has seen an
// accepted one (after a restore of the store from a backup, say): the
// marks are lowered to what the store shows.
func (r *Repository) SetAllowRollback(ok bool) { r.allowRollback = ok }

func (r *Repository) highWaterPath() string {
	if r.cacheDir == "" || r.cfg == nil {
		return ""
	}
	return filepath.Join(r.cacheDir, "highwater-"+r.cfg.ID+".json")
}

func (r *Repository) loadHighWater() highWater {
	var h highWater
	if p := r.highWaterPath(); p != "" {
		if data, err := os.ReadFile(p); err == nil {
			json.Unmarshal(data, &h) // a damaged mark is no mark
		}
	}
	return h
}

// noteHighWater changes the mark and stores it (best effort: a cache
// directory that cannot be written only loses the protection).
func (r *Repository) noteHighWater(fn func(h *highWater)) {
	p := r.highWaterPath()
	if p == "" {
		return
	}
	h := r.loadHighWater()
	before := h
	fn(&h)
	if h == before {
		return
	}
	data, _ := json.Marshal(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
		atomicfile.Write(p, data, 0o600)
	}
}

func (r *Repository) rollbackOr(err error) error {
	if r.allowRollback {
		return nil
	}
	return err
}

// checkHighWater compares the store's newest keyring version with the
// mark.
func (r *Repository) checkHighWater(newest uint64) error {
	h := r.loadHighWater()
	if newest >= h.Keyring {
		return nil
	}
	if r.allowRollback {
		r.noteHighWater(func(h *highWater) { h.Keyring = newest })
		return nil
	}
	return fmt.Errorf("the repository's keyring is at version %d, but this machine has seen version %d: the store may have been rolled back (a removed key could open it again); --allow-rollback accepts it: %w", newest, h.Keyring, ErrRolledBack)
}

// checkSnapshotsHighWater checks the listed snapshots against the mark:
// the newest snapshot this machine saw must still be there, unless a newer
// one is. It then raises the mark.
func (r *Repository) checkSnapshotsHighWater(snaps []*Snapshot, damaged []damagedSnapshot) error {
	if r.highWaterPath() == "" {
		return nil
	}
	h := r.loadHighWater()
	var newest *Snapshot
	for _, s := range snaps {
		if newest == nil || s.Time.After(newest.Time) {
			newest = s
		}
	}
	if h.Snapshot != "" {
		present := false
		for _, s := range snaps {
			present = present || s.ID.String() == h.Snapshot
		}
		for _, d := range damaged {
			present = present || d.id.String() == h.Snapshot
		}
		if !present && (newest == nil || !newest.Time.After(h.SnapshotTime)) && !r.allowRollback {
			return fmt.Errorf("snapshot %.8s (%s), the newest this machine has seen, is gone and no newer one is there: the store may have been rolled back (if another machine forgot it, --allow-rollback accepts it): %w",
				h.Snapshot, h.SnapshotTime.Local().Format("2006-01-02 15:04"), ErrRolledBack)
		}
	}
	r.noteHighWater(func(h *highWater) {
		if newest == nil {
			if r.allowRollback {
				h.Snapshot, h.SnapshotTime = "", time.Time{}
			}
			return
		}
		if newest.Time.After(h.SnapshotTime) || r.allowRollback || h.Snapshot == "" {
			h.Snapshot, h.SnapshotTime = newest.ID.String(), newest.Time
		}
	})
	return nil
}

// forgotHighWater lowers the snapshot mark when this machine removes the
// snapshot it names (forget): the next newest is then the mark.
func (r *Repository) forgotHighWater(removed map[ID]bool, remaining []*Snapshot) {
	h := r.loadHighWater()
	id, err := ParseID(h.Snapshot)
	if err != nil || !removed[id] {
		return
	}
	r.noteHighWater(func(h *highWater) {
		h.Snapshot, h.SnapshotTime = "", time.Time{}
		for _, s := range remaining {
			if !removed[s.ID] && s.Time.After(h.SnapshotTime) {
				h.Snapshot, h.SnapshotTime = s.ID.String(), s.Time
			}
		}
	})
}

// slotRef makes the keyring's reference to a slot from its stored bytes.
func slotRef(id string, data []byte) keys.SlotRef {
	return keys.SlotRef{ID: id, SHA256: keys.SlotDigest(data)}
}
