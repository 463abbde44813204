// Package realmtest is a stand-in for the vault's realm API (API version
// 2) while the vault does not serve it yet: an HTTPS server wrapping
// threshold.RealmServer over records kept in memory. It exists only to
// develop the client against; the tests switch to real wabackup-vault
// processes once the vault serves the realm API, and this package goes.
package realmtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"context"

	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Server is one realm.
type Server struct {
	URL    string
	CACert string // PEM file of the server's certificate
	ID     threshold.RealmID
	Key    []byte // the "public key" /v2/info announces

	ts   *httptest.Server
	srv  *threshold.RealmServer
	mu   sync.Mutex
	recs map[string][]byte
}

type store struct {
	s  *Server
	id string
}

func (st store) Update(ctx context.Context, fn func(*threshold.RealmRecord) (*threshold.RealmRecord, error)) error {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	var cur *threshold.RealmRecord
	if b := st.s.recs[st.id]; b != nil {
		var err error
		if cur, err = threshold.UnmarshalRealmRecord(b); err != nil {
			return err
		}
	}
	next, err := fn(cur)
	if err != nil || next == nil {
		return err
	}
	b, err := next.MarshalBinary()
	if err != nil {
		return err
	}
	st.s.recs[st.id] = b
	return nil
}

// Start runs a realm allowing maxGuesses guesses.
func Start(t testing.TB, maxGuesses int) *Server {
	t.Helper()
	s := &Server{recs: map[string][]byte{}}
	rand.Read(s.ID[:])
	s.Key, _, _ = ed25519.GenerateKey(rand.Reader)
	var err error
	if s.srv, err = threshold.NewRealmServer(s.ID, maxGuesses); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathRealmInfo, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.RealmInfo{RealmID: hex.EncodeToString(s.ID[:]), PublicKey: s.Key, Fingerprint: api.Fingerprint(s.Key), MaxGuesses: maxGuesses})
	})
	mux.HandleFunc("POST "+api.PathRealmStatus, func(w http.ResponseWriter, r *http.Request) {
		var req api.RealmStatusRequest
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			writeJSON(w, 400, api.Error{Code: api.CodeBadRequest, Message: "bad body"})
			return
		}
		s.mu.Lock()
		b := s.recs[string(req.CredentialID)]
		s.mu.Unlock()
		st := api.RealmStatus{State: api.RealmNotRegistered, Limit: maxGuesses}
		if b != nil {
			rec, _ := threshold.UnmarshalRealmRecord(b)
			switch rec.State() {
			case threshold.StateRegistered:
				st.State, st.GuessesLeft = api.RealmRegistered, rec.GuessesLeft()
			case threshold.StateNoGuesses:
				st.State = api.RealmNoGuesses
			}
		}
		writeJSON(w, 200, st)
	})
	handle := func(path string, fn func(ctx context.Context, st store, msg []byte) (interface{ MarshalBinary() ([]byte, error) }, error)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			var req api.RealmRequest
			body, _ := io.ReadAll(r.Body)
			if json.Unmarshal(body, &req) != nil || len(req.CredentialID) == 0 {
				writeJSON(w, 400, api.Error{Code: api.CodeBadRequest, Message: "bad body"})
				return
			}
			resp, err := fn(r.Context(), store{s, string(req.CredentialID)}, req.Message)
			if err != nil {
				code := 500
				if errors.Is(err, threshold.ErrInvalidMessage) || errors.Is(err, threshold.ErrInvalidRequest) {
					code = 400
				}
				writeJSON(w, code, api.Error{Code: api.CodeBadRequest, Message: err.Error()})
				return
			}
			b, _ := resp.MarshalBinary()
			writeJSON(w, 200, api.RealmReply{Message: b})
		})
	}
	type bm = interface{ MarshalBinary() ([]byte, error) }
	handle(api.PathRealmRegister1, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalRegister1Request(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Register1(ctx, st, q)
	})
	handle(api.PathRealmRegister2, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalRegister2Request(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Register2(ctx, st, q)
	})
	handle(api.PathRealmRecover1, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalRecover1Request(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Recover1(ctx, st, q)
	})
	handle(api.PathRealmRecover2, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalRecover2Request(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Recover2(ctx, st, q)
	})
	handle(api.PathRealmRecover3, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalRecover3Request(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Recover3(ctx, st, q)
	})
	handle(api.PathRealmDelete, func(ctx context.Context, st store, m []byte) (bm, error) {
		q, err := threshold.UnmarshalDeleteRequest(m)
		if err != nil {
			return nil, err
		}
		return s.srv.Delete(ctx, st, q)
	})
	s.ts = httptest.NewUnstartedServer(mux)
	s.ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	s.ts.StartTLS()
	t.Cleanup(s.ts.Close)
	s.URL = s.ts.URL
	s.CACert = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(s.CACert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// Client returns an HTTP client that trusts the server.
func (s *Server) Client() *http.Client { return s.ts.Client() }

// Stop closes the server (requests fail to connect).
func (s *Server) Stop() { s.ts.Close() }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
