package archive

// Tamper tests for what format version 2 adds: directory pieces, page map
// roots, page map segments and page groups. They are blobs in packs, so
// damage is done to the blob inside its pack (flip a byte, swap it with
// its neighbour) or to the pack holding it (truncate into the blob,
// delete). Every case must be found by check (naming the pack) and fail
// the restore of the snapshot that needs the blob (naming the pack,
// wrapping ErrCorrupt or cloud.ErrNotFound), never restoring wrong data.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
)

type v2Blob struct {
	kind string
	id   ID
	pack tamperPack
	i    int // its position in the pack
}

func TestTamperTreeAndPageMap(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	media := filepath.Join(src, "Media")
	randomTree(t, media, 5)
	dbPath := filepath.Join(src, "msgstore.db")
	db := makeChatDB(t, dbPath, 3000)
	checkpoint(t, db)
	snap, err := tr.Backup(ctx, BackupOptions{DB: dbPath, Media: media})
	if err != nil {
		t.Fatal(err)
	}
	dbWant, _ := os.ReadFile(dbPath)
	mediaWant := treeDigest(t, media)

	// Find one blob of each kind and where it is stored.
	r := tr.reopen(t)
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	root, _ := snap.rootIDs()
	var pieces []ID
	trd, err := r.openTree(ctx, snap, func(id ID) { pieces = append(pieces, id) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dbNode *Node
	for {
		n, err := trd.Next()
		if err != nil {
			break
		}
		if n.Type == TypeDB {
			dbNode = n
		}
	}
	trd.Close()
	if dbNode == nil || len(pieces) < 3 {
		t.Fatalf("fixture: db node %v, %d pieces", dbNode, len(pieces))
	}
	pmRoot, _ := ParseID(dbNode.PageMap)
	br := r.newBlobReader()
	defer br.close()
	pm, err := loadPageMap(ctx, br.chunk, pmRoot)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := loadSegment(ctx, br.chunk, pm, len(pm.segments)/2)
	if err != nil {
		t.Fatal(err)
	}
	locate := func(kind string, id ID) v2Blob {
		_, p, ok := r.idx.lookup(id)
		if !ok {
			t.Fatalf("%s %s is not indexed", kind, id.Short())
		}
		entries, err := r.readTrailer(ctx, p.id, p.size)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range entries {
			if e.ID == id {
				return v2Blob{kind: kind, id: id, pack: tamperPack{id: p.id, size: p.size, entries: entries}, i: i}
			}
		}
		t.Fatalf("%s %s is not in its pack", kind, id.Short())
		return v2Blob{}
	}
	blobs := []v2Blob{
		locate("root directory piece", root[0]),
		locate("directory piece", pieces[len(pieces)-1]),
		locate("page map root", pmRoot),
		locate("page map segment", pm.segments[len(pm.segments)/2]),
		locate("page group", seg.groups[0]),
	}

	type damage struct {
		name     string
		do       func(t *testing.T, dir string, b v2Blob)
		notFound bool
	}
	damages := []damage{
		{"flip a byte of", func(t *testing.T, dir string, b v2Blob) {
			e := b.pack.entries[b.i]
			tamperFlip(t, dir, b.pack.name(), int64(e.Offset)+int64(e.Length)/2, 0x10)
		}, false},
		{"swap with its neighbour", func(t *testing.T, dir string, b v2Blob) {
			j := b.i + 1
			if j == len(b.pack.entries) {
				j = b.i - 1
			}
			if j < 0 {
				t.Skip("the blob is alone in its pack")
			}
			tamperSwapBlobs(t, dir, b.pack, min(b.i, j), max(b.i, j))
		}, false},
		{"truncate the pack inside", func(t *testing.T, dir string, b v2Blob) {
			e := b.pack.entries[b.i]
			tamperTruncate(t, dir, b.pack.name(), func(int64) int64 { return int64(e.Offset) + int64(e.Length)/2 })
		}, false},
		{"delete the pack of", func(t *testing.T, dir string, b v2Blob) { tamperDelete(t, dir, b.pack.name()) }, true},
	}
	for _, b := range blobs {
		for _, d := range damages {
			t.Run(d.name+" "+b.kind, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "repo")
				tamperCopyDir(t, tr.dir, dir)
				d.do(t, dir, b)
				r, err := tamperOpen(t, dir, Credentials{RecoveryKey: &tr.recovery})
				if err != nil {
					t.Fatal(err)
				}
				res, err := r.Check(ctx, CheckOptions{ReadData: true})
				if res == nil || !errors.Is(err, ErrCheckFailed) {
					t.Fatalf("check did not find the damage: %v", err)
				}
				if !tamperAnyContains(res.Errors, tamperNeedle(b.pack.name())) {
					t.Errorf("no check error names %s: %q", b.pack.name(), res.Errors)
				}
				r, _ = tamperOpen(t, dir, Credentials{RecoveryKey: &tr.recovery})
				target := t.TempDir()
				_, err = r.Restore(ctx, snap, RestoreOptions{Target: target, NoSync: true})
				want := ErrCorrupt
				if d.notFound {
					want = cloud.ErrNotFound
				}
				if !errors.Is(err, want) || !tamperContainsAny(err.Error(), []string{tamperNeedle(b.pack.name())}) {
					t.Fatalf("restore: %v; want an error wrapping %q naming %s", err, want, b.pack.name())
				}
				// Nothing wrong was restored under a real name.
				if got, err := os.ReadFile(filepath.Join(target, "msgstore.db")); err == nil && !bytes.Equal(got, dbWant) {
					t.Errorf("a wrong msgstore.db was restored")
				}
				tamperVerifyTarget(t, target, mediaWant)
			})
		}
	}
}
