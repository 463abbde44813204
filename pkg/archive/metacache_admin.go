package archive

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// CacheInfo describes the local caches of one repository in a cache
// directory (wabackup cache): <dir>/<repository id>/ holds the index
// cache (index.sqlite, FORMAT.md §6) and the metadata cache (meta/, §12).
type CacheInfo struct {
	ID   string // the repository's id (its config's)
	Path string // <dir>/<id>
	// LastUsed is when a run last used it: the directory's time (a run
	// that reads or writes metadata sets it), or the index cache's, if
	// later.
	LastUsed time.Time
	// Bytes is the disk space the whole directory takes; IndexBytes the
	// index cache's share, MetaBytes (MetaEntries files) the metadata
	// cache's.
	Bytes, IndexBytes, MetaBytes int64
	MetaEntries                  int
}

// isRepoID reports whether name is a repository id (32 hex digits).
func isRepoID(name string) bool {
	b, err := hex.DecodeString(name)
	return err == nil && len(b) == 16 && strings.ToLower(name) == name
}

// ListCaches lists the repositories' caches in dir, least recently used
// first. It only reads. (The rollback marks beside them, dir/highwater-*,
// are not caches: they are never listed or removed.)
func ListCaches(dir string) ([]CacheInfo, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []CacheInfo
	for _, de := range ents {
		if !de.IsDir() || !isRepoID(de.Name()) {
			continue
		}
		c := CacheInfo{ID: de.Name(), Path: filepath.Join(dir, de.Name())}
		if fi, err := de.Info(); err == nil {
			c.LastUsed = fi.ModTime()
		}
		meta := filepath.Join(c.Path, "meta")
		err := filepath.WalkDir(c.Path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // vanished meanwhile, or unreadable: not counted
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			n := diskSize(fi)
			c.Bytes += n
			switch {
			case d.IsDir():
			case strings.HasPrefix(d.Name(), "index.sqlite"):
				c.IndexBytes += n
				c.LastUsed = latest(c.LastUsed, fi.ModTime())
			case filepath.Dir(filepath.Dir(p)) == meta && len(d.Name()) == 64:
				c.MetaBytes += n
				c.MetaEntries++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.Before(out[j].LastUsed) })
	return out, nil
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// RemoveCache deletes the caches of repository id in dir (a run using
// them meanwhile only reads more from its store).
func RemoveCache(dir, id string) error {
	if !isRepoID(id) {
		return fmt.Errorf("%q is not a repository id", id)
	}
	return os.RemoveAll(filepath.Join(dir, id))
}

// TrimMetaCache evicts the least recently used entries of repository
// id's metadata cache in dir until it takes at most limit (0:
// DefaultMetaCacheSize), as the end of a run does, and returns the
// entries removed and the space the cache takes then.
func TrimMetaCache(dir, id string, limit int64) (removed int, bytes int64, err error) {
	if !isRepoID(id) {
		return 0, 0, fmt.Errorf("%q is not a repository id", id)
	}
	meta := filepath.Join(dir, id, "meta")
	if _, err := os.Stat(meta); errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	c := &metaCache{dir: meta, limit: limit}
	if c.limit <= 0 {
		c.limit = DefaultMetaCacheSize
	}
	bytes, removed = trimMetaDir(meta, c.limit)
	c.writeUsage(bytes, time.Now())
	return removed, bytes, nil
}
