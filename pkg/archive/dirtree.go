package archive

// Directory trees (format version 2): a snapshot's file list as a Merkle
// tree of per-directory blobs, deduplicated like file chunks. The text
// below is written to be copied into FORMAT.md.
//
// ## 7.2 Tree (version 2): directory pieces
//
// A snapshot's nodes form a tree of directories. Each directory is stored
// as one or more **pieces**; a piece is a blob stored in a pack (§5) like a
// chunk, with
//
//	id = HMAC(K_id, piece plaintext)     (32 bytes)
//
// so a directory whose entries did not change has the same piece ids in
// every snapshot and is stored once: a snapshot in which nothing changed
// adds only the pieces of the root directory. The snapshot header names
// the root directory's pieces, in order. The root directory has no node of
// its own: its entries are the top-level names (`msgstore.db`, `Media`).
//
// Piece plaintext:
//
//	piece = "WDR1" || uvarint(n) || n × entry
//	entry = uvarint(len(name)) || name || type (1 byte) || uvarint(mode) || uvarint(size)
//	        || varint(mtime) || uvarint(inode) || uvarint(dev) || body
//	body  = type 'f' (file):      uvarint(k) || k × chunk id (32)
//	        type 'd' (directory): uvarint(p) || p × piece id (32)       p ≥ 1
//	        type 'l' (symlink):   uvarint(len(target)) || target
//	        type 's' (database):  page map id (32)
//
// `varint` is the zig-zag signed LEB128 of Go's `encoding/binary`
// (AppendVarint). Every uvarint and varint must be minimal (no final 0x00
// byte in a multi-byte encoding), so each tree has exactly one encoding.
//
// | field | meaning |
// |---|---|
// | `name` | one path component: valid UTF-8, non-empty, no `/`, no NUL, not `.` or `..` |
// | `mode` | Unix permission bits, ≤ 07777 (as `m` in version 1) |
// | `size` | file or database size in bytes, ≤ 2⁶³−1; 0 for 'd' and 'l' |
// | `mtime` | modification time, Unix nanoseconds (signed) |
// | `inode`, `dev` | at backup time, for change detection only |
// | chunk ids | the file's chunks in order (as `c`); k = 0 for an empty file |
// | piece ids | the subdirectory's pieces, in order |
// | `target` | symlink target: 1–4096 bytes, no NUL |
// | page map id | the root blob of a database stored page by page (node field `PageMap`) |
//
// Within a piece the names are strictly increasing (bytewise, so unique);
// the entries of a directory are the entries of its pieces in order, and
// the names increase across piece boundaries too. A directory with one
// piece may have n = 0 (an empty directory); in a directory with several
// pieces every piece has n ≥ 1. A piece is at most 8 MiB (the bound of
// any blob, §5), and a piece over 1 MiB holds exactly one entry; so a
// file's chunk list is at most (8 MiB − 5 − its other fields) / 32 ≈
// 262,000 chunks (≥ 128 GiB at the default 512 KiB minimum chunk). A node's
// path is its parent directory's path, `/`, and its name; every path must
// be valid as in version 1 (≤ 4096 bytes), which also bounds the depth.
// Readers reject unknown type bytes, trailing bytes, non-minimal varints,
// counts larger than the bytes that remain, and a piece id that appears
// twice on the path from the root to a directory (a cycle); the root
// has at least one piece. (This reader also refuses a walk whose open
// directories take more than 128 MiB decoded: only a hostile tree does.)
//
// A depth-first walk that yields each directory's node, then its entries
// in order (descending into each subdirectory when reached), produces the
// nodes in exactly the order of version 1 (§7.2): path order component by
// component, a directory before its contents.
//
// **Cutting a directory into pieces** (writers only; readers do not check
// it, and it only affects deduplication). Entries are appended to the
// current piece in name order. Before an entry is appended, the piece is
// closed if it holds at least one entry and the entry would make it exceed
// 1 MiB. After an entry is appended, the piece is closed if it holds at
// least 64 entries and the top 8 bits of FNV-1a-64(name) are zero (the
// top ones: FNV-1a's low bits depend only on the inputs' low bits). The
// last piece is closed at the end of the directory (an empty directory
// gets one empty piece). Boundaries depend on names, so inserting or
// changing one entry usually rewrites one piece of its directory (plus one
// piece of each ancestor); pieces average ≈ 320 entries. The names are
// encrypted in their blob: boundaries are only visible as blob lengths in
// encrypted pack trailers.

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// treeSaver stores the blobs a directory tree is made of (the writer's
// side), treeLoader loads them (the reader's); treeBlobs does both.
type treeSaver interface {
	// saveTreeBlob stores data (if a blob with the same content is not
	// already stored) and returns its id, HMAC(K_id, data). It must not
	// keep data after it returns (the writer reuses the buffer): copy it.
	saveTreeBlob(ctx context.Context, data []byte) (ID, error)
}

type treeLoader interface {
	// loadTreeBlob returns the authenticated plaintext of blob id. The
	// slice belongs to the caller from then on: the implementation must
	// not modify or reuse it. Errors name the blob.
	loadTreeBlob(ctx context.Context, id ID) ([]byte, error)
}

type treeBlobs interface {
	treeSaver
	treeLoader
}

// nodeReader streams a snapshot's nodes in walk order; Next returns io.EOF
// at the end. *TreeReader (version 1) and *dirTreeReader (version 2)
// implement it.
type nodeReader interface {
	Next() (*Node, error)
	Close() error
}

var (
	_ nodeReader = (*TreeReader)(nil)
	_ nodeReader = (*dirTreeReader)(nil)
)

const (
	dirPieceMagic = "WDR1"
	// dirPieceTarget is the size a writer keeps pieces under; only a
	// piece holding a single, larger entry may exceed it.
	dirPieceTarget = 1 << 20
	// maxDirPiece is the largest piece: the bound of any blob.
	maxDirPiece = maxChunkSize
	// dirPieceMinEntries is how many entries a piece holds before a name
	// may end it.
	dirPieceMinEntries = 64
	// minDirEntry is the smallest encoded entry (1-byte name, a 1-byte
	// field each, an empty chunk list): it bounds n by the piece length.
	minDirEntry = 9
	// maxDirTreeHeld bounds the memory a reader holds for the open
	// directories of its walk (one decoded piece each): a legitimate tree
	// needs depth × a few MiB, so only a hostile one reaches it.
	maxDirTreeHeld = 128 << 20
	// dirEntryMem is the size of a dirEntry, beyond the bytes it copies.
	dirEntryMem = 144
)

// Entry type bytes.
const (
	dirTypeFile    = 'f'
	dirTypeDir     = 'd'
	dirTypeSymlink = 'l'
	dirTypeDB      = 's'
)

// errDirPieceFormat is wrapped by every decodeDirPiece error.
var errDirPieceFormat = errors.New("malformed directory piece")

// dirEntry is one decoded entry of a piece.
type dirEntry struct {
	name    string
	typ     byte
	mode    uint32
	size    int64
	mtime   int64
	inode   uint64
	dev     uint64
	ids     []ID   // 'f': chunk ids; 'd': piece ids
	target  string // 'l'
	pageMap ID     // 's'
}

// appendDirEntry appends e's encoding.
func appendDirEntry(b []byte, e *dirEntry) []byte {
	b = binary.AppendUvarint(b, uint64(len(e.name)))
	b = append(b, e.name...)
	b = append(b, e.typ)
	b = binary.AppendUvarint(b, uint64(e.mode))
	b = binary.AppendUvarint(b, uint64(e.size))
	b = binary.AppendVarint(b, e.mtime)
	b = binary.AppendUvarint(b, e.inode)
	b = binary.AppendUvarint(b, e.dev)
	switch e.typ {
	case dirTypeFile, dirTypeDir:
		b = binary.AppendUvarint(b, uint64(len(e.ids)))
		for i := range e.ids {
			b = append(b, e.ids[i][:]...)
		}
	case dirTypeSymlink:
		b = binary.AppendUvarint(b, uint64(len(e.target)))
		b = append(b, e.target...)
	case dirTypeDB:
		b = append(b, e.pageMap[:]...)
	}
	return b
}

// encodeDirPiece encodes entries (already valid and sorted) as one piece.
func encodeDirPiece(entries []dirEntry) []byte {
	b := append([]byte(dirPieceMagic), binary.AppendUvarint(nil, uint64(len(entries)))...)
	for i := range entries {
		b = appendDirEntry(b, &entries[i])
	}
	return b
}

// pieceDecoder reads the fields of one piece.
type pieceDecoder struct {
	b   []byte
	off int
}

func (d *pieceDecoder) rest() int { return len(d.b) - d.off }

// uvarint reads a minimal uvarint.
func (d *pieceDecoder) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		return 0, fmt.Errorf("bad %s varint at offset %d", what, d.off)
	}
	if n > 1 && d.b[d.off+n-1] == 0 {
		return 0, fmt.Errorf("non-minimal %s varint at offset %d", what, d.off)
	}
	d.off += n
	return v, nil
}

// count reads a uvarint count of items of at least unit bytes each that
// must fit in what remains.
func (d *pieceDecoder) count(what string, unit int) (int, error) {
	v, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	if v > uint64(d.rest()/unit) {
		return 0, fmt.Errorf("%s %d exceeds the %d bytes left", what, v, d.rest())
	}
	return int(v), nil
}

func (d *pieceDecoder) bytes(n int) []byte {
	s := d.b[d.off : d.off+n]
	d.off += n
	return s
}

// validDirName reports whether name can be one path component.
func validDirName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= maxPathLen && utf8.ValidString(name) &&
		!strings.ContainsAny(name, "/\x00")
}

// decodeDirPiece decodes and validates one piece. Errors wrap
// errDirPieceFormat.
func decodeDirPiece(data []byte) ([]dirEntry, error) {
	entries, err := decodePiece(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errDirPieceFormat, err)
	}
	return entries, nil
}

func decodePiece(data []byte) ([]dirEntry, error) {
	if len(data) > maxDirPiece {
		return nil, fmt.Errorf("%d bytes, over %d", len(data), maxDirPiece)
	}
	if len(data) < len(dirPieceMagic) || string(data[:len(dirPieceMagic)]) != dirPieceMagic {
		return nil, errors.New("bad magic")
	}
	d := &pieceDecoder{b: data, off: len(dirPieceMagic)}
	n, err := d.count("entry count", minDirEntry)
	if err != nil {
		return nil, err
	}
	if len(data) > dirPieceTarget && n != 1 {
		return nil, fmt.Errorf("%d bytes with %d entries (over %d bytes needs exactly one)", len(data), n, dirPieceTarget)
	}
	// Grown as entries decode, so a false count costs no memory.
	entries := make([]dirEntry, 0, min(n, 256))
	for i := 0; i < n; i++ {
		entries = append(entries, dirEntry{})
		e := &entries[i]
		if err := d.entry(e); err != nil {
			return nil, fmt.Errorf("entry %d %s: %v", i, shortQuote(e.name), err)
		}
		if i > 0 && e.name <= entries[i-1].name {
			return nil, fmt.Errorf("entry %d %s: not after %s", i, shortQuote(e.name), shortQuote(entries[i-1].name))
		}
	}
	if d.rest() != 0 {
		return nil, fmt.Errorf("%d trailing bytes", d.rest())
	}
	return entries, nil
}

// entry decodes one entry into e (e.name first, for messages).
func (d *pieceDecoder) entry(e *dirEntry) error {
	ln, err := d.count("name length", 1)
	if err != nil {
		return err
	}
	e.name = string(d.bytes(ln))
	if !validDirName(e.name) {
		return errors.New("invalid name")
	}
	if d.rest() < 1 {
		return errors.New("truncated")
	}
	e.typ = d.b[d.off]
	d.off++
	var v [5]uint64
	for i, what := range [...]string{"mode", "size", "mtime", "inode", "dev"} {
		if v[i], err = d.uvarint(what); err != nil {
			return err
		}
	}
	if v[0]&^0o7777 != 0 {
		return fmt.Errorf("invalid mode %o", v[0])
	}
	if v[1] > math.MaxInt64 {
		return fmt.Errorf("size %d too large", v[1])
	}
	e.mode, e.size = uint32(v[0]), int64(v[1])
	e.mtime = int64(v[2] >> 1) // zig-zag, as binary.Varint
	if v[2]&1 != 0 {
		e.mtime = ^e.mtime
	}
	e.inode, e.dev = v[3], v[4]
	switch e.typ {
	case dirTypeFile, dirTypeDir:
		what := "chunk count"
		if e.typ == dirTypeDir {
			what = "piece count"
		}
		k, err := d.count(what, len(ID{}))
		if err != nil {
			return err
		}
		if e.typ == dirTypeDir && (k == 0 || e.size != 0) {
			return fmt.Errorf("directory with %d pieces and size %d", k, e.size)
		}
		if k > 0 {
			e.ids = make([]ID, k)
			for i := range e.ids {
				copy(e.ids[i][:], d.bytes(len(ID{})))
			}
		}
	case dirTypeSymlink:
		ln, err := d.count("target length", 1)
		if err != nil {
			return err
		}
		e.target = string(d.bytes(ln))
		if e.size != 0 || !validDirTarget(e.target) {
			return fmt.Errorf("invalid symlink (size %d, target %s)", e.size, shortQuote(e.target))
		}
	case dirTypeDB:
		if d.rest() < len(ID{}) {
			return errors.New("truncated page map id")
		}
		copy(e.pageMap[:], d.bytes(len(ID{})))
	default:
		return fmt.Errorf("unknown type byte 0x%02x", e.typ)
	}
	return nil
}

// shortQuote quotes s for a message, cut to 64 bytes.
func shortQuote(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q…", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

func validDirTarget(t string) bool {
	return t != "" && len(t) <= maxPathLen && !strings.ContainsRune(t, 0)
}

// checkTreeNode validates a node of a version 2 tree: Node.check, plus the
// database type, the page map field, and the bounds of the binary format.
func checkTreeNode(n *Node) error {
	if n.Type == TypeDB {
		switch {
		case !validPath(n.Path):
			return fmt.Errorf("invalid path %q", n.Path)
		case n.Size < 0 || n.Target != "" || len(n.Chunks) != 0:
			return fmt.Errorf("%s: invalid database node", n.Path)
		case n.Mode&^0o7777 != 0:
			return fmt.Errorf("%s: invalid mode %o", n.Path, n.Mode)
		}
		if _, err := ParseID(n.PageMap); err != nil {
			return fmt.Errorf("%s: page map: %v", n.Path, err)
		}
		return nil
	}
	if err := n.check(); err != nil {
		return err
	}
	switch {
	case n.PageMap != "":
		return fmt.Errorf("%s: page map on a %q node", n.Path, n.Type)
	case n.Type == TypeSymlink && (n.Size != 0 || len(n.Target) > maxPathLen):
		return fmt.Errorf("%s: invalid symlink node", n.Path)
	}
	return nil
}

// entryOf converts a checked node (not a directory) to its entry.
func entryOf(n *Node, name string) (dirEntry, error) {
	e := dirEntry{name: name, typ: n.Type[0], mode: n.Mode, size: n.Size, mtime: n.MTime, inode: n.Inode, dev: n.Dev, target: n.Target}
	if len(n.Chunks) > 0 {
		e.ids = make([]ID, len(n.Chunks))
		for i, c := range n.Chunks {
			var err error
			if e.ids[i], err = ParseID(c); err != nil {
				return e, err
			}
		}
	}
	if n.Type == TypeDB {
		var err error
		if e.pageMap, err = ParseID(n.PageMap); err != nil {
			return e, err
		}
	}
	return e, nil
}

// fnv1a64 is FNV-1a, 64 bits.
func fnv1a64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// dirFrame is an open directory of a dirTreeWriter: the encoded entries of
// its current piece and the ids of its finished pieces.
type dirFrame struct {
	path    string // "" for the root
	node    Node   // the directory's own node (not for the root)
	entries []byte // encoded entries of the current piece
	count   int    // how many
	pieces  []ID
}

// dirTreeWriter builds a version 2 tree from nodes in walk order. It keeps
// the directories open on the current path only, and at most one piece
// (≤ 1 MiB, or one larger entry) for each.
type dirTreeWriter struct {
	ctx   context.Context
	blobs treeSaver
	stack []*dirFrame
	last  string
	piece []byte // scratch for the piece being saved
	err   error  // sticky
}

func newDirTreeWriter(ctx context.Context, blobs treeSaver) *dirTreeWriter {
	return &dirTreeWriter{ctx: ctx, blobs: blobs, stack: []*dirFrame{{}}}
}

var errDirTreeFinished = errors.New("internal error: dir tree writer already finished")

// add appends the next node: paths strictly increasing under
// comparePaths, a directory before its contents, every parent directory
// added before. It does not keep n.
func (w *dirTreeWriter) add(n *Node) error {
	if w.err != nil {
		return w.err
	}
	if err := w.addNode(n); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *dirTreeWriter) addNode(n *Node) error {
	if err := checkTreeNode(n); err != nil {
		return fmt.Errorf("internal error: tree node: %v", err)
	}
	if w.last != "" && comparePaths(w.last, n.Path) >= 0 {
		return fmt.Errorf("internal error: tree out of order: %q after %q", n.Path, w.last)
	}
	w.last = n.Path
	parent, name := "", n.Path
	if i := strings.LastIndexByte(n.Path, '/'); i >= 0 {
		parent, name = n.Path[:i], n.Path[i+1:]
	}
	for len(w.stack) > 1 && w.stack[len(w.stack)-1].path != parent {
		if err := w.closeDir(); err != nil {
			return err
		}
	}
	if w.stack[len(w.stack)-1].path != parent {
		return fmt.Errorf("internal error: tree node %q: directory %q was not added", n.Path, parent)
	}
	if n.Type == TypeDir {
		w.stack = append(w.stack, &dirFrame{path: n.Path, node: *n})
		return nil
	}
	e, err := entryOf(n, name)
	if err != nil {
		return fmt.Errorf("internal error: tree node %q: %v", n.Path, err)
	}
	return w.addEntry(w.stack[len(w.stack)-1], &e)
}

// addEntry appends e to f's current piece, cutting pieces as FORMAT.md
// describes.
func (w *dirTreeWriter) addEntry(f *dirFrame, e *dirEntry) error {
	start := len(f.entries)
	f.entries = appendDirEntry(f.entries, e)
	size := len(f.entries) - start
	if len(dirPieceMagic)+1+size > maxDirPiece {
		return fmt.Errorf("tree node %s: %d bytes of metadata, over the %d-byte limit of a piece (%d chunk or piece ids)",
			pathJoin(f.path, e.name), size, maxDirPiece, len(e.ids))
	}
	if f.count > 0 && len(dirPieceMagic)+uvarintLen(f.count+1)+len(f.entries) > dirPieceTarget {
		// The new entry would pass the target: end the piece before it.
		enc := append([]byte(nil), f.entries[start:]...)
		f.entries = f.entries[:start]
		if err := w.flush(f); err != nil {
			return err
		}
		f.entries = append(f.entries, enc...)
	}
	f.count++
	if f.count >= dirPieceMinEntries && fnv1a64(e.name)>>56 == 0 {
		return w.flush(f)
	}
	return nil
}

// flush saves f's current piece.
func (w *dirTreeWriter) flush(f *dirFrame) error {
	w.piece = append(append(append(w.piece[:0], dirPieceMagic...), binary.AppendUvarint(nil, uint64(f.count))...), f.entries...)
	id, err := w.blobs.saveTreeBlob(w.ctx, w.piece)
	if err != nil {
		return err
	}
	f.pieces = append(f.pieces, id)
	f.entries, f.count = f.entries[:0], 0
	return nil
}

// closeDir ends the innermost open directory and adds its entry to its
// parent.
func (w *dirTreeWriter) closeDir() error {
	f := w.stack[len(w.stack)-1]
	if f.count > 0 || len(f.pieces) == 0 {
		if err := w.flush(f); err != nil {
			return err
		}
	}
	w.stack = w.stack[:len(w.stack)-1]
	parent := w.stack[len(w.stack)-1]
	name := f.path[strings.LastIndexByte(f.path, '/')+1:]
	e := dirEntry{name: name, typ: dirTypeDir, mode: f.node.Mode, mtime: f.node.MTime, inode: f.node.Inode, dev: f.node.Dev, ids: f.pieces}
	return w.addEntry(parent, &e)
}

// finish ends every open directory and returns the root directory's
// pieces. The writer cannot be used afterwards.
func (w *dirTreeWriter) finish() ([]ID, error) {
	if w.err != nil {
		return nil, w.err
	}
	w.err = errDirTreeFinished
	for len(w.stack) > 1 {
		if err := w.closeDir(); err != nil {
			w.err = err
			return nil, err
		}
	}
	root := w.stack[0]
	if root.count > 0 || len(root.pieces) == 0 {
		if err := w.flush(root); err != nil {
			w.err = err
			return nil, err
		}
	}
	w.stack = nil
	return root.pieces, nil
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

func pathJoin(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// dirLevel is an open directory of a dirTreeReader's walk.
type dirLevel struct {
	path    string // "" for the root
	pieces  []ID
	next    int // index of the next piece to load
	cur     ID  // the loaded piece, for messages
	entries []dirEntry
	pos     int
	last    string // the last name yielded, across pieces
	held    int    // memory of the loaded piece, decoded
}

// dirTreeReader walks a version 2 tree depth-first and yields its nodes in
// the order the writer received them. It loads a directory's pieces only
// when the walk reaches them and holds one piece per open directory.
type dirTreeReader struct {
	ctx    context.Context
	blobs  treeLoader
	stack  []*dirLevel
	onPath map[ID]bool // the pieces of the open directories
	held   int
	err    error // sticky

	// onBlob, if set, is called with the id of every blob the reader
	// loads, as it loads it (prune marks tree blobs used with it). Set it
	// before the first Next: openDirTree loads nothing.
	onBlob func(id ID)

	// skipDir, if set, is asked before the walk descends into a
	// directory (its pieces); true yields the directory's node but not
	// its contents. dirDone, if set, is called with a directory's pieces
	// once all of it was walked. A walk over many snapshots (check,
	// prune) uses them to visit each shared subtree once.
	skipDir func(pieces []ID) bool
	dirDone func(pieces []ID)
}

// openDirTree starts a walk of the tree whose root directory has the
// pieces root. Nothing is loaded until Next.
func openDirTree(ctx context.Context, blobs treeLoader, root []ID) (*dirTreeReader, error) {
	if len(root) == 0 {
		return nil, fmt.Errorf("tree root has no pieces: %w", ErrCorrupt)
	}
	r := &dirTreeReader{ctx: ctx, blobs: blobs, onPath: make(map[ID]bool)}
	if err := r.push("", root); err != nil {
		return nil, fmt.Errorf("tree root: %v: %w", err, ErrCorrupt)
	}
	return r, nil
}

// push opens a directory; an error means a cycle.
func (r *dirTreeReader) push(path string, pieces []ID) error {
	for i, id := range pieces {
		if r.onPath[id] {
			for _, id := range pieces[:i] {
				delete(r.onPath, id)
			}
			return fmt.Errorf("piece %s repeated on the path to %q (a cycle)", id, path)
		}
		r.onPath[id] = true
	}
	r.stack = append(r.stack, &dirLevel{path: path, pieces: pieces})
	return nil
}

// Next returns the next node, or io.EOF at the end.
func (r *dirTreeReader) Next() (*Node, error) {
	if r.err != nil {
		return nil, r.err
	}
	n, err := r.next()
	if err != nil {
		r.err = err
		r.release()
	}
	return n, err
}

func (r *dirTreeReader) next() (*Node, error) {
	for len(r.stack) > 0 {
		l := r.stack[len(r.stack)-1]
		if l.pos < len(l.entries) {
			return r.yield(l)
		}
		if l.next < len(l.pieces) {
			if err := r.load(l); err != nil {
				return nil, err
			}
			continue
		}
		for _, id := range l.pieces {
			delete(r.onPath, id)
		}
		r.held -= l.held
		r.stack = r.stack[:len(r.stack)-1]
		if r.dirDone != nil {
			r.dirDone(l.pieces)
		}
	}
	return nil, io.EOF
}

// corruptPiece is an ErrCorrupt naming the blob at fault.
func corruptPiece(id ID, format string, args ...any) error {
	return fmt.Errorf("tree blob %s: %s: %w", id, fmt.Sprintf(format, args...), ErrCorrupt)
}

func (r *dirTreeReader) load(l *dirLevel) error {
	id := l.pieces[l.next]
	l.next++
	if err := context.Cause(r.ctx); err != nil {
		return err
	}
	data, err := r.blobs.loadTreeBlob(r.ctx, id)
	if err != nil {
		return err
	}
	if r.onBlob != nil {
		r.onBlob(id)
	}
	entries, err := decodeDirPiece(data)
	if err != nil {
		return corruptPiece(id, "%v", err)
	}
	if len(entries) == 0 && len(l.pieces) > 1 {
		return corruptPiece(id, "empty piece %d of %d of directory %q", l.next, len(l.pieces), l.path)
	}
	if len(entries) > 0 && l.last != "" && entries[0].name <= l.last {
		return corruptPiece(id, "directory %q: name %q not after %q of its previous piece", l.path, entries[0].name, l.last)
	}
	held := len(data) + len(entries)*dirEntryMem // what the decoded piece takes
	r.held += held - l.held
	l.held = held
	if r.held > maxDirTreeHeld {
		return corruptPiece(id, "the open directories' pieces take more than %d bytes decoded", maxDirTreeHeld)
	}
	l.cur, l.entries, l.pos = id, entries, 0
	return nil
}

// yield returns l's next entry as a node and opens it if it is a
// directory.
func (r *dirTreeReader) yield(l *dirLevel) (*Node, error) {
	e := &l.entries[l.pos]
	l.pos++
	l.last = e.name
	n := e.node(pathJoin(l.path, e.name))
	if err := checkTreeNode(n); err != nil {
		return nil, corruptPiece(l.cur, "%v", err)
	}
	if e.typ == dirTypeDir && (r.skipDir == nil || !r.skipDir(e.ids)) {
		if err := r.push(n.Path, e.ids); err != nil {
			return nil, corruptPiece(l.cur, "%v", err)
		}
	}
	// The decoded entry is not needed again: let its ids go.
	*e = dirEntry{}
	return n, nil
}

// node returns the entry as the node at path (a directory's pieces are
// not part of a node).
func (e *dirEntry) node(path string) *Node {
	n := &Node{Path: path, Mode: e.mode, Size: e.size, MTime: e.mtime, Inode: e.inode, Dev: e.dev, Target: e.target}
	switch e.typ {
	case dirTypeFile:
		n.Type = TypeFile
		if len(e.ids) > 0 {
			n.Chunks = make([]string, len(e.ids))
			for i := range e.ids {
				n.Chunks[i] = hex.EncodeToString(e.ids[i][:])
			}
		}
	case dirTypeDir:
		n.Type = TypeDir
	case dirTypeSymlink:
		n.Type = TypeSymlink
	case dirTypeDB:
		n.Type, n.PageMap = TypeDB, hex.EncodeToString(e.pageMap[:])
	}
	return n
}

func (r *dirTreeReader) release() {
	r.stack, r.onPath, r.held = nil, nil, 0
}

var errDirTreeClosed = errors.New("internal error: dir tree reader used after Close")

// Close ends the walk.
func (r *dirTreeReader) Close() error {
	if r.err == nil {
		r.err = errDirTreeClosed
	}
	r.release()
	return nil
}
