package vault_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// plainVault runs a vault of an earlier version: on a BoltStore (no key
// table) in dir, sealed by r.
func plainVault(t *testing.T, dir string, r ratchetSealer) (e *env, stop func()) {
	t.Helper()
	st, err := vault.OpenBolt(filepath.Join(dir, "vault.db"))
	if err != nil {
		t.Fatal(err)
	}
	e = newEnvStore(t, vault.Config{MaxGuesses: 10, Sealer: r}, st)
	e.dir, e.store = dir, st
	return e, func() {
		e.ts.Close()
		e.srv.Close()
		st.Close()
	}
}

// A plain store that carries a realm id (every vault since the realm
// API) is upgraded: the realm id and the realm records, sealed the plain
// store's way, open from the key table (issue 23, finding 2; the upgrade
// stopped at "malformed realm id" before).
func TestUpgradeKeepsRealmIDAndRecords(t *testing.T) {
	ctx := context.Background()
	dirA, dirB, dirC := t.TempDir(), t.TempDir(), t.TempDir()
	ra := hsmRatchet(t)
	pv, stopA := plainVault(t, dirA, ra)
	plainA := &testRealm{name: "A (plain bbolt)", replicas: []vaulttest.Replica{{URL: pv.ts.URL, Client: pv.ts.Client()}}, servers: []*vault.Server{pv.srv}}
	b := startBoltRealm(t, "B", dirB, fileRatchet(t, dirB))
	c := startBoltRealm(t, "C", dirC, fileRatchet(t, dirC))
	realmID := pv.srv.RealmID()
	id := api.CredentialID("realm-upgrade", "")
	sec, sec1 := secret32(t), secret32(t)
	if err := realmClient(t, []*testRealm{plainA, b, c}, id).Register(ctx, []byte("pw"), sec, realmGuesses); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pv.client(t).Register(ctx, id, []byte("pw1"), sec1, 0); err != nil {
		t.Fatal(err)
	}
	stopA()

	a := startBoltRealm(t, "A (upgraded)", dirA, ra)
	if got := a.servers[0].RealmID(); got != realmID {
		t.Fatalf("realm id %x after the upgrade, was %x", got, realmID)
	}
	realms := []*testRealm{a, b, c}
	wantStatus(t, realms, id, api.RealmRegistered, realmGuesses)
	recoverOK(t, realmClient(t, realms, id), "pw", sec, 0)
	if got, err := a.env.client(t).Recover(ctx, id, []byte("pw1")); err != nil || !bytes.Equal(got, sec1) {
		t.Fatalf("the v1 record after the upgrade: %v", err)
	}
	// A write replaces a taken-over record with one the key table seals.
	if _, err := realmClient(t, realms, id).Recover(ctx, []byte("wrong")); err == nil {
		t.Fatal("a wrong password recovered")
	}
	wantStatus(t, realms, id, api.RealmRegistered, realmGuesses-1)
}
