package archive

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// damageFixture is a repository whose media files (single-chunk, random)
// are spread over several 1 MiB packs.
type damageFixture struct {
	tr     *testRepo
	src    string
	snap   *Snapshot
	digest map[string]string
	chunks map[string][]ID // file path in the snapshot → its chunks
}

func newDamageFixture(t *testing.T, files int) *damageFixture {
	t.Helper()
	ctx := context.Background()
	tr := newTestRepo(t)
	tr.cfg.PackSize = 1 << 20 // several data packs from a few MiB
	src := filepath.Join(t.TempDir(), "Media")
	rng := rand.New(rand.NewPCG(12, 1))
	for i := range files {
		data := make([]byte, 200_000+rng.IntN(100_000))
		for k := range data {
			data[k] = byte(rng.Uint32())
		}
		p := filepath.Join(src, fmt.Sprintf("d%d", i%3), fmt.Sprintf("photo-%02d.jpg", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1700000000+int64(i), 0)
		os.Chtimes(p, mt, mt)
	}
	snap, err := tr.Backup(ctx, BackupOptions{Media: src, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	fx := &damageFixture{tr: tr, src: src, snap: snap, digest: treeDigest(t, src), chunks: map[string][]ID{}}
	r := tr.reopen(t)
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	nr, err := r.OpenTree(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer nr.Close()
	for {
		n, err := nr.Next()
		if err != nil {
			break
		}
		for _, c := range n.Chunks {
			id, _ := ParseID(c)
			fx.chunks[n.Path] = append(fx.chunks[n.Path], id)
		}
	}
	return fx
}

// packsOfFiles maps each data pack to the file chunks it holds.
func (fx *damageFixture) packs(t *testing.T) map[ID][]blobEntry {
	t.Helper()
	ctx := context.Background()
	r := fx.tr.reopen(t)
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fileChunk := map[ID]bool{}
	for _, ids := range fx.chunks {
		for _, id := range ids {
			fileChunk[id] = true
		}
	}
	out := map[ID][]blobEntry{}
	for id, size := range stored {
		entries, err := r.readTrailer(ctx, id, size)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) > 0 && fileChunk[entries[0].ID] {
			out[id] = entries
		}
	}
	return out
}

// filesNeeding lists the files that need one of the chunks.
func (fx *damageFixture) filesNeeding(lost map[ID]bool) []string {
	var out []string
	for p, ids := range fx.chunks {
		for _, id := range ids {
			if lost[id] {
				out = append(out, p)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Acceptance 1 of issue 12: with one pack truncated, one deleted and one
// with a flipped byte, a restore writes every file that does not need
// them, byte for byte, lists the others, and leaves none of those under
// its name.
func TestRestoreAroundDamage(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	packs := fx.packs(t)
	var ids []ID
	for id := range packs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	if len(ids) < 4 {
		t.Fatalf("only %d data packs", len(ids))
	}
	lost := map[ID]bool{}
	// Truncated: the blobs past the cut are lost.
	trunc := packs[ids[0]]
	cut := int64(trunc[len(trunc)/2].Offset) + 10
	tamperTruncate(t, fx.tr.dir, packName(ids[0]), func(int64) int64 { return cut })
	for _, e := range trunc {
		if int64(e.Offset)+int64(e.Length) > cut {
			lost[e.ID] = true
		}
	}
	// Deleted: all of it.
	tamperDelete(t, fx.tr.dir, packName(ids[1]))
	for _, e := range packs[ids[1]] {
		lost[e.ID] = true
	}
	// A flipped byte: one blob.
	flip := packs[ids[2]][1]
	tamperFlip(t, fx.tr.dir, packName(ids[2]), int64(flip.Offset)+int64(flip.Length)/2, 0x10)
	lost[flip.ID] = true

	want := fx.filesNeeding(lost)
	if len(want) == 0 || len(want) == len(fx.chunks) {
		t.Fatalf("%d of %d files damaged: the fixture does not test anything", len(want), len(fx.chunks))
	}
	r := fx.tr.reopen(t)
	target := t.TempDir()
	total, err := r.Restore(ctx, fx.snap, RestoreOptions{Target: target})
	var inc *IncompleteError
	if !errors.As(err, &inc) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore: %v, want an IncompleteError", err)
	}
	var got []string
	for _, f := range inc.Failed {
		got = append(got, f.Path)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("not restored:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if total.Files != int64(len(fx.chunks)-len(want)) {
		t.Fatalf("restored %d files, want %d", total.Files, len(fx.chunks)-len(want))
	}
	restored := treeDigest(t, filepath.Join(target, "Media"))
	skip := map[string]bool{}
	for _, p := range want {
		skip[strings.TrimPrefix(p, "Media/")] = true
	}
	for rel, d := range fx.digest {
		if strings.HasPrefix(d, "d") {
			continue
		}
		switch {
		case skip[rel]:
			if _, ok := restored[rel]; ok {
				t.Errorf("%s is damaged but was restored under its name", rel)
			}
		case restored[rel] != d:
			t.Errorf("%s: restored %q, want %q", rel, restored[rel], d)
		}
	}
	_ = filepath.WalkDir(target, func(p string, de fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(de.Name(), ".wabackup-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// Acceptance 4 of issue 12: a restore interrupted halfway, run again into
// the same target, finishes; it reads again at most the files not yet
// complete; the result is byte-identical.
func TestRestoreResumes(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	r := fx.tr.reopen(t)
	target := t.TempDir()
	// Interrupt after about half the files.
	cctx, cancel := context.WithCancel(ctx)
	var done atomic.Int64
	_, err := r.Restore(cctx, fx.snap, RestoreOptions{Target: target, Workers: 2, Progress: func(p RestoreProgress) {
		if done.Add(1) == 12 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted restore: %v", err)
	}
	done1 := treeDigest(t, filepath.Join(target, "Media"))
	var notDone int64
	complete := 0
	for rel, d := range fx.digest {
		if !strings.HasSuffix(rel, ".jpg") {
			continue
		}
		if done1[rel] == d {
			complete++
			continue
		}
		fi, err := os.Stat(filepath.Join(fx.src, rel))
		if err != nil {
			t.Fatal(err)
		}
		notDone += fi.Size()
	}
	if complete == 0 || complete == len(fx.chunks) {
		t.Fatalf("%d of %d files complete after the interruption", complete, len(fx.chunks))
	}
	// Run again: count the chunk bytes read.
	r2 := fx.tr.reopen(t)
	var readBytes atomic.Int64
	r2.chunkReadHook = func(n int) { readBytes.Add(int64(n)) }
	total, err := r2.Restore(ctx, fx.snap, RestoreOptions{Target: target})
	if err != nil {
		t.Fatalf("resumed restore: %v", err)
	}
	if total.Kept != int64(complete) {
		t.Fatalf("kept %d files, want the %d complete ones", total.Kept, complete)
	}
	// At most the files not yet complete, plus the AEAD and compression
	// framing (random data does not compress).
	if limit := notDone + notDone/50 + 64<<10; readBytes.Load() > limit {
		t.Fatalf("the resumed restore read %d bytes of chunks; the %d files not complete hold %d", readBytes.Load(), len(fx.chunks)-complete, notDone)
	}
	compareTrees(t, fx.digest, treeDigest(t, filepath.Join(target, "Media")))
}

// Acceptance 2 of issue 12: after a pack is deleted from the store, the
// next backup sends its chunks again from the source; check --read-data
// finds no error, and the new snapshot (and the old one, whose chunks are
// stored again) restores completely, on a machine with a fresh index
// cache too.
func TestBackupHeals(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	packs := fx.packs(t)
	var victim ID
	for id := range packs {
		victim = id
		break
	}
	tamperDelete(t, fx.tr.dir, packName(victim))
	lost := map[ID]bool{}
	for _, e := range packs[victim] {
		lost[e.ID] = true
	}
	var warned []string
	snap, err := fx.tr.Backup(ctx, BackupOptions{Media: fx.src, Warn: func(_ string, err error) { warned = append(warned, err.Error()) }})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Stats.Resent != int64(len(lost)) {
		t.Fatalf("re-sent %d chunks, want the %d of the deleted pack (warnings %q)", snap.Stats.Resent, len(lost), warned)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "missing or truncated in the store") {
		t.Fatalf("warnings: %q", warned)
	}
	r := fx.tr.reopen(t)
	res, err := r.Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatalf("check --read-data after the healing backup: %v %q", err, res.Errors)
	}
	t.Logf("check warnings: %q", res.Warnings)
	for i, s := range []*Snapshot{snap, fx.snap} {
		r := fx.tr.reopen(t) // a fresh index cache: every index object loaded anew
		target := t.TempDir()
		if _, err := r.Restore(ctx, s, RestoreOptions{Target: target}); err != nil {
			t.Fatalf("restore of snapshot %d: %v", i, err)
		}
		compareTrees(t, fx.digest, treeDigest(t, filepath.Join(target, "Media")))
	}
	// A second backup has nothing to heal.
	snap2, err := fx.tr.Backup(ctx, BackupOptions{Media: fx.src})
	if err != nil || snap2.Stats.Resent != 0 || snap2.Stats.NewChunks != 0 {
		t.Fatalf("the next backup: %v, re-sent %d, new %d", err, snap2.Stats.Resent, snap2.Stats.NewChunks)
	}
	// Prune keeps the new copies and drops the reference to the lost pack.
	if _, err := fx.tr.reopen(t).Prune(ctx, false); err != nil {
		t.Fatal(err)
	}
	res, err = fx.tr.reopen(t).Check(ctx, CheckOptions{ReadData: true})
	if err != nil || len(res.Warnings) != 0 {
		t.Fatalf("check after prune: %v, errors %q, warnings %q", err, res.Errors, res.Warnings)
	}
	target := t.TempDir()
	if _, err := fx.tr.reopen(t).Restore(ctx, snap, RestoreOptions{Target: target}); err != nil {
		t.Fatalf("restore after prune: %v", err)
	}
	compareTrees(t, fx.digest, treeDigest(t, filepath.Join(target, "Media")))
}

// After a backup marked a truncated pack bad, a restore with that index
// cache still reads the chunks the pack holds intact (before the cut).
func TestRestoreReadsIntactChunksOfBadPack(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	packs := fx.packs(t)
	var ids []ID
	for id := range packs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	trunc := packs[ids[0]]
	cut := int64(trunc[len(trunc)/2].Offset) + 10
	tamperTruncate(t, fx.tr.dir, packName(ids[0]), func(int64) int64 { return cut })
	lost := map[ID]bool{}
	for _, e := range trunc {
		if int64(e.Offset)+int64(e.Length) > cut {
			lost[e.ID] = true
		}
	}
	r := fx.tr.reopen(t)
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.markBadPacks(stored); err != nil {
		t.Fatal(err)
	}
	_, err = r.Restore(ctx, fx.snap, RestoreOptions{Target: t.TempDir()})
	var inc *IncompleteError
	if !errors.As(err, &inc) {
		t.Fatalf("restore: %v", err)
	}
	var got []string
	for _, f := range inc.Failed {
		got = append(got, f.Path)
	}
	if want := fx.filesNeeding(lost); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("not restored %v, want only those needing chunks past the cut: %v", got, want)
	}
}
