package vaulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Replica is one vault instance's realm API: an HTTPS base URL with its
// client, or a handler called directly (benchmarks). Key is the vault's
// public key, the realm channel's (api.RealmChannelType); if nil, Post
// asks /v2/info for it each time.
type Replica struct {
	URL     string
	Client  *http.Client
	Handler http.Handler
	Key     []byte
}

// Post sends body to path inside the realm channel and returns the
// answer's status and body, read from the channel; an answer outside it
// (the vault refused the channel message, or rate-limited it) is returned
// as it came.
func (r Replica) Post(ctx context.Context, path string, body []byte) (int, []byte, error) {
	key := r.Key
	if key == nil {
		in, err := r.Info(ctx)
		if err != nil {
			return 0, nil, err
		}
		key = in.PublicKey
	}
	msg, open, err := Seal(key, path, body)
	if err != nil {
		return 0, nil, err
	}
	code, resp, ctype, err := r.PostRaw(ctx, path, api.RealmChannelType, msg)
	if err != nil {
		return 0, nil, err
	}
	return open(code, ctype, resp)
}

// Seal makes the realm-channel message carrying body to path at the vault
// whose key is key, and the function that reads its answer (status,
// content type, body): an answer in the channel is opened, one outside
// it returned as it came.
func Seal(key []byte, path string, body []byte) ([]byte, func(int, string, []byte) (int, []byte, error), error) {
	msg, hs, err := noise.WriteRequest(noise.Ristretto255, key, api.RealmPrologue(path), body, rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return msg, func(code int, ctype string, resp []byte) (int, []byte, error) {
		if code != http.StatusOK || ctype != api.RealmChannelType {
			return code, resp, nil
		}
		pt, err := hs.ReadResponse(resp)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: the answer is not from the vault's key: %w", path, err)
		}
		code, b, err := api.UnmarshalRealmAnswer(pt)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", path, err)
		}
		return code, b, nil
	}, nil
}

// PostRaw sends body to path as it is, with the content type ctype, and
// returns the answer's status, body and content type.
func (r Replica) PostRaw(ctx context.Context, path, ctype string, body []byte) (int, []byte, string, error) {
	if r.Handler != nil {
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:1"
		req.Header.Set("Content-Type", ctype)
		w := httptest.NewRecorder()
		r.Handler.ServeHTTP(w, req)
		return w.Code, w.Body.Bytes(), w.Header().Get("Content-Type"), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := r.Client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header.Get("Content-Type"), err
}

// Info fetches GET /v2/info.
func (r Replica) Info(ctx context.Context) (*api.RealmInfo, error) {
	var code int
	var body []byte
	if r.Handler != nil {
		w := httptest.NewRecorder()
		r.Handler.ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodGet, api.PathRealmInfo, nil))
		code, body = w.Code, w.Body.Bytes()
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+api.PathRealmInfo, nil)
		if err != nil {
			return nil, err
		}
		resp, err := r.Client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		code = resp.StatusCode
		if body, err = io.ReadAll(resp.Body); err != nil {
			return nil, err
		}
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", api.PathRealmInfo, code, body)
	}
	var in api.RealmInfo
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, err
	}
	return &in, nil
}

// RealmConfig returns the realm's entry of a threshold.Config, from
// /v2/info.
func (r Replica) RealmConfig(ctx context.Context) (threshold.RealmConfig, error) {
	in, err := r.Info(ctx)
	if err != nil {
		return threshold.RealmConfig{}, err
	}
	var rc threshold.RealmConfig
	id, err := hex.DecodeString(in.RealmID)
	if err != nil || len(id) != len(rc.ID) {
		return rc, fmt.Errorf("realm id %q", in.RealmID)
	}
	copy(rc.ID[:], id)
	rc.PublicKey = in.PublicKey
	return rc, nil
}

// StatusError is a non-200 answer of the realm API.
type StatusError struct {
	Path   string
	Status int
	Body   api.Error
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.Path, e.Status, e.Body.Code, e.Body.Message)
}

// Realm is a threshold.Realm over the realm API of one vault, for tests
// and benchmarks (the CLI has its own, in pkg/vaultclient): each request
// goes to one of Replicas, as Route picks (nil: the first), for the user
// CredentialID. Observe, if set, sees every exchange that got an answer.
type Realm struct {
	Replicas     []Replica
	Route        func(path string) int
	CredentialID []byte
	Observe      func(path string, replica int, status int, request, response []byte)

	mu sync.Mutex
}

// Post sends one realm request (message: a pkg/threshold request) and
// returns the response message; a non-200 answer is a *StatusError.
func (r *Realm) Post(ctx context.Context, path string, message []byte) ([]byte, error) {
	i := 0
	if r.Route != nil {
		i = r.Route(path)
	}
	body, _ := json.Marshal(api.RealmRequest{CredentialID: r.CredentialID, Message: message})
	code, resp, err := r.replica(ctx, i).Post(ctx, path, body)
	if err != nil {
		return nil, err
	}
	var out api.RealmReply
	if code == http.StatusOK {
		if err := json.Unmarshal(resp, &out); err != nil {
			return nil, fmt.Errorf("%s: malformed answer %q: %v", path, resp, err)
		}
	}
	if r.Observe != nil {
		r.mu.Lock()
		r.Observe(path, i, code, message, out.Message)
		r.mu.Unlock()
	}
	if code != http.StatusOK {
		se := &StatusError{Path: path, Status: code}
		if err := json.Unmarshal(resp, &se.Body); err != nil {
			return nil, fmt.Errorf("%s: %d with a body that is not an api.Error: %q", path, code, resp)
		}
		return nil, se
	}
	return out.Message, nil
}

// replica returns Replicas[i] with its Key, which it asks /v2/info for
// the first time.
func (r *Realm) replica(ctx context.Context, i int) Replica {
	r.mu.Lock()
	rep := r.Replicas[i]
	r.mu.Unlock()
	if rep.Key != nil {
		return rep
	}
	if in, err := rep.Info(ctx); err == nil {
		r.mu.Lock()
		r.Replicas[i].Key = in.PublicKey
		rep = r.Replicas[i]
		r.mu.Unlock()
	}
	return rep
}

func exchange[Resp any](ctx context.Context, r *Realm, path string, req encoding.BinaryMarshaler, dec func([]byte) (*Resp, error)) (*Resp, error) {
	b, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	m, err := r.Post(ctx, path, b)
	if err != nil {
		return nil, err
	}
	return dec(m)
}

// Register1 implements threshold.Realm.
func (r *Realm) Register1(ctx context.Context, req *threshold.Register1Request) (*threshold.Register1Response, error) {
	return exchange(ctx, r, api.PathRealmRegister1, req, threshold.UnmarshalRegister1Response)
}

// Register2 implements threshold.Realm.
func (r *Realm) Register2(ctx context.Context, req *threshold.Register2Request) (*threshold.Register2Response, error) {
	return exchange(ctx, r, api.PathRealmRegister2, req, threshold.UnmarshalRegister2Response)
}

// Recover1 implements threshold.Realm.
func (r *Realm) Recover1(ctx context.Context, req *threshold.Recover1Request) (*threshold.Recover1Response, error) {
	return exchange(ctx, r, api.PathRealmRecover1, req, threshold.UnmarshalRecover1Response)
}

// Recover2 implements threshold.Realm.
func (r *Realm) Recover2(ctx context.Context, req *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	return exchange(ctx, r, api.PathRealmRecover2, req, threshold.UnmarshalRecover2Response)
}

// Recover3 implements threshold.Realm.
func (r *Realm) Recover3(ctx context.Context, req *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	return exchange(ctx, r, api.PathRealmRecover3, req, threshold.UnmarshalRecover3Response)
}

// Delete implements threshold.Realm.
func (r *Realm) Delete(ctx context.Context, req *threshold.DeleteRequest) (*threshold.DeleteResponse, error) {
	return exchange(ctx, r, api.PathRealmDelete, req, threshold.UnmarshalDeleteResponse)
}

// Status asks POST /v2/status of replica i.
func (r *Realm) Status(ctx context.Context, i int) (*api.RealmStatus, error) {
	body, _ := json.Marshal(api.RealmStatusRequest{CredentialID: r.CredentialID})
	code, resp, err := r.replica(ctx, i).Post(ctx, api.PathRealmStatus, body)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		se := &StatusError{Path: api.PathRealmStatus, Status: code}
		_ = json.Unmarshal(resp, &se.Body)
		return nil, se
	}
	var st api.RealmStatus
	if err := json.Unmarshal(resp, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
