package driveemu

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wabackup/wabackup/internal/atomicfile"
)

// persister snapshots the emulator's state to a directory: state.json for
// metadata and consents, blobs/ID for contents. Writes are batched: at
// most one snapshot per flushInterval, plus one on close.
type persister struct {
	s    *Server
	dir  string
	mu   sync.Mutex
	dty  bool
	gone map[string]bool
	// written maps a file ID to the md5 of the blob on disk.
	written map[string]string
	stop    chan struct{}
	done    chan struct{}
	err     error
}

const flushInterval = 200 * time.Millisecond

type snapshot struct {
	RootID    string   `json:"rootID"`
	AppDataID string   `json:"appDataID"`
	Files     []*file  `json:"files"`
	Grants    []*grant `json:"grants"`
	UpDay     string   `json:"uploadDay"`
	UpToday   int64    `json:"uploadedToday"`
}

func newPersister(s *Server, dir string) (*persister, error) {
	p := &persister{s: s, dir: dir, gone: map[string]bool{}, written: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return nil, err
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	go p.loop()
	return p, nil
}

func (p *persister) load() error {
	b, err := os.ReadFile(filepath.Join(p.dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("%s: %v", filepath.Join(p.dir, "state.json"), err)
	}
	s := p.s
	s.rootID, s.appDataID = snap.RootID, snap.AppDataID
	s.upDay, s.upToday = snap.UpDay, snap.UpToday
	for _, f := range snap.Files {
		if !f.isFolder() {
			data, err := os.ReadFile(filepath.Join(p.dir, "blobs", f.ID))
			if err != nil {
				return fmt.Errorf("content of %s (%s): %v", f.ID, f.Name, err)
			}
			sum := md5.Sum(data)
			if hex.EncodeToString(sum[:]) != f.MD5 {
				return fmt.Errorf("content of %s (%s) is corrupt", f.ID, f.Name)
			}
			f.content = data
			p.written[f.ID] = f.MD5
		}
		s.files[f.ID] = f
		for _, pid := range f.Parents {
			m := s.children[pid]
			if m == nil {
				m = map[string]*file{}
				s.children[pid] = m
			}
			m[f.ID] = f
		}
		if f.Created.After(s.lastTime) {
			s.lastTime = f.Created
		}
		if f.Modified.After(s.lastTime) {
			s.lastTime = f.Modified
		}
	}
	for _, g := range snap.Grants {
		s.grants[g.RefreshToken] = g
	}
	return nil
}

func (p *persister) mark() {
	p.mu.Lock()
	p.dty = true
	p.mu.Unlock()
}

func (p *persister) removed(id string) {
	p.mu.Lock()
	p.gone[id] = true
	p.dty = true
	p.mu.Unlock()
}

func (p *persister) loop() {
	defer close(p.done)
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			if err := p.flush(); err != nil {
				p.mu.Lock()
				p.err = err
				p.mu.Unlock()
			}
		}
	}
}

func (p *persister) close() error {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	err := p.flush()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		err = p.err
	}
	return err
}

func (p *persister) flush() error {
	p.mu.Lock()
	if !p.dty {
		p.mu.Unlock()
		return nil
	}
	p.dty = false
	gone := p.gone
	p.gone = map[string]bool{}
	p.mu.Unlock()

	s := p.s
	s.mu.Lock()
	snap := snapshot{RootID: s.rootID, AppDataID: s.appDataID, UpDay: s.upDay, UpToday: s.upToday}
	for _, f := range s.files {
		snap.Files = append(snap.Files, f) // files are replaced, never mutated, once stored
	}
	for _, g := range s.grants {
		cp := *g
		snap.Grants = append(snap.Grants, &cp)
	}
	s.mu.Unlock()

	for _, f := range snap.Files {
		if f.isFolder() || p.written[f.ID] == f.MD5 {
			continue
		}
		if err := atomicfile.Write(filepath.Join(p.dir, "blobs", f.ID), f.content, 0o600); err != nil {
			return err
		}
		p.written[f.ID] = f.MD5
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(p.dir, "state.json"), b, 0o600); err != nil {
		return err
	}
	live := map[string]bool{}
	for _, f := range snap.Files {
		live[f.ID] = true
	}
	for id := range gone {
		if !live[id] {
			os.Remove(filepath.Join(p.dir, "blobs", id))
			delete(p.written, id)
		}
	}
	return nil
}
