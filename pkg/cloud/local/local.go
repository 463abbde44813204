// Package local is the cloud.Store backend for a directory on a local or
// mounted file system, the embedded default. Objects are plain files below
// the root; a Put writes to a temporary file beside the target, fsyncs it,
// renames it into place and fsyncs the directory, so an object is either
// absent or complete and durable.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wabackup/wabackup/internal/anonfile"
	"github.com/wabackup/wabackup/pkg/cloud"
)

func init() {
	cloud.Register("file", func(_ context.Context, u *url.URL, create bool) (cloud.Store, error) {
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("file:// URL with host %q: only local paths are supported (file:///path)", u.Host)
		}
		return Open(u.Path, create)
	})
}

// tmpDir holds in-progress Puts; List never reports it.
const tmpDir = ".tmp"

// Store is a directory-backed cloud.Store.
type Store struct {
	root string
}

// Open opens the store rooted at dir. With create, the directory is
// created if missing; otherwise a missing directory is cloud.ErrNoRepository.
func Open(dir string, create bool) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: %w", abs, cloud.ErrNoRepository)
	case err != nil:
		return nil, err
	case !fi.IsDir():
		return nil, fmt.Errorf("%s is not a directory", abs)
	}
	s := &Store{root: abs}
	s.removeStaleTemp()
	return s, nil
}

// staleTemp is the age after which a temporary file left by a crashed
// writer is removed. No live writer keeps one that long.
const staleTemp = 24 * time.Hour

// CleanupStaging removes the files in the staging directory older than
// olderThan (a writer killed while it wrote one; since writers use
// anonymous files where the file system has them, these come from
// systems without, or from older versions) and returns how many and how
// many bytes.
func (s *Store) CleanupStaging(olderThan time.Duration) (n int, bytes int64, err error) {
	ents, err := os.ReadDir(filepath.Join(s.root, tmpDir))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || time.Since(fi.ModTime()) < olderThan {
			continue
		}
		if os.Remove(filepath.Join(s.root, tmpDir, e.Name())) == nil {
			n++
			bytes += fi.Size()
		}
	}
	return n, bytes, nil
}

func (s *Store) removeStaleTemp() {
	ents, err := os.ReadDir(filepath.Join(s.root, tmpDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
			os.Remove(filepath.Join(s.root, tmpDir, e.Name()))
		}
	}
}

// Location implements cloud.Store.
func (s *Store) Location() string { return s.root }

// Close implements cloud.Store.
func (s *Store) Close() error { return nil }

func (s *Store) path(name string) (string, error) {
	if !cloud.ValidName(name) {
		return "", fmt.Errorf("invalid object name %q", name)
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

// Put implements cloud.Store.
func (s *Store) Put(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	dst, err := s.path(name)
	if err != nil {
		return err
	}
	tdir := filepath.Join(s.root, tmpDir)
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(tdir, hex.EncodeToString(rnd[:]))
	// Anonymous while it is written (nothing is left if we are killed),
	// else a named temporary.
	f, err := anonfile.Open(tdir, false)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(tdir, 0o700); err == nil {
			f, err = anonfile.Open(tdir, false)
		}
	}
	anon := err == nil
	if !anon {
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(tdir, 0o700); err == nil {
				f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// io.Copy into an *os.File uses copy_file_range/splice where it can.
	n, err := io.Copy(f, cloud.ContextReader(ctx, io.LimitReader(r, size+1)))
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("put %s: got %d bytes, want %d", name, n, size)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if err = ctx.Err(); err != nil {
		return err
	}
	if anon {
		// A name in the staging directory for just as long as the rename
		// takes (which replaces an existing object atomically).
		if err = anonfile.Link(f, tmp); err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	dir := filepath.Dir(dst)
	if err = os.Rename(tmp, dst); errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			err = os.Rename(tmp, dst)
		}
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// StagingDir implements cloud.FileStore: a directory on the same file
// system as the objects, so PutFile is a rename.
func (s *Store) StagingDir() string {
	d := filepath.Join(s.root, tmpDir)
	os.MkdirAll(d, 0o700)
	return d
}

// PutFile implements cloud.FileStore: f (which must live in StagingDir and
// hold exactly size bytes) is fsynced and renamed to name.
func (s *Store) PutFile(ctx context.Context, name string, f *os.File, size int64) error {
	tmp := f.Name()
	dst, err := s.path(name)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && fi.Size() != size {
			err = fmt.Errorf("put %s: file has %d bytes, want %d", name, fi.Size(), size)
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil && anonfile.IsAnonymous(f) {
		// Made with anonfile.Open in the staging directory: it gets its
		// name now, and had none before (a killed writer left nothing).
		dir := filepath.Dir(dst)
		if err = anonfile.Link(f, dst); errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(dir, 0o700); err == nil {
				err = anonfile.Link(f, dst)
			}
		}
		if err == nil {
			err = syncDir(dir)
		}
		if err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
		return nil
	}
	if err == nil && filepath.Dir(tmp) != filepath.Join(s.root, tmpDir) {
		err = fmt.Errorf("put %s: %s is not in the staging directory", name, tmp)
	}
	if err == nil {
		dir := filepath.Dir(dst)
		if err = os.Rename(tmp, dst); errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(dir, 0o700); err == nil {
				err = os.Rename(tmp, dst)
			}
		}
		if err == nil {
			err = syncDir(dir)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

// open opens an object's file for reading.
func (s *Store) open(ctx context.Context, name string) (*os.File, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, mapErr(name, err)
	}
	return f, nil
}

// Get implements cloud.Store.
func (s *Store) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	f, err := s.open(ctx, name)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		f.Close()
		return nil, fmt.Errorf("get %s: negative offset", name)
	}
	if length < 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	return &sectionCloser{SectionReader: io.NewSectionReader(f, offset, length), f: f}, nil
}

// OpenReaderAt opens an object for ranged reads (cloud.ReaderAtStore).
func (s *Store) OpenReaderAt(ctx context.Context, name string) (cloud.ReaderAtCloser, error) {
	f, err := s.open(ctx, name)
	if err != nil {
		return nil, err
	}
	return f, nil
}

type sectionCloser struct {
	*io.SectionReader
	f *os.File
}

func (s *sectionCloser) Close() error { return s.f.Close() }

// Stat implements cloud.Store.
func (s *Store) Stat(ctx context.Context, name string) (cloud.ObjectInfo, error) {
	p, err := s.path(name)
	if err != nil {
		return cloud.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return cloud.ObjectInfo{}, mapErr(name, err)
	}
	if fi.IsDir() {
		return cloud.ObjectInfo{}, fmt.Errorf("%s: %w", name, cloud.ErrNotFound)
	}
	return cloud.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete implements cloud.Store.
func (s *Store) Delete(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return mapErr(name, err)
	}
	return nil
}

// List implements cloud.Store. It walks only the directory that holds the
// prefix, so listing "data/ab" does not read the rest of the tree.
func (s *Store) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	start := s.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(s.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, rerr := filepath.Rel(s.root, p)
		if rerr != nil {
			return rerr
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if p == start {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") || !(strings.HasPrefix(name+"/", prefix) || strings.HasPrefix(prefix, name+"/")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(path.Base(name), ".") || !strings.HasPrefix(name, prefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, ierr := d.Info()
		if errors.Is(ierr, fs.ErrNotExist) {
			return nil
		}
		if ierr != nil {
			return ierr
		}
		return fn(cloud.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	return err
}

func mapErr(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", name, cloud.ErrNotFound)
	}
	return err
}
