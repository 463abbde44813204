package threshold

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
)

func randomElementBytes() [elementSize]byte {
	return elementBytes(g.NewElement().MulGen(g.RandomNonZeroScalar(rand.Reader)))
}

// substituteKey makes r evaluate under a key of its own choosing, with a
// valid proof for that key's public key; if resign, it also signs that
// public key with a signing key of its own.
func substituteKey(tb testing.TB, r *testRealm, resign bool) {
	k := g.RandomNonZeroScalar(rand.Reader)
	pk := g.NewElement().MulGen(k)
	vk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	r.onRecover2 = func(req *Recover2Request, resp *Recover2Response) {
		if resp.Status != StatusOK {
			return
		}
		b := mustElement(tb, req.BlindedAccessKey[:])
		z, err := evaluate(k, b)
		if err != nil {
			tb.Fatal(err)
		}
		proof, err := prove(k, pk, b, z, g.RandomNonZeroScalar(rand.Reader))
		if err != nil {
			tb.Fatal(err)
		}
		resp.BlindedResult, resp.BlindedResultProof = elementBytes(z), proof
		spk := &resp.OPRFSignedPublicKey
		spk.PublicKey = elementBytes(pk)
		if resign {
			copy(spk.VerifyingKey[:], vk)
			copy(spk.Signature[:], ed25519.Sign(sk, signedPublicKeyMessage(req.Version, r.srv.ID(), &spk.PublicKey)))
		}
	}
}

// misbehaviours are the ways a realm can misbehave, each with the error the
// client must report it with. setup, if set, runs after the registration.
var misbehaviours = []struct {
	name  string
	setup func(tb testing.TB, e *testEnv, r *testRealm) []byte // returns the secret now registered
	apply func(tb testing.TB, r *testRealm)
	op    string
	want  error
}{
	{name: "wrong evaluation", op: "recover2", want: ErrBadProof,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) { resp.BlindedResult = randomElementBytes() }
		}},
	{name: "bad proof", op: "recover2", want: ErrBadProof,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) {
				c := scalarBytes(g.RandomScalar(rand.Reader))
				copy(resp.BlindedResultProof[:scalarSize], c[:])
			}
		}},
	{name: "substituted public key, with the registration's signature", op: "recover2", want: ErrBadSignature,
		apply: func(tb testing.TB, r *testRealm) { substituteKey(tb, r, false) }},
	{name: "substituted public key, signed with a key of its own", op: "recover2", want: ErrDisagreement,
		apply: func(tb testing.TB, r *testRealm) { substituteKey(tb, r, true) }},
	{name: "key share of an earlier registration (rolled back)", op: "recover2", want: ErrBadSignature,
		// The realm answers for the current version with the correctly
		// signed key and evaluation of the previous registration: the
		// signature covers the version.
		setup: func(tb testing.TB, e *testEnv, r *testRealm) []byte {
			old := r.st.record(tb).reg
			secret := e.register(tb, "correct horse")
			r.onRecover2 = func(req *Recover2Request, resp *Recover2Response) {
				k := mustScalar(tb, old.oprfKeyShare[:])
				b := mustElement(tb, req.BlindedAccessKey[:])
				z, _ := evaluate(k, b)
				proof, _ := prove(k, mustElement(tb, old.signedPublicKey.PublicKey[:]), b, z, g.RandomNonZeroScalar(rand.Reader))
				resp.BlindedResult, resp.BlindedResultProof = elementBytes(z), proof
				resp.OPRFSignedPublicKey = old.signedPublicKey
			}
			return secret
		}},
	{name: "wrong unlock-key commitment", op: "recover2", want: ErrDisagreement,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) { resp.UnlockKeyCommitment[0] ^= 1 }
		}},
	{name: "impossible guess counters", op: "recover2", want: ErrBadAnswer,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) { resp.AttemptedGuesses = resp.AllowedGuesses + 1 }
		}},
	{name: "wrong encryption-key share", op: "recover3", want: ErrBadShare,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover3 = func(resp *Recover3Response) {
				resp.EncryptionKeyScalarShare = scalarBytes(g.RandomScalar(rand.Reader))
			}
		}},
	{name: "wrong encrypted secret", op: "recover3", want: ErrBadShare,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover3 = func(resp *Recover3Response) { resp.EncryptedSecret[0] ^= 1 }
		}},
	{name: "wrong encrypted-secret commitment", op: "recover3", want: ErrBadShare,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover3 = func(resp *Recover3Response) { resp.EncryptedSecretCommitment[0] ^= 1 }
		}},
	{name: "rejects the right unlock tag", op: "recover3", want: ErrBadAnswer,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover3 = func(resp *Recover3Response) {
				*resp = Recover3Response{Status: StatusBadUnlockKeyTag, GuessesRemaining: 3}
			}
		}},
	{name: "another version in phase 1", op: "recover1", want: ErrOtherVersion,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover1 = func(resp *Recover1Response) { resp.Version[0] ^= 1 }
		}},
	{name: "claims no guesses in phase 1", op: "recover1", want: ErrNoGuesses,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover1 = func(resp *Recover1Response) { *resp = Recover1Response{Status: StatusNoGuesses} }
		}},
	{name: "claims not registered in phase 2", op: "recover2", want: ErrNotRegistered,
		apply: func(tb testing.TB, r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) {
				*resp = Recover2Response{Status: StatusNotRegistered}
			}
		}},
}

// TestMisbehavingRealm: whichever of the three realms misbehaves, in
// whichever way, the client detects it, names it with the right kind of
// error, excludes it and recovers through the other two; and a wrong
// password is still reported as a wrong password, with the guesses left,
// not as misbehaviour.
func TestMisbehavingRealm(t *testing.T) {
	for _, m := range misbehaviours {
		for bad := 1; bad <= 3; bad++ {
			t.Run(fmt.Sprintf("%s/realm %d", m.name, bad), func(t *testing.T) {
				e := newEnv(t, 3, 2)
				secret := e.register(t, "correct horse")
				r := e.realms[bad-1]
				if m.setup != nil {
					secret = m.setup(t, e, r)
				}
				if m.apply != nil {
					m.apply(t, r)
				}
				rec := e.mustRecover(t, "correct horse", secret)
				ps := problemsAt(rec.Problems, bad)
				if len(ps) != 1 || len(rec.Problems) != 1 {
					t.Fatalf("problems %v, want one, at realm %d", rec.Problems, bad)
				}
				if !errors.Is(ps[0], m.want) || ps[0].Op != m.op {
					t.Errorf("problem %v, want %v at %s", ps[0], m.want, m.op)
				}
				if isMisbehaviour := errors.Is(m.want, ErrMisbehaving); errors.Is(ps[0], ErrMisbehaving) != isMisbehaviour {
					t.Errorf("problem %v: misbehaviour %v, want %v", ps[0], !isMisbehaviour, isMisbehaviour)
				}
				for i, hr := range e.realms {
					if i+1 != bad && hr.st.record(t).GuessesLeft() != testGuesses {
						t.Errorf("honest realm %d: counter not reset", i+1)
					}
				}

				_, err := e.recover("battery staple")
				var we *WrongPasswordError
				if !errors.As(err, &we) || !errors.Is(err, ErrWrongPassword) || errors.Is(err, ErrMisbehaving) {
					t.Fatalf("wrong password with realm %d misbehaving: %v", bad, err)
				}
				if we.GuessesLeft != testGuesses-1 {
					t.Errorf("wrong password: %d guesses left, want %d", we.GuessesLeft, testGuesses-1)
				}
			})
		}
	}
}

func misbehave(tb testing.TB, name string, r *testRealm) {
	for _, m := range misbehaviours {
		if m.name == name {
			m.apply(tb, r)
			return
		}
	}
	tb.Fatalf("no misbehaviour %q", name)
}

// TestTooManyMisbehaving: with two realms excluded (misbehaving, or one
// misbehaving and one down) the third cannot recover alone; the error
// says so and names both, and no secret comes out.
func TestTooManyMisbehaving(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(tb testing.TB, e *testEnv)
	}{
		{"two bad proofs", func(tb testing.TB, e *testEnv) {
			misbehave(tb, "bad proof", e.realms[0])
			misbehave(tb, "bad proof", e.realms[2])
		}},
		{"bad proof and down", func(tb testing.TB, e *testEnv) {
			misbehave(tb, "bad proof", e.realms[0])
			e.realms[1].down.Store(true)
		}},
		{"two wrong shares", func(tb testing.TB, e *testEnv) {
			misbehave(tb, "wrong encryption-key share", e.realms[1])
			misbehave(tb, "wrong encryption-key share", e.realms[2])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 3, 2)
			e.register(t, "correct horse")
			tc.set(t, e)
			rec, err := e.recover("correct horse")
			var qe *QuorumError
			if !errors.As(err, &qe) || rec != nil {
				t.Fatalf("recover: %v, %v; want a QuorumError", rec, err)
			}
			if qe.Answered != 1 || qe.Needed != 2 || len(qe.Problems) != 2 {
				t.Errorf("QuorumError %+v: %v", qe, qe.Problems)
			}
		})
	}
}

// TestColludingThreshold shows the limit of robustness: a threshold of
// realms that substitute a consistent sharing of a key of their own (with a
// verifying key and commitment of their own, since they do not know the
// password) can make the right password fail, as the whitepaper says, but
// cannot make the client accept anything.
func TestColludingThreshold(t *testing.T) {
	e := newEnv(t, 3, 2)
	e.register(t, "correct horse")
	root := g.RandomNonZeroScalar(rand.Reader)
	shares := shamir(root, 2, 3)
	vk, sk, _ := ed25519.GenerateKey(rand.Reader)
	var commitment [commitmentSize]byte
	commitment[0] = 1
	for _, i := range []int{1, 2} {
		k, r := shares[i-1].Value, e.realms[i-1]
		r.onRecover2 = func(req *Recover2Request, resp *Recover2Response) {
			pk := g.NewElement().MulGen(k)
			b := mustElement(t, req.BlindedAccessKey[:])
			z, _ := evaluate(k, b)
			proof, _ := prove(k, pk, b, z, g.RandomNonZeroScalar(rand.Reader))
			resp.BlindedResult, resp.BlindedResultProof = elementBytes(z), proof
			spk := &resp.OPRFSignedPublicKey
			spk.PublicKey = elementBytes(pk)
			copy(spk.VerifyingKey[:], vk)
			copy(spk.Signature[:], ed25519.Sign(sk, signedPublicKeyMessage(req.Version, r.srv.ID(), &spk.PublicKey)))
			resp.UnlockKeyCommitment = commitment
		}
	}
	rec, err := e.recover("correct horse")
	if rec != nil || !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("recover with two colluding realms: %v, %v", rec, err)
	}
}
