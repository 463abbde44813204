//go:build !linux

package archive

import (
	"errors"
	"os"
	"time"
)

func openAnon(string) (*os.File, error)      { return nil, errors.ErrUnsupported }
func linkAnon(*os.File, string) error        { return errors.ErrUnsupported }
func setTimesAnon(*os.File, time.Time) error { return errors.ErrUnsupported }
func anonFilesWork(string) bool              { return false }
