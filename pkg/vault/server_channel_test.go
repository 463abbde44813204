package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// plainLogin runs a login with pw through the API in the clear, as every
// client does, and returns the answer and the session key.
func plainLogin(t *testing.T, e *env, id []byte, pw string) (*api.LoginFinishReply, []byte, []byte) {
	t.Helper()
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	ke1, st, err := oc.KE1([]byte(pw))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ke1.MarshalBinary()
	var lr api.LoginStartReply
	post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: b}, &lr, 200)
	ke2, err := api.Suite.UnmarshalKE2(lr.KE2)
	if err != nil {
		t.Fatal(err)
	}
	ke3, sessionKey, _, err := oc.KE3(st, ke2)
	if err != nil {
		t.Fatal(err)
	}
	k3, _ := ke3.MarshalBinary()
	var fr api.LoginFinishReply
	post(t, e, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, &fr, 200)
	return &fr, sessionKey, lr.LoginID
}

// The endpoints that take a login's token are served only inside the
// realm channel, and the token leaves the vault only sealed under the
// login's session key. A client older than the channel sends the token
// field of its login answer in the clear and is told, without effect, to
// upgrade; what it sends is no token inside the channel either. A channel
// message is read only at the endpoint it was made for, and replayed
// after the record changed, does nothing.
func TestTokenOnlyInChannel(t *testing.T) {
	e := newEnv(t, vault.Config{})
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	sec := secret32(t)
	c := e.client(t)
	if _, _, err := c.Register(ctx, id, []byte("pw"), sec, 0); err != nil {
		t.Fatal(err)
	}
	fr, sessionKey, loginID := plainLogin(t, e, id, "pw")
	tok, err := api.Open(sessionKey, api.TokenLabel, fr.Token, loginID)
	if err != nil {
		t.Fatalf("the token field does not open under the session key: %v", err)
	}
	if bytes.Contains(fr.Token, tok) {
		t.Fatal("the token is in the answer as it is")
	}
	if _, err := api.Open(sessionKey, api.TokenLabel, fr.Token, append(bytes.Clone(loginID), 0)); err == nil {
		t.Fatal("the token opens with another login id")
	}

	// An old client: its login answer's token field, in the clear.
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	rr, _, _ := oc.RegistrationRequest([]byte("new"))
	req, _ := rr.MarshalBinary()
	for _, tc := range []struct {
		path string
		in   any
	}{
		{api.PathChangeStart, api.RegisterStart{Token: fr.Token, Request: req}},
		{api.PathChangeFinish, api.RegisterFinish{Token: fr.Token, Record: make([]byte, 192), Blob: []byte("b"), State: []byte("s")}},
		{api.PathDelete, api.Delete{Token: fr.Token}},
		{api.PathDelete, api.Delete{Token: tok}}, // a real token, in the clear
	} {
		ae := post(t, e, tc.path, tc.in, nil, 400)
		if ae.Code != api.CodeChannelRequired || !strings.Contains(ae.Message, "upgrade") {
			t.Fatalf("%s in the clear: %+v", tc.path, ae)
		}
	}
	// A token at register/start (in the clear, where it is not taken).
	if ae := post(t, e, api.PathRegisterStart, api.RegisterStart{CredentialID: id, Token: tok, Request: req}, nil, 400); ae.Code != api.CodeBadRequest {
		t.Fatalf("a token at register/start: %+v", ae)
	}

	rp := vaulttest.Replica{URL: e.ts.URL, Client: e.ts.Client(), Key: e.srv.PublicKey()}
	inChannel := func(path string, in any, code int, want string) []byte {
		t.Helper()
		b, _ := json.Marshal(in)
		st, body, err := rp.Post(ctx, path, b)
		if err != nil || st != code {
			t.Fatalf("%s in the channel: %d %s %v, want %d", path, st, body, err, code)
		}
		if want != "" {
			var ae api.Error
			if json.Unmarshal(body, &ae) != nil || ae.Code != want {
				t.Fatalf("%s in the channel: %s, want %s", path, body, want)
			}
		}
		return body
	}
	// The sealed token field is no token; change/start needs one.
	inChannel(api.PathDelete, api.Delete{Token: fr.Token}, 401, api.CodeBadToken)
	inChannel(api.PathChangeStart, api.RegisterStart{Token: fr.Token, Request: req}, 401, api.CodeBadToken)
	inChannel(api.PathChangeStart, api.RegisterStart{CredentialID: id, Request: req}, 401, api.CodeBadToken)
	if reg, _ := e.srv.Registered(id); !reg {
		t.Fatal("deleted")
	}

	// A delete message made for /v1/delete is read there only.
	body, _ := json.Marshal(api.Delete{Token: tok})
	msg, open, err := vaulttest.Seal(e.srv.PublicKey(), api.PathDelete, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{api.PathChangeStart, api.PathChangeFinish} {
		st, b, ctype, err := rp.PostRaw(ctx, p, api.RealmChannelType, msg)
		var ae api.Error
		if err != nil || st != 400 || ctype == api.RealmChannelType || json.Unmarshal(b, &ae) != nil || ae.Code != api.CodeBadRequest {
			t.Fatalf("a delete message at %s: %d %s %v", p, st, b, err)
		}
	}
	st, b, ctype, err := rp.PostRaw(ctx, api.PathDelete, api.RealmChannelType, msg)
	if err != nil {
		t.Fatal(err)
	}
	if st, b, err := open(st, ctype, b); err != nil || st != 200 {
		t.Fatalf("delete in the channel: %d %s %v", st, b, err)
	}
	if reg, _ := e.srv.Registered(id); reg {
		t.Fatal("not deleted")
	}
	// Replayed once the credential is registered again: nothing happens.
	if _, _, err := c.Register(ctx, id, []byte("pw2"), sec, 0); err != nil {
		t.Fatal(err)
	}
	if st, _, ctype, err := rp.PostRaw(ctx, api.PathDelete, api.RealmChannelType, msg); err != nil || st != 200 || ctype != api.RealmChannelType {
		t.Fatalf("replayed delete: %d %q %v", st, ctype, err)
	}
	if got, err := c.Recover(ctx, id, []byte("pw2")); err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover after the replayed delete: %v", err)
	}

	// A password change by hand, inside the channel.
	fr, sessionKey, loginID = plainLogin(t, e, id, "pw2")
	if tok, err = api.Open(sessionKey, api.TokenLabel, fr.Token, loginID); err != nil {
		t.Fatal(err)
	}
	var sr api.RegisterStartReply
	if err := json.Unmarshal(inChannel(api.PathChangeStart, api.RegisterStart{Token: tok, Request: req}, 200, ""), &sr); err != nil {
		t.Fatal(err)
	}
	// Its state is taken by change/finish only inside the channel.
	if ae := post(t, e, api.PathRegisterFinish, api.RegisterFinish{CredentialID: id, Record: make([]byte, 192), Blob: []byte("b"), State: sr.State}, nil, 400); ae.Code != api.CodeBadRequest {
		t.Fatalf("a change's state at register/finish: %+v", ae)
	}
}
