package archive

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

// Issue 23, section 3: the nonces of key rotate --rewrite against a store
// writer who holds a leaked old key.

// putRecorder keeps every version of every pack stored through it: what
// the store (the attacker) sees. It hides the FileStore and ReaderAtStore
// interfaces of the store it wraps, so every pack goes through Put.
type putRecorder struct {
	cloud.Store
	mu    sync.Mutex
	packs map[string][][]byte
}

func (p *putRecorder) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if !strings.HasPrefix(name, "data/") {
		return p.Store.Put(ctx, name, r, size)
	}
	data, err := io.ReadAll(io.LimitReader(r, size))
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.packs == nil {
		p.packs = map[string][][]byte{}
	}
	p.packs[name] = append(p.packs[name], data)
	p.mu.Unlock()
	return p.Store.Put(ctx, name, bytes.NewReader(data), size)
}

// sealedTwice opens every pack version rec saw under the pack keys of k
// and returns one line per (key, nonce) that sealed two different
// plaintexts (or the same plaintext with different associated data), and
// the chunk ids of every blob sealed.
func sealedTwice(t *testing.T, rec *putRecorder, k *keySet) ([]string, map[ID]bool) {
	t.Helper()
	type use struct {
		id      ID
		counter uint64
	}
	seen := map[use][32]byte{}
	twice := map[ID][]string{} // the nonce counters used twice, by pack
	sealed := map[ID]bool{}
	note := func(u use, aad, plain []byte) {
		h := sha256.New()
		h.Write(aad)
		h.Write([]byte{0})
		h.Write(plain)
		var d [32]byte
		h.Sum(d[:0])
		if prev, ok := seen[u]; ok && prev != d {
			twice[u.id] = append(twice[u.id], counterName(u.counter))
		}
		seen[u] = d
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	names := make([]string, 0, len(rec.packs))
	for n := range rec.packs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		id, ok := packIDFromName(name)
		if !ok {
			t.Fatalf("%s: not a pack name", name)
		}
		aead := k.packAEAD(id)
		for _, data := range rec.packs[name] {
			tl := int64(binary.BigEndian.Uint32(data[len(data)-4:]))
			trailer := data[int64(len(data))-4-tl : len(data)-4]
			var nonce [12]byte
			tplain, err := aead.Open(nil, packNonce(&nonce, trailerCounter), trailer, trailerAAD)
			if err != nil {
				continue // not under this key
			}
			note(use{id, trailerCounter}, trailerAAD, tplain)
			entries, err := k.parseTrailer(id, trailer, int64(len(data)))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, e := range entries {
				var aad [33]byte
				a := blobAAD(&aad, e.ID, e.Flags)
				plain, err := aead.Open(nil, packNonce(&nonce, uint64(e.Counter)), data[e.Offset:e.Offset+e.Length], a)
				if err != nil {
					t.Fatalf("%s: blob %d does not open: %v", name, e.Counter, err)
				}
				note(use{id, uint64(e.Counter)}, a, plain)
				sealed[e.ID] = true
			}
		}
	}
	var reuse []string
	for id, counters := range twice {
		reuse = append(reuse, fmt.Sprintf("the key of %s, nonce counters %s", packName(id), strings.Join(counters, ", ")))
	}
	sort.Strings(reuse)
	return reuse, sealed
}

func counterName(v uint64) string {
	if v == trailerCounter {
		return "2^64-1 (the trailer's)"
	}
	return fmt.Sprint(v)
}

// forgePack writes, under name id in the store directory dir, a pack
// sealed under the old epoch's keys old, with the given blob lengths
// (ciphertext, tag included) and fresh random contents whose chunk ids
// are right (the leaked key gives the content keys): what the attacker
// can make.
func forgePack(t *testing.T, dir string, old *keySet, id ID, lengths []uint32) []ID {
	t.Helper()
	pw, err := old.newPackWriter(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.discard()
	pw.id, pw.aead = id, old.packAEAD(id)
	var forged []ID
	for _, l := range lengths {
		payload := make([]byte, l-tagSize, l)
		for i := range payload {
			payload[i] = byte(i*7 + int(l))
		}
		copy(payload, "forged by the store")
		m := hmac.New(sha256.New, old.chunkID[:])
		m.Write(payload)
		var cid ID
		m.Sum(cid[:0])
		if err := pw.add(cid, 0, payload, int(l-tagSize)); err != nil {
			t.Fatal(err)
		}
		forged = append(forged, cid)
	}
	if _, err := pw.finish(); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(pw.f)
	if err != nil {
		t.Fatal(err)
	}
	p := tamperPath(dir, packName(id))
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return forged
}

// storedTrailer reads the trailer of a stored pack under k.
func storedTrailer(t *testing.T, dir string, id ID, k *keySet) ([]blobEntry, error) {
	t.Helper()
	data, err := os.ReadFile(tamperPath(dir, packName(id)))
	if err != nil {
		return nil, err
	}
	tl := int64(binary.BigEndian.Uint32(data[len(data)-4:]))
	return k.parseTrailer(id, data[int64(len(data))-4-tl:len(data)-4], int64(len(data)))
}

// The attack of issue 23: a rewrite is interrupted; the store, holding
// the leaked old key, puts under a pack's name a pack it forged under
// that key — with other contents at the same blob positions — and the
// rewrite is resumed. "rewritten" forges the name of a pack the first run
// had already re-encrypted; "new pack" the name of a pack a backup wrote
// under the new epoch between the runs. Whatever the resumed run does
// with the forged pack, no key and nonce may ever seal two different
// plaintexts: every pack version the store was given is opened under the
// new epoch's pack keys and compared, nonce by nonce.
func TestRewriteForgedPackBetweenRuns(t *testing.T) {
	ctx := context.Background()
	for _, target := range []string{"rewritten", "new pack"} {
		t.Run(target, func(t *testing.T) {
			tr := newTestRepo(t)
			tr.cfg.PackSize = 1 << 20
			media := filepath.Join(t.TempDir(), "Media")
			randomTree(t, media, 23)
			if _, err := tr.Backup(ctx, BackupOptions{Media: media}); err != nil {
				t.Fatal(err)
			}
			oldMaster := tr.keys.master
			old := deriveKeys(oldMaster) // what leaked (epoch 0: its content keys too)
			// The original packs' layouts, as the old key shows them.
			before, _, err := tr.listPacks(ctx)
			if err != nil {
				t.Fatal(err)
			}
			layout := map[ID][]uint32{}
			for id := range before {
				entries, err := storedTrailer(t, tr.dir, id, old)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					layout[id] = append(layout[id], e.Length)
				}
			}
			res, err := tr.Rotate(ctx, RotateOptions{NewRecoveryKey: true, Rewrite: true})
			if err != nil {
				t.Fatal(err)
			}
			rec := &putRecorder{Store: tr.store}
			tr.store = rec
			stopAt := len(before) / 2
			cctx, cancel := context.WithCancel(ctx)
			_, err = tr.Rewrite(cctx, func(p RewriteProgress) {
				if p.Packs == stopAt {
					cancel()
				}
			})
			cancel()
			if err == nil {
				t.Fatal("the cancelled rewrite finished")
			}
			var victim ID
			var lengths []uint32
			switch target {
			case "rewritten":
				// A pack the first run dealt with: re-encrypted in place,
				// or gone (copied to a new pack).
				for id := range before {
					if _, err := storedTrailer(t, tr.dir, id, old); err != nil {
						victim, lengths = id, layout[id]
						break
					}
				}
			case "new pack":
				// A backup between the runs writes packs under the new
				// epoch.
				randomTree(t, filepath.Join(media, "later"), 24)
				if _, err := tr.Backup(ctx, BackupOptions{Media: media}); err != nil {
					t.Fatal(err)
				}
				after, _, err := tr.listPacks(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var ids []ID
				for id := range after {
					rec.mu.Lock()
					n := len(rec.packs[packName(id)])
					rec.mu.Unlock()
					if _, ok := before[id]; !ok && n > 0 {
						ids = append(ids, id)
					}
				}
				sort.Slice(ids, func(i, j int) bool { return bytes.Compare(ids[i][:], ids[j][:]) < 0 })
				for _, id := range ids {
					if entries, err := storedTrailer(t, tr.dir, id, tr.keys); err == nil && len(entries) > 1 {
						victim = id
						for _, e := range entries {
							lengths = append(lengths, e.Length)
						}
						break
					}
				}
			}
			if lengths == nil {
				t.Fatal("no pack to forge")
			}
			forged := forgePack(t, tr.dir, old, victim, lengths)

			r, err := openWith(t, tr.dir, t.TempDir(), Credentials{RecoveryKey: res.RecoveryKey}, false)
			if err != nil {
				t.Fatal(err)
			}
			rec2 := &putRecorder{Store: r.store, packs: rec.packs} // the store sees both runs
			r.store = rec2
			rw, err := r.Rewrite(ctx, nil)
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("resumed rewrite: %v", err)
			}
			t.Logf("resumed rewrite: %+v, %v", rw, err)
			reuse, sealed := sealedTwice(t, rec2, r.keys)
			for _, line := range reuse {
				t.Errorf("two plaintexts sealed under one key and nonce: %s", line)
			}
			// Not vacuous: the resumed run either refused the forged pack,
			// naming it, or sealed its blobs under the new epoch.
			switch {
			case err != nil:
				if !strings.Contains(err.Error(), victim.Short()) {
					t.Errorf("the resumed run's error does not name the forged pack %s: %v", victim.Short(), err)
				}
			case !sealed[forged[0]]:
				t.Errorf("the resumed run neither refused the forged pack nor re-encrypted it")
			}
		})
	}
}

// legacyRewritePack is the earlier code's re-encryption of a pack (before
// issue 23): in place, under the same pack id and nonces, with the
// current epoch's key for that id. Repositories it rewrote must still
// read.
func legacyRewritePack(t *testing.T, r *Repository, id ID, size int64) {
	t.Helper()
	ctx := context.Background()
	r.epochs.packEpochs.Delete(id)
	entries, err := r.readTrailer(ctx, id, size)
	if err != nil {
		t.Fatal(err)
	}
	ko, old := r.epochs.packEpochs.Load(id)
	if !old {
		t.Fatalf("%s is not under an older epoch", packName(id))
	}
	from := ko.(*keySet)
	pw, err := r.newPackWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.discard()
	pw.id, pw.aead = id, r.keys.packAEAD(id)
	data, err := os.ReadFile(tamperPath(r.store.Location(), packName(id)))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		buf := append([]byte(nil), data[e.Offset:e.Offset+e.Length]...)
		var nonce [12]byte
		var aad [33]byte
		plain, err := from.packAEAD(id).Open(buf[:0], packNonce(&nonce, uint64(e.Counter)), buf, blobAAD(&aad, e.ID, e.Flags))
		if err != nil {
			t.Fatal(err)
		}
		if err := pw.add(e.ID, e.Flags, plain, int(e.RawLen)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := pw.finish()
	if err != nil || n != size {
		t.Fatalf("legacy rewrite of %s: %d bytes (was %d), %v", packName(id), n, size, err)
	}
	if err := r.putParity(ctx, id, pw.f, pw.size); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := r.store.Put(ctx, packName(id), pw.f, pw.size); err != nil {
		t.Fatal(err)
	}
}

// rewriteFixture is a repository with several packs, a database and
// media, rotated with rewrite set and not yet rewritten.
type rewriteFixture struct {
	dir, src  string
	snap      *Snapshot
	oldMaster keys.Key
	newKey    *keys.Key
	packs     map[ID]int64 // before the rewrite
	r         *Repository
}

func newRewriteFixture(t *testing.T, parity int) *rewriteFixture {
	t.Helper()
	ctx := context.Background()
	f := &rewriteFixture{dir: filepath.Join(t.TempDir(), "repo"), src: t.TempDir()}
	st, err := local.Open(f.dir, true)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := Init(ctx, st, InitOptions{Password: []byte("correct horse"), Argon2: testArgon, Parity: parity})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	r.SetTempDir(t.TempDir())
	r.cfg.PackSize = 1 << 20 // several packs
	makeDB(t, filepath.Join(f.src, "msgstore.db"), 1500)
	randomTree(t, filepath.Join(f.src, "Media"), 31)
	if f.snap, err = r.Backup(ctx, BackupOptions{DB: filepath.Join(f.src, "msgstore.db"), Media: filepath.Join(f.src, "Media")}); err != nil {
		t.Fatal(err)
	}
	f.oldMaster = r.keys.master
	slots, err := r.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keep []KeepSlot
	for _, s := range slots {
		if s.Kind == keys.KindPassword {
			keep = append(keep, KeepSlot{ID: s.ID, Secret: []byte("correct horse")})
		}
	}
	res, err := r.Rotate(ctx, RotateOptions{Keep: keep, NewRecoveryKey: true, Rewrite: true})
	if err != nil {
		t.Fatal(err)
	}
	f.newKey = res.RecoveryKey
	if f.packs, _, err = r.listPacks(ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.packs) < 6 {
		t.Fatalf("only %d packs", len(f.packs))
	}
	f.r = r
	return f
}

// open opens the repository as a new process would, with the new key.
func (f *rewriteFixture) open(t *testing.T) *Repository {
	t.Helper()
	r, err := openWith(t, f.dir, t.TempDir(), Credentials{RecoveryKey: f.newKey}, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// verify checks the repository with --read-data (no errors; with done,
// no warnings either and nothing left under the old key) and restores
// the snapshot, comparing it with the source.
func (f *rewriteFixture) verify(t *testing.T, done bool) {
	t.Helper()
	r := f.open(t)
	cr := checkReadData(t, r)
	if done && len(cr.Warnings) > 0 {
		t.Errorf("check after the rewrite: %q", cr.Warnings)
	}
	out := restoreAll(t, r, f.snap)
	compareTrees(t, treeDigest(t, filepath.Join(f.src, "Media")), treeDigest(t, filepath.Join(out, "Media")))
	if n := messageRows(t, filepath.Join(out, "msgstore.db")); n != 1500 {
		t.Errorf("restored database has %d rows", n)
	}
	if !done {
		return
	}
	packs, _, err := r.listPacks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(packs) != len(f.packs) {
		t.Errorf("%d packs in the store after the rewrite, %d before", len(packs), len(f.packs))
	}
	for id := range packs {
		if packOpensUnder(t, f.dir, id, f.oldMaster) {
			t.Errorf("%s opens under the old key", packName(id))
		}
	}
	for _, prefix := range []string{"index/", "snapshots/", "keyring/"} {
		objs, _ := r.listNames(context.Background(), prefix)
		for _, o := range objs {
			if objectOpensUnder(t, f.dir, o.Name, f.oldMaster) {
				t.Errorf("%s opens under the old key", o.Name)
			}
		}
	}
}

// failNth fails the n-th Put or Delete (op) of a name with prefix: an
// interruption there.
type failNth struct {
	cloud.Store
	mu        sync.Mutex
	op        string
	prefix    string
	n, seen   int
	triggered bool
}

func (f *failNth) hit(op, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op != f.op || !strings.HasPrefix(name, f.prefix) {
		return false
	}
	f.seen++
	if f.seen == f.n {
		f.triggered = true
		return true
	}
	return false
}

func (f *failNth) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if f.hit("put", name) {
		return errors.New("injected failure")
	}
	return f.Store.Put(ctx, name, r, size)
}

func (f *failNth) Delete(ctx context.Context, name string) error {
	if f.hit("delete", name) {
		return errors.New("injected failure")
	}
	return f.Store.Delete(ctx, name)
}

// A rewrite interrupted at each step of a pack's move (its copy stored,
// the index objects that list it replaced, its parity and itself deleted)
// or between packs leaves a repository that checks and restores; the next
// run finishes the job without doing again what was done (no second copy
// of a pack), and the result checks without a warning, restores
// identically, and opens under the old key nowhere.
func TestRewriteResumed(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		op, prefix string
		n          int
	}{
		{"cancelled between packs", "", "", 0},
		{"copy not stored", "put", "data/", 3},
		{"index object not replaced", "put", "index/", 2},
		{"old index object not deleted", "delete", "index/", 2},
		{"parity not deleted", "delete", "parity/", 2},
		{"pack not deleted", "delete", "data/", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRewriteFixture(t, 3)
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			copies := &putRecorder{Store: f.r.store}
			f.r.store = copies
			var fail *failNth
			if tc.op != "" {
				fail = &failNth{Store: f.r.store, op: tc.op, prefix: tc.prefix, n: tc.n}
				f.r.store = fail
			}
			_, err := f.r.Rewrite(rctx, func(p RewriteProgress) {
				if tc.op == "" && p.Packs == len(f.packs)/2 {
					cancel()
				}
			})
			if err == nil || fail != nil && !fail.triggered {
				t.Fatalf("the interrupted rewrite: %v", err)
			}
			f.verify(t, false)

			r := f.open(t)
			r.store = &putRecorder{Store: r.store, packs: copies.packs}
			rw, err := r.Rewrite(ctx, nil)
			if err != nil {
				t.Fatalf("resumed rewrite: %v", err)
			}
			// Each pack copied once over both runs.
			if len(copies.packs) != len(f.packs) {
				t.Errorf("%d packs stored by the two runs, for %d packs", len(copies.packs), len(f.packs))
			}
			t.Logf("resumed: %d packs moved (%d bytes re-encrypted), %d were done; %d objects", rw.Packs, rw.Bytes, rw.PacksSkipped, rw.Objects)
			if rw.Packs == 0 || rw.PacksSkipped == 0 || rw.Packs+rw.PacksSkipped != len(f.packs) || len(rw.Retired) != 1 {
				t.Errorf("resumed rewrite: %+v (%d packs before)", rw, len(f.packs))
			}
			f.verify(t, true)
			if again, err := f.open(t).Rewrite(ctx, nil); err != nil || again.Packs != 0 || again.Objects != 0 {
				t.Errorf("a third run: %+v %v", again, err)
			}
		})
	}
}

// Repositories whose packs the earlier code re-encrypted in place (under
// HKDF(K_pack, pack id) of the new epoch, the same nonces) still read:
// half of them before an interruption, and then finished by this code;
// or all of them.
func TestRewriteAfterLegacyRewrite(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		legacy func(n int) int // how many of n packs the earlier code did
	}{
		{"half, then this code", func(n int) int { return n / 2 }},
		{"all of them", func(n int) int { return n }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRewriteFixture(t, 0)
			ids := make([]ID, 0, len(f.packs))
			for id := range f.packs {
				ids = append(ids, id)
			}
			sort.Slice(ids, func(i, j int) bool { return bytes.Compare(ids[i][:], ids[j][:]) < 0 })
			done := tc.legacy(len(ids))
			for _, id := range ids[:done] {
				legacyRewritePack(t, f.r, id, f.packs[id])
				if packOpensUnder(t, f.dir, id, f.oldMaster) {
					t.Fatalf("%s opens under the old key after the legacy rewrite", packName(id))
				}
			}
			f.verify(t, false)
			rw, err := f.open(t).Rewrite(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rw.PacksSkipped != done || rw.Packs != len(ids)-done {
				t.Errorf("rewrite after the legacy one: %+v (%d of %d packs done before)", rw, done, len(ids))
			}
			f.verify(t, true)
			// The legacy packs are still there, under their ids.
			packs, _, _ := f.open(t).listPacks(ctx)
			for _, id := range ids[:done] {
				if _, ok := packs[id]; !ok {
					t.Errorf("%s (rewritten by the earlier code) is gone", packName(id))
				}
			}
		})
	}
}
