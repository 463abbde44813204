package archive

import (
	"bytes"
	"context"
	"sync"
)

// Cold reads of metadata (FORMAT.md §12.3): what the cache lacks is read
// from the store in batches. A reader that knows which metadata blobs it
// will need — the segments of a page map, the pieces of a directory's
// subdirectories — asks for them together; their ranges are planned like
// a restore's (planRanges: grouped by pack, blobs at most readGap apart
// read with one request) and every blob in the bytes read that
// authenticates and is metadata goes into the cache, the ones between
// those asked for included. Metadata sits in packs of its own (a backup's
// metaSaver), so a range is usually most of such a pack.

// maxPrefetchIDs bounds the ids one prefetch looks up (32 bytes each).
const maxPrefetchIDs = 1 << 16

// prefetchMeta makes sure the metadata blobs ids are in the cache. The
// ones it lacks are located in the index and read in planned ranges, up
// to rangeConns requests at once. got, if set, is called (one call at a
// time) with the id and plaintext of every metadata blob read into the
// cache (those of ids, and those read with them). It returns the bytes of
// the blobs read. It is best effort: a blob it could not read (not
// indexed, damaged, the request failed) is read on its own later, which
// reports what is wrong with it.
func (r *Repository) prefetchMeta(ctx context.Context, ids []ID, got func(id ID, plain []byte)) int64 {
	c := r.metaCacheFor()
	if c == nil || r.idx == nil || len(ids) == 0 {
		return 0
	}
	r.metaMu.Lock()
	defer r.metaMu.Unlock()
	check := r.newBlobReader()
	defer check.close()
	want := map[ID]bool{}
	var blobs []packBlob
	for _, id := range ids[:min(len(ids), maxPrefetchIDs)] {
		if want[id] || c.present(check, id) {
			continue
		}
		loc, pack, ok := r.idx.lookup(id)
		if !ok {
			continue
		}
		want[id] = true
		blobs = append(blobs, packBlob{pack: pack, e: blobEntry{ID: id, Flags: loc.flags, Counter: loc.counter, Offset: loc.offset, Length: loc.length, RawLen: loc.rawLen}})
	}
	if len(blobs) == 0 {
		return 0
	}
	ranges := planRanges(blobs, r.rangeGap())
	for i := range ranges {
		// The blobs between those asked for are read anyway: hand them
		// out too, so the metadata among them is cached.
		if es, err := r.idx.entriesBetween(ranges[i].pack.id, ranges[i].start, ranges[i].end); err == nil && len(es) >= len(ranges[i].blobs) {
			ranges[i].blobs = es
		}
	}
	conns := r.rangeConns()
	type worker struct {
		br     *blobReader
		sealed []byte
	}
	workers := make([]worker, conns)
	defer func() {
		for _, w := range workers {
			if w.br != nil {
				w.br.close()
			}
		}
	}()
	var mu sync.Mutex
	var read int64
	_ = r.readRanges(ctx, ranges, conns, func(w int, pr *packRange, e blobEntry, sealed []byte) error {
		wk := &workers[w]
		if wk.br == nil {
			wk.br = r.newBlobReader()
		}
		// Opening decrypts in place; the cache keeps the sealed bytes.
		wk.sealed = append(wk.sealed[:0], sealed...)
		plain, err := wk.br.open(pr.pack.id, e, sealed)
		if err != nil {
			return nil
		}
		wanted := want[e.ID]
		if !wanted && !isMetaBlob(plain) {
			return nil
		}
		c.put(pr.pack.id, e, wk.sealed)
		r.metaStoreBlobs.Add(1)
		mu.Lock()
		defer mu.Unlock()
		read += int64(e.Length)
		if got != nil {
			got(e.ID, plain)
		}
		return nil
	}, func(int, *packRange, blobEntry) error { return nil })
	return read
}

// prefetchTree reads into the cache the directory pieces roots and, level
// by level, what they lead to: with dirs, the pieces of their
// subdirectories; always, the page maps of their databases and those
// maps' segments. A cold walk of a tree then costs a few requests per
// level of it instead of one per piece. Only blobs read in this call are
// looked into — asked for, or read with those (a piece cached before has
// its subtree cached too, usually; if not, the walk's next miss starts
// another prefetch there) — and it stops after a
// quarter of the cache's size, so a tree larger than the cache does not
// evict its own start.
func (r *Repository) prefetchTree(ctx context.Context, roots []ID, dirs bool) {
	c := r.metaCacheFor()
	if c == nil {
		return
	}
	budget := c.limit / 4
	var spent int64
	check := r.newBlobReader()
	defer check.close()
	level := roots
	for len(level) > 0 && spent < budget && ctx.Err() == nil {
		var next []ID
		queued := map[ID]bool{}
		add := func(id ID) {
			if len(next) < maxPrefetchIDs && !queued[id] && !c.present(check, id) {
				queued[id] = true
				next = append(next, id)
			}
		}
		spent += r.prefetchMeta(ctx, level, func(id ID, plain []byte) {
			switch {
			case bytes.HasPrefix(plain, []byte(dirPieceMagic)):
				entries, err := decodeDirPiece(plain)
				if err != nil {
					return
				}
				for i := range entries {
					switch e := &entries[i]; e.typ {
					case dirTypeDir:
						if dirs {
							for _, p := range e.ids {
								add(p)
							}
						}
					case dirTypeDB:
						add(e.pageMap)
					}
				}
			case bytes.HasPrefix(plain, []byte(pageMapMagic)):
				if m, err := decodePageMap(plain); err == nil {
					for _, s := range m.segments {
						add(s)
					}
				}
			}
		})
		level = next
	}
}

// meta returns the plaintext of metadata blob id (a directory piece, a
// page map root or segment): from the cache, else read from the store
// into the cache, else (not indexed, damaged, no cache) read like any
// chunk, with its errors. The slice is valid until b's next read.
func (b *blobReader) meta(ctx context.Context, id ID) ([]byte, error) {
	if c := b.r.metaCacheFor(); c != nil {
		if plain, ok := c.get(b, id); ok {
			return plain, nil
		}
		b.r.prefetchMeta(ctx, []ID{id}, nil)
		if plain, ok := c.get(b, id); ok {
			return plain, nil
		}
	}
	plain, err := b.chunk(ctx, id)
	if err == nil {
		b.r.metaStoreBlobs.Add(1)
	}
	return plain, err
}

// entriesBetween returns the blobs the index locates in pack within bytes
// [start, end), in offset order.
func (x *Index) entriesBetween(pack ID, start, end int64) ([]blobEntry, error) {
	rows, err := x.db.Query(`SELECT b.id, b.counter, b.off, b.len, b.raw, b.flags FROM blobs b
		JOIN packs p ON p.seq = b.pack WHERE p.id = ? AND b.off >= ? AND b.off + b.len <= ? ORDER BY b.counter`, pack[:], start, end)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []blobEntry
	for rows.Next() {
		var e blobEntry
		var bid []byte
		if err := rows.Scan(&bid, &e.Counter, &e.Offset, &e.Length, &e.RawLen, &e.Flags); err != nil {
			return nil, err
		}
		if copy(e.ID[:], bid) != len(e.ID) {
			continue
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
