package archive

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/keys"
)

// FormatVersion is the repository format this package writes; it reads
// versions 1 to 3 (FORMAT.md §11). Version 3 adds the keyring (§2.4).
const FormatVersion = 3

// Chunk size bounds (FORMAT.md §Chunking).
const (
	DefaultMinChunk = 512 << 10
	DefaultAvgChunk = 1 << 20
	DefaultMaxChunk = 4 << 20
	maxChunkSize    = 8 << 20 // the largest max a config may set
	DefaultPackSize = 32 << 20
)

// Config is the repository's plaintext `config` object.
type Config struct {
	Format   string    `json:"format"`
	Version  int       `json:"version"`
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	MinChunk int       `json:"min_chunk"`
	AvgChunk int       `json:"avg_chunk"`
	MaxChunk int       `json:"max_chunk"`
	PackSize int64     `json:"pack_size"`
	// Parity is the percentage of Reed–Solomon parity kept for every
	// pack (FORMAT.md §5.1); 0: none.
	Parity int    `json:"parity,omitempty"`
	MAC    string `json:"mac"`
}

func (c *Config) validate() error {
	if c.Format != "wabackup" {
		return errors.New("not a wabackup repository")
	}
	if c.Version > FormatVersion {
		return fmt.Errorf("repository format version %d is newer than this wabackup understands (%d): upgrade wabackup", c.Version, FormatVersion)
	}
	if c.Version < 1 {
		return fmt.Errorf("invalid repository format version %d", c.Version)
	}
	if b, err := hex.DecodeString(c.ID); err != nil || len(b) != 16 {
		return errors.New("invalid repository id")
	}
	if c.MinChunk < 64<<10 || c.AvgChunk <= c.MinChunk || c.MaxChunk <= c.AvgChunk || c.MaxChunk > maxChunkSize || c.AvgChunk&(c.AvgChunk-1) != 0 {
		return errors.New("invalid chunker parameters")
	}
	if c.PackSize < 1<<20 || c.PackSize > 1<<30 {
		return errors.New("invalid pack size")
	}
	if c.Parity < 0 || c.Parity > maxParity {
		return fmt.Errorf("invalid parity %d%% (0 to %d)", c.Parity, maxParity)
	}
	return nil
}

// mac computes the config MAC (FORMAT.md §Config).
func (c *Config) mac(k *keySet) string {
	m := hmac.New(sha256.New, k.config[:])
	m.Write([]byte("wabackup v1 config"))
	m.Write([]byte(c.ID))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(c.Version))
	m.Write(b[:])
	for _, v := range []int64{int64(c.MinChunk), int64(c.AvgChunk), int64(c.MaxChunk), c.PackSize} {
		binary.BigEndian.PutUint64(b[:], uint64(v))
		m.Write(b[:])
	}
	if c.Parity != 0 {
		// Only when set, so configs without parity keep their MAC.
		m.Write([]byte("parity"))
		binary.BigEndian.PutUint64(b[:], uint64(c.Parity))
		m.Write(b[:])
	}
	return hex.EncodeToString(m.Sum(nil))
}

// ParseConfig strictly parses a config object.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %v", err)
	}
	if dec.More() {
		return nil, errors.New("config: trailing data")
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &c, nil
}

// Repository is an open repository. Methods other than the key-slot ones
// need Unlock first.
type Repository struct {
	// chunkReadHook, set by tests, is told the length of every blob read
	// for a restore or check.
	chunkReadHook func(n int)
	// blobBytesRead counts the bytes of blobs read from the store.
	blobBytesRead atomic.Int64

	store     cloud.Store
	cfg       *Config
	keys      *keySet       // the current epoch's (everything is written under it)
	epochs    epochState    // the older epochs still readable
	keyring   *keys.Keyring // nil before format 3
	idx       *Index
	tmpDir    string
	tmpDirSet bool

	slotID   string // the key slot Unlock used
	slotKind keys.SlotKind
	slotData map[string][]byte // stored bytes of the slots loadSlots read, by id

	allowRollback bool // SetAllowRollback

	cacheDir string

	// The metadata cache (metacache.go), opened on first use, and the
	// planned reads' settings.
	metaOnce       sync.Once
	metaC          *metaCache
	metaLimit      int64
	metaMu         sync.Mutex   // one metadata prefetch at a time
	metaStoreBlobs atomic.Int64 // metadata blobs read from the store
	conns          int          // planned reads in flight (0: DefaultConnections)

	orphanOnce sync.Once
	orphans    map[ID]orphanLoc // chunks of unindexed packs (restore)
	idxMu      sync.Mutex
	idxLoaded  bool
}

// SetCacheDir sets the directory of the local caches: the index cache
// (FORMAT.md §6) and the metadata cache (§12), under a subdirectory named
// by the repository id; "" (the default) keeps them in temporary files
// for this process only.
func (r *Repository) SetCacheDir(dir string) { r.cacheDir = dir }

// Close releases the caches and the store.
func (r *Repository) Close() error {
	r.metaC.close()
	err := r.idx.close()
	if cerr := r.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// Store returns the underlying store.
func (r *Repository) Store() cloud.Store { return r.store }

// Config returns the repository configuration.
func (r *Repository) Config() Config { return *r.cfg }

// SetTempDir sets where packs are staged before upload (default: the OS
// temporary directory).
func (r *Repository) SetTempDir(dir string) { r.tmpDir, r.tmpDirSet = dir, true }

// ErrWrongKey is returned by Unlock when no key slot opens with the given
// secret.
var ErrWrongKey = keys.ErrWrongKey

// UnlockedWith returns the id of the key slot that unlocked the
// repository.
func (r *Repository) UnlockedWith() string { return r.slotID }

// Unlocked reports whether Unlock succeeded.
func (r *Repository) Unlocked() bool { return r.keys != nil }

// UnlockedKind returns the kind of the key slot that unlocked the
// repository.
func (r *Repository) UnlockedKind() keys.SlotKind { return r.slotKind }

// Credentials are what the user offers to unlock a repository.
type Credentials struct {
	RecoveryKey *keys.Key
	Password    []byte
	VaultSecret *keys.Key
}

// SecretFor returns the secret the credentials offer for a slot of kind
// (nil: none).
func (c Credentials) SecretFor(kind keys.SlotKind) []byte {
	switch {
	case kind == keys.KindRecovery && c.RecoveryKey != nil:
		return c.RecoveryKey[:]
	case kind == keys.KindPassword && c.Password != nil:
		return c.Password
	case kind == keys.KindVault && c.VaultSecret != nil:
		return c.VaultSecret[:]
	}
	return nil
}

// InitOptions configure a new repository.
type InitOptions struct {
	Password []byte             // optional: also add a password slot
	Argon2   *keys.Argon2Params // nil: keys.DefaultArgon2
	Label    string             // slot label (e.g. the host name)
	Parity   int                // percent of Reed–Solomon parity per pack (0: none)
}

// Init creates a repository in an empty store and returns it unlocked,
// with the new recovery key (shown once to the user).
func Init(ctx context.Context, store cloud.Store, opt InitOptions) (*Repository, keys.Key, error) {
	var none keys.Key
	if _, err := store.Stat(ctx, "config"); err == nil {
		return nil, none, fmt.Errorf("%s already holds a repository; refusing to overwrite it", store.Location())
	} else if !errors.Is(err, cloud.ErrNotFound) {
		return nil, none, err
	}
	master, err := keys.NewKey()
	if err != nil {
		return nil, none, err
	}
	recovery, err := keys.NewKey()
	if err != nil {
		return nil, none, err
	}
	idb := NewRandomID()
	cfg := &Config{Format: "wabackup", Version: FormatVersion, ID: hex.EncodeToString(idb[:16]), Created: time.Now().UTC().Truncate(time.Second),
		MinChunk: DefaultMinChunk, AvgChunk: DefaultAvgChunk, MaxChunk: DefaultMaxChunk, PackSize: DefaultPackSize, Parity: opt.Parity}
	if err := cfg.validate(); err != nil {
		return nil, none, err
	}
	r := &Repository{store: store, cfg: cfg, keys: deriveKeys(master), tmpDir: os.TempDir()}
	cfg.MAC = cfg.mac(r.keys)
	slot, err := keys.NewRecoverySlot(master, recovery, opt.Label)
	if err != nil {
		return nil, none, err
	}
	ref, err := r.putSlot(ctx, slot)
	if err != nil {
		return nil, none, err
	}
	refs := []keys.SlotRef{ref}
	if opt.Password != nil {
		params := keys.DefaultArgon2
		if opt.Argon2 != nil {
			params = *opt.Argon2
		}
		ps, err := keys.NewPasswordSlot(master, opt.Password, params, opt.Label)
		if err != nil {
			return nil, none, err
		}
		ref, err := r.putSlot(ctx, ps)
		if err != nil {
			return nil, none, err
		}
		refs = append(refs, ref)
	}
	// The keyring lists the slots; then the config makes it a repository.
	kr := newKeyring(refs)
	if err := r.writeKeyring(ctx, kr, r.keys); err != nil {
		return nil, none, err
	}
	r.keyring = kr
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, none, err
	}
	// The config goes last: a store without it holds no repository.
	if err := store.Put(ctx, "config", bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, none, err
	}
	return r, recovery, nil
}

// Open reads the repository's config. The repository must then be
// unlocked.
func Open(ctx context.Context, store cloud.Store) (*Repository, error) {
	rc, err := store.Get(ctx, "config", 0, -1)
	if errors.Is(err, cloud.ErrNotFound) {
		return nil, fmt.Errorf("no repository at %s (run wabackup init): %w", store.Location(), cloud.ErrNoRepository)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", store.Location(), err)
	}
	return &Repository{store: store, cfg: cfg, tmpDir: os.TempDir()}, nil
}

// Migrate upgrades a version-1 repository to the current format by
// rewriting its config (version and MAC): no data, index, tree or
// snapshot is rewritten, and version-1 snapshots stay readable (FORMAT.md
// §11). The caller holds an exclusive lock. It reports whether anything
// changed.
func (r *Repository) Migrate(ctx context.Context) (bool, error) {
	if r.cfg.Version >= FormatVersion {
		return false, nil
	}
	if r.keyring == nil {
		// Format 3: the keyring lists the slots there are now (trusted
		// on this first use) before the config says it exists.
		slots, err := r.Slots(ctx)
		if err != nil {
			return false, err
		}
		var refs []keys.SlotRef
		for _, s := range slots {
			refs = append(refs, slotRef(s.ID, r.slotData[s.ID]))
		}
		vs, err := r.keyringVersions(ctx)
		if err != nil {
			return false, err
		}
		kr := newKeyring(refs)
		if len(vs) > 0 {
			kr.Version = vs[0] + 1 // an interrupted migrate's, which nothing trusts
		}
		if err := r.writeKeyring(ctx, kr, r.keys); err != nil {
			return false, err
		}
		r.keyring = kr
	}
	cfg := *r.cfg
	cfg.Version = FormatVersion
	cfg.MAC = cfg.mac(r.keys)
	if err := r.putConfig(ctx, &cfg); err != nil {
		return false, err
	}
	r.cfg = &cfg
	return true, nil
}

// putConfig stores cfg as the config object.
func (r *Repository) putConfig(ctx context.Context, cfg *Config) error {
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := r.store.Put(ctx, "config", bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	return nil
}

// Slots lists the repository's key slots. It fails on a damaged one.
func (r *Repository) Slots(ctx context.Context) ([]*keys.Slot, error) {
	slots, damaged, err := r.loadSlots(ctx)
	if err == nil && len(damaged) > 0 {
		err = damaged[0]
	}
	return slots, err
}

// loadSlots reads every key slot. Slots that do not parse or do not match
// their name are returned as errors in damaged (each names the object);
// err is for failures to read the store.
func (r *Repository) loadSlots(ctx context.Context) (slots []*keys.Slot, damaged []error, err error) {
	objs, err := r.listNames(ctx, "keys/")
	if err != nil {
		return nil, nil, err
	}
	for _, o := range objs {
		rc, err := r.store.Get(ctx, o.Name, 0, -1)
		if err != nil {
			return nil, nil, err
		}
		data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
		rc.Close()
		if err != nil {
			return nil, nil, err
		}
		s, err := keys.ParseSlot(data)
		if err != nil {
			damaged = append(damaged, fmt.Errorf("%s: %w", o.Name, err))
			continue
		}
		if "keys/"+s.ID != o.Name {
			damaged = append(damaged, fmt.Errorf("%s: slot id %s does not match its name: %w", o.Name, s.ID, ErrCorrupt))
			continue
		}
		if r.slotData == nil {
			r.slotData = map[string][]byte{}
		}
		r.slotData[s.ID] = data
		slots = append(slots, s)
	}
	return slots, damaged, nil
}

// Unlock finds a key slot that opens with the credentials and derives the
// repository keys. It fails with ErrWrongKey if none does.
func (r *Repository) Unlock(ctx context.Context, c Credentials) (err error) {
	// A damaged slot must not lock out the holder of another one (the
	// recovery key is the last resort): try the intact ones, and mention
	// the damaged ones only if none opens.
	slots, damaged, err := r.loadSlots(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && len(damaged) > 0 {
			err = errors.Join(append([]error{err}, damaged...)...)
		}
	}()
	if len(slots) == 0 {
		return fmt.Errorf("repository has no usable key slots: %w", ErrCorrupt)
	}
	var lastErr error = ErrWrongKey
	var keyringErr error // the first slot that opened but the keyring refused
	defer func() {
		if err != nil && keyringErr != nil {
			err = keyringErr
		}
	}()
	budget, tried := keys.Argon2Budget, 0
	for _, s := range slots {
		secret := c.SecretFor(s.Kind)
		if secret == nil {
			continue
		}
		master, err := s.UnwrapWithin(secret, &budget)
		if errors.Is(err, keys.ErrArgon2Budget) {
			n := 0
			for _, s := range slots {
				if s.Kind == keys.KindPassword {
					n++
				}
			}
			return fmt.Errorf("%w: stopped after trying %d of the repository's %d password slots, at the Argon2id work one open may do (a repository with many or costly slots could otherwise keep an open busy for hours); open it with the 64-digit key and remove the slots you do not use (wabackup key list, key remove)", keys.ErrWrongKey, tried, n)
		}
		if s.Kind == keys.KindPassword {
			tried++
		}
		if err != nil {
			if !errors.Is(err, keys.ErrWrongKey) {
				lastErr = err
			}
			continue
		}
		if err := r.openKeyring(ctx, s, r.slotData[s.ID], master); err != nil {
			// A slot of another epoch, or not listed (a rotation that
			// stopped before its keyring): another slot may open.
			if errors.Is(err, ErrRetiredKey) || errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrRolledBack) {
				if keyringErr == nil {
					keyringErr = err
				}
				continue
			}
			return err
		}
		if !r.configMACOK() {
			return fmt.Errorf("config: MAC does not verify (the config object was altered): %w", ErrCorrupt)
		}
		r.slotID, r.slotKind = s.ID, s.Kind
		return nil
	}
	return lastErr
}

// putSlot stores a slot object and returns the keyring's reference to it.
func (r *Repository) putSlot(ctx context.Context, s *keys.Slot) (keys.SlotRef, error) {
	data, err := s.Marshal()
	if err != nil {
		return keys.SlotRef{}, err
	}
	if err := r.store.Put(ctx, "keys/"+s.ID, bytes.NewReader(data), int64(len(data))); err != nil {
		return keys.SlotRef{}, err
	}
	return slotRef(s.ID, data), nil
}

// addSlot stores a new slot and lists it in the keyring. (Stored but not
// listed, after a crash in between, it opens nothing.) The caller holds
// the exclusive lock.
func (r *Repository) addSlot(ctx context.Context, s *keys.Slot) error {
	ref, err := r.putSlot(ctx, s)
	if err != nil {
		return err
	}
	return r.updateKeyring(ctx, func(kr *keys.Keyring) { kr.Slots = append(kr.Slots, ref) })
}

// AddPassword adds a password slot and returns it.
func (r *Repository) AddPassword(ctx context.Context, password []byte, p *keys.Argon2Params, label string) (*keys.Slot, error) {
	params := keys.DefaultArgon2
	if p != nil {
		params = *p
	}
	s, err := keys.NewPasswordSlot(r.keys.master, password, params, label)
	if err != nil {
		return nil, err
	}
	return s, r.addSlot(ctx, s)
}

// AddRecoveryKey adds a slot for a new random recovery key and returns it.
func (r *Repository) AddRecoveryKey(ctx context.Context, label string) (keys.Key, *keys.Slot, error) {
	k, err := keys.NewKey()
	if err != nil {
		return k, nil, err
	}
	s, err := keys.NewRecoverySlot(r.keys.master, k, label)
	if err != nil {
		return k, nil, err
	}
	return k, s, r.addSlot(ctx, s)
}

// AddVaultSlot adds a slot opened by a secret escrowed in a key vault.
func (r *Repository) AddVaultSlot(ctx context.Context, secret keys.Key, label string, extra map[string]string) (*keys.Slot, error) {
	s, err := keys.NewVaultSlot(r.keys.master, secret, label, extra)
	if err != nil {
		return nil, err
	}
	return s, r.addSlot(ctx, s)
}

// RemoveSlot deletes a key slot by id or unique id prefix. It refuses to
// remove the last slot.
func (r *Repository) RemoveSlot(ctx context.Context, ref string) (*keys.Slot, error) {
	found, slots, err := r.FindSlot(ctx, ref)
	if err != nil {
		return nil, err
	}
	if len(slots) == 1 || r.keyring != nil && len(r.keyring.Slots) == 1 && r.keyring.Slots[0].ID == found.ID {
		return nil, errors.New("refusing to remove the last key slot: the repository would become unreadable")
	}
	// The keyring first: from then on the slot opens nothing, even if
	// its object comes back.
	if err := r.updateKeyring(ctx, func(kr *keys.Keyring) {
		kept := kr.Slots[:0]
		for _, ref := range kr.Slots {
			if ref.ID != found.ID {
				kept = append(kept, ref)
			}
		}
		kr.Slots = kept
		kr.Removed = append(kr.Removed, keys.RemovedSlot{ID: found.ID, Time: time.Now().UTC().Truncate(time.Second), Why: "removed"})
	}); err != nil {
		return nil, err
	}
	return found, r.store.Delete(ctx, "keys/"+found.ID)
}

// FindSlot finds the key slot whose id starts with ref (at least 4 hex
// digits, and no other slot's id may start with them), and returns it
// with all the slots.
func (r *Repository) FindSlot(ctx context.Context, ref string) (*keys.Slot, []*keys.Slot, error) {
	ref = strings.ToLower(ref)
	if len(ref) < 4 || strings.Trim(ref, "0123456789abcdef") != "" {
		return nil, nil, fmt.Errorf("key id %q: give at least 4 hex digits of the id (wabackup key list shows them)", ref)
	}
	slots, err := r.Slots(ctx)
	if err != nil {
		return nil, nil, err
	}
	var found *keys.Slot
	for _, s := range slots {
		if strings.HasPrefix(s.ID, ref) {
			if found != nil {
				return nil, nil, fmt.Errorf("key id %q is ambiguous: it starts %s and %s; give more digits", ref, found.ID[:8], s.ID[:8])
			}
			found = s
		}
	}
	if found == nil {
		return nil, nil, fmt.Errorf("no key slot %q", ref)
	}
	return found, slots, nil
}
