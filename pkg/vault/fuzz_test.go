package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
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
