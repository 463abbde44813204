package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// Two vault processes at two "sites" with --store etcd://...: the second
// shares the first's sealer — here the development key file and its epoch
// key directory, so the same --data; in production one HSM cluster whose
// members at each site replicate the token's keys — loads the sealed
// server keys from the key table in etcd, and shares the records and
// their guess counts.
func TestTwoVaultsShareAnEtcdStore(t *testing.T) {
	c := testservers.Etcd(t, 3)
	storeURL := "etcd://" + strings.Join(c.Endpoints(), ",") + "/vault-test"
	a := vaulttest.Start(t, vaulttest.Options{Args: []string{"--store", storeURL}})
	b := vaulttest.Start(t, vaulttest.Options{Dir: a.Dir, Args: []string{"--store", storeURL, "--etcd-timeout", "1s"}})
	ca, cb := client(t, a), client(t, b)
	ctx := context.Background()
	ia, err := ca.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := cb.Info(ctx)
	if err != nil || ib.Fingerprint != ia.Fingerprint {
		t.Fatalf("site B's key %v, site A's %s (%v)", ib, ia.Fingerprint, err)
	}
	if _, err := os.Stat(filepath.Join(a.Dir, "vault.db")); err == nil {
		t.Fatal("a bbolt file was created with --store etcd")
	}
	id := api.CredentialID("repo", "")
	sec := make([]byte, 32)
	sec[0] = 7
	if _, _, err := ca.Register(ctx, id, []byte("right"), sec, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatal(err)
	}
	if left, _, err := ca.Status(ctx, id); err != nil || left != 9 {
		t.Fatalf("site A sees %d left after a guess at site B (%v)", left, err)
	}
	// Without a quorum, the vault refuses.
	c.Kill(0)
	c.Kill(1)
	_, err = cb.Recover(ctx, id, []byte("right"))
	var ae *vaultclient.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("recover without quorum: %v", err)
	}
	c.Restart(0)
	c.Restart(1)
	c.WaitHealthy(30 * time.Second)
	var got []byte
	for range 10 {
		if got, err = cb.Recover(ctx, id, []byte("right")); !errors.As(err, &ae) {
			break
		}
	}
	if err != nil || !bytes.Equal(got, sec) {
		t.Fatalf("recover at site B after the members returned: %v", err)
	}
}

func TestStoreFlags(t *testing.T) {
	for _, bad := range [][]string{
		{"--store", "etcd://h:2379"}, // no prefix
		{"--store", "http://h:2379/p"},
		{"--etcd-cacert", "x.pem"}, // TLS flags without etcd
	} {
		dir := t.TempDir()
		args := append([]string{"--data", dir, "--dev-tls", filepath.Join(dir, "tls"), "--dev-file-sealer", "--listen", "127.0.0.1:0"}, bad...)
		if err := run(args); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

// --etcd-cacert/--etcd-cert/--etcd-key reach members that require client
// certificates.
func TestVaultEtcdTLSFlags(t *testing.T) {
	c := testservers.StartEtcd(t, 3, testservers.EtcdOptions{TLS: true})
	v := vaulttest.Start(t, vaulttest.Options{Args: []string{
		"--store", "etcd://" + strings.Join(c.Endpoints(), ",") + "/vault-tls",
		"--etcd-cacert", c.CAFile, "--etcd-cert", c.CertFile, "--etcd-key", c.KeyFile,
	}})
	cl := client(t, v)
	ctx := context.Background()
	id := api.CredentialID("repo", "")
	if _, _, err := cl.Register(ctx, id, []byte("pw"), make([]byte, 32), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Recover(ctx, id, []byte("pw")); err != nil {
		t.Fatal(err)
	}
}
