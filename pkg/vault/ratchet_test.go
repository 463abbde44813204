package vault_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/storetest"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	bolt "go.etcd.io/bbolt"
)

type ratchetSealer interface {
	vault.Sealer
	vault.Ratchet
}

func fileRatchet(t testing.TB, dir string) ratchetSealer {
	s, err := vault.OpenFileSealer(filepath.Join(dir, "seal.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hsmRatchet(t testing.TB) ratchetSealer {
	h := vaulttest.SoftHSM(t)
	s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true, Sessions: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRatchetStoreConformance(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			dir := t.TempDir()
			var r ratchetSealer
			if withHSM {
				r = hsmRatchet(t)
			} else {
				r = fileRatchet(t, dir)
			}
			var opened []*vault.RatchetStore
			storetest.Run(t, func(t *testing.T) vault.Store {
				s, err := vault.OpenRatchet(filepath.Join(dir, "vault.db"), r)
				if err != nil {
					t.Fatal(err)
				}
				opened = append(opened, s)
				return s
			})
			for _, s := range opened {
				s.Close()
			}
			// Closed, only the current epoch key is left.
			if ids, err := r.EpochKeys(nil); err != nil || len(ids) != 1 {
				t.Fatalf("epoch keys left: %d (%v), want the current one", len(ids), err)
			}
		})
	}
}

// ratchetVault runs a vault on a RatchetStore in dir.
type ratchetVault struct {
	*env
	st *vault.RatchetStore
}

func startRatchetVault(t *testing.T, dir string, r ratchetSealer) (*ratchetVault, error) {
	st, err := vault.OpenRatchet(filepath.Join(dir, "vault.db"), r)
	if err != nil {
		return nil, err
	}
	e := newEnvStore(t, vault.Config{MaxGuesses: 10, Sealer: r}, st)
	return &ratchetVault{env: e, st: st}, nil
}

func (v *ratchetVault) stop() {
	v.ts.Close()
	v.srv.Close()
	v.st.Close()
}

// copyFile copies a file (a storage backup).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// putBackValues writes every value of the backup's vault bucket, byte for
// byte, over the current file's: a storage writer restoring older records.
func putBackValues(t *testing.T, backup, current string) int {
	t.Helper()
	vals := map[string][]byte{}
	db, err := bolt.Open(backup, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("vault")).ForEach(func(k, v []byte) error {
			vals[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	db.Close()
	db, err = bolt.Open(current, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		for k, v := range vals {
			if err := tx.Bucket([]byte("vault")).Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return len(vals)
}

// A storage writer without the HSM cannot buy guesses by putting back an
// older record (attempts at 0), nor the whole older vault.db (issue 11,
// point 2).
func TestRollbackGivesNoGuesses(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			dir := t.TempDir()
			r := ratchetFor(t, withHSM, dir)
			ctx := context.Background()
			id := api.CredentialID("rollback", "")
			v, err := startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := v.client(t).Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
				t.Fatal(err)
			}
			v.stop()
			db, backup := filepath.Join(dir, "vault.db"), filepath.Join(t.TempDir(), "backup.db")
			copyFile(t, db, backup) // the record with no attempt counted

			v, err = startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			c := v.client(t)
			for range 4 {
				if _, err := c.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
			if left, _, err := c.Status(ctx, id); err != nil || left != 6 {
				t.Fatalf("status: %d, %v", left, err)
			}
			v.stop()

			// The older record, byte for byte, over the current one.
			if n := putBackValues(t, backup, db); n == 0 {
				t.Fatal("nothing to put back")
			}
			v, err = startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatalf("the vault does not start after a record was put back: %v", err)
			}
			c = v.client(t)
			if left, _, err := c.Status(ctx, id); err == nil {
				t.Fatalf("status answered from a put-back record: %d left", left)
			}
			for range 3 {
				if _, err := c.Recover(ctx, id, []byte("another guess")); err == nil || errors.Is(err, keys.ErrWrongKey) {
					t.Fatalf("a login answered from a put-back record: %v", err)
				}
			}
			if _, err := c.Recover(ctx, id, []byte("right")); err == nil {
				t.Fatal("the right password opened a put-back record")
			}
			if n := v.counted.Load(); n != 0 {
				t.Fatalf("%d guesses got a KE2 from the put-back record", n)
			}
			v.stop()

			// The whole older file.
			copyFile(t, backup, db)
			if _, err := vault.OpenRatchet(db, r); err == nil {
				t.Fatal("the store opened from an older copy of vault.db")
			}
		})
	}
}

func ratchetFor(t *testing.T, withHSM bool, dir string) ratchetSealer {
	if withHSM {
		return hsmRatchet(t)
	}
	return fileRatchet(t, dir)
}

// A destroyed record does not open from any copy of the storage: the key
// that opened it is gone from the HSM (issue 11, point 2).
func TestDestroyedRecordGoneFromBackups(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		t.Run(vaulttest.SealerName(withHSM), func(t *testing.T) {
			dir := t.TempDir()
			r := ratchetFor(t, withHSM, dir)
			ctx := context.Background()
			id := api.CredentialID("destroyed", "")
			v, err := startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := v.client(t).Register(ctx, id, []byte("right"), secret32(t), 0); err != nil {
				t.Fatal(err)
			}
			v.stop()
			db, backup := filepath.Join(dir, "vault.db"), filepath.Join(t.TempDir(), "backup.db")
			copyFile(t, db, backup)
			v, err = startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			for range 10 {
				if _, err := v.client(t).Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
					t.Fatal(err)
				}
			}
			if reg, err := v.srv.Registered(id); err != nil || reg {
				t.Fatalf("registered after the limit: %v %v", reg, err)
			}
			v.stop()

			// No epoch key the HSM holds opens the backup's key table, so
			// nothing in it (the record's data key included) can be read.
			bdb, err := bolt.Open(backup, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			var root []byte
			_ = bdb.View(func(tx *bolt.Tx) error {
				root = bytes.Clone(tx.Bucket([]byte("key-table")).Get([]byte("root")))
				return nil
			})
			bdb.Close()
			ids, err := r.EpochKeys(nil)
			if err != nil || len(ids) != 1 {
				t.Fatalf("epoch keys: %d, %v", len(ids), err)
			}
			if _, err := r.OpenEpoch(ids[0], root, []byte("wabackup-vault ratchet root v1")); err == nil {
				t.Fatal("the backup's key table opens under the HSM's epoch key")
			}
			// Put back, the record does not open.
			putBackValues(t, backup, db)
			v, err = startRatchetVault(t, dir, r)
			if err != nil {
				t.Fatal(err)
			}
			defer v.stop()
			if reg, err := v.srv.Registered(id); err == nil || reg {
				t.Fatalf("a destroyed record put back: registered %v, %v", reg, err)
			}
			if _, err := v.client(t).Recover(ctx, id, []byte("right")); err == nil {
				t.Fatal("the right password opened a destroyed record put back")
			}
		})
	}
}

// A crash between making an epoch key and destroying the one before
// leaves two; the next open keeps the one the table opens under. A failed
// commit destroys the key it made and changes nothing.
func TestRatchetCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	r := fileRatchet(t, dir)
	path := filepath.Join(dir, "vault.db")
	st, err := vault.OpenRatchet(path, r)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := st.CompareAndSwap([]byte("k"), 0, []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	fail := true
	st.SetFailCommitForTest(func() bool { return fail })
	if _, err := st.CompareAndSwap([]byte("k"), v1, []byte("two")); err == nil {
		t.Fatal("a failed commit succeeded")
	}
	fail = false
	if got, ver, err := st.Get([]byte("k")); err != nil || ver != v1 || string(got) != "one" {
		t.Fatalf("after a failed commit: %q %d %v", got, ver, err)
	}
	prefix := st.TableIDForTest()
	st.Close()
	if ids, _ := r.EpochKeys(nil); len(ids) != 1 {
		t.Fatalf("%d epoch keys after a failed commit and a close, want 1", len(ids))
	}
	if _, err := r.NewEpochKey(prefix); err != nil { // a crash right after making one
		t.Fatal(err)
	}
	other, err := r.NewEpochKey([]byte("another store")) // not this store's
	if err != nil {
		t.Fatal(err)
	}
	st, err = vault.OpenRatchet(path, r)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if ids, _ := r.EpochKeys(prefix); len(ids) < 1 || len(ids) > 3 {
		t.Fatalf("%d epoch keys after reopening, want the current one and at most 2 spare", len(ids))
	}
	if ids, _ := r.EpochKeys([]byte("another store")); len(ids) != 1 || !bytes.Equal(ids[0], other) {
		t.Fatal("reopening destroyed another store's epoch key")
	}
	if got, _, err := st.Get([]byte("k")); err != nil || string(got) != "one" {
		t.Fatalf("after the crash: %q %v", got, err)
	}
}

// A BoltStore file is taken over by the first OpenRatchet (its values get
// new versions, above every old one).
func TestRatchetTakesOverBoltStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vault.db")
	bs, err := vault.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := bs.CompareAndSwap([]byte("old"), 0, []byte("value"))
	if err != nil {
		t.Fatal(err)
	}
	bs.Close()
	st, err := vault.OpenRatchet(path, fileRatchet(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, v, err := st.Get([]byte("old"))
	if err != nil || v <= ver || string(got) != "value" {
		t.Fatalf("taken over: %q %d %v, want %q above version %d", got, v, err, "value", ver)
	}
	if v2, err := st.CompareAndSwap([]byte("old"), v, []byte("new")); err != nil || v2 <= v {
		t.Fatalf("write after the takeover: %d %v", v2, err)
	}
}
