package vaultclient_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// recorder is the client's side of the man in the middle's view: every
// request body the client sends, by path, as the relay receives it.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	reqs map[string][][]byte
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.reqs[req.URL.Path] = append(r.reqs[req.URL.Path], b)
		r.mu.Unlock()
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	return r.base.RoundTrip(req)
}

// carries reports whether one of bodies holds tok, raw or in one of the
// encodings a JSON or text body would carry it in.
func carries(bodies [][]byte, tok []byte) bool {
	forms := [][]byte{tok,
		[]byte(base64.StdEncoding.EncodeToString(tok)),
		[]byte(base64.RawURLEncoding.EncodeToString(tok)),
		[]byte(hex.EncodeToString(tok))}
	for _, b := range bodies {
		for _, f := range forms {
			if bytes.Contains(b, f) {
				return true
			}
		}
	}
	return false
}

// A man in the middle of the v1 API, with a TLS certificate the client
// trusts (the relay of TestRealmChannelAgainstManInTheMiddle), relays two
// password changes and two deletes, each with its login: no token is in
// any body it sees (the same check finds them in the plain JSON of the
// requests that carry them); what it sees in the login answers' token
// field is sealed under the session key and refused as a token, in its
// own realm channel or outside one. A token, even a valid one, is refused
// outside the channel; used-up tokens are refused inside it; every
// request of the flows it captured, replayed, changes nothing, and moved
// to another endpoint is not read; the vault's earlier answer replayed to
// a delete is not believed. The normal change and delete work through it.
func TestTokenAgainstManInTheMiddle(t *testing.T) {
	srv, ts := startVault(t)
	m := startMITM(t, testRealm{URL: ts.URL, client: ts.Client()})
	rec := &recorder{base: m.ts.Client().Transport, reqs: map[string][][]byte{}}
	c, err := vaultclient.New(m.ts.URL, vaultclient.Options{HTTPClient: &http.Client{Transport: rec}, KSF: opaque.IdentityKSF{}, PinFile: filepath.Join(t.TempDir(), "vaults.json")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cred := api.CredentialID("repo", "")
	secret := randBytes(32)
	register := func(pw string) {
		t.Helper()
		if _, _, err := c.Register(ctx, cred, []byte(pw), secret, 0); err != nil {
			t.Fatal(err)
		}
	}
	recovers := func(pw string) {
		t.Helper()
		if got, err := c.Recover(ctx, cred, []byte(pw)); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("recover with %q: %v", pw, err)
		}
	}
	registered := func(want bool) {
		t.Helper()
		if reg, err := srv.Registered(cred); err != nil || reg != want {
			t.Fatalf("registered: %v (%v), want %v", reg, err, want)
		}
	}

	// Through the relay: a change and a delete step by step, with the
	// tokens they carry, then ChangePassword and Delete.
	register("pw1")
	_, tok1, err := vaultclient.LoginWithTokenForTest(ctx, c, cred, []byte("pw1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vaultclient.ChangeWithTokenForTest(ctx, c, cred, tok1, []byte("pw2"), secret); err != nil {
		t.Fatal(err)
	}
	recovers("pw2")
	if err := c.ChangePassword(ctx, cred, []byte("pw2"), []byte("pw3")); err != nil {
		t.Fatal(err)
	}
	recovers("pw3")
	_, tok2, err := vaultclient.LoginWithTokenForTest(ctx, c, cred, []byte("pw3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vaultclient.DeleteWithTokenForTest(ctx, c, tok2); err != nil {
		t.Fatal(err)
	}
	registered(false)
	register("pw4")
	if err := c.Delete(ctx, cred, []byte("pw4")); err != nil {
		t.Fatal(err)
	}
	registered(false)

	m.mu.Lock()
	seen := slices.Clone(m.seen)
	m.mu.Unlock()
	if len(seen) < 40 {
		t.Fatalf("the relay saw %d bodies", len(seen))
	}
	for i, tok := range [][]byte{tok1, tok2} {
		if len(tok) < 100 {
			t.Fatalf("token %d: %d bytes", i, len(tok))
		}
		if carries(seen, tok) {
			t.Fatalf("the man in the middle saw token %d", i)
		}
		// Control: the same check finds it in the plain JSON of the
		// requests that carry it.
		for _, in := range []any{api.Delete{Token: tok}, api.RegisterStart{Token: tok, Request: []byte("r")}} {
			b, _ := json.Marshal(in)
			if !carries([][]byte{b}, tok) {
				t.Fatalf("the check misses token %d in %s", i, b)
			}
		}
	}
	// What the login answers' token field carries: sealed under the
	// session key, one per login.
	var sealed [][]byte
	for _, b := range seen {
		var fr api.LoginFinishReply
		if json.Unmarshal(b, &fr) == nil && len(fr.Token) > 0 {
			sealed = append(sealed, fr.Token)
		}
	}
	if len(sealed) < 6 {
		t.Fatalf("%d login answers with a token field", len(sealed))
	}

	// The man in the middle's own requests to the vault: in the clear,
	// and inside a realm channel of its own (anyone may open one).
	register("pw5")
	plain := vaulttest.Replica{URL: ts.URL, Client: ts.Client()}
	channel := vaulttest.Replica{URL: ts.URL, Client: ts.Client(), Key: srv.PublicKey()}
	postPlain := func(path string, in any, code int, want string) {
		t.Helper()
		b, _ := json.Marshal(in)
		st, body, _, err := plain.PostRaw(ctx, path, "application/json", b)
		var ae api.Error
		if err != nil || st != code || json.Unmarshal(body, &ae) != nil || ae.Code != want {
			t.Fatalf("%s in the clear: %d %s %v, want %d %s", path, st, body, err, code, want)
		}
	}
	postChannel := func(path string, in any, code int, want string) {
		t.Helper()
		b, _ := json.Marshal(in)
		st, body, err := channel.Post(ctx, path, b)
		var ae api.Error
		if err != nil || st != code || json.Unmarshal(body, &ae) != nil || ae.Code != want {
			t.Fatalf("%s in the channel: %d %s %v, want %d %s", path, st, body, err, code, want)
		}
	}
	// Even a valid token (which it never sees) is refused in the clear.
	direct, err := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	_, tok3, err := vaultclient.LoginWithTokenForTest(ctx, direct, cred, []byte("pw5"))
	if err != nil {
		t.Fatal(err)
	}
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	rr, _, err := oc.RegistrationRequest([]byte("the man in the middle's"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := rr.MarshalBinary()
	postPlain(api.PathDelete, api.Delete{Token: tok3}, 400, api.CodeChannelRequired)
	postPlain(api.PathChangeStart, api.RegisterStart{Token: tok3, Request: req}, 400, api.CodeChannelRequired)
	postPlain(api.PathChangeFinish, api.RegisterFinish{Token: tok3}, 400, api.CodeChannelRequired)
	postPlain(api.PathRegisterStart, api.RegisterStart{CredentialID: cred, Token: tok3, Request: req}, 400, api.CodeBadRequest)
	// What it saw in the token fields, and the used-up tokens, are
	// refused inside the channel.
	for _, tok := range append(sealed, tok1, tok2) {
		postChannel(api.PathDelete, api.Delete{Token: tok}, 401, api.CodeBadToken)
		postChannel(api.PathChangeStart, api.RegisterStart{Token: tok, Request: req}, 401, api.CodeBadToken)
	}
	// Every request it relayed to an endpoint that takes a token,
	// replayed as it was, and moved to another such endpoint.
	rec.mu.Lock()
	captured := map[string][][]byte{}
	for _, p := range api.TokenPaths {
		captured[p] = slices.Clone(rec.reqs[p])
	}
	rec.mu.Unlock()
	for _, p := range api.TokenPaths {
		if len(captured[p]) < 2 {
			t.Fatalf("%d requests to %s captured", len(captured[p]), p)
		}
		for _, b := range captured[p] {
			if st, _, ctype, err := plain.PostRaw(ctx, p, api.RealmChannelType, b); err != nil || st != 200 || ctype != api.RealmChannelType {
				t.Fatalf("%s replayed: %d %q %v", p, st, ctype, err)
			}
			other := api.PathDelete
			if p == api.PathDelete {
				other = api.PathChangeStart
			}
			if st, body, _, err := plain.PostRaw(ctx, other, api.RealmChannelType, b); err != nil || st != 400 {
				t.Fatalf("a %s request at %s: %d %s %v", p, other, st, body, err)
			}
		}
	}
	registered(true)
	recovers("pw5")

	// The vault's earlier answer to a delete, replayed: the client does
	// not believe it, and nothing was deleted.
	m.mu.Lock()
	m.first = map[string][]byte{api.PathDelete: m.first[api.PathDelete]}
	m.mu.Unlock()
	m.replay.Store(true)
	var ce *vaultclient.ChannelError
	if err := c.Delete(ctx, cred, []byte("pw5")); !errors.As(err, &ce) {
		t.Fatalf("delete with a replayed answer: %v", err)
	}
	registered(true)
	m.replay.Store(false)
	if err := c.Delete(ctx, cred, []byte("pw5")); err != nil {
		t.Fatal(err)
	}
	registered(false)
}
