package archive

import (
	"os"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openAnon opens a new anonymous file in dir (O_TMPFILE). It is opened
// with open(2) and wrapped by os.NewFile, which costs fewer system calls
// than os.OpenFile's poller set-up for a regular file.
func openAnon(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_WRONLY|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
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

// linkAnon gives an anonymous file the name dst; it fails with an error
// matching os.ErrExist if dst exists.
func linkAnon(f *os.File, dst string) error {
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

// setTimesAnon sets an open file's access and modification times:
// utimensat(fd, NULL, …), which futimens(3) is, with nanoseconds.
func setTimesAnon(f *os.File, mt time.Time) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, f.Fd(), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return &os.PathError{Op: "utimes", Path: f.Name(), Err: errno}
	}
	return nil
}

// anonFilesWork reports whether a restore into dir can use anonymous
// files: the file system supports O_TMPFILE, linking one in works, and
// enough files may be open for the committer's batches.
func anonFilesWork(dir string) bool {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || lim.Cur < 4*commitBatchFiles {
		return false
	}
	f, err := openAnon(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	probe := tempName(dir)
	if linkAnon(f, probe) != nil {
		return false
	}
	os.Remove(probe)
	return true
}
