package escrow

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

var cheapKDF = threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// testRepoID is the repository the fixtures' slots belong to.
const testRepoID = "0123456789abcdef0123456789abcdef"

// memRecords is one user's record at one realm, in memory, encoded as a
// store keeps it.
type memRecords struct {
	mu   sync.Mutex
	data []byte
}

func (m *memRecords) Update(_ context.Context, fn func(*threshold.RealmRecord) (*threshold.RealmRecord, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur *threshold.RealmRecord
	if m.data != nil {
		var err error
		if cur, err = threshold.UnmarshalRealmRecord(m.data); err != nil {
			return err
		}
	}
	next, err := fn(cur)
	if err != nil || next == nil {
		return err
	}
	m.data, err = next.MarshalBinary()
	return err
}

// realm is a real threshold.RealmServer with its records in memory,
// reached as a Vault whose key is publicKey; every request passes through
// the messages' encodings, and the requests it receives are counted.
type realm struct {
	srv       *threshold.RealmServer
	st        *memRecords
	publicKey []byte
	recover3  atomic.Int32
	// seen, if set, is called with every request the realm receives.
	seen func(any)
}

func (r *realm) Info(context.Context) (*api.RealmInfo, error) {
	id := r.srv.ID()
	return &api.RealmInfo{RealmID: fmt.Sprintf("%x", id[:]), PublicKey: r.publicKey, Fingerprint: api.Fingerprint(r.publicKey), MaxGuesses: 10}, nil
}

func (r *realm) see(req any) {
	if _, ok := req.(*threshold.Recover3Request); ok {
		r.recover3.Add(1)
	}
	if r.seen != nil {
		r.seen(req)
	}
}

func (r *realm) Register1(ctx context.Context, q *threshold.Register1Request) (*threshold.Register1Response, error) {
	r.see(q)
	return r.srv.Register1(ctx, r.st, q)
}
func (r *realm) Register2(ctx context.Context, q *threshold.Register2Request) (*threshold.Register2Response, error) {
	r.see(q)
	return r.srv.Register2(ctx, r.st, q)
}
func (r *realm) Recover1(ctx context.Context, q *threshold.Recover1Request) (*threshold.Recover1Response, error) {
	r.see(q)
	return r.srv.Recover1(ctx, r.st, q)
}
func (r *realm) Recover2(ctx context.Context, q *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	r.see(q)
	return r.srv.Recover2(ctx, r.st, q)
}
func (r *realm) Recover3(ctx context.Context, q *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	r.see(q)
	return r.srv.Recover3(ctx, r.st, q)
}
func (r *realm) Delete(ctx context.Context, q *threshold.DeleteRequest) (*threshold.DeleteResponse, error) {
	r.see(q)
	return r.srv.Delete(ctx, r.st, q)
}

// relay stands in a realm's place with a key of its own, forwarding every
// request to the real realm (as a relay that ends the channel at its own
// key and opens another to the vault would), and counts what it forwards.
type relay struct {
	*realm
	key      []byte
	recover3 atomic.Int32
}

func (r *relay) Info(ctx context.Context) (*api.RealmInfo, error) {
	in, err := r.realm.Info(ctx)
	if err != nil {
		return nil, err
	}
	in.PublicKey, in.Fingerprint = r.key, api.Fingerprint(r.key)
	return in, nil
}

func (r *relay) Recover3(ctx context.Context, q *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	r.recover3.Add(1)
	return r.realm.Recover3(ctx, q)
}

// fixture is three realms, a 2-of-3 realm set registered at them under
// "pw", and the repository's vault slot recording it.
type fixture struct {
	realms []*realm
	set    *RealmSet
	slot   *keys.Slot
	master keys.Key
	secret keys.Key
}

func randomKey(t *testing.T) (k keys.Key) {
	t.Helper()
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{master: randomKey(t), secret: randomKey(t)}
	f.set = &RealmSet{Name: "default", Threshold: 2, KDF: cheapKDF, UserInfo: api.CredentialID(testRepoID, "default"), Form: threshold.Form2}
	var vaults []Vault
	for i := range 3 {
		var id threshold.RealmID
		copy(id[:], fmt.Sprintf("test-realm-%d....", i+1))
		srv, err := threshold.NewRealmServer(id, 10)
		if err != nil {
			t.Fatal(err)
		}
		k := randomKey(t)
		r := &realm{srv: srv, st: &memRecords{}, publicKey: k[:]}
		f.realms = append(f.realms, r)
		vaults = append(vaults, r)
		in, _ := r.Info(context.Background())
		f.set.Realms = append(f.set.Realms, Realm{URL: fmt.Sprintf("https://vault%d.example", i+1), Fingerprint: in.Fingerprint, ID: id})
	}
	tg := &Target{Set: f.set, URLs: f.set.URLs(), Vaults: vaults}
	tg.Reach(context.Background())
	c, err := tg.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(context.Background(), keys.NormalizePassword([]byte("pw")), f.secret[:], 10); err != nil {
		t.Fatal(err)
	}
	if f.slot, err = keys.NewVaultSlot(f.master, f.secret, "test", f.set.Extra()); err != nil {
		t.Fatal(err)
	}
	return f
}

// target reads the slot as a client would (ParseRealmSet) and reaches its
// vaults through vaults (nil: the real realms).
func (f *fixture) target(t *testing.T, slot *keys.Slot, vaults []Vault) *Target {
	t.Helper()
	set, err := ParseRealmSet(slot)
	if err != nil {
		t.Fatal(err)
	}
	if vaults == nil {
		for _, r := range f.realms {
			vaults = append(vaults, r)
		}
	}
	tg := &Target{Slot: slot, Set: set, URLs: set.URLs(), Vaults: vaults}
	_, errs := tg.Reach(context.Background())
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return tg
}

func (f *fixture) recover3s() int {
	n := 0
	for _, r := range f.realms {
		n += int(r.recover3.Load())
	}
	return n
}

func TestRecoverHonest(t *testing.T) {
	f := newFixture(t)
	tg := f.target(t, f.slot, nil)
	rec, err := tg.Recover(context.Background(), []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Key != f.secret || rec.Form != threshold.Form2 {
		t.Fatalf("recovered %x form %d", rec.Key, rec.Form)
	}
	if m, err := f.slot.Unwrap(rec.Key[:]); err != nil || m != f.master {
		t.Fatal("the recovered key does not open the slot")
	}
}

// TestRecoverThroughRelays is finding 1 of issue 23 at the package level:
// the slot's vault entries are rewritten to relays (their own keys, the
// same realm ids) that forward to the real vaults. The right password's
// recovery fails with a SlotChangedError naming the relayed vaults, and no
// recover3 reaches a relay or a vault.
func TestRecoverThroughRelays(t *testing.T) {
	for _, relayed := range [][]int{{2}, {1, 3}, {1, 2, 3}} {
		t.Run(fmt.Sprint(relayed), func(t *testing.T) {
			f := newFixture(t)
			extra := maps.Clone(f.slot.Extra)
			var vaults []Vault
			var relays []*relay
			for i, r := range f.realms {
				if !slices.Contains(relayed, i+1) {
					vaults = append(vaults, r)
					continue
				}
				k := randomKey(t)
				rl := &relay{realm: r, key: k[:]}
				relays = append(relays, rl)
				vaults = append(vaults, rl)
				extra[RealmKey(i+1, "url")] = fmt.Sprintf("https://relay%d.attacker.example", i+1)
				extra[RealmKey(i+1, "fingerprint")] = api.Fingerprint(k[:])
			}
			slot := *f.slot
			slot.Extra = extra
			tg := f.target(t, &slot, vaults)
			_, err := tg.Recover(context.Background(), []byte("pw"))
			var sc *SlotChangedError
			if !errors.As(err, &sc) || !errors.Is(err, ErrSlotChanged) {
				t.Fatalf("recover = %v, want a SlotChangedError", err)
			}
			if !slices.Equal(sc.Vaults, relayed) || sc.All != (len(relayed) == 3) {
				t.Fatalf("changed vaults %v (all %v), want %v", sc.Vaults, sc.All, relayed)
			}
			msg := err.Error()
			if !strings.Contains(msg, "vault slot "+f.slot.ID[:8]+" was changed") || strings.Contains(msg, "\n") {
				t.Fatalf("message %q", msg)
			}
			if len(relayed) < 3 && !strings.Contains(msg, fmt.Sprintf("vault %d's key (https://relay%d.attacker.example) is", relayed[0], relayed[0])) && !strings.Contains(msg, fmt.Sprintf("vault %d's key (https://relay%d.attacker.example) and", relayed[0], relayed[0])) {
				t.Fatalf("message does not name the relayed vault: %q", msg)
			}
			for _, rl := range relays {
				if n := rl.recover3.Load(); n != 0 {
					t.Fatalf("a relay forwarded %d recover3", n)
				}
			}
			if n := f.recover3s(); n != 0 {
				t.Fatalf("%d recover3 reached the vaults", n)
			}
			// The slot as written still recovers.
			tg = f.target(t, f.slot, nil)
			if rec, err := tg.Recover(context.Background(), []byte("pw")); err != nil || rec.Key != f.secret {
				t.Fatalf("the original slot: %v", err)
			}
		})
	}
}

// TestRecoverUntrustedSlot: a slot whose extra fields were changed in a
// way the realms' binding does not cover (an address) recovers the secret
// from the real vaults, but is not trusted: the secret does not open it
// with those fields.
func TestRecoverUntrustedSlot(t *testing.T) {
	f := newFixture(t)
	slot := *f.slot
	slot.Extra = maps.Clone(f.slot.Extra)
	slot.Extra[RealmKey(1, "url")] = "https://moved.example"
	tg := f.target(t, &slot, nil)
	_, err := tg.Recover(context.Background(), []byte("pw"))
	var ue *UntrustedSlotError
	if !errors.As(err, &ue) || !errors.Is(err, ErrSlotChanged) {
		t.Fatalf("recover = %v, want an UntrustedSlotError", err)
	}
}
