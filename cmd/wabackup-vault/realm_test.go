package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

func replica(t *testing.T, v *vaulttest.Vault) vaulttest.Replica {
	t.Helper()
	pem, err := os.ReadFile(v.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return vaulttest.Replica{URL: v.URL, Client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}}
}

var realmIDLine = regexp.MustCompile(`realm id ([0-9a-f]{32})`)

// loggedRealmID returns the realm id the vault printed at start, and
// checks it against GET /v2/info.
func loggedRealmID(t *testing.T, v *vaulttest.Vault) string {
	t.Helper()
	m := realmIDLine.FindAllStringSubmatch(v.Output(), -1)
	if len(m) == 0 {
		t.Fatalf("no realm id in the start-up log:\n%s", v.Output())
	}
	logged := m[len(m)-1][1]
	in, err := replica(t, v).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if in.RealmID != logged || !strings.Contains(v.Output(), in.Fingerprint) {
		t.Fatalf("GET /v2/info: realm %s, fingerprint %s; the log says realm %s:\n%s", in.RealmID, in.Fingerprint, logged, v.Output())
	}
	return logged
}

// The binary serves the realm API: three wabackup-vault processes (two on
// bbolt, each with its own SoftHSM2 token; one realm of two processes on a
// 3-member etcd cluster) are three realms; the realm id is printed at
// start, kept across restarts and shared by the processes on one store.
func TestRealmAPIServed(t *testing.T) {
	cluster := testservers.Etcd(t, 3)
	optA := vaulttest.Options{Dir: t.TempDir(), HSM: vaulttest.SoftHSM(t)}
	optB := vaulttest.Options{Dir: t.TempDir(), HSM: vaulttest.SoftHSM(t)}
	a, b := vaulttest.Start(t, optA), vaulttest.Start(t, optB)
	storeURL := "etcd://" + strings.Join(cluster.Endpoints(), ",") + "/realm-test"
	c1 := vaulttest.Start(t, vaulttest.Options{Args: []string{"--store", storeURL}})
	// The second process of the etcd realm shares the first's sealer: the
	// development key file and its epoch keys, so the same --data (in
	// production, one HSM cluster).
	c2 := vaulttest.Start(t, vaulttest.Options{Dir: c1.Dir, Args: []string{"--store", storeURL}})

	idA, idB, idC := loggedRealmID(t, a), loggedRealmID(t, b), loggedRealmID(t, c1)
	if id2 := loggedRealmID(t, c2); id2 != idC {
		t.Fatalf("two processes on one etcd store are realms %s and %s", idC, id2)
	}
	if idA == idB || idA == idC || idB == idC {
		t.Fatalf("realm ids %s %s %s", idA, idB, idC)
	}

	ctx := context.Background()
	cred := api.CredentialID("served", "")
	var sec [32]byte
	_, _ = rand.Read(sec[:])
	newClient := func() *threshold.Client {
		cfg := threshold.Config{Threshold: 2, KDF: threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, UserInfo: cred}
		var trs []threshold.Realm
		for _, reps := range [][]vaulttest.Replica{{replica(t, a)}, {replica(t, b)}, {replica(t, c1), replica(t, c2)}} {
			rc, err := reps[0].RealmConfig(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Realms = append(cfg.Realms, rc)
			// recover3 (and register2) at the second process of the etcd realm
			route := func(path string) int {
				if len(reps) > 1 && (path == api.PathRealmRecover3 || path == api.PathRealmRegister2) {
					return 1
				}
				return 0
			}
			trs = append(trs, &vaulttest.Realm{Replicas: reps, Route: route, CredentialID: cred})
		}
		c, err := threshold.NewClient(cfg, trs)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := newClient()
	if err := c.Register(ctx, []byte("pw"), sec[:], 10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recover(ctx, []byte("wrong")); !errors.Is(err, threshold.ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	// Restarted, A is the same realm and holds the counted guess.
	a.Stop()
	a = vaulttest.Start(t, optA)
	if id := loggedRealmID(t, a); id != idA {
		t.Fatalf("realm A restarted as %s, was %s", id, idA)
	}
	st, err := (&vaulttest.Realm{Replicas: []vaulttest.Replica{replica(t, a)}, CredentialID: cred}).Status(ctx, 0)
	if err != nil || st.State != api.RealmRegistered || st.GuessesLeft != 9 {
		t.Fatalf("realm A after a restart: %+v, %v", st, err)
	}
	rec, err := newClient().Recover(ctx, []byte("pw"))
	if err != nil || !bytes.Equal(rec.Secret, sec[:]) || len(rec.Problems) != 0 {
		t.Fatalf("recover: %v", err)
	}
}
