package archive

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Snapshot is the header of one backup (FORMAT.md §Snapshots).
type Snapshot struct {
	Version int       `json:"v"`
	Time    time.Time `json:"time"`
	Host    string    `json:"host"`
	User    string    `json:"user,omitempty"`
	Parent  string    `json:"parent,omitempty"`
	DB      string    `json:"db,omitempty"`    // source path of the chat database
	Media   string    `json:"media,omitempty"` // source path of the media folder
	Tags    []string  `json:"tags,omitempty"`
	Tree    string    `json:"tree,omitempty"` // version 1: hex id of the tree object
	Root    []string  `json:"root,omitempty"` // version 2: hex ids of the root directory's pieces
	DBStamp *DBStamp  `json:"db_stamp,omitempty"`
	DBCheck string    `json:"db_check,omitempty"` // "full" or "quick": how the database copy was verified
	// DBFullCheck is when the database last passed a full integrity
	// check: this backup's time if it ran one, else the parent's value
	// (format 2).
	DBFullCheck *time.Time `json:"db_full_check,omitempty"`
	// DBUnchecked names the database's virtual tables (FTS indexes)
	// whose own integrity check this backup's check did not run (format
	// 2, FORMAT.md §7.5).
	DBUnchecked []string `json:"db_unchecked,omitempty"`
	// MoreDBs are the snapshot's further chat databases, when it holds
	// more than one (WhatsApp's msgstore.db and wa.db): the DB fields
	// above describe the first in path order, these the rest, in path
	// order (format 2). Databases returns them all.
	MoreDBs  []SnapshotDB `json:"more_dbs,omitempty"`
	Partial  bool         `json:"partial,omitempty"`
	Warnings int          `json:"warnings,omitempty"`
	Stats    Stats        `json:"stats"`
	// RepairedFrom names the snapshot this one was made from by repair
	// snapshots, which left out the Dropped files whose data is lost.
	RepairedFrom string `json:"repaired_from,omitempty"`
	Dropped      int    `json:"dropped,omitempty"`

	ID ID `json:"-"` // from the object name
}

// SnapshotDB describes one chat database of a snapshot: its source path,
// the stamp of the state stored, how that copy was checked (and which
// virtual tables that check left out) and when the database last passed a
// full integrity check.
type SnapshotDB struct {
	Path      string     `json:"path"`
	Stamp     *DBStamp   `json:"stamp,omitempty"`
	Check     string     `json:"check,omitempty"` // "full" or "quick"
	FullCheck *time.Time `json:"full_check,omitempty"`
	Unchecked []string   `json:"unchecked,omitempty"` // virtual tables the check did not verify
}

// Name is the database's top-level name in the snapshot's tree.
func (d SnapshotDB) Name() string { return filepath.Base(d.Path) }

// Databases returns the snapshot's chat databases in path order (none for
// a media-only snapshot).
func (s *Snapshot) Databases() []SnapshotDB {
	if s.DB == "" {
		return nil
	}
	return append([]SnapshotDB{{Path: s.DB, Stamp: s.DBStamp, Check: s.DBCheck, FullCheck: s.DBFullCheck, Unchecked: s.DBUnchecked}}, s.MoreDBs...)
}

// HasDB reports whether the snapshot holds a chat database.
func (s *Snapshot) HasDB() bool { return s.DB != "" }

// DBPaths returns the source paths of the snapshot's databases.
func (s *Snapshot) DBPaths() []string {
	var out []string
	for _, d := range s.Databases() {
		out = append(out, d.Path)
	}
	return out
}

// setDatabases stores dbs (in path order) in the DB fields and MoreDBs.
func (s *Snapshot) setDatabases(dbs []SnapshotDB) {
	s.DB, s.DBStamp, s.DBCheck, s.DBFullCheck, s.DBUnchecked, s.MoreDBs = "", nil, "", nil, nil, nil
	if len(dbs) == 0 {
		return
	}
	s.DB, s.DBStamp, s.DBCheck, s.DBFullCheck, s.DBUnchecked = dbs[0].Path, dbs[0].Stamp, dbs[0].Check, dbs[0].FullCheck, dbs[0].Unchecked
	if len(dbs) > 1 {
		s.MoreDBs = append([]SnapshotDB(nil), dbs[1:]...)
	}
}

// SourceKey identifies what a snapshot backed up: its host, databases and
// media folder. Snapshots with the same key are one series (the parent of
// a backup, forget's groups).
func (s *Snapshot) SourceKey() string {
	return s.Host + "\x00" + strings.Join(s.DBPaths(), "\x00") + "\x00\x00" + s.Media
}

// Stats counts what a backup saw and sent.
type Stats struct {
	Files      int64 `json:"files"`
	Dirs       int64 `json:"dirs"`
	Bytes      int64 `json:"bytes"`       // total size of the files
	ReadBytes  int64 `json:"read_bytes"`  // bytes actually read (changed files)
	NewChunks  int64 `json:"new_chunks"`  // chunks not already stored
	NewBytes   int64 `json:"new_bytes"`   // their plaintext size
	AddedBytes int64 `json:"added_bytes"` // bytes added to the store (packs, after compression and encryption)
	Unchanged  int64 `json:"unchanged"`   // files skipped as unchanged since the parent
	// Resent counts the chunks stored again because the pack that held
	// them was missing or truncated (the backup healed the repository),
	// ResentBytes their plaintext size; both are among NewChunks.
	Resent      int64 `json:"resent_chunks,omitempty"`
	ResentBytes int64 `json:"resent_bytes,omitempty"`
	// Excluded counts the media entries --exclude left out (a directory
	// counts once, whatever it holds).
	Excluded int64 `json:"excluded,omitempty"`
}

func snapshotName(id ID) string { return "snapshots/" + id.String() }
func treeName(id ID) string     { return "trees/" + id.String() }

// Node types in a tree.
const (
	TypeFile    = "f"
	TypeDir     = "d"
	TypeSymlink = "l"
	// TypeDB is a SQLite database stored page by page (format version
	// 2): its contents are described by the page map PageMap names, not
	// by Chunks.
	TypeDB = "s"
)

// Node is one entry of a snapshot's tree.
type Node struct {
	Path   string   `json:"p"`
	Type   string   `json:"t"`
	Mode   uint32   `json:"m"` // Unix permission bits incl. setuid 04000, setgid 02000, sticky 01000
	Size   int64    `json:"s,omitempty"`
	MTime  int64    `json:"mt"` // Unix nanoseconds
	Inode  uint64   `json:"i,omitempty"`
	Dev    uint64   `json:"dv,omitempty"`
	Target string   `json:"l,omitempty"`
	Chunks []string `json:"c,omitempty"` // chunk ids, hex, in file order
	// PageMap is the id (hex) of a TypeDB node's page map root blob.
	PageMap string `json:"pm,omitempty"`
}

// FileMode returns the node's permission bits as an fs.FileMode.
func (n *Node) FileMode() fs.FileMode {
	m := fs.FileMode(n.Mode) & fs.ModePerm
	if n.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// unixMode converts an fs.FileMode to the Unix bits a Node stores.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m & fs.ModePerm)
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// ModTime returns the node's modification time.
func (n *Node) ModTime() time.Time { return time.Unix(0, n.MTime) }

const maxPathLen = 4096

// validPath accepts a clean relative slash path without "." or ".."
// components: a restore can never write outside its target.
func validPath(p string) bool {
	if p == "" || len(p) > maxPathLen || !utf8.ValidString(p) || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return false
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return false
		}
	}
	return path.Clean(p) == p
}

// check validates a decoded node.
func (n *Node) check() error {
	if !validPath(n.Path) {
		return fmt.Errorf("invalid path %q", n.Path)
	}
	switch n.Type {
	case TypeFile:
		if n.Size < 0 || n.Target != "" {
			return fmt.Errorf("%s: invalid file node", n.Path)
		}
		for _, c := range n.Chunks {
			if _, err := ParseID(c); err != nil {
				return fmt.Errorf("%s: %v", n.Path, err)
			}
		}
	case TypeDir:
		if n.Size != 0 || len(n.Chunks) != 0 || n.Target != "" {
			return fmt.Errorf("%s: invalid directory node", n.Path)
		}
	case TypeSymlink:
		if n.Target == "" || len(n.Chunks) != 0 || strings.ContainsRune(n.Target, 0) {
			return fmt.Errorf("%s: invalid symlink node", n.Path)
		}
	default:
		return fmt.Errorf("%s: unknown node type %q", n.Path, n.Type)
	}
	if n.Mode&^0o7777 != 0 {
		return fmt.Errorf("%s: invalid mode %o", n.Path, n.Mode)
	}
	return nil
}

// comparePaths orders paths the way a depth-first walk with sorted
// directory entries visits them: component by component, a directory
// before its contents.
func comparePaths(a, b string) int {
	for {
		ia, ib := strings.IndexByte(a, '/'), strings.IndexByte(b, '/')
		ca, cb := a, b
		if ia >= 0 {
			ca = a[:ia]
		}
		if ib >= 0 {
			cb = b[:ib]
		}
		if c := strings.Compare(ca, cb); c != 0 {
			return c
		}
		switch {
		case ia < 0 && ib < 0:
			return 0
		case ia < 0:
			return -1
		case ib < 0:
			return 1
		}
		a, b = a[ia+1:], b[ib+1:]
	}
}

// TreeReader streams the nodes of a tree object.
type TreeReader struct {
	rc   io.ReadCloser
	sc   *bufio.Scanner
	name string
	last string
	err  error
}

// maxNodeLine bounds one encoded node (a file of 1 TiB at the minimum
// chunk size still fits).
const maxNodeLine = 64 << 20

func newTreeReader(rc io.ReadCloser, name string) *TreeReader {
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 0, 64<<10), maxNodeLine)
	return &TreeReader{rc: rc, sc: sc, name: name}
}

// Next returns the next node, or io.EOF at the end.
func (t *TreeReader) Next() (*Node, error) {
	if t.err != nil {
		return nil, t.err
	}
	if !t.sc.Scan() {
		if err := t.sc.Err(); err != nil {
			// The object reader's errors name the object and say
			// whether it is damaged; only an overlong line is ours.
			if errors.Is(err, bufio.ErrTooLong) {
				err = fmt.Errorf("%s: node longer than %d bytes: %w", t.name, maxNodeLine, ErrCorrupt)
			}
			t.err = err
			return nil, err
		}
		t.err = io.EOF
		return nil, io.EOF
	}
	n, err := parseNode(t.sc.Bytes())
	if err == nil && t.last != "" && comparePaths(t.last, n.Path) >= 0 {
		err = fmt.Errorf("node %q out of order", n.Path)
	}
	if err != nil {
		t.err = fmt.Errorf("%s: %v: %w", t.name, err, ErrCorrupt)
		return nil, t.err
	}
	t.last = n.Path
	return n, nil
}

// Close releases the underlying object reader.
func (t *TreeReader) Close() error { return t.rc.Close() }

func parseNode(line []byte) (*Node, error) {
	var n Node
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after node")
	}
	if err := n.check(); err != nil {
		return nil, err
	}
	return &n, nil
}

func parseSnapshot(data []byte) (*Snapshot, error) {
	var s Snapshot
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after snapshot")
	}
	switch s.Version {
	case 1:
		if _, err := ParseID(s.Tree); err != nil {
			return nil, fmt.Errorf("bad tree reference: %v", err)
		}
		if s.Root != nil || s.DBFullCheck != nil {
			return nil, errors.New("version-1 snapshot with version-2 fields")
		}
	case 2:
		if s.Tree != "" || len(s.Root) == 0 || len(s.Root) > maxRootPieces {
			return nil, errors.New("version-2 snapshot needs a root and no tree object")
		}
		for _, p := range s.Root {
			if _, err := ParseID(p); err != nil {
				return nil, fmt.Errorf("bad root reference: %v", err)
			}
		}
	default:
		return nil, fmt.Errorf("unsupported snapshot version %d", s.Version)
	}
	if len(s.MoreDBs) > 0 && (s.Version < 2 || s.DB == "") {
		return nil, errors.New("more_dbs without a first database")
	}
	seen := map[string]bool{}
	for i, d := range s.Databases() {
		switch d.Check {
		case "", "full", "quick":
		default:
			return nil, fmt.Errorf("unknown db_check %q", d.Check)
		}
		if i > 0 && d.Path == "" {
			return nil, errors.New("a database without a path")
		}
		if seen[d.Name()] {
			return nil, fmt.Errorf("two databases named %q", d.Name())
		}
		seen[d.Name()] = true
	}
	if s.Parent != "" {
		if _, err := ParseID(s.Parent); err != nil {
			return nil, fmt.Errorf("bad parent reference: %v", err)
		}
	}
	return &s, nil
}

// Snapshots loads every snapshot header, oldest first. It fails on a
// damaged one (prune and forget must see them all).
func (r *Repository) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	out, damaged, err := r.loadSnapshots(ctx)
	if err == nil && len(damaged) > 0 {
		err = damaged[0].err
	}
	return out, err
}

// damagedSnapshot is a snapshot object that does not decrypt or parse.
type damagedSnapshot struct {
	id  ID
	err error // wraps ErrCorrupt and names the object
}

// loadSnapshots loads every snapshot header, oldest first, and lists the
// damaged ones apart; err is for failures to read the store.
func (r *Repository) loadSnapshots(ctx context.Context) ([]*Snapshot, []damagedSnapshot, error) {
	objs, err := r.listNames(ctx, "snapshots/")
	if err != nil {
		return nil, nil, err
	}
	out := make([]*Snapshot, 0, len(objs))
	var damaged []damagedSnapshot
	for _, o := range objs {
		id, err := ParseID(strings.TrimPrefix(o.Name, "snapshots/"))
		if err != nil {
			continue // not ours
		}
		s, err := r.LoadSnapshot(ctx, id)
		if errors.Is(err, ErrCorrupt) {
			damaged = append(damaged, damagedSnapshot{id, err})
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if err := r.checkSnapshotsHighWater(out, damaged); err != nil {
		return nil, nil, err
	}
	return out, damaged, nil
}

const maxSnapshotSize = 1 << 20

// maxRootPieces bounds the pieces of a version-2 snapshot's root
// directory.
const maxRootPieces = 1024

// LoadSnapshot reads one snapshot header.
func (r *Repository) LoadSnapshot(ctx context.Context, id ID) (*Snapshot, error) {
	name := snapshotName(id)
	rc, err := r.openObject(ctx, name, false)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxSnapshotSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSnapshotSize {
		return nil, fmt.Errorf("%s: snapshot too large: %w", name, ErrCorrupt)
	}
	s, err := parseSnapshot(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	s.ID = id
	return s, nil
}

// FindSnapshot resolves "latest", "latest~N" (the Nth before the newest:
// latest~1 is the one before it), a full id or a unique prefix of at
// least 4 hex digits.
func (r *Repository) FindSnapshot(ctx context.Context, ref string) (*Snapshot, error) {
	return r.FindSnapshotWhere(ctx, ref, nil)
}

// IsLatestRef reports whether ref is "latest" or "latest~N".
func IsLatestRef(ref string) bool {
	_, ok, err := parseLatest(ref)
	return ok && err == nil
}

// FindSnapshotWhere is FindSnapshot with "latest" and "latest~N" counted
// among the snapshots that the predicate where returns accepts only (where
// sees every snapshot first, in time order; nil: all count); an id names
// its snapshot whatever the predicate says.
func (r *Repository) FindSnapshotWhere(ctx context.Context, ref string, where func(all []*Snapshot) func(*Snapshot) bool) (*Snapshot, error) {
	back, isLatest, err := parseLatest(ref)
	if err != nil {
		return nil, err
	}
	snaps, damaged, err := r.loadSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	// A damaged snapshot fails only the references it could answer: any
	// "latest" (it may be the newest), or an id prefix it matches.
	for _, d := range damaged {
		if isLatest || strings.HasPrefix(d.id.String(), strings.ToLower(ref)) {
			return nil, d.err
		}
	}
	if len(snaps) == 0 {
		return nil, ErrNoSnapshot
	}
	if isLatest && where != nil {
		match := where(snaps)
		var kept []*Snapshot
		for _, s := range snaps {
			if match(s) {
				kept = append(kept, s)
			}
		}
		if len(kept) == 0 {
			return nil, fmt.Errorf("no snapshot %q of these sources: %w", ref, ErrNoSnapshot)
		}
		snaps = kept
	}
	if isLatest {
		if back >= len(snaps) {
			return nil, fmt.Errorf("no snapshot %q: the repository holds %d: %w", ref, len(snaps), ErrNoSnapshot)
		}
		return snaps[len(snaps)-1-back], nil
	}
	ref = strings.ToLower(ref)
	if len(ref) < 4 {
		return nil, fmt.Errorf("snapshot id %q is too short (give at least 4 hex digits)", ref)
	}
	var found *Snapshot
	for _, s := range snaps {
		if strings.HasPrefix(s.ID.String(), ref) {
			if found != nil {
				return nil, fmt.Errorf("snapshot id %q is ambiguous", ref)
			}
			found = s
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no snapshot %q: %w", ref, ErrNoSnapshot)
	}
	return found, nil
}

// parseLatest reads "", "latest" and "latest~N".
func parseLatest(ref string) (back int, ok bool, err error) {
	if ref == "" || ref == "latest" {
		return 0, true, nil
	}
	n, found := strings.CutPrefix(ref, "latest~")
	if !found {
		return 0, false, nil
	}
	back, err = strconv.Atoi(n)
	if err != nil || back < 0 || n != strconv.Itoa(back) {
		return 0, false, fmt.Errorf("snapshot %q: want latest~N with N a number (latest~1 is the one before the newest)", ref)
	}
	return back, true, nil
}

// ErrNoSnapshot is returned when a requested snapshot does not exist.
var ErrNoSnapshot = errors.New("no such snapshot")

// OpenTree streams the nodes of a snapshot's tree, in walk order: the
// version-1 tree object, or the version-2 directory tree.
// Version-2 trees are read through the metadata cache.
func (r *Repository) OpenTree(ctx context.Context, s *Snapshot) (nodeReader, error) {
	return r.openTreeWith(ctx, s, nil, nil, true)
}

// openTree is OpenTree; onBlob, if set, is called for every directory
// piece a version-2 tree is read from, and subtrees in seen (directories
// walked completely by an earlier openTree with the same seen) are not
// descended into; walked ones are added to it.
// (openTree reads every piece from the store: check verifies what the
// store holds, and prune what it keeps.)
func (r *Repository) openTree(ctx context.Context, s *Snapshot, onBlob func(ID), seen map[string]bool) (nodeReader, error) {
	return r.openTreeWith(ctx, s, onBlob, seen, false)
}

// openTreeWith is openTree, through the metadata cache if cached.
func (r *Repository) openTreeWith(ctx context.Context, s *Snapshot, onBlob func(ID), seen map[string]bool, cached bool) (nodeReader, error) {
	if s.Version >= 2 {
		root, err := s.rootIDs()
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %v: %w", s.ID.Short(), err, ErrCorrupt)
		}
		blobs := r.newRepoBlobs()
		if cached {
			blobs = r.newCachedBlobs(root, true)
		}
		tr, err := openDirTree(ctx, blobs, root)
		if err != nil {
			blobs.close()
			return nil, fmt.Errorf("snapshot %s: %w", s.ID.Short(), err)
		}
		tr.onBlob = onBlob
		if seen != nil {
			tr.skipDir = func(p []ID) bool { return seen[piecesKey(p)] }
			tr.dirDone = func(p []ID) { seen[piecesKey(p)] = true }
		}
		return &closingReader{nodeReader: tr, close: blobs.close}, nil
	}
	id, err := ParseID(s.Tree)
	if err != nil {
		return nil, err
	}
	name := treeName(id)
	rc, err := r.openObject(ctx, name, true)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", s.ID.Short(), err)
	}
	return newTreeReader(rc, name), nil
}

// piecesKey identifies a directory by its pieces.
func piecesKey(p []ID) string {
	b := make([]byte, 0, len(p)*len(ID{}))
	for _, id := range p {
		b = append(b, id[:]...)
	}
	return string(b)
}

func (s *Snapshot) rootIDs() ([]ID, error) {
	out := make([]ID, 0, len(s.Root))
	for _, h := range s.Root {
		id, err := ParseID(h)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}
