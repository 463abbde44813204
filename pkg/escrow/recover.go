package escrow

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Vault is one vault of a threshold slot as recovery reaches it: the
// protocol's requests, and its info, which the transport fetches after
// checking the vault's key against the pin (vaultclient.Realm does both,
// and carries every request in a channel that ends at the pinned key).
type Vault interface {
	threshold.Realm
	Info(context.Context) (*api.RealmInfo, error)
}

// Target is a threshold slot's vaults, ready to be asked.
type Target struct {
	Slot   *keys.Slot
	Set    *RealmSet
	URLs   []string // the address used for each vault, in the set's order
	Vaults []Vault  // one per vault of the set, pinned to its fingerprint

	// From the last Reach.
	infos []*api.RealmInfo
	errs  []error
}

// Reach asks every vault for its info in parallel; a vault whose key is not
// its pin, or whose realm id is not the set's, fails here and is asked
// nothing else by Client's protocol client. The keys the infos show are the
// ones recovery and registration bind.
func (t *Target) Reach(ctx context.Context) ([]*api.RealmInfo, []error) {
	t.infos = make([]*api.RealmInfo, len(t.Vaults))
	t.errs = make([]error, len(t.Vaults))
	var wg sync.WaitGroup
	for i, v := range t.Vaults {
		wg.Go(func() {
			t.infos[i], t.errs[i] = v.Info(ctx)
			if t.errs[i] == nil && t.infos[i] == nil {
				t.errs[i] = errors.New("answered no info")
			}
		})
	}
	wg.Wait()
	return t.infos, t.errs
}

// absent stands for a vault that did not answer Reach: every request fails
// with what Reach got.
type absent struct{ err error }

func (a absent) Register1(context.Context, *threshold.Register1Request) (*threshold.Register1Response, error) {
	return nil, a.err
}
func (a absent) Register2(context.Context, *threshold.Register2Request) (*threshold.Register2Response, error) {
	return nil, a.err
}
func (a absent) Recover1(context.Context, *threshold.Recover1Request) (*threshold.Recover1Response, error) {
	return nil, a.err
}
func (a absent) Recover2(context.Context, *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	return nil, a.err
}
func (a absent) Recover3(context.Context, *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	return nil, a.err
}
func (a absent) Delete(context.Context, *threshold.DeleteRequest) (*threshold.DeleteResponse, error) {
	return nil, a.err
}

// Client is the protocol client for t's vaults after Reach: each vault's
// public key is the one its info (checked against the pin) shows, which is
// the key its channel ends at; a vault Reach did not get an info from is
// left out (every request to it fails with Reach's error).
func (t *Target) Client() (*threshold.Client, error) {
	if t.infos == nil {
		return nil, errors.New("escrow: internal error: Client before Reach")
	}
	pks := make([][]byte, len(t.Vaults))
	trs := make([]threshold.Realm, len(t.Vaults))
	for i, v := range t.Vaults {
		if t.infos[i] != nil {
			pks[i], trs[i] = t.infos[i].PublicKey, v
		} else {
			trs[i] = absent{t.errs[i]}
		}
	}
	c, err := threshold.NewClient(t.Set.Config(pks), trs)
	if err != nil {
		return nil, &MalformedSlotError{t.Slot.ID, err.Error()}
	}
	return c, nil
}

// Recovered is the result of a successful recovery.
type Recovered struct {
	Key keys.Key
	// Form is the registration's form: Form1 was registered by an earlier
	// version, whose realm set was not authenticated before the unlock tags
	// went out; re-register (key rotate, key vault-passwd).
	Form     threshold.Form
	Problems []*threshold.RealmError
}

// Recover asks the secret back from a threshold of t's vaults with
// password (prepared here as for every wabackup password), after Reach. Nothing the slot says is trusted on its own:
// the protocol client binds each vault's reached key, and for a form-2
// registration checks after recover2, before any unlock tag is sent, that
// the realm set is the one the password was registered with (else a
// *SlotChangedError, and no vault was sent anything more); then the
// secret must open t.Slot with its extra fields bound (else an
// *UntrustedSlotError).
//
// Other errors are pkg/threshold's: *threshold.WrongPasswordError,
// threshold.ErrNoGuesses, threshold.ErrNotRegistered,
// *threshold.QuorumError.
func (t *Target) Recover(ctx context.Context, password []byte) (*Recovered, error) {
	c, err := t.Client()
	if err != nil {
		return nil, err
	}
	rec, err := c.Recover(ctx, keys.NormalizePassword(password))
	var se *threshold.RealmSetError
	if errors.As(err, &se) {
		return nil, t.changed(se)
	}
	if err != nil {
		return nil, err
	}
	defer clear(rec.Secret)
	out := &Recovered{Form: rec.Form, Problems: rec.Problems}
	if len(rec.Secret) != keys.KeySize {
		return nil, fmt.Errorf("the vaults returned a %d-byte secret, want %d", len(rec.Secret), keys.KeySize)
	}
	copy(out.Key[:], rec.Secret)
	if _, err := t.Slot.Unwrap(out.Key[:]); err != nil || !t.Slot.ExtraAuthentic() {
		return nil, &UntrustedSlotError{t.Slot.ID, t.Set.Describe()}
	}
	return out, nil
}

func (t *Target) changed(se *threshold.RealmSetError) *SlotChangedError {
	e := &SlotChangedError{SlotID: t.Slot.ID, All: len(se.Changed) == se.Checked}
	for _, i := range se.Changed {
		e.Vaults = append(e.Vaults, i)
		e.URLs = append(e.URLs, t.URLs[i-1])
	}
	return e
}

// ErrSlotChanged is wrapped by *SlotChangedError.
var ErrSlotChanged = errors.New("the vault slot was changed")

// SlotChangedError: with the right password, the vaults' answers show that
// the slot's realm set is not the one the password was registered with (a
// vault's key replaced — a relay in its place — or the threshold, the
// order or the parameters changed). No unlock tag was sent to any vault.
type SlotChangedError struct {
	SlotID string
	Vaults []int    // 1-based positions whose binding failed
	URLs   []string // their addresses
	All    bool     // every vault checked failed: the change may be in what they share
}

func (e *SlotChangedError) Error() string {
	const tail = "; no unlock tag was sent to any vault (check the vaults' fingerprints with their operators, give them with --vault-fingerprint, or open the repository with the 64-digit key and escrow again)"
	if e.All {
		return fmt.Sprintf("vault slot %.8s was changed: its vaults' keys, threshold or parameters are not the ones the password was registered with%s", e.SlotID, tail)
	}
	var l []string
	for j, i := range e.Vaults {
		l = append(l, fmt.Sprintf("vault %d's key (%s)", i, e.URLs[j]))
	}
	verb := "is"
	if len(l) > 1 {
		verb = "are"
	}
	return fmt.Sprintf("vault slot %.8s was changed: %s %s not the one the password was registered with%s", e.SlotID, strings.Join(l, " and "), verb, tail)
}

func (e *SlotChangedError) Unwrap() error { return ErrSlotChanged }

// UntrustedSlotError: the secret the vaults gave back does not open the
// slot that named them.
type UntrustedSlotError struct{ SlotID, Vaults string }

func (e *UntrustedSlotError) Error() string {
	return fmt.Sprintf("the repository's vault slot %.8s does not open with the key %s gave back: what it records about its vaults (addresses, fingerprints, realm ids, threshold) was altered, so it is not trusted (or those vaults hold a newer escrow under the same name)", e.SlotID, e.Vaults)
}

func (e *UntrustedSlotError) Unwrap() error { return ErrSlotChanged }
