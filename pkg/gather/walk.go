package gather

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// EntryType says what kind of file system object an Entry is.
type EntryType uint8

// The kinds of entries Walk reports. The zero value is not a valid type.
const (
	File EntryType = iota + 1
	Dir
	Symlink
)

func (t EntryType) String() string {
	switch t {
	case File:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	}
	return fmt.Sprintf("EntryType(%d)", uint8(t))
}

// Entry describes one object under the walked root, as Lstat saw it.
type Entry struct {
	// Path is slash-separated and relative to the root, never empty (the
	// root itself is not reported). Names are kept byte for byte.
	Path string
	Type EntryType
	// Mode holds the permission bits plus setuid, setgid and sticky; the
	// type is in Type.
	Mode fs.FileMode
	// Size is the length of a File in bytes; 0 for directories and
	// symlinks.
	Size    int64
	ModTime time.Time // full nanosecond precision
	// Inode and Dev identify the object for the "unchanged file" test
	// (zero on platforms without them).
	Inode, Dev uint64
	// Target is a Symlink's target exactly as stored in the link; empty
	// for other types.
	Target string
}

// Reasons Walk passes to its warn function (wrapped, with detail) when it
// skips an entry. Vanished or unreadable entries come with the underlying
// *fs.PathError instead.
var (
	ErrSpecialFile     = errors.New("special file skipped")
	ErrSymlinkEscapes  = errors.New("symlink pointing outside the folder skipped")
	errWalkRootNotADir = errors.New("not a directory")
)

// modeBits are the parts of fs.FileMode an Entry keeps.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// readDirBatch is how many directory entries are read from the OS at once.
const readDirBatch = 512

// Walk visits every entry under root in a deterministic order and calls fn
// for each: depth first, a directory before its contents, the names within
// a directory in byte order. That is the order ComparePaths defines, so the
// sequence of Entry.Path is strictly increasing under ComparePaths.
//
// Entries are examined with Lstat; symlinks are never followed. A symlink
// whose target, resolved lexically against the link's directory (or taken
// as is if absolute), stays inside root is reported as a Symlink entry; one
// that leaves root is skipped with a warning wrapping ErrSymlinkEscapes.
// Special files (devices, fifos, sockets) are skipped with a warning
// wrapping ErrSpecialFile.
//
// An entry that vanishes or cannot be read during the walk is reported to
// warn (with its path, and the error) and skipped; for a directory that
// cannot be listed the directory itself is still reported but its contents
// are not. warn may be nil. Only the root failing (missing, not a directory,
// unreadable), ctx ending, or fn returning an error stops the walk; Walk
// then returns that error unchanged.
//
// fn returning fs.SkipDir for a directory skips its contents.
//
// Walk holds one directory's sorted names per level of depth, never the
// whole tree.
func Walk(ctx context.Context, root string, fn func(Entry) error, warn func(path string, err error)) error {
	if warn == nil {
		warn = func(string, error) {}
	}
	fi, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("media folder: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("media folder %s: %w", root, errWalkRootNotADir)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("media folder: %w", err)
	}
	w := &walker{ctx: ctx, root: root, absRoot: abs, fn: fn, warn: warn}
	return w.dir("")
}

type walker struct {
	ctx     context.Context
	root    string // as given, for opening
	absRoot string // cleaned absolute root, for the symlink test
	fn      func(Entry) error
	warn    func(string, error)
}

func (w *walker) osPath(rel string) string {
	if rel == "" {
		return w.root
	}
	return filepath.Join(w.root, filepath.FromSlash(rel))
}

// dir reports the contents of the directory at rel ("" for the root).
func (w *walker) dir(rel string) error {
	names, err := readNames(w.osPath(rel))
	if err != nil {
		if rel == "" {
			return fmt.Errorf("media folder: %w", err)
		}
		w.warn(rel, err)
		// Whatever was listed before the error is still worth visiting.
	}
	slices.Sort(names)
	for _, name := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		e, ok := w.entry(rel, p)
		if !ok {
			continue
		}
		if err := w.fn(e); errors.Is(err, fs.SkipDir) {
			continue // not descended into (or, for a file, skipped)
		} else if err != nil {
			return err
		}
		if e.Type == Dir {
			if err := w.dir(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry builds the Entry for p (in directory rel), or warns and returns
// false if p is to be skipped.
func (w *walker) entry(rel, p string) (Entry, bool) {
	osPath := w.osPath(p)
	fi, err := os.Lstat(osPath)
	if err != nil {
		w.warn(p, err)
		return Entry{}, false
	}
	e := Entry{Path: p, Mode: fi.Mode() & modeBits, ModTime: fi.ModTime()}
	e.Inode, e.Dev = fileID(fi)
	switch mt := fi.Mode().Type(); {
	case mt == 0:
		e.Type, e.Size = File, fi.Size()
	case mt == fs.ModeDir:
		e.Type = Dir
	case mt == fs.ModeSymlink:
		target, err := os.Readlink(osPath)
		if err != nil {
			w.warn(p, err)
			return Entry{}, false
		}
		if !w.inside(rel, target) {
			w.warn(p, fmt.Errorf("%w: %s -> %s", ErrSymlinkEscapes, p, target))
			return Entry{}, false
		}
		e.Type, e.Target = Symlink, target
	default:
		w.warn(p, fmt.Errorf("%w: %s is a %s", ErrSpecialFile, p, specialKind(mt)))
		return Entry{}, false
	}
	return e, true
}

// inside reports whether a symlink in directory rel with the given target
// points into the tree, resolving the target lexically.
func (w *walker) inside(rel, target string) bool {
	var t string
	if filepath.IsAbs(target) {
		t = filepath.Clean(target)
	} else {
		t = filepath.Join(w.absRoot, filepath.FromSlash(rel), target)
	}
	if t == w.absRoot {
		return true
	}
	prefix := w.absRoot
	if !strings.HasSuffix(prefix, string(filepath.Separator)) {
		prefix += string(filepath.Separator)
	}
	return strings.HasPrefix(t, prefix)
}

func specialKind(mt fs.FileMode) string {
	switch {
	case mt&fs.ModeNamedPipe != 0:
		return "named pipe"
	case mt&fs.ModeSocket != 0:
		return "socket"
	case mt&fs.ModeCharDevice != 0:
		return "character device"
	case mt&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// readNames lists the names in a directory, reading it in batches. On error
// it returns the names read so far along with the error.
func readNames(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	for {
		des, err := f.ReadDir(readDirBatch)
		for _, de := range des {
			names = append(names, de.Name())
		}
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return names, err
		}
	}
}

// ComparePaths orders slash-separated relative paths the way Walk visits
// them: component by component, each compared byte-wise, a path before the
// paths beneath it. It returns -1, 0 or +1.
func ComparePaths(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		// The path whose component ends here sorts first.
		if ca == '/' {
			return -1
		}
		if cb == '/' {
			return 1
		}
		return cmp.Compare(ca, cb)
	}
	return cmp.Compare(len(a), len(b))
}
