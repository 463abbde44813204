package etcdstore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/etcdstore"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/storetest"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// The store conformance suite against the RatchetStore on a real
// 3-member cluster, each store opened on the same prefix (another
// instance, as far as the table is concerned).
func TestRatchetConformance(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{})
	storetest.Run(t, func(t *testing.T) vault.Store {
		st, err := etcdstore.OpenRatchet(s.storeConfig(), s.sealer)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	})
}

// Three instances increment counters under compare-and-swap, each on its
// own table copy: every successful swap is counted exactly once, every
// value opens, and each instance reads what the others wrote.
func TestRatchetInstancesShareTheTable(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{})
	var sts []*vault.RatchetStore
	for range 3 {
		st, err := etcdstore.OpenRatchet(s.storeConfig(), s.sealer)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		sts = append(sts, st)
	}
	const keys, workers, rounds = 20, 12, 40
	var done [keys]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := sts[w%len(sts)]
			for i := range rounds {
				k := []byte(fmt.Sprint("counter-", (w*7+i)%keys))
				for {
					val, ver, err := st.Get(k)
					if err != nil {
						errs <- fmt.Errorf("get %s: %w", k, err)
						return
					}
					var n uint64
					if val != nil {
						n = binary.BigEndian.Uint64(val)
					}
					_, err = st.CompareAndSwap(k, ver, binary.BigEndian.AppendUint64(nil, n+1))
					if errors.Is(err, vault.ErrConflict) {
						continue
					}
					if err != nil {
						errs <- fmt.Errorf("swap %s: %w", k, err)
						return
					}
					done[(w*7+i)%keys].Add(1)
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, st := range sts {
		for i := range keys {
			val, _, err := st.Get([]byte(fmt.Sprint("counter-", i)))
			if err != nil || len(val) != 8 || int64(binary.BigEndian.Uint64(val)) != done[i].Load() {
				t.Fatalf("counter %d: %x %v, want %d", i, val, err, done[i].Load())
			}
		}
	}
}

// snapshot copies every key under prefix (a storage backup).
func snapshot(t *testing.T, cli *clientv3.Client, prefix string) map[string][]byte {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = kv.Value
	}
	return m
}

// putBack writes the keys of a snapshot that start with prefix, byte for
// byte: a storage writer restoring them.
func putBack(t *testing.T, cli *clientv3.Client, snap map[string][]byte, prefix string) {
	t.Helper()
	for k, v := range snap {
		if strings.HasPrefix(k, prefix) {
			if _, err := cli.Put(context.Background(), k, string(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A storage writer of the etcd prefix (a snapshot of the cluster, or the
// vault's etcd credentials) puts back older records, a whole older state,
// and a destroyed record: none buys a guess, none opens, at every
// instance; and no epoch key the HSM still holds opens the older copy's
// key table.
func TestEtcdRollbackGivesNoGuesses(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			c := testservers.Etcd(t, 3)
			s := newSite(t, c, vault.Config{MaxGuesses: 10})
			if withHSM {
				h := vaulttest.SoftHSM(t)
				hs, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { hs.Close() })
				s.sealer = hs
			}
			ins := s.instances(t, 2)
			cli := ins[0].store.Client()
			ctx := context.Background()
			a, b := ins[0].client(t), ins[1].client(t)
			id := api.CredentialID("rollback", "")
			if _, _, err := a.Register(ctx, id, []byte("right"), secret32(), 0); err != nil {
				t.Fatal(err)
			}
			backup := snapshot(t, cli, s.prefix+"/")
			for range 4 {
				if _, err := b.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
			if left, _, err := a.Status(ctx, id); err != nil || left != 6 {
				t.Fatalf("status: %d, %v", left, err)
			}
			// The records, byte for byte as before the guesses.
			putBack(t, cli, backup, s.prefix+"/ratchet/v/")
			counted := ins[0].counted.Load() + ins[1].counted.Load()
			for _, cl := range []*vaultclient.Client{a, b} {
				if left, _, err := cl.Status(ctx, id); err == nil {
					t.Fatalf("status answered from a put-back record: %d left", left)
				}
				if _, err := cl.Recover(ctx, id, []byte("another guess")); err == nil || errors.Is(err, keys.ErrWrongKey) {
					t.Fatalf("a login answered from a put-back record: %v", err)
				}
				if _, err := cl.Recover(ctx, id, []byte("right")); err == nil {
					t.Fatal("the right password opened a put-back record")
				}
			}
			if n := ins[0].counted.Load() + ins[1].counted.Load(); n != counted {
				t.Fatalf("%d guesses evaluated from the put-back record", n-counted)
			}
			// The whole older state: the running instances refuse it, and
			// so does a new one.
			putBack(t, cli, backup, s.prefix+"/")
			if _, _, err := a.Status(ctx, id); err == nil {
				t.Fatal("status answered from a put-back key table")
			}
			if _, err := s.start(t); err == nil {
				t.Fatal("an instance started on a put-back key table")
			}
			// No epoch key the HSM holds opens the older copy's root.
			v := backup[s.prefix+"/ratchet/root"]
			sealed := v[1+int(v[0]):]
			ids, err := s.sealer.EpochKeys(nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ids {
				if _, err := s.sealer.OpenEpoch(k, sealed, []byte("wabackup-vault ratchet root v1")); err == nil {
					t.Fatal("an epoch key the HSM still holds opens the older key table: its records could be read back")
				}
			}
		})
	}
}

// A destroyed record put back (from a copy taken before it was
// destroyed) does not open, even with the right password.
func TestEtcdDestroyedRecordStaysGone(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{MaxGuesses: 3})
	in := s.instances(t, 1)[0]
	cli := in.store.Client()
	ctx := context.Background()
	cl := in.client(t)
	id := api.CredentialID("destroyed", "")
	if _, _, err := cl.Register(ctx, id, []byte("right"), secret32(), 0); err != nil {
		t.Fatal(err)
	}
	backup := snapshot(t, cli, s.prefix+"/")
	for range 3 {
		if _, err := cl.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatal(err)
		}
	}
	if reg, err := in.srv.Registered(id); err != nil || reg {
		t.Fatalf("still registered after the limit (%v)", err)
	}
	putBack(t, cli, backup, s.prefix+"/ratchet/v/")
	if _, err := cl.Recover(ctx, id, []byte("right")); err == nil {
		t.Fatal("the right password opened a destroyed record put back")
	}
	if reg, _ := in.srv.Registered(id); reg {
		t.Fatal("a destroyed record put back counts as registered")
	}
}

// The values a plain Store kept under the prefix are taken over by the
// first OpenRatchet, in commits of at most the transaction limit (here
// 100 values, so several), and removed from their old keys; later opens
// take nothing over again.
func TestRatchetTakesOverPlainStore(t *testing.T) {
	c := testservers.Etcd(t, 3)
	s := newSite(t, c, vault.Config{})
	plain := openStore(t, c, s.prefix, 5*time.Second)
	defer plain.Close()
	var top uint64
	for i := range 100 {
		v, err := plain.CompareAndSwap([]byte(fmt.Sprint("old-", i)), 0, []byte(fmt.Sprint("value-", i)))
		if err != nil {
			t.Fatal(err)
		}
		top = max(top, v)
	}
	st, err := etcdstore.OpenRatchet(s.storeConfig(), s.sealer)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		got, v, err := st.Get([]byte(fmt.Sprint("old-", i)))
		if err != nil || v <= top || string(got) != fmt.Sprint("value-", i) {
			t.Fatalf("taken over: %q %d %v, want %q above version %d", got, v, err, fmt.Sprint("value-", i), top)
		}
		if val, _, _ := plain.Get([]byte(fmt.Sprint("old-", i))); val != nil {
			t.Fatalf("old-%d is still at its old key", i)
		}
	}
	st.Close()
	// A value put at an old key afterwards is not taken over.
	if _, err := plain.CompareAndSwap([]byte("late"), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	st, err = etcdstore.OpenRatchet(s.storeConfig(), s.sealer)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got, _, err := st.Get([]byte("late")); err != nil || got != nil {
		t.Fatalf("a value written at an old key after the takeover: %q %v", got, err)
	}
}
