package archive

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// A pendingFile is a restored file waiting for its real name. Where the
// file system allows, it is an anonymous file (Linux O_TMPFILE), kept
// open until it is linked in under its name: one directory change per
// file, and a crash leaves nothing behind. Elsewhere it is a file under a
// temporary name in the same directory (".wabackup-*.tmp", removed by the
// next restore into that directory), renamed into place.
type pendingFile struct {
	f         *os.File
	tmp       string // a named file's temporary name; "" for an anonymous one
	dst       string
	size      int64
	overwrite bool
}

// createPending starts the file that is to become dst in dir.
func createPending(dir, dst string, anon, overwrite bool) (*pendingFile, error) {
	p := &pendingFile{dst: dst, overwrite: overwrite}
	if anon {
		f, err := openAnon(dir)
		if err == nil {
			p.f = f
			return p, nil
		}
	}
	p.tmp = tempName(dir)
	f, err := os.OpenFile(p.tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	p.f = f
	return p, nil
}

func tempName(dir string) string {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	return filepath.Join(dir, ".wabackup-"+hex.EncodeToString(rnd[:])+".tmp")
}

// finish sets the file's modification time once its contents are
// written. A named file is closed; an anonymous one stays open to be
// linked.
func (p *pendingFile) finish(mt time.Time) error {
	if p.tmp == "" {
		return setTimesAnon(p.f, mt)
	}
	if err := p.f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", p.dst, err)
	}
	p.f = nil
	return os.Chtimes(p.tmp, mt, mt)
}

// place gives the file its real name. Without overwrite an existing dst
// is never replaced: it is an error wrapping ErrExists.
func (p *pendingFile) place() error {
	if p.tmp == "" {
		err := p.linkAnon()
		p.f.Close()
		p.f = nil
		return err
	}
	if !p.overwrite {
		if _, err := os.Lstat(p.dst); err == nil {
			os.Remove(p.tmp)
			return fmt.Errorf("%s: %w (use --overwrite to replace it)", p.dst, ErrExists)
		}
	}
	return os.Rename(p.tmp, p.dst)
}

func (p *pendingFile) linkAnon() error {
	if !p.overwrite {
		err := linkAnon(p.f, p.dst)
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s: %w (use --overwrite to replace it)", p.dst, ErrExists)
		}
		return err
	}
	// Replace atomically: link under a temporary name, rename over dst.
	tmp := tempName(filepath.Dir(p.dst))
	if err := linkAnon(p.f, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// discard drops a file that will not be placed.
func (p *pendingFile) discard() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
	if p.tmp != "" {
		os.Remove(p.tmp)
	}
}
