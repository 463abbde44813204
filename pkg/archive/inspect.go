package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// Walk calls fn for every node of the snapshot's tree, in walk order
// (a directory before its contents), streaming: memory does not grow with
// the tree.
func (r *Repository) Walk(ctx context.Context, snap *Snapshot, fn func(n *Node) error) error {
	if err := r.LoadIndex(ctx); err != nil {
		return err
	}
	tr, err := r.OpenTree(ctx, snap)
	if err != nil {
		return err
	}
	defer tr.Close()
	for {
		n, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(n); err != nil {
			return err
		}
	}
}

// under reports whether p is dir or lies below it ("" is the root).
func under(p, dir string) bool {
	return dir == "" || p == dir || strings.HasPrefix(p, dir+"/")
}

// ErrNoSuchPath is returned when a path is not in a snapshot.
var ErrNoSuchPath = errors.New("no such path in the snapshot")

// Dump writes what the snapshot holds at p to w: a file's contents, a
// database reassembled page by page (through a temporary file in the
// repository's temp directory, so memory stays bounded), or a directory
// (or the whole snapshot, p "") as a tar stream. Every chunk is verified
// first, as a restore does.
func (r *Repository) Dump(ctx context.Context, snap *Snapshot, p string, w io.Writer) error {
	p = strings.Trim(p, "/")
	var target *Node
	isDir := p == ""
	err := r.Walk(ctx, snap, func(n *Node) error {
		if n.Path == p {
			target = n
			isDir = n.Type == TypeDir
			return errStopWalk
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopWalk) {
		return err
	}
	if target == nil && !isDir {
		return fmt.Errorf("%q: %w %s", p, ErrNoSuchPath, snap.ID.Short())
	}
	br := r.newBlobReader()
	defer br.close()
	load := func(ctx context.Context, id ID, use func([]byte) error) error {
		data, err := br.chunk(ctx, id)
		if err != nil {
			return err
		}
		return use(data)
	}
	if !isDir {
		return r.dumpNode(ctx, target, w, load)
	}
	tw := tar.NewWriter(w)
	err = r.Walk(ctx, snap, func(n *Node) error {
		if !under(n.Path, p) || n.Path == p && p != "" && n.Type != TypeDir {
			return nil
		}
		name := n.Path
		if p != "" {
			name = strings.TrimPrefix(n.Path, path.Dir(p)+"/")
			if path.Dir(p) == "." {
				name = n.Path
			}
		}
		h := &tar.Header{Name: name, Mode: int64(n.Mode), ModTime: n.ModTime(), Format: tar.FormatPAX}
		switch n.Type {
		case TypeDir:
			h.Typeflag, h.Name = tar.TypeDir, name+"/"
			return tw.WriteHeader(h)
		case TypeSymlink:
			h.Typeflag, h.Linkname = tar.TypeSymlink, n.Target
			return tw.WriteHeader(h)
		default:
			h.Typeflag, h.Size = tar.TypeReg, n.Size
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			return r.dumpNode(ctx, n, tw, load)
		}
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func (r *Repository) dumpNode(ctx context.Context, n *Node, w io.Writer, load loadFunc) error {
	switch n.Type {
	case TypeFile:
		var written int64
		for _, c := range n.Chunks {
			id, err := ParseID(c)
			if err != nil {
				return err
			}
			if err := load(ctx, id, func(data []byte) error {
				_, err := w.Write(data)
				written += int64(len(data))
				return err
			}); err != nil {
				return fmt.Errorf("%s: %w", n.Path, err)
			}
		}
		if written != n.Size {
			return fmt.Errorf("%s: got %d bytes, snapshot says %d: %w", n.Path, written, n.Size, ErrCorrupt)
		}
		return nil
	case TypeDB:
		f, err := os.CreateTemp(r.tmpDir, "dump-*.db")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if err := writeContents(ctx, f, f.Name(), n, load); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err = io.Copy(w, f)
		return err
	default:
		return fmt.Errorf("%s is a %s, not a file", n.Path, map[string]string{TypeDir: "directory", TypeSymlink: "symbolic link"}[n.Type])
	}
}

// RepoStats is what Stats counts over a set of snapshots.
type RepoStats struct {
	Snapshots   int
	Files       int64 // files and databases, counted once per snapshot
	RestoreSize int64 // what restoring every snapshot would write
	Chunks      int64 // distinct chunks (and page groups) they reference
	// RawSize is the distinct data they reference, uncompressed: each
	// distinct file chunk's size, and each distinct database page's (not
	// the whole page groups that hold them: a group stored one night
	// keeps the pages later nights replaced). So RestoreSize / RawSize,
	// the deduplication ratio, is never below 1.
	RawSize    int64
	StoredSize int64 // the chunks' and page groups' size in the packs (compressed, encrypted)
}

// Stats counts, over snaps, the restore size and the distinct data it
// takes (restic's restore-size and raw-data modes): RestoreSize / RawSize
// is the deduplication ratio. The set of chunks seen is kept in the index
// cache's on-disk set, so memory does not grow with the repository.
func (r *Repository) Stats(ctx context.Context, snaps []*Snapshot) (*RepoStats, error) {
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	seen, err := r.idx.newUsedSet()
	if err != nil {
		return nil, err
	}
	defer seen.drop()
	res := &RepoStats{Snapshots: len(snaps)}
	// count adds a chunk (or page group) the first time it is seen; its
	// plaintext counts as raw data for a chunk, not for a group (its
	// pages count one by one).
	count := func(id ID, raw bool) error {
		if isNew, err := seen.addNew(id); err != nil || !isNew {
			return err
		}
		loc, _, ok := r.idx.lookup(id)
		if !ok {
			return nil // lost: check reports it
		}
		res.Chunks++
		if raw {
			res.RawSize += int64(loc.rawLen)
		}
		res.StoredSize += int64(loc.length)
		return nil
	}
	// A database page is slot s of group g: its key in the set of seen
	// ids is a hash of both, which no blob id equals.
	page := func(g ID, slot uint32, size uint32) error {
		h := sha256.New()
		h.Write([]byte("wabackup stats page\x00"))
		h.Write(g[:])
		h.Write(binary.BigEndian.AppendUint32(nil, slot))
		var key ID
		h.Sum(key[:0])
		if isNew, err := seen.addNew(key); err != nil || !isNew {
			return err
		}
		res.RawSize += int64(size)
		return nil
	}
	br := r.newBlobReader()
	defer br.close()
	for _, s := range snaps {
		err := r.Walk(ctx, s, func(n *Node) error {
			switch n.Type {
			case TypeFile:
				res.Files++
				res.RestoreSize += n.Size
				for _, c := range n.Chunks {
					id, err := ParseID(c)
					if err != nil {
						return err
					}
					if err := count(id, true); err != nil {
						return err
					}
				}
			case TypeDB:
				res.Files++
				res.RestoreSize += n.Size
				root, err := ParseID(n.PageMap)
				if err != nil {
					return err
				}
				_, err = walkSegments(ctx, br.chunk, root, map[ID]bool{}, nil, func(m *pageMap, seg *pageSegment) error {
					for _, g := range seg.groups {
						if err := count(g, false); err != nil {
							return err
						}
					}
					for _, ref := range seg.refs {
						if err := page(seg.groups[ref.group], ref.slot, m.pageSize); err != nil {
							return err
						}
					}
					return nil
				})
				return err
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.ID.Short(), err)
		}
	}
	return res, nil
}

// Change is one difference between two snapshots.
type Change struct {
	Path string
	Kind string // "added", "removed", "changed"
	Old  *Node  // nil if added
	New  *Node  // nil if removed
	// PagesChanged counts, for a database changed, the pages whose
	// content differs (or that exist in only one of the two).
	PagesChanged int64
}

// Diff calls fn for every path added, removed or changed from a to b,
// in walk order, reading the two trees side by side (memory does not grow
// with them). A file is changed when its type, size, mode, time or
// content (chunk list) differs; a directory only when its mode differs.
func (r *Repository) Diff(ctx context.Context, a, b *Snapshot, fn func(Change) error) error {
	if err := r.LoadIndex(ctx); err != nil {
		return err
	}
	ta, err := r.OpenTree(ctx, a)
	if err != nil {
		return err
	}
	defer ta.Close()
	tb, err := r.OpenTree(ctx, b)
	if err != nil {
		return err
	}
	defer tb.Close()
	next := func(t nodeReader) (*Node, error) {
		n, err := t.Next()
		if err == io.EOF {
			return nil, nil
		}
		return n, err
	}
	na, err := next(ta)
	if err != nil {
		return err
	}
	nb, err := next(tb)
	if err != nil {
		return err
	}
	br := r.newBlobReader()
	defer br.close()
	for na != nil || nb != nil {
		c := 0
		switch {
		case na == nil:
			c = 1
		case nb == nil:
			c = -1
		default:
			c = comparePaths(na.Path, nb.Path)
		}
		switch {
		case c < 0:
			if err := fn(Change{Path: na.Path, Kind: "removed", Old: na}); err != nil {
				return err
			}
			if na, err = next(ta); err != nil {
				return err
			}
		case c > 0:
			if err := fn(Change{Path: nb.Path, Kind: "added", New: nb}); err != nil {
				return err
			}
			if nb, err = next(tb); err != nil {
				return err
			}
		default:
			if ch, changed, err := r.nodeChange(ctx, br, na, nb); err != nil {
				return err
			} else if changed {
				if err := fn(ch); err != nil {
					return err
				}
			}
			if na, err = next(ta); err != nil {
				return err
			}
			if nb, err = next(tb); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *Repository) nodeChange(ctx context.Context, br *blobReader, a, b *Node) (Change, bool, error) {
	ch := Change{Path: a.Path, Kind: "changed", Old: a, New: b}
	if a.Type != b.Type || a.Mode != b.Mode || a.Target != b.Target {
		return ch, true, nil
	}
	if a.Type == TypeDir {
		return ch, false, nil
	}
	if a.Size != b.Size || a.MTime != b.MTime || strings.Join(a.Chunks, ",") != strings.Join(b.Chunks, ",") {
		if a.Type != TypeDB {
			return ch, true, nil
		}
	}
	if a.Type == TypeDB {
		if a.PageMap == b.PageMap {
			return ch, false, nil
		}
		n, err := r.pagesChanged(ctx, br, a, b)
		if err != nil {
			return ch, false, err
		}
		ch.PagesChanged = n
		return ch, true, nil
	}
	return ch, false, nil
}

// pagesChanged compares two page maps' tags page by page.
func (r *Repository) pagesChanged(ctx context.Context, br *blobReader, a, b *Node) (int64, error) {
	load := func(n *Node) (*pageMap, error) {
		root, err := ParseID(n.PageMap)
		if err != nil {
			return nil, err
		}
		return loadPageMap(ctx, br.chunk, root)
	}
	ma, err := load(a)
	if err != nil {
		return 0, err
	}
	mb, err := load(b)
	if err != nil {
		return 0, err
	}
	return pagesChangedMaps(ctx, br.chunk, ma, mb)
}

// pagesChangedMaps counts the pages whose tags differ between two page
// maps, or that only one of them has.
func pagesChangedMaps(ctx context.Context, load loadBlobFunc, ma, mb *pageMap) (int64, error) {
	if ma.pageSize != mb.pageSize {
		return int64(max(ma.pageCount, mb.pageCount)), nil // every page differs
	}
	if ma.segPages != mb.segPages {
		// The database grew across a segment size (segPagesFor): page by
		// page, one segment of each in memory.
		ca, cb := &tagCursor{ctx: ctx, load: load, m: ma, idx: -1}, &tagCursor{ctx: ctx, load: load, m: mb, idx: -1}
		var n int64
		for p := uint32(1); p <= max(ma.pageCount, mb.pageCount); p++ {
			x, err := ca.tag(p)
			if err != nil {
				return 0, err
			}
			y, err := cb.tag(p)
			if err != nil {
				return 0, err
			}
			if x == nil || y == nil || !bytes.Equal(x, y) {
				n++
			}
		}
		return n, nil
	}
	// Segment by segment: an identical segment id means identical tags, so
	// only the segments that differ are read (two at a time in memory).
	var n int64
	for i := 0; i < max(len(ma.segments), len(mb.segments)); i++ {
		if i < len(ma.segments) && i < len(mb.segments) && ma.segments[i] == mb.segments[i] {
			continue
		}
		var ta []byte
		var fa, fb uint32
		if i < len(ma.segments) {
			sa, err := loadSegment(ctx, load, ma, i)
			if err != nil {
				return 0, err
			}
			ta, fa = bytes.Clone(sa.tags), uint32(len(sa.refs))
		}
		var tb []byte
		if i < len(mb.segments) {
			sb, err := loadSegment(ctx, load, mb, i)
			if err != nil {
				return 0, err
			}
			tb, fb = sb.tags, uint32(len(sb.refs))
		}
		for k := uint32(0); k < max(fa, fb); k++ {
			if k >= fa || k >= fb || !bytes.Equal(ta[k*pageTagSize:(k+1)*pageTagSize], tb[k*pageTagSize:(k+1)*pageTagSize]) {
				n++
			}
		}
	}
	return n, nil
}

// tagCursor reads a page map's tags in increasing page order, one segment
// at a time.
type tagCursor struct {
	ctx  context.Context
	load loadBlobFunc
	m    *pageMap
	idx  int
	tags []byte
}

// tag returns page p's tag, nil past the end of the database.
func (c *tagCursor) tag(p uint32) ([]byte, error) {
	if p > c.m.pageCount {
		return nil, nil
	}
	i := int((p - 1) / c.m.segPages)
	if i != c.idx {
		s, err := loadSegment(c.ctx, c.load, c.m, i)
		if err != nil {
			return nil, err
		}
		c.tags, c.idx = append(c.tags[:0], s.tags...), i
	}
	k := (p - 1) % c.m.segPages
	return c.tags[k*pageTagSize : (k+1)*pageTagSize], nil
}
