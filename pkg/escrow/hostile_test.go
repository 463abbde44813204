package escrow

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// The hostile-store suite for threshold vault slots (issue 23, section 4).
// Every field of a threshold slot's extra data is read before the slot can
// be authenticated. For each field, each mutation a writer of the
// repository can make — change it, take it from another slot (another
// user's escrow at the same vaults), replay it from an older slot of the
// same user, truncate it, delete it, point a vault entry at a relay — the
// recovery with the right password is run through transports that check
// pins and realm ids as vaultclient does, and its outcome is asserted:
//
//   - refused before anything is sent (a malformed slot): no request at all
//     reached a realm or a relay;
//   - refused after recover2 (the realm set does not verify, or the changed
//     parameters make the password look wrong): no recover3 was sent to
//     anyone, and the realms counted exactly the user's one guess;
//   - recovered (or recovered and then found not to open this slot): every
//     unlock tag went to the realm it is for through its own key, and the
//     counters are back at 0.
//
// In no case does a relay read a recover3, does a realm count more than
// the user's one guess, or is anything lost: the slot as written recovers
// afterwards.

// pinned is a vault reached as vaultclient.Realm reaches it: its info must
// show the pinned fingerprint and the slot's realm id, else it is asked
// nothing; every request it forwards is counted.
type pinned struct {
	Vault
	fingerprint string
	id          threshold.RealmID
	requests    *atomic.Int32
}

func (p *pinned) Info(ctx context.Context) (*api.RealmInfo, error) {
	in, err := p.Vault.Info(ctx)
	if err != nil {
		return nil, err
	}
	if in.Fingerprint != p.fingerprint {
		return nil, fmt.Errorf("presents public key fingerprint %s but the slot pins %s", in.Fingerprint, p.fingerprint)
	}
	if in.RealmID != fmt.Sprintf("%x", p.id[:]) {
		return nil, fmt.Errorf("has realm id %s, not %x", in.RealmID, p.id[:])
	}
	return in, nil
}

func (p *pinned) Recover1(ctx context.Context, q *threshold.Recover1Request) (*threshold.Recover1Response, error) {
	p.requests.Add(1)
	return p.Vault.Recover1(ctx, q)
}
func (p *pinned) Recover2(ctx context.Context, q *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	p.requests.Add(1)
	return p.Vault.Recover2(ctx, q)
}
func (p *pinned) Recover3(ctx context.Context, q *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	p.requests.Add(1)
	return p.Vault.Recover3(ctx, q)
}

// world is the vaults as an attacker sees them: three real realms with two
// users registered (the victim, whose slots are mutated, and another user
// of the same vaults), and a relay in front of each realm with its own key.
type world struct {
	victim, other *fixture
	older         *keys.Slot // the victim's slot for its previous registration
	relays        []*relay
	requests      atomic.Int32 // every request that reached any realm or relay
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{victim: newFixture(t)}
	// The other user: another repository's escrow at the same vaults, with
	// its own records there.
	o := &fixture{master: randomKey(t), secret: randomKey(t)}
	o.set = &RealmSet{Name: "default", Threshold: 2, KDF: cheapKDF, UserInfo: api.CredentialID("another repository", "default"), Form: threshold.Form2}
	o.set.Realms = slices.Clone(w.victim.set.Realms)
	var vaults []Vault
	for _, r := range w.victim.realms {
		v := &realm{srv: r.srv, st: &memRecords{}, publicKey: r.publicKey}
		o.realms = append(o.realms, v)
		vaults = append(vaults, v)
	}
	tg := &Target{Set: o.set, URLs: o.set.URLs(), Vaults: vaults}
	tg.Reach(context.Background())
	c, err := tg.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(context.Background(), []byte("their password"), o.secret[:], 10); err != nil {
		t.Fatal(err)
	}
	w.other = o
	// An older slot of the victim: an escrow made before the current one
	// (its secret since replaced at the vaults by a re-escrow).
	oldSecret := randomKey(t)
	if w.older, err = keys.NewVaultSlot(w.victim.master, oldSecret, "older", w.victim.set.Extra()); err != nil {
		t.Fatal(err)
	}
	for _, r := range w.victim.realms {
		k := randomKey(t)
		w.relays = append(w.relays, &relay{realm: r, key: k[:]})
	}
	return w
}

// vaults reaches the vaults set names, as a client holding set would: by
// fingerprint, a real realm or a relay in front of one; an unknown
// fingerprint is a vault that presents another key (every Info fails).
func (w *world) vaults(set *RealmSet) []Vault {
	realms := w.victim.realms
	if string(set.UserInfo) == string(w.other.set.UserInfo) {
		realms = w.other.realms
	}
	var out []Vault
	for _, e := range set.Realms {
		var v Vault = unreachable{}
		for i, r := range realms {
			in, _ := r.Info(context.Background())
			switch e.Fingerprint {
			case in.Fingerprint:
				v = r
			case api.Fingerprint(w.relays[i].key):
				v = w.relays[i]
			}
		}
		out = append(out, &pinned{Vault: v, fingerprint: e.Fingerprint, id: e.ID, requests: &w.requests})
	}
	return out
}

type unreachable struct{ absent }

func (unreachable) Info(context.Context) (*api.RealmInfo, error) {
	return &api.RealmInfo{Fingerprint: "someone else's key"}, nil
}

func (w *world) relayRecover3s() int {
	n := 0
	for _, r := range w.relays {
		n += int(r.recover3.Load())
	}
	return n
}

// attempted is the guesses counted at every realm, for both users.
func (w *world) attempted(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, r := range slices.Concat(w.victim.realms, w.other.realms) {
		rec, err := threshold.UnmarshalRealmRecord(r.st.data)
		if err != nil {
			t.Fatal(err)
		}
		if rec.State() != threshold.StateRegistered {
			t.Fatalf("a record in state %v", rec.State())
		}
		out = append(out, rec.AllowedGuesses()-rec.GuessesLeft())
	}
	return out
}

type mutation struct {
	name  string
	apply func(w *world, extra map[string]string, field string)
}

func (w *world) mutations() []mutation {
	other := w.other.set.Extra()
	return []mutation{
		{"deleted", func(_ *world, ex map[string]string, f string) { delete(ex, f) }},
		{"truncated", func(_ *world, ex map[string]string, f string) { ex[f] = ex[f][:len(ex[f])/2] }},
		{"changed", func(_ *world, ex map[string]string, f string) { ex[f] = changed(f, ex[f]) }},
		{"from another user's slot", func(_ *world, ex map[string]string, f string) {
			if v, ok := other[f]; ok {
				ex[f] = v
			}
		}},
		{"swapped with another vault's entry", func(_ *world, ex map[string]string, f string) {
			var i int
			var what string
			if _, err := fmt.Sscanf(f, "vault_realm_%d_%s", &i, &what); err != nil {
				return
			}
			j := i%3 + 1
			ex[f], ex[RealmKey(j, what)] = ex[RealmKey(j, what)], ex[f]
		}},
		{"pointed at a relay", func(w *world, ex map[string]string, f string) {
			var i int
			var what string
			if _, err := fmt.Sscanf(f, "vault_realm_%d_%s", &i, &what); err != nil {
				return
			}
			ex[RealmKey(i, "url")] = fmt.Sprintf("https://relay%d.attacker.example", i)
			ex[RealmKey(i, "fingerprint")] = api.Fingerprint(w.relays[i-1].key)
		}},
	}
}

// changed is another well-formed value for field f.
func changed(f, v string) string {
	switch {
	case f == ExtraThreshold:
		return "3"
	case f == ExtraRealms:
		return "2"
	case f == ExtraArgon2id:
		return "t=2,m=64,p=1"
	case f == ExtraUserInfo, f == ExtraName:
		return v + "x"
	case f == ExtraForm:
		return "1"
	case strings.HasSuffix(f, "_url"):
		return "https://elsewhere.example"
	case strings.HasSuffix(f, "_fingerprint"):
		return strings.Repeat("ab", 32)
	case strings.HasSuffix(f, "_id"):
		return strings.Repeat("5a", 16)
	}
	return v + "x"
}

func TestHostileThresholdSlot(t *testing.T) {
	w := newWorld(t)
	fields := slices.Sorted(maps.Keys(w.victim.slot.Extra))
	outcomes := map[string]int{}
	run := func(t *testing.T, slot *keys.Slot) string {
		t.Helper()
		before := w.requests.Load()
		relay3 := w.relayRecover3s()
		realm3 := w.victim.recover3s()
		set, perr := ParseRealmSet(slot)
		if perr == nil {
			perr = set.CheckCredential(slot.ID, testRepoID)
		}
		if perr != nil {
			var me *MalformedSlotError
			if !errors.As(perr, &me) || strings.Contains(perr.Error(), "\n") {
				t.Fatalf("parse: %v", perr)
			}
			if w.requests.Load() != before {
				t.Fatal("a request left before the slot was parsed")
			}
			return "malformed: refused before any request"
		}
		tg := &Target{Slot: slot, Set: set, URLs: set.URLs(), Vaults: w.vaults(set)}
		if _, errs := tg.Reach(context.Background()); len(slices.DeleteFunc(slices.Clone(errs), func(e error) bool { return e == nil })) > len(set.Realms)-set.Threshold {
			// Too few vaults pass their pin and realm-id checks: the CLI
			// stops here, before the password (vaultsError).
			if w.requests.Load() != before {
				t.Fatal("a request left although too few vaults passed their checks")
			}
			return "too few vaults pass their pins: refused before the password"
		}
		rec, err := tg.Recover(context.Background(), []byte("pw"))
		if n := w.relayRecover3s() - relay3; n != 0 {
			t.Fatalf("a relay read %d recover3", n)
		}
		att := w.attempted(t)
		var sc *SlotChangedError
		var ue *UntrustedSlotError
		var wp *threshold.WrongPasswordError
		var qe *threshold.QuorumError
		var outcome string
		switch {
		case err == nil:
			if rec.Key != w.victim.secret {
				t.Fatalf("recovered another key")
			}
			outcome = "recovered"
		case errors.As(err, &sc):
			outcome = "slot changed: refused after recover2, no tag sent"
		case errors.As(err, &ue):
			outcome = "recovered from the real vaults, slot not trusted"
		case errors.As(err, &wp):
			outcome = "the password looks wrong: refused after recover2, no tag sent"
		case errors.As(err, &qe):
			outcome = "too few vaults answer: refused"
		default:
			t.Fatalf("recover: %v", err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("a message of several lines: %q", err)
		}
		tagsSent := w.victim.recover3s() - realm3
		switch outcome {
		case "recovered", "recovered from the real vaults, slot not trusted":
			if tagsSent == 0 || slices.Max(att) != 0 {
				t.Fatalf("%s with %d recover3 and attempts %v", outcome, tagsSent, att)
			}
		default:
			if tagsSent != 0 {
				t.Fatalf("%s after %d recover3", outcome, tagsSent)
			}
			if slices.Max(att) > 1 {
				t.Fatalf("%s: attempts %v, more than the user's one guess", outcome, att)
			}
		}
		return outcome
	}
	for _, f := range fields {
		for _, m := range w.mutations() {
			t.Run(f+"/"+m.name, func(t *testing.T) {
				ex := maps.Clone(w.victim.slot.Extra)
				m.apply(w, ex, f)
				if maps.Equal(ex, w.victim.slot.Extra) {
					t.Skip("the mutation does not apply to this field")
				}
				slot := *w.victim.slot
				slot.Extra = ex
				got := run(t, &slot)
				outcomes[got]++
				// A relay in a vault's place is the attack of finding 1: it
				// must be caught by the realm set's check.
				if m.name == "pointed at a relay" && got != "slot changed: refused after recover2, no tag sent" {
					t.Fatalf("a relay in vault's place: %s", got)
				}
				if f == ExtraUserInfo && got != "malformed: refused before any request" {
					t.Fatalf("another credential: %s", got)
				}
				// Nothing is lost: the slot as written recovers, and
				// resets what the mutation's recovery counted.
				if got := run(t, w.victim.slot); got != "recovered" {
					t.Fatalf("the slot as written: %s", got)
				}
			})
		}
	}
	t.Run("whole slot replayed from an older escrow", func(t *testing.T) {
		outcomes[run(t, w.older)]++
		if got := run(t, w.victim.slot); got != "recovered" {
			t.Fatalf("the slot as written: %s", got)
		}
	})
	t.Run("whole slot of another user", func(t *testing.T) {
		s, err := keys.NewVaultSlot(w.other.master, w.other.secret, "other", w.other.set.Extra())
		if err != nil {
			t.Fatal(err)
		}
		outcomes[run(t, s)]++
	})
	var l []string
	for o, n := range outcomes {
		l = append(l, fmt.Sprintf("%4d  %s", n, o))
	}
	sort.Strings(l)
	t.Logf("outcomes:\n%s", strings.Join(l, "\n"))
}
