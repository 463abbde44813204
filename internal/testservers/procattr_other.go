//go:build unix && !linux

package testservers

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// hasXattrs is conservative where we have no probe: use a sidecar.
func hasXattrs(string) bool { return false }
