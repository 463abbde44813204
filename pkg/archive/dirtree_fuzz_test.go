package archive

// Fuzz targets for version 2 directory trees. Run one with e.g.
//
//	go test ./pkg/archive -run '^$' -fuzz '^FuzzDecodeDirPiece$' -fuzztime 30s

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// fuzzDirTreeSeeds are small trees whose pieces seed the targets.
func fuzzDirTreeSeeds() [][]*Node {
	return [][]*Node{
		nil,
		{dtFile("msgstore.db", 3, "a")},
		{
			dtDir("Media"),
			dtDir("Media/WhatsApp Images"),
			dtFile("Media/WhatsApp Images/IMG-1.jpg", 12345, "a", "b"),
			dtFile("Media/WhatsApp Images/Привет 😀.jpg", 0),
			dtDir("Media/WhatsApp Video"),
			dtLink("Media/link", "../x"),
			dtDB("msgstore.db", 1<<20),
		},
		{dtDir("a"), dtDir("a/b"), dtDir("a/b/c"), dtFile("a/b/c/d", 1, "d"), dtFile("a b", 2), dtFile("ab", 3)},
		bigDirTree(70), // several pieces
	}
}

// FuzzDecodeDirPiece: decodeDirPiece never panics, bounds what it
// allocates by what it reads, and what it accepts is valid and re-encodes
// to the same bytes (a tree has one encoding).
func FuzzDecodeDirPiece(f *testing.F) {
	for _, nodes := range fuzzDirTreeSeeds() {
		m := newMemTreeBlobs()
		writeDirTree(f, m, nodes)
		for _, id := range m.newIDs {
			f.Add(m.blobs[id])
		}
	}
	f.Add([]byte("WDR1\x00"))
	f.Add([]byte("WDR1\x80\x00"))                           // non-minimal count
	f.Add([]byte("WDR1\xff\xff\xff\xff\x0f"))               // 4G entries, no data
	f.Add([]byte("WDR1\x01\x01af\x00\x00\x00\x00\x00\xff")) // 2^63 chunks claimed
	f.Add([]byte("WDR1\x01\x01as\x00\x00\x00\x00\x00" + strings.Repeat("\x01", 32)))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := decodeDirPiece(data)
		if err != nil {
			if !errors.Is(err, errDirPieceFormat) {
				t.Fatalf("error %v does not wrap errDirPieceFormat", err)
			}
			return
		}
		if minDirEntry*len(entries) > len(data) {
			t.Fatalf("decoded %d entries from %d bytes", len(entries), len(data))
		}
		for i, e := range entries {
			n := &Node{Path: e.name, Mode: e.mode, Size: e.size, Target: e.target}
			switch e.typ {
			case dirTypeFile:
				n.Type = TypeFile
			case dirTypeDir:
				n.Type = TypeDir
				if len(e.ids) == 0 {
					t.Fatalf("entry %d: directory without pieces", i)
				}
			case dirTypeSymlink:
				n.Type = TypeSymlink
			case dirTypeDB:
				n.Type, n.PageMap = TypeDB, e.pageMap.String()
			default:
				t.Fatalf("entry %d: accepted type %q", i, e.typ)
			}
			if err := checkTreeNode(n); err != nil {
				t.Fatalf("entry %d: accepted an invalid node: %v", i, err)
			}
			if i > 0 && entries[i-1].name >= e.name {
				t.Fatalf("entry %d: %q after %q", i, e.name, entries[i-1].name)
			}
		}
		if again := encodeDirPiece(entries); !bytes.Equal(again, data) {
			t.Fatalf("accepted a non-canonical piece:\n got %x\nwant %x", data, again)
		}
	})
}

// fuzzRootID is where FuzzDirTreeReader stores its root piece: a fixed id,
// so a fuzzed directory entry can point back at the root (a cycle).
var fuzzRootID = ID{0xf0, 0x0d}

// FuzzDirTreeReader walks a tree whose root piece is fuzzed and whose
// other pieces are the seeds' (reachable by their ids in the root's
// entries). The walk never panics and fails only with ErrCorrupt or the
// store's error; what it yields is valid, in walk order, each node below a
// directory yielded before it; and a walk that completes writes back to a
// tree that reads the same.
func FuzzDirTreeReader(f *testing.F) {
	base := newMemTreeBlobs()
	for _, nodes := range fuzzDirTreeSeeds() {
		mark := len(base.newIDs)
		root := writeDirTree(f, base, nodes)
		for _, id := range root {
			f.Add(base.blobs[id])
		}
		if len(root) > 1 {
			// A fuzzed root holds one piece: seed with each of the others.
			for _, id := range base.newIDs[mark:] {
				f.Add(base.blobs[id])
			}
		}
	}
	f.Add(dtRawPiece(dtRawEntry("a", 'd', 0, 0, 0, append([]byte{1}, fuzzRootID[:]...)...)))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &memTreeBlobs{key: base.key, blobs: make(map[ID][]byte, len(base.blobs)+1)}
		for id, b := range base.blobs {
			m.blobs[id] = b
		}
		m.put(fuzzRootID, data)
		r, err := openDirTree(context.Background(), m, []ID{fuzzRootID})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		const maxNodes = 1 << 12 // shared subtrees make a walk long
		var nodes []*Node
		dirs := map[string]bool{"": true}
		for len(nodes) < maxNodes {
			n, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, errMemBlobMissing) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if err := checkTreeNode(n); err != nil {
				t.Fatalf("yielded an invalid node: %v", err)
			}
			if len(nodes) > 0 && comparePaths(nodes[len(nodes)-1].Path, n.Path) >= 0 {
				t.Fatalf("%q after %q", n.Path, nodes[len(nodes)-1].Path)
			}
			parent := ""
			if i := strings.LastIndexByte(n.Path, '/'); i >= 0 {
				parent = n.Path[:i]
			}
			if !dirs[parent] {
				t.Fatalf("%q yielded without its directory", n.Path)
			}
			if n.Type == TypeDir {
				dirs[n.Path] = true
			}
			nodes = append(nodes, n)
		}
		if len(nodes) == maxNodes {
			return
		}
		out := newMemTreeBlobs()
		root := writeDirTree(t, out, nodes)
		again := readDirTree(t, out, root)
		if !reflect.DeepEqual(nodes, again) {
			t.Fatalf("rewritten tree reads differently: %d nodes, then %d", len(nodes), len(again))
		}
	})
}
