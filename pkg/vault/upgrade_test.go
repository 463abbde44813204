package vault_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	bolt "go.etcd.io/bbolt"
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

// wantPreUpgradeRefused checks the error a vault gives on a copy of its
// storage from before the key table upgrade: one line, naming the file,
// saying what it is and what to do.
func wantPreUpgradeRefused(t *testing.T, err error, where string) {
	t.Helper()
	if err == nil {
		t.Fatal("the vault opened a copy of its storage from before the key table upgrade")
	}
	msg := err.Error()
	if !errors.Is(err, vault.ErrPreUpgradeCopy) || strings.Contains(msg, "\n") || !strings.Contains(msg, where) ||
		!strings.Contains(msg, "from before") || !strings.Contains(msg, "put back") {
		t.Fatalf("refused with %q, want one line wrapping ErrPreUpgradeCopy that names %s, says it is from before the upgrade and what to put back", msg, where)
	}
}

// Issue 23, finding 2: a vault.db from before the RatchetStore upgrade,
// put back after a record was destroyed, does not bring the record back:
// the upgrade is recorded in the sealer (the HSM), outside the file, and
// a store that holds values but no key table is not taken over again.
// Nor when the storage writer also removes the key table the upgrade
// wrote while keeping its id (the ratchet's own data in the file).
func TestPreUpgradeCopyGivesNoGuesses(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			dir := t.TempDir()
			r := ratchetFor(t, withHSM, dir)
			ctx := context.Background()
			id := api.CredentialID("pre-upgrade", "")
			sec := secret32(t)
			pv, stop := plainVault(t, dir, r)
			if _, _, err := pv.client(t).Register(ctx, id, []byte("right"), sec, 0); err != nil {
				t.Fatal(err)
			}
			stop()
			db := filepath.Join(dir, "vault.db")
			preUpgrade := filepath.Join(t.TempDir(), "pre-upgrade.db")
			copyFile(t, db, preUpgrade)

			// The upgrade, then the record destroyed by 10 wrong guesses.
			v, err := startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			c := v.client(t)
			if got, err := c.Recover(ctx, id, []byte("right")); err != nil || !bytes.Equal(got, sec) {
				t.Fatalf("recover after the upgrade: %v", err)
			}
			for range 10 {
				if _, err := c.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
			if reg, err := v.srv.Registered(id); err != nil || reg {
				t.Fatalf("registered after the limit: %v %v", reg, err)
			}
			v.stop()
			current := filepath.Join(t.TempDir(), "current.db")
			copyFile(t, db, current)

			attacks := []struct {
				name string
				make func()
			}{
				{"the whole pre-upgrade file", func() { copyFile(t, preUpgrade, db) }},
				{"the current file, its key table removed but its id, and the pre-upgrade values", func() {
					copyFile(t, current, db)
					stripKeyTable(t, db, preUpgrade)
				}},
			}
			for _, a := range attacks {
				a.make()
				v, err := startRatchetVault(t, dir, r)
				if err == nil {
					// Today's code: the record is back, and guesses with it.
					cl := v.client(t)
					for range 9 {
						_, _ = cl.Recover(ctx, id, []byte("wrong"))
					}
					got, rerr := cl.Recover(ctx, id, []byte("right"))
					n := v.counted.Load()
					v.stop()
					t.Fatalf("%s: the vault started (after %d more guesses, the right password: %v, secret back %v)", a.name, n, rerr, bytes.Equal(got, sec))
				}
				wantPreUpgradeRefused(t, err, db)
				t.Logf("%s: %v", a.name, err)
			}

			// The current file still opens, the record still destroyed.
			copyFile(t, current, db)
			v, err = startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatalf("the current file after the refusals: %v", err)
			}
			defer v.stop()
			if reg, err := v.srv.Registered(id); err != nil || reg {
				t.Fatalf("registered: %v %v", reg, err)
			}
		})
	}
}

// stripKeyTable removes the key table from the file at path but its id,
// and puts the values of the pre-upgrade file (BoltStore's format, with
// the bucket's sequence) in place of the file's values.
func stripKeyTable(t *testing.T, path, preUpgrade string) {
	t.Helper()
	vals := map[string][]byte{}
	var seq uint64
	pdb, err := bolt.Open(preUpgrade, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = pdb.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("vault"))
		seq = b.Sequence()
		return b.ForEach(func(k, v []byte) error {
			vals[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	pdb.Close()
	if len(vals) == 0 {
		t.Fatal("no pre-upgrade values")
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		kt := tx.Bucket([]byte("key-table"))
		tid := bytes.Clone(kt.Get([]byte("id")))
		if tid == nil {
			return errors.New("no table id")
		}
		for _, name := range []string{"key-table", "vault"} {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return err
			}
		}
		kt, err := tx.CreateBucket([]byte("key-table"))
		if err != nil {
			return err
		}
		if err := kt.Put([]byte("id"), tid); err != nil {
			return err
		}
		vb, err := tx.CreateBucket([]byte("vault"))
		if err != nil {
			return err
		}
		if err := vb.SetSequence(seq); err != nil {
			return err
		}
		for k, v := range vals {
			if err := vb.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
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

// A vault upgraded by an earlier version kept no record of it in the
// sealer; the epoch keys of its key table are the evidence: a pre-upgrade
// copy is refused, even with the table's id copied into it, and the first
// open of the current file keeps the record. (The file sealer's records,
// in dir/epoch/records, are removed to stand for that earlier version.)
func TestPreUpgradeCopyRefusedAfterAnEarlierUpgrade(t *testing.T) {
	dir := t.TempDir()
	r := fileRatchet(t, dir)
	ctx := context.Background()
	id := api.CredentialID("earlier", "")
	pv, stop := plainVault(t, dir, r)
	if _, _, err := pv.client(t).Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	stop()
	db := filepath.Join(dir, "vault.db")
	preUpgrade, current := filepath.Join(t.TempDir(), "pre-upgrade.db"), filepath.Join(t.TempDir(), "current.db")
	copyFile(t, db, preUpgrade)
	v, err := startRatchetVault(t, dir, r)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := v.client(t).Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatal(err)
		}
	}
	v.stop()
	copyFile(t, db, current)
	records := filepath.Join(dir, "epoch", "records")
	if err := os.Remove(records); err != nil {
		t.Fatal(err)
	}

	copyFile(t, preUpgrade, db)
	_, err = startRatchetVault(t, dir, r)
	wantPreUpgradeRefused(t, err, db)
	if !strings.Contains(err.Error(), "earlier version") {
		t.Fatalf("refused with %q, want the epoch keys of an earlier version's table named", err)
	}
	copyFile(t, current, db)
	stripKeyTable(t, db, preUpgrade)
	_, err = startRatchetVault(t, dir, r)
	wantPreUpgradeRefused(t, err, db)

	// The current file opens, and its open keeps the record.
	copyFile(t, current, db)
	v, err = startRatchetVault(t, dir, r)
	if err != nil {
		t.Fatal(err)
	}
	v.stop()
	if _, err := os.Stat(records); err != nil {
		t.Fatalf("no record kept by the open of an upgraded file: %v", err)
	}
	copyFile(t, preUpgrade, db)
	_, err = startRatchetVault(t, dir, r)
	wantPreUpgradeRefused(t, err, db)
	if !strings.Contains(err.Error(), "records that key table") {
		t.Fatalf("refused with %q, want the sealer's record named", err)
	}
}
