package archive

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"testing"
	"unsafe"
)

// memTreeBlobs is an in-memory treeBlobs that ids blobs with HMAC-SHA256
// under a test key, as the repository does with K_id.
type memTreeBlobs struct {
	key     []byte
	blobs   map[ID][]byte
	newIDs  []ID // blobs stored, in order (saves of known content are not counted)
	loads   []ID
	saveErr error
}

var errMemBlobMissing = errors.New("no such tree blob")

func newMemTreeBlobs() *memTreeBlobs {
	return &memTreeBlobs{key: []byte("dirtree test key"), blobs: make(map[ID][]byte)}
}

func (m *memTreeBlobs) hash(data []byte) ID {
	h := hmac.New(sha256.New, m.key)
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	return id
}

func (m *memTreeBlobs) saveTreeBlob(ctx context.Context, data []byte) (ID, error) {
	if m.saveErr != nil {
		return ID{}, m.saveErr
	}
	id := m.hash(data)
	if _, ok := m.blobs[id]; !ok {
		m.blobs[id] = bytes.Clone(data)
		m.newIDs = append(m.newIDs, id)
	}
	return id, nil
}

func (m *memTreeBlobs) loadTreeBlob(ctx context.Context, id ID) ([]byte, error) {
	m.loads = append(m.loads, id)
	b, ok := m.blobs[id]
	if !ok {
		return nil, fmt.Errorf("tree blob %s: %w", id, errMemBlobMissing)
	}
	return bytes.Clone(b), nil
}

// put stores data under any id (hostile trees).
func (m *memTreeBlobs) put(id ID, data []byte) { m.blobs[id] = data }

// testID is a deterministic id, as hex.
func testID(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func dtFile(p string, size int64, chunks ...string) *Node {
	n := &Node{Path: p, Type: TypeFile, Mode: 0o644, Size: size, MTime: 1700000000123456789 + size, Inode: uint64(size) + 100, Dev: 2049}
	for _, c := range chunks {
		n.Chunks = append(n.Chunks, testID(c))
	}
	return n
}

func dtDir(p string) *Node {
	return &Node{Path: p, Type: TypeDir, Mode: 0o755, MTime: 1700000000000000000}
}

func dtLink(p, target string) *Node {
	return &Node{Path: p, Type: TypeSymlink, Mode: 0o777, MTime: 1, Target: target}
}

func dtDB(p string, size int64) *Node {
	return &Node{Path: p, Type: TypeDB, Mode: 0o600, Size: size, MTime: 5, Inode: 9, Dev: 1, PageMap: testID("page map " + p)}
}

func copyNodes(nodes []*Node) []*Node {
	out := make([]*Node, len(nodes))
	for i, n := range nodes {
		c := *n
		if len(c.Chunks) == 0 {
			c.Chunks = nil // the reader returns nil for no chunks
		}
		out[i] = &c
	}
	return out
}

func writeDirTree(t testing.TB, m treeBlobs, nodes []*Node) []ID {
	t.Helper()
	w := newDirTreeWriter(context.Background(), m)
	for _, n := range nodes {
		if err := w.add(n); err != nil {
			t.Fatalf("add %q: %v", n.Path, err)
		}
	}
	root, err := w.finish()
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	return root
}

func readDirTreeAll(m treeBlobs, root []ID, onBlob func(ID)) ([]*Node, error) {
	r, err := openDirTree(context.Background(), m, root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	r.onBlob = onBlob
	var out []*Node
	for {
		n, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, n)
	}
}

func readDirTree(t testing.TB, m treeBlobs, root []ID) []*Node {
	t.Helper()
	nodes, err := readDirTreeAll(m, root, nil)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return nodes
}

func checkSameNodes(t testing.TB, want, got []*Node) {
	t.Helper()
	want = copyNodes(want)
	if len(want) != len(got) {
		t.Fatalf("read %d nodes, wrote %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(want[i], got[i]) {
			t.Fatalf("node %d:\nwrote %+v\nread  %+v", i, want[i], got[i])
		}
	}
}

// dtRandomTree builds a random valid node sequence in walk order.
func dtRandomTree(seed uint64, maxNodes int) []*Node {
	rng := rand.New(rand.NewPCG(seed, 7))
	alphabet := []string{"a", "b", "Z", "0", ".", "-", " ", "é", "日", "😀", "IMG-", ".jpg", "~"}
	var out []*Node
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		seen := map[string]bool{}
		var names []string
		for i := rng.IntN(8); i > 0; i-- {
			var sb strings.Builder
			for j := 1 + rng.IntN(4); j > 0; j-- {
				sb.WriteString(alphabet[rng.IntN(len(alphabet))])
			}
			name := sb.String()
			if !validDirName(name) || seen[name] {
				continue
			}
			seen[name] = true
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if len(out) >= maxNodes {
				return
			}
			p := pathJoin(prefix, name)
			switch k := rng.IntN(10); {
			case k < 3 && depth < 6:
				out = append(out, &Node{Path: p, Type: TypeDir, Mode: uint32(rng.IntN(0o10000)), MTime: rng.Int64() - math.MaxInt64/2, Inode: rng.Uint64(), Dev: rng.Uint64()})
				gen(p, depth+1)
			case k < 4:
				out = append(out, &Node{Path: p, Type: TypeSymlink, Mode: 0o777, MTime: rng.Int64(), Target: "../" + name})
			case k < 5:
				out = append(out, &Node{Path: p, Type: TypeDB, Mode: 0o600, Size: rng.Int64(), MTime: -rng.Int64(), PageMap: testID(p)})
			default:
				n := &Node{Path: p, Type: TypeFile, Mode: uint32(rng.IntN(0o10000)), Size: rng.Int64N(1 << 40), MTime: rng.Int64(), Inode: rng.Uint64(), Dev: rng.Uint64N(1 << 20)}
				for c := rng.IntN(4); c > 0; c-- {
					n.Chunks = append(n.Chunks, testID(fmt.Sprint(rng.Uint64())))
				}
				out = append(out, n)
			}
		}
	}
	gen("", 0)
	return out
}

func TestDirTreeRoundTrip(t *testing.T) {
	deep := []*Node{}
	p := ""
	for i := 0; i < 50; i++ {
		p = pathJoin(p, fmt.Sprintf("d%d", i))
		deep = append(deep, dtDir(p))
	}
	deep = append(deep, dtFile(p+"/leaf", 3, "leaf"), dtFile("z", 1, "z"))

	for _, tc := range []struct {
		name  string
		nodes []*Node
	}{
		{"empty", nil},
		{"one file", []*Node{dtFile("msgstore.db", 10, "c1", "c2")}},
		{"empty file and dir", []*Node{dtDir("Media"), dtFile("x", 0)}},
		{"whatsapp", []*Node{
			dtDir("Media"),
			dtDir("Media/WhatsApp Images"),
			dtDir("Media/WhatsApp Images/Sent"),
			dtFile("Media/WhatsApp Images/Sent/IMG-1.jpg", 12345, "a", "b"),
			dtFile("Media/WhatsApp Images/Привет 日本語 😀.jpg", 5, "c"),
			dtDir("Media/WhatsApp Video"),
			dtDir("Media/WhatsApp Voice Notes"),
			dtDir("Media/WhatsApp Voice Notes/202401"),
			dtLink("Media/link", "../x"),
			dtDB("msgstore.db", 1<<30),
		}},
		{"sibling prefixes", []*Node{
			dtDir("a"), dtFile("a/x", 1, "1"), dtDir("a/y"), dtFile("a/y/z", 2, "2"),
			dtFile("a b", 3), dtDir("a-b"), dtFile("a-b/c", 4), dtFile("a.b", 5), dtDir("ab"),
		}},
		{"extremes", []*Node{
			{Path: "max", Type: TypeFile, Mode: 0o7777, Size: math.MaxInt64, MTime: math.MaxInt64, Inode: math.MaxUint64, Dev: math.MaxUint64},
			{Path: "min", Type: TypeDir, Mode: 0, MTime: math.MinInt64},
			{Path: "min/db", Type: TypeDB, Mode: 0o4000, MTime: -1, PageMap: strings.Repeat("ff", 32)},
			{Path: "min/l", Type: TypeSymlink, Target: strings.Repeat("t", maxPathLen)},
		}},
		{"deep", deep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemTreeBlobs()
			root := writeDirTree(t, m, tc.nodes)
			checkSameNodes(t, tc.nodes, readDirTree(t, m, root))
		})
	}
	for seed := uint64(0); seed < 30; seed++ {
		t.Run(fmt.Sprint("random", seed), func(t *testing.T) {
			nodes := dtRandomTree(seed, 500)
			for i := 1; i < len(nodes); i++ {
				if comparePaths(nodes[i-1].Path, nodes[i].Path) >= 0 {
					t.Fatalf("generator out of order: %q, %q", nodes[i-1].Path, nodes[i].Path)
				}
			}
			m := newMemTreeBlobs()
			root := writeDirTree(t, m, nodes)
			checkSameNodes(t, nodes, readDirTree(t, m, root))
		})
	}
}

// TestDirTreeWriterKeepsNoNode: the writer copies what it needs, as
// assemble reuses nothing but a caller might.
func TestDirTreeWriterKeepsNoNode(t *testing.T) {
	m := newMemTreeBlobs()
	w := newDirTreeWriter(context.Background(), m)
	n := dtDir("d")
	if err := w.add(n); err != nil {
		t.Fatal(err)
	}
	n.Mode, n.MTime = 0o700, 42
	f := dtFile("d/f", 1, "x")
	if err := w.add(f); err != nil {
		t.Fatal(err)
	}
	f.Chunks[0] = testID("y")
	root, err := w.finish()
	if err != nil {
		t.Fatal(err)
	}
	checkSameNodes(t, []*Node{dtDir("d"), dtFile("d/f", 1, "x")}, readDirTree(t, m, root))
}

func TestDirTreeWriterErrors(t *testing.T) {
	errSave := errors.New("store is full")
	for _, tc := range []struct {
		name    string
		nodes   []*Node
		saveErr error
		want    string // in the error message
	}{
		{"out of order", []*Node{dtFile("b", 1), dtFile("a", 1)}, nil, "out of order"},
		{"duplicate", []*Node{dtFile("a", 1), dtFile("a", 1)}, nil, "out of order"},
		{"content before its directory", []*Node{dtFile("a/b", 1), dtDir("a")}, nil, `directory "a" was not added`},
		{"missing parent", []*Node{dtFile("a/b", 1)}, nil, `directory "a" was not added`},
		{"missing intermediate", []*Node{dtDir("a"), dtFile("a/b/c", 1)}, nil, `directory "a/b" was not added`},
		{"parent is a file", []*Node{dtFile("a", 1), dtFile("a/b", 1)}, nil, `directory "a" was not added`},
		{"parent is a symlink", []*Node{dtLink("a", "x"), dtFile("a/b", 1)}, nil, `directory "a" was not added`},
		{"escaping path", []*Node{dtFile("../etc", 1)}, nil, "invalid path"},
		{"absolute path", []*Node{dtFile("/etc", 1)}, nil, "invalid path"},
		{"empty component", []*Node{dtDir("a"), dtFile("a//b", 1)}, nil, "invalid path"},
		{"long path", []*Node{dtFile(strings.Repeat("x", maxPathLen+1), 1)}, nil, "invalid path"},
		{"directory with size", []*Node{{Path: "d", Type: TypeDir, Size: 1}}, nil, "invalid directory node"},
		{"symlink with size", []*Node{{Path: "l", Type: TypeSymlink, Target: "x", Size: 1}}, nil, "invalid symlink node"},
		{"symlink without target", []*Node{{Path: "l", Type: TypeSymlink}}, nil, "invalid symlink node"},
		{"symlink target too long", []*Node{{Path: "l", Type: TypeSymlink, Target: strings.Repeat("x", maxPathLen+1)}}, nil, "invalid symlink node"},
		{"database without page map", []*Node{{Path: "db", Type: TypeDB}}, nil, "page map"},
		{"database with chunks", []*Node{{Path: "db", Type: TypeDB, PageMap: testID("p"), Chunks: []string{testID("c")}}}, nil, "invalid database node"},
		{"file with page map", []*Node{{Path: "f", Type: TypeFile, PageMap: testID("p")}}, nil, "page map on"},
		{"upper-case chunk id", []*Node{{Path: "f", Type: TypeFile, Chunks: []string{strings.ToUpper(testID("c"))}}}, nil, "invalid id"},
		{"bad mode", []*Node{{Path: "f", Type: TypeFile, Mode: 0o10000}}, nil, "invalid mode"},
		{"unknown type", []*Node{{Path: "f", Type: "x"}}, nil, "unknown node type"},
		{"save fails", []*Node{dtFile("a", 1)}, errSave, errSave.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemTreeBlobs()
			m.saveErr = tc.saveErr
			w := newDirTreeWriter(context.Background(), m)
			var err error
			for _, n := range tc.nodes {
				if err = w.add(n); err != nil {
					break
				}
			}
			_, ferr := w.finish()
			if err == nil {
				err = ferr
			} else if ferr != err {
				t.Errorf("finish after %v: %v (the error is not sticky)", err, ferr)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tc.saveErr != nil && !errors.Is(err, tc.saveErr) {
				t.Fatalf("error %v does not wrap the store's", err)
			}
		})
	}
	t.Run("add after finish", func(t *testing.T) {
		w := newDirTreeWriter(context.Background(), newMemTreeBlobs())
		if _, err := w.finish(); err != nil {
			t.Fatal(err)
		}
		if err := w.add(dtFile("a", 1)); !errors.Is(err, errDirTreeFinished) {
			t.Fatalf("add after finish: %v", err)
		}
	})
}

// TestDirTreeDedup: a tree written twice costs nothing the second time;
// a change deep in it re-saves one piece per directory on its path.
func TestDirTreeDedup(t *testing.T) {
	tree := func(size int64) []*Node {
		return []*Node{
			dtDir("Media"),
			dtDir("Media/WhatsApp Images"),
			dtFile("Media/WhatsApp Images/IMG-4.jpg", 4, "4"),
			dtDir("Media/WhatsApp Images/Sent"),
			dtFile("Media/WhatsApp Images/Sent/IMG-1.jpg", 1, "1"),
			dtFile("Media/WhatsApp Images/Sent/IMG-2.jpg", size, "2"),
			dtFile("Media/WhatsApp Images/Sent/IMG-3.jpg", 3, "3"),
			dtDir("Media/WhatsApp Video"),
			dtFile("Media/WhatsApp Video/VID-1.mp4", 5, "5"),
			dtDir("Media/WhatsApp Voice Notes"),
			dtDB("msgstore.db", 100),
		}
	}
	m := newMemTreeBlobs()
	root1 := writeDirTree(t, m, tree(2))
	if got := len(m.newIDs); got != 6 { // root, Media and its four directories
		t.Fatalf("first tree: %d blobs, want 6", got)
	}
	mark := len(m.newIDs)
	root2 := writeDirTree(t, m, tree(2))
	if got := len(m.newIDs) - mark; got != 0 || !reflect.DeepEqual(root1, root2) {
		t.Fatalf("same tree again: %d new blobs, roots %v and %v", got, root1, root2)
	}
	var before []ID
	if _, err := readDirTreeAll(m, root1, func(id ID) { before = append(before, id) }); err != nil {
		t.Fatal(err)
	}
	mark = len(m.newIDs)
	root3 := writeDirTree(t, m, tree(22))
	added := m.newIDs[mark:]
	if len(added) != 4 { // Sent, WhatsApp Images, Media, root
		t.Fatalf("one file changed: %d new blobs, want 4", len(added))
	}
	checkSameNodes(t, tree(22), readDirTree(t, m, root3))
	// The new walk loads the unchanged directories' old pieces.
	var after []ID
	if _, err := readDirTreeAll(m, root3, func(id ID) { after = append(after, id) }); err != nil {
		t.Fatal(err)
	}
	shared := 0
	for _, id := range after {
		for _, old := range before {
			if id == old {
				shared++
			}
		}
	}
	if len(after) != 6 || shared != 2 {
		t.Fatalf("new tree loads %d blobs, %d of them from the old tree; want 6 and 2", len(after), shared)
	}
}

// bigDirTree is a media folder of n images, plus extra names.
func bigDirTree(n int, extra ...string) []*Node {
	nodes := []*Node{dtDir("Media"), dtDir("Media/WhatsApp Images")}
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("IMG-20240101-WA%05d.jpg", i))
	}
	names = append(names, extra...)
	sort.Strings(names)
	for _, name := range names {
		nodes = append(nodes, dtFile("Media/WhatsApp Images/"+name, int64(fnv1a64(name)>>40), name))
	}
	return append(nodes, dtDB("msgstore.db", 1))
}

func TestDirTreeBigDirectory(t *testing.T) {
	m := newMemTreeBlobs()
	nodes := bigDirTree(20000)
	root := writeDirTree(t, m, nodes)
	pieces := len(m.newIDs) - 2 // all but Media and the root
	if pieces < 20 {
		t.Fatalf("20,000 entries in %d pieces", pieces)
	}
	for id, b := range m.blobs {
		if len(b) > dirPieceTarget {
			t.Fatalf("piece %s has %d bytes", id.Short(), len(b))
		}
	}
	checkSameNodes(t, nodes, readDirTree(t, m, root))
	t.Logf("20,000 entries: %d pieces", pieces)

	for _, name := range []string{"IMG-20240101-WA05000a.jpg", "A.jpg", "zzz.jpg"} {
		mark := len(m.newIDs)
		more := bigDirTree(20000, name)
		root := writeDirTree(t, m, more)
		if got := len(m.newIDs) - mark; got != 3 {
			t.Errorf("inserting %s: %d new blobs, want 3 (one piece, Media, root)", name, got)
		}
		checkSameNodes(t, more, readDirTree(t, m, root))
	}
}

// TestDirTreeLargeEntries: entries with many chunks are cut by size; one
// over 1 MiB gets a piece of its own; one over a blob's bound is refused.
func TestDirTreeLargeEntries(t *testing.T) {
	chunks := func(n int, tag string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint(tag, i)
		}
		return out
	}
	nodes := []*Node{dtDir("big")}
	for i := 0; i < 40; i++ {
		nodes = append(nodes, dtFile(fmt.Sprintf("big/f%02d", i), 1, chunks(1000, fmt.Sprint(i))...))
	}
	nodes = append(nodes, dtFile("huge", 1, chunks(40000, "h")...))
	m := newMemTreeBlobs()
	root := writeDirTree(t, m, nodes)
	var big int
	for id, b := range m.blobs {
		if len(b) > dirPieceTarget {
			if entries, err := decodeDirPiece(b); err != nil || len(entries) != 1 || entries[0].name != "huge" {
				t.Fatalf("piece %s: %d bytes, %d entries, %v", id.Short(), len(b), len(entries), err)
			}
			big++
		}
	}
	if big != 1 || len(m.newIDs) < 4 {
		t.Fatalf("%d pieces over 1 MiB of %d", big, len(m.newIDs))
	}
	checkSameNodes(t, nodes, readDirTree(t, m, root))

	w := newDirTreeWriter(context.Background(), newMemTreeBlobs())
	err := w.add(dtFile("toohuge", 1, chunks(maxDirPiece/32, "t")...))
	if err == nil {
		_, err = w.finish()
	}
	if err == nil || !strings.Contains(err.Error(), "over the") {
		t.Fatalf("file of %d chunks: %v", maxDirPiece/32, err)
	}
}

// TestDirTreeLazyLoad: a directory's pieces load when the walk reaches
// them, and onBlob sees every blob of the tree.
func TestDirTreeLazyLoad(t *testing.T) {
	m := newMemTreeBlobs()
	root := writeDirTree(t, m, []*Node{dtDir("a"), dtFile("a/x", 1), dtDir("b"), dtFile("b/y", 1)})
	r, err := openDirTree(context.Background(), m, root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	seen := map[ID]bool{}
	r.onBlob = func(id ID) { seen[id] = true }
	if len(m.loads) != 0 {
		t.Fatalf("open loaded %d blobs", len(m.loads))
	}
	for i, want := range []struct {
		path  string
		loads int
	}{{"a", 1}, {"a/x", 2}, {"b", 2}, {"b/y", 3}} {
		n, err := r.Next()
		if err != nil || n.Path != want.path || len(m.loads) != want.loads {
			t.Fatalf("node %d: %v, %v after %d loads; want %s after %d", i, n, err, len(m.loads), want.path, want.loads)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if len(seen) != len(m.blobs) {
		t.Fatalf("onBlob saw %d blobs of %d", len(seen), len(m.blobs))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err == nil {
		t.Fatal("Next after Close succeeded")
	}
}

// dtRawEntry encodes an entry by FORMAT.md, independently of
// appendDirEntry.
func dtRawEntry(name string, typ byte, mode, size uint64, mtime int64, body ...byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(name)))
	b = append(b, name...)
	b = append(b, typ)
	b = binary.AppendUvarint(b, mode)
	b = binary.AppendUvarint(b, size)
	b = binary.AppendVarint(b, mtime)
	b = append(b, 0, 0) // inode, dev
	return append(b, body...)
}

func dtRawPiece(entries ...[]byte) []byte {
	b := binary.AppendUvarint([]byte("WDR1"), uint64(len(entries)))
	for _, e := range entries {
		b = append(b, e...)
	}
	return b
}

func dtIDs(n int, fill byte) []byte {
	b := binary.AppendUvarint(nil, uint64(n))
	return append(b, bytes.Repeat([]byte{fill}, 32*n)...)
}

// TestDirPieceGolden pins the encoding byte by byte.
func TestDirPieceGolden(t *testing.T) {
	var chunk, piece, pm ID
	for i := range chunk {
		chunk[i], piece[i], pm[i] = 0x11, 0x22, 0x33
	}
	entries := []dirEntry{
		{name: "a", typ: 'f', mode: 0o644, size: 5, mtime: -1, inode: 300, dev: 1, ids: []ID{chunk}},
		{name: "d", typ: 'd', mode: 0o755, mtime: 1, ids: []ID{piece}},
		{name: "l", typ: 'l', mode: 0o777, target: "x"},
		{name: "s", typ: 's', mode: 0o600, size: 128, pageMap: pm},
	}
	want := "57445231" + "04" + // "WDR1", 4 entries
		"0161" + "66" + "a403" + "05" + "01" + "ac02" + "01" + "01" + strings.Repeat("11", 32) +
		"0164" + "64" + "ed03" + "00" + "02" + "00" + "00" + "01" + strings.Repeat("22", 32) +
		"016c" + "6c" + "ff03" + "00" + "00" + "00" + "00" + "0178" +
		"0173" + "73" + "8003" + "8001" + "00" + "00" + "00" + strings.Repeat("33", 32)
	got := encodeDirPiece(entries)
	if hex.EncodeToString(got) != want {
		t.Fatalf("encoding\n got %x\nwant %s", got, want)
	}
	dec, err := decodeDirPiece(got)
	if err != nil || !reflect.DeepEqual(dec, entries) {
		t.Fatalf("decode: %v\n%+v", err, dec)
	}
	if empty := encodeDirPiece(nil); string(empty) != "WDR1\x00" {
		t.Fatalf("empty piece %q", empty)
	}
}

func TestDecodeDirPieceRejects(t *testing.T) {
	file := func(name string) []byte { return dtRawEntry(name, 'f', 0o644, 1, 0, 0) }
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("WDR2"), 0)},
		{"no count", []byte("WDR1")},
		{"non-minimal count", []byte("WDR1\x80\x00")},
		{"count over the bytes", []byte("WDR1\x01")},
		{"count too large", append([]byte("WDR1\x02"), file("a")...)},
		{"huge count", []byte("WDR1\xff\xff\xff\xff\x0f")},
		{"trailing byte", append(dtRawPiece(file("a")), 0)},
		{"truncated", dtRawPiece(file("a"))[:10]},
		{"truncated entry", dtRawPiece(file("a"), file("b"), dtRawEntry("c", 'f', 0, 0, 0, dtIDs(1, 1)...))[:40]},
		{"truncated after the name", append([]byte("WDR1\x01\x09"), "123456789"...)},
		{"empty name", dtRawPiece(file(""))},
		{"dot", dtRawPiece(file("."))},
		{"dot dot", dtRawPiece(file(".."))},
		{"slash", dtRawPiece(file("a/b"))},
		{"NUL", dtRawPiece(file("a\x00"))},
		{"invalid UTF-8", dtRawPiece(file("a\xff"))},
		{"name too long", dtRawPiece(file(strings.Repeat("n", maxPathLen+1)))},
		{"unsorted", dtRawPiece(file("b"), file("a"))},
		{"duplicate", dtRawPiece(file("a"), file("a"))},
		{"unknown type", dtRawPiece(dtRawEntry("a", 'x', 0, 0, 0, 0))},
		{"type 0", dtRawPiece(dtRawEntry("a", 0, 0, 0, 0, 0))},
		{"bad mode", dtRawPiece(dtRawEntry("a", 'f', 0o10000, 0, 0, 0))},
		{"non-minimal mode", dtRawPiece(append([]byte("\x01af\x80\x00"), 0, 0, 0, 0, 0))},
		{"non-minimal mtime", dtRawPiece(append([]byte("\x01af\x00\x00\x81\x00"), 0, 0, 0))},
		{"size over int64", dtRawPiece(dtRawEntry("a", 'f', 0, math.MaxInt64+1, 0, 0))},
		{"varint overflow", dtRawPiece(append([]byte("\x01af\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02"), 0, 0, 0, 0))},
		{"chunk count over the bytes", dtRawPiece(dtRawEntry("a", 'f', 0, 0, 0, dtIDs(2, 1)[:33]...))},
		{"directory without pieces", dtRawPiece(dtRawEntry("a", 'd', 0, 0, 0, 0))},
		{"directory with size", dtRawPiece(dtRawEntry("a", 'd', 0, 1, 0, dtIDs(1, 1)...))},
		{"symlink with size", dtRawPiece(dtRawEntry("a", 'l', 0, 1, 0, 1, 'x'))},
		{"symlink without target", dtRawPiece(dtRawEntry("a", 'l', 0, 0, 0, 0))},
		{"symlink target with NUL", dtRawPiece(dtRawEntry("a", 'l', 0, 0, 0, 1, 0))},
		{"symlink target too long", dtRawPiece(dtRawEntry("a", 'l', 0, 0, 0, append(binary.AppendUvarint(nil, maxPathLen+1), strings.Repeat("t", maxPathLen+1)...)...))},
		{"database truncated", dtRawPiece(dtRawEntry("a", 's', 0, 0, 0, make([]byte, 31)...))},
		{"over 1 MiB with 2 entries", dtRawPiece(dtRawEntry("a", 'f', 0, 0, 0, dtIDs(dirPieceTarget/32, 1)...), file("b"))},
		{"over the blob bound", dtRawPiece(dtRawEntry("a", 'f', 0, 0, 0, dtIDs(maxDirPiece/32, 1)...))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeDirPiece(tc.data)
			if !errors.Is(err, errDirPieceFormat) {
				t.Fatalf("decodeDirPiece: %v, want errDirPieceFormat", err)
			}
			t.Log(err)
		})
	}
	// The bound cases above fail for their reason, not another: just
	// under each bound is accepted.
	for _, data := range [][]byte{
		dtRawPiece(dtRawEntry("a", 'f', 0, 0, 0, dtIDs(dirPieceTarget/32, 1)...)),
		dtRawPiece(dtRawEntry("a", 'f', 0, 0, 0, dtIDs(maxDirPiece/32-1, 1)...)),
		dtRawPiece(dtRawEntry("a", 'l', 0, 0, 0, append(binary.AppendUvarint(nil, maxPathLen), strings.Repeat("t", maxPathLen)...)...)),
		dtRawPiece(file(strings.Repeat("n", 255)), dtRawEntry("s", 's', 0o7777, math.MaxInt64, math.MinInt64, make([]byte, 32)...)),
	} {
		if _, err := decodeDirPiece(data); err != nil {
			t.Fatalf("valid piece of %d bytes: %v", len(data), err)
		}
	}
}

// TestDirTreeReaderCorrupt: hostile trees fail with ErrCorrupt naming the
// blob; a store's load error passes through.
func TestDirTreeReaderCorrupt(t *testing.T) {
	idA, idB, idC := ID{0xa}, ID{0xb}, ID{0xc}
	dirTo := func(name string, ids ...ID) []byte {
		body := binary.AppendUvarint(nil, uint64(len(ids)))
		for _, id := range ids {
			body = append(body, id[:]...)
		}
		return dtRawEntry(name, 'd', 0o755, 0, 0, body...)
	}
	file := func(name string) []byte { return dtRawEntry(name, 'f', 0o644, 1, 0, 0) }

	// A chain of directories with 255-byte names, each piece saved by its
	// content: the path passes 4096 bytes at depth 17.
	chain := newMemTreeBlobs()
	long := strings.Repeat("n", 255)
	leaf, _ := chain.saveTreeBlob(context.Background(), dtRawPiece())
	for i := 0; i < 17; i++ {
		leaf, _ = chain.saveTreeBlob(context.Background(), dtRawPiece(dirTo(long, leaf)))
	}

	for _, tc := range []struct {
		name    string
		blobs   map[ID][]byte
		store   *memTreeBlobs // instead of blobs
		root    []ID
		good    int   // nodes before the error
		want    error // wrapped
		naming  ID    // named in the message
		openErr bool
	}{
		{name: "malformed root", blobs: map[ID][]byte{idA: []byte("WDR1\x01")}, root: []ID{idA}, want: ErrCorrupt, naming: idA},
		{name: "malformed subdirectory", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idB), file("e")), idB: []byte("junk")}, root: []ID{idA}, good: 1, want: ErrCorrupt, naming: idB},
		{name: "missing root", blobs: map[ID][]byte{}, root: []ID{idA}, want: errMemBlobMissing, naming: idA},
		{name: "missing subdirectory", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idB))}, root: []ID{idA}, good: 1, want: errMemBlobMissing, naming: idB},
		{name: "cycle to itself", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idA))}, root: []ID{idA}, want: ErrCorrupt, naming: idA},
		{name: "cycle through a child", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idB)), idB: dtRawPiece(dirTo("e", idA))}, root: []ID{idA}, good: 1, want: ErrCorrupt, naming: idB},
		{name: "piece twice in a directory", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idB, idB)), idB: dtRawPiece(file("x"))}, root: []ID{idA}, want: ErrCorrupt, naming: idA},
		{name: "order across pieces", blobs: map[ID][]byte{idA: dtRawPiece(file("b")), idB: dtRawPiece(file("a"))}, root: []ID{idA, idB}, good: 1, want: ErrCorrupt, naming: idB},
		{name: "name repeated across pieces", blobs: map[ID][]byte{idA: dtRawPiece(file("a")), idB: dtRawPiece(file("a"))}, root: []ID{idA, idB}, good: 1, want: ErrCorrupt, naming: idB},
		{name: "order across pieces of a subdirectory", blobs: map[ID][]byte{idA: dtRawPiece(dirTo("d", idB, idC)), idB: dtRawPiece(file("b")), idC: dtRawPiece(file("a"))}, root: []ID{idA}, good: 2, want: ErrCorrupt, naming: idC},
		{name: "empty piece of several", blobs: map[ID][]byte{idA: dtRawPiece(), idB: dtRawPiece(file("a"))}, root: []ID{idA, idB}, want: ErrCorrupt, naming: idA},
		{name: "path too long", store: chain, root: []ID{leaf}, good: 16, want: ErrCorrupt},
		{name: "no root pieces", blobs: map[ID][]byte{}, root: nil, want: ErrCorrupt, openErr: true},
		{name: "root piece twice", blobs: map[ID][]byte{idA: dtRawPiece(file("a"))}, root: []ID{idA, idA}, want: ErrCorrupt, naming: idA, openErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.store
			if m == nil {
				m = newMemTreeBlobs()
				for id, b := range tc.blobs {
					m.put(id, b)
				}
			}
			r, err := openDirTree(context.Background(), m, tc.root)
			if tc.openErr {
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.naming.String()) && tc.naming != (ID{}) {
					t.Fatalf("open: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var good int
			for ; ; good++ {
				if _, err = r.Next(); err != nil {
					break
				}
			}
			if good != tc.good || !errors.Is(err, tc.want) || tc.want != ErrCorrupt && errors.Is(err, ErrCorrupt) {
				t.Fatalf("after %d nodes: %v; want %d nodes, then %v", good, err, tc.good, tc.want)
			}
			if tc.naming != (ID{}) && !strings.Contains(err.Error(), tc.naming.String()) {
				t.Fatalf("error %q does not name blob %s", err, tc.naming)
			}
			if _, again := r.Next(); again != err {
				t.Fatalf("Next after %v: %v (not sticky)", err, again)
			}
		})
	}
}

func TestDirTreeReaderCanceled(t *testing.T) {
	m := newMemTreeBlobs()
	root := writeDirTree(t, m, []*Node{dtFile("a", 1)})
	ctx, cancel := context.WithCancel(context.Background())
	r, err := openDirTree(ctx, m, root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	if _, err := r.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v", err)
	}
}

// TestDirTreeReaderMemoryBound: a hostile chain of 1 MiB pieces with tiny
// entries, each holding the next level open, fails before the reader holds
// more than maxDirTreeHeld; and a false entry count costs no memory.
func TestDirTreeReaderMemoryBound(t *testing.T) {
	if n := unsafe.Sizeof(dirEntry{}); n > dirEntryMem {
		t.Fatalf("dirEntry takes %d bytes, dirEntryMem says %d", n, dirEntryMem)
	}
	m := newMemTreeBlobs()
	var files [][]byte
	size := 0
	for i := 0; size < dirPieceTarget-64; i++ {
		e := dtRawEntry(fmt.Sprintf("%05d", i), 'f', 0, 0, 0, 0)
		files = append(files, e)
		size += len(e)
	}
	id, _ := m.saveTreeBlob(context.Background(), dtRawPiece())
	levels := maxDirTreeHeld/(dirPieceTarget+len(files)*dirEntryMem) + 2
	for i := 0; i < levels; i++ {
		piece := dtRawPiece(append([][]byte{dtRawEntry("!", 'd', 0, 0, 0, append([]byte{1}, id[:]...)...)}, files...)...)
		if len(piece) > dirPieceTarget {
			t.Fatalf("piece of %d bytes", len(piece))
		}
		id, _ = m.saveTreeBlob(context.Background(), piece)
	}
	_, err := readDirTreeAll(m, []ID{id}, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "decoded") {
		t.Fatalf("%d levels of %d entries: %v", levels, len(files), err)
	}

	data := append(binary.AppendUvarint([]byte("WDR1"), dirPieceTarget/minDirEntry), make([]byte, dirPieceTarget-16)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = decodeDirPiece(data)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errDirPieceFormat) {
		t.Fatalf("false count: %v", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("a piece claiming %d entries allocated %d bytes", dirPieceTarget/minDirEntry, n)
	}
}

// With skipDir and dirDone sharing a seen set, a second walk visits only
// the directories that changed (and their ancestors).
func TestDirTreeSkipSeenSubtrees(t *testing.T) {
	tree := func(size int64) []*Node {
		return []*Node{
			dtDir("Media"),
			dtDir("Media/A"),
			dtFile("Media/A/1.jpg", 1, "1"),
			dtDir("Media/B"),
			dtFile("Media/B/2.jpg", size, "2"),
			dtDir("Media/C"),
			dtDir("Media/C/D"),
			dtFile("Media/C/D/3.jpg", 3, "3"),
		}
	}
	m := newMemTreeBlobs()
	walk := func(root []ID, seen map[string]bool) []string {
		tr, err := openDirTree(context.Background(), m, root)
		if err != nil {
			t.Fatal(err)
		}
		tr.skipDir = func(p []ID) bool { return seen[piecesKey(p)] }
		tr.dirDone = func(p []ID) { seen[piecesKey(p)] = true }
		var paths []string
		for {
			n, err := tr.Next()
			if err == io.EOF {
				return paths
			}
			if err != nil {
				t.Fatal(err)
			}
			paths = append(paths, n.Path)
		}
	}
	seen := map[string]bool{}
	root1 := writeDirTree(t, m, tree(2))
	if got := walk(root1, seen); len(got) != len(tree(2)) {
		t.Fatalf("first walk yielded %q", got)
	}
	root2 := writeDirTree(t, m, tree(22))
	got := walk(root2, seen)
	want := []string{"Media", "Media/A", "Media/B", "Media/B/2.jpg", "Media/C"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("second walk yielded %q, want %q (only the changed directory's contents)", got, want)
	}
	// Everything below the root was walked: only the root's own entries
	// are yielded again.
	if got := walk(root2, seen); !reflect.DeepEqual(got, []string{"Media"}) {
		t.Fatalf("third walk yielded %q, want [Media]", got)
	}
}
