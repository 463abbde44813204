package etcdstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// Issue 23, section 4, on etcd: the hostile-store suite of
// pkg/vault/hostile_storage_test.go (TestHostileStorage, every object
// kind × every mutation on bbolt) for a subset of rows on a real
// 3-member cluster, where a writer of the prefix changes the storage
// under running instances (which follow each other's commits by a
// watch) as well as before a new one starts.
//
// Two instances serve the realm (v1 and realm API) with guess limit 4:
// alice and bob with records and wrong guesses counted, carol whose
// records guessing destroyed, eve an unknown credential counted. Beside
// it, another site's prefix on the same HSM cluster (sealer). After each
// mutation: every user's status, a wrong password and the right one at
// the running instances (v1 at one, the realm API at the other), then a
// new instance started and the same at it. Classes as on bbolt, per
// running instances and new instance, plus "refuses every request" (the
// key table does not open). In every row: no answer gives a guess back
// (the checks of the bbolt suite), a row that refuses everything leaves
// the current state recoverable (put back, the running instances serve
// it and a new one starts), and the other site still starts.
//
// Covered elsewhere and not run again: TestEtcdRollbackGivesNoGuesses
// (every v1 record put back from before 4 wrong guesses, at two
// instances; the whole prefix put back), TestEtcdDestroyedRecordStaysGone
// (a destroyed record put back), TestEtcdPreUpgradeCopyGivesNoGuesses
// (a prefix from before the key table upgrade, with and without the
// table's id).

type etcdClass string

const (
	ecStart    etcdClass = "refuses to start"
	ecAll      etcdClass = "refuses every request"
	ecRequests etcdClass = "refuses the users' requests"
	ecServes   etcdClass = "serves, no guess back"
	ecNewVault etcdClass = "another vault: pinned clients refuse"
	ecCovered  etcdClass = "covered by another test"
)

const hostileLimit = 4

var hostileKDF = threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

type ehUser struct {
	name            string
	cred            []byte
	pw              string
	secret, rsecret []byte
	v1Key, realmKey string // etcd keys of the values
}

type ehModel struct {
	v1Real    bool
	v1Left    int
	realm     string
	realmLeft int
}

type etcdHostile struct {
	s, other   *site
	epochDir   string
	prefix     string
	look       *clientv3.Client
	ins        []*instance
	otherIn    []*instance
	fp         string
	rc         threshold.RealmConfig
	users      []*ehUser
	model      map[string]ehModel
	s0, s1     map[string][]byte
	otherSnap  map[string][]byte
	epochSnap  map[string][]byte
	otherCred  []byte
	evals      atomic.Int64
	guessBacks int
}

func (h *etcdHostile) user(name string) *ehUser {
	for _, u := range h.users {
		if u.name == name {
			return u
		}
	}
	panic(name)
}

// stop stops an instance (its cleanup stops it again, harmlessly).
func stopInstance(in *instance) {
	in.ts.Close()
	in.srv.Close()
	in.rs.Close()
	in.store.Close()
}

func (h *etcdHostile) v1Client(t *testing.T, in *instance) *vaultclient.Client {
	t.Helper()
	c, err := vaultclient.New(in.ts.URL, vaultclient.Options{HTTPClient: in.ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-", Pin: h.fp})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// realm is u's transport to in, pinned to the realm's key, counting the
// evaluations it returns.
func (h *etcdHostile) realm(in *instance, u *ehUser) *vaulttest.Realm {
	return &vaulttest.Realm{Replicas: []vaulttest.Replica{{URL: in.ts.URL, Client: in.ts.Client(), Key: h.rc.PublicKey}}, CredentialID: u.cred,
		Observe: func(path string, _, status int, _, resp []byte) {
			if path != api.PathRealmRecover2 || status != http.StatusOK {
				return
			}
			if m, err := threshold.UnmarshalRecover2Response(resp); err == nil && m.Status == threshold.StatusOK {
				h.evals.Add(1)
			}
		}}
}

func (h *etcdHostile) realmClient(t *testing.T, in *instance, u *ehUser) (*threshold.Client, *vaulttest.Realm) {
	t.Helper()
	tr := h.realm(in, u)
	c, err := threshold.NewClient(threshold.Config{Threshold: 1, KDF: hostileKDF, UserInfo: u.cred, Realms: []threshold.RealmConfig{h.rc}}, []threshold.Realm{tr})
	if err != nil {
		t.Fatal(err)
	}
	return c, tr
}

func vKeys(snap map[string][]byte, prefix string) []string {
	var ks []string
	for k := range snap {
		if strings.HasPrefix(k, prefix+"ratchet/v/") {
			ks = append(ks, k)
		}
	}
	return ks
}

// added returns the one value key in after that is not in before.
func added(t *testing.T, before, after []string) string {
	t.Helper()
	var out []string
	for _, k := range after {
		if !slices.Contains(before, k) {
			out = append(out, k)
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d new values, want 1: %q", len(out), out)
	}
	return out[0]
}

// buildEtcdHostile makes the world on c; with softHSM its sealer is a
// SoftHSM2 token (else the file sealer in a directory, whose epoch keys
// reset puts back).
func buildEtcdHostile(t *testing.T, c *testservers.EtcdCluster, softHSM bool) *etcdHostile {
	t.Helper()
	ctx := context.Background()
	h := &etcdHostile{s: newSite(t, c, vault.Config{MaxGuesses: hostileLimit})}
	if softHSM {
		h.s.withSoftHSM(t)
	} else {
		dir := t.TempDir()
		fs, err := vault.OpenFileSealer(filepath.Join(dir, "seal.key"), true)
		if err != nil {
			t.Fatal(err)
		}
		h.s.sealer, h.epochDir = fs, filepath.Join(dir, "epoch")
	}
	h.prefix = h.s.prefix + "/"
	h.other = newSite(t, c, vault.Config{MaxGuesses: hostileLimit})
	h.other.sealer = h.s.sealer // another vault on the same HSM cluster
	oin, err := h.other.start(t)
	if err != nil {
		t.Fatal(err)
	}
	h.otherCred = api.CredentialID("hostile-other", "")
	if _, _, err := oin.client(t).Register(ctx, h.otherCred, []byte("pw"), secret32(), 0); err != nil {
		t.Fatal(err)
	}
	stopInstance(oin)

	h.ins = h.s.instances(t, 2)
	look := openStore(t, c, h.s.prefix, h.s.timeout)
	t.Cleanup(func() { look.Close() })
	h.look = look.Client()
	h.fp = h.ins[0].srv.Fingerprint()
	if h.rc, err = (vaulttest.Replica{URL: h.ins[0].ts.URL, Client: h.ins[0].ts.Client()}).RealmConfig(ctx); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"alice", "bob", "carol", "eve"} {
		u := &ehUser{name: name, cred: api.CredentialID("hostile-"+name, "")}
		h.users = append(h.users, u)
		if name == "eve" {
			continue
		}
		u.pw, u.secret, u.rsecret = "right "+name, secret32(), secret32()
		before := vKeys(snapshot(t, h.look, h.prefix), h.prefix)
		if _, _, err := h.v1Client(t, h.ins[i%2]).Register(ctx, u.cred, []byte(u.pw), u.secret, 0); err != nil {
			t.Fatal(err)
		}
		mid := vKeys(snapshot(t, h.look, h.prefix), h.prefix)
		u.v1Key = added(t, before, mid)
		rc, _ := h.realmClient(t, h.ins[(i+1)%2], u)
		if err := rc.Register(ctx, []byte(u.pw), u.rsecret, hostileLimit); err != nil {
			t.Fatal(err)
		}
		u.realmKey = added(t, mid, vKeys(snapshot(t, h.look, h.prefix), h.prefix))
	}
	h.s0 = snapshot(t, h.look, h.prefix)
	wrong := func(u *ehUser, v1, realm int) {
		for k := range v1 {
			if _, err := h.v1Client(t, h.ins[k%2]).Recover(ctx, u.cred, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
				t.Fatalf("%s: v1 wrong guess: %v", u.name, err)
			}
		}
		for k := range realm {
			rc, _ := h.realmClient(t, h.ins[k%2], u)
			if _, err := rc.Recover(ctx, []byte("wrong")); !errors.Is(err, threshold.ErrWrongPassword) && (k < hostileLimit || !errors.Is(err, threshold.ErrNoGuesses)) {
				t.Fatalf("%s: realm wrong guess %d: %v", u.name, k+1, err)
			}
		}
	}
	wrong(h.user("alice"), 2, 2)
	wrong(h.user("bob"), 1, 1)
	wrong(h.user("carol"), hostileLimit, hostileLimit+1)
	before := vKeys(snapshot(t, h.look, h.prefix), h.prefix)
	wrong(h.user("eve"), 1, 0)
	h.user("eve").v1Key = added(t, before, vKeys(snapshot(t, h.look, h.prefix), h.prefix))
	h.user("eve").realmKey = h.user("alice").realmKey[:len(h.prefix+"ratchet/v/realm/")] + strings.Repeat("e", 32) // none
	h.model = map[string]ehModel{
		"alice": {v1Real: true, v1Left: 2, realm: api.RealmRegistered, realmLeft: 2},
		"bob":   {v1Real: true, v1Left: 3, realm: api.RealmRegistered, realmLeft: 3},
		"carol": {realm: api.RealmNoGuesses},
		"eve":   {v1Left: hostileLimit - 1, realm: api.RealmNotRegistered},
	}
	h.s1 = snapshot(t, h.look, h.prefix)
	h.otherSnap = snapshot(t, h.look, h.other.prefix+"/")
	if !softHSM {
		h.epochSnap = map[string][]byte{}
		des, err := os.ReadDir(h.epochDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			if h.epochSnap[de.Name()], err = os.ReadFile(filepath.Join(h.epochDir, de.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, u := range h.users[:3] {
		if h.s1[u.v1Key] == nil || h.s1[u.realmKey] == nil || h.s0[u.realmKey] == nil {
			t.Fatalf("%s's values are not as the rows need", u.name)
		}
	}
	if bytes.Equal(h.s0[h.bucketOf(h.user("alice").v1Key)], h.s1[h.bucketOf(h.user("alice").v1Key)]) {
		t.Fatal("alice's bucket did not change since the earlier copy")
	}
	return h
}

// bucketOf returns the etcd key of the key table bucket of a value's
// etcd key (docs/VAULT.md, "On etcd"); groupOf its group's.
func (h *etcdHostile) bucketOf(vk string) string {
	s := sha256.Sum256([]byte(strings.TrimPrefix(vk, h.prefix+"ratchet/v/")))
	return fmt.Sprintf("%sratchet/b/%04d", h.prefix, binary.BigEndian.Uint16(s[:])%1024)
}

func (h *etcdHostile) groupOf(vk string) string {
	s := sha256.Sum256([]byte(strings.TrimPrefix(vk, h.prefix+"ratchet/v/")))
	return fmt.Sprintf("%sratchet/b/%04d", h.prefix, 1024+binary.BigEndian.Uint16(s[:])%1024/16)
}

// reset stops every instance, puts back both prefixes as they were after
// the guesses and the sealer's epoch keys (the HSM's state), and starts
// two instances.
func (h *etcdHostile) reset(t *testing.T) {
	t.Helper()
	for _, in := range append(h.ins, h.otherIn...) {
		stopInstance(in)
	}
	h.otherIn = nil
	h.restore(t)
	if err := os.RemoveAll(h.epochDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(h.epochDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range h.epochSnap {
		if err := os.WriteFile(filepath.Join(h.epochDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.ins = h.s.instances(t, 2)
}

// restore makes the prefix hold exactly what it held after the guesses:
// one delete and one transaction (replacePrefix puts key by key). The
// other site's prefix is only read by the rows.
func (h *etcdHostile) restore(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := h.look.Delete(ctx, h.prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	for k, v := range h.s1 {
		ops = append(ops, clientv3.OpPut(k, string(v)))
	}
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := h.look.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[n:]
	}
}

func (h *etcdHostile) put(t *testing.T, k string, v []byte) {
	t.Helper()
	if _, err := h.look.Put(context.Background(), k, string(v)); err != nil {
		t.Fatal(err)
	}
}

func (h *etcdHostile) del(t *testing.T, k string) {
	t.Helper()
	if _, err := h.look.Delete(context.Background(), k); err != nil {
		t.Fatal(err)
	}
}

// change applies one byte-level mutation to the value at k.
func (h *etcdHostile) change(t *testing.T, k, mutation string) {
	t.Helper()
	v := bytes.Clone(h.s1[k])
	if v == nil {
		t.Fatalf("no %q", k)
	}
	switch mutation {
	case "flip a header byte":
		v[0] ^= 1
	case "flip a ciphertext byte":
		v[len(v)/2] ^= 1
	case "flip a tag byte":
		v[len(v)-1] ^= 1
	case "truncate to half":
		v = v[:len(v)/2]
	default:
		t.Fatalf("mutation %q", mutation)
	}
	h.put(t, k, v)
}

type etcdRow struct {
	object, mutation string
	running, fresh   etcdClass
	refused          []string
	covered          string
	hsm              bool
	mutate           func(t *testing.T, h *etcdHostile)
}

func etcdRows() []etcdRow {
	v1 := func(name string) func(h *etcdHostile) string {
		return func(h *etcdHostile) string { return h.user(name).v1Key }
	}
	realm := func(name string) func(h *etcdHostile) string {
		return func(h *etcdHostile) string { return h.user(name).realmKey }
	}
	fixed := func(k string) func(h *etcdHostile) string { return func(h *etcdHostile) string { return h.prefix + k } }
	change := func(key func(*etcdHostile) string, m string) func(*testing.T, *etcdHostile) {
		return func(t *testing.T, h *etcdHostile) { h.change(t, key(h), m) }
	}
	del := func(key func(*etcdHostile) string) func(*testing.T, *etcdHostile) {
		return func(t *testing.T, h *etcdHostile) { h.del(t, key(h)) }
	}
	replay := func(key func(*etcdHostile) string) func(*testing.T, *etcdHostile) {
		return func(t *testing.T, h *etcdHostile) { h.put(t, key(h), h.s0[key(h)]) }
	}
	other := func(k string) func(t *testing.T, h *etcdHostile) {
		return func(t *testing.T, h *etcdHostile) { h.put(t, h.prefix+k, h.otherSnap[h.other.prefix+"/"+k]) }
	}
	return []etcdRow{
		{object: "v1 record (alice)", mutation: "flip a tag byte", running: ecRequests, fresh: ecRequests, refused: []string{"alice/v1"}, mutate: change(v1("alice"), "flip a tag byte")},
		{object: "v1 record (alice)", mutation: "swap with bob's", running: ecRequests, fresh: ecRequests, refused: []string{"alice/v1", "bob/v1"},
			mutate: func(t *testing.T, h *etcdHostile) {
				a, b := h.user("alice").v1Key, h.user("bob").v1Key
				h.put(t, a, h.s1[b])
				h.put(t, b, h.s1[a])
			}},
		{object: "v1 record (alice)", mutation: "copy under another user's key (eve's realm record: she has none)", running: ecServes, fresh: ecServes,
			mutate: func(t *testing.T, h *etcdHostile) { h.put(t, h.user("eve").realmKey, h.s1[h.user("alice").v1Key]) }},
		{object: "v1 record (alice)", mutation: "put back the earlier copy", running: ecCovered, covered: "TestEtcdRollbackGivesNoGuesses"},
		{object: "v1 tombstone (carol)", mutation: "truncate to half", running: ecRequests, fresh: ecRequests, refused: []string{"carol/v1"}, mutate: change(v1("carol"), "truncate to half")},
		{object: "v1 tombstone (carol)", mutation: "put back the earlier copy", running: ecCovered, covered: "TestEtcdDestroyedRecordStaysGone"},
		{object: "v1 fake entry (eve)", mutation: "delete", running: ecRequests, fresh: ecRequests, refused: []string{"eve/v1"}, mutate: del(v1("eve"))},
		{object: "realm record (alice)", mutation: "put back the earlier copy", running: ecRequests, fresh: ecRequests, refused: []string{"alice/realm"}, hsm: true, mutate: replay(realm("alice"))},
		{object: "realm record (carol, NoGuesses)", mutation: "flip a header byte", running: ecRequests, fresh: ecRequests, refused: []string{"carol/realm"}, mutate: change(realm("carol"), "flip a header byte")},
		{object: "server keys (ratchet/v/server-keys)", mutation: "flip a ciphertext byte", running: ecServes, fresh: ecStart, mutate: change(fixed("ratchet/v/server-keys"), "flip a ciphertext byte")},
		{object: "realm id (ratchet/v/realm-id)", mutation: "delete", running: ecServes, fresh: ecStart, mutate: del(fixed("ratchet/v/realm-id"))},
		{object: "key table root (ratchet/root)", mutation: "flip a tag byte", running: ecAll, fresh: ecStart, mutate: change(fixed("ratchet/root"), "flip a tag byte")},
		{object: "key table root (ratchet/root)", mutation: "flip a header byte (the epoch key id's length)", running: ecAll, fresh: ecStart, mutate: change(fixed("ratchet/root"), "flip a header byte")},
		{object: "key table root (ratchet/root)", mutation: "put back the earlier copy", running: ecAll, fresh: ecStart, mutate: replay(fixed("ratchet/root"))},
		{object: "key table root (ratchet/root)", mutation: "delete", running: ecAll, fresh: ecStart, mutate: del(fixed("ratchet/root"))},
		{object: "key table root (ratchet/root)", mutation: "the other site's", running: ecAll, fresh: ecStart, hsm: true, mutate: other("ratchet/root")},
		{object: "key table (root, groups, buckets)", mutation: "the other site's (this one's id and values kept)", running: ecAll, fresh: ecStart,
			mutate: func(t *testing.T, h *etcdHostile) {
				for k, v := range h.otherSnap {
					if rest, ok := strings.CutPrefix(k, h.other.prefix+"/ratchet/"); ok && (rest == "root" || strings.HasPrefix(rest, "b/")) {
						h.put(t, h.prefix+"ratchet/"+rest, v)
					}
				}
			}},
		{object: "key table bucket (alice's v1 record's)", mutation: "put back the earlier copy", running: ecServes, fresh: ecStart,
			mutate: func(t *testing.T, h *etcdHostile) { b := h.bucketOf(h.user("alice").v1Key); h.put(t, b, h.s0[b]) }},
		{object: "key table group (of that bucket)", mutation: "flip a ciphertext byte", running: ecServes, fresh: ecStart,
			mutate: func(t *testing.T, h *etcdHostile) {
				h.change(t, h.groupOf(h.user("alice").v1Key), "flip a ciphertext byte")
			}},
		{object: "key table id (ratchet/id)", mutation: "the other site's", running: ecServes, fresh: ecStart, mutate: other("ratchet/id")},
		{object: "key table id (ratchet/id)", mutation: "delete", running: ecServes, fresh: ecStart, mutate: del(fixed("ratchet/id"))},
		{object: "a plain-store value beside the table (PREFIX/<alice's v1 key>)", mutation: "added (her v1 record's earlier copy)", running: ecServes, fresh: ecServes,
			mutate: func(t *testing.T, h *etcdHostile) {
				a := h.user("alice").v1Key
				h.put(t, h.prefix+strings.TrimPrefix(a, h.prefix+"ratchet/v/"), h.s0[a])
			}},
		{object: "a write marker (PREFIX/_txn/…)", mutation: "added", running: ecServes, fresh: ecServes,
			mutate: func(t *testing.T, h *etcdHostile) { h.put(t, h.prefix+"_txn/"+randHex(16), nil) }},
		{object: "whole prefix", mutation: "deleted", running: ecAll, fresh: ecNewVault,
			mutate: func(t *testing.T, h *etcdHostile) {
				if _, err := h.look.Delete(context.Background(), h.prefix, clientv3.WithPrefix()); err != nil {
					t.Fatal(err)
				}
			}},
		{object: "whole prefix", mutation: "put back the earlier copy", running: ecCovered, covered: "TestEtcdRollbackGivesNoGuesses"},
		{object: "whole prefix", mutation: "a copy from before the key table upgrade (with or without its id)", running: ecCovered, covered: "TestEtcdPreUpgradeCopyGivesNoGuesses"},
	}
}

// ops runs status, a wrong password, status, the right password and
// status for every user: v1 at v1At, the realm API at realmAt. It returns
// the users (name/api) whose requests were refused.
func (h *etcdHostile) ops(t *testing.T, model map[string]ehModel, v1At, realmAt *instance, where string) []string {
	t.Helper()
	var refused []string
	for _, u := range h.users {
		m := model[u.name]
		if h.v1Ops(t, v1At, u, &m, where) {
			refused = append(refused, u.name+"/v1")
		}
		if h.realmOps(t, realmAt, u, &m, where) {
			refused = append(refused, u.name+"/realm")
		}
		model[u.name] = m
	}
	return refused
}

func (h *etcdHostile) v1Ops(t *testing.T, in *instance, u *ehUser, m *ehModel, where string) bool {
	t.Helper()
	ctx := context.Background()
	c := h.v1Client(t, in)
	served, refused := 0, 0
	status := func() {
		left, _, err := c.Status(ctx, u.cred)
		if err != nil {
			refused++
			return
		}
		served++
		if left != m.v1Left {
			if left > m.v1Left {
				h.guessBacks++
			}
			t.Errorf("%s: %s v1: status %d left, the true history %d", where, u.name, left, m.v1Left)
		}
	}
	login := func(pw string, right bool) {
		before := in.counted.Load()
		got, err := c.Recover(ctx, u.cred, []byte(pw))
		ke2 := in.counted.Load() - before
		var wp *vaultclient.WrongPasswordError
		switch {
		case err == nil:
			served++
			if !right || !m.v1Real || !bytes.Equal(got, u.secret) || ke2 != 1 {
				h.guessBacks++
				t.Errorf("%s: %s v1: %q released a secret (record %v, %d KE2s)", where, u.name, pw, m.v1Real, ke2)
			}
			m.v1Left = hostileLimit
		case errors.As(err, &wp):
			served++
			if m.v1Real {
				if right || ke2 != 1 {
					t.Errorf("%s: %s v1: %q answered as a wrong password with %d KE2s from the record (the true history has it: lost and not reported as an error?)", where, u.name, pw, ke2)
				}
				if m.v1Left--; m.v1Left == 0 {
					m.v1Real = false
				}
			} else {
				if ke2 != 0 {
					h.guessBacks++
					t.Errorf("%s: %s v1: %d KE2s from a record the true history does not have", where, u.name, ke2)
				}
				m.v1Left = max(0, m.v1Left-1)
			}
			if wp.AttemptsLeft > m.v1Left {
				h.guessBacks++
				t.Errorf("%s: %s v1: %d attempts left, the true history %d", where, u.name, wp.AttemptsLeft, m.v1Left)
			}
		default:
			refused++
			if ke2 != 0 {
				t.Errorf("%s: %s v1: refused (%v) after %d KE2s", where, u.name, err, ke2)
			}
		}
	}
	status()
	login("wrong "+u.name, false)
	status()
	if u.pw != "" {
		login(u.pw, true)
		status()
	}
	if served > 0 && refused > 0 {
		t.Errorf("%s: %s v1: %d requests refused, %d served", where, u.name, refused, served)
	}
	return refused > 0
}

func (h *etcdHostile) realmOps(t *testing.T, in *instance, u *ehUser, m *ehModel, where string) bool {
	t.Helper()
	ctx := context.Background()
	c, tr := h.realmClient(t, in, u)
	served, refused := 0, 0
	status := func() {
		st, err := tr.Status(ctx, 0)
		if err != nil {
			refused++
			return
		}
		served++
		left := 0
		if m.realm == api.RealmRegistered {
			left = m.realmLeft
		}
		if st.State != m.realm || st.GuessesLeft != left {
			if st.GuessesLeft > left || st.State == api.RealmRegistered && m.realm != api.RealmRegistered {
				h.guessBacks++
			}
			t.Errorf("%s: realm %s: status %s with %d left, the true history %s with %d", where, u.name, st.State, st.GuessesLeft, m.realm, left)
		}
	}
	recover := func(pw string, right bool) {
		before := h.evals.Load()
		rec, err := c.Recover(ctx, []byte(pw))
		evals := h.evals.Load() - before
		var we *threshold.WrongPasswordError
		switch {
		case err == nil:
			served++
			if !right || m.realm != api.RealmRegistered || !bytes.Equal(rec.Secret, u.rsecret) || evals != 1 {
				h.guessBacks++
				t.Errorf("%s: realm %s: %q recovered a secret (the true history %s, %d evaluations)", where, u.name, pw, m.realm, evals)
			}
			m.realmLeft = hostileLimit
		case errors.As(err, &we):
			served++
			if m.realm != api.RealmRegistered || right || evals != 1 {
				t.Errorf("%s: realm %s: %q answered as a wrong password with %d evaluations (the true history %s)", where, u.name, pw, evals, m.realm)
			}
			m.realmLeft--
			if we.GuessesLeft > m.realmLeft {
				h.guessBacks++
				t.Errorf("%s: realm %s: %d guesses left, the true history %d", where, u.name, we.GuessesLeft, m.realmLeft)
			}
		case errors.Is(err, threshold.ErrNoGuesses), errors.Is(err, threshold.ErrNotRegistered):
			served++
			if want := map[bool]string{true: api.RealmNoGuesses, false: api.RealmNotRegistered}[errors.Is(err, threshold.ErrNoGuesses)]; m.realm != want || evals != 0 {
				t.Errorf("%s: realm %s: %v with %d evaluations, the true history %s", where, u.name, err, evals, m.realm)
			}
		default:
			refused++
			if evals != 0 {
				t.Errorf("%s: realm %s: refused (%v) after %d evaluations", where, u.name, err, evals)
			}
		}
	}
	status()
	recover("wrong "+u.name, false)
	if u.pw != "" {
		status()
		recover(u.pw, true)
		status()
	}
	if served > 0 && refused > 0 {
		t.Errorf("%s: realm %s: %d requests refused, %d served", where, u.name, refused, served)
	}
	return refused > 0
}

func (h *etcdHostile) classOf(refused []string, newVault bool) etcdClass {
	switch {
	case newVault:
		return ecNewVault
	case len(refused) == 2*len(h.users):
		return ecAll
	case len(refused) > 0:
		return ecRequests
	}
	return ecServes
}

// runEtcdRow applies r to h's world and checks both classes; it returns
// them.
func runEtcdRow(t *testing.T, h *etcdHostile, r etcdRow) (running, fresh etcdClass) {
	t.Helper()
	model := map[string]ehModel{}
	for k, v := range h.model {
		model[k] = v
	}
	r.mutate(t, h)

	// A new instance, before the running ones write anything.
	in, err := h.s.start(t)
	detail := ""
	if err != nil {
		fresh, detail = ecStart, err.Error()
		if strings.Contains(detail, "\n") {
			t.Errorf("a new instance refused with %q: not one line", detail)
		}
	}

	// The running instances (v1 at one, the realm API at the other).
	ref := h.ops(t, model, h.ins[0], h.ins[1], "running")
	running = h.classOf(ref, false)
	if running == ecRequests && !slices.Equal(sortedStrings(ref), sortedStrings(r.refused)) {
		t.Errorf("running instances refused %v, want %v", ref, r.refused)
	}

	if in != nil {
		h.ins = append(h.ins, in) // reset stops it
		newVault := in.srv.Fingerprint() != h.fp
		ref := h.ops(t, model, in, in, "new instance")
		fresh = h.classOf(ref, newVault)
		if fresh == ecRequests && !slices.Equal(sortedStrings(ref), sortedStrings(r.refused)) {
			t.Errorf("the new instance refused %v, want %v", ref, r.refused)
		}
		if newVault {
			detail = "fingerprint " + in.srv.Fingerprint()
			// The running instances still refuse the new table too.
			if ref := h.ops(t, model, h.ins[0], h.ins[1], "running, after the new vault started"); h.classOf(ref, false) != ecAll {
				t.Errorf("after a new vault started on the prefix, the running instances refused only %v", ref)
			}
		}
	}
	if running != r.running || fresh != r.fresh {
		t.Errorf("%s, %s: running %s, new %s (%s); want %s, %s", r.object, r.mutation, running, fresh, detail, r.running, r.fresh)
	}

	// Nothing was destroyed by a refusal: the current state put back
	// serves again, at the running instances and a new one.
	if running == ecAll && fresh == ecStart {
		h.restore(t)
		if ref := h.ops(t, model, h.ins[0], h.ins[1], "running, the current state put back"); len(ref) > 0 {
			t.Errorf("the current state put back: the running instances refuse %v", ref)
		}
		if in, err := h.s.start(t); err != nil {
			t.Errorf("the current state put back: a new instance does not start: %v", err)
		} else {
			h.ins = append(h.ins, in)
		}
	}
	// The other site on the same HSM cluster still starts and serves.
	if oin, err := h.other.start(t); err != nil {
		t.Errorf("the other site no longer starts: %v", err)
	} else {
		h.otherIn = append(h.otherIn, oin)
		if left, _, err := oin.client(t).Status(context.Background(), h.otherCred); err != nil || left != hostileLimit {
			t.Errorf("the other site's user: %d left, %v", left, err)
		}
	}
	t.Logf("%s, %s: running instances %s, a new instance %s %s", r.object, r.mutation, running, fresh, detail)
	return running, fresh
}

func sortedStrings(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestEtcdHostileStorage(t *testing.T) {
	c := testservers.Etcd(t, 3)
	rows := etcdRows()
	counts := map[string]int{}
	guessBacks := 0
	count := func(running, fresh etcdClass) {
		counts["running: "+string(running)]++
		counts["new: "+string(fresh)]++
	}
	t.Run("filekey", func(t *testing.T) {
		h := buildEtcdHostile(t, c, false)
		for _, r := range rows {
			if r.covered != "" {
				counts[string(ecCovered)]++
				t.Logf("%s, %s: covered by %s", r.object, r.mutation, r.covered)
				continue
			}
			t.Run(r.object+"/"+r.mutation, func(t *testing.T) {
				h.reset(t)
				count(runEtcdRow(t, h, r))
			})
		}
		guessBacks += h.guessBacks
	})
	hsmRows := 0
	t.Run("softhsm", func(t *testing.T) {
		for _, r := range rows {
			if r.hsm {
				hsmRows++
				t.Run(r.object+"/"+r.mutation, func(t *testing.T) {
					h := buildEtcdHostile(t, c, true)
					runEtcdRow(t, h, r)
					guessBacks += h.guessBacks
				})
			}
		}
	})
	var parts []string
	for _, k := range []string{"running: " + string(ecAll), "running: " + string(ecRequests), "running: " + string(ecServes),
		"new: " + string(ecStart), "new: " + string(ecRequests), "new: " + string(ecServes), "new: " + string(ecNewVault), string(ecCovered)} {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	t.Logf("hostile storage (etcd, 3 members): %d rows with the file sealer: %s; %d of them again with SoftHSM2; guesses given back: %d", len(rows), strings.Join(parts, ", "), hsmRows, guessBacks)
}
