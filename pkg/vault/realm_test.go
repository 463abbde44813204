package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/etcdstore"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The realm API (version 2) end to end: pkg/threshold's client talks
// HTTPS to three vaults, each its own realm with its own sealer and store
// (docs/VAULT.md, "The realm API").

// realmKDF is a cheap Argon2id profile: the vault never sees it.
var realmKDF = threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

const realmGuesses = 10

// testRealm is one realm: one vault on a RatchetStore (bbolt) in dir, or
// several instances on one etcd prefix.
type testRealm struct {
	name     string
	replicas []vaulttest.Replica
	servers  []*vault.Server
	// route picks the instance of each request (nil: the first).
	route func(path string) int

	// etcd: the prefix, and the first instance's store
	prefix string
	etcd   *etcdstore.Store

	// bbolt
	dir    string
	sealer ratchetSealer
	st     *vault.RatchetStore
	env    *env

	// observe, if set, sees every request any transport sends to r.
	observe func(path string, request []byte)

	// evaluations counts the recover2 answers with an evaluation (status
	// OK) the realm gave, through any transport of the test, per
	// instance.
	evaluations [3]atomic.Int64
}

func (r *testRealm) evaluated() int64 {
	var n int64
	for i := range r.evaluations {
		n += r.evaluations[i].Load()
	}
	return n
}

// startBoltRealm runs a vault on a RatchetStore in dir, sealed and
// anchored by sealer.
func startBoltRealm(t *testing.T, name, dir string, sealer ratchetSealer) *testRealm {
	t.Helper()
	r := &testRealm{name: name, dir: dir, sealer: sealer, replicas: make([]vaulttest.Replica, 1), servers: make([]*vault.Server, 1)}
	if err := r.start(t); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

func (r *testRealm) start(t *testing.T) error {
	t.Helper()
	st, err := vault.OpenRatchet(filepath.Join(r.dir, "vault.db"), r.sealer)
	if err != nil {
		return err
	}
	r.st = st
	r.env = newEnvStore(t, vault.Config{MaxGuesses: realmGuesses, Sealer: r.sealer}, st)
	r.servers[0] = r.env.srv
	r.replicas[0] = vaulttest.Replica{URL: r.env.ts.URL, Client: r.env.ts.Client()}
	return nil
}

// stop stops a bbolt realm (its address then refuses connections).
func (r *testRealm) stop() {
	if r.st == nil {
		return
	}
	r.env.ts.Close()
	r.env.srv.Close()
	r.st.Close()
	r.st = nil
}

// startEtcdRealm runs n vault instances sharing one prefix of the cluster
// and one sealing key: one realm.
func startEtcdRealm(t *testing.T, c *testservers.EtcdCluster, n int) *testRealm {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	sealer, err := vault.NewKeySealer(key)
	if err != nil {
		t.Fatal(err)
	}
	r := &testRealm{name: "etcd", prefix: "realm-"}
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	r.prefix += hex.EncodeToString(prefix[:])
	for range n {
		st, err := etcdstore.Open(etcdstore.Config{Endpoints: c.Endpoints(), Prefix: r.prefix, RequestTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if r.etcd == nil {
			r.etcd = st
		}
		e := newEnvStore(t, vault.Config{MaxGuesses: realmGuesses, Sealer: sealer}, st)
		r.servers = append(r.servers, e.srv)
		r.replicas = append(r.replicas, vaulttest.Replica{URL: e.ts.URL, Client: e.ts.Client()})
	}
	return r
}

// transport is a threshold.Realm to r for credID, counting evaluations.
func (r *testRealm) transport(credID []byte, route func(path string) int) *vaulttest.Realm {
	if route == nil {
		route = r.route
	}
	return &vaulttest.Realm{Replicas: r.replicas, Route: route, CredentialID: credID,
		Observe: func(path string, i, status int, req, resp []byte) {
			if r.observe != nil {
				r.observe(path, req)
			}
			if path != api.PathRealmRecover2 || status != http.StatusOK {
				return
			}
			if m, err := threshold.UnmarshalRecover2Response(resp); err == nil && m.Status == threshold.StatusOK {
				r.evaluations[i].Add(1)
			}
		}}
}

// status asks every instance of r for credID's record.
func (r *testRealm) status(t *testing.T, credID []byte) []*api.RealmStatus {
	t.Helper()
	tr := r.transport(credID, nil)
	var out []*api.RealmStatus
	for i := range r.replicas {
		st, err := tr.Status(context.Background(), i)
		if err != nil {
			t.Fatalf("realm %s, instance %d: status: %v", r.name, i, err)
		}
		out = append(out, st)
	}
	return out
}

// wantStatus checks credID's status at every instance of every realm.
func wantStatus(t *testing.T, realms []*testRealm, credID []byte, state string, left int) {
	t.Helper()
	for _, r := range realms {
		for i, st := range r.status(t, credID) {
			if st.State != state || st.GuessesLeft != left || st.Limit != realmGuesses {
				t.Fatalf("realm %s, instance %d: status %+v, want %s with %d of %d left", r.name, i, st, state, left, realmGuesses)
			}
		}
	}
}

// realmClient is a threshold client over realms (configured from their
// /v2/info) for credID, threshold 2.
func realmClient(t *testing.T, realms []*testRealm, credID []byte, routes ...func(string) int) *threshold.Client {
	t.Helper()
	cfg := threshold.Config{Threshold: 2, KDF: realmKDF, UserInfo: credID}
	var trs []threshold.Realm
	for k, r := range realms {
		rc, err := r.replicas[0].RealmConfig(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cfg.Realms = append(cfg.Realms, rc)
		var route func(string) int
		if k < len(routes) {
			route = routes[k]
		}
		trs = append(trs, r.transport(credID, route))
	}
	c, err := threshold.NewClient(cfg, trs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// roundRobin sends each request to the next of n instances.
func roundRobin(n int) func(string) int {
	var k atomic.Int64
	return func(string) int { return int(k.Add(1)-1) % n }
}

// serviceProblems returns the problems of a recovery (or of its error)
// that are not protocol outcomes: transport or server errors.
func serviceProblems(rec *threshold.Recovery, err error) []*threshold.RealmError {
	var ps []*threshold.RealmError
	if rec != nil {
		ps = rec.Problems
	}
	var we *threshold.WrongPasswordError
	var qe *threshold.QuorumError
	switch {
	case errors.As(err, &we):
		ps = we.Problems
	case errors.As(err, &qe):
		ps = qe.Problems
	}
	var out []*threshold.RealmError
	for _, p := range ps {
		if !errors.Is(p.Err, threshold.ErrNoGuesses) && !errors.Is(p.Err, threshold.ErrNotRegistered) && !errors.Is(p.Err, threshold.ErrOtherVersion) {
			out = append(out, p)
		}
	}
	return out
}

func recoverOK(t *testing.T, c *threshold.Client, pw string, secret []byte, problems int) *threshold.Recovery {
	t.Helper()
	rec, err := c.Recover(context.Background(), []byte(pw))
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if !bytes.Equal(rec.Secret, secret) {
		t.Fatal("recovered another secret")
	}
	if len(rec.Problems) != problems {
		t.Fatalf("recover: problems %v, want %d", rec.Problems, problems)
	}
	return rec
}

func TestRealmAPI(t *testing.T) {
	top := t // restarted realms live as long as the test, not the subtest
	cluster := testservers.Etcd(t, 3)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startBoltRealm(t, "A (bbolt, SoftHSM2)", dirA, hsmRatchet(t))
	b := startBoltRealm(t, "B (bbolt, file sealer)", dirB, fileRatchet(t, dirB))
	e := startEtcdRealm(t, cluster, 3)
	realms := []*testRealm{a, b, e}
	ctx := context.Background()

	t.Run("info", func(t *testing.T) {
		ids := map[string]bool{}
		for _, r := range realms {
			var first *api.RealmInfo
			for i, rep := range r.replicas {
				in, err := rep.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				id := r.servers[i].RealmID()
				if in.RealmID != hex.EncodeToString(id[:]) || in.Fingerprint != r.servers[i].Fingerprint() ||
					in.Fingerprint != api.Fingerprint(in.PublicKey) || in.MaxGuesses != realmGuesses {
					t.Fatalf("realm %s, instance %d: info %+v", r.name, i, in)
				}
				if first == nil {
					first = in
				} else if in.RealmID != first.RealmID || in.Fingerprint != first.Fingerprint {
					t.Fatalf("realm %s: instance %d is realm %s (%s), instance 0 realm %s (%s)", r.name, i, in.RealmID, in.Fingerprint, first.RealmID, first.Fingerprint)
				}
			}
			ids[first.RealmID] = true
		}
		if len(ids) != 3 {
			t.Fatalf("three vaults, %d realm ids", len(ids))
		}
	})

	t.Run("register and recover", func(t *testing.T) {
		id := api.CredentialID("e2e", "")
		sec := secret32(t)
		c := realmClient(t, realms, id, nil, nil, roundRobin(3))
		wantStatus(t, realms, id, api.RealmNotRegistered, 0)
		if _, err := c.Recover(ctx, []byte("pw")); !errors.Is(err, threshold.ErrNotRegistered) {
			t.Fatalf("recover before registering: %v", err)
		}
		if err := c.Register(ctx, []byte("pw"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
		recoverOK(t, c, "pw", sec, 0)
		wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
		// Another user's records are apart.
		other := realmClient(t, realms, api.CredentialID("e2e", "other"))
		if _, err := other.Recover(ctx, []byte("pw")); !errors.Is(err, threshold.ErrNotRegistered) {
			t.Fatalf("another name: %v", err)
		}
		// Delete at every realm.
		if err := c.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, realms, id, api.RealmNotRegistered, 0)
		if _, err := c.Recover(ctx, []byte("pw")); !errors.Is(err, threshold.ErrNotRegistered) {
			t.Fatalf("recover after the delete: %v", err)
		}
	})

	t.Run("realms down", func(t *testing.T) {
		id := api.CredentialID("down", "")
		sec := secret32(t)
		c := realmClient(t, realms, id)
		if err := c.Register(ctx, []byte("pw"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		idA := a.servers[0].RealmID()
		a.stop()
		rec := recoverOK(t, c, "pw", sec, 1)
		if p := rec.Problems[0]; p.Index != 1 || p.Op != "recover1" {
			t.Fatalf("with A down: problem %v", p)
		}
		// A wrong password is still told apart with a realm down.
		var we *threshold.WrongPasswordError
		if _, err := c.Recover(ctx, []byte("wrong")); !errors.As(err, &we) || we.GuessesLeft != realmGuesses-1 {
			t.Fatalf("wrong password with A down: %v", err)
		}
		b.stop()
		for _, pw := range []string{"pw", "wrong"} {
			var qe *threshold.QuorumError
			if _, err := c.Recover(ctx, []byte(pw)); !errors.As(err, &qe) || qe.Answered != 1 || qe.Needed != 2 || qe.Total != 3 {
				t.Fatalf("%q with A and B down: %v", pw, err)
			}
		}
		if err := a.start(top); err != nil {
			t.Fatal(err)
		}
		if err := b.start(top); err != nil {
			t.Fatal(err)
		}
		if a.servers[0].RealmID() != idA {
			t.Fatal("realm A has another id after a restart")
		}
		// Back: every realm answers, and the right password resets the
		// guess the etcd realm counted while A was down.
		recoverOK(t, c, "pw", sec, 0)
		wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
	})

	t.Run("wrong guesses, reset, no guesses", func(t *testing.T) {
		id := api.CredentialID("guesses", "")
		sec := secret32(t)
		c := realmClient(t, realms, id, nil, nil, roundRobin(3))
		if err := c.Register(ctx, []byte("right"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		key := e.etcd.Key(e.servers[0].RealmKeyForTest(id))
		registered, err := e.etcd.Client().Get(ctx, key)
		if err != nil || len(registered.Kvs) != 1 {
			t.Fatalf("the etcd realm's record %q: %v", key, err)
		}
		before := []int64{a.evaluated(), b.evaluated(), e.evaluated()}
		for k := 1; k <= 3; k++ {
			var we *threshold.WrongPasswordError
			if _, err := c.Recover(ctx, []byte(fmt.Sprint("wrong ", k))); !errors.As(err, &we) || we.GuessesLeft != realmGuesses-k {
				t.Fatalf("wrong guess %d: %v", k, err)
			}
		}
		wantStatus(t, realms, id, api.RealmRegistered, realmGuesses-3)
		recoverOK(t, c, "right", sec, 0)
		wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
		for k := 1; k <= realmGuesses; k++ {
			var we *threshold.WrongPasswordError
			if _, err := c.Recover(ctx, []byte(fmt.Sprint("wrong again ", k))); !errors.As(err, &we) || we.GuessesLeft != realmGuesses-k {
				t.Fatalf("wrong guess %d: %v", k, err)
			}
		}
		// The last guess was counted; until a recover1 or recover2 sees
		// it, the record is registered with none left.
		wantStatus(t, realms, id, api.RealmRegistered, 0)
		if _, err := c.Recover(ctx, []byte("right")); !errors.Is(err, threshold.ErrNoGuesses) {
			t.Fatalf("the right password after %d wrong ones: %v", realmGuesses, err)
		}
		wantStatus(t, realms, id, api.RealmNoGuesses, 0)
		// The etcd realm compacted its history when the registration
		// was erased: no older revision holds its key shares.
		if _, err := e.etcd.Client().Get(ctx, key, clientv3.WithRev(registered.Kvs[0].ModRevision)); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("reading the revision that held the registration: %v, want ErrCompacted", err)
		}
		for k, r := range realms {
			if n := r.evaluated() - before[k]; n != 3+1+realmGuesses {
				t.Fatalf("realm %s gave %d evaluations, want %d", r.name, n, 3+1+realmGuesses)
			}
		}
		// Only a new registration leaves NoGuesses.
		if err := c.Register(ctx, []byte("right"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		recoverOK(t, c, "right", sec, 0)
	})

	t.Run("any replica finishes a recovery", func(t *testing.T) {
		id := api.CredentialID("replicas", "")
		sec := secret32(t)
		if err := realmClient(t, realms, id, nil, nil, roundRobin(3)).Register(ctx, []byte("pw"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		for first := range 3 {
			served := map[string]int{}
			route := func(path string) int {
				i := first
				if path == api.PathRealmRecover3 {
					i = (first + 1) % 3
				}
				served[path] = i
				return i
			}
			c := realmClient(t, realms, id, nil, nil, route)
			recoverOK(t, c, "pw", sec, 0)
			if served[api.PathRealmRecover1] != first || served[api.PathRealmRecover2] != first || served[api.PathRealmRecover3] != (first+1)%3 {
				t.Fatalf("served by %v", served)
			}
			// The reset written by one instance is what the others read.
			if _, err := c.Recover(ctx, []byte("wrong")); !errors.Is(err, threshold.ErrWrongPassword) {
				t.Fatal(err)
			}
			wantStatus(t, realms, id, api.RealmRegistered, realmGuesses-1)
		}
		recoverOK(t, realmClient(t, realms, id, nil, nil, roundRobin(3)), "pw", sec, 0)
	})

	t.Run("concurrent wrong recoveries", func(t *testing.T) {
		id := api.CredentialID("brute", "")
		sec := secret32(t)
		if err := realmClient(t, realms, id).Register(ctx, []byte("the right one"), sec, realmGuesses); err != nil {
			t.Fatal(err)
		}
		before := []int64{a.evaluated(), b.evaluated(), e.evaluated()}
		var perInstance [3]int64
		for i := range perInstance {
			perInstance[i] = e.evaluations[i].Load()
		}
		const clients, each = 16, 4
		spread := roundRobin(3) // recover1 and recover2 of a recovery at different instances
		var wrong, destroyed, quorum atomic.Int64
		var wg sync.WaitGroup
		for w := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := realmClient(t, realms, id, nil, nil, spread)
				for k := range each {
					rec, err := c.Recover(ctx, []byte(fmt.Sprintf("guess %d/%d", w, k)))
					var qe *threshold.QuorumError
					switch {
					case err == nil:
						t.Errorf("a wrong guess recovered the secret")
					case errors.Is(err, threshold.ErrWrongPassword):
						wrong.Add(1)
					case errors.Is(err, threshold.ErrNoGuesses):
						destroyed.Add(1)
					case errors.As(err, &qe):
						quorum.Add(1)
					default:
						t.Errorf("guess %d/%d: %v", w, k, err)
					}
					if ps := serviceProblems(rec, err); len(ps) > 0 {
						t.Errorf("guess %d/%d: a realm failed: %v", w, k, ps)
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("%d recoveries: %d wrong password, %d destroyed, %d short of a quorum; the etcd realm's evaluations per instance: %d %d %d",
			clients*each, wrong.Load(), destroyed.Load(), quorum.Load(),
			e.evaluations[0].Load()-perInstance[0], e.evaluations[1].Load()-perInstance[1], e.evaluations[2].Load()-perInstance[2])
		for k, r := range realms {
			if n := r.evaluated() - before[k]; n != realmGuesses {
				t.Errorf("realm %s gave %d evaluations to %d concurrent wrong recoveries, want exactly its limit %d", r.name, n, clients*each, realmGuesses)
			}
		}
		wantStatus(t, realms, id, api.RealmNoGuesses, 0)
		if _, err := realmClient(t, realms, id).Recover(ctx, []byte("the right one")); !errors.Is(err, threshold.ErrNoGuesses) {
			t.Fatalf("the right password after the limit: %v", err)
		}
	})

	t.Run("sealed at rest", func(t *testing.T) {
		id, other := api.CredentialID("at-rest", ""), api.CredentialID("at-rest", "other")
		sec := secret32(t)
		needles := map[string][]byte{"credential id": id, "secret": sec}
		var mu sync.Mutex // the realms are called concurrently
		for _, r := range realms {
			r.observe = func(path string, req []byte) {
				if path != api.PathRealmRegister2 {
					return
				}
				m, err := threshold.UnmarshalRegister2Request(req)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				needles[r.name+"'s OPRF key share"] = m.OPRFKeyShare[:]
				needles[r.name+"'s encryption-key share"] = m.EncryptionKeyScalarShare[:]
				needles[r.name+"'s unlock tag"] = m.UnlockKeyTag[:]
				needles[r.name+"'s encrypted secret"] = m.EncryptedSecret[:]
			}
		}
		err := realmClient(t, realms, id).Register(ctx, []byte("pw"), sec, realmGuesses)
		for _, r := range realms {
			r.observe = nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := realmClient(t, realms, other).Register(ctx, []byte("pw"), secret32(t), realmGuesses); err != nil {
			t.Fatal(err)
		}
		check := func(where string, data []byte) {
			for what, b := range needles {
				if bytes.Contains(data, b) {
					t.Errorf("%s holds the %s in the clear", where, what)
				}
			}
		}
		for _, r := range []*testRealm{a, b} {
			check(r.name+"'s vault.db", readFile(t, filepath.Join(r.dir, "vault.db")))
		}
		resp, err := e.etcd.Client().Get(ctx, e.prefix+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		realmKeys := 0
		for _, kv := range resp.Kvs {
			check("etcd key "+string(kv.Key), append(append([]byte(nil), kv.Key...), kv.Value...))
			if bytes.HasPrefix(kv.Key, []byte(e.prefix+"/realm/")) {
				realmKeys++
				if _, err := threshold.UnmarshalRealmRecord(kv.Value); err == nil {
					t.Errorf("etcd key %q holds a realm record in the clear", kv.Key)
				}
			}
		}
		if realmKeys == 0 {
			t.Fatal("no realm record in etcd")
		}
		// A sealed record is bound to its key: moved to another
		// credential's key it does not open.
		k, ko := e.etcd.Key(e.servers[0].RealmKeyForTest(id)), e.etcd.Key(e.servers[0].RealmKeyForTest(other))
		got, err := e.etcd.Client().Get(ctx, k)
		if err != nil || len(got.Kvs) != 1 {
			t.Fatalf("%q: %v", k, err)
		}
		if _, err := e.etcd.Client().Put(ctx, ko, string(got.Kvs[0].Value)); err != nil {
			t.Fatal(err)
		}
		var se *vaulttest.StatusError
		if _, err := e.transport(other, nil).Status(ctx, 0); !errors.As(err, &se) || se.Status != http.StatusInternalServerError {
			t.Fatalf("status of a record moved from another credential: %v, want 500", err)
		}
		if _, err := realmClient(t, realms, other).Recover(ctx, []byte("pw")); err != nil {
			t.Fatalf("recovering through the two other realms: %v", err)
		}
	})

	t.Run("refused requests", func(t *testing.T) {
		id := api.CredentialID("refused", "")
		// Capture a valid registration for realm B, to send to A.
		var reg2 []byte
		trB := b.transport(id, nil)
		trB.Observe = func(path string, _, _ int, req, _ []byte) {
			if path == api.PathRealmRegister2 {
				reg2 = req
			}
		}
		cfg := threshold.Config{Threshold: 1, KDF: realmKDF, UserInfo: id}
		rc, err := b.replicas[0].RealmConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Realms = []threshold.RealmConfig{rc}
		cb, err := threshold.NewClient(cfg, []threshold.Realm{trB})
		if err != nil {
			t.Fatal(err)
		}
		if err := cb.Register(ctx, []byte("pw"), secret32(t), realmGuesses); err != nil {
			t.Fatal(err)
		}
		recover1, _ := (&threshold.Recover1Request{}).MarshalBinary()
		trA := a.transport(id, nil)
		for _, c := range []struct {
			name    string
			path    string
			message []byte
		}{
			{"B's registration at A (signed for another realm id)", api.PathRealmRegister2, reg2},
			{"a recover1 request as recover2", api.PathRealmRecover2, recover1},
			{"a truncated registration", api.PathRealmRegister2, reg2[:len(reg2)-1]},
			{"no message", api.PathRealmRecover1, nil},
			{"a recover1 with a byte too many", api.PathRealmRecover1, append(recover1, 0)},
		} {
			_, err := trA.Post(ctx, c.path, c.message)
			var se *vaulttest.StatusError
			if !errors.As(err, &se) || se.Status != http.StatusBadRequest || se.Body.Code != api.CodeBadRequest {
				t.Errorf("%s: %v, want 400 bad_request", c.name, err)
			}
		}
		wantStatus(t, []*testRealm{a}, id, api.RealmNotRegistered, 0)
		for _, body := range []string{`not json`, `{"credential_id":"","message":"BQ=="}`, `{"message":"BQ=="}`} {
			for _, path := range []string{api.PathRealmRecover1, api.PathRealmStatus} {
				code, resp, err := a.replicas[0].Post(ctx, path, []byte(body))
				var ae api.Error
				if err != nil || code != http.StatusBadRequest || json.Unmarshal(resp, &ae) != nil || ae.Code != api.CodeBadRequest {
					t.Errorf("%s %s: %d %s (%v), want 400 bad_request", path, body, code, resp, err)
				}
			}
		}
		// Outside the channel, or in a channel message made for another
		// path or another key, nothing is read: 400, outside the channel.
		rep := a.replicas[0]
		in, err := rep.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := json.Marshal(api.RealmRequest{CredentialID: id, Message: recover1})
		_, otherKey, _ := noise.Ristretto255.Generate(rand.Reader)
		forPath := func(path string, key []byte) []byte {
			m, _, err := noise.WriteRequest(noise.Ristretto255, key, api.RealmPrologue(path), plain, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		for name, body := range map[string][]byte{
			"plain JSON":            plain,
			"a message for status":  forPath(api.PathRealmStatus, in.PublicKey),
			"a message for another": forPath(api.PathRealmRecover1, otherKey),
			"an empty body":         nil,
		} {
			code, resp, ctype, err := rep.PostRaw(ctx, api.PathRealmRecover1, api.RealmChannelType, body)
			var ae api.Error
			if err != nil || code != http.StatusBadRequest || ctype == api.RealmChannelType || json.Unmarshal(resp, &ae) != nil || ae.Code != api.CodeBadRequest {
				t.Errorf("%s: %d %q %s (%v), want 400 bad_request outside the channel", name, code, ctype, resp, err)
			}
		}
		if code, _, ctype, err := rep.PostRaw(ctx, api.PathRealmRecover1, api.RealmChannelType, forPath(api.PathRealmRecover1, in.PublicKey)); err != nil || code != http.StatusOK || ctype != api.RealmChannelType {
			t.Errorf("a channel message for recover1: %d %q %v", code, ctype, err)
		}
	})
}

// The realm endpoints are rate limited per client like version 1's.
func TestRealmRateLimited(t *testing.T) {
	e := newEnv(t, vault.Config{RatePerSecond: 0.001, RateBurst: 2})
	r := &vaulttest.Realm{Replicas: []vaulttest.Replica{{URL: e.ts.URL, Client: e.ts.Client()}}, CredentialID: []byte("limited")}
	ctx := context.Background()
	msg, _ := (&threshold.Recover1Request{}).MarshalBinary()
	for range 2 {
		if _, err := r.Post(ctx, api.PathRealmRecover1, msg); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.Post(ctx, api.PathRealmRecover1, msg)
	var se *vaulttest.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusTooManyRequests || se.Body.Code != api.CodeRateLimited {
		t.Fatalf("third request within the burst of 2: %v", err)
	}
	if _, err := r.Status(ctx, 0); !errors.As(err, &se) || se.Status != http.StatusTooManyRequests {
		t.Fatalf("status past the limit: %v", err)
	}
}

// A storage writer without the HSM cannot buy guesses at a realm on bbolt
// by putting back an older copy of its record (attempts at 0), byte for
// byte, nor the whole older vault.db (as TestRollbackGivesNoGuesses for
// version 1): the realm answers nothing from the record, the other realms
// keep counting, and a new registration replaces it.
func TestRealmRollbackGivesNoGuesses(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			dirA, dirB, dirC := t.TempDir(), t.TempDir(), t.TempDir()
			a := startBoltRealm(t, "A", dirA, ratchetFor(t, withHSM, dirA))
			b := startBoltRealm(t, "B", dirB, fileRatchet(t, dirB))
			c3 := startBoltRealm(t, "C", dirC, fileRatchet(t, dirC))
			realms := []*testRealm{a, b, c3}
			ctx := context.Background()
			id := api.CredentialID("rollback", "")
			sec := secret32(t)
			c := realmClient(t, realms, id)
			if err := c.Register(ctx, []byte("right"), sec, realmGuesses); err != nil {
				t.Fatal(err)
			}
			// A's own recover2 and recover3 requests, to replay at it later.
			sent := map[string][]byte{}
			a.observe = func(path string, req []byte) { sent[path] = req }
			recoverOK(t, c, "right", sec, 0)
			a.observe = nil
			if sent[api.PathRealmRecover2] == nil || sent[api.PathRealmRecover3] == nil {
				t.Fatal("no recover2 or recover3 request captured")
			}
			a.stop()
			db, backup := filepath.Join(dirA, "vault.db"), filepath.Join(t.TempDir(), "backup.db")
			copyFile(t, db, backup) // the record with no guess counted
			if err := a.start(t); err != nil {
				t.Fatal(err)
			}
			for k := 1; k <= 4; k++ {
				var we *threshold.WrongPasswordError
				if _, err := c.Recover(ctx, []byte(fmt.Sprint("wrong ", k))); !errors.As(err, &we) || we.GuessesLeft != realmGuesses-k {
					t.Fatalf("wrong guess %d: %v", k, err)
				}
			}
			wantStatus(t, realms, id, api.RealmRegistered, realmGuesses-4)
			a.stop()

			// The older record, byte for byte, over the current one.
			if n := putBackValues(t, backup, db); n == 0 {
				t.Fatal("nothing to put back")
			}
			if err := a.start(t); err != nil {
				t.Fatalf("the vault does not start after a record was put back: %v", err)
			}
			evaluated := a.evaluated()
			recover1, _ := (&threshold.Recover1Request{}).MarshalBinary()
			for path, msg := range map[string][]byte{
				api.PathRealmRecover1: recover1,
				api.PathRealmRecover2: sent[api.PathRealmRecover2],
				api.PathRealmRecover3: sent[api.PathRealmRecover3],
			} {
				resp, err := a.transport(id, nil).Post(ctx, path, msg)
				var se *vaulttest.StatusError
				if !errors.As(err, &se) || se.Status != http.StatusInternalServerError {
					t.Fatalf("%s answered from a put-back record: %x, %v", path, resp, err)
				}
			}
			if st, err := a.transport(id, nil).Status(ctx, 0); err == nil {
				t.Fatalf("status answered from a put-back record: %+v", st)
			}
			var we *threshold.WrongPasswordError
			if _, err := c.Recover(ctx, []byte("wrong 5")); !errors.As(err, &we) || we.GuessesLeft != realmGuesses-5 ||
				len(we.Problems) != 1 || we.Problems[0].Index != 1 {
				t.Fatalf("a wrong password with A's record put back: %v", err)
			}
			recoverOK(t, c, "right", sec, 1)
			if n := a.evaluated() - evaluated; n != 0 {
				t.Fatalf("%d evaluations from the put-back record", n)
			}
			// A new registration replaces the record that does not open.
			if err := c.Register(ctx, []byte("right"), sec, realmGuesses); err != nil {
				t.Fatalf("registering again over the put-back record: %v", err)
			}
			recoverOK(t, c, "right", sec, 0)
			wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
			a.stop()

			// The whole older file.
			copyFile(t, backup, db)
			if _, err := vault.OpenRatchet(db, a.sealer); err == nil {
				t.Fatal("the store opened from an older copy of vault.db")
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
