// Package atomicfile writes small files (saved logins, pinned
// fingerprints, an emulator's state) so that a crash leaves either the old
// content or the new, never a mix, and the new content is on disk once
// Write returns.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, with mode perm: it writes a temporary
// file of its own in the same directory (created if missing, mode 0700),
// syncs it, renames it over path and syncs the directory. On failure path
// is untouched and the temporary file removed.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
