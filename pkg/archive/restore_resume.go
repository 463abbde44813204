package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// RestoreFailure is a file a restore could not write because the data it
// needs is damaged or missing in the repository.
type RestoreFailure struct {
	Path string // the file's path in the snapshot
	DB   bool   // the chat database
	Err  error
}

// IncompleteError reports a restore that wrote every file it could and
// left out the ones whose data is damaged or missing (the database first,
// then by path). None of those is left under its real name.
type IncompleteError struct {
	Failed []RestoreFailure
}

func (e *IncompleteError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d file(s) not restored, their data is damaged or missing in the repository", len(e.Failed))
	for i, f := range e.Failed {
		if i == 3 {
			fmt.Fprintf(&b, ", …")
			break
		}
		fmt.Fprintf(&b, "; %s", f.Path)
		if f.DB {
			b.WriteString(" (the database)")
		}
		if i == 0 {
			fmt.Fprintf(&b, " (%v)", f.Err)
		}
	}
	return b.String()
}

// Unwrap makes it match ErrCorrupt and what each file's error matches.
func (e *IncompleteError) Unwrap() []error {
	errs := []error{ErrCorrupt}
	for _, f := range e.Failed {
		errs = append(errs, f.Err)
	}
	return errs
}

func sortFailures(f []RestoreFailure) {
	sort.Slice(f, func(i, j int) bool {
		if f[i].DB != f[j].DB {
			return f[i].DB
		}
		return f[i].Path < f[j].Path
	})
}

// isDataDamage reports an error that means the repository's data for a
// file is damaged or missing (not a problem of the target or a
// cancellation): a restore goes on with the other files.
func isDataDamage(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return errors.Is(err, ErrCorrupt) || errors.Is(err, cloud.ErrNotFound)
}

// errKept: the target already holds the file, verified identical to the
// snapshot's (a resumed restore keeps it and downloads nothing for it).
var errKept = errors.New("already restored")

// sameAsSnapshot reports whether the regular file at path has the node's
// size, modification time and content: chunk by chunk, each chunk's keyed
// id recomputed from the file's bytes (chunk lengths from the index), or,
// for the database, each page's keyed tag checked against the page map.
// It reads only the local file and, for the database, the page map.
func (r *Repository) sameAsSnapshot(ctx context.Context, path string, n *Node, loadMeta loadBlobFunc) (bool, error) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != n.Size || fi.ModTime().UnixNano() != n.MTime {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, nil
	}
	defer f.Close()
	if n.Type == TypeDB {
		return r.samePages(ctx, f, n, loadMeta)
	}
	h := r.keys.newIDHasher()
	var buf []byte
	for _, c := range n.Chunks {
		id, err := ParseID(c)
		if err != nil {
			return false, nil
		}
		loc, _, ok := r.idx.lookup(id)
		if !ok {
			return false, nil
		}
		if cap(buf) < int(loc.rawLen) {
			buf = make([]byte, loc.rawLen)
		}
		buf = buf[:loc.rawLen]
		if _, err := io.ReadFull(f, buf); err != nil {
			return false, nil
		}
		h.Reset()
		h.Write(buf)
		if !bytes.Equal(h.Sum(nil), id[:]) {
			return false, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
	}
	return true, nil
}

func (r *Repository) samePages(ctx context.Context, f *os.File, n *Node, loadMeta loadBlobFunc) (bool, error) {
	root, err := ParseID(n.PageMap)
	if err != nil {
		return false, nil
	}
	if m, err := loadPageMap(ctx, loadMeta, root); err == nil {
		// Its segments in planned reads (a cold cache), not one by one.
		for i := 0; i < len(m.segments); i += metaPrefetchSegments {
			r.prefetchMeta(ctx, m.segments[i:min(len(m.segments), i+metaPrefetchSegments)], nil)
		}
	}
	tagger := r.keys.newPageTagger()
	var page []byte
	same := true
	errDiffer := errors.New("differs")
	m, err := walkSegments(ctx, loadMeta, root, map[ID]bool{}, nil, func(m *pageMap, s *pageSegment) error {
		ps := int(m.pageSize)
		if cap(page) < ps {
			page = make([]byte, ps)
		}
		page = page[:ps]
		for i := range s.refs {
			pgno := s.first + uint32(i)
			if _, err := f.ReadAt(page, int64(pgno-1)*int64(ps)); err != nil {
				return errDiffer
			}
			if !bytes.Equal(tagger.tag(page), s.tag(i)) {
				return errDiffer
			}
		}
		return nil
	})
	if errors.Is(err, errDiffer) {
		return false, nil
	}
	if err != nil {
		// The page map cannot be read: the restore of the file will say
		// what is damaged.
		return false, nil
	}
	if int64(m.pageCount)*int64(m.pageSize) != n.Size {
		same = false
	}
	return same, nil
}

// RestorePlan says what Restore would do with opt, without writing
// anything: the files (and bytes) it would write, and those the target
// already holds identical to the snapshot, which it would keep.
func (r *Repository) RestorePlan(ctx context.Context, snap *Snapshot, opt RestoreOptions) (write, writeBytes, keep int64, err error) {
	sel, err := newSelector(opt.Include, opt.Exclude)
	if err != nil {
		return 0, 0, 0, err
	}
	br := r.newBlobReader()
	defer br.close()
	err = r.Walk(ctx, snap, func(n *Node) error {
		if !sel.selects(n.Path, n.Type == TypeDir) || (n.Type != TypeFile && n.Type != TypeDB) {
			return nil
		}
		dst := filepath.Join(opt.Target, filepath.FromSlash(n.Path))
		if same, err := r.sameAsSnapshot(ctx, dst, n, br.meta); err != nil {
			return err
		} else if same {
			keep++
			return nil
		}
		write++
		writeBytes += n.Size
		return nil
	})
	if err == nil {
		if inc := sel.unmatched(); inc != "" {
			err = fmt.Errorf("--include %q matches nothing in snapshot %s", inc, snap.ID.Short())
		}
	}
	return write, writeBytes, keep, err
}
