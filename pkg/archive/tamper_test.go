package archive

// Tamper tests: every kind of damage to a stored object is detected by
// Check (and, when a restore needs the damaged data, by Restore), and the
// message names the damaged object.
//
// Damage that is undetectable BY DESIGN (each is exercised below where it
// can be, and asserted to be harmless rather than silently skipped):
//
//   - config "created": the config MAC covers id, version, chunker
//     parameters and pack size, not the creation time, which nothing
//     depends on. A flip that keeps it a valid RFC 3339 time is accepted.
//   - config field-name case: encoding/json matches field names
//     case-insensitively, so "Format" reads as "format". The decoded config
//     is unchanged.
//   - nothing in a key slot: since format 3 the keyring lists each slot
//     with the SHA-256 of its stored bytes, so a label, a creation time or
//     a base64 padding bit changed is refused too (before format 3 those
//     were accepted as display-only).
//   - a tampered wrapped key, salt or nonce in a parseable slot: AES-GCM
//     cannot tell "tampered" from "wrong secret", so Unlock reports
//     ErrWrongKey. The failure is safe, but the message is not specific.
//   - deleting a whole snapshot: no signed list of snapshots exists, so
//     the remaining repository is consistent (its directory pieces and
//     page maps are blobs no snapshot uses, which prune frees; a version-1
//     snapshot's orphaned tree object draws a warning).
//   - deleting a key slot other than the one being used: slots are
//     independent by design.
//   - deleting an index object: nothing refers to index objects by name,
//     so no message can name it; Check reports the now-missing chunks of
//     every affected snapshot (and the unindexed packs), and Restore fails
//     with "chunk … is not in the index" (ErrCorrupt).
//   - rolling the whole store back to an older consistent copy, deleting
//     unreferenced packs, orphan trees or lock objects.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

// archiveKnownBug reports behaviour that contradicts the package's
// contract (the bugs these tests found, since fixed): a regression fails.
func archiveKnownBug(t testing.TB, id, format string, args ...any) {
	t.Helper()
	t.Fatal(fmt.Sprintf("regression of %s: ", id) + fmt.Sprintf(format, args...))
}

// tamperSeed returns the seed for random offsets: WABACKUP_TAMPER_SEED, or
// the clock. It is logged so a failure can be replayed.
func tamperSeed(t testing.TB) uint64 {
	if s := os.Getenv("WABACKUP_TAMPER_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WABACKUP_TAMPER_SEED: %v", err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// tamperNeedle is what a message must contain to name an object: its
// name, shortened the way shortName does (without the ellipsis).
func tamperNeedle(name string) string { return strings.TrimSuffix(shortName(name), "…") }

func tamperPath(dir, name string) string { return filepath.Join(dir, filepath.FromSlash(name)) }

// tamperCopyDir copies a repository directory (a local store is a plain
// directory tree). Files are hard-linked when possible: damage is always
// done by replacing a file (tamperRewrite), never by writing into it, and
// Check and Restore only read.
func tamperCopyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o700)
		}
		if os.Link(p, out) == nil {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tamperRewrite replaces an object's file by f(old contents), through a
// new file renamed into place (the old one may be a hard link to the
// pristine repository).
func tamperRewrite(t testing.TB, dir, name string, f func([]byte) []byte) {
	t.Helper()
	p := tamperPath(dir, name)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	tamperReplace(t, p, f(data))
}

func tamperReplace(t testing.TB, p string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(p), ".tamper.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func tamperFlip(t testing.TB, dir, name string, off int64, mask byte) {
	t.Helper()
	tamperRewrite(t, dir, name, func(b []byte) []byte {
		if off < 0 || off >= int64(len(b)) {
			t.Fatalf("flip %s at %d: object is %d bytes", name, off, len(b))
		}
		b[off] ^= mask
		return b
	})
}

func tamperTruncate(t testing.TB, dir, name string, size func(int64) int64) {
	t.Helper()
	tamperRewrite(t, dir, name, func(b []byte) []byte { return b[:size(int64(len(b)))] })
}

func tamperDelete(t testing.TB, dir, name string) {
	t.Helper()
	if err := os.Remove(tamperPath(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func tamperSwap(t testing.TB, dir, a, b string) {
	t.Helper()
	da, err := os.ReadFile(tamperPath(dir, a))
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(tamperPath(dir, b))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(da, db) {
		t.Fatalf("%s and %s are identical", a, b)
	}
	tamperReplace(t, tamperPath(dir, a), db)
	tamperReplace(t, tamperPath(dir, b), da)
}

// tamperSwapBlobs exchanges the ciphertexts of blobs i < j of a pack,
// keeping everything between them and the trailer in place.
func tamperSwapBlobs(t testing.TB, dir string, p tamperPack, i, j int) {
	t.Helper()
	ei, ej := p.entries[i], p.entries[j]
	tamperRewrite(t, dir, packName(p.id), func(b []byte) []byte {
		out := make([]byte, 0, len(b))
		out = append(out, b[:ei.Offset]...)
		out = append(out, b[ej.Offset:ej.Offset+ej.Length]...)
		out = append(out, b[ei.Offset+ei.Length:ej.Offset]...)
		out = append(out, b[ei.Offset:ei.Offset+ei.Length]...)
		out = append(out, b[ej.Offset+ej.Length:]...)
		if len(out) != len(b) {
			t.Fatalf("blob swap changed the pack size")
		}
		return out
	})
}

// tamperOpen opens and unlocks the repository in dir as a new process
// would.
func tamperOpen(t testing.TB, dir string, c Credentials) (*Repository, error) {
	t.Helper()
	r, err := tamperUnlock(dir, c)
	if err != nil {
		return nil, err
	}
	r.SetTempDir(t.TempDir())
	return r, nil
}

func tamperUnlock(dir string, c Credentials) (*Repository, error) {
	st, err := local.Open(dir, false)
	if err != nil {
		return nil, err
	}
	r, err := Open(context.Background(), st)
	if err != nil {
		return nil, err
	}
	if err := r.Unlock(context.Background(), c); err != nil {
		return nil, err
	}
	return r, nil
}

// tamperVerifyTarget checks what a (possibly failed) restore left under
// target: no temporary file, and every file or symlink under a final name
// identical to the source (want is treeDigest of the source). Directories
// get their mode and times only at the end of a successful restore, so
// they are not compared.
func tamperVerifyTarget(t testing.TB, target string, want map[string]string) (files int) {
	t.Helper()
	root := filepath.Join(target, "Media")
	if _, err := os.Lstat(root); errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	for rel, got := range treeDigest(t, root) {
		if strings.HasPrefix(path.Base(rel), ".wabackup-") {
			t.Errorf("temporary file left behind: %s", rel)
			continue
		}
		if strings.HasPrefix(got, "d") {
			continue
		}
		if want[rel] != got {
			t.Errorf("%s: restored as %q, source is %q", rel, got, want[rel])
		}
		files++
	}
	return files
}

type tamperPack struct {
	id      ID
	size    int64
	entries []blobEntry // from the trailer, in pack order
}

func (p tamperPack) name() string { return packName(p.id) }

// dataEnd is where the blobs end and the sealed trailer begins.
func (p tamperPack) dataEnd() int64 {
	last := p.entries[len(p.entries)-1]
	return int64(last.Offset) + int64(last.Length)
}

// tamperFixture is a repository with two snapshots of a growing tree.
type tamperFixture struct {
	dir      string
	recovery keys.Key
	snaps    []*Snapshot         // oldest first
	digests  []map[string]string // the source as each snapshot saw it
	packs    []tamperPack
	indexes  []string
}

// usedBlobs returns the ids of the blobs a restore of snap reads: its
// directory pieces and its files' chunks.
func usedBlobs(t *testing.T, fx *tamperFixture, snap *Snapshot) map[ID]bool {
	t.Helper()
	r, err := tamperOpen(t, fx.dir, fx.creds())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	used := map[ID]bool{}
	tr, err := r.openTree(context.Background(), snap, func(id ID) { used[id] = true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for {
		n, err := tr.Next()
		if err == io.EOF {
			return used
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range n.Chunks {
			id, err := ParseID(c)
			if err != nil {
				t.Fatal(err)
			}
			used[id] = true
		}
	}
}

func (fx *tamperFixture) creds() Credentials { return Credentials{RecoveryKey: &fx.recovery} }

func (fx *tamperFixture) snapName(i int) string { return snapshotName(fx.snaps[i].ID) }

func newTamperFixture(t *testing.T) *tamperFixture {
	t.Helper()
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "Media")
	randomTree(t, src, 11)
	fx := &tamperFixture{dir: tr.dir, recovery: tr.recovery}
	s1, err := tr.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	fx.snaps = append(fx.snaps, s1)
	fx.digests = append(fx.digests, treeDigest(t, src))

	// The second backup adds files. Two raw (.jpg) single-chunk files of
	// the same size give two blobs of equal length in one pack (Workers: 1).
	rng := rand.New(rand.NewPCG(11, 2))
	add := filepath.Join(src, "added")
	if err := os.MkdirAll(add, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, size := range []int{100000, 100000, 300000, 70000, 5000} {
		data := make([]byte, size)
		for k := range data {
			data[k] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("eq%d.jpg", i)
		if i >= 2 {
			name = fmt.Sprintf("new%d.bin", i)
		}
		if err := os.WriteFile(filepath.Join(add, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := tr.Backup(ctx, BackupOptions{Media: src, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Parent != s1.ID.String() {
		t.Fatalf("second snapshot's parent is %q", s2.Parent)
	}
	fx.snaps = append(fx.snaps, s2)
	fx.digests = append(fx.digests, treeDigest(t, src))

	stored, _, err := tr.listPacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id, size := range stored {
		entries, err := tr.readTrailer(ctx, id, size)
		if err != nil {
			t.Fatal(err)
		}
		fx.packs = append(fx.packs, tamperPack{id: id, size: size, entries: entries})
	}
	sort.Slice(fx.packs, func(i, j int) bool { return fx.packs[i].name() < fx.packs[j].name() })
	idx, err := tr.listNames(ctx, "index/")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range idx {
		fx.indexes = append(fx.indexes, o.Name)
	}
	sort.Strings(fx.indexes)
	if len(fx.packs) < 2 || len(fx.indexes) != 2 {
		t.Fatalf("fixture has %d packs and %d index objects, want ≥2 and 2", len(fx.packs), len(fx.indexes))
	}
	return fx
}

// Expected outcomes.
type tamperCheck int

const (
	checkNamesAll tamperCheck = iota // ErrCheckFailed, and every object in names is named by an error
	checkErrText                     // ErrCheckFailed, and some error contains checkText
	checkPasses                      // no error (warnings allowed); checkText, if set, must be a warning
)

type tamperRestore int

const (
	restoreOK       tamperRestore = iota // byte-identical
	restoreCorrupt                       // error wrapping ErrCorrupt, naming one of names
	restoreNotFound                      // error wrapping cloud.ErrNotFound, naming one of names
)

type tamperCase struct {
	name   string
	damage func(t *testing.T, dir string)
	names  []string // damaged objects

	check     tamperCheck
	checkText string

	snap        int // snapshot restored
	restore     tamperRestore
	restoreText string // overrides names for the restore message
	alsoOK      []int  // snapshots that must still restore identically
}

func TestTamper(t *testing.T) {
	fx := newTamperFixture(t)
	seed := tamperSeed(t)
	t.Logf("seed %d (set WABACKUP_TAMPER_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 3))

	// Sanity: the pristine repository checks clean and restores.
	{
		r, err := tamperOpen(t, fx.dir, fx.creds())
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.Check(context.Background(), CheckOptions{ReadData: true})
		if err != nil || len(res.Warnings) != 0 {
			t.Fatalf("pristine check: %v %v %v", err, res.Errors, res.Warnings)
		}
	}

	var cases []tamperCase
	latest := len(fx.snaps) - 1

	// Packs: every byte is a sealed blob, the sealed trailer or the
	// trailer's length. Restore reads blobs by index offsets, so damage
	// confined to the trailer is caught by Check only, and a restore
	// still succeeds.
	pick := func() tamperPack { return fx.packs[rng.IntN(len(fx.packs))] }
	packFlip := func(label string, p tamperPack, off int64) {
		c := tamperCase{
			name:   fmt.Sprintf("flip pack %s at %d of %d", label, off, p.size),
			damage: func(t *testing.T, dir string) { tamperFlip(t, dir, p.name(), off, 1<<rng.IntN(8)) },
			names:  []string{p.name()}, check: checkNamesAll, snap: latest, restore: restoreCorrupt,
		}
		if off >= p.dataEnd() {
			c.restore = restoreOK
		}
		cases = append(cases, c)
	}
	{
		p := pick()
		packFlip("start", p, 0)
		p = pick()
		packFlip("middle", p, p.size/2)
		p = pick()
		packFlip("random blob byte", p, rng.Int64N(p.dataEnd()))
		p = pick()
		packFlip("trailer", p, p.dataEnd()+rng.Int64N(p.size-4-p.dataEnd()))
		p = pick()
		packFlip("length (last 4 bytes)", p, p.size-4+rng.Int64N(4))
		p = pick()
		packFlip("last byte", p, p.size-1)
	}
	for _, tc := range []struct {
		label   string
		size    func(int64) int64
		restore tamperRestore
	}{
		{"by 1 byte", func(n int64) int64 { return n - 1 }, restoreOK},
		{"to half", func(n int64) int64 { return n / 2 }, restoreCorrupt},
		{"to zero", func(int64) int64 { return 0 }, restoreCorrupt},
	} {
		p := pick()
		cases = append(cases, tamperCase{
			name:   "truncate pack " + tc.label,
			damage: func(t *testing.T, dir string) { tamperTruncate(t, dir, p.name(), tc.size) },
			names:  []string{p.name()}, check: checkNamesAll, snap: latest, restore: tc.restore,
		})
	}
	{
		p := pick()
		cases = append(cases, tamperCase{
			name:   "delete pack",
			damage: func(t *testing.T, dir string) { tamperDelete(t, dir, p.name()) },
			names:  []string{p.name()}, check: checkNamesAll, snap: latest, restore: restoreNotFound,
		})
		a, b := fx.packs[0], fx.packs[1]
		cases = append(cases, tamperCase{
			name:   "swap two packs",
			damage: func(t *testing.T, dir string) { tamperSwap(t, dir, a.name(), b.name()) },
			names:  []string{a.name(), b.name()}, check: checkNamesAll, snap: latest, restore: restoreCorrupt,
		})
	}
	// Reorder blobs inside a pack, keeping the trailer: the nonce counter
	// and the chunk id in the AAD bind each blob to its place.
	{
		var eqPack tamperPack
		eqI, eqJ := -1, -1
		for _, p := range fx.packs {
			for i := range p.entries {
				for j := i + 1; j < len(p.entries) && eqI < 0; j++ {
					if p.entries[i].Length == p.entries[j].Length && p.entries[i].Length > 1000 {
						eqPack, eqI, eqJ = p, i, j
					}
				}
			}
		}
		if eqI < 0 {
			t.Fatal("fixture has no two blobs of equal length in one pack")
		}
		cases = append(cases, tamperCase{
			name:   fmt.Sprintf("swap equal-length blobs %d and %d inside a pack", eqI, eqJ),
			damage: func(t *testing.T, dir string) { tamperSwapBlobs(t, dir, eqPack, eqI, eqJ) },
			names:  []string{eqPack.name()}, check: checkNamesAll, snap: latest, restore: restoreCorrupt,
		})
		// Two adjacent blobs the latest snapshot reads (a directory piece
		// of the first snapshot alone is not read by its restore).
		used := usedBlobs(t, fx, fx.snaps[latest])
		var p tamperPack
		i := -1
		for i < 0 {
			p = fx.packs[rng.IntN(len(fx.packs))]
			for _, j := range rng.Perm(max(len(p.entries)-1, 0)) {
				if used[p.entries[j].ID] && used[p.entries[j+1].ID] {
					i = j
					break
				}
			}
		}
		cases = append(cases, tamperCase{
			name:   fmt.Sprintf("swap adjacent blobs %d and %d inside a pack", i, i+1),
			damage: func(t *testing.T, dir string) { tamperSwapBlobs(t, dir, p, i, i+1) },
			names:  []string{p.name()}, check: checkNamesAll, snap: latest, restore: restoreCorrupt,
		})
	}

	// STREAM objects: index, snapshot. Every byte is the salt or a
	// sealed segment, and the key is bound to the object's name.
	size := func(t *testing.T, dir, name string) int64 {
		fi, err := os.Stat(tamperPath(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	type streamKind struct {
		kind    string
		name    string // the damaged object
		other   string // another object of the same kind, for the swap
		snap    int    // snapshot whose restore needs it
		alsoOK  []int
		missing tamperRestore // restore outcome when deleted
	}
	idxName := fx.indexes[rng.IntN(len(fx.indexes))]
	otherIdx := fx.indexes[0]
	if otherIdx == idxName {
		otherIdx = fx.indexes[1]
	}
	kinds := []streamKind{
		{"index object", idxName, otherIdx, latest, nil, restoreCorrupt},
		{"snapshot object", fx.snapName(0), fx.snapName(1), 0, []int{1}, restoreNotFound},
	}
	for _, k := range kinds {
		for _, where := range []string{"salt", "random", "last byte"} {
			cases = append(cases, tamperCase{
				name: "flip " + k.kind + " " + where,
				damage: func(t *testing.T, dir string) {
					n := size(t, dir, k.name)
					off := map[string]int64{"salt": rng.Int64N(saltSize), "random": rng.Int64N(n), "last byte": n - 1}[where]
					tamperFlip(t, dir, k.name, off, 1<<rng.IntN(8))
				},
				names: []string{k.name}, check: checkNamesAll, snap: k.snap, restore: restoreCorrupt, alsoOK: k.alsoOK,
			})
		}
		for _, tc := range []struct {
			label string
			size  func(int64) int64
		}{
			{"by 1 byte", func(n int64) int64 { return n - 1 }},
			{"to half", func(n int64) int64 { return n / 2 }},
			{"to the salt", func(int64) int64 { return saltSize }},
			{"to zero", func(int64) int64 { return 0 }},
		} {
			cases = append(cases, tamperCase{
				name:   "truncate " + k.kind + " " + tc.label,
				damage: func(t *testing.T, dir string) { tamperTruncate(t, dir, k.name, tc.size) },
				names:  []string{k.name}, check: checkNamesAll, snap: k.snap, restore: restoreCorrupt, alsoOK: k.alsoOK,
			})
		}
		cases = append(cases, tamperCase{
			name:   "swap two " + k.kind + "s",
			damage: func(t *testing.T, dir string) { tamperSwap(t, dir, k.name, k.other) },
			names:  []string{k.name, k.other}, check: checkNamesAll, snap: k.snap, restore: restoreCorrupt,
		})
		del := tamperCase{
			name:   "delete " + k.kind,
			damage: func(t *testing.T, dir string) { tamperDelete(t, dir, k.name) },
			names:  []string{k.name}, check: checkNamesAll, snap: k.snap, restore: k.missing, alsoOK: k.alsoOK,
		}
		switch k.kind {
		case "index object":
			// Nothing refers to an index object by name (see the file
			// comment). The packs it described are then in no index:
			// check reads their trailers and warns (the data is intact:
			// the next backup or repair index indexes them again), and
			// restore finds the chunks the same way.
			del.check, del.checkText = checkPasses, "not in any index"
			del.restore = restoreOK
		case "snapshot object":
			// Undetectable by design (see the file comment): its
			// directory pieces are just unreferenced blobs now (prune
			// frees them), the other snapshot is intact.
			del.check, del.checkText = checkPasses, ""
			del.restore = restoreOK
			del.snap = 1
			del.alsoOK = nil
		}
		cases = append(cases, del)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { runTamperCase(t, fx, c) })
	}
}

func runTamperCase(t *testing.T, fx *tamperFixture, c tamperCase) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	tamperCopyDir(t, fx.dir, dir)
	c.damage(t, dir)

	r, err := tamperOpen(t, dir, fx.creds())
	if err != nil {
		t.Fatalf("open/unlock: %v", err)
	}
	res, err := r.Check(ctx, CheckOptions{ReadData: true})
	if res == nil {
		t.Fatalf("check failed to run: %v", err)
	}
	report := func() string {
		return fmt.Sprintf("check: %v\n errors: %q\n warnings: %q", err, res.Errors, res.Warnings)
	}
	switch c.check {
	case checkNamesAll, checkErrText:
		if !errors.Is(err, ErrCheckFailed) || len(res.Errors) == 0 {
			t.Fatalf("damage not detected by check\n%s", report())
		}
		var want []string
		if c.check == checkErrText {
			want = []string{c.checkText}
		} else {
			for _, n := range c.names {
				want = append(want, tamperNeedle(n))
			}
		}
		for _, w := range want {
			if !tamperAnyContains(res.Errors, w) {
				t.Errorf("no check error mentions %q\n%s", w, report())
			}
		}
	case checkPasses:
		if err != nil {
			t.Fatalf("check should pass\n%s", report())
		}
		if c.checkText != "" && !tamperAnyContains(res.Warnings, c.checkText) {
			t.Errorf("no warning mentions %q\n%s", c.checkText, report())
		}
	}

	restore := func(i int) (string, error) {
		target := t.TempDir()
		// A fresh process: nothing cached from the check.
		r, err := tamperOpen(t, dir, fx.creds())
		if err != nil {
			return target, err
		}
		s, err := r.LoadSnapshot(ctx, fx.snaps[i].ID)
		if err != nil {
			return target, err
		}
		_, err = r.Restore(ctx, s, RestoreOptions{Target: target, NoSync: true})
		return target, err
	}
	target, err := restore(c.snap)
	switch c.restore {
	case restoreOK:
		if err != nil {
			t.Fatalf("restore of snapshot %d should succeed: %v", c.snap, err)
		}
		compareTrees(t, fx.digests[c.snap], treeDigest(t, filepath.Join(target, "Media")))
	case restoreCorrupt, restoreNotFound:
		if err == nil {
			t.Fatalf("restore of snapshot %d succeeded despite the damage", c.snap)
		}
		want := error(ErrCorrupt)
		if c.restore == restoreNotFound {
			want = cloud.ErrNotFound
		}
		if !errors.Is(err, want) {
			t.Errorf("restore error does not wrap %q: %v", want, err)
		}
		needles := []string{c.restoreText}
		if c.restoreText == "" {
			needles = needles[:0]
			for _, n := range c.names {
				needles = append(needles, tamperNeedle(n))
			}
		}
		if !tamperContainsAny(err.Error(), needles) {
			t.Errorf("restore error names none of %q: %v", needles, err)
		}
		n := tamperVerifyTarget(t, target, fx.digests[c.snap])
		t.Logf("restore failed as expected after %d intact file(s): %v", n, err)
	}
	for _, i := range c.alsoOK {
		target, err := restore(i)
		if err != nil {
			t.Fatalf("restore of the undamaged snapshot %d: %v", i, err)
		}
		compareTrees(t, fx.digests[i], treeDigest(t, filepath.Join(target, "Media")))
	}
}

// tamperAnyContains reports whether some element of list contains sub.
func tamperAnyContains(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// tamperContainsAny reports whether s contains some element of subs.
func tamperContainsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestTamperConfig flips every bit pattern of interest at every offset of
// the config: Open or Unlock must fail with an error about the config, or
// the decoded config must be unchanged in every field that matters (only
// "created", which the MAC does not cover, may differ).
func TestTamperConfig(t *testing.T) {
	tr := newTestRepo(t)
	creds := Credentials{RecoveryKey: &tr.recovery}
	orig, err := os.ReadFile(tamperPath(tr.dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	origCfg, err := ParseConfig(orig)
	if err != nil {
		t.Fatal(err)
	}
	createdAt := bytes.Index(orig, []byte(`"created"`))
	write := func(data []byte) {
		if err := os.WriteFile(tamperPath(tr.dir, "config"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tryOpen := func() error {
		_, err := tamperUnlock(tr.dir, creds)
		return err
	}
	clearErr := func(err error) bool {
		return strings.Contains(err.Error(), "config") || errors.Is(err, cloud.ErrNoRepository)
	}
	accepted := map[string]int{}
	for off := range orig {
		for _, mask := range []byte{0x01, 0x02, 0x20, 0x80} {
			data := bytes.Clone(orig)
			data[off] ^= mask
			write(data)
			err := tryOpen()
			if err != nil {
				if !clearErr(err) {
					t.Errorf("offset %d mask %#x: unclear error %v", off, mask, err)
				}
				continue
			}
			// Accepted: it must be the same config but for "created".
			got, perr := ParseConfig(data)
			if perr != nil {
				t.Fatalf("offset %d: Open accepted a config ParseConfig rejects: %v", off, perr)
			}
			a, b := *got, *origCfg
			a.Created, b.Created = time.Time{}, time.Time{}
			if a != b {
				t.Errorf("offset %d mask %#x: altered config accepted: %+v", off, mask, got)
				continue
			}
			field := "field name (case-insensitive match)"
			if !got.Created.Equal(origCfg.Created) {
				field = "created"
				if off < createdAt {
					t.Errorf("offset %d: created changed by a flip before its field", off)
				}
			}
			accepted[field]++
		}
	}
	t.Logf("flips accepted without a semantic change to authenticated fields: %v", accepted)

	for _, tc := range []struct {
		label string
		data  []byte
	}{
		{"truncated by 1 byte", orig[:len(orig)-1]},
		{"truncated to half", orig[:len(orig)/2]},
		{"truncated to zero", nil},
		{"trailing garbage", append(bytes.Clone(orig), " {}"...)},
		{"duplicate pack_size", bytes.Replace(orig, []byte(`"pack_size"`), []byte(`"pack_size": 2097152, "pack_size"`), 1)},
	} {
		write(tc.data)
		err := tryOpen()
		if tc.label == "duplicate pack_size" {
			// encoding/json keeps the last value: the original, so this
			// one is accepted and harmless; with the values swapped the
			// MAC must catch it.
			if err != nil {
				t.Errorf("%s: %v", tc.label, err)
			}
			write(bytes.Replace(orig, []byte(`"mac"`), []byte(`"pack_size": 2097152, "mac"`), 1))
			err = tryOpen()
			if err == nil || !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s (changed value last): %v, want a MAC failure", tc.label, err)
			}
			continue
		}
		if err == nil || !clearErr(err) {
			t.Errorf("%s: %v", tc.label, err)
		}
	}
	if err := os.Remove(tamperPath(tr.dir, "config")); err != nil {
		t.Fatal(err)
	}
	if err := tryOpen(); !errors.Is(err, cloud.ErrNoRepository) {
		t.Errorf("deleted config: %v, want ErrNoRepository", err)
	}
	write(orig)
	if err := tryOpen(); err != nil {
		t.Fatalf("original config: %v", err)
	}
}

// slotAuthFields is what a slot's AEAD authenticates (directly, or by
// deriving the wrapping key from it).
func slotAuthFields(s *keys.Slot) string {
	b, _ := json.Marshal(struct {
		V                    int
		ID                   string
		Kind                 keys.SlotKind
		KDF                  *keys.Argon2Params
		Salt, Nonce, Wrapped []byte
	}{s.Version, s.ID, s.Kind, s.KDF, s.Salt, s.Nonce, s.Wrapped})
	return string(b)
}

// TestTamperKeySlots flips bytes in the key slots and truncates them:
// unlocking with that slot's secret must fail (format 3: the keyring holds
// each slot's digest, so no byte of a slot may change).
func TestTamperKeySlots(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	st, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	password := []byte("correct horse")
	_, rk, err := Init(ctx, st, InitOptions{Password: password, Argon2: testArgon, Label: "host-1"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := tamperOpen(t, dir, Credentials{RecoveryKey: &rk})
	if err != nil {
		t.Fatal(err)
	}
	slots, err := r.Slots(ctx)
	if err != nil || len(slots) != 2 {
		t.Fatalf("slots: %v %d", err, len(slots))
	}
	seed := tamperSeed(t)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 4))

	for _, s := range slots {
		name := "keys/" + s.ID
		creds := Credentials{RecoveryKey: &rk}
		offsets := []int{}
		orig, err := os.ReadFile(tamperPath(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if s.Kind == keys.KindPassword {
			// Argon2 runs for every parseable variant: sample the
			// offsets, always including the Argon2 parameters.
			creds = Credentials{Password: password}
			kdf := bytes.Index(orig, []byte(`"argon2id"`))
			for i := kdf; i < kdf+40 && i < len(orig); i++ {
				offsets = append(offsets, i)
			}
			for range 24 {
				offsets = append(offsets, rng.IntN(len(orig)))
			}
		} else {
			for i := range orig {
				offsets = append(offsets, i)
			}
		}
		origAuth := slotAuthFields(s)
		accepted := map[string]int{}
		wrongKey := 0
		for _, off := range offsets {
			for _, mask := range []byte{0x01, 0x04} {
				data := bytes.Clone(orig)
				data[off] ^= mask
				if err := os.WriteFile(tamperPath(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
				_, err := tamperUnlock(dir, creds)
				if err != nil {
					switch {
					case errors.Is(err, ErrWrongKey):
						wrongKey++ // a parseable slot whose authenticated data changed
					case strings.Contains(err.Error(), name):
					default:
						t.Errorf("%s offset %d: error does not name the slot: %v", s.Kind, off, err)
					}
					continue
				}
				got, perr := keys.ParseSlot(data)
				if perr != nil {
					t.Fatalf("%s offset %d: unlocked with an unparseable slot: %v", s.Kind, off, perr)
				}
				if slotAuthFields(got) != origAuth {
					t.Errorf("%s offset %d mask %#x: slot with altered authenticated fields opened", s.Kind, off, mask)
					continue
				}
				switch {
				case got.Label != s.Label:
					accepted["label"]++
				case !got.Created.Equal(s.Created):
					accepted["created"]++
				default:
					accepted["same decoded value (base64 padding bits)"]++
				}
			}
		}
		t.Logf("%s slot: %d variants failed as a wrong key; accepted without a change to authenticated fields: %v", s.Kind, wrongKey, accepted)
		if len(accepted) > 0 {
			t.Errorf("%s slot: changed slots accepted: %v", s.Kind, accepted)
		}

		for _, tc := range []struct {
			label string
			n     int
		}{{"by 1 byte", len(orig) - 1}, {"to half", len(orig) / 2}, {"to zero", 0}} {
			if err := os.WriteFile(tamperPath(dir, name), orig[:tc.n], 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := tamperOpen(t, dir, creds)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%s slot truncated %s: %v, want an error naming %s", s.Kind, tc.label, err, name)
			}
		}
		if err := os.WriteFile(tamperPath(dir, name), orig, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Swapping the contents of two slots: each no longer matches its name.
	a, b := "keys/"+slots[0].ID, "keys/"+slots[1].ID
	tamperSwap(t, dir, a, b)
	if _, err := tamperOpen(t, dir, Credentials{RecoveryKey: &rk}); err == nil || !errors.Is(err, ErrCorrupt) {
		t.Errorf("swapped slots: %v", err)
	}
	tamperSwap(t, dir, a, b)
	if _, err := tamperOpen(t, dir, Credentials{RecoveryKey: &rk}); err != nil {
		t.Fatal(err)
	}
}

// TestTamperWrongCredentials: a wrong recovery key or password is
// ErrWrongKey, and so is a credential of a kind the repository has no
// slot for.
func TestTamperWrongCredentials(t *testing.T) {
	tr := newTestRepo(t)
	bad := tr.recovery
	bad[31] ^= 0x80
	for _, tc := range []struct {
		label string
		c     Credentials
	}{
		{"wrong recovery key", Credentials{RecoveryKey: &bad}},
		{"wrong password", Credentials{Password: []byte("correct horsf")}},
		{"empty password", Credentials{Password: []byte{}}},
		{"vault secret, no vault slot", Credentials{VaultSecret: &bad}},
		{"no credentials", Credentials{}},
	} {
		_, err := tamperOpen(t, tr.dir, tc.c)
		if !errors.Is(err, ErrWrongKey) {
			t.Errorf("%s: %v, want ErrWrongKey", tc.label, err)
		}
	}
	for _, c := range []Credentials{{RecoveryKey: &tr.recovery}, {Password: []byte("correct horse")}} {
		if _, err := tamperOpen(t, tr.dir, c); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTamperDamagedSlotDoesNotBlockOthers: bit rot in one key slot must
// not lock the user out when another slot opens with what they hold. The
// recovery key is the last resort; a damaged password slot must not
// disable it.
func TestTamperDamagedSlotDoesNotBlockOthers(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	slots, err := tr.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pw string
	for _, s := range slots {
		if s.Kind == keys.KindPassword {
			pw = "keys/" + s.ID
		}
	}
	tamperTruncate(t, tr.dir, pw, func(n int64) int64 { return n / 2 })
	_, err = tamperOpen(t, tr.dir, Credentials{RecoveryKey: &tr.recovery})
	if err != nil {
		if !strings.Contains(err.Error(), pw) {
			t.Errorf("error does not name the damaged slot: %v", err)
		}
		archiveKnownBug(t, "unlock-damaged-slot", "a damaged password slot (%s) makes Unlock fail for the intact recovery key: %v", pw, err)
	}
	// A stray file under keys/ must not either.
	if err := os.WriteFile(tamperPath(tr.dir, "keys/readme.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tamperOpen(t, tr.dir, Credentials{RecoveryKey: &tr.recovery}); err != nil {
		archiveKnownBug(t, "unlock-damaged-slot", "a stray object under keys/ makes Unlock fail: %v", err)
	}
}

// TestTamperDamagedSnapshotDoesNotBlockBackup: a damaged old snapshot
// object must not stop new backups (findParent lists every snapshot), nor
// hide an intact snapshot asked for by its id. ("latest" may fail: the
// damaged one could be the newest.)
func TestTamperDamagedSnapshotDoesNotBlockBackup(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "Media")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	s1, err := tr.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := tr.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	tamperFlip(t, tr.dir, snapshotName(s1.ID), 20, 1)
	r := tr.reopen(t)
	found, ferr := r.FindSnapshot(ctx, s2.ID.String())
	if ferr == nil && found.ID != s2.ID {
		t.Fatalf("found %s, want %s", found.ID.Short(), s2.ID.Short())
	}
	_, berr := r.Backup(ctx, BackupOptions{Media: src})
	if ferr != nil || berr != nil {
		for _, err := range []error{ferr, berr} {
			if err != nil && !strings.Contains(err.Error(), tamperNeedle(snapshotName(s1.ID))) {
				t.Errorf("error does not name the damaged snapshot: %v", err)
			}
		}
		archiveKnownBug(t, "damaged-snapshot-blocks", "one damaged snapshot object blocks finding another by its id (%v) and every new backup (%v)", ferr, berr)
	}
}

// tamperFlakyStore fails reads of objects under prefix with errFlaky after
// `after` bytes: what a dropped connection to a cloud store looks like.
type tamperFlakyStore struct {
	cloud.Store
	prefix string
	after  int64
}

var errFlaky = errors.New("connection reset by peer (injected)")

func (s *tamperFlakyStore) Get(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, name, off, n)
	if err != nil || !strings.HasPrefix(name, s.prefix) {
		return rc, err
	}
	return &tamperFlakyReader{rc: rc, left: s.after}, nil
}

type tamperFlakyReader struct {
	rc   io.ReadCloser
	left int64
}

func (f *tamperFlakyReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errFlaky
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.rc.Read(p)
	f.left -= int64(n)
	return n, err
}

func (f *tamperFlakyReader) Close() error { return f.rc.Close() }

// TestTamperReadErrorsAreNotCorruption: a read that fails (network error,
// cancelled context) is not damage. It must surface as that error, not as
// ErrCorrupt ("corrupted or tampered data"), or Check and Restore raise
// false tampering alarms on every flaky connection.
func TestTamperReadErrorsAreNotCorruption(t *testing.T) {
	fx := newTamperFixture(t)
	ctx := context.Background()
	open := func(t *testing.T, prefix string, after int64) *Repository {
		st, err := local.Open(fx.dir, false)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Open(ctx, &tamperFlakyStore{Store: st, prefix: prefix, after: after})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Unlock(ctx, fx.creds()); err != nil {
			t.Fatal(err)
		}
		r.SetTempDir(t.TempDir())
		return r
	}
	restore := func(r *Repository) error {
		_, err := r.Restore(ctx, fx.snaps[1], RestoreOptions{Target: t.TempDir(), NoSync: true})
		return err
	}
	for _, tc := range []struct {
		name   string
		prefix string
		after  int64
		op     func(r *Repository) error
	}{
		{"index object, in the salt", "index/", 5, func(r *Repository) error { return r.LoadIndex(ctx) }},
		{"index object, in a segment", "index/", 100, func(r *Repository) error { return r.LoadIndex(ctx) }},
		{"snapshot object", "snapshots/", 100, func(r *Repository) error { _, err := r.LoadSnapshot(ctx, fx.snaps[0].ID); return err }},
		{"pack, chunk read", "data/", 100, restore},
		{"pack, trailer read", "data/", 2, func(r *Repository) error {
			p := fx.packs[0]
			_, err := r.readTrailer(ctx, p.id, p.size)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op(open(t, tc.prefix, tc.after))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, errFlaky) || errors.Is(err, ErrCorrupt) {
				archiveKnownBug(t, "read-error-as-corrupt", "a read error is reported as damage: errors.Is(err, errFlaky)=%v, errors.Is(err, ErrCorrupt)=%v: %v",
					errors.Is(err, errFlaky), errors.Is(err, ErrCorrupt), err)
			}
		})
	}
}
