package threshold

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testKDF is a cheap Argon2id profile, so that tests can run many
// recoveries (and a dictionary attack); the protocol does not depend on it.
var testKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

const testGuesses = 10

// memStore is one user's record, kept encoded as a real store would keep it
// (so every transition goes through MarshalBinary and UnmarshalRealmRecord).
type memStore struct {
	mu   sync.Mutex
	data []byte // nil: no record
	// failWrites makes every Update that would store a record fail.
	failWrites bool
}

var errStoreDown = errors.New("store: write failed")

func (m *memStore) Update(ctx context.Context, fn func(*RealmRecord) (*RealmRecord, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur *RealmRecord
	if m.data != nil {
		var err error
		if cur, err = UnmarshalRealmRecord(m.data); err != nil {
			return err
		}
	}
	next, err := fn(cur)
	if err != nil || next == nil {
		return err
	}
	if m.failWrites {
		return errStoreDown
	}
	b, err := next.MarshalBinary()
	if err != nil {
		return err
	}
	m.data = b
	return nil
}

// record returns the stored record (a NotRegistered one if none).
func (m *memStore) record(tb testing.TB) *RealmRecord {
	tb.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return &RealmRecord{}
	}
	r, err := UnmarshalRealmRecord(m.data)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

var errDown = errors.New("realm is down")

// testRealm is a Realm over an in-memory RealmServer: every request and
// response is encoded and decoded on the way, as over a network. Hooks can
// take it down or make it misbehave.
type testRealm struct {
	srv  *RealmServer
	st   *memStore
	down atomic.Bool

	// onRequest, if set, sees every request the realm decodes (what a
	// compromised realm observes); onResponse every response the client
	// decodes, before any misbehaviour hook.
	onRequest  func(req any)
	onResponse func(resp any)

	// Misbehaviour: each hook may alter the decoded response before the
	// client sees it.
	onRecover1 func(*Recover1Response)
	onRecover2 func(*Recover2Request, *Recover2Response)
	onRecover3 func(*Recover3Response)

	// serverNanos is the time spent on the realm's side: decoding the
	// request, handling it (with the record's decoding and encoding), and
	// encoding the response.
	serverNanos atomic.Int64
}

type marshaler interface{ MarshalBinary() ([]byte, error) }

func roundTrip[Req, Resp marshaler](ctx context.Context, r *testRealm, req Req,
	decodeReq func([]byte) (Req, error), handle func(context.Context, RecordStore, Req) (Resp, error),
	decodeResp func([]byte) (Resp, error)) (Resp, error) {
	var zero Resp
	if r.down.Load() {
		return zero, errDown
	}
	b, err := req.MarshalBinary()
	if err != nil {
		return zero, err
	}
	start := time.Now()
	dreq, err := decodeReq(b)
	if err != nil {
		return zero, err
	}
	if r.onRequest != nil {
		r.onRequest(dreq)
	}
	resp, err := handle(ctx, r.st, dreq)
	if err != nil {
		return zero, err
	}
	out, err := resp.MarshalBinary()
	r.serverNanos.Add(int64(time.Since(start)))
	if err != nil {
		return zero, err
	}
	dresp, err := decodeResp(out)
	if err == nil && r.onResponse != nil {
		r.onResponse(dresp)
	}
	return dresp, err
}

func (r *testRealm) Register1(ctx context.Context, req *Register1Request) (*Register1Response, error) {
	return roundTrip(ctx, r, req, UnmarshalRegister1Request, r.srv.Register1, UnmarshalRegister1Response)
}

func (r *testRealm) Register2(ctx context.Context, req *Register2Request) (*Register2Response, error) {
	return roundTrip(ctx, r, req, UnmarshalRegister2Request, r.srv.Register2, UnmarshalRegister2Response)
}

func (r *testRealm) Recover1(ctx context.Context, req *Recover1Request) (*Recover1Response, error) {
	resp, err := roundTrip(ctx, r, req, UnmarshalRecover1Request, r.srv.Recover1, UnmarshalRecover1Response)
	if err == nil && r.onRecover1 != nil {
		r.onRecover1(resp)
	}
	return resp, err
}

func (r *testRealm) Recover2(ctx context.Context, req *Recover2Request) (*Recover2Response, error) {
	resp, err := roundTrip(ctx, r, req, UnmarshalRecover2Request, r.srv.Recover2, UnmarshalRecover2Response)
	if err == nil && r.onRecover2 != nil {
		r.onRecover2(req, resp)
	}
	return resp, err
}

func (r *testRealm) Recover3(ctx context.Context, req *Recover3Request) (*Recover3Response, error) {
	resp, err := roundTrip(ctx, r, req, UnmarshalRecover3Request, r.srv.Recover3, UnmarshalRecover3Response)
	if err == nil && r.onRecover3 != nil {
		r.onRecover3(resp)
	}
	return resp, err
}

func (r *testRealm) Delete(ctx context.Context, req *DeleteRequest) (*DeleteResponse, error) {
	return roundTrip(ctx, r, req, UnmarshalDeleteRequest, r.srv.Delete, UnmarshalDeleteResponse)
}

// testEnv is a client and its realms, all in memory.
type testEnv struct {
	cfg     Config
	realms  []*testRealm
	client  *Client
	kdfRuns atomic.Int32
}

func testRealmID(i int) RealmID {
	var id RealmID
	copy(id[:], fmt.Sprintf("realm-%02d-testing", i))
	return id
}

func newEnv(tb testing.TB, n, t int) *testEnv {
	tb.Helper()
	return newEnvKDF(tb, n, t, testKDF)
}

func newEnvKDF(tb testing.TB, n, t int, kdf KDFParams) *testEnv {
	tb.Helper()
	e := &testEnv{cfg: Config{Threshold: t, KDF: kdf, UserInfo: []byte("wabackup/v1/3f9a0c/default")}}
	var transports []Realm
	for i := 1; i <= n; i++ {
		id := testRealmID(i)
		srv, err := NewRealmServer(id, testGuesses)
		if err != nil {
			tb.Fatal(err)
		}
		r := &testRealm{srv: srv, st: &memStore{}}
		e.realms = append(e.realms, r)
		transports = append(transports, r)
		e.cfg.Realms = append(e.cfg.Realms, RealmConfig{ID: id, PublicKey: []byte(fmt.Sprintf("identity key of realm %d", i))})
	}
	c, err := NewClient(e.cfg, transports)
	if err != nil {
		tb.Fatal(err)
	}
	stretch := c.stretch
	c.stretch = func(password []byte, v Version) []byte {
		e.kdfRuns.Add(1)
		return stretch(password, v)
	}
	e.client = c
	return e
}

func randomSecret(tb testing.TB) []byte {
	tb.Helper()
	s := make([]byte, SecretSize)
	if _, err := rand.Read(s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// register registers a fresh secret under password and returns it.
func (e *testEnv) register(tb testing.TB, password string) []byte {
	tb.Helper()
	s := randomSecret(tb)
	if err := e.client.Register(context.Background(), []byte(password), s, testGuesses); err != nil {
		tb.Fatal(err)
	}
	return s
}

func (e *testEnv) recover(password string) (*Recovery, error) {
	return e.client.Recover(context.Background(), []byte(password))
}

// mustRecover recovers with password and checks the secret.
func (e *testEnv) mustRecover(tb testing.TB, password string, want []byte) *Recovery {
	tb.Helper()
	rec, err := e.recover(password)
	if err != nil {
		tb.Fatalf("recover: %v", err)
	}
	if !bytes.Equal(rec.Secret, want) {
		tb.Fatalf("recovered %x, want %x", rec.Secret, want)
	}
	return rec
}

// problemsAt returns the problems reported for realm index (1-based).
func problemsAt(ps []*RealmError, index int) []*RealmError {
	var out []*RealmError
	for _, p := range ps {
		if p.Index == index {
			out = append(out, p)
		}
	}
	return out
}
