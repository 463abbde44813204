//go:build !unix

package gather

import "io/fs"

// fileID returns zeros where the platform has no inode numbers.
func fileID(fs.FileInfo) (ino, dev uint64) { return 0, 0 }
