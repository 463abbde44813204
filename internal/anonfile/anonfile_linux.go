package anonfile

import (
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Open opens a new anonymous file in dir (O_TMPFILE), for writing (and
// reading, with rw). It is opened with open(2) and wrapped by os.NewFile,
// which costs fewer system calls than os.OpenFile's poller set-up.
func Open(dir string, rw bool) (*os.File, error) {
	flags := unix.O_WRONLY
	if rw {
		flags = unix.O_RDWR
	}
	fd, err := unix.Open(dir, flags|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir+"/(anonymous)"), nil
}

func procPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// emptyPathLinks is cleared once linkat with AT_EMPTY_PATH is refused
// (it needs CAP_DAC_READ_SEARCH): from then on links go through
// /proc/self/fd, which any user may use.
var emptyPathLinks atomic.Bool

func init() { emptyPathLinks.Store(true) }

// Link gives an anonymous file the name dst; it fails with an error
// matching os.ErrExist if dst exists.
func Link(f *os.File, dst string) error {
	if emptyPathLinks.Load() {
		err := unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
		if err == nil {
			return nil
		}
		if err != unix.EPERM && err != unix.ENOENT && err != unix.EINVAL {
			return &os.LinkError{Op: "link", Old: f.Name(), New: dst, Err: err}
		}
		emptyPathLinks.Store(false)
	}
	if err := unix.Linkat(unix.AT_FDCWD, procPath(f), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW); err != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: dst, Err: err}
	}
	return nil
}

// IsAnonymous reports whether f has no name (no link to it).
func IsAnonymous(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Nlink == 0
}
