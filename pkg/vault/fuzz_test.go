package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// FuzzHandler sends one arbitrary body to each endpoint of the vault's
// JSON API, on a vault holding one registered credential. Whatever the
// body: no panic, no 5xx (a malformed request is the client's fault, and
// the store here is healthy), a non-200 answer is a well-formed api.Error,
// no record is created, and the registered credential still opens with
// its password (one request can cost it at most one of its ten guesses).
func FuzzHandler(f *testing.F) {
	e := newEnv(f, vault.Config{})
	c := e.client(f)
	ctx := context.Background()
	id := api.CredentialID("repo1", "")
	sec := secret32(f)
	if _, _, err := c.Register(ctx, id, []byte("correct horse"), sec, 0); err != nil {
		f.Fatal(err)
	}
	h := e.srv.Handler()
	paths := []string{api.PathRegisterStart, api.PathRegisterFinish, api.PathLoginStart, api.PathLoginFinish,
		api.PathStatus, api.PathChangeStart, api.PathChangeFinish, api.PathDelete}

	seed := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	for i := range paths {
		f.Add(uint8(i), []byte(`{}`))
		f.Add(uint8(i), []byte(`not json`))
	}
	f.Add(uint8(0), seed(api.RegisterStart{CredentialID: id, Request: make([]byte, 32)}))
	f.Add(uint8(1), seed(api.RegisterFinish{CredentialID: id, Token: []byte("t"), Record: make([]byte, 192), Blob: make([]byte, 60), Guesses: 3, State: make([]byte, 300)}))
	f.Add(uint8(2), seed(api.LoginStart{CredentialID: id, KE1: make([]byte, 96)}))
	f.Add(uint8(2), seed(api.LoginStart{CredentialID: []byte("unknown"), KE1: make([]byte, 96)}))
	f.Add(uint8(3), seed(api.LoginFinish{LoginID: make([]byte, 16), KE3: make([]byte, 64)}))
	f.Add(uint8(4), seed(api.Status{CredentialID: id}))
	f.Add(uint8(7), seed(api.Delete{Token: make([]byte, 32)}))

	records := e.srv.CountRecordsForTest()
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		if w.Code >= 500 {
			t.Fatalf("POST %s %q: status %d: %s", path, body, w.Code, w.Body)
		}
		if w.Code != http.StatusOK {
			var ae api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &ae); err != nil || ae.Code == "" {
				t.Fatalf("POST %s %q: status %d with a body that is not an api.Error: %q", path, body, w.Code, w.Body)
			}
		}
		if n := e.srv.CountRecordsForTest(); n != records {
			t.Fatalf("POST %s %q: %d records, want %d", path, body, n, records)
		}
		got, err := c.Recover(ctx, id, []byte("correct horse"))
		if err != nil || !bytes.Equal(got, sec) {
			t.Fatalf("after POST %s %q the credential no longer opens: %v", path, body, err)
		}
	})
}

// FuzzRealmHandler sends one arbitrary body to each endpoint of the realm
// API (version 2), on a vault holding one registration (a 1-of-1 realm
// configuration). Whatever the body: no panic, no 5xx, a non-200 answer
// is a well-formed api.Error, a 200 answer carries a response message that
// decodes as the endpoint's response (or a RealmStatus with a known
// state), and the registration still recovers with its password. (A
// delete of it needs no proof — the realm API, like Juicebox's realms
// without their tenant tokens, lets whoever knows a credential id delete
// it — so after one the test registers again.)
func FuzzRealmHandler(f *testing.F) {
	e := newEnv(f, vault.Config{})
	ctx := context.Background()
	id := api.CredentialID("fuzz", "")
	sec := secret32(f)
	h := e.srv.Handler()
	sent := map[string][]byte{}
	tr := &vaulttest.Realm{Replicas: []vaulttest.Replica{{Handler: h}}, CredentialID: id,
		Observe: func(path string, _, _ int, req, _ []byte) { sent[path] = req }}
	rc, err := tr.Replicas[0].RealmConfig(ctx)
	if err != nil {
		f.Fatal(err)
	}
	c, err := threshold.NewClient(threshold.Config{Realms: []threshold.RealmConfig{rc}, Threshold: 1,
		KDF: threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, UserInfo: id}, []threshold.Realm{tr})
	if err != nil {
		f.Fatal(err)
	}
	register := func(tb testing.TB) {
		if err := c.Register(ctx, []byte("pw"), sec, 10); err != nil {
			tb.Fatal(err)
		}
	}
	register(f)
	if rec, err := c.Recover(ctx, []byte("pw")); err != nil || !bytes.Equal(rec.Secret, sec) {
		f.Fatal(err)
	}
	paths := []string{api.PathRealmRegister1, api.PathRealmRegister2, api.PathRealmRecover1, api.PathRealmRecover2,
		api.PathRealmRecover3, api.PathRealmDelete, api.PathRealmStatus}
	decoders := map[string]func([]byte) error{
		api.PathRealmRegister1: func(b []byte) error { _, err := threshold.UnmarshalRegister1Response(b); return err },
		api.PathRealmRegister2: func(b []byte) error { _, err := threshold.UnmarshalRegister2Response(b); return err },
		api.PathRealmRecover1:  func(b []byte) error { _, err := threshold.UnmarshalRecover1Response(b); return err },
		api.PathRealmRecover2:  func(b []byte) error { _, err := threshold.UnmarshalRecover2Response(b); return err },
		api.PathRealmRecover3:  func(b []byte) error { _, err := threshold.UnmarshalRecover3Response(b); return err },
		api.PathRealmDelete:    func(b []byte) error { _, err := threshold.UnmarshalDeleteResponse(b); return err },
	}
	deleteMsg, _ := (&threshold.DeleteRequest{}).MarshalBinary()
	seed := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	for i, p := range paths {
		f.Add(uint8(i), []byte(`{}`))
		f.Add(uint8(i), []byte(`not json`))
		if m := sent[p]; m != nil {
			f.Add(uint8(i), seed(api.RealmRequest{CredentialID: id, Message: m}))
			f.Add(uint8(i), seed(api.RealmRequest{CredentialID: []byte("unknown"), Message: m}))
		}
	}
	f.Add(uint8(5), seed(api.RealmRequest{CredentialID: []byte("unknown"), Message: deleteMsg}))
	f.Add(uint8(6), seed(api.RealmStatusRequest{CredentialID: id}))

	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		if w.Code >= 500 {
			t.Fatalf("POST %s %q: status %d: %s", path, body, w.Code, w.Body)
		}
		if w.Code != http.StatusOK {
			var ae api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &ae); err != nil || ae.Code == "" {
				t.Fatalf("POST %s %q: status %d with a body that is not an api.Error: %q", path, body, w.Code, w.Body)
			}
		} else if path == api.PathRealmStatus {
			var st api.RealmStatus
			if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil ||
				(st.State != api.RealmNotRegistered && st.State != api.RealmRegistered && st.State != api.RealmNoGuesses) {
				t.Fatalf("POST %s %q: %s (%v)", path, body, w.Body, err)
			}
		} else {
			var rr api.RealmReply
			if err := json.Unmarshal(w.Body.Bytes(), &rr); err != nil {
				t.Fatalf("POST %s %q: %s (%v)", path, body, w.Body, err)
			}
			if err := decoders[path](rr.Message); err != nil {
				t.Fatalf("POST %s %q: the response does not decode: %v", path, body, err)
			}
		}
		rec, err := c.Recover(ctx, []byte("pw"))
		if errors.Is(err, threshold.ErrNotRegistered) && path == api.PathRealmDelete && w.Code == http.StatusOK {
			var req api.RealmRequest
			if json.Unmarshal(body, &req) == nil && bytes.Equal(req.CredentialID, id) {
				register(t)
				return
			}
		}
		if err != nil || !bytes.Equal(rec.Secret, sec) {
			t.Fatalf("after POST %s %q the registration no longer recovers: %v", path, body, err)
		}
	})
}
