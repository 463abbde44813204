package vault_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// The pre-registration OPRF oracle (issue 11, point 1). Whoever can read a
// repository knows its credential id. Before the user escrows, the
// attacker has the vault evaluate the OPRF on many candidate passwords,
// through register/start and through login/start (which answers unknown
// credentials from the fake record), then spends one counted login after
// the registration to get the masked envelope, and tests every candidate
// offline: a candidate whose pre-registration evaluation opens the
// envelope is the password. With a fresh OPRF key per registration, none
// does.
func TestNoPreRegistrationOracle(t *testing.T) {
	e := newEnv(t, vault.Config{MaxGuesses: 10})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("0123456789abcdef", "")
	const password = "candidate-17"
	op, err := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	if err != nil {
		t.Fatal(err)
	}

	// Before the registration: one evaluation per candidate, half through
	// register/start, half through login/start on the unknown credential.
	type candidate struct {
		pw  string
		st  *opaque.ClientLoginState
		evl []byte // the vault's evaluation of this candidate's blinded element
	}
	var cands []candidate
	for i := range 40 {
		pw := fmt.Sprintf("candidate-%d", i)
		ke1, st, err := op.KE1([]byte(pw))
		if err != nil {
			t.Fatal(err)
		}
		k1, _ := ke1.MarshalBinary()
		blinded := k1[:32]
		var evl []byte
		if i%2 == 0 {
			var sr api.RegisterStartReply
			post(t, e, api.PathRegisterStart, api.RegisterStart{CredentialID: id, Request: blinded}, &sr, 200)
			evl = sr.Response[:32]
		} else {
			var lr api.LoginStartReply
			post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: k1}, &lr, 200)
			evl = lr.KE2[:32]
		}
		cands = append(cands, candidate{pw: pw, st: st, evl: evl})
	}

	// The user escrows.
	if _, _, err := c.Register(ctx, id, []byte(password), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	// One counted login gets the masked envelope.
	ke1, _, err := op.KE1([]byte("anything"))
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := ke1.MarshalBinary()
	var lr api.LoginStartReply
	post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: k1}, &lr, 200)
	post(t, e, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID}, nil, 401)

	// Offline: splice each candidate's evaluation into the KE2. The
	// envelope opens (and only the server MAC, bound to the real
	// transcript, fails) exactly when the candidate is the password and
	// the OPRF key is the one the record uses.
	var found []string
	for _, cd := range cands {
		ke2b := append(append([]byte(nil), cd.evl...), lr.KE2[32:]...)
		ke2, err := api.Suite.UnmarshalKE2(ke2b)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, err = op.KE3(cd.st, ke2)
		if err == nil || strings.Contains(err.Error(), "ServerAuthenticationError") {
			found = append(found, cd.pw)
		}
	}
	if len(found) > 0 {
		t.Fatalf("offline guessing found the password among pre-registration evaluations: %v", found)
	}
	// And the user still has every attempt but the attacker's one.
	left, _, err := c.Status(ctx, id)
	if err != nil || left != 9 {
		t.Fatalf("status: %d left, %v; want 9", left, err)
	}
	if _, err := c.Recover(ctx, id, []byte(password)); err != nil {
		t.Fatalf("the user's recovery: %v", err)
	}
}

// Unknown credentials count like real ones, in the store: an unknown
// credential answers its limit of login attempts, then reports none left,
// like a record that was destroyed.
func TestUnknownCredentialCounted(t *testing.T) {
	e := newEnv(t, vault.Config{MaxGuesses: 10})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("unknown-repo", "")
	var lefts []int
	for range 13 {
		if _, err := c.Recover(ctx, id, []byte("guess")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatalf("guess: %v", err)
		}
		left, _, err := c.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		lefts = append(lefts, left)
	}
	want := []int{9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0}
	if fmt.Sprint(lefts) != fmt.Sprint(want) {
		t.Fatalf("attempts left after each guess on an unknown credential: %v, want %v", lefts, want)
	}
}

// status cannot tell a registered credential from an unknown one by its
// limit: every record gets the vault's limit, a registration asking for
// another is refused, and both answer alike before and after guesses.
func TestStatusSameForRealAndUnknown(t *testing.T) {
	e := newEnv(t, vault.Config{MaxGuesses: 7})
	c := e.client(t)
	ctx := context.Background()
	realID, unknown := api.CredentialID("real-repo", ""), api.CredentialID("unknown-repo", "")
	if _, _, err := c.Register(ctx, api.CredentialID("fewer", ""), []byte("pw"), secret32(t), 3); err == nil {
		t.Fatal("a registration with its own guess limit was accepted")
	}
	if _, limit, err := c.Register(ctx, realID, []byte("pw"), secret32(t), 0); err != nil || limit != 7 {
		t.Fatalf("register: limit %d, %v", limit, err)
	}
	same := func(when string) {
		t.Helper()
		l1, m1, err1 := c.Status(ctx, realID)
		l2, m2, err2 := c.Status(ctx, unknown)
		if err1 != nil || err2 != nil || l1 != l2 || m1 != m2 {
			t.Fatalf("%s: real %d of %d (%v), unknown %d of %d (%v)", when, l1, m1, err1, l2, m2, err2)
		}
	}
	same("fresh")
	for range 3 {
		_, _ = c.Recover(ctx, realID, []byte("wrong"))
		_, _ = c.Recover(ctx, unknown, []byte("wrong"))
	}
	same("after 3 wrong guesses each")
	for range 5 {
		_, _ = c.Recover(ctx, realID, []byte("wrong"))
		_, _ = c.Recover(ctx, unknown, []byte("wrong"))
	}
	same("after the limit (the record destroyed)")
}
