package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// RestoreOptions say where and what to restore.
type RestoreOptions struct {
	Target    string
	Include   []string // restore only these paths or globs (and what is below them)
	Exclude   []string // leave these out: paths or globs, or name globs without a /
	Overwrite bool     // replace existing files
	Workers   int      // files restored at once (default GOMAXPROCS)
	NoSync    bool     // skip fsync of restored files
	Progress  func(RestoreProgress)

	// written, if set, is told the bytes of every chunk a file's contents
	// got (Restore sets it per worker, for the progress).
	written func(n int)
}

// RestoreProgress is a running count. Kept counts the files the target
// already held, identical to the snapshot's (a resumed restore), which
// are not downloaded again; Files and Bytes include them.
type RestoreProgress struct {
	Files, Bytes int64
	Kept         int64
	// StoreBytes counts the bytes of blobs read from the store (set in
	// the total Restore returns).
	StoreBytes int64
	Current    string
}

// ErrExists is returned when a restore would overwrite an existing file.
var ErrExists = errors.New("file exists")

// Restore writes a snapshot's files below opt.Target. Every chunk is
// authenticated and checked against its id before it is written; each
// file is written under a temporary name and renamed into place, so an
// interrupted restore never leaves a partial file under a real name.
//
// A file the target already holds with the snapshot's size, time and
// content (verified against the chunk ids, or the database's page tags)
// is kept, so running an interrupted restore again finishes it without
// downloading anything twice. A file whose data is damaged or missing in
// the repository is left out and the others are restored; the error is
// then an *IncompleteError listing what was left out.
func (r *Repository) Restore(ctx context.Context, snap *Snapshot, opt RestoreOptions) (total RestoreProgress, err error) {
	if err := r.LoadIndex(ctx); err != nil {
		return total, err
	}
	read0 := r.blobBytesRead.Load()
	defer func() { total.StoreBytes = r.blobBytesRead.Load() - read0 }()
	if opt.Workers <= 0 {
		// More files in flight than cores, so fsync and I/O waits overlap
		// with decryption; chunk buffers come from a pool sized to the
		// cores, so memory does not grow with the worker count.
		opt.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	// Chunk reads in flight: as many as the cores can open, and at least
	// the planned reads' connections on a remote store that does not
	// limit them (its requests wait on the network, not on a core).
	nreaders := runtime.GOMAXPROCS(0) + 1
	_, limited := r.store.(cloud.ConnectionLimited)
	_, local := r.store.(cloud.ReaderAtStore)
	if !limited && !local {
		nreaders = max(nreaders, r.rangeConns())
	}
	readers := make(chan *blobReader, nreaders)
	for i := 0; i < cap(readers); i++ {
		readers <- nil
	}
	defer func() {
		for i := 0; i < cap(readers); i++ {
			if br := <-readers; br != nil {
				br.close()
			}
		}
	}()
	target, err := filepath.Abs(opt.Target)
	if err != nil {
		return total, err
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return total, err
	}
	removeRestoreTemps(target)
	anon := anonFilesWork(target)
	var com *committer
	if !opt.NoSync {
		if com = newCommitter(target); com != nil {
			defer com.stop()
		}
	}
	sel, err := newSelector(opt.Include, opt.Exclude)
	if err != nil {
		return total, err
	}
	tr, err := r.OpenTree(ctx, snap)
	if err != nil {
		return total, err
	}
	defer tr.Close()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	streams := newPackStreams(ctx, r.store, cap(readers))
	if streams != nil {
		defer streams.close()
	}
	files := make(chan *Node, opt.Workers)
	var wg sync.WaitGroup
	var nfiles, nbytes, nkept, inflight atomic.Int64
	var failMu sync.Mutex
	var failed []RestoreFailure
	for i := 0; i < opt.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The bytes of the file this worker is writing count in the
			// progress as its chunks land (a large file moves the line).
			wopt := opt
			var partial int64
			var cur string
			if opt.Progress != nil {
				wopt.written = func(k int) {
					partial += int64(k)
					opt.Progress(RestoreProgress{Files: nfiles.Load(), Bytes: nbytes.Load() + inflight.Add(int64(k)), Kept: nkept.Load(), Current: cur})
				}
			}
			for n := range files {
				if ctx.Err() != nil {
					continue
				}
				cur, partial = n.Path, 0
				err := r.restoreFile(ctx, readers, streams, com, anon, target, n, wopt)
				inflight.Add(-partial)
				switch {
				case errors.Is(err, errKept):
					nkept.Add(1)
				case isDataDamage(err) && ctx.Err() == nil:
					failMu.Lock()
					failed = append(failed, RestoreFailure{Path: n.Path, DB: n.Type == TypeDB, Err: err})
					failMu.Unlock()
					continue
				case err != nil:
					cancel(err)
					continue
				}
				nfiles.Add(1)
				nbytes.Add(n.Size)
				if opt.Progress != nil {
					opt.Progress(RestoreProgress{Files: nfiles.Load(), Bytes: nbytes.Load(), Kept: nkept.Load(), Current: n.Path})
				}
			}
		}()
	}
	type dirMeta struct {
		path  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	var symlinks []string
	walkErr := func() error {
		for {
			n, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if !sel.selects(n.Path, n.Type == TypeDir) {
				continue
			}
			for _, l := range symlinks {
				if strings.HasPrefix(n.Path, l+"/") {
					return fmt.Errorf("snapshot %s: node %q lies below symlink %q: %w", snap.ID.Short(), n.Path, l, ErrCorrupt)
				}
			}
			dst := filepath.Join(target, filepath.FromSlash(n.Path))
			switch n.Type {
			case TypeDir:
				if fi, err := os.Lstat(dst); err == nil && !fi.IsDir() {
					return fmt.Errorf("%s exists and is not a directory", dst)
				}
				if err := os.MkdirAll(dst, 0o700); err != nil {
					return err
				}
				removeRestoreTemps(dst)
				dirs = append(dirs, dirMeta{dst, n.FileMode(), n.ModTime()})
			case TypeSymlink:
				if fi, err := os.Lstat(dst); err == nil {
					if t, err := os.Readlink(dst); err == nil && fi.Mode()&fs.ModeSymlink != 0 && t == n.Target {
						symlinks = append(symlinks, n.Path)
						continue // restored before
					}
					if !opt.Overwrite {
						return fmt.Errorf("%s: %w (use --overwrite to replace it)", dst, ErrExists)
					}
					if err := os.Remove(dst); err != nil {
						return err
					}
				}
				if err := os.Symlink(n.Target, dst); err != nil {
					return err
				}
				symlinks = append(symlinks, n.Path)
				ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
				_ = unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
			case TypeFile, TypeDB:
				select {
				case files <- n:
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
		}
	}()
	close(files)
	wg.Wait()
	if c := context.Cause(ctx); c != nil {
		// The files finished so far are whole: give them their names
		// (after the sync that covers them), so that running the restore
		// again keeps them instead of downloading them again.
		if com != nil && com.flush() == nil {
			_ = com.sync()
		}
		return total, c
	}
	if walkErr != nil {
		return total, walkErr
	}
	if inc := sel.unmatched(); inc != "" {
		return total, fmt.Errorf("--include %q matches nothing in snapshot %s", inc, snap.ID.Short())
	}
	if com != nil {
		// Every file has its name before directories get their modes
		// and times.
		if err := com.flush(); err != nil {
			return total, err
		}
	}
	// Directories last, deepest first, so adding files does not change
	// their times.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := os.Chmod(d.path, d.mode); err != nil {
			return total, err
		}
		if err := os.Chtimes(d.path, d.mtime, d.mtime); err != nil {
			return total, err
		}
	}
	if com != nil {
		if err := com.sync(); err != nil {
			return total, err
		}
	}
	total.Files, total.Bytes, total.Kept = nfiles.Load(), nbytes.Load(), nkept.Load()
	if len(failed) > 0 {
		sortFailures(failed)
		return total, &IncompleteError{Failed: failed}
	}
	return total, nil
}

// RestoreSize returns the files a restore of snap with opt's Include and
// Exclude covers (kept ones too) and their size: the totals the Files and
// Bytes of RestoreProgress count towards. With nothing left out they come
// from the snapshot's stats; else from a walk of its tree.
func (r *Repository) RestoreSize(ctx context.Context, snap *Snapshot, opt RestoreOptions) (files, size int64, err error) {
	if len(opt.Include) == 0 && len(opt.Exclude) == 0 && snap.Stats.Files > 0 {
		return snap.Stats.Files, snap.Stats.Bytes, nil
	}
	sel, err := newSelector(opt.Include, opt.Exclude)
	if err != nil {
		return 0, 0, err
	}
	err = r.Walk(ctx, snap, func(n *Node) error {
		if (n.Type == TypeFile || n.Type == TypeDB) && sel.selects(n.Path, false) {
			files++
			size += n.Size
		}
		return nil
	})
	return files, size, err
}

// selector decides which nodes a restore writes: --include patterns
// (a path, or a glob over whole paths: *, ?, [...]; a match includes
// everything below it) and --exclude patterns (the same, or, without a /,
// a glob over names at any depth). Directories above an include are
// written too, so its contents have a place.
type selector struct {
	includes, excludes []string
	hits               []int
}

func newSelector(includes, excludes []string) (*selector, error) {
	s := &selector{}
	for _, inc := range includes {
		inc = strings.Trim(filepath.ToSlash(inc), "/")
		if _, err := path.Match(inc, ""); err != nil || inc == "" || !validPath(strings.NewReplacer("*", "x", "?", "x", "[", "x", "]", "x").Replace(inc)) {
			return nil, fmt.Errorf("invalid --include %q", inc)
		}
		s.includes = append(s.includes, inc)
	}
	for _, ex := range excludes {
		ex = strings.Trim(filepath.ToSlash(ex), "/")
		if _, err := path.Match(ex, ""); err != nil || ex == "" {
			return nil, fmt.Errorf("invalid --exclude %q", ex)
		}
		s.excludes = append(s.excludes, ex)
	}
	s.hits = make([]int, len(s.includes))
	return s, nil
}

// matchesOrBelow reports whether pattern matches p or a directory above it.
func matchesOrBelow(pattern, p string) bool {
	for q := p; q != "." && q != ""; q = path.Dir(q) {
		if ok, _ := path.Match(pattern, q); ok {
			return true
		}
	}
	return false
}

// aboveMatch reports whether directory dir could hold a match of pattern:
// its components match the pattern's first ones, and the pattern has more.
func aboveMatch(pattern, dir string) bool {
	pc, dc := strings.Split(pattern, "/"), strings.Split(dir, "/")
	if len(dc) >= len(pc) {
		return false
	}
	for i, c := range dc {
		if ok, _ := path.Match(pc[i], c); !ok {
			return false
		}
	}
	return true
}

func (s *selector) excluded(p string) bool {
	for _, ex := range s.excludes {
		if strings.Contains(ex, "/") {
			if matchesOrBelow(ex, p) {
				return true
			}
			continue
		}
		for q := p; q != "." && q != ""; q = path.Dir(q) {
			if ok, _ := path.Match(ex, path.Base(q)); ok {
				return true
			}
		}
	}
	return false
}

func (s *selector) selects(p string, dir bool) bool {
	if s.excluded(p) {
		return false
	}
	if len(s.includes) == 0 {
		return true
	}
	sel := false
	for i, inc := range s.includes {
		if matchesOrBelow(inc, p) {
			s.hits[i]++
			sel = true
		} else if dir && aboveMatch(inc, p) {
			sel = true
		}
	}
	return sel
}

// unmatched returns the first include that selected nothing.
func (s *selector) unmatched() string {
	for i, n := range s.hits {
		if n == 0 {
			return s.includes[i]
		}
	}
	return ""
}

// restoreFile writes one file without a name (an anonymous file, or
// under a temporary name where the file system has none) and gives it
// its name: at once with NoSync, after an fsync of the file when com is
// nil, else through the committer once a file-system sync has covered it.
func (r *Repository) restoreFile(ctx context.Context, readers chan *blobReader, streams *packStreams, com *committer, anon bool, target string, n *Node, opt RestoreOptions) (err error) {
	dst := filepath.Join(target, filepath.FromSlash(n.Path))
	load := func(ctx context.Context, id ID, use func([]byte) error) error {
		br := <-readers
		if br == nil {
			br = r.newBlobReader()
			br.streams = streams
		}
		data, err := br.chunk(ctx, id)
		if err == nil {
			err = use(data)
		} else {
			err = fmt.Errorf("restoring %s: %w", n.Path, err)
		}
		readers <- br
		return err
	}
	// A page map's blobs come through the metadata cache.
	loadMeta := func(ctx context.Context, id ID) ([]byte, error) {
		br := <-readers
		if br == nil {
			br = r.newBlobReader()
			br.streams = streams
		}
		data, err := br.meta(ctx, id)
		if err == nil {
			data = append([]byte(nil), data...)
		} else {
			err = fmt.Errorf("restoring %s: %w", n.Path, err)
		}
		readers <- br
		return data, err
	}
	if fi, err := os.Lstat(dst); err == nil {
		if fi.IsDir() {
			return fmt.Errorf("%s exists and is a directory", dst)
		}
		same, err := r.sameAsSnapshot(ctx, dst, n, loadMeta)
		if err != nil {
			return err
		}
		if same {
			if fi.Mode().Perm() != n.FileMode().Perm() {
				if err := os.Chmod(dst, n.FileMode()); err != nil {
					return err
				}
			}
			return errKept
		}
		if !opt.Overwrite {
			return fmt.Errorf("%s: %w (use --overwrite to replace it)", dst, ErrExists)
		}
	}
	// Its directory exists: the walk made it before it handed out the
	// files below it.
	pf, err := createPending(filepath.Dir(dst), dst, anon, opt.Overwrite)
	if err != nil {
		return err
	}
	pf.size = n.Size
	defer func() {
		if err != nil {
			pf.discard()
		}
	}()
	write := load
	if opt.written != nil {
		write = func(ctx context.Context, id ID, use func([]byte) error) error {
			return load(ctx, id, func(data []byte) error {
				err := use(data)
				if err == nil {
					opt.written(len(data))
				}
				return err
			})
		}
	}
	// A database's page groups are read in planned ranges (readGroups);
	// write reads the chunks of files, and what those ranges missed.
	if err := writeContentsFrom(ctx, pf.f, dst, n, contentSource{load: write, meta: loadMeta, r: r, written: opt.written}); err != nil {
		return err
	}
	if err := pf.f.Chmod(n.FileMode()); err != nil {
		return err
	}
	if !opt.NoSync && com == nil {
		if err := pf.f.Sync(); err != nil {
			return fmt.Errorf("writing %s: %w", dst, err)
		}
	}
	if err := pf.finish(n.ModTime()); err != nil {
		return err
	}
	if com != nil {
		return com.add(pf)
	}
	return pf.place()
}

// removeRestoreTemps deletes the temporary files an interrupted restore
// left in dir (only restore makes names of this form).
func removeRestoreTemps(dir string) {
	left, _ := filepath.Glob(filepath.Join(dir, ".wabackup-*.tmp"))
	for _, p := range left {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() {
			os.Remove(p)
		}
	}
}
