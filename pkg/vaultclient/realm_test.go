package vaultclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

var cheapKDF = threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

type testRealm struct {
	URL    string
	client *http.Client
	stop   func()
}

// startRealms runs n in-process vaults (startVault: pkg/vault's server,
// each with its own store and keys), each serving the realm API over TLS
// 1.3.
func startRealms(t *testing.T, n int) []testRealm {
	t.Helper()
	out := make([]testRealm, n)
	for i := range out {
		_, ts := startVault(t)
		out[i] = testRealm{URL: ts.URL, client: ts.Client(), stop: ts.Close}
	}
	return out
}

func realmOpts(tr testRealm, pinFile string) vaultclient.RealmOptions {
	return vaultclient.RealmOptions{Options: vaultclient.Options{HTTPClient: tr.client, PinFile: pinFile}}
}

// config asks every realm for its info and builds a threshold
// configuration.
func config(t testing.TB, realms []*vaultclient.Realm, thr int, credID []byte) threshold.Config {
	t.Helper()
	cfg := threshold.Config{Threshold: thr, KDF: cheapKDF, UserInfo: credID}
	for _, r := range realms {
		in, err := r.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cfg.Realms = append(cfg.Realms, threshold.RealmConfig{ID: r.ID(), PublicKey: in.PublicKey})
	}
	return cfg
}

// registered makes a 2-of-n client over realms (tr: what the client
// calls, realms or wrappers of them) and registers a random secret under
// the password "pw" with 10 guesses.
func registered(t *testing.T, realms []*vaultclient.Realm, tr []threshold.Realm, cred []byte) (*threshold.Client, threshold.Config, []byte) {
	t.Helper()
	cfg := config(t, realms, 2, cred)
	c, err := threshold.NewClient(cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	if err := c.Register(context.Background(), []byte("pw"), secret, 10); err != nil {
		t.Fatal(err)
	}
	return c, cfg, secret
}

// Three realms over HTTPS, threshold 2: register, recover, recover with
// one realm down, a wrong password counted at every realm (status shows
// it), delete.
func TestRealmOverHTTPS(t *testing.T) {
	trs := startRealms(t, 3)
	pinFile := filepath.Join(t.TempDir(), "vaults.json")
	cred := api.CredentialID("repo", "")
	var realms []*vaultclient.Realm
	var tr []threshold.Realm
	for _, x := range trs {
		r, err := vaultclient.NewRealm(x.URL, cred, realmOpts(x, pinFile))
		if err != nil {
			t.Fatal(err)
		}
		realms = append(realms, r)
		tr = append(tr, r)
	}
	ctx := context.Background()
	c, _, secret := registered(t, realms, tr, cred)
	rec, err := c.Recover(ctx, []byte("pw"))
	if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 0 {
		t.Fatalf("recover: %v %v", rec, err)
	}
	var wp *threshold.WrongPasswordError
	if _, err := c.Recover(ctx, []byte("nope")); !errors.As(err, &wp) || wp.GuessesLeft != 9 {
		t.Fatalf("wrong password: %v", err)
	}
	for i, r := range realms {
		st, err := r.Status(ctx)
		if err != nil || st.State != api.RealmRegistered || st.GuessesLeft != 9 || st.Limit != 10 {
			t.Fatalf("realm %d status: %+v %v", i, st, err)
		}
	}
	// Every URL is pinned on first use.
	var pins map[string]string
	data, _ := os.ReadFile(pinFile)
	if json.Unmarshal(data, &pins) != nil || len(pins) != 3 {
		t.Fatalf("pin file: %s", data)
	}
	trs[1].stop()
	rec, err = c.Recover(ctx, []byte("pw"))
	if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 1 || rec.Problems[0].Index != 2 ||
		!strings.Contains(rec.Problems[0].Error(), trs[1].URL) {
		t.Fatalf("recover with realm 2 down: %v %v", rec, err)
	}
	trs[2].stop()
	var qe *threshold.QuorumError
	if _, err := c.Recover(ctx, []byte("pw")); !errors.As(err, &qe) || qe.Answered != 1 || qe.Needed != 2 {
		t.Fatalf("recover with two realms down: %v", err)
	}
	if err := c.Delete(ctx); !errors.As(err, &qe) || qe.Answered != 1 {
		t.Fatalf("delete with two realms down: %v", err)
	}
	if st, err := realms[0].Status(ctx); err != nil || st.State != api.RealmNotRegistered {
		t.Fatalf("realm 1 after delete: %+v %v", st, err)
	}
}

// A realm is asked nothing unless it presents the pinned fingerprint
// (the Pin option, then the pin file) and the realm id the slot records.
func TestRealmPins(t *testing.T) {
	x := startRealms(t, 1)[0]
	pinFile := filepath.Join(t.TempDir(), "vaults.json")
	cred := api.CredentialID("repo", "")
	ctx := context.Background()
	r, _ := vaultclient.NewRealm(x.URL, cred, realmOpts(x, pinFile))
	in, err := r.Info(ctx)
	if err != nil || len(in.Fingerprint) != 64 {
		t.Fatalf("info: %+v %v", in, err)
	}
	id := r.ID()
	var pm *vaultclient.PinMismatchError
	other := strings.Repeat("ab", 32)
	o := realmOpts(x, pinFile)
	o.Pin = other
	r2, _ := vaultclient.NewRealm(x.URL, cred, o)
	if _, err := r2.Recover1(ctx, &threshold.Recover1Request{}); !errors.As(err, &pm) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), in.Fingerprint) {
		t.Fatalf("pin mismatch: %v", err)
	}
	// The pin file names another key.
	data, _ := json.Marshal(map[string]string{x.URL: other})
	os.WriteFile(pinFile, data, 0o600)
	r3, _ := vaultclient.NewRealm(x.URL, cred, realmOpts(x, pinFile))
	if _, err := r3.Status(ctx); !errors.As(err, &pm) {
		t.Fatalf("pin file mismatch: %v", err)
	}
	// Another realm id.
	o = realmOpts(x, "-")
	o.ID = threshold.RealmID{1}
	r4, _ := vaultclient.NewRealm(x.URL, cred, o)
	var im *vaultclient.RealmIDMismatchError
	if _, err := r4.Register1(ctx, &threshold.Register1Request{}); !errors.As(err, &im) || im.Got != id {
		t.Fatalf("realm id mismatch: %v", err)
	}
	o.ID = id
	r5, _ := vaultclient.NewRealm(x.URL, cred, o)
	if _, err := r5.Register1(ctx, &threshold.Register1Request{}); err != nil {
		t.Fatalf("the right realm id: %v", err)
	}
	if _, err := vaultclient.NewRealm("http://example.com", cred, vaultclient.RealmOptions{}); err == nil {
		t.Fatal("plain http accepted")
	}
}

// Errors: an api.Error body becomes an *APIError naming the vault and its
// code, whether the vault said it in the channel or outside it (a 429 or a
// 503 of a proxy); an answer outside the channel that claims success, or
// one not from the pinned key, is a *ChannelError; a vault that does not
// answer within the per-request timeout is an error naming it (the test
// waits for the timeout, it does not measure it).
func TestRealmErrors(t *testing.T) {
	release := make(chan struct{})
	priv, pub, err := noise.Ristretto255.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherPriv, otherPub, _ := noise.Ristretto255.Generate(rand.Reader)
	inChannel := func(w http.ResponseWriter, r *http.Request, priv, pub []byte, status int, v any) {
		msg, _ := io.ReadAll(r.Body)
		_, hs, err := noise.ReadRequest(noise.Ristretto255, priv, pub, api.RealmPrologue(r.URL.Path), msg)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		b, _ := json.Marshal(v)
		out, _ := hs.WriteResponse(api.MarshalRealmAnswer(status, b), rand.Reader)
		w.Header().Set("Content-Type", api.RealmChannelType)
		w.Write(out)
	}
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case api.PathRealmInfo:
			json.NewEncoder(w).Encode(api.RealmInfo{RealmID: strings.Repeat("01", 16), PublicKey: pub, Fingerprint: api.Fingerprint(pub), MaxGuesses: 10})
		case api.PathRealmRecover1:
			inChannel(w, r, priv, pub, http.StatusServiceUnavailable, api.Error{Code: api.CodeUnavailable, Message: "no quorum"})
		case api.PathRealmRecover2:
			inChannel(w, r, priv, pub, http.StatusOK, api.RealmReply{Message: []byte{1, 2, 3}})
		case api.PathRealmRegister1:
			// A proxy's rate limit, outside the channel.
			w.WriteHeader(http.StatusTooManyRequests)
			json.NewEncoder(w).Encode(api.Error{Code: api.CodeRateLimited, Message: "slow down"})
		case api.PathRealmRegister2:
			// A success outside the channel.
			json.NewEncoder(w).Encode(api.RealmReply{Message: []byte{1}})
		case api.PathRealmDelete:
			// An answer from another key.
			msg, _ := io.ReadAll(r.Body)
			if _, _, err := noise.ReadRequest(noise.Ristretto255, otherPriv, otherPub, api.RealmPrologue(r.URL.Path), msg); err == nil {
				t.Error("another key read the request")
				return
			}
			_, hs, _ := noise.ReadRequest(noise.Ristretto255, otherPriv, otherPub, nil, mustRequest(t, otherPub))
			out, _ := hs.WriteResponse(api.MarshalRealmAnswer(200, []byte(`{"message":"AQ=="}`)), rand.Reader)
			w.Header().Set("Content-Type", api.RealmChannelType)
			w.Write(out)
		default:
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer ts.Close()
	defer close(release)
	ctx := context.Background()
	r, _ := vaultclient.NewRealm(ts.URL, []byte("c"), vaultclient.RealmOptions{Options: vaultclient.Options{HTTPClient: ts.Client(), PinFile: "-"}, Timeout: 200 * time.Millisecond})
	var ae *vaultclient.APIError
	if _, err := r.Recover1(ctx, &threshold.Recover1Request{}); !errors.As(err, &ae) || ae.Code != api.CodeUnavailable || !strings.Contains(err.Error(), ts.URL) {
		t.Fatalf("unavailable: %v", err)
	}
	if _, err := r.Recover2(ctx, &threshold.Recover2Request{}); !errors.Is(err, threshold.ErrInvalidMessage) || !strings.Contains(err.Error(), ts.URL) {
		t.Fatalf("a malformed answer: %v", err)
	}
	if _, err := r.Register1(ctx, &threshold.Register1Request{}); !errors.As(err, &ae) || ae.Code != api.CodeRateLimited {
		t.Fatalf("a rate limit outside the channel: %v", err)
	}
	var ce *vaultclient.ChannelError
	if _, err := r.Register2(ctx, &threshold.Register2Request{}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "outside the realm channel") {
		t.Fatalf("a success outside the channel: %v", err)
	}
	if _, err := r.Delete(ctx, &threshold.DeleteRequest{}); !errors.As(err, &ce) || !errors.Is(err, noise.ErrDecrypt) || !strings.Contains(err.Error(), api.Fingerprint(pub)) {
		t.Fatalf("an answer from another key: %v", err)
	}
	if _, err := r.Recover3(ctx, &threshold.Recover3Request{}); err == nil || !strings.Contains(err.Error(), "no answer within") || !strings.Contains(err.Error(), ts.URL) {
		t.Fatalf("a vault that does not answer: %v", err)
	}
}

func mustRequest(t *testing.T, pub []byte) []byte {
	m, _, err := noise.WriteRequest(noise.Ristretto255, pub, nil, nil, rand.Reader)
	if err != nil {
		t.Error(err)
	}
	return m
}
