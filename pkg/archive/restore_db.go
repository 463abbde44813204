package archive

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/wabackup/wabackup/pkg/gather"
)

// loadFunc hands the plaintext of blob id to use (valid during the call).
type loadFunc func(ctx context.Context, id ID, use func([]byte) error) error

// writeContents writes a file node's chunks, or a database node's pages,
// into f (dst names it in messages) and checks the size.
func writeContents(ctx context.Context, f *os.File, dst string, n *Node, load loadFunc) error {
	if n.Type == TypeDB {
		return writePages(ctx, f, dst, n, load)
	}
	var written int64
	for _, c := range n.Chunks {
		id, err := ParseID(c)
		if err != nil {
			return err
		}
		err = load(ctx, id, func(data []byte) error {
			if _, err := f.Write(data); err != nil {
				return fmt.Errorf("writing %s: %w", dst, err)
			}
			written += int64(len(data))
			return nil
		})
		if err != nil {
			return err
		}
	}
	if written != n.Size {
		return fmt.Errorf("restoring %s: got %d bytes, snapshot says %d: %w", n.Path, written, n.Size, ErrCorrupt)
	}
	return nil
}

// writePages rebuilds a database file from its page map: window by
// window, each group a window needs is read once and its pages are
// written where they belong. Every page of the database is covered once
// (the page map's segments say so), so the file is the page image of the
// state the backup pinned, byte for byte.
func writePages(ctx context.Context, f *os.File, dst string, n *Node, load loadFunc) error {
	root, err := ParseID(n.PageMap)
	if err != nil {
		return fmt.Errorf("restoring %s: %v: %w", n.Path, err, ErrCorrupt)
	}
	var meta []byte
	loadMeta := func(ctx context.Context, id ID) ([]byte, error) {
		err := load(ctx, id, func(data []byte) error {
			meta = append(meta[:0], data...)
			return nil
		})
		return meta, err
	}
	m, err := eachPageGroup(ctx, loadMeta, root, func(m *pageMap, g ID, pages []pageLoc) error {
		ps := int(m.pageSize)
		return load(ctx, g, func(data []byte) error {
			if len(data)%ps != 0 {
				return fmt.Errorf("restoring %s: page group %s is %d bytes, not whole pages: %w", n.Path, g.Short(), len(data), ErrCorrupt)
			}
			for _, p := range pages {
				end := (int(p.slot) + 1) * ps
				if end > len(data) {
					return fmt.Errorf("restoring %s: page %d: group %s has no slot %d: %w", n.Path, p.pgno, g.Short(), p.slot, ErrCorrupt)
				}
				if _, err := f.WriteAt(data[end-ps:end], int64(p.pgno-1)*int64(ps)); err != nil {
					return fmt.Errorf("writing %s: %w", dst, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if int64(m.pageCount)*int64(m.pageSize) != n.Size {
		return fmt.Errorf("restoring %s: page map holds %d pages of %d bytes, snapshot says %d bytes: %w", n.Path, m.pageCount, m.pageSize, n.Size, ErrCorrupt)
	}
	return nil
}

// CheckStoredDB rebuilds the chat database called name ("" for the
// first) that a snapshot holds into a temporary file (in dir) and runs
// PRAGMA integrity_check on it, without the source. A snapshot without
// that database is an error wrapping ErrNoSnapshot; damage to the stored
// pages wraps ErrCorrupt, a database that fails the check wraps
// gather.ErrCorruptDB.
func (r *Repository) CheckStoredDB(ctx context.Context, snap *Snapshot, name, dir string) error {
	db, err := snap.Database(name)
	if err != nil {
		return err
	}
	path, done, err := r.StoredDBNamed(ctx, snap, db.Name(), dir)
	if err != nil {
		return err
	}
	defer done()
	return gather.CheckDB(ctx, path, fmt.Sprintf("%s (snapshot %s)", db.Path, snap.ID.Short()), false)
}

// Database returns the snapshot's database called name: its name in the
// tree (msgstore.db) or its source path; "" is the first. A snapshot
// without any database is an error wrapping ErrNoSnapshot.
func (s *Snapshot) Database(name string) (SnapshotDB, error) {
	dbs := s.Databases()
	if len(dbs) == 0 {
		return SnapshotDB{}, fmt.Errorf("snapshot %s holds no database: %w", s.ID.Short(), ErrNoSnapshot)
	}
	if name == "" {
		return dbs[0], nil
	}
	var names []string
	for _, d := range dbs {
		if d.Name() == name || d.Path == name {
			return d, nil
		}
		names = append(names, d.Name())
	}
	return SnapshotDB{}, fmt.Errorf("snapshot %s holds no database %q (it holds %s)", s.ID.Short(), name, strings.Join(names, ", "))
}

// StoredDBNamed rebuilds the chat database called name (as for Database)
// that a snapshot holds into a temporary file in dir (every page
// verified) and returns its path and a function that removes it. Errors
// as for CheckStoredDB.
func (r *Repository) StoredDBNamed(ctx context.Context, snap *Snapshot, name, dir string) (string, func(), error) {
	none := func() {}
	if err := r.LoadIndex(ctx); err != nil {
		return "", none, err
	}
	db, err := snap.Database(name)
	if err != nil {
		return "", none, err
	}
	n, err := r.findTopNode(ctx, snap, db.Name())
	if err != nil {
		return "", none, err
	}
	if n == nil || n.Type != TypeDB && n.Type != TypeFile {
		return "", none, fmt.Errorf("snapshot %s: its database %s cannot be found in the tree: %w", snap.ID.Short(), db.Name(), ErrCorrupt)
	}
	return r.storedNodeDB(ctx, "snapshot "+snap.ID.Short(), n, dir)
}

// storedNodeDB rebuilds the database node n (of the snapshot label names
// in messages) into a temporary file in dir, every page verified, and
// returns its path and a function that removes it.
func (r *Repository) storedNodeDB(ctx context.Context, label string, n *Node, dir string) (string, func(), error) {
	none := func() {}
	tmp, err := os.MkdirTemp(dir, "wabackup-db-")
	if err != nil {
		return "", none, err
	}
	done := func() { os.RemoveAll(tmp) }
	path := filepath.Join(tmp, filepath.Base(filepath.FromSlash(n.Path)))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		done()
		return "", none, err
	}
	br := r.newBlobReader()
	defer br.close()
	load := func(ctx context.Context, id ID, use func([]byte) error) error {
		data, err := br.chunk(ctx, id)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", label, n.Path, err)
		}
		return use(data)
	}
	err = writeContents(ctx, f, path, n, load)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		done()
		return "", none, err
	}
	return path, done, nil
}
