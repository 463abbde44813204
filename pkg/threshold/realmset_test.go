package threshold

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// countRecover3 makes every realm of e count the recover3 requests it
// receives.
func countRecover3(e *testEnv) *atomic.Int32 {
	var n atomic.Int32
	for _, r := range e.realms {
		r.onRequest = func(req any) {
			if _, ok := req.(*Recover3Request); ok {
				n.Add(1)
			}
		}
	}
	return &n
}

// clientFor is a client of e's realms (in the order of order, 1-based
// positions of e.realms) with cfg as its configuration.
func clientFor(tb testing.TB, e *testEnv, cfg Config, order []int) *Client {
	tb.Helper()
	var trs []Realm
	for _, i := range order {
		trs = append(trs, e.realms[i-1])
	}
	c, err := NewClient(cfg, trs)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func cloneConfig(c Config) Config {
	out := c
	out.UserInfo = slices.Clone(c.UserInfo)
	out.Realms = nil
	for _, r := range c.Realms {
		out.Realms = append(out.Realms, RealmConfig{ID: r.ID, PublicKey: slices.Clone(r.PublicKey)})
	}
	return out
}

// TestRealmSetAuthenticated changes the configuration a client recovers
// with, as a writer of the storage that keeps it would, and checks that a
// recovery with the right password never sends an unlock tag unless the
// configuration is the registered one: a changed realm key, threshold,
// order, id, user info or Argon2id profile fails after recover2 with a
// RealmSetError naming what it can (or, where the change alters the OPRF
// input or its interpolation, as a wrong password), and no realm receives
// a recover3. The registered configuration then still recovers.
func TestRealmSetAuthenticated(t *testing.T) {
	const pw = "correct horse battery staple"
	tests := []struct {
		name    string
		change  func(*Config) []int // returns the transport order
		changed []int               // RealmSetError.Changed; nil: a wrong password
	}{
		{"realm 2's key replaced (a relay)", func(c *Config) []int {
			c.Realms[1].PublicKey = []byte("the relay's key")
			return []int{1, 2, 3}
		}, []int{2}},
		{"realms 1 and 3's keys replaced", func(c *Config) []int {
			c.Realms[0].PublicKey = []byte("relay A")
			c.Realms[2].PublicKey = []byte("relay C")
			return []int{1, 2, 3}
		}, []int{1, 3}},
		{"every realm's key removed", func(c *Config) []int {
			for i := range c.Realms {
				c.Realms[i].PublicKey = nil
			}
			return []int{1, 2, 3}
		}, []int{1, 2, 3}},
		{"threshold raised to 3", func(c *Config) []int {
			c.Threshold = 3
			return []int{1, 2, 3}
		}, []int{1, 2, 3}},
		{"a fourth realm listed, 3 of 4", func(c *Config) []int {
			c.Realms = append(c.Realms, RealmConfig{ID: testRealmID(9), PublicKey: []byte("x")})
			c.Threshold = 3
			return []int{1, 2, 3, 1}
		}, []int{1, 2, 3}},
		{"realm 3's id replaced", func(c *Config) []int {
			c.Realms[2].ID = testRealmID(7)
			return []int{1, 2, 3}
		}, []int{1, 2}},
		{"realms 1 and 2 swapped, keys and all", func(c *Config) []int {
			c.Realms[0], c.Realms[1] = c.Realms[1], c.Realms[0]
			return []int{2, 1, 3}
		}, nil},
		{"user info changed", func(c *Config) []int {
			c.UserInfo = []byte("someone else")
			return []int{1, 2, 3}
		}, nil},
		{"argon2id profile changed", func(c *Config) []int {
			c.KDF.Time++
			return []int{1, 2, 3}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 3, 2)
			secret := e.register(t, pw)
			recover3 := countRecover3(e)
			cfg := cloneConfig(e.cfg)
			order := tt.change(&cfg)
			_, err := clientFor(t, e, cfg, order).Recover(context.Background(), []byte(pw))
			var se *RealmSetError
			switch {
			case tt.changed != nil && !errors.As(err, &se):
				t.Fatalf("recover = %v, want a RealmSetError", err)
			case tt.changed != nil && !slices.Equal(se.Changed, tt.changed):
				t.Fatalf("changed realms %v, want %v (%v)", se.Changed, tt.changed, err)
			case tt.changed != nil && !errors.Is(err, ErrRealmSetChanged):
				t.Fatalf("%v does not wrap ErrRealmSetChanged", err)
			case tt.changed == nil && !errors.Is(err, ErrWrongPassword):
				t.Fatalf("recover = %v, want a wrong password", err)
			}
			if n := recover3.Load(); n != 0 {
				t.Fatalf("%d recover3 requests reached the realms", n)
			}
			// The registered configuration recovers (and resets the
			// counters the failed recovery left).
			if rec := e.mustRecover(t, pw, secret); rec.Form != Form2 {
				t.Fatalf("form %d, want 2", rec.Form)
			}
			for i, r := range e.realms {
				if a := r.st.record(t).reg.attemptedGuesses; a != 0 {
					t.Errorf("realm %d: %d guesses attempted after the right recovery", i+1, a)
				}
			}
		})
	}
}

// unlockKeyOf computes the unlock key of e's registration for password as
// whoever holds every realm's record could: the test's way to the tags a
// client would compute.
func unlockKeyOf(tb testing.TB, e *testEnv, password string) []byte {
	tb.Helper()
	shares := map[int]group.Scalar{}
	var v Version
	for i, r := range e.realms {
		rec := r.st.record(tb)
		shares[i+1] = mustScalar(tb, rec.reg.oprfKeyShare[:])
		v = rec.reg.version
	}
	key, err := oprfKey(interpolate(tb, shares))
	if err != nil {
		tb.Fatal(err)
	}
	stretched := e.cfg.KDF.stretch([]byte(password), v, e.cfg.UserInfo)
	out, err := oprf.NewServer(oprfSuite, key).FullEvaluate(stretched[:32])
	if err != nil {
		tb.Fatal(err)
	}
	return out[commitmentSize:]
}

// TestUnlockTagBoundToRealm: an unlock tag is good at one realm, reached
// through its own key, only. A tag captured from an honest recovery is
// refused by every other realm, and the tag a client would make for a
// realm whose key is a relay's is refused by the real realm; neither
// resets the guess counter.
func TestUnlockTagBoundToRealm(t *testing.T) {
	const pw = "correct horse battery staple"
	ctx := context.Background()
	e := newEnv(t, 3, 2)
	e.register(t, pw)
	captured := map[int]*Recover3Request{}
	for i, r := range e.realms {
		r.onRequest = func(req any) {
			if r3, ok := req.(*Recover3Request); ok {
				captured[i+1] = r3
			}
		}
	}
	if _, err := e.recover(pw); err != nil {
		t.Fatal(err)
	}
	for _, r := range e.realms {
		r.onRequest = nil
	}
	if len(captured) != 3 {
		t.Fatalf("captured %d tags", len(captured))
	}
	// Two wrong guesses, so that a reset would show.
	for range 2 {
		if _, err := e.recover("wrong"); !errors.Is(err, ErrWrongPassword) {
			t.Fatal(err)
		}
	}
	unlockKey := unlockKeyOf(t, e, pw)
	relayed := e.cfg.Realms[0]
	relayed.PublicKey = []byte("the relay's key")
	relayTag := unlockKeyTag(Form2, unlockKey, relayed)
	if relayTag == captured[1].UnlockKeyTag {
		t.Fatal("the tag does not depend on the realm's key")
	}
	tries := []struct {
		name  string
		realm int
		tag   [tagSize]byte
	}{
		{"realm 1's tag at realm 2", 2, captured[1].UnlockKeyTag},
		{"realm 2's tag at realm 3", 3, captured[2].UnlockKeyTag},
		{"realm 3's tag at realm 1", 1, captured[3].UnlockKeyTag},
		{"realm 1's tag made for a relay's key, at realm 1", 1, relayTag},
	}
	for _, tr := range tries {
		r := e.realms[tr.realm-1]
		resp, err := r.Recover3(ctx, &Recover3Request{Version: captured[1].Version, UnlockKeyTag: tr.tag})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != StatusBadUnlockKeyTag {
			t.Errorf("%s: status %v, want BadUnlockKeyTag", tr.name, resp.Status)
		}
		if a := r.st.record(t).reg.attemptedGuesses; a != 2 {
			t.Errorf("%s: %d guesses attempted, want the 2 made", tr.name, a)
		}
	}
	// Control: the realm's own tag resets it.
	resp, err := e.realms[0].Recover3(ctx, &Recover3Request{Version: captured[1].Version, UnlockKeyTag: captured[1].UnlockKeyTag})
	if err != nil || resp.Status != StatusOK || e.realms[0].st.record(t).reg.attemptedGuesses != 0 {
		t.Fatalf("the realm's own tag: %v %v", resp, err)
	}
}

// form1Fixture is a registration made by the code of issue 14 (commit
// 44b9222, form 1): each realm's stored record, the password and the
// secret (testdata/form1-records.json).
type form1Fixture struct {
	Password string   `json:"password"`
	Secret   string   `json:"secret"`
	Records  []string `json:"records"`
}

// TestForm1RegistrationRecovers recovers registrations of the earlier form:
// the stored records of one made by the earlier code, and one this client
// makes in that form. Recovery reports Form1 (so the caller can ask for a
// new registration); registering again makes Form2.
func TestForm1RegistrationRecovers(t *testing.T) {
	const pw = "correct horse battery staple"
	t.Run("stored records of the earlier code", func(t *testing.T) {
		data, err := os.ReadFile("testdata/form1-records.json")
		if err != nil {
			t.Fatal(err)
		}
		var fx form1Fixture
		if err := json.Unmarshal(data, &fx); err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, 3, 2)
		for i, r := range e.realms {
			if r.st.data, err = hex.DecodeString(fx.Records[i]); err != nil {
				t.Fatal(err)
			}
		}
		recover3 := countRecover3(e)
		secret, _ := hex.DecodeString(fx.Secret)
		if rec := e.mustRecover(t, fx.Password, secret); rec.Form != Form1 {
			t.Fatalf("form %d, want 1", rec.Form)
		}
		if recover3.Load() != 3 {
			t.Fatalf("%d recover3", recover3.Load())
		}
		if err := e.client.Register(context.Background(), []byte(fx.Password), secret, testGuesses); err != nil {
			t.Fatal(err)
		}
		if rec := e.mustRecover(t, fx.Password, secret); rec.Form != Form2 {
			t.Fatalf("after registering again: form %d, want 2", rec.Form)
		}
	})
	t.Run("made in form 1 by this client", func(t *testing.T) {
		e := newEnv(t, 3, 2)
		e.client.form = Form1
		secret := e.register(t, pw)
		e.client.form = Form2
		if rec := e.mustRecover(t, pw, secret); rec.Form != Form1 {
			t.Fatalf("form %d, want 1", rec.Form)
		}
		if _, err := e.recover("wrong"); !errors.Is(err, ErrWrongPassword) {
			t.Fatalf("wrong password on form 1: %v", err)
		}
	})
}
