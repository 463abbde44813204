package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

type env struct {
	srv     *vault.Server
	ts      *httptest.Server
	dir     string
	counted atomic.Int64
	store   vault.Store
}

func newEnv(t testing.TB, cfg vault.Config) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := vault.OpenBolt(filepath.Join(dir, "vault.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvStore(t, cfg, st)
	e.dir, e.store = dir, st
	t.Cleanup(func() { st.Close() })
	return e
}

// newEnvStore runs a vault on st over HTTPS; the caller closes st.
func newEnvStore(t testing.TB, cfg vault.Config, st vault.Store) *env {
	t.Helper()
	e := &env{}
	var err error
	if cfg.Sealer == nil {
		s, err := vault.OpenFileSealer(filepath.Join(t.TempDir(), "seal.key"), true)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Sealer = s
	}
	cfg.Store = st
	hook := cfg.AfterCount
	cfg.AfterCount = func() {
		e.counted.Add(1)
		if hook != nil {
			hook()
		}
	}
	cfg.Logf = t.Logf
	if _, ok := t.(*testing.B); ok {
		cfg.Logf = func(string, ...any) {}
	}
	e.srv, err = vault.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.ts = httptest.NewUnstartedServer(e.srv.Handler())
	e.ts.EnableHTTP2 = true
	e.ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	e.ts.StartTLS()
	t.Cleanup(func() {
		e.ts.Close()
		e.srv.Close()
	})
	return e
}

func (e *env) client(t testing.TB) *vaultclient.Client {
	t.Helper()
	c, err := vaultclient.New(e.ts.URL, vaultclient.Options{HTTPClient: e.ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secret32(t testing.TB) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRegisterRecoverChangeDelete(t *testing.T) {
	e := newEnv(t, vault.Config{})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo1", "")
	sec := secret32(t)
	fp, limit, err := c.Register(ctx, id, []byte("correct horse"), sec, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fp != e.srv.Fingerprint() || limit != 10 {
		t.Fatalf("fingerprint %s limit %d", fp, limit)
	}
	if _, _, err := c.Register(ctx, id, []byte("other"), sec, 0); !errors.Is(err, vaultclient.ErrExists) {
		t.Fatalf("second registration: %v", err)
	}
	got, err := c.Recover(ctx, id, []byte("correct horse"))
	if err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover: %x, %v", got, err)
	}
	if err := c.ChangePassword(ctx, id, []byte("correct horse"), []byte("battery staple")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recover(ctx, id, []byte("correct horse")); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("old password after change: %v", err)
	}
	if got, err := c.Recover(ctx, id, []byte("battery staple")); err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover after change: %v", err)
	}
	if err := c.Delete(ctx, id, []byte("battery staple")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recover(ctx, id, []byte("battery staple")); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("after delete: %v", err)
	}
}

// Acceptance 1: a wrong password fails at the client on KE2 and costs an
// attempt; the vault says how many are left.
func TestWrongPasswordFailsOnKE2(t *testing.T) {
	e := newEnv(t, vault.Config{})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	if _, _, err := c.Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	// Straight through the opaque API: KE3 fails on the client.
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	ke1, st, _ := oc.KE1([]byte("wrong"))
	b, _ := ke1.MarshalBinary()
	var lr api.LoginStartReply
	post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: b}, &lr, 200)
	ke2, err := api.Suite.UnmarshalKE2(lr.KE2)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := oc.KE3(st, ke2); !errors.Is(err, opaque.ErrAuthentication) {
		t.Fatalf("KE3 with a wrong password: %v", err)
	}
	// Through the client: the message names the attempts left (one was
	// spent above, one now).
	_, err = c.Recover(ctx, id, []byte("wrong"))
	var wp *vaultclient.WrongPasswordError
	if !errors.As(err, &wp) || wp.AttemptsLeft != 8 || !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("recover with a wrong password: %v", err)
	}
	if want := "wrong password — 8 attempts left before the key is destroyed"; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
}

func post(t testing.TB, e *env, path string, in, out any, want int) *api.Error {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := e.ts.Client().Post(e.ts.URL+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s: status %d, want %d", path, resp.StatusCode, want)
	}
	if resp.StatusCode != 200 {
		var ae api.Error
		if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil {
			t.Fatal(err)
		}
		return &ae
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return nil
}

// Acceptance 1: a forged KE3 is rejected by the server, through the API,
// releases nothing, and counts as a failure.
func TestForgedKE3Rejected(t *testing.T) {
	e := newEnv(t, vault.Config{})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	if _, _, err := c.Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	for _, forge := range []func(real []byte) []byte{
		func(real []byte) []byte { f := bytes.Clone(real); f[0] ^= 1; return f }, // altered MAC
		func(real []byte) []byte { return make([]byte, len(real)) },              // zeroes
		func(real []byte) []byte { return real[:10] },                            // malformed
	} {
		ke1, st, _ := oc.KE1([]byte("right"))
		b, _ := ke1.MarshalBinary()
		var lr api.LoginStartReply
		post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: b}, &lr, 200)
		ke2, _ := api.Suite.UnmarshalKE2(lr.KE2)
		ke3, _, _, err := oc.KE3(st, ke2)
		if err != nil {
			t.Fatal(err)
		}
		k3, _ := ke3.MarshalBinary()
		ae := post(t, e, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: forge(k3)}, nil, 401)
		if ae.Code != api.CodeWrongPassword {
			t.Fatalf("forged KE3: %+v", ae)
		}
		// The login is used up: the real KE3 no longer works either.
		if ae := post(t, e, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, nil, 401); ae.Code != api.CodeLoginExpired {
			t.Fatalf("replayed login: %+v", ae)
		}
	}
	left, _, err := c.Status(ctx, id)
	if err != nil || left != 7 {
		t.Fatalf("status after 3 forged KE3: %d, %v", left, err)
	}
}

// Acceptance 2: 50 concurrent wrong guesses; exactly limit of them get a
// real KE2, then the record is gone and the right password gets the
// unknown-user answer.
func TestBruteForce(t *testing.T) {
	const limit = 10
	e := newEnv(t, vault.Config{MaxGuesses: limit})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	if _, _, err := c.Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Recover(ctx, id, []byte{'x', byte(i)})
			if errors.Is(err, keys.ErrWrongKey) {
				wrong.Add(1)
			} else {
				t.Errorf("guess %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if got := e.counted.Load(); got != limit {
		t.Fatalf("%d guesses got a real KE2, want %d", got, limit)
	}
	if wrong.Load() != 50 {
		t.Fatalf("%d wrong", wrong.Load())
	}
	// The record is gone from the store.
	if n := countRecords(t, e); n != 0 {
		t.Fatalf("%d records left after the limit", n)
	}
	before := e.counted.Load()
	_, err := c.Recover(ctx, id, []byte("right"))
	if !errors.Is(err, keys.ErrWrongKey) || e.counted.Load() != before {
		t.Fatalf("right password after the limit: %v (real KE2s %d -> %d)", err, before, e.counted.Load())
	}
	// The unknown-user answer: the same as for a name never registered.
	_, err2 := c.Recover(ctx, api.CredentialID("never", ""), []byte("right"))
	if err2 == nil || err.Error() == "" {
		t.Fatal(err2)
	}
}

// countRecords counts the credential records in the store.
func countRecords(t testing.TB, e *env) int {
	return e.srv.CountRecordsForTest()
}

// Acceptance 2: the right password before the limit resets the counter.
func TestRightPasswordResets(t *testing.T) {
	e := newEnv(t, vault.Config{MaxGuesses: 3})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	sec := secret32(t)
	if _, _, err := c.Register(ctx, id, []byte("right"), sec, 0); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		for i := range 2 {
			_, err := c.Recover(ctx, id, []byte("wrong"))
			var wp *vaultclient.WrongPasswordError
			if !errors.As(err, &wp) || wp.AttemptsLeft != 3-1-i {
				t.Fatalf("round %d guess %d: %v", round, i, err)
			}
		}
		if got, err := c.Recover(ctx, id, []byte("right")); err != nil || !bytes.Equal(got, sec) {
			t.Fatalf("round %d: right password: %v", round, err)
		}
		if left, _, _ := c.Status(ctx, id); left != 3 {
			t.Fatalf("round %d: %d left after a success", round, left)
		}
	}
}

// An unanswered KE3 counts, and at the limit the record goes when the
// pending login expires.
func TestUnansweredKE3Counts(t *testing.T) {
	e := newEnv(t, vault.Config{MaxGuesses: 2, LoginTimeout: 200 * time.Millisecond})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	if _, _, err := c.Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	for range 2 {
		ke1, _, _ := oc.KE1([]byte("right"))
		b, _ := ke1.MarshalBinary()
		post(t, e, api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: b}, &api.LoginStartReply{}, 200)
	}
	if left, _, _ := c.Status(ctx, id); left != 0 {
		t.Fatalf("%d left", left)
	}
	deadline := time.Now().Add(5 * time.Second)
	for countRecords(t, e) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the spent record was not destroyed after its logins expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Acceptance 4: the raw bbolt file and the vault's directory hold no OPRF
// seed, private key, escrowed secret or client ciphertext in the clear.
func TestNoSecretsAtRest(t *testing.T) {
	t.Run("filekey", func(t *testing.T) { testNoSecretsAtRest(t, nil) })
	t.Run("softhsm", func(t *testing.T) {
		h := vaulttest.SoftHSM(t)
		s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		testNoSecretsAtRest(t, s)
		t.Run("ratchet", func(t *testing.T) { testNoSecretsAtRest(t, s) })
	})
}

func testNoSecretsAtRest(t *testing.T, sealer vault.Sealer) {
	var e *env
	if r, ok := sealer.(vault.Ratchet); ok && strings.HasSuffix(t.Name(), "/ratchet") {
		dir := t.TempDir()
		st, err := vault.OpenRatchet(filepath.Join(dir, "vault.db"), r)
		if err != nil {
			t.Fatal(err)
		}
		e = newEnvStore(t, vault.Config{Sealer: sealer}, st)
		e.dir, e.store = dir, st
	} else {
		e = newEnv(t, vault.Config{Sealer: sealer})
	}
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo-at-rest", "")
	sec := secret32(t)
	if _, _, err := c.Register(ctx, id, []byte("pw"), sec, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recover(ctx, id, []byte("pw")); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Recover(ctx, id, []byte("wrong"))
	keys := e.srv.KeysForTest()
	needles := map[string][]byte{"oprf seed": keys.OPRFSeed, "private key": keys.PrivateKey, "escrowed secret": sec, "credential id": id, "registration record": e.srv.RecordForTest(id)}
	if err := e.store.Close(); err != nil { // flush and release the file
		t.Fatal(err)
	}
	n := 0
	err := filepath.Walk(e.dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		for what, b := range needles {
			if len(b) < 16 {
				t.Fatalf("needle %s too short", what)
			}
			if bytes.Contains(data, b) || bytes.Contains(data, b[:16]) {
				t.Errorf("%s: found the %s", p, what)
			}
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walked %d files: %v", n, err)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, vault.Config{RatePerSecond: 0.01, RateBurst: 3})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	for i := range 3 {
		if _, _, err := c.Status(ctx, id); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, _, err := c.Status(ctx, id)
	var ae *vaultclient.APIError
	if !errors.As(err, &ae) || ae.Status != 429 || ae.Code != api.CodeRateLimited {
		t.Fatalf("fourth request: %v", err)
	}
}

// TestPasswordNormalized: the client normalizes the vault password
// (keys.NormalizePassword) before OPAQUE sees it, so the escrowed key
// comes back however the password's accents and spaces were typed.
func TestPasswordNormalized(t *testing.T) {
	e := newEnv(t, vault.Config{})
	c := e.client(t)
	ctx := context.Background()
	id := api.CredentialID("repo-nfc", "")
	sec := secret32(t)
	if _, _, err := c.Register(ctx, id, []byte("cafe\u0301\u00a0cre\u0300me"), sec, 0); err != nil {
		t.Fatal(err)
	}
	for _, typed := range []string{"caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me", "caf\u00e9\u00a0cr\u00e8me"} {
		got, err := c.Recover(ctx, id, []byte(typed))
		if err != nil || !bytes.Equal(got, sec) {
			t.Fatalf("recover with %q: %v", typed, err)
		}
	}
	if _, err := c.Recover(ctx, id, []byte("cafe creme")); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("another password: %v", err)
	}
}
