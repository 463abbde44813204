//go:build !linux

package archive

import (
	"errors"
	"os"
)

// syncFS is not available here; restore fsyncs each file instead.
var syncFS = func(*os.File) error { return errors.ErrUnsupported }
