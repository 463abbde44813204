//go:build linux

package testservers

import "syscall"

// sysProcAttr puts the server in its own process group, so cleanup can
// signal everything it spawned, and asks the kernel to SIGKILL it if the
// test binary dies without running its cleanups. (Pdeathsig is tied to the
// forking OS thread; Go only retires threads whose goroutine exits while
// locked to them, which the test goroutines starting servers never are.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// hasXattrs reports whether dir's file system stores user extended
// attributes, which versitygw's posix backend needs unless given --sidecar.
func hasXattrs(dir string) bool {
	const name = "user.wabackup.probe"
	if err := syscall.Setxattr(dir, name, []byte("1"), 0); err != nil {
		return false
	}
	_ = syscall.Removexattr(dir, name)
	return true
}
