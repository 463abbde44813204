package archive

import (
	"context"
	"fmt"
	"hash"
	"sync"
)

// metaSaver stores the small blobs that describe a snapshot — directory
// pieces, page map segments and roots — deduplicated like chunks, in
// packs of their own: a parent's description then sits in a few packs
// instead of being spread between file data. Safe for concurrent use.
type metaSaver struct {
	b       *backup
	uploads chan<- *packWriter

	mu  sync.Mutex
	h   hash.Hash
	z   *compressor
	pw  *packWriter
	buf []byte
}

func newMetaSaver(b *backup, uploads chan<- *packWriter) *metaSaver {
	// Pieces and segments are small (a piece is at most 1 MiB and
	// usually a few KiB): a 256 KiB window compresses them as well, with
	// less memory.
	return &metaSaver{b: b, uploads: uploads, h: b.r.keys.newIDHasher(), z: newCompressor(256 << 10)}
}

// save stores data unless a blob with the same content is stored or
// being stored, and returns its id.
func (m *metaSaver) save(ctx context.Context, data []byte) (ID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var id ID
	m.h.Reset()
	m.h.Write(data)
	m.h.Sum(id[:0])
	if len(data) > maxChunkSize {
		return id, fmt.Errorf("internal error: metadata blob of %d bytes", len(data))
	}
	if m.b.r.idx.Has(id) || !m.b.markPending(id) {
		return id, nil
	}
	// The pack writer seals in place: work on a copy with room for the tag.
	if cap(m.buf) < len(data)+tagSize {
		m.buf = make([]byte, 0, len(data)+tagSize)
	}
	m.buf = append(m.buf[:0], data...)
	payload, flags := m.z.compress(m.buf, hintAuto)
	if m.pw == nil {
		pw, err := m.b.r.newPackWriter()
		if err != nil {
			return id, err
		}
		m.pw = pw
	}
	room := cap(payload)-len(payload) >= tagSize
	if err := m.pw.add(id, flags, payload, len(data)); err != nil {
		return id, fmt.Errorf("writing pack: %w", err)
	}
	if c := m.b.r.metaCacheFor(); c != nil && !c.temp && room && !m.b.opt.DryRun {
		// Into the metadata cache as it is created (sealed in place,
		// exactly as the pack holds it): the next backup reads its
		// parent's description from there.
		c.putLater(m.pw.id, m.pw.entries[len(m.pw.entries)-1], payload[:len(payload)+tagSize])
	}
	m.b.countNew(id, len(data))
	if m.pw.size >= m.b.r.cfg.PackSize {
		pw := m.pw
		m.pw = nil
		return id, m.b.finishPack(ctx, pw, m.uploads)
	}
	return id, nil
}

// saveTreeBlob makes a metaSaver the store of a dirTreeWriter.
func (m *metaSaver) saveTreeBlob(ctx context.Context, data []byte) (ID, error) {
	return m.save(ctx, data)
}

// flush hands the last pack to the uploaders.
func (m *metaSaver) flush(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pw == nil {
		return nil
	}
	pw := m.pw
	m.pw = nil
	return m.b.finishPack(ctx, pw, m.uploads)
}

// close discards a pack that was never flushed (a failed backup).
func (m *metaSaver) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pw != nil {
		m.pw.discard()
		m.pw = nil
	}
	m.z.close()
}
