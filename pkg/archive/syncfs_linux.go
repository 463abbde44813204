package archive

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS writes everything dirty on f's file system to disk (syncfs(2)).
// A variable so tests can watch when it runs.
var syncFS = func(f *os.File) error {
	return unix.Syncfs(int(f.Fd()))
}
