package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc" // registers fastcdc-v1.0.0
	"github.com/klauspost/compress/zstd"

	"github.com/wabackup/wabackup/pkg/gather"
)

// chunkerAlgorithm names the FastCDC variant in go-cdc-chunkers whose
// cut-point masks follow the configured average size.
const chunkerAlgorithm = "fastcdc-v1.0.0"

// BackupOptions say what to back up.
type BackupOptions struct {
	DB string // chat database (SQLite); optional
	// DBs are further chat databases (WhatsApp keeps msgstore.db and
	// wa.db), each pinned, checked and stored as DB is.
	DBs   []string
	Media string // media folder; optional
	Host  string
	Tags  []string
	// Exclude leaves out media paths matching these patterns: a path in
	// the snapshot ("Media/.thumbnails") or a glob over it, or a glob
	// over names at any depth when it has no / ("*.tmp").
	Exclude []string

	// DBCheck is "auto" (the default: the quick check on every run, the
	// full check, FTS indexes included, when the repository holds no
	// snapshot of this database that passed one within
	// DBFullCheckEvery), "full" or "quick" (gather.CheckLevel; FORMAT.md
	// §7.5). The check runs on the pinned state of the source, beside the
	// reading of its pages, split over the cores.
	DBCheck          string
	DBFullCheckEvery time.Duration // default DefaultFullCheckEvery

	// DryRun does everything but store: files and database pages are
	// read, chunked, compressed and encrypted as in a backup, and the
	// returned snapshot's Stats say what would be added, but no pack,
	// index or snapshot is written (the snapshot's ID stays zero). The
	// chunks seen stay in memory until the end (about 100 bytes each).
	DryRun bool

	Workers int // chunk/compress/encrypt workers (default GOMAXPROCS)
	Uploads int // packs uploaded at once (default 2)

	// Warn is called for every file skipped or not read completely.
	Warn func(path string, err error)
	// Progress is called after every file (from one goroutine).
	Progress func(BackupProgress)
}

// BackupProgress is a running count: Files and Bytes of the files done, and
// of the current one the bytes of its chunks done so far.
type BackupProgress struct {
	Files, Bytes, ReadBytes, AddedBytes int64
	Current                             string
}

// ErrPartial is wrapped by the warning list of a partial snapshot.
var ErrPartial = errors.New("snapshot is partial: some files could not be read")

// Backup makes a snapshot. The caller holds a shared lock. The write order
// is packs, then index, then tree, then snapshot; an interruption at any
// point leaves only unreferenced objects, which the next backup adopts.
func (r *Repository) Backup(ctx context.Context, opt BackupOptions) (*Snapshot, error) {
	if len(opt.dbPaths()) == 0 && opt.Media == "" {
		return nil, errors.New("nothing to back up: give --db and/or --media")
	}
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	// What the store holds: packs no index lists are adopted; packs the
	// index lists that are missing or truncated are marked bad, so their
	// chunks count as not stored and are sent again from the source
	// (FORMAT.md §8, "Healing").
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	bad, err := r.markBadPacks(stored)
	if err != nil {
		return nil, err
	}
	adopted, warns, err := r.adoptPacksFrom(ctx, stored)
	if err != nil {
		return nil, err
	}
	for _, w := range append(bad.warn, warns...) {
		if opt.Warn != nil {
			opt.Warn("", errors.New(w))
		}
	}
	b := &backup{r: r, opt: opt, adopted: adopted, start: time.Now(), lost: map[ID]bool{}}
	if len(opt.Exclude) > 0 {
		if b.exclude, err = newSelector(nil, opt.Exclude); err != nil {
			return nil, err
		}
	}
	for _, id := range bad.lost {
		b.lost[id] = true
	}
	if b.opt.Workers <= 0 {
		b.opt.Workers = runtime.GOMAXPROCS(0)
		b.workersAuto = true
	}
	if b.opt.Uploads <= 0 {
		b.opt.Uploads = 2
	}
	if b.opt.Host == "" {
		b.opt.Host, _ = os.Hostname()
	}
	return b.run(ctx)
}

// dbPaths returns DB and DBs, without empty ones.
func (opt *BackupOptions) dbPaths() []string {
	var out []string
	for _, p := range append([]string{opt.DB}, opt.DBs...) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// SourceKey is the Snapshot.SourceKey a backup with these options on
// host makes: a snapshot with the same key is of the same sources.
func (opt *BackupOptions) SourceKey(host string) string {
	s := &Snapshot{Host: host}
	opt.setSources(s)
	return s.SourceKey()
}

// setSources records in s the sources a backup with these options reads:
// its databases (absolute paths, in path order) and its media folder.
func (opt *BackupOptions) setSources(s *Snapshot) {
	var dbs []SnapshotDB
	for _, p := range opt.dbPaths() {
		dbs = append(dbs, SnapshotDB{Path: absOr(p)})
	}
	sort.Slice(dbs, func(i, j int) bool { return dbs[i].Path < dbs[j].Path })
	s.setDatabases(dbs)
	if opt.Media != "" {
		s.Media = absOr(opt.Media)
	}
}

type source struct {
	name string // top-level name in the tree
	abs  string // absolute path of the source
	db   bool
}

type backup struct {
	r       *Repository
	opt     BackupOptions
	adopted []packIndex
	start   time.Time
	lost    map[ID]bool // chunks whose pack is missing or truncated (read-only)
	exclude *selector   // --exclude patterns (nil: none)

	stats    Stats
	warnings atomic.Int64
	partial  atomic.Bool

	// pending holds the chunks of packs that are stored (or being
	// written) but not yet described by an index object. The index cache
	// only ever learns a pack from an index object (writeIndex), so it
	// always mirrors the repository's index objects.
	pendingMu sync.Mutex
	pending   map[ID]struct{}

	newPacksMu sync.Mutex
	newPacks   []packIndex

	bufs chan []byte

	// groups is the pack being filled with page groups (all workers').
	groupsMu sync.Mutex
	groups   *packWriter

	workersAuto bool

	// snaps are the repository's snapshots (for the database check
	// schedule); meta stores the tree's and page maps' blobs.
	snaps []*Snapshot
	meta  *metaSaver
}

func (b *backup) warn(p string, err error, partial bool) {
	b.warnings.Add(1)
	if partial {
		b.partial.Store(true)
	}
	if b.opt.Warn != nil {
		b.opt.Warn(p, err)
	}
}

func (b *backup) run(ctx context.Context) (*Snapshot, error) {
	if b.r.cfg.Version < 2 {
		return nil, fmt.Errorf("repository %s has format version %d: run 'wabackup migrate' once to upgrade it (nothing is re-uploaded): %w", b.r.store.Location(), b.r.cfg.Version, ErrNeedsMigration)
	}
	var srcs []source
	add := func(p string, db bool) error {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		srcs = append(srcs, source{name: filepath.Base(abs), abs: abs, db: db})
		return nil
	}
	for _, p := range b.opt.dbPaths() {
		if err := add(p, true); err != nil {
			return nil, err
		}
	}
	if b.opt.Media != "" {
		if err := add(b.opt.Media, false); err != nil {
			return nil, err
		}
	}
	names := map[string]source{}
	for _, s := range srcs {
		if !validPath(s.name) {
			return nil, fmt.Errorf("cannot back up %q: unsupported name", s.abs)
		}
		if o, dup := names[s.name]; dup {
			if o.abs == s.abs {
				return nil, fmt.Errorf("%s is given twice", s.abs)
			}
			return nil, fmt.Errorf("%s and %s have the same name %q; rename one", o.abs, s.abs, s.name)
		}
		names[s.name] = s
	}
	sort.Slice(srcs, func(i, j int) bool { return comparePaths(srcs[i].name, srcs[j].name) < 0 })

	snap := &Snapshot{Version: 2, Time: b.start.UTC(), Host: b.opt.Host, Tags: b.opt.Tags}
	if u, err := user.Current(); err == nil {
		snap.User = u.Username
	}
	// The databases in path order (the snapshot's DB fields and MoreDBs),
	// filled in by openDB.
	b.opt.setSources(snap)
	dbInfo := snap.Databases()
	parent, err := b.findParent(ctx, snap)
	if err != nil {
		return nil, err
	}
	var ptree *parentTree
	if parent != nil {
		snap.Parent = parent.ID.String()
		tr, err := b.r.OpenTree(ctx, parent)
		if err != nil {
			return nil, err
		}
		defer tr.Close()
		ptree = &parentTree{tr: tr, idx: b.r.idx}
	}

	// The databases' states are pinned before anything else is read, one
	// after the other, so every media file their messages name is at
	// least as old as the walk that follows. Their pages are then read,
	// and each pinned state checked, beside the rest of the backup; the
	// snapshot is only written if every check passes.
	dbs := map[string]*dbSource{}
	for _, s := range srcs {
		if !s.db {
			continue
		}
		var info *SnapshotDB
		for i := range dbInfo {
			if dbInfo[i].Path == s.abs {
				info = &dbInfo[i]
			}
		}
		db, err := b.openDB(ctx, s, parent, snap.Host, info)
		if err != nil {
			return nil, err
		}
		defer db.close()
		dbs[s.name] = db
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	root, err := b.pipeline(ctx, cancel, srcs, dbs, ptree)
	for _, db := range dbs {
		if err != nil {
			db.stopCheck()
		}
		if cerr := db.wait(); err == nil && cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
			return nil, c
		}
		return nil, err
	}
	snap.setDatabases(dbInfo)
	for _, id := range root {
		snap.Root = append(snap.Root, id.String())
	}
	snap.Stats = b.stats
	snap.Warnings = int(b.warnings.Load())
	snap.Partial = b.partial.Load()
	if b.opt.DryRun {
		return snap, nil
	}
	snap.ID = NewRandomID()
	data, err := json.Marshal(snap)
	if err != nil {
		return nil, err
	}
	size, err := b.r.saveObject(ctx, snapshotName(snap.ID), false, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The stored header cannot count itself; the caller's copy does.
	snap.Stats.AddedBytes += size
	return snap, nil
}

// ErrNeedsMigration is returned by Backup on a repository of an older
// format version.
var ErrNeedsMigration = errors.New("repository needs an upgrade")

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// findParent picks the newest snapshot of the same sources on this host.
// It keeps the list of snapshots for the database check schedule.
func (b *backup) findParent(ctx context.Context, snap *Snapshot) (*Snapshot, error) {
	// A damaged snapshot only costs the choice of a parent (at worst,
	// re-reading unchanged files): warn and go on.
	snaps, damaged, err := b.r.loadSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range damaged {
		b.warn("", d.err, false)
	}
	b.snaps = snaps
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		if s.SourceKey() == snap.SourceKey() {
			return s, nil
		}
	}
	return nil, nil
}

// parentTree walks the parent snapshot's tree alongside the new walk. It
// reads the parent's nodes a window at a time and asks the index about
// all their chunks in one query, so an unchanged file costs no lookup of
// its own (a no-change backup of 100,000 small files spent half its time
// in per-file lookups).
type parentTree struct {
	tr      nodeReader
	idx     *Index
	buf     []*Node
	pos     int
	done    bool
	present map[ID]bool // the window's chunks that are indexed
}

// Window bounds: nodes, and chunk ids, read ahead at once.
const (
	parentWindowNodes  = 512
	parentWindowChunks = 8192
)

// find returns the parent's node for p, if any. Calls must come in walk
// order.
func (pt *parentTree) find(p string) *Node {
	if pt == nil {
		return nil
	}
	for {
		if pt.pos == len(pt.buf) && !pt.fill() {
			return nil
		}
		cur := pt.buf[pt.pos]
		switch c := comparePaths(cur.Path, p); {
		case c < 0:
			pt.pos++
		case c == 0:
			return cur
		default:
			return nil
		}
	}
}

// fill reads the next window of the parent's nodes.
func (pt *parentTree) fill() bool {
	if pt.done {
		return false
	}
	clear(pt.buf)
	pt.buf, pt.pos = pt.buf[:0], 0
	var ids []ID
	for len(pt.buf) < parentWindowNodes && len(ids) < parentWindowChunks {
		n, err := pt.tr.Next()
		if err != nil {
			pt.done = true // at the end; a damaged parent only costs re-reading
			break
		}
		pt.buf = append(pt.buf, n)
		for _, c := range n.Chunks {
			if id, err := ParseID(c); err == nil {
				ids = append(ids, id)
			}
		}
	}
	pt.present = pt.idx.hasMany(ids)
	return len(pt.buf) > 0
}

// unchanged reports whether a file can reuse its parent's node p: same
// type, size, mtime and inode, and every chunk still in the index.
func (pt *parentTree) unchanged(p, n *Node) bool {
	if p.Type != TypeFile || p.Size != n.Size || p.MTime != n.MTime || p.Inode != n.Inode {
		return false
	}
	for _, c := range p.Chunks {
		id, err := ParseID(c)
		if err != nil || !pt.present[id] {
			return false
		}
	}
	return true
}

// chunkJob carries one chunk from the reader to a worker and its result
// back to the tree writer.
type chunkJob struct {
	data   []byte
	size   int // len(data) when made (data goes back to the pool)
	hint   compressHint
	id     ID
	hashed bool // id is already set (a group of database pages)
	done   chan error
}

type item struct {
	node  *Node
	chunk *chunkJob
	end   bool
	abort bool
}

// pipeline runs the backup's goroutines: the producer walks the sources
// and cuts files into chunks, the database's pages are read beside it,
// workers hash, compress and encrypt into packs, uploaders store them,
// and assemble writes the directory tree in walk order. It returns the
// root directory's pieces once every pack is stored and indexed.
func (b *backup) pipeline(ctx context.Context, cancel context.CancelCauseFunc, srcs []source, dbs map[string]*dbSource, ptree *parentTree) ([]ID, error) {
	b.pending = map[ID]struct{}{}
	b.newPacks = append(b.newPacks, b.adopted...)
	for _, p := range b.adopted {
		for _, e := range p.entries {
			b.pending[e.ID] = struct{}{}
		}
	}
	nbuf := b.opt.Workers + 1
	b.bufs = make(chan []byte, nbuf)
	for i := 0; i < nbuf; i++ {
		b.bufs <- nil
	}
	jobs := make(chan *chunkJob, b.opt.Workers)
	order := make(chan item, 64)
	uploads := make(chan *packWriter, b.opt.Uploads)
	b.meta = newMetaSaver(b, uploads)
	defer b.meta.close()

	fail := func(err error) { cancel(err) }

	var upWG sync.WaitGroup
	for i := 0; i < b.opt.Uploads; i++ {
		upWG.Add(1)
		go func() {
			defer upWG.Done()
			for pw := range uploads {
				if err := b.upload(ctx, pw); err != nil {
					fail(err)
				}
			}
		}()
	}
	var wkWG sync.WaitGroup
	for i := 0; i < b.opt.Workers; i++ {
		wkWG.Add(1)
		go func() {
			defer wkWG.Done()
			if err := b.worker(ctx, jobs, uploads); err != nil {
				fail(err)
			}
		}()
	}
	var dbWG sync.WaitGroup
	for _, db := range dbs {
		if db.pages == nil {
			continue
		}
		dbWG.Add(1)
		go func() {
			defer dbWG.Done()
			n, err := b.readPages(ctx, db, jobs)
			if err != nil {
				fail(err)
			}
			db.node <- n
		}()
	}
	go func() {
		defer close(order)
		defer close(jobs)
		defer dbWG.Wait() // the page readers send jobs too
		if err := b.produce(ctx, srcs, dbs, ptree, order, jobs); err != nil {
			fail(err)
		}
	}()

	tw := newDirTreeWriter(ctx, b.meta)
	err := b.assemble(ctx, order, tw)
	var root []ID
	if err == nil {
		root, err = tw.finish()
	}
	if err != nil {
		fail(err)
		for range order { // let the producer finish
		}
	}
	wkWG.Wait()
	if err == nil && ctx.Err() == nil {
		err = b.flushGroups(ctx, uploads)
		if err == nil {
			err = b.meta.flush(ctx)
		}
		if err != nil {
			fail(err)
		}
	}
	if b.groups != nil {
		b.groups.discard() // a failed backup's
		b.groups = nil
	}
	close(uploads)
	upWG.Wait()
	if c := context.Cause(ctx); c != nil {
		return nil, c
	}
	if err != nil {
		return nil, err
	}
	// Every pack is stored: describe them (and adopted ones) in an index.
	b.newPacksMu.Lock()
	all := b.newPacks
	b.newPacksMu.Unlock()
	if len(all) > 0 && !b.opt.DryRun {
		if err := b.writeIndex(ctx, all); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// writeIndex writes an index object for packs and counts its size.
func (b *backup) writeIndex(ctx context.Context, packs []packIndex) error {
	_, size, err := b.r.writeIndex(ctx, packs)
	atomic.AddInt64(&b.stats.AddedBytes, size)
	return err
}

// produce walks the sources in tree order and feeds nodes and chunks.
func (b *backup) produce(ctx context.Context, srcs []source, dbs map[string]*dbSource, ptree *parentTree, order chan<- item, jobs chan<- *chunkJob) error {
	cfg := b.r.cfg
	buf := make([]byte, cfg.MaxChunk)
	ck, err := chunkers.NewChunkerBuffer(chunkerAlgorithm, eofReader{}, &chunkers.ChunkerOpts{
		MinSize: cfg.MinChunk, NormalSize: cfg.AvgChunk, MaxSize: cfg.MaxChunk, Key: b.r.keys.chunker[:],
	}, buf)
	if err != nil {
		return fmt.Errorf("chunker: %w", err)
	}
	send := func(it item) error {
		select {
		case order <- it:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	for _, s := range srcs {
		if s.db {
			db := dbs[s.name]
			n, err := db.result(ctx)
			if err != nil {
				return err
			}
			if db.reuse != nil {
				atomic.AddInt64(&b.stats.Unchanged, 1)
			}
			if err := send(item{node: n, end: true}); err != nil {
				return err
			}
			continue
		}
		fi, err := os.Stat(s.abs)
		if err != nil {
			return fmt.Errorf("media folder: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("media folder %s is not a directory", s.abs)
		}
		if err := send(item{node: &Node{Path: s.name, Type: TypeDir, Mode: unixMode(fi.Mode()), MTime: fi.ModTime().UnixNano()}, end: true}); err != nil {
			return err
		}
		err = gather.Walk(ctx, s.abs, func(e gather.Entry) error {
			n := &Node{Path: s.name + "/" + e.Path, Mode: unixMode(e.Mode), MTime: e.ModTime.UnixNano()}
			if b.exclude != nil && b.exclude.excluded(n.Path) {
				atomic.AddInt64(&b.stats.Excluded, 1)
				return fs.SkipDir
			}
			if !validPath(n.Path) {
				b.warn(n.Path, errors.New("file name is not valid UTF-8; skipped"), true)
				return nil
			}
			switch e.Type {
			case gather.Dir:
				n.Type = TypeDir
				return send(item{node: n, end: true})
			case gather.Symlink:
				n.Type, n.Target = TypeSymlink, e.Target
				return send(item{node: n, end: true})
			}
			n.Type, n.Size, n.Inode, n.Dev = TypeFile, e.Size, e.Inode, e.Dev
			if p := ptree.find(n.Path); p != nil && ptree.unchanged(p, n) {
				n.Chunks = p.Chunks
				atomic.AddInt64(&b.stats.Unchanged, 1)
				return send(item{node: n, end: true})
			}
			return b.sendFile(ctx, ck, n, filepath.Join(s.abs, filepath.FromSlash(e.Path)), hintFor(e.Path), order, jobs)
		}, func(p string, err error) {
			skipped := errors.Is(err, gather.ErrSpecialFile) || errors.Is(err, gather.ErrSymlinkEscapes)
			b.warn(path.Join(s.name, p), err, !skipped)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// sendFile reads one file through the chunker. A file that vanishes or
// cannot be read is a warning and is left out of the snapshot.
func (b *backup) sendFile(ctx context.Context, ck *chunkers.Chunker, n *Node, file string, hint compressHint, order chan<- item, jobs chan<- *chunkJob) error {
	f, err := os.Open(file)
	if err != nil {
		b.warn(n.Path, err, true)
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && n.Inode != 0 && sys.Ino != n.Inode {
			b.warn(n.Path, errors.New("file was replaced during the backup"), true)
			return nil
		}
	}
	select {
	case order <- item{node: n}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	ck.Reset(f)
	var size int64
	for {
		data, rerr := ck.Next()
		if rerr != nil && rerr != io.EOF {
			b.warn(n.Path, rerr, true)
			select {
			case order <- item{abort: true}:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			return nil
		}
		if len(data) > 0 {
			var buf []byte
			select {
			case buf = <-b.bufs:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if cap(buf) < len(data)+tagSize {
				// Buffers grow to the chunks they carry (1 MiB on
				// average), not to the largest chunk there can be.
				buf = make([]byte, 0, (len(data)+tagSize+1<<20-1)&^(1<<20-1))
			}
			job := &chunkJob{data: append(buf[:0], data...), size: len(data), hint: hint, done: make(chan error, 1)}
			size += int64(len(data))
			select {
			case order <- item{chunk: job}:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			select {
			case jobs <- job:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	atomic.AddInt64(&b.stats.ReadBytes, size)
	if size != n.Size {
		// The file changed while we read it: keep what we read, which is
		// the content a restore will produce, and say so.
		b.warn(n.Path, fmt.Errorf("file changed size during the backup (%d → %d bytes)", n.Size, size), true)
		n.Size = size
	}
	select {
	case order <- item{end: true}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return nil
}

// assemble writes nodes to the tree in walk order as their chunks finish.
func (b *backup) assemble(ctx context.Context, order <-chan item, tw *dirTreeWriter) error {
	var cur *Node
	var prog BackupProgress
	var partial int64 // bytes of the current file's chunks done so far
	report := func() {
		prog.Files, prog.Bytes = b.stats.Files, b.stats.Bytes+partial
		prog.ReadBytes = atomic.LoadInt64(&b.stats.ReadBytes)
		prog.AddedBytes = atomic.LoadInt64(&b.stats.AddedBytes)
		prog.Current = cur.Path
		b.opt.Progress(prog)
	}
	for it := range order {
		switch {
		case it.node != nil:
			cur, partial = it.node, 0
		case it.chunk != nil:
			select {
			case err := <-it.chunk.done:
				if err != nil {
					return err
				}
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			cur.Chunks = append(cur.Chunks, it.chunk.id.String())
			// Within a large file too (a video of several GiB), the
			// progress moves chunk by chunk.
			if partial += int64(it.chunk.size); b.opt.Progress != nil && !it.end {
				report()
			}
		case it.abort:
			cur = nil
			continue
		}
		if !it.end || cur == nil {
			continue
		}
		switch cur.Type {
		case TypeFile, TypeDB:
			b.stats.Files++
			b.stats.Bytes += cur.Size
		case TypeDir:
			b.stats.Dirs++
		}
		if err := tw.add(cur); err != nil {
			return err
		}
		if b.opt.Progress != nil {
			partial = 0
			report()
		}
		cur = nil
	}
	return nil
}

// worker hashes, deduplicates, compresses and encrypts chunks into its own
// pack, and groups of database pages into the backup's group pack.
func (b *backup) worker(ctx context.Context, jobs <-chan *chunkJob, uploads chan<- *packWriter) (err error) {
	h := b.r.keys.newIDHasher()
	z := newCompressor(chunkWindow)
	defer z.close()
	var pw *packWriter
	defer func() {
		if pw == nil {
			return
		}
		if err != nil || ctx.Err() != nil {
			pw.discard()
			return
		}
		err = b.finishPack(ctx, pw, uploads)
	}()
	for job := range jobs {
		err := b.process(ctx, job, h, z, &pw, uploads)
		b.bufs <- job.data[:0]
		job.done <- err
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *backup) process(ctx context.Context, job *chunkJob, h hash.Hash, z *compressor, pw **packWriter, uploads chan<- *packWriter) error {
	if !job.hashed {
		h.Reset()
		h.Write(job.data)
		h.Sum(job.id[:0])
	}
	if b.r.idx.Has(job.id) || !b.markPending(job.id) {
		return nil
	}
	payload, flags := z.compress(job.data, job.hint)
	if job.hashed {
		// A group of database pages: into the packs of groups, shared
		// by the workers, so a database's pages sit together and a
		// restore of it reads a few long ranges instead of picking
		// groups out from between media files (FORMAT.md §5).
		b.groupsMu.Lock()
		defer b.groupsMu.Unlock()
		pw = &b.groups
	}
	if *pw == nil {
		p, err := b.r.newPackWriter()
		if err != nil {
			return err
		}
		*pw = p
	}
	if err := (*pw).add(job.id, flags, payload, len(job.data)); err != nil {
		return fmt.Errorf("writing pack: %w", err)
	}
	b.countNew(job.id, len(job.data))
	if (*pw).size >= b.r.cfg.PackSize {
		p := *pw
		*pw = nil
		return b.finishPack(ctx, p, uploads)
	}
	return nil
}

// flushGroups hands the last pack of page groups to the uploaders.
func (b *backup) flushGroups(ctx context.Context, uploads chan<- *packWriter) error {
	b.groupsMu.Lock()
	defer b.groupsMu.Unlock()
	if b.groups == nil {
		return nil
	}
	pw := b.groups
	b.groups = nil
	return b.finishPack(ctx, pw, uploads)
}

func (b *backup) finishPack(ctx context.Context, pw *packWriter, uploads chan<- *packWriter) error {
	if _, err := pw.finish(); err != nil {
		pw.discard()
		return fmt.Errorf("writing pack: %w", err)
	}
	select {
	case uploads <- pw:
		return nil
	case <-ctx.Done():
		pw.discard()
		return context.Cause(ctx)
	}
}

// markPending records that chunk id is being stored by this backup; it
// returns false if it already was.
func (b *backup) markPending(id ID) bool {
	b.pendingMu.Lock()
	defer b.pendingMu.Unlock()
	if _, dup := b.pending[id]; dup {
		return false
	}
	b.pending[id] = struct{}{}
	return true
}

// upload stores a finished pack, then makes its chunks visible in the index.
func (b *backup) upload(ctx context.Context, pw *packWriter) error {
	defer pw.discard()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if b.opt.DryRun {
		// Counted, not stored; its chunks stay pending to the end, so
		// none is counted twice.
		atomic.AddInt64(&b.stats.AddedBytes, pw.size)
		return nil
	}
	if err := b.r.putPack(ctx, pw); err != nil {
		return fmt.Errorf("storing pack %s: %w", shortName(packName(pw.id)), err)
	}
	atomic.AddInt64(&b.stats.AddedBytes, pw.size)
	b.newPacksMu.Lock()
	defer b.newPacksMu.Unlock()
	b.newPacks = append(b.newPacks, packIndex{id: pw.id, size: pw.size, entries: pw.entries})
	if len(b.newPacks) >= indexBatch {
		// Write the index as we go, so memory stays bounded and an
		// interrupted backup leaves its packs indexed.
		if err := b.writeIndex(ctx, b.newPacks); err != nil {
			return err
		}
		b.pendingMu.Lock()
		for _, p := range b.newPacks {
			for _, e := range p.entries {
				delete(b.pending, e.ID)
			}
		}
		b.pendingMu.Unlock()
		b.newPacks = nil
	}
	return nil
}

// indexBatch is how many packs one index object describes at most.
const indexBatch = 256

// compressHint says whether a file's chunks are worth compressing.
type compressHint uint8

const (
	hintAuto compressHint = iota
	hintRaw               // already-compressed media: store as is
)

var rawExts = map[string]bool{
	".jpg": true, ".jpeg": true, ".png": true, ".gif": true, ".webp": true, ".heic": true, ".heif": true, ".avif": true,
	".mp4": true, ".m4v": true, ".mov": true, ".3gp": true, ".mkv": true, ".webm": true, ".avi": true,
	".opus": true, ".ogg": true, ".oga": true, ".mp3": true, ".m4a": true, ".aac": true, ".amr": true, ".flac": true,
	".zip": true, ".gz": true, ".tgz": true, ".xz": true, ".zst": true, ".bz2": true, ".7z": true, ".rar": true,
	".apk": true, ".jar": true, ".docx": true, ".xlsx": true, ".pptx": true, ".crypt14": true, ".crypt15": true,
}

func hintFor(name string) compressHint {
	if rawExts[strings.ToLower(path.Ext(name))] {
		return hintRaw
	}
	return hintAuto
}

// compressor decides cheaply whether a chunk shrinks, and compresses it.
type compressor struct {
	fast, def *zstd.Encoder
	out       []byte
}

// newCompressor makes a compressor whose default-level encoder has the
// given window: 1 MiB for chunks, less for the small metadata blobs (the
// window sets most of an encoder's memory).
func newCompressor(window int) *compressor {
	def, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(window), zstd.WithLowerEncoderMem(true))
	return &compressor{def: def}
}

// chunkWindow is the zstd window for chunks and page groups.
const chunkWindow = 1 << 20

func (c *compressor) close() {
	if c.fast != nil {
		c.fast.Close()
	}
	c.def.Close()
}

const sampleSize = 32 << 10

// compress returns the payload to encrypt and its flags. The returned
// slice has room for the GCM tag so it can be sealed in place.
func (c *compressor) compress(data []byte, hint compressHint) ([]byte, uint8) {
	if hint == hintRaw || len(data) < 64 {
		return data, 0
	}
	if len(data) > 2*sampleSize {
		if c.fast == nil {
			// It only ever sees a sampleSize probe: a small window and
			// tables keep it at a fraction of a MiB.
			c.fast, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(sampleSize), zstd.WithLowerEncoderMem(true))
		}
		mid := len(data)/2 - sampleSize/2
		c.out = c.fast.EncodeAll(data[mid:mid+sampleSize], c.out[:0])
		if len(c.out) > sampleSize*31/32 {
			return data, 0 // incompressible: decided on 32 KiB
		}
	}
	need := c.def.MaxEncodedSize(len(data)) + tagSize
	if cap(c.out) < need {
		c.out = make([]byte, 0, need)
	}
	c.out = c.def.EncodeAll(data, c.out[:0])
	if len(c.out) >= len(data) {
		return data, 0
	}
	return c.out, flagZstd
}

// countNew counts a chunk stored by this backup (and whether it heals a
// lost one).
func (b *backup) countNew(id ID, n int) {
	atomic.AddInt64(&b.stats.NewChunks, 1)
	atomic.AddInt64(&b.stats.NewBytes, int64(n))
	if b.lost[id] {
		atomic.AddInt64(&b.stats.Resent, 1)
		atomic.AddInt64(&b.stats.ResentBytes, int64(n))
	}
}
