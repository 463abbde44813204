package archive

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
)

// KeepSlot is a key slot to carry over to a new key epoch, with the
// secret that opens it (a password, a 64-digit key, a vault secret).
type KeepSlot struct {
	ID     string
	Secret []byte
	// Extra, if not nil, replaces a vault slot's extra fields in the new
	// slot (a threshold slot renewed in the checked form).
	Extra map[string]string
}

// RotateOptions say which slots survive a key rotation.
type RotateOptions struct {
	Keep []KeepSlot
	// Rewrite marks the new keyring as rewriting (Rewrite follows): an
	// interrupted rotate --rewrite then goes on instead of rotating again.
	Rewrite bool
	// NewRecoveryKey adds a slot for a new 64-digit key.
	NewRecoveryKey bool
	Label          string
}

// RotateResult says what a rotation did.
type RotateResult struct {
	Epoch       uint32
	Kept        []*keys.Slot // the new slots of the kept ones, in Keep order
	KeptFrom    []*keys.Slot // the slots they replace, in the same order
	RecoveryKey *keys.Key    // the new 64-digit key, if asked for
	Recovery    *keys.Slot
	Removed     []*keys.Slot // the slots not kept: they no longer open the repository
}

// Rotate starts a new key epoch (FORMAT.md §2.4): a new master key, under
// which everything from now on is written; the kept slots re-made for it
// (the others stop opening the repository); the current epoch's key moved
// into the keyring, so older data stays readable. Nothing is re-uploaded.
// The caller holds the exclusive lock.
//
// The order makes an interruption harmless: the new slots are stored
// first (not in any keyring, they open nothing), then the keyring that
// lists them (from here on the repository is in the new epoch; the old
// slots are refused), then the config's MAC under the new epoch, then the
// old slot objects are deleted (a left-over one is refused, check says
// so).
func (r *Repository) Rotate(ctx context.Context, opt RotateOptions) (*RotateResult, error) {
	if r.keyring == nil {
		return nil, fmt.Errorf("repository format %d has no keyring: run 'wabackup migrate' once first: %w", r.cfg.Version, ErrNeedsMigration)
	}
	if len(opt.Keep) == 0 && !opt.NewRecoveryKey {
		return nil, errors.New("a rotation must keep a slot or make a new 64-digit key: the repository would open with nothing")
	}
	slots, err := r.Slots(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]*keys.Slot{}
	for _, s := range slots {
		byID[s.ID] = s
	}
	master, err := keys.NewKey()
	if err != nil {
		return nil, err
	}
	cur := r.keyring
	epoch := cur.Epoch + 1
	content := cur.Content
	if content == nil {
		content = &keys.ContentKeys{ChunkID: clone32(r.keys.chunkID), Chunker: clone32(r.keys.chunker), PageTag: clone32(r.keys.pageTag)}
	}
	res := &RotateResult{Epoch: epoch}
	var refs []keys.SlotRef
	kept := map[string]bool{}
	for _, k := range opt.Keep {
		old, ok := byID[k.ID]
		if !ok || kept[k.ID] {
			return nil, fmt.Errorf("no key slot %.8s to keep (or given twice)", k.ID)
		}
		if _, listed := cur.Slot(k.ID); !listed {
			return nil, fmt.Errorf("key slot %.8s is not in the keyring: it cannot be kept", k.ID)
		}
		// The secret must open the slot: a rotation must not make a slot
		// for a mistyped password.
		if m, err := old.Unwrap(k.Secret); err != nil || m != r.keys.master {
			return nil, fmt.Errorf("key slot %.8s: the secret given does not open it: %w", k.ID, keys.ErrWrongKey)
		}
		var ns *keys.Slot
		switch old.Kind {
		case keys.KindPassword:
			ns, err = keys.NewPasswordSlot(master, k.Secret, *old.KDF, old.Label)
		case keys.KindRecovery:
			var rk keys.Key
			copy(rk[:], k.Secret)
			ns, err = keys.NewRecoverySlot(master, rk, old.Label)
		case keys.KindVault:
			var vs keys.Key
			copy(vs[:], k.Secret)
			extra := old.Extra
			if k.Extra != nil {
				extra = k.Extra
			}
			ns, err = keys.NewVaultSlot(master, vs, old.Label, extra)
		default:
			err = fmt.Errorf("key slot %.8s: kind %q cannot be kept", k.ID, old.Kind)
		}
		if err != nil {
			return nil, err
		}
		kept[k.ID] = true
		ref, err := r.putSlot(ctx, ns)
		if err != nil {
			return nil, err
		}
		refs = append(refs, ref)
		res.Kept = append(res.Kept, ns)
		res.KeptFrom = append(res.KeptFrom, old)
	}
	if opt.NewRecoveryKey {
		rk, err := keys.NewKey()
		if err != nil {
			return nil, err
		}
		ns, err := keys.NewRecoverySlot(master, rk, opt.Label)
		if err != nil {
			return nil, err
		}
		ref, err := r.putSlot(ctx, ns)
		if err != nil {
			return nil, err
		}
		refs = append(refs, ref)
		res.RecoveryKey, res.Recovery = &rk, ns
	}

	now := time.Now().UTC().Truncate(time.Second)
	next := &keys.Keyring{V: 1, Version: cur.Version + 1, Time: now, Epoch: epoch, Content: content,
		Old:     append([]keys.EpochKey{{Epoch: cur.Epoch, Key: clone32(r.keys.master), Created: cur.Time}}, cur.Old...),
		Retired: cur.Retired, Slots: refs, Removed: cur.Removed, Rewrite: opt.Rewrite}
	for _, ref := range cur.Slots {
		next.Removed = append(next.Removed, keys.RemovedSlot{ID: ref.ID, Time: now, Why: "rotated"})
		if s := byID[ref.ID]; s != nil && !kept[ref.ID] {
			res.Removed = append(res.Removed, s)
		}
	}
	nk := epochKeys(epoch, master, content)
	if err := r.writeKeyring(ctx, next, nk); err != nil {
		return nil, err
	}
	r.setKeyring(next, master)
	r.noteHighWater(func(h *highWater) { h.Keyring = max(h.Keyring, next.Version) })
	if err := r.rewriteConfig(ctx); err != nil {
		return res, fmt.Errorf("rotated to key epoch %d, but the config was not rewritten (run key rotate again to finish): %w", epoch, err)
	}
	for _, ref := range cur.Slots {
		if err := r.store.Delete(ctx, "keys/"+ref.ID); err != nil {
			return res, fmt.Errorf("rotated to key epoch %d, but removing the old key slot %.8s failed (it opens nothing; check lists it): %w", epoch, ref.ID, err)
		}
	}
	return res, nil
}

// rewriteConfig stores the config with its MAC under the current epoch.
func (r *Repository) rewriteConfig(ctx context.Context) error {
	cfg := *r.cfg
	cfg.MAC = cfg.mac(r.keys)
	if cfg.MAC == r.cfg.MAC {
		return nil
	}
	if err := r.putConfig(ctx, &cfg); err != nil {
		return err
	}
	r.cfg = &cfg
	return nil
}

func clone32(k keys.Key) []byte { return append([]byte(nil), k[:]...) }
