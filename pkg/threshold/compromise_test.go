package threshold

import (
	"crypto/subtle"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/secretsharing"
)

// stolen is everything an attacker holds after compromising some realms
// entirely: their records (with their OPRF key shares and encryption-key
// shares), their servers (which hold nothing else secret: an id and a guess
// limit; the registration's signing key was discarded by the client), what
// they saw of the user's recoveries (every request), and everything the
// client stores publicly (the configuration: realm ids and keys, threshold,
// Argon2id parameters, user info).
type stolen struct {
	cfg      Config
	records  map[int]*RealmRecord // by share number
	requests map[int][]any
}

// checks are the tests the attacker can run on a password candidate
// offline with what it holds. Each compares something it can compute from
// the candidate with something it holds.
var checks = []string{
	"unlock-key commitment",
	"unlock-key tag (stored and observed in recover3)",
	"encrypted-secret commitment",
	"secret decrypts",
	"realm binding (the commitment's second half)",
}

// interpolate is the attacker's best reconstruction of a shared scalar
// from the shares it holds: Lagrange interpolation at 0. With a threshold of
// shares it is the shared scalar; with fewer, the shares it has are
// uniformly random and independent of the scalar, and so is the result.
func interpolate(tb testing.TB, shares map[int]group.Scalar) group.Scalar {
	var ss []secretsharing.Share
	for i, v := range shares {
		ss = append(ss, secretsharing.Share{ID: shareID(i), Value: v})
	}
	s, err := secretsharing.Recover(uint(len(ss)-1), ss)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// test runs every check on candidate and returns which pass.
func (m *stolen) test(tb testing.TB, candidate string) []bool {
	var held *RealmRecord
	kShares, sShares := map[int]group.Scalar{}, map[int]group.Scalar{}
	for i, r := range m.records {
		held = r
		kShares[i] = mustScalar(tb, r.reg.oprfKeyShare[:])
		sShares[i] = mustScalar(tb, r.reg.encryptionKeyScalarShare[:])
	}
	v := held.reg.version
	stretched := m.cfg.KDF.stretch([]byte(candidate), v, m.cfg.UserInfo)
	accessKey, seed := stretched[:32], stretched[32:]
	key, err := oprfKey(interpolate(tb, kShares))
	if err != nil {
		tb.Fatal(err)
	}
	out, err := oprf.NewServer(oprfSuite, key).FullEvaluate(accessKey)
	if err != nil {
		tb.Fatal(err)
	}
	unlockKey := out[commitmentSize:]
	s := interpolate(tb, sShares)

	ok := make([]bool, len(checks))
	ok[0] = subtle.ConstantTimeCompare(passwordCommitment2(out), held.reg.unlockKeyCommitment[:commitmentSize/2]) == 1
	ok[1], ok[2], ok[4] = true, true, true
	set := realmSetEncoding(&m.cfg)
	for i, r := range m.records {
		rc := m.cfg.Realms[i-1]
		ok[4] = ok[4] && subtle.ConstantTimeCompare(realmBinding(unlockKey, set, i, rc), r.reg.unlockKeyCommitment[commitmentSize/2:]) == 1
		tag := unlockKeyTag(Form2, unlockKey, rc)
		ok[1] = ok[1] && tag == r.reg.unlockKeyTag
		for _, req := range m.requests[i] {
			if r3, isR3 := req.(*Recover3Request); isR3 {
				ok[1] = ok[1] && tag == r3.UnlockKeyTag
			}
		}
		ok[2] = ok[2] && secretCommitment(Form2, unlockKey, rc, &r.reg.encryptionKeyScalarShare, &r.reg.encryptedSecret) ==
			r.reg.encryptedSecretCommitment
	}
	_, err = openSecret(seed, s, v, &held.reg.encryptedSecret)
	ok[3] = err == nil
	return ok
}

// TestCompromisedRealm is the offline-dictionary test of a compromised
// realm. The user registers with a password from a dictionary of 64 and
// recovers twice (and once with a wrong password); then, for each realm in
// turn, an attacker holding that realm's entire state and everything the
// client stores publicly runs every check it can on every candidate. Every
// candidate gets the same result, the right one included: the material
// determines nothing about the password. As a control, the same attacker
// holding a threshold of realms (any two) singles out exactly the right
// password on every check, so the checks are the ones that matter.
func TestCompromisedRealm(t *testing.T) {
	e := newEnv(t, 3, 2)
	dictionary := make([]string, 64)
	for i := range dictionary {
		dictionary[i] = fmt.Sprintf("candidate-%02d", i)
	}
	password := dictionary[rand.IntN(len(dictionary))]
	secret := e.register(t, password)
	requests := map[int][]any{}
	var mu sync.Mutex // the realms are called concurrently
	for i, r := range e.realms {
		r.onRequest = func(req any) {
			mu.Lock()
			defer mu.Unlock()
			requests[i+1] = append(requests[i+1], req)
		}
	}
	e.mustRecover(t, password, secret)
	if _, err := e.recover("not in the dictionary"); err == nil {
		t.Fatal("a wrong password recovered")
	}
	e.mustRecover(t, password, secret)

	// A realm sees a fresh blinded input every time, even for the same
	// password: it cannot link recoveries.
	var blinded [][elementSize]byte
	for _, req := range requests[1] {
		if r2, ok := req.(*Recover2Request); ok {
			blinded = append(blinded, r2.BlindedAccessKey)
		}
	}
	if len(blinded) != 3 || blinded[0] == blinded[2] {
		t.Errorf("blinded inputs seen by realm 1: %x", blinded)
	}
	// Each is r·H(access key) for a fresh uniformly random r, so it is a
	// uniformly random element whatever the password: for every candidate
	// some r gives it. In particular it is not the hashed candidate itself.
	for _, c := range dictionary {
		stretched := e.cfg.KDF.stretch([]byte(c), e.realms[0].st.record(t).reg.version, e.cfg.UserInfo)
		_, req, err := oprf.NewClient(oprfSuite).DeterministicBlind([][]byte{stretched[:32]}, []oprf.Blind{g.NewScalar().SetUint64(1)})
		if err != nil {
			t.Fatal(err)
		}
		if h := elementBytes(req.Elements[0]); slices.Contains(blinded, h) {
			t.Errorf("realm 1 saw H(access key) of %q unblinded", c)
		}
	}

	steal := func(indices ...int) *stolen {
		m := &stolen{cfg: e.cfg, records: map[int]*RealmRecord{}, requests: map[int][]any{}}
		for _, i := range indices {
			m.records[i] = e.realms[i-1].st.record(t)
			m.requests[i] = requests[i]
		}
		return m
	}
	for i := 1; i <= 3; i++ {
		m := steal(i)
		first := m.test(t, dictionary[0])
		for _, c := range dictionary {
			got := m.test(t, c)
			if !slices.Equal(got, first) {
				t.Errorf("realm %d alone: candidate %q (right: %v) gives %v, candidate %q gives %v",
					i, c, c == password, got, dictionary[0], first)
			}
			for j, ok := range got {
				if ok {
					t.Errorf("realm %d alone: check %q passes for %q", i, checks[j], c)
				}
			}
		}
	}
	for _, pair := range [][]int{{1, 2}, {1, 3}, {2, 3}} {
		m := steal(pair...)
		for _, c := range dictionary {
			got := m.test(t, c)
			for j, ok := range got {
				if ok != (c == password) {
					t.Errorf("realms %v (a threshold): check %q gives %v for %q (right: %v)", pair, checks[j], ok, c, c == password)
				}
			}
		}
	}
}
