package archive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

// openWith opens the repository at dir as a new process would, with a
// cache directory (for the high-water marks) and these credentials.
func openWith(t *testing.T, dir, cache string, c Credentials, allowRollback bool) (*Repository, error) {
	t.Helper()
	st, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	r.SetTempDir(t.TempDir())
	r.SetCacheDir(cache)
	r.SetAllowRollback(allowRollback)
	if err := r.Unlock(context.Background(), c); err != nil {
		r.Close()
		return nil, err
	}
	t.Cleanup(func() { r.Close() })
	return r, nil
}

func restoreAll(t *testing.T, r *Repository, s *Snapshot) string {
	t.Helper()
	out := t.TempDir()
	if _, err := r.Restore(context.Background(), s, RestoreOptions{Target: out, NoSync: true}); err != nil {
		t.Fatalf("restore of %s: %v", s.ID.Short(), err)
	}
	return out
}

// objectOpensUnder reports whether an object of the store decrypts under
// the keys of master (epoch 0 derivation, as a leaked old key gives).
func objectOpensUnder(t *testing.T, dir, name string, master keys.Key) bool {
	t.Helper()
	data, err := os.ReadFile(tamperPath(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	sr, err := deriveKeys(master).newStreamReader(bytes.NewReader(data), name)
	if err != nil {
		return false
	}
	_, err = io.ReadAll(sr)
	return err == nil
}

// key rotate (issue 15, acceptance 1, without --rewrite): a slot not kept
// opens nothing written after the rotation — its master key decrypts the
// old snapshots only — and wabackup refuses it even when the store puts
// its object back; the kept password and the new 64-digit key open
// everything, old and new.
func TestRotateRetiresOldSlots(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	media := filepath.Join(t.TempDir(), "Media")
	randomTree(t, media, 5)
	s1, err := tr.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	d1 := treeDigest(t, media)
	slots, err := tr.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pw, rec *keys.Slot
	for _, s := range slots {
		switch s.Kind {
		case keys.KindPassword:
			pw = s
		case keys.KindRecovery:
			rec = s
		}
	}
	// A second password, not kept: the one that leaked.
	leaked, err := tr.AddPassword(ctx, []byte("leaked password"), testArgon, "old laptop")
	if err != nil {
		t.Fatal(err)
	}
	leakedSlot, err := os.ReadFile(tamperPath(tr.dir, "keys/"+leaked.ID))
	if err != nil {
		t.Fatal(err)
	}
	leakedMaster, err := leaked.Unwrap([]byte("leaked password"))
	if err != nil {
		t.Fatal(err)
	}
	oldRecoverySlot, err := os.ReadFile(tamperPath(tr.dir, "keys/"+rec.ID))
	if err != nil {
		t.Fatal(err)
	}
	oldMaster, err := rec.Unwrap(tr.recovery[:])
	if err != nil {
		t.Fatal(err)
	}

	res, err := tr.Rotate(ctx, RotateOptions{Keep: []KeepSlot{{ID: pw.ID, Secret: []byte("correct horse")}}, NewRecoveryKey: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 1 || len(res.Kept) != 1 || res.KeptFrom[0].ID != pw.ID || res.RecoveryKey == nil || len(res.Removed) != 2 {
		t.Fatalf("rotate: %+v", res)
	}
	randomTree(t, filepath.Join(media, "after"), 6)
	s2, err := tr.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	d2 := treeDigest(t, media)
	if s2.Stats.NewChunks == 0 || s2.Stats.Unchanged == 0 {
		t.Errorf("backup after the rotation: %+v (deduplication across the epochs expected)", s2.Stats)
	}

	// The kept password and the new key open everything.
	cache := t.TempDir()
	for name, c := range map[string]Credentials{"password": {Password: []byte("correct horse")}, "new key": {RecoveryKey: res.RecoveryKey}} {
		r, err := openWith(t, tr.dir, cache, c, false)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		compareTrees(t, d1, treeDigest(t, filepath.Join(restoreAll(t, r, s1), "Media")))
		compareTrees(t, d2, treeDigest(t, filepath.Join(restoreAll(t, r, s2), "Media")))
		cr, err := r.Check(ctx, CheckOptions{ReadData: true})
		if err != nil {
			t.Fatalf("%s: check: %v %v", name, err, cr.Errors)
		}
		if !strings.Contains(strings.Join(cr.Warnings, "\n"), "are still under key epoch 0") {
			t.Errorf("%s: check does not report the objects under the old epoch: %q", name, cr.Warnings)
		}
	}

	// The old 64-digit key: its slot is gone; put back byte for byte, it
	// is refused, named.
	if _, err := openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("old key after the rotation: %v", err)
	}
	if err := os.WriteFile(tamperPath(tr.dir, "keys/"+rec.ID), oldRecoverySlot, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false)
	if !errors.Is(err, ErrRetiredKey) || !strings.Contains(err.Error(), rec.ID[:8]) || !strings.Contains(err.Error(), "retired by key rotate") {
		t.Fatalf("old slot put back: %v", err)
	}
	// The leaked password likewise, and what it opened decrypts the old
	// snapshot only.
	if _, err := openWith(t, tr.dir, cache, Credentials{Password: []byte("leaked password")}, false); !errors.Is(err, keys.ErrWrongKey) {
		t.Fatalf("leaked password after the rotation: %v", err)
	}
	os.WriteFile(tamperPath(tr.dir, "keys/"+leaked.ID), leakedSlot, 0o600)
	if _, err := openWith(t, tr.dir, cache, Credentials{Password: []byte("leaked password")}, false); !errors.Is(err, ErrRetiredKey) || !strings.Contains(err.Error(), leaked.ID[:8]) {
		t.Fatalf("leaked password's slot put back: %v", err)
	}
	if leakedMaster != oldMaster {
		t.Fatal("the slots of one epoch wrap different master keys")
	}
	// What the old master key itself can read (someone who kept the old
	// slot and its key, outside wabackup): the first snapshot, not the
	// second.
	if !objectOpensUnder(t, tr.dir, snapshotName(s1.ID), oldMaster) {
		t.Error("the old master key does not open the snapshot from before the rotation")
	}
	if objectOpensUnder(t, tr.dir, snapshotName(s2.ID), oldMaster) {
		t.Error("the old master key opens a snapshot made after the rotation")
	}
	r, _ := openWith(t, tr.dir, cache, Credentials{RecoveryKey: res.RecoveryKey}, false)
	idx, err := r.listNames(ctx, "index/")
	if err != nil {
		t.Fatal(err)
	}
	newer := 0
	for _, o := range idx {
		if !objectOpensUnder(t, tr.dir, o.Name, oldMaster) {
			newer++
		}
	}
	if newer == 0 {
		t.Error("every index object opens under the old master key")
	}
}

// Rollback (issue 15, acceptance 2): a removed slot put back is refused,
// named; a keyring older than this machine has seen is refused, and so is
// a snapshot list without the newest snapshot seen; --allow-rollback
// accepts both.
func TestKeyringRollback(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	cache := t.TempDir()
	tr.SetCacheDir(cache)
	media := filepath.Join(t.TempDir(), "Media")
	randomTree(t, media, 7)
	s1, err := tr.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	second := []byte("second password")
	extra, err := tr.AddPassword(ctx, second, testArgon, "extra")
	if err != nil {
		t.Fatal(err)
	}
	slotBytes, err := os.ReadFile(tamperPath(tr.dir, "keys/"+extra.ID))
	if err != nil {
		t.Fatal(err)
	}
	keyringV2, err := os.ReadFile(tamperPath(tr.dir, keyringName(2)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RemoveSlot(ctx, extra.ID); err != nil {
		t.Fatal(err)
	}
	// The removed slot's object back: refused with the date.
	if err := os.WriteFile(tamperPath(tr.dir, "keys/"+extra.ID), slotBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = openWith(t, tr.dir, cache, Credentials{Password: second}, false)
	if !errors.Is(err, ErrRetiredKey) || !strings.Contains(err.Error(), "was removed on") || !strings.Contains(err.Error(), extra.ID[:8]) {
		t.Fatalf("removed slot put back: %v", err)
	}
	// The store rolled back to keyring version 2, where the slot was
	// listed: this machine has seen version 3.
	os.Remove(tamperPath(tr.dir, keyringName(3)))
	os.WriteFile(tamperPath(tr.dir, keyringName(2)), keyringV2, 0o600)
	_, err = openWith(t, tr.dir, cache, Credentials{Password: second}, false)
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "version 2") || !strings.Contains(err.Error(), "version 3") {
		t.Fatalf("keyring rolled back: %v", err)
	}
	if _, err := openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("keyring rolled back, opened with another slot: %v", err)
	}
	// Knowingly accepted; and a fresh machine cannot tell (FORMAT.md).
	if _, err := openWith(t, tr.dir, cache, Credentials{Password: second}, true); err != nil {
		t.Fatalf("--allow-rollback: %v", err)
	}
	if _, err := openWith(t, tr.dir, t.TempDir(), Credentials{Password: second}, false); err != nil {
		t.Fatalf("a fresh machine: %v", err)
	}

	// Snapshots: the newest seen disappears without a forget here.
	r, err := openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Snapshots(ctx); err != nil {
		t.Fatal(err)
	}
	os.Remove(tamperPath(tr.dir, snapshotName(s2.ID)))
	r, err = openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Snapshots(ctx); !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), s2.ID.Short()) {
		t.Fatalf("newest snapshot gone: %v", err)
	}
	r, _ = openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, true)
	if snaps, err := r.Snapshots(ctx); err != nil || len(snaps) != 1 || snaps[0].ID != s1.ID {
		t.Fatalf("--allow-rollback: %v %v", snaps, err)
	}
	// Accepted once, the mark is what the store shows; forget of the
	// newest snapshot on this machine lowers it too.
	r, _ = openWith(t, tr.dir, cache, Credentials{RecoveryKey: &tr.recovery}, false)
	s3, err := r.Backup(ctx, BackupOptions{Media: media})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Snapshots(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.store.Delete(ctx, snapshotName(s3.ID)); err != nil {
		t.Fatal(err)
	}
	r.forgotHighWater(map[ID]bool{s3.ID: true}, []*Snapshot{s1, s3})
	if _, err := r.Snapshots(ctx); err != nil {
		t.Fatalf("after this machine forgot the newest: %v", err)
	}
}

// An interrupted rotation leaves a repository that opens with the old or
// the new keys, and that check passes.
func TestRotateInterrupted(t *testing.T) {
	ctx := context.Background()
	for _, stop := range []string{"keyring", "config", "delete"} {
		t.Run(stop, func(t *testing.T) {
			tr := newTestRepo(t)
			media := filepath.Join(t.TempDir(), "Media")
			randomTree(t, media, 8)
			s1, err := tr.Backup(ctx, BackupOptions{Media: media})
			if err != nil {
				t.Fatal(err)
			}
			slots, _ := tr.Slots(ctx)
			var pw string
			for _, s := range slots {
				if s.Kind == keys.KindPassword {
					pw = s.ID
				}
			}
			fs := &failingStore{Store: tr.store, failPut: map[string]bool{}, failDelete: stop == "delete"}
			switch stop {
			case "keyring":
				fs.failPut[keyringName(2)] = true
			case "config":
				fs.failPut["config"] = true
			}
			tr.store = fs
			res, err := tr.Rotate(ctx, RotateOptions{Keep: []KeepSlot{{ID: pw, Secret: []byte("correct horse")}}, NewRecoveryKey: true})
			if err == nil {
				t.Fatal("rotation did not fail")
			}
			// Before the keyring: the old keys; after: the new ones.
			old := Credentials{RecoveryKey: &tr.recovery}
			want := old
			if stop != "keyring" {
				want = Credentials{RecoveryKey: res.RecoveryKey}
			}
			r, err := openWith(t, tr.dir, t.TempDir(), want, false)
			if err != nil {
				t.Fatalf("open after a rotation stopped at %s: %v", stop, err)
			}
			if stop != "keyring" {
				if _, err := openWith(t, tr.dir, t.TempDir(), old, false); !errors.Is(err, keys.ErrWrongKey) {
					t.Errorf("old key after a rotation stopped at %s: %v", stop, err)
				}
			}
			if cr, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
				t.Fatalf("check: %v %v", err, cr.Errors)
			}
			restoreAll(t, r, s1)
			if _, err := openWith(t, tr.dir, t.TempDir(), Credentials{Password: []byte("correct horse")}, false); err != nil {
				t.Fatalf("the kept password: %v", err)
			}
		})
	}
}

// failingStore fails the Puts of the names in failPut, and every Delete
// if failDelete: an interruption at that point.
type failingStore struct {
	cloud.Store
	failPut    map[string]bool
	failDelete bool
}

func (f *failingStore) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if f.failPut[name] {
		return errors.New("injected failure")
	}
	return f.Store.Put(ctx, name, r, size)
}

func (f *failingStore) Delete(ctx context.Context, name string) error {
	if f.failDelete {
		return errors.New("injected failure")
	}
	return f.Store.Delete(ctx, name)
}

// packOpensUnder reports whether a stored pack's trailer authenticates
// under the pack keys of master.
func packOpensUnder(t *testing.T, dir string, id ID, master keys.Key) bool {
	t.Helper()
	data, err := os.ReadFile(tamperPath(dir, packName(id)))
	if err != nil {
		t.Fatal(err)
	}
	tl := int64(data[len(data)-4])<<24 | int64(data[len(data)-3])<<16 | int64(data[len(data)-2])<<8 | int64(data[len(data)-1])
	sealed := data[int64(len(data))-4-tl : len(data)-4]
	_, err = deriveKeys(master).parseTrailer(id, sealed, int64(len(data)))
	return err == nil
}

// rotate --rewrite (issue 15, acceptance 1): afterwards the old key
// opens nothing at all — no pack, index, snapshot or keyring — while the
// kept password and the new key open everything; a second run has
// nothing left to do.
func TestRotateRewrite(t *testing.T) {
	ctx := context.Background()
	for _, parity := range []int{0, 2} {
		t.Run(map[int]string{0: "plain", 2: "parity"}[parity], func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			st, err := local.Open(dir, true)
			if err != nil {
				t.Fatal(err)
			}
			r, rk, err := Init(ctx, st, InitOptions{Password: []byte("correct horse"), Argon2: testArgon, Parity: parity})
			if err != nil {
				t.Fatal(err)
			}
			r.SetTempDir(t.TempDir())
			src := t.TempDir()
			makeDB(t, filepath.Join(src, "msgstore.db"), 2000)
			randomTree(t, filepath.Join(src, "Media"), 9)
			s1, err := r.Backup(ctx, BackupOptions{DB: filepath.Join(src, "msgstore.db"), Media: filepath.Join(src, "Media")})
			if err != nil {
				t.Fatal(err)
			}
			slots, _ := r.Slots(ctx)
			var pw, rec *keys.Slot
			for _, s := range slots {
				if s.Kind == keys.KindPassword {
					pw = s
				} else {
					rec = s
				}
			}
			oldMaster, _ := rec.Unwrap(rk[:])
			res, err := r.Rotate(ctx, RotateOptions{Keep: []KeepSlot{{ID: pw.ID, Secret: []byte("correct horse")}}, NewRecoveryKey: true, Rewrite: true})
			if err != nil {
				t.Fatal(err)
			}
			rw, err := r.Rewrite(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rw.Packs == 0 || rw.Objects == 0 || len(rw.Retired) != 1 || rw.Retired[0] != 0 {
				t.Fatalf("rewrite: %+v", rw)
			}
			// Nothing in the store opens under the old master key.
			packs, _, err := r.listPacks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for id := range packs {
				if packOpensUnder(t, dir, id, oldMaster) {
					t.Errorf("%s still opens under the old key", packName(id))
				}
			}
			for _, prefix := range []string{"index/", "snapshots/", "keyring/"} {
				objs, _ := r.listNames(ctx, prefix)
				for _, o := range objs {
					if objectOpensUnder(t, dir, o.Name, oldMaster) {
						t.Errorf("%s still opens under the old key", o.Name)
					}
				}
			}
			if kr := r.Keyring(); len(kr.Old) != 0 || kr.Rewrite || len(kr.Retired) != 1 {
				t.Errorf("keyring after the rewrite: %+v", kr)
			}
			vs, _ := r.keyringVersions(ctx)
			if len(vs) != 1 {
				t.Errorf("keyring versions left: %v", vs)
			}
			for name, c := range map[string]Credentials{"password": {Password: []byte("correct horse")}, "new key": {RecoveryKey: res.RecoveryKey}} {
				o, err := openWith(t, dir, t.TempDir(), c, false)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if cr, err := o.Check(ctx, CheckOptions{ReadData: true}); err != nil || len(cr.Warnings) != 0 {
					t.Fatalf("%s: check: %v %v %v", name, err, cr.Errors, cr.Warnings)
				}
				out := restoreAll(t, o, s1)
				compareTrees(t, treeDigest(t, filepath.Join(src, "Media")), treeDigest(t, filepath.Join(out, "Media")))
				if n := messageRows(t, filepath.Join(out, "msgstore.db")); n != 2000 {
					t.Errorf("%s: restored database has %d rows", name, n)
				}
			}
			again, err := r.Rewrite(ctx, nil)
			if err != nil || again.Packs != 0 || again.Objects != 0 {
				t.Fatalf("second rewrite: %+v %v", again, err)
			}
		})
	}
}

// An interrupted rewrite: the repository opens and checks with the
// objects half rewritten, and the next run rewrites only the rest.
func TestRewriteInterrupted(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	media := filepath.Join(t.TempDir(), "Media")
	randomTree(t, media, 10)
	if _, err := tr.Backup(ctx, BackupOptions{Media: media}); err != nil {
		t.Fatal(err)
	}
	res, err := tr.Rotate(ctx, RotateOptions{NewRecoveryKey: true, Rewrite: true})
	if err != nil {
		t.Fatal(err)
	}
	packs, _, _ := tr.listPacks(ctx)
	stopAt := len(packs) / 2
	cctx, cancel := context.WithCancel(ctx)
	_, err = tr.Rewrite(cctx, func(p RewriteProgress) {
		if p.Packs == stopAt {
			cancel()
		}
	})
	if err == nil {
		t.Fatal("the cancelled rewrite finished")
	}
	r, err := openWith(t, tr.dir, t.TempDir(), Credentials{RecoveryKey: res.RecoveryKey}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Keyring().Rewrite || len(r.Keyring().Old) != 1 {
		t.Fatalf("keyring after the interruption: %+v", r.Keyring())
	}
	if cr, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check of a half rewritten repository: %v %v", err, cr.Errors)
	}
	rw, err := r.Rewrite(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rw.PacksSkipped < stopAt || rw.Packs+rw.PacksSkipped != len(packs) || rw.Packs == 0 {
		t.Errorf("resumed rewrite: %+v (of %d packs, %d done before)", rw, len(packs), stopAt)
	}
	if cr, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check: %v %v", err, cr.Errors)
	}
}

// migrate interrupted after its keyring, before the config: the
// repository opens as before (the epoch-0 keyring unused), and migrate
// run again finishes with the next keyring version; a keyring of a later
// epoch beside an old config is a downgrade, refused.
func TestMigrateInterrupted(t *testing.T) {
	ctx := context.Background()
	r, dir := openV1Fixture(t)
	r.store = &failingStore{Store: r.store, failPut: map[string]bool{"config": true}}
	if _, err := r.Migrate(ctx); err == nil {
		t.Fatal("migrate did not fail")
	}
	r = openV1At(t, dir)
	if v := r.Config().Version; v != 1 {
		t.Fatalf("config version %d after the failed migrate", v)
	}
	checkReadData(t, r)
	if changed, err := r.Migrate(ctx); err != nil || !changed {
		t.Fatalf("migrate again: %v %v", changed, err)
	}
	r = openV1At(t, dir)
	if kr := r.Keyring(); kr == nil || kr.Version != 2 || r.Config().Version != 3 {
		t.Fatalf("after migrate: keyring %+v, config version %d", kr, r.Config().Version)
	}
	// Rotate, then put the version-1 config back: refused.
	old, err := os.ReadFile("../../testdata/v1repo/repo/config")
	if err != nil {
		t.Fatal(err)
	}
	keyText, _ := os.ReadFile("../../testdata/v1repo/key.txt")
	k, _ := keys.ParseRecoveryKey(string(keyText))
	if _, err := r.Rotate(ctx, RotateOptions{Keep: []KeepSlot{{ID: r.UnlockedWith(), Secret: k[:]}}}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "config"), old, 0o600)
	st, _ := local.Open(dir, false)
	o, err := Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Unlock(ctx, Credentials{RecoveryKey: &k}); err == nil || !strings.Contains(err.Error(), "downgraded") {
		t.Fatalf("a version-1 config beside a rotated keyring: %v", err)
	}
}
