package etcdstore_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// startPlain runs an instance of an earlier version: on the plain Store
// under the site's prefix (no key table). stop stops it.
func (s *site) startPlain(t *testing.T) (in *instance, stop func()) {
	t.Helper()
	st := openStore(t, s.cluster, s.prefix, s.timeout)
	in = &instance{store: st}
	cfg := s.cfg
	cfg.Store, cfg.Sealer = st, s.sealer
	cfg.AfterCount = func() { in.counted.Add(1) }
	cfg.Logf = t.Logf
	var err error
	if in.srv, err = vault.New(cfg); err != nil {
		st.Close()
		t.Fatal(err)
	}
	in.ts = httptest.NewUnstartedServer(in.srv.Handler())
	in.ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	in.ts.StartTLS()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			in.ts.Close()
			in.srv.Close()
			st.Close()
		})
	}
	t.Cleanup(stop)
	return in, stop
}

// replacePrefix makes the prefix hold exactly snap: a storage writer
// restoring a snapshot of it.
func replacePrefix(t *testing.T, cli *clientv3.Client, prefix string, snap map[string][]byte) {
	t.Helper()
	if _, err := cli.Delete(context.Background(), prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	putBack(t, cli, snap, prefix)
}

func (s *site) withSoftHSM(t *testing.T) {
	t.Helper()
	h := vaulttest.SoftHSM(t)
	hs, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hs.Close() })
	s.sealer = hs
}

// Issue 23, finding 2, on etcd: a snapshot of the prefix from before the
// RatchetStore upgrade, put back after a record was destroyed (with or
// without the key table's id kept), gives no guess: the running instances
// refuse to serve from it, a new instance refuses to start and says why,
// and the current state put back serves again, the record destroyed.
func TestEtcdPreUpgradeCopyGivesNoGuesses(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			c := testservers.Etcd(t, 3)
			s := newSite(t, c, vault.Config{MaxGuesses: 10})
			if withHSM {
				s.withSoftHSM(t)
			}
			ctx := context.Background()
			id := api.CredentialID("pre-upgrade", "")
			sec := secret32()
			p, stop := s.startPlain(t)
			if _, _, err := p.client(t).Register(ctx, id, []byte("right"), sec, 0); err != nil {
				t.Fatal(err)
			}
			stop()
			look := openStore(t, c, s.prefix, s.timeout)
			defer look.Close()
			cli := look.Client()
			prefix := s.prefix + "/"
			preUpgrade := snapshot(t, cli, prefix)

			// The upgrade (two instances), then the record destroyed.
			ins := s.instances(t, 2)
			a, b := ins[0].client(t), ins[1].client(t)
			if got, err := b.Recover(ctx, id, []byte("right")); err != nil || !bytes.Equal(got, sec) {
				t.Fatalf("recover after the upgrade: %v", err)
			}
			for i := range 10 {
				if _, err := []*vaultclient.Client{a, b}[i%2].Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
			if reg, err := ins[0].srv.Registered(id); err != nil || reg {
				t.Fatalf("registered after the limit: %v %v", reg, err)
			}
			current := snapshot(t, cli, prefix)
			counted := ins[0].counted.Load() + ins[1].counted.Load()

			attacks := []struct {
				name string
				snap map[string][]byte
			}{
				{"the whole pre-upgrade snapshot", preUpgrade},
				{"the pre-upgrade snapshot and the key table's id", func() map[string][]byte {
					m := map[string][]byte{prefix + "ratchet/id": current[prefix+"ratchet/id"]}
					for k, v := range preUpgrade {
						m[k] = v
					}
					return m
				}()},
			}
			for _, at := range attacks {
				replacePrefix(t, cli, prefix, at.snap)
				for i, cl := range []*vaultclient.Client{a, b} {
					if left, _, err := cl.Status(ctx, id); err == nil {
						t.Fatalf("%s: instance %d answered status from it: %d left", at.name, i, left)
					}
					for _, pw := range []string{"wrong", "right"} {
						if _, err := cl.Recover(ctx, id, []byte(pw)); err == nil || errors.Is(err, keys.ErrWrongKey) {
							t.Fatalf("%s: instance %d answered a login (%s password) from it: %v", at.name, i, pw, err)
						}
					}
				}
				if _, _, err := ins[0].rs.Get([]byte("server-keys")); err == nil || !strings.Contains(err.Error(), "root is gone") {
					t.Fatalf("%s: a running instance's store: %v, want the key table's root gone", at.name, err)
				}
				if n := ins[0].counted.Load() + ins[1].counted.Load(); n != counted {
					t.Fatalf("%s: %d guesses evaluated", at.name, n-counted)
				}
				in, err := s.start(t)
				if err == nil {
					cl := in.client(t)
					for range 9 {
						_, _ = cl.Recover(ctx, id, []byte("wrong"))
					}
					got, rerr := cl.Recover(ctx, id, []byte("right"))
					t.Fatalf("%s: a new instance started (after %d more guesses, the right password: %v, secret back %v)", at.name, in.counted.Load(), rerr, bytes.Equal(got, sec))
				}
				where := fmt.Sprintf("etcd prefix %q", prefix)
				msg := err.Error()
				if !errors.Is(err, vault.ErrPreUpgradeCopy) || strings.Contains(msg, "\n") || !strings.Contains(msg, where) || !strings.Contains(msg, "from before") || !strings.Contains(msg, "put back") {
					t.Fatalf("%s: refused with %q, want one line wrapping ErrPreUpgradeCopy that names %s, says it is from before the upgrade and what to put back", at.name, msg, where)
				}
				t.Logf("%s: %v", at.name, err)
			}

			// The current state put back: both instances and a new one serve, the record destroyed.
			replacePrefix(t, cli, prefix, current)
			in, err := s.start(t)
			if err != nil {
				t.Fatalf("a new instance on the current state: %v", err)
			}
			for i, cl := range []*vaultclient.Client{a, b, in.client(t)} {
				if _, err := cl.Recover(ctx, id, []byte("right")); err == nil {
					t.Fatalf("instance %d: the right password opened the destroyed record", i)
				}
			}
			if reg, err := in.srv.Registered(id); err != nil || reg {
				t.Fatalf("registered: %v %v", reg, err)
			}
		})
	}
}

// Instances that start together on a plain store's prefix (a deployment
// started after the binary was upgraded) all start: one takes the values
// over, the others find its table, and none takes the upgrade under way
// for a copy from before it. The realm id the plain store carried is
// kept.
func TestEtcdInstancesUpgradeTogether(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{})
	s.withSoftHSM(t)
	ctx := context.Background()
	id := api.CredentialID("together", "")
	sec := secret32()
	p, stop := s.startPlain(t)
	if _, _, err := p.client(t).Register(ctx, id, []byte("pw"), sec, 0); err != nil {
		t.Fatal(err)
	}
	realmID := p.srv.RealmID()
	stop()
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
	for i, in := range ins {
		if got := in.srv.RealmID(); got != realmID {
			t.Fatalf("instance %d: realm id %x, the plain store's %x", i, got, realmID)
		}
		if got, err := in.client(t).Recover(ctx, id, []byte("pw")); err != nil || !bytes.Equal(got, sec) {
			t.Fatalf("instance %d: recover: %v", i, err)
		}
	}
}
