//go:build !linux

package anonfile

import (
	"errors"
	"os"
)

// Open is not supported here.
func Open(string, bool) (*os.File, error) { return nil, errors.ErrUnsupported }

// Link is not supported here.
func Link(*os.File, string) error { return errors.ErrUnsupported }

// IsAnonymous reports false: there are no anonymous files here.
func IsAnonymous(*os.File) bool { return false }
