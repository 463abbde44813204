package etcdstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/etcdstore"
	"github.com/wabackup/wabackup/pkg/vault/storetest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func openStore(t testing.TB, c *testservers.EtcdCluster, prefix string, timeout time.Duration) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.Open(etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix, RequestTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The store conformance suite against a real 3-member cluster.
func TestEtcdStoreConformance(t *testing.T) {
	c := testservers.Etcd(t, 3)
	prefix := "conformance-" + randHex(4)
	storetest.Run(t, func(t *testing.T) vault.Store {
		return openStore(t, c, prefix, 5*time.Second)
	})
}

// instance is one vault instance (one site): its own etcd clients (the
// RatchetStore's and a plain one for looking at the cluster), the site's
// sealer, an HTTPS front.
type instance struct {
	srv     *vault.Server
	ts      *httptest.Server
	rs      *vault.RatchetStore
	store   *etcdstore.Store
	counted atomic.Int64
}

// sealRatchet is a sealer that also keeps the epoch keys: the HSM cluster
// the instances of a site share.
type sealRatchet interface {
	vault.Sealer
	vault.Ratchet
}

type site struct {
	cluster *testservers.EtcdCluster
	prefix  string
	sealer  sealRatchet // shared by the instances
	cfg     vault.Config
	timeout time.Duration
}

func newSite(t testing.TB, c *testservers.EtcdCluster, cfg vault.Config) *site {
	ks, err := vault.NewKeySealer(secret32())
	if err != nil {
		t.Fatal(err)
	}
	return &site{cluster: c, prefix: "vault-" + randHex(4), sealer: ks, cfg: cfg, timeout: 1500 * time.Millisecond}
}

func (s *site) storeConfig() etcdstore.Config {
	return etcdstore.Config{Endpoints: s.cluster.Endpoints(), Prefix: s.prefix, RequestTimeout: s.timeout}
}

func (s *site) start(t testing.TB) (*instance, error) {
	t.Helper()
	rs, err := etcdstore.OpenRatchet(s.storeConfig(), s.sealer)
	if err != nil {
		return nil, err
	}
	in := &instance{rs: rs, store: openStore(t, s.cluster, s.prefix, s.timeout)}
	cfg := s.cfg
	cfg.Store, cfg.Sealer = rs, s.sealer
	cfg.AfterCount = func() { in.counted.Add(1) }
	cfg.Logf = t.Logf
	in.srv, err = vault.New(cfg)
	if err != nil {
		rs.Close()
		in.store.Close()
		return nil, err
	}
	in.ts = httptest.NewUnstartedServer(in.srv.Handler())
	in.ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	in.ts.StartTLS()
	t.Cleanup(func() {
		in.ts.Close()
		in.srv.Close()
		rs.Close()
		in.store.Close()
	})
	return in, nil
}

func (s *site) instances(t testing.TB, n int) []*instance {
	t.Helper()
	var ins []*instance
	for range n {
		in, err := s.start(t)
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, in)
	}
	return ins
}

func (in *instance) client(t testing.TB) *vaultclient.Client {
	t.Helper()
	c, err := vaultclient.New(in.ts.URL, vaultclient.Options{HTTPClient: in.ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secret32() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return b
}

// Instances started together share one sealed server-keys blob in etcd
// (created once, loaded by the others); an instance with another sealing
// key cannot start.
func TestInstancesShareSealedKeys(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{})
	var wg sync.WaitGroup
	ins := make([]*instance, 3)
	errs := make([]error, 3)
	for i := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ins[i], errs[i] = s.start(t)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	for _, in := range ins[1:] {
		if in.srv.Fingerprint() != ins[0].srv.Fingerprint() {
			t.Fatal("instances started together have different keys")
		}
	}
	st := openStore(t, c, s.prefix, 5*time.Second)
	defer st.Close()
	resp, err := st.Client().Get(context.Background(), s.prefix+"/ratchet/v/server-keys")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Version != 1 {
		t.Fatalf("server-keys in etcd: %v %v (written more than once?)", resp, err)
	}
	// Registered at one site, recovered at another.
	ctx := context.Background()
	id := api.CredentialID("shared", "")
	sec := secret32()
	if _, _, err := ins[0].client(t).Register(ctx, id, []byte("pw"), sec, 0); err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		got, err := in.client(t).Recover(ctx, id, []byte("pw"))
		if err != nil || !bytes.Equal(got, sec) {
			t.Fatalf("recover at instance %d: %v", i, err)
		}
	}
	// A site whose HSM holds other keys cannot open the key table.
	other := *s
	ks, err := vault.NewKeySealer(secret32())
	if err != nil {
		t.Fatal(err)
	}
	other.sealer = ks
	if _, err := other.start(t); err == nil || !strings.Contains(err.Error(), "opens under none of the epoch keys") {
		t.Fatalf("instance with another HSM: %v, want the key table refused", err)
	}
}

// rotating sends each request to the next of the instances, so that the
// KE1 and the KE3 of one login reach different replicas (a load balancer
// across sites, failing over between the two).
type rotating struct {
	hosts []string
	next  atomic.Int64
	rt    http.RoundTripper
}

func (r *rotating) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.URL.Host = r.hosts[int(r.next.Add(1))%len(r.hosts)]
	return r.rt.RoundTrip(req)
}

func rotatingClient(t testing.TB, ins []*instance, start int) *vaultclient.Client {
	t.Helper()
	r := &rotating{rt: ins[0].ts.Client().Transport}
	for _, in := range ins {
		u, _ := url.Parse(in.ts.URL)
		r.hosts = append(r.hosts, u.Host)
	}
	r.next.Store(int64(start))
	c, err := vaultclient.New(ins[0].ts.URL, vaultclient.Options{HTTPClient: &http.Client{Transport: r}, KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func postTo(t testing.TB, in *instance, path string, body, out any) (int, *api.Error) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := in.ts.Client().Post(in.ts.URL+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		var ae api.Error
		_ = json.NewDecoder(resp.Body).Decode(&ae)
		return resp.StatusCode, &ae
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return 200, nil
}

// Any replica finishes a login: KE1 to one instance, KE3 to another
// succeeds; the same KE3 replayed to a third is refused; registration and
// password change also move between instances.
func TestLoginAcrossReplicas(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 10})
	ins := s.instances(t, 3)
	ctx := context.Background()
	id := api.CredentialID("failover", "")
	sec := secret32()
	// Registration: start and finish on different instances.
	if _, _, err := rotatingClient(t, ins, 0).Register(ctx, id, []byte("pw"), sec, 0); err != nil {
		t.Fatal(err)
	}
	op, err := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	if err != nil {
		t.Fatal(err)
	}
	ke1, st, err := op.KE1([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := ke1.MarshalBinary()
	var lr api.LoginStartReply
	if code, ae := postTo(t, ins[0], api.PathLoginStart, api.LoginStart{CredentialID: id, KE1: k1}, &lr); code != 200 {
		t.Fatalf("KE1 to instance 0: %d %v", code, ae)
	}
	ke2, err := api.Suite.UnmarshalKE2(lr.KE2)
	if err != nil {
		t.Fatal(err)
	}
	ke3, sessionKey, _, err := op.KE3(st, ke2)
	if err != nil {
		t.Fatal(err)
	}
	k3, _ := ke3.MarshalBinary()
	var fr api.LoginFinishReply
	if code, ae := postTo(t, ins[1], api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, &fr); code != 200 {
		t.Fatalf("KE3 to instance 1: %d %v", code, ae)
	}
	if _, err := api.Open(sessionKey, api.ReleaseLabel, fr.Blob, lr.LoginID); err != nil {
		t.Fatal("the released blob does not open under the session key")
	}
	code, ae := postTo(t, ins[2], api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, nil)
	if code != 401 || ae.Code != api.CodeLoginExpired {
		t.Fatalf("the same KE3 replayed to instance 2: %d %+v, want 401 %s", code, ae, api.CodeLoginExpired)
	}
	if code, _ := postTo(t, ins[0], api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, nil); code != 401 {
		t.Fatalf("the same KE3 replayed to instance 0: %d", code)
	}
	// The success reset the counter; the replays counted nothing.
	if left, _, err := ins[2].client(t).Status(ctx, id); err != nil || left != 10 {
		t.Fatalf("status: %d left, %v", left, err)
	}
	// A password change and a recovery through rotating instances.
	rc := rotatingClient(t, ins, 1)
	if err := rc.ChangePassword(ctx, id, []byte("pw"), []byte("new pw")); err != nil {
		t.Fatal(err)
	}
	got, err := rotatingClient(t, ins, 2).Recover(ctx, id, []byte("new pw"))
	if err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover after the change: %v", err)
	}
	// A deletion: the token from one instance works at another.
	if err := rotatingClient(t, ins, 0).Delete(ctx, id, []byte("new pw")); err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		if reg, err := in.srv.Registered(id); err != nil || reg {
			t.Fatalf("instance %d: registered %v after the delete (%v)", i, reg, err)
		}
	}
}

// Acceptance: 16 clients spread 1,000 wrong guesses over three instances,
// the KE1 and the KE3 of each login to different ones; exactly the limit
// are answered with a counted KE2, then the record is gone everywhere.
func TestBruteForceAcrossInstances(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 10})
	ins := s.instances(t, 3)
	ctx := context.Background()
	id := api.CredentialID("target", "")
	if _, _, err := ins[0].client(t).Register(ctx, id, []byte("the right one"), secret32(), 0); err != nil {
		t.Fatal(err)
	}
	const clients, guesses = 16, 1000
	var next atomic.Int64
	var wrong, other atomic.Int64
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := rotatingClient(t, ins, w)
			for {
				n := next.Add(1)
				if n > guesses {
					return
				}
				_, err := cl.Recover(ctx, id, []byte("guess "+randHex(4)))
				var wp *vaultclient.WrongPasswordError
				if errors.As(err, &wp) {
					wrong.Add(1)
				} else {
					other.Add(1)
					t.Errorf("guess %d: %v", n, err)
				}
			}
		}()
	}
	wg.Wait()
	total := ins[0].counted.Load() + ins[1].counted.Load() + ins[2].counted.Load()
	t.Logf("counted KE2s per instance: %d %d %d; wrong-password answers %d",
		ins[0].counted.Load(), ins[1].counted.Load(), ins[2].counted.Load(), wrong.Load())
	if total != 10 {
		t.Fatalf("%d counted KE2s across the instances, want exactly the limit 10", total)
	}
	for i, in := range ins {
		if reg, err := in.srv.Registered(id); err != nil || reg {
			t.Fatalf("instance %d: the record is still registered after the limit (%v)", i, err)
		}
		if left, _, err := in.client(t).Status(ctx, id); err != nil || left != 0 {
			t.Fatalf("instance %d: status %d left (%v), want 0", i, left, err)
		}
	}
	for i, in := range ins {
		if _, err := in.client(t).Recover(ctx, id, []byte("the right one")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatalf("instance %d: the right password after the limit: %v", i, err)
		}
	}
	if got := ins[0].counted.Load() + ins[1].counted.Load() + ins[2].counted.Load(); got != 10 {
		t.Fatalf("a destroyed record was counted: %d", got)
	}
}

// Unknown credentials are counted in the shared store: attempts through
// any instance add up, and a new instance sees them.
func TestUnknownCountedAcrossInstances(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 10})
	ins := s.instances(t, 3)
	ctx := context.Background()
	id := api.CredentialID("nobody", "")
	for i := range 4 {
		if _, err := ins[i%3].client(t).Recover(ctx, id, []byte("guess")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatal(err)
		}
	}
	late := s.instances(t, 1)[0]
	if left, limit, err := late.client(t).Status(ctx, id); err != nil || left != 6 || limit != 10 {
		t.Fatalf("status on a new instance: %d of %d left (%v), want 6 of 10", left, limit, err)
	}
}

func leader(t testing.TB, c *testservers.EtcdCluster, st *etcdstore.Store) int {
	t.Helper()
	for i, ep := range c.Endpoints() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := st.Client().Status(ctx, ep)
		cancel()
		if err == nil && resp.Leader == resp.Header.MemberId {
			return i
		}
	}
	t.Fatal("no leader")
	return -1
}

func isUnavailable(err error) bool {
	var ae *vaultclient.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable && ae.Code == api.CodeUnavailable
}

// Acceptance: the leader killed in the middle of a run; the instances keep
// serving and no count is lost.
func TestMemberKilledMidRun(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 1000})
	s.timeout = 3 * time.Second
	ins := s.instances(t, 3)
	ctx := context.Background()
	id := api.CredentialID("target", "")
	if _, _, err := ins[0].client(t).Register(ctx, id, []byte("right"), secret32(), 1000); err != nil {
		t.Fatal(err)
	}
	const clients, guesses, killAt = 8, 300, 100
	var next, done, wrong, unavail atomic.Int64
	killed := make(chan int, 1)
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cls := []*vaultclient.Client{ins[0].client(t), ins[1].client(t), ins[2].client(t)}
			for {
				n := next.Add(1)
				if n > guesses {
					return
				}
				_, err := cls[(int(n)+w)%3].Recover(ctx, id, []byte("wrong"))
				var wp *vaultclient.WrongPasswordError
				switch {
				case errors.As(err, &wp):
					wrong.Add(1)
				case isUnavailable(err):
					unavail.Add(1)
					t.Logf("guess %d refused: %v", n, err)
				default:
					t.Errorf("guess %d: %v", n, err)
				}
				if done.Add(1) == killAt {
					l := leader(t, c, ins[0].store)
					c.Kill(l)
					killed <- l
				}
			}
		}()
	}
	wg.Wait()
	l := <-killed
	counted := ins[0].counted.Load() + ins[1].counted.Load() + ins[2].counted.Load()
	left, _, err := ins[(l+1)%3].client(t).Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	failed := int64(1000 - left)
	t.Logf("leader e%d killed after %d guesses; %d wrong-password answers, %d refused (503), %d counted KE2s, %d failures recorded",
		l+1, killAt, wrong.Load(), unavail.Load(), counted, failed)
	if failed < counted {
		t.Fatalf("counts lost: %d recorded, %d counted KE2s sent", failed, counted)
	}
	// A 503 after a transaction whose outcome is unknown may leave a count
	// without a KE2 (the safe side); nothing else may.
	if failed > counted+unavail.Load() {
		t.Fatalf("%d failures recorded for %d counted KE2s and %d refusals", failed, counted, unavail.Load())
	}
	if wrong.Load() < guesses*9/10 {
		t.Fatalf("only %d of %d guesses answered with one member down", wrong.Load(), guesses)
	}
	c.Restart(l)
	c.WaitHealthy(30 * time.Second)
	if _, err := ins[l].client(t).Recover(ctx, id, []byte("right")); err != nil {
		t.Fatalf("after the member returned: %v", err)
	}
}

// Acceptance: two members killed: every instance refuses logins (503, for
// known and unknown credentials alike) and counts nothing; after the
// members return with their data, service resumes with the counts intact.
func TestNoQuorumFailsClosed(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 10})
	ins := s.instances(t, 3)
	ctx := context.Background()
	id := api.CredentialID("target", "")
	sec := secret32()
	if _, _, err := ins[0].client(t).Register(ctx, id, []byte("right"), sec, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := ins[i].client(t).Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatal(err)
		}
	}
	c.Kill(0)
	c.Kill(1)
	before := ins[0].counted.Load() + ins[1].counted.Load() + ins[2].counted.Load()
	oc, _ := api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)
	var wg sync.WaitGroup
	for i, in := range ins {
		for _, cred := range [][]byte{id, api.CredentialID("unknown", "")} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ke1, _, _ := oc.KE1([]byte("right"))
				b, _ := ke1.MarshalBinary()
				body, _ := json.Marshal(api.LoginStart{CredentialID: cred, KE1: b})
				resp, err := in.ts.Client().Post(in.ts.URL+api.PathLoginStart, "application/json", bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var ae api.Error
				_ = json.NewDecoder(resp.Body).Decode(&ae)
				if resp.StatusCode != http.StatusServiceUnavailable || ae.Code != api.CodeUnavailable {
					t.Errorf("instance %d, KE1 for %q without quorum: %d %+v", i, cred, resp.StatusCode, ae)
				}
			}()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := in.client(t).Recover(ctx, cred, []byte("right")); !isUnavailable(err) {
					t.Errorf("instance %d, recover without quorum: %v", i, err)
				}
			}()
		}
	}
	wg.Wait()
	if after := ins[0].counted.Load() + ins[1].counted.Load() + ins[2].counted.Load(); after != before {
		t.Fatalf("%d attempts answered without quorum", after-before)
	}
	c.Restart(0)
	c.Restart(1)
	c.WaitHealthy(30 * time.Second)
	for i, in := range ins {
		var left int
		var err error
		for range 20 { // the clients reconnect to the restarted members
			if left, _, err = in.client(t).Status(ctx, id); !isUnavailable(err) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil || left != 7 {
			t.Fatalf("instance %d after the members returned: %d left, %v (want 7)", i, left, err)
		}
	}
	got, err := ins[2].client(t).Recover(ctx, id, []byte("right"))
	if err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover after the members returned: %v", err)
	}
	if left, _, _ := ins[1].client(t).Status(ctx, id); left != 10 {
		t.Fatalf("after a valid login: %d left, want 10", left)
	}
}

func TestParseURL(t *testing.T) {
	eps, prefix, secure, err := etcdstore.ParseURL("etcd://a:2379,b:2379,c/wabackup/vault/")
	if err != nil || strings.Join(eps, " ") != "a:2379 b:2379 c:2379" || prefix != "wabackup/vault" || secure {
		t.Fatalf("%v %q %v %v", eps, prefix, secure, err)
	}
	if _, _, secure, err := etcdstore.ParseURL("etcds://a:2379/p"); err != nil || !secure {
		t.Fatal(secure, err)
	}
	for _, bad := range []string{"etcd://a:2379", "etcd://a:2379/", "http://a/p", "etcd://u@a/p", "etcd://a,,b/p", "etcd://a/p?x=1"} {
		if _, _, _, err := etcdstore.ParseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// Client TLS: members that require a client certificate accept the
// store with one and refuse it without one (fail closed, ErrUnavailable).
func TestEtcdStoreTLS(t *testing.T) {
	c := testservers.StartEtcd(t, 3, testservers.EtcdOptions{TLS: true})
	tc, err := etcdstore.TLSConfig(c.CAFile, c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := etcdstore.Open(etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "tls", TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v, err := st.CompareAndSwap([]byte("k"), 0, []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if val, ver, err := st.Get([]byte("k")); err != nil || ver != v || string(val) != "v" {
		t.Fatalf("%q %d %v", val, ver, err)
	}
	noCert, err := etcdstore.TLSConfig(c.CAFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := etcdstore.Open(etcdstore.Config{Endpoints: c.Endpoints(), Prefix: "tls", TLS: noCert, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, _, err := bad.Get([]byte("k")); !errors.Is(err, vault.ErrUnavailable) {
		t.Fatalf("without a client certificate: %v", err)
	}
}

// A transaction whose answer is lost after it committed is sent again and
// recognised as ours: reported once, with its version; a change by
// someone else in between is a conflict; a lost delete answer is a
// success when the key is gone.
func TestLostReplies(t *testing.T) {
	c := testservers.Etcd(t, 3)
	st := openStore(t, c, "lost-"+randHex(4), 5*time.Second)
	defer st.Close()
	var lose atomic.Int64 // answers to drop
	var between func()    // runs when an answer is dropped
	etcdstore.SetLoseReply(func() bool {
		if lose.Add(-1) >= 0 {
			if between != nil {
				between()
			}
			return true
		}
		return false
	})
	defer etcdstore.SetLoseReply(nil)
	k := []byte("k")
	lose.Store(1)
	v1, err := st.CompareAndSwap(k, 0, []byte("one"))
	if err != nil {
		t.Fatalf("create with a lost answer: %v", err)
	}
	if val, ver, _ := st.Get(k); string(val) != "one" || ver != v1 {
		t.Fatalf("after a lost answer: %q %d, reported %d", val, ver, v1)
	}
	lose.Store(2) // lost twice: the second try's "conflict" is recognised too
	v2, err := st.CompareAndSwap(k, v1, []byte("two"))
	if err != nil || v2 <= v1 {
		t.Fatalf("swap with two lost answers: %d %v", v2, err)
	}
	if val, ver, _ := st.Get(k); string(val) != "two" || ver != v2 {
		t.Fatalf("%q %d, reported %d", val, ver, v2)
	}
	// Someone else writes after our (committed) swap whose answer we lost:
	// our write did happen (its marker says so), so it is reported as done,
	// with its own revision; a conflict here would make the caller apply
	// its change twice (a guess counted twice).
	lose.Store(1)
	between = func() {
		between = nil
		_, ver, _ := st.Get(k)
		if _, err := st.CompareAndSwap(k, ver, []byte("theirs")); err != nil {
			t.Error(err)
		}
	}
	v3, err := st.CompareAndSwap(k, v2, []byte("three"))
	if err != nil {
		t.Fatalf("lost answer, then another write: %v, want success", err)
	}
	if val, ver, _ := st.Get(k); string(val) != "theirs" || v3 <= v2 || v3 >= ver {
		t.Fatalf("after our lost write and theirs: %q at %d, ours reported at %d", val, ver, v3)
	}
	// A write that did not happen is still a conflict.
	if _, err := st.CompareAndSwap(k, v2, []byte("stale")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale swap: %v, want ErrConflict", err)
	}
	_, v4, _ := st.Get(k)
	lose.Store(1)
	if err := st.Delete(k, v4); err != nil {
		t.Fatalf("delete with a lost answer: %v", err)
	}
	if _, ver, _ := st.Get(k); ver != 0 {
		t.Fatal("not deleted")
	}
}

// A destroyed record cannot be read back through etcd's history: the
// vault compacts the cluster after a destroy (and after a delete).
func TestDestroyCompactsHistory(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 2})
	in := s.instances(t, 1)[0]
	ctx := context.Background()
	cl := in.client(t)
	for _, name := range []string{"destroyed", "deleted"} {
		id := api.CredentialID("compact", name)
		if _, _, err := cl.Register(ctx, id, []byte("pw"), secret32(), 0); err != nil {
			t.Fatal(err)
		}
		before, err := in.store.Client().Get(ctx, s.prefix+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		rev := before.Header.Revision
		if name == "destroyed" {
			for range 2 {
				if _, err := cl.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
		} else if err := cl.Delete(ctx, id, []byte("pw")); err != nil {
			t.Fatal(err)
		}
		if reg, err := in.srv.Registered(id); err != nil || reg {
			t.Fatalf("%s: still registered (%v)", name, err)
		}
		_, err = in.store.Client().Get(ctx, s.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("%s: reading the revision that held the record: %v, want ErrCompacted", name, err)
		}
	}
}
