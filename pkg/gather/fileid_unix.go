//go:build unix

package gather

import (
	"io/fs"
	"syscall"
)

// fileID returns the inode and device numbers of an Lstat result.
func fileID(fi fs.FileInfo) (ino, dev uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino), uint64(st.Dev) //nolint:unconvert // types differ between platforms
	}
	return 0, 0
}
