package archive

import (
	"cmp"
	"context"
	"io"
	"slices"
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
	// chunk; a bigger jump opens a new stream. (More than a planned
	// read's readGap: the stream is open already, a new one would wait
	// for its first byte, and the next read is not known in advance.)
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

// Planned reads. Where a reader knows beforehand the blobs it will need
// (the segments of a page map, the page groups of a database restore, a
// directory's subdirectories), it asks for them all at once: the blobs
// are grouped by pack, the blobs of one pack that lie at most a gap apart
// make one range, and each range is read with one request — up to a
// number of them at once, each streamed (the bytes between two blobs are
// read and dropped), so memory is one blob per request in flight.

// DefaultConnections is how many planned reads (restore, metadata) are in
// flight at once unless SetConnections says otherwise.
const DefaultConnections = 8

// readGap is the largest gap between two blobs of one pack that a
// planned read reads through rather than making another request: on a
// link of 20–100 Mbit/s with 30 ms round trips a request costs about as
// much time as 100–400 KiB, but requests of separate ranges go out at
// once, and S3 and Drive count (and Drive limits) requests.
const readGap = 1 << 20

// packBlob is one blob a planned read wants.
type packBlob struct {
	pack packInfo
	e    blobEntry
}

// packRange is a stretch of one pack read with one request, and the
// blobs handed out of it, in offset order.
type packRange struct {
	pack       packInfo
	start, end int64
	blobs      []blobEntry
}

// planRanges groups blobs by pack and merges, within a pack, the blobs at
// most gap apart into one range. A blob wanted twice is handed out once.
func planRanges(blobs []packBlob, gap int64) []packRange {
	byPack := map[ID][]blobEntry{}
	var packs []packInfo
	for _, b := range blobs {
		if _, ok := byPack[b.pack.id]; !ok {
			packs = append(packs, b.pack)
		}
		byPack[b.pack.id] = append(byPack[b.pack.id], b.e)
	}
	var out []packRange
	for _, p := range packs {
		es := byPack[p.id]
		slices.SortFunc(es, func(a, b blobEntry) int { return cmp.Compare(a.Offset, b.Offset) })
		var cur *packRange
		for i, e := range es {
			if i > 0 && e.Offset == es[i-1].Offset {
				continue
			}
			start, end := int64(e.Offset), int64(e.Offset)+int64(e.Length)
			if cur != nil && start-cur.end <= gap {
				cur.end = max(cur.end, end)
				cur.blobs = append(cur.blobs, e)
				continue
			}
			out = append(out, packRange{pack: p, start: start, end: end, blobs: []blobEntry{e}})
			cur = &out[len(out)-1]
		}
	}
	return out
}

// rangeGap is the gap a planned read reads through: readGap, or on a
// store whose objects are local files (read with ReadAt, one open file per
// range, the gaps never read) the whole pack.
func (r *Repository) rangeGap() int64 {
	if _, ok := r.store.(cloud.ReaderAtStore); ok {
		return 1 << 62
	}
	return readGap
}

// rangeConns is how many planned reads may be in flight: the
// repository's setting, within what a store with a fixed number of
// connections can take.
func (r *Repository) rangeConns() int {
	n := r.conns
	if n <= 0 {
		n = DefaultConnections
	}
	if cl, ok := r.store.(cloud.ConnectionLimited); ok {
		n = min(n, max(1, cl.Connections()-1))
	}
	return n
}

// SetConnections sets how many planned reads — a restore's, and a cold
// read of metadata — go to the store at once (0: DefaultConnections).
func (r *Repository) SetConnections(n int) { r.conns = n }

// readRanges reads ranges, up to conns at once, each with one request,
// and calls got for every blob of a range in offset order with its sealed
// bytes (valid during the call). Blobs a range's request did not deliver
// (it failed, or the stream broke) go to missed instead. got and missed
// run on the goroutine of their range, worker w of 0…conns-1 (so state
// per worker needs no lock); an error from either stops every range and
// is returned.
func (r *Repository) readRanges(ctx context.Context, ranges []packRange, conns int,
	got func(w int, pr *packRange, e blobEntry, sealed []byte) error,
	missed func(w int, pr *packRange, e blobEntry) error) error {
	if len(ranges) == 0 {
		return nil
	}
	conns = max(1, min(conns, len(ranges)))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range next {
				if err := r.readRange(ctx, &ranges[i], &buf, func(pr *packRange, e blobEntry, sealed []byte) error {
					return got(w, pr, e, sealed)
				}, func(pr *packRange, e blobEntry) error {
					return missed(w, pr, e)
				}); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range ranges {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// readRange reads one range: through an open file on a local store,
// else with one ranged Get whose body is read blob by blob.
func (r *Repository) readRange(ctx context.Context, pr *packRange, buf *[]byte,
	got func(pr *packRange, e blobEntry, sealed []byte) error, missed func(pr *packRange, e blobEntry) error) error {
	name := packName(pr.pack.id)
	fill := func(n uint32) []byte {
		if cap(*buf) < int(n) {
			*buf = make([]byte, n)
		}
		return (*buf)[:n]
	}
	rest := func(i int) error {
		for _, e := range pr.blobs[i:] {
			if err := context.Cause(ctx); err != nil {
				return err
			}
			if err := missed(pr, e); err != nil {
				return err
			}
		}
		return nil
	}
	if ras, ok := r.store.(cloud.ReaderAtStore); ok {
		f, err := ras.OpenReaderAt(ctx, name)
		if err != nil {
			return rest(0)
		}
		defer f.Close()
		for i, e := range pr.blobs {
			if err := context.Cause(ctx); err != nil {
				return err
			}
			b := fill(e.Length)
			if _, err := f.ReadAt(b, int64(e.Offset)); err != nil {
				return rest(i)
			}
			r.blobBytesRead.Add(int64(e.Length))
			if err := got(pr, e, b); err != nil {
				return err
			}
		}
		return nil
	}
	rc, err := r.store.Get(ctx, name, pr.start, pr.end-pr.start)
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			return c
		}
		return rest(0)
	}
	defer rc.Close()
	pos := pr.start
	for i, e := range pr.blobs {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		if gap := int64(e.Offset) - pos; gap > 0 {
			n, err := io.CopyN(io.Discard, rc, gap)
			pos += n
			if err != nil {
				return rest(i)
			}
		}
		b := fill(e.Length)
		n, err := io.ReadFull(rc, b)
		pos += int64(n)
		if err != nil {
			return rest(i)
		}
		r.blobBytesRead.Add(int64(e.Length))
		if err := got(pr, e, b); err != nil {
			return err
		}
	}
	return nil
}
