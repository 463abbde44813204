package archive

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// A SQLite database is stored page by page (FORMAT.md §7.4). Its node in
// the tree names a page map: a root blob listing segment blobs, each of
// which gives, for a run of consecutive pages, a 16-byte keyed tag of the
// page's contents and where the page is stored: a slot in a group blob, a
// run of pages stored (and compressed) together. All three kinds are
// ordinary blobs in packs, with id = HMAC(K_id, plaintext), so they
// deduplicate like chunks.
//
// A backup compares each page's tag with the parent snapshot's tag for the
// same page number: an unchanged page costs neither an upload nor an index
// lookup, and only the segments that hold a changed page are written again.

const (
	pageMapMagic = "WPM1"
	pageSegMagic = "WPS1"
	pageTagSize  = 16

	// minSegPages is the pages per segment of a page map; a database
	// with more than maxSegments segments of that size uses the smallest
	// power of two that keeps the root within maxSegments ids.
	minSegPages = 32
	maxSegPages = 1 << 16
	maxSegments = 1 << 16

	// groupBytes is the raw size of a group of new pages: as large as a
	// file chunk, so the pages compress as well together as a chunked
	// file (measured: 102.3 MiB for the 190 MiB bench database, 104.0 MiB
	// with 256 KiB groups), and a night's changed pages still make a
	// handful of groups.
	groupBytes = 1 << 20

	minPageSize = 512
	maxPageSize = 65536

	// maxPendingSegments bounds how many finished segments may wait for
	// the id of the group being filled; past it, the group is sealed
	// early (memory stays bounded however sparse the changes are).
	maxPendingSegments = 4096
)

// pageMap is the root of a page map.
type pageMap struct {
	pageSize  uint32
	pageCount uint32
	segPages  uint32
	segments  []ID
}

// pageRef says where one page is stored: slot slot of group group (an
// index into the segment's group list).
type pageRef struct {
	group uint32
	slot  uint32
}

// pageSegment describes pages first … first+len(refs)-1.
type pageSegment struct {
	first  uint32
	groups []ID
	tags   []byte // len(refs) × pageTagSize
	refs   []pageRef
}

func (s *pageSegment) tag(i int) []byte { return s.tags[i*pageTagSize : (i+1)*pageTagSize] }

// segPagesFor returns the segment size for a database of count pages.
func segPagesFor(count uint32) uint32 {
	s := uint32(minSegPages)
	for s < maxSegPages && (uint64(count)+uint64(s)-1)/uint64(s) > maxSegments {
		s *= 2
	}
	return s
}

func validPageSize(n uint32) bool {
	return n >= minPageSize && n <= maxPageSize && n&(n-1) == 0
}

func encodePageMap(m *pageMap) []byte {
	b := make([]byte, 0, 24+len(m.segments)*32)
	b = append(b, pageMapMagic...)
	b = binary.AppendUvarint(b, uint64(m.pageSize))
	b = binary.AppendUvarint(b, uint64(m.pageCount))
	b = binary.AppendUvarint(b, uint64(m.segPages))
	b = binary.AppendUvarint(b, uint64(len(m.segments)))
	for _, id := range m.segments {
		b = append(b, id[:]...)
	}
	return b
}

var errPageMapFormat = errors.New("malformed page map")

// byteReader reads canonical uvarints and fixed fields from a blob.
type byteReader struct {
	b   []byte
	bad bool
}

func (r *byteReader) uvarint(max uint64) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max || n != len(binary.AppendUvarint(nil, v)) {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *byteReader) bytes(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.bad = true
		return make([]byte, max(n, 0))
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func decodePageMap(b []byte) (*pageMap, error) {
	if !bytes.HasPrefix(b, []byte(pageMapMagic)) {
		return nil, errPageMapFormat
	}
	r := &byteReader{b: b[len(pageMapMagic):]}
	m := &pageMap{
		pageSize:  uint32(r.uvarint(maxPageSize)),
		pageCount: uint32(r.uvarint(1<<32 - 2)),
		segPages:  uint32(r.uvarint(maxSegPages)),
	}
	n := r.uvarint(maxSegments)
	if r.bad || !validPageSize(m.pageSize) || m.segPages == 0 || m.segPages != segPagesFor(m.pageCount) ||
		n != (uint64(m.pageCount)+uint64(m.segPages)-1)/uint64(m.segPages) || uint64(len(r.b)) != n*32 {
		return nil, errPageMapFormat
	}
	m.segments = make([]ID, n)
	for i := range m.segments {
		copy(m.segments[i][:], r.bytes(32))
	}
	return m, nil
}

func encodeSegment(s *pageSegment) []byte {
	b := make([]byte, 0, 16+len(s.groups)*32+len(s.refs)*(pageTagSize+3))
	b = append(b, pageSegMagic...)
	b = binary.AppendUvarint(b, uint64(s.first))
	b = binary.AppendUvarint(b, uint64(len(s.refs)))
	b = binary.AppendUvarint(b, uint64(len(s.groups)))
	for _, g := range s.groups {
		b = append(b, g[:]...)
	}
	for i, ref := range s.refs {
		b = append(b, s.tag(i)...)
		b = binary.AppendUvarint(b, uint64(ref.group))
		b = binary.AppendUvarint(b, uint64(ref.slot))
	}
	return b
}

// decodeSegment parses a segment strictly: groups are listed in the order
// of their first use and each is used, so a segment has one encoding.
func decodeSegment(b []byte) (*pageSegment, error) {
	if !bytes.HasPrefix(b, []byte(pageSegMagic)) {
		return nil, errPageMapFormat
	}
	r := &byteReader{b: b[len(pageSegMagic):]}
	s := &pageSegment{first: uint32(r.uvarint(1<<32 - 2))}
	n := r.uvarint(maxSegPages)
	ng := r.uvarint(n)
	if r.bad || s.first == 0 || n == 0 || ng == 0 || uint64(s.first)+n-1 > 1<<32-2 || uint64(len(r.b)) < ng*32+n*(pageTagSize+2) {
		return nil, errPageMapFormat
	}
	s.groups = make([]ID, ng)
	for i := range s.groups {
		copy(s.groups[i][:], r.bytes(32))
	}
	s.tags = make([]byte, 0, n*pageTagSize)
	s.refs = make([]pageRef, n)
	seen := uint32(0) // groups used so far, in order
	for i := range s.refs {
		s.tags = append(s.tags, r.bytes(pageTagSize)...)
		g := uint32(r.uvarint(ng - 1))
		slot := uint32(r.uvarint(maxChunkSize / minPageSize))
		if g > seen {
			r.bad = true
		}
		if g == seen {
			seen++
		}
		s.refs[i] = pageRef{group: g, slot: slot}
	}
	if r.bad || len(r.b) != 0 || uint64(seen) != ng {
		return nil, errPageMapFormat
	}
	return s, nil
}

// pageTagger computes page tags: the first 16 bytes of
// HMAC-SHA256(K_tag, page).
type pageTagger struct {
	h   hash.Hash
	sum []byte
}

func (k *keySet) newPageTagger() *pageTagger {
	return &pageTagger{h: hmac.New(sha256.New, k.pageTag[:])}
}

func (t *pageTagger) tag(page []byte) []byte {
	t.h.Reset()
	t.h.Write(page)
	t.sum = t.h.Sum(t.sum[:0])
	return t.sum[:pageTagSize]
}

// loadBlobFunc returns the authenticated plaintext of a blob. The slice
// may be reused by the next call.
type loadBlobFunc func(ctx context.Context, id ID) ([]byte, error)

// loadPageMap reads and checks a page map root.
func loadPageMap(ctx context.Context, load loadBlobFunc, id ID) (*pageMap, error) {
	data, err := load(ctx, id)
	if err != nil {
		return nil, err
	}
	m, err := decodePageMap(data)
	if err != nil {
		return nil, fmt.Errorf("page map %s: %v: %w", id.Short(), err, ErrCorrupt)
	}
	return m, nil
}

// loadSegment reads segment i of m and checks that it covers the pages it
// should.
func loadSegment(ctx context.Context, load loadBlobFunc, m *pageMap, i int) (*pageSegment, error) {
	data, err := load(ctx, m.segments[i])
	if err != nil {
		return nil, err
	}
	s, err := decodeSegment(data)
	if err == nil {
		first := uint64(i)*uint64(m.segPages) + 1
		n := min(uint64(m.segPages), uint64(m.pageCount)-first+1)
		if uint64(s.first) != first || uint64(len(s.refs)) != n {
			err = fmt.Errorf("segment covers pages %d–%d, page map says %d–%d", s.first, int(s.first)+len(s.refs)-1, first, first+n-1)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("page map segment %s: %v: %w", m.segments[i].Short(), err, ErrCorrupt)
	}
	return s, nil
}

// parentPages looks up the parent snapshot's page map page by page, in
// increasing page order, loading one segment at a time. Any failure to
// read it only means pages are treated as changed.
type parentPages struct {
	ctx  context.Context
	load loadBlobFunc
	m    *pageMap
	idx  int
	seg  *pageSegment

	// prefetch, if set, is given the segments of each window of
	// metaPrefetchSegments before the first of them is loaded.
	prefetch func(ids []ID)
	fetched  int // segments before this one were given to prefetch
}

// metaPrefetchSegments is how many segments of a page map are asked for
// at once (≈ 5 MiB of segments; 1 GiB of database at 4 KiB pages).
const metaPrefetchSegments = 8192

// prefetchWindow gives prefetch the window of segments starting at i, if
// it has not had them yet.
func prefetchWindow(prefetch func([]ID), m *pageMap, i int, fetched *int) {
	if prefetch == nil || i < *fetched {
		return
	}
	end := min(len(m.segments), i+metaPrefetchSegments)
	prefetch(m.segments[i:end])
	*fetched = end
}

// lookup returns the parent's tag and location of page pgno, if known.
func (p *parentPages) lookup(pgno uint32) (tag []byte, group ID, slot uint32, ok bool) {
	if p == nil || p.m == nil || pgno == 0 || pgno > p.m.pageCount {
		return nil, ID{}, 0, false
	}
	i := int((pgno - 1) / p.m.segPages)
	if p.seg == nil || p.idx != i {
		p.idx = i
		prefetchWindow(p.prefetch, p.m, i, &p.fetched)
		s, err := loadSegment(p.ctx, p.load, p.m, i)
		if err != nil {
			p.seg = nil
			return nil, ID{}, 0, false
		}
		p.seg = s
	}
	if p.seg == nil {
		return nil, ID{}, 0, false
	}
	k := int(pgno - p.seg.first)
	ref := p.seg.refs[k]
	return p.seg.tag(k), p.seg.groups[ref.group], ref.slot, true
}

// pageStore is what a pageMapBuilder needs from the backup.
type pageStore struct {
	// storeGroup stores a sealed group (id is HMAC(K_id, data)); data
	// came from buf and belongs to the store afterwards.
	storeGroup func(ctx context.Context, id ID, data []byte) error
	// saveMeta stores a metadata blob and returns its id.
	saveMeta func(ctx context.Context, data []byte) (ID, error)
	// stored reports whether a blob can be relied on (in the index).
	stored func(id ID) bool
	// buf returns an empty buffer with room for groupBytes.
	buf func(ctx context.Context) ([]byte, error)
	// idHasher hashes a group into its blob id.
	idHasher hash.Hash
}

// pageMapBuilder builds the page map of one database from its pages in
// order, against the parent's page map.
type pageMapBuilder struct {
	ctx      context.Context
	st       pageStore
	tagger   *pageTagger
	parent   *parentPages
	pageSize uint32
	count    uint32
	segPages uint32
	perGroup int

	group      []byte // pages of the open group
	groupPages int

	cur     *segBuild
	pending []*segBuild // finished segments waiting for the open group's id
	segs    []ID

	known map[ID]bool // parent groups found stored

	NewPages, SamePages int64
}

// segBuild is a segment being built. A ref with open set points into the
// group being filled, whose id is not known yet.
type segBuild struct {
	index int
	first uint32
	tags  []byte
	refs  []buildRef
}

type buildRef struct {
	id   ID
	open bool
	slot uint32
}

func newPageMapBuilder(ctx context.Context, st pageStore, tagger *pageTagger, parent *parentPages, pageSize, count uint32) *pageMapBuilder {
	b := &pageMapBuilder{ctx: ctx, st: st, tagger: tagger, pageSize: pageSize, count: count,
		segPages: segPagesFor(count), perGroup: max(1, groupBytes/int(pageSize)), known: map[ID]bool{}}
	if parent != nil && parent.m != nil && parent.m.pageSize == pageSize {
		b.parent = parent
	}
	b.segs = make([]ID, (uint64(count)+uint64(b.segPages)-1)/uint64(b.segPages))
	return b
}

// add takes page pgno (pages must come as 1, 2, … count).
func (b *pageMapBuilder) add(pgno uint32, page []byte) error {
	if uint32(len(page)) != b.pageSize {
		return fmt.Errorf("page %d is %d bytes, page size is %d", pgno, len(page), b.pageSize)
	}
	if b.cur == nil {
		i := int((pgno - 1) / b.segPages)
		if pgno != uint32(i)*b.segPages+1 {
			return fmt.Errorf("internal error: page %d out of order", pgno)
		}
		b.cur = &segBuild{index: i, first: pgno}
	}
	tag := b.tagger.tag(page)
	b.cur.tags = append(b.cur.tags, tag...)
	if ptag, gid, slot, ok := b.parent.lookup(pgno); ok && bytes.Equal(ptag, tag) && b.groupStored(gid) {
		b.cur.refs = append(b.cur.refs, buildRef{id: gid, slot: slot})
		b.SamePages++
	} else {
		if b.group == nil {
			buf, err := b.st.buf(b.ctx)
			if err != nil {
				return err
			}
			b.group = buf[:0]
		}
		b.group = append(b.group, page...)
		b.cur.refs = append(b.cur.refs, buildRef{open: true, slot: uint32(b.groupPages)})
		b.groupPages++
		b.NewPages++
	}
	if len(b.cur.refs) == int(b.segPages) || pgno == b.count {
		seg := b.cur
		b.cur = nil
		if seg.hasOpen() {
			b.pending = append(b.pending, seg)
		} else if err := b.finishSegment(seg); err != nil {
			return err
		}
	}
	if b.groupPages == b.perGroup || len(b.pending) >= maxPendingSegments {
		return b.seal()
	}
	return nil
}

func (s *segBuild) hasOpen() bool {
	for _, r := range s.refs {
		if r.open {
			return true
		}
	}
	return false
}

func (b *pageMapBuilder) groupStored(id ID) bool {
	ok, seen := b.known[id]
	if !seen {
		ok = b.st.stored(id)
		b.known[id] = ok
	}
	return ok
}

// seal hashes and stores the open group, then finishes the segments that
// waited for its id.
func (b *pageMapBuilder) seal() error {
	if b.groupPages == 0 {
		return nil
	}
	var id ID
	b.st.idHasher.Reset()
	b.st.idHasher.Write(b.group)
	b.st.idHasher.Sum(id[:0])
	data := b.group
	b.group, b.groupPages = nil, 0
	if err := b.st.storeGroup(b.ctx, id, data); err != nil {
		return err
	}
	b.known[id] = true
	resolve := func(s *segBuild) {
		for i := range s.refs {
			if s.refs[i].open {
				s.refs[i].id, s.refs[i].open = id, false
			}
		}
	}
	if b.cur != nil {
		resolve(b.cur)
	}
	for _, s := range b.pending {
		resolve(s)
		if err := b.finishSegment(s); err != nil {
			return err
		}
	}
	b.pending = b.pending[:0]
	return nil
}

func (b *pageMapBuilder) finishSegment(s *segBuild) error {
	seg := &pageSegment{first: s.first, tags: s.tags, refs: make([]pageRef, len(s.refs))}
	pos := map[ID]uint32{}
	for i, r := range s.refs {
		g, ok := pos[r.id]
		if !ok {
			g = uint32(len(seg.groups))
			pos[r.id] = g
			seg.groups = append(seg.groups, r.id)
		}
		seg.refs[i] = pageRef{group: g, slot: r.slot}
	}
	id, err := b.st.saveMeta(b.ctx, encodeSegment(seg))
	if err != nil {
		return err
	}
	b.segs[s.index] = id
	return nil
}

// finish stores what is left and the root, and returns the root's id.
func (b *pageMapBuilder) finish() (ID, error) {
	if b.cur != nil {
		return ID{}, fmt.Errorf("internal error: database ended after %d of %d pages", b.cur.first+uint32(len(b.cur.refs))-1, b.count)
	}
	if err := b.seal(); err != nil {
		return ID{}, err
	}
	return b.st.saveMeta(b.ctx, encodePageMap(&pageMap{pageSize: b.pageSize, pageCount: b.count, segPages: b.segPages, segments: b.segs}))
}

// walkSegments reads the page map with root id and calls fn for each of
// its segments that seen does not hold yet (and adds it): a check or prune
// of many nightly snapshots reads each shared segment once, not once per
// snapshot. It calls blob for the root and for every segment it loads.
func walkSegments(ctx context.Context, load loadBlobFunc, root ID, seen map[ID]bool, blob func(ID), fn func(m *pageMap, s *pageSegment) error) (*pageMap, error) {
	m, err := loadPageMap(ctx, load, root)
	if err != nil {
		return nil, err
	}
	if blob != nil {
		blob(root)
	}
	for i, id := range m.segments {
		if seen[id] {
			continue
		}
		s, err := loadSegment(ctx, load, m, i)
		if err != nil {
			return m, err
		}
		seen[id] = true
		if blob != nil {
			blob(id)
		}
		if err := fn(m, s); err != nil {
			return m, err
		}
	}
	return m, nil
}

// pageLoc is one page to write in a restore: where it goes and where it
// comes from.
type pageLoc struct {
	pgno uint32
	slot uint32
}

// restoreWindowPages is how many pages a database restore places at once
// (1 GiB at 4 KiB pages): each group those pages need is read once per
// window, in planned ranges, and the window's plan (8 bytes a page, and
// one entry per group) is all it holds in memory.
const restoreWindowPages = 1 << 18

// groupPages is one group a window of a restore needs, and where its
// pages go.
type groupPages struct {
	id    ID
	pages []pageLoc
}

// eachPageWindow walks a page map window by window and calls fn with the
// groups each window needs (in the order of their first use), with the
// pages of the window stored in each. prefetch, if set, is given each
// window's segments before they are loaded.
func eachPageWindow(ctx context.Context, load loadBlobFunc, prefetch func([]ID), root ID, fn func(m *pageMap, groups []groupPages) error) (*pageMap, error) {
	m, err := loadPageMap(ctx, load, root)
	if err != nil {
		return nil, err
	}
	segsPerWindow := max(1, restoreWindowPages/int(m.segPages))
	fetched := 0
	for w := 0; w < len(m.segments); w += segsPerWindow {
		plan := map[ID]int{}
		var groups []groupPages
		for i := w; i < min(w+segsPerWindow, len(m.segments)); i++ {
			prefetchWindow(prefetch, m, i, &fetched)
			s, err := loadSegment(ctx, load, m, i)
			if err != nil {
				return m, err
			}
			for k, ref := range s.refs {
				g := s.groups[ref.group]
				j, ok := plan[g]
				if !ok {
					j = len(groups)
					plan[g] = j
					groups = append(groups, groupPages{id: g})
				}
				groups[j].pages = append(groups[j].pages, pageLoc{pgno: s.first + uint32(k), slot: ref.slot})
			}
		}
		if err := fn(m, groups); err != nil {
			return m, err
		}
	}
	return m, nil
}

// eachPageGroup walks a page map window by window and calls fn once per
// group a window needs, with the pages of the window stored in it.
func eachPageGroup(ctx context.Context, load loadBlobFunc, root ID, fn func(m *pageMap, group ID, pages []pageLoc) error) (*pageMap, error) {
	return eachPageWindow(ctx, load, nil, root, func(m *pageMap, groups []groupPages) error {
		for _, g := range groups {
			if err := fn(m, g.id, g.pages); err != nil {
				return err
			}
		}
		return nil
	})
}
