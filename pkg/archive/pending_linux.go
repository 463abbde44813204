package archive

import (
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wabackup/wabackup/internal/anonfile"
)

func openAnon(dir string) (*os.File, error) { return anonfile.Open(dir, false) }

func linkAnon(f *os.File, dst string) error { return anonfile.Link(f, dst) }

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
