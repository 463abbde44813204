package archive

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// packStreams serves a restore's chunk reads from remote stores through a
// few open reads of whole pack tails instead of one ranged GET per chunk.
//
// A restore asks for the chunks of its files in tree order, which is
// nearly the order the backup appended them to its packs: the next chunk
// wanted from a pack usually starts at, or a little after, where the last
// one ended. A stream is a Get from some offset to the end of a pack; a
// read at or shortly after a stream's position is served from it (the
// gap is read and dropped), anything else opens a new stream. So a pack
// costs one request instead of dozens, which is what dominates on a
// remote store (request latency) and on a loopback server (per-request
// work), and memory stays as it was: a stream is a socket, not a buffer.
//
// The local store does not use this: its Get is an open and a pread.
type packStreams struct {
	ctx     context.Context
	open    func(ctx context.Context, name string, off int64) (io.ReadCloser, error)
	max     int // streams kept open at most
	mu      sync.Mutex
	streams []*packStream
	closed  bool
}

type packStream struct {
	name    string
	rc      io.ReadCloser
	pos     int64
	busy    bool
	lastUse time.Time
}

const (
	// maxStreams bounds the open streams (connections) of one restore;
	// newPackStreams lowers it below a store's connection limit.
	maxStreams = 8
	// maxStreamSkip is the largest gap read and dropped to reach the next
	// chunk; a bigger jump opens a new stream.
	maxStreamSkip = 4 << 20
)

// newPackStreams returns the streams for a restore from store by up to
// readers goroutines at once, or nil when the store is local or has too
// few connections to keep any open: each reader may need a connection of
// its own while the idle streams hold theirs.
func newPackStreams(ctx context.Context, store cloud.Store, readers int) *packStreams {
	if _, local := store.(cloud.FileStore); local {
		return nil
	}
	n := maxStreams
	if cl, ok := store.(cloud.ConnectionLimited); ok {
		n = min(n, cl.Connections()-readers)
	}
	if n < 1 {
		return nil
	}
	return &packStreams{ctx: ctx, max: n, open: func(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
		return store.Get(ctx, name, off, -1)
	}}
}

// read fills buf with the bytes of pack object name at off. On any
// failure of a stream it falls back to direct, which reads the range on
// its own (and whose error is the one reported).
func (ps *packStreams) read(ctx context.Context, name string, off int64, buf []byte, direct func() error) error {
	s := ps.take(name, off)
	if s == nil {
		rc, err := ps.open(ps.ctx, name, off)
		if err != nil {
			return direct()
		}
		s = &packStream{name: name, rc: rc, pos: off, busy: true}
	}
	if ctx.Err() != nil {
		ps.put(s, false)
		return ctx.Err()
	}
	ok := true
	if gap := off - s.pos; gap > 0 {
		n, err := io.CopyN(io.Discard, s.rc, gap)
		s.pos += n
		ok = err == nil
	}
	if ok {
		n, err := io.ReadFull(s.rc, buf)
		s.pos += int64(n)
		ok = err == nil
	}
	ps.put(s, ok)
	if !ok {
		return direct()
	}
	return nil
}

// take returns an idle stream of name positioned at or shortly before
// off, marked busy, or nil.
func (ps *packStreams) take(name string, off int64) *packStream {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var best *packStream
	for _, s := range ps.streams {
		if s.name == name && !s.busy && s.pos <= off && off-s.pos <= maxStreamSkip && (best == nil || s.pos > best.pos) {
			best = s
		}
	}
	if best != nil {
		best.busy = true
	}
	return best
}

// put gives a stream back: kept for the next read if it is healthy,
// evicting the least recently used idle stream when there are too many.
func (ps *packStreams) put(s *packStream, healthy bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	s.busy, s.lastUse = false, time.Now()
	known := false
	for i, o := range ps.streams {
		if o == s {
			known = true
			if !healthy || ps.closed {
				ps.streams = append(ps.streams[:i], ps.streams[i+1:]...)
			}
			break
		}
	}
	if !healthy || ps.closed {
		s.rc.Close()
		return
	}
	if !known {
		if len(ps.streams) >= ps.max {
			lru := -1
			for i, o := range ps.streams {
				if !o.busy && (lru < 0 || o.lastUse.Before(ps.streams[lru].lastUse)) {
					lru = i
				}
			}
			if lru < 0 {
				s.rc.Close() // every stream is in use: do not keep this one
				return
			}
			ps.streams[lru].rc.Close()
			ps.streams = append(ps.streams[:lru], ps.streams[lru+1:]...)
		}
		ps.streams = append(ps.streams, s)
	}
}

// close ends every stream. Reads still running close theirs when done.
func (ps *packStreams) close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.closed = true
	kept := ps.streams[:0]
	for _, s := range ps.streams {
		if s.busy {
			kept = append(kept, s)
			continue
		}
		s.rc.Close()
	}
	ps.streams = kept
}
