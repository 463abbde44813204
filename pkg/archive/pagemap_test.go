package archive

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func TestPageMapRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		count uint32
	}{
		{"empty", 0},
		{"one page", 1},
		{"one segment", minSegPages},
		{"ragged", 3*minSegPages + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &pageMap{pageSize: 4096, pageCount: tc.count, segPages: segPagesFor(tc.count)}
			for range (tc.count + m.segPages - 1) / m.segPages {
				m.segments = append(m.segments, NewRandomID())
			}
			b := encodePageMap(m)
			got, err := decodePageMap(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.pageSize != m.pageSize || got.pageCount != m.pageCount || got.segPages != m.segPages || len(got.segments) != len(m.segments) {
				t.Fatalf("got %+v, want %+v", got, m)
			}
			if !bytes.Equal(encodePageMap(got), b) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

func TestSegPagesGrowsForHugeDatabases(t *testing.T) {
	for _, tc := range []struct {
		count uint32
		want  uint32
	}{
		{45652, minSegPages},
		{minSegPages * maxSegments, minSegPages},
		{minSegPages*maxSegments + 1, 2 * minSegPages},
		{1<<32 - 2, 1 << 16},
	} {
		if got := segPagesFor(tc.count); got != tc.want {
			t.Errorf("segPagesFor(%d) = %d, want %d", tc.count, got, tc.want)
		}
	}
}

func TestDecodePageMapRejects(t *testing.T) {
	good := encodePageMap(&pageMap{pageSize: 4096, pageCount: 40, segPages: 32, segments: []ID{{1}, {2}}})
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"magic", append([]byte("WPM2"), good[4:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing", append(append([]byte{}, good...), 0)},
		{"page size not a power of two", encodePageMap(&pageMap{pageSize: 4000, pageCount: 40, segPages: 32, segments: []ID{{1}, {2}}})},
		{"wrong segment count", encodePageMap(&pageMap{pageSize: 4096, pageCount: 40, segPages: 32, segments: []ID{{1}}})},
		{"segment size not canonical", encodePageMap(&pageMap{pageSize: 4096, pageCount: 40, segPages: 64, segments: []ID{{1}}})},
		{"non-minimal varint", append([]byte("WPM1\x80\x80\x01"), good[7:]...)},
	} {
		if _, err := decodePageMap(tc.b); !errors.Is(err, errPageMapFormat) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func testSegment(n, groups int) *pageSegment {
	s := &pageSegment{first: 33}
	for g := range groups {
		s.groups = append(s.groups, ID{byte(g + 1)})
	}
	for i := range n {
		tag := make([]byte, pageTagSize)
		tag[0] = byte(i)
		s.tags = append(s.tags, tag...)
		s.refs = append(s.refs, pageRef{group: uint32(min(i, groups-1)), slot: uint32(i)})
	}
	return s
}

func TestSegmentRoundTripAndRejects(t *testing.T) {
	s := testSegment(32, 3)
	b := encodeSegment(s)
	got, err := decodeSegment(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeSegment(got), b) {
		t.Fatal("re-encoding differs")
	}
	unordered := testSegment(4, 2)
	unordered.refs[0].group = 1 // group 1 used before group 0
	unused := testSegment(4, 2)
	for i := range unused.refs {
		unused.refs[i].group = 0 // group 1 never used
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte{}, b...), 0)},
		{"groups out of order", encodeSegment(unordered)},
		{"unused group", encodeSegment(unused)},
		{"first page 0", encodeSegment(&pageSegment{first: 0, groups: s.groups[:1], tags: s.tags[:pageTagSize], refs: []pageRef{{}}})},
		{"magic", append([]byte("WPSX"), b[4:]...)},
	} {
		if _, err := decodeSegment(tc.b); !errors.Is(err, errPageMapFormat) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

// memPages is an in-memory pageStore: groups and metadata blobs by id.
type memPages struct {
	key    []byte
	blobs  map[ID][]byte
	groups int
	metas  int
}

func newMemPages() *memPages { return &memPages{key: []byte("test key"), blobs: map[ID][]byte{}} }

func (m *memPages) id(data []byte) ID {
	h := hmac.New(sha256.New, m.key)
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	return id
}

func (m *memPages) store() pageStore {
	return pageStore{
		storeGroup: func(_ context.Context, id ID, data []byte) error {
			if m.id(data) != id {
				return errors.New("group id is not the HMAC of its data")
			}
			m.blobs[id] = append([]byte(nil), data...)
			m.groups++
			return nil
		},
		saveMeta: func(_ context.Context, data []byte) (ID, error) {
			id := m.id(data)
			if _, ok := m.blobs[id]; !ok {
				m.metas++
			}
			m.blobs[id] = append([]byte(nil), data...)
			return id, nil
		},
		stored:   func(id ID) bool { _, ok := m.blobs[id]; return ok },
		buf:      func(context.Context) ([]byte, error) { return make([]byte, 0, groupBytes), nil },
		idHasher: hmac.New(sha256.New, m.key),
	}
}

func (m *memPages) load(_ context.Context, id ID) ([]byte, error) {
	b, ok := m.blobs[id]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", id.Short(), ErrCorrupt)
	}
	return b, nil
}

func buildPages(t *testing.T, m *memPages, pages [][]byte, parent *ID) (ID, *pageMapBuilder) {
	t.Helper()
	ctx := context.Background()
	tagger := &pageTagger{h: hmac.New(sha256.New, []byte("tag key"))}
	var pp *parentPages
	if parent != nil {
		pm, err := loadPageMap(ctx, m.load, *parent)
		if err != nil {
			t.Fatal(err)
		}
		pp = &parentPages{ctx: ctx, load: m.load, m: pm}
	}
	b := newPageMapBuilder(ctx, m.store(), tagger, pp, 4096, uint32(len(pages)))
	for i, p := range pages {
		if err := b.add(uint32(i+1), p); err != nil {
			t.Fatal(err)
		}
	}
	root, err := b.finish()
	if err != nil {
		t.Fatal(err)
	}
	return root, b
}

func rebuild(t *testing.T, m *memPages, root ID) []byte {
	t.Helper()
	var out []byte
	pm, err := eachPageGroup(context.Background(), m.load, root, func(pm *pageMap, g ID, pages []pageLoc) error {
		if out == nil {
			out = make([]byte, int(pm.pageCount)*int(pm.pageSize))
		}
		data, err := m.load(context.Background(), g)
		if err != nil {
			return err
		}
		for _, p := range pages {
			copy(out[int(p.pgno-1)*4096:], data[int(p.slot)*4096:int(p.slot+1)*4096])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pm.pageCount == 0 {
		return []byte{}
	}
	return out
}

// The page map builder stores only changed pages and changed segments,
// and the map always rebuilds the exact image.
func TestPageMapIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	page := func() []byte {
		p := make([]byte, 4096)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		return p
	}
	const n = 5000
	pages := make([][]byte, n)
	for i := range pages {
		pages[i] = page()
	}
	m := newMemPages()
	root1, b1 := buildPages(t, m, pages, nil)
	if b1.NewPages != n || b1.SamePages != 0 {
		t.Fatalf("first build: %d new, %d same", b1.NewPages, b1.SamePages)
	}
	perGroup := groupBytes / 4096
	if want := (n + perGroup - 1) / perGroup; m.groups != want {
		t.Errorf("first build stored %d groups, want %d", m.groups, want)
	}
	img1 := bytes.Join(pages, nil)
	if !bytes.Equal(rebuild(t, m, root1), img1) {
		t.Fatal("first image differs")
	}

	// A "night": 100 scattered pages change and the database grows by 40.
	changed := map[int]bool{}
	for len(changed) < 100 {
		changed[rng.IntN(n)] = true
	}
	for i := range changed {
		pages[i] = page()
	}
	for range 40 {
		pages = append(pages, page())
	}
	groups0, metas0 := m.groups, m.metas
	root2, b2 := buildPages(t, m, pages, &root1)
	if b2.NewPages != 140 || b2.SamePages != n-100 {
		t.Fatalf("second build: %d new, %d same", b2.NewPages, b2.SamePages)
	}
	if g, want := m.groups-groups0, (140+perGroup-1)/perGroup; g != want {
		t.Errorf("second build stored %d groups, want %d", g, want)
	}
	segs := map[int]bool{}
	for i := range changed {
		segs[i/minSegPages] = true
	}
	for i := n; i < n+40; i++ {
		segs[i/minSegPages] = true
	}
	if got, want := m.metas-metas0, len(segs)+1; got != want {
		t.Errorf("second build stored %d metadata blobs, want %d (changed segments + root)", got, want)
	}
	if !bytes.Equal(rebuild(t, m, root2), bytes.Join(pages, nil)) {
		t.Fatal("second image differs")
	}
	if !bytes.Equal(rebuild(t, m, root1), img1) {
		t.Fatal("first image changed")
	}
	// No change at all: nothing new but nothing at all stored.
	groups0, metas0 = m.groups, m.metas
	root3, _ := buildPages(t, m, pages, &root2)
	if root3 != root2 || m.groups != groups0 || m.metas != metas0 {
		t.Errorf("unchanged build stored %d groups and %d blobs", m.groups-groups0, m.metas-metas0)
	}
}

// makeChatDB writes a WAL database with a few indexes, like a chat
// app's, and returns an open handle for further writes.
func makeChatDB(t *testing.T, path string, rows int) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	for _, q := range []string{
		"CREATE TABLE message (_id INTEGER PRIMARY KEY, chat INTEGER, key_id TEXT, status INTEGER, body TEXT)",
		"CREATE UNIQUE INDEX message_key ON message(key_id)",
		"CREATE INDEX message_chat ON message(chat, _id)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	chatRows(t, db, 0, rows)
	return db
}

func chatRows(t *testing.T, db *sql.DB, from, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(from), 9))
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		if _, err := tx.Exec("INSERT INTO message VALUES (?, ?, ?, 0, ?)", i+1, rng.IntN(30), fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64()),
			fmt.Sprintf("message %d about the weekend plans and the photos from %d", i, rng.IntN(1000))); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func checkpoint(t *testing.T, db *sql.DB) {
	t.Helper()
	if _, err := db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		t.Fatal(err)
	}
}

// A database is stored page by page: a night of a few hundred new rows
// adds a few pages, and every restore is the source file byte for byte.
func TestDatabasePagesNightly(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	db := makeChatDB(t, dbPath, 20000)
	checkpoint(t, db)
	s1, err := tr.Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(dbPath)
	if s1.DBCheck != "full" || s1.DBFullCheck == nil {
		t.Errorf("first backup: check %q at %v, want a full check", s1.DBCheck, s1.DBFullCheck)
	}

	chatRows(t, db, 20000, 300)
	if _, err := db.Exec("UPDATE message SET status = 13 WHERE _id > 19700"); err != nil {
		t.Fatal(err)
	}
	checkpoint(t, db)
	second, _ := os.ReadFile(dbPath)
	changed := 0
	for off := 0; off < len(second); off += 4096 {
		if off+4096 > len(first) || !bytes.Equal(first[off:off+4096], second[off:off+4096]) {
			changed++
		}
	}
	s2, err := tr.reopen(t).Backup(ctx, BackupOptions{DB: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	if s2.DBCheck != "quick" || s2.DBFullCheck == nil || !s2.DBFullCheck.Equal(*s1.DBFullCheck) {
		t.Errorf("second backup: check %q, last full %v; want quick, %v", s2.DBCheck, s2.DBFullCheck, s1.DBFullCheck)
	}
	// The changed pages, their segments and the root: nothing else.
	maxNew := int64(changed)*4096 + int64(changed+1)*1024
	if s2.Stats.NewBytes > maxNew || s2.Stats.NewBytes < int64(changed)*4096 {
		t.Errorf("night with %d of %d pages changed stored %d new bytes, want ≤ %d", changed, len(second)/4096, s2.Stats.NewBytes, maxNew)
	}
	t.Logf("%d of %d pages changed; stored %d new bytes, added %d", changed, len(second)/4096, s2.Stats.NewBytes, s2.Stats.AddedBytes)

	for i, c := range []struct {
		snap *Snapshot
		want []byte
	}{{s1, first}, {s2, second}} {
		target := t.TempDir()
		if _, err := tr.reopen(t).Restore(ctx, c.snap, RestoreOptions{Target: target}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(target, "msgstore.db"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, c.want) {
			t.Fatalf("restore %d differs from the source (%d vs %d bytes)", i, len(got), len(c.want))
		}
	}
	res, err := tr.reopen(t).Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatalf("check: %v %v", err, res.Errors)
	}
}

// Prune keeps every blob a database's page map reaches: after the first
// snapshots are forgotten, the last two still name page groups they
// stored (and share most segments), and they restore byte for byte; the
// forgotten nights' own groups and segments are freed.
func TestPruneKeepsPageMaps(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	dbPath := filepath.Join(t.TempDir(), "msgstore.db")
	db := makeChatDB(t, dbPath, 20000)
	checkpoint(t, db)
	var states [][]byte
	var snaps []*Snapshot
	for night := range 4 {
		if night > 0 {
			chatRows(t, db, 20000+night*300, 300)
			if _, err := db.Exec("UPDATE message SET status = ? WHERE _id > ?", night, 19000+night*300); err != nil {
				t.Fatal(err)
			}
			checkpoint(t, db)
		}
		s, err := tr.reopen(t).Backup(ctx, BackupOptions{DB: dbPath})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(dbPath)
		states, snaps = append(states, b), append(snaps, s)
	}
	r := tr.reopen(t)
	// The two kept snapshots share most segments: prune and check read
	// each once.
	if _, err := r.Forget(ctx, Policy{Last: 2}, false); err != nil {
		t.Fatal(err)
	}
	res, err := r.Prune(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesFreed == 0 {
		t.Errorf("prune freed nothing after two nights were forgotten: %+v", res)
	}
	r = tr.reopen(t)
	if cres, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil {
		t.Fatalf("check after prune: %v %q", err, cres.Errors)
	}
	for i := 2; i < 4; i++ {
		target := t.TempDir()
		if _, err := r.Restore(ctx, snaps[i], RestoreOptions{Target: target}); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(target, "msgstore.db"))
		if !bytes.Equal(got, states[i]) {
			t.Fatalf("night %d: the database restored after prune differs from the source", i)
		}
	}
}

// pagesChangedMaps counts differing pages segment by segment, and page by
// page when the two versions' segment sizes differ (a database that grew
// across segPagesFor's steps), with pages only one version has counted.
func TestPagesChangedMaps(t *testing.T) {
	ctx := context.Background()
	blobs := map[ID][]byte{}
	load := func(_ context.Context, id ID) ([]byte, error) {
		b, ok := blobs[id]
		if !ok {
			return nil, errors.New("no such blob")
		}
		return b, nil
	}
	// makeMap stores the segments of a database of count pages whose page
	// p has tag byte tag(p), segPages pages to a segment.
	makeMap := func(count, segPages uint32, tag func(p uint32) byte) *pageMap {
		m := &pageMap{pageSize: 4096, pageCount: count, segPages: segPages}
		for first := uint32(1); first <= count; first += segPages {
			s := &pageSegment{first: first, groups: []ID{{1}}}
			for p := first; p < first+segPages && p <= count; p++ {
				tg := make([]byte, pageTagSize)
				tg[0], tg[1] = tag(p), byte(p)
				s.tags = append(s.tags, tg...)
				s.refs = append(s.refs, pageRef{group: 0, slot: p - first})
			}
			b := encodeSegment(s)
			id := sha256.Sum256(b)
			blobs[id] = b
			m.segments = append(m.segments, id)
		}
		return m
	}
	same := func(uint32) byte { return 0 }
	changed := func(p uint32) byte {
		if p == 5 || p == 40 || p == 41 {
			return 1
		}
		return 0
	}
	for _, c := range []struct {
		name string
		a, b *pageMap
		want int64
	}{
		{"identical", makeMap(100, 32, same), makeMap(100, 32, same), 0},
		{"three changed", makeMap(100, 32, same), makeMap(100, 32, changed), 3},
		{"grown by 10", makeMap(100, 32, same), makeMap(110, 32, same), 10},
		{"shrunk by 10", makeMap(110, 32, same), makeMap(100, 32, same), 10},
		{"other segment size, same pages", makeMap(100, 32, same), makeMap(100, 64, same), 0},
		{"other segment size, changed and grown", makeMap(100, 32, same), makeMap(130, 64, changed), 3 + 30},
	} {
		n, err := pagesChangedMaps(ctx, load, c.a, c.b)
		if err != nil || n != c.want {
			t.Errorf("%s: %d (%v), want %d", c.name, n, err, c.want)
		}
	}
}
