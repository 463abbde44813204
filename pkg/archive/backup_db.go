package archive

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wabackup/wabackup/pkg/gather"
)

// DefaultFullCheckEvery is how old the last full integrity check of a
// database may be before DBCheck "auto" runs one again.
const DefaultFullCheckEvery = 7 * 24 * time.Hour

// dbSource is one chat database of a backup: either the parent's node,
// reused because nothing was written since, or a pinned view of its pages
// with an integrity check running on that same state.
type dbSource struct {
	src    source
	stamp0 DBStamp
	info   *SnapshotDB // what the snapshot says of it, filled in here

	reuse *Node // the parent's node, when the database is unchanged

	pages      *gather.DBPages
	parentRoot *ID // the parent's page map, if it has one
	node       chan *Node
	checkDone  chan error
	stopCheck  context.CancelFunc
	checked    bool
}

// openDB decides how the database is backed up and, unless the parent's
// copy can be reused, pins its state and starts the check on it.
func (b *backup) openDB(ctx context.Context, s source, parent *Snapshot, host string, info *SnapshotDB) (*dbSource, error) {
	stamp0, err := stampDB(s.abs)
	if err != nil {
		return nil, fmt.Errorf("chat database %s: %w", s.abs, err)
	}
	d := &dbSource{src: s, stamp0: stamp0, info: info, node: make(chan *Node, 1), checkDone: make(chan error, 1), stopCheck: func() {}}
	mode := b.opt.DBCheck
	if mode == "" {
		mode = "auto"
	}
	// The parent's database node: reused as it is when nothing was
	// written since (same stamp) and its check was strict enough, else
	// the page map new pages are compared with.
	var pnode *Node
	var pinfo SnapshotDB
	if parent != nil {
		for _, pd := range parent.Databases() {
			if pd.Path == s.abs {
				pinfo = pd
			}
		}
		if pnode, err = b.r.findTopNode(ctx, parent, s.name); err != nil {
			return nil, err
		}
		if pnode != nil && pnode.Type != TypeDB {
			pnode = nil // a version-1 copy: stored again, as pages
		}
	}
	if pnode != nil && pinfo.Stamp != nil && *pinfo.Stamp == stamp0 && pinfo.Check != "" &&
		(mode != "full" || pinfo.Check == "full") && b.pageMapStored(pnode) {
		d.reuse = pnode
		info.Stamp = &stamp0
		info.Check, info.FullCheck, info.Unchecked = pinfo.Check, pinfo.FullCheck, pinfo.Unchecked
		d.node <- pnode
		d.checkDone <- nil
		return d, nil
	}
	if pnode != nil {
		if id, err := ParseID(pnode.PageMap); err == nil {
			d.parentRoot = &id
		}
	}
	full := mode == "full"
	lastFull := b.lastFullCheck(host, s.abs)
	if mode == "auto" {
		every := b.opt.DBFullCheckEvery
		if every <= 0 {
			every = DefaultFullCheckEvery
		}
		full = lastFull == nil || b.start.Sub(*lastFull) >= every
	}
	pages, err := gather.OpenDBPages(ctx, s.abs)
	if err != nil {
		return nil, err
	}
	d.pages = pages
	level := gather.CheckQuick
	info.FullCheck = lastFull
	if full {
		level = gather.CheckFull
		t := b.start.UTC()
		info.FullCheck = &t
		if b.workersAuto && b.opt.Workers > 1 {
			// The full check's largest part is one long job: leave it
			// a core, or it ends up last and alone.
			b.opt.Workers--
		}
	}
	info.Check, info.Unchecked = level.String(), pages.Unchecked(level)
	checkCtx, stop := context.WithCancel(ctx)
	d.stopCheck = stop
	go func() { d.checkDone <- pages.Check(checkCtx, level) }()
	return d, nil
}

// lastFullCheck returns when the database at path (on host) last passed a
// full integrity check in a snapshot of the repository.
func (b *backup) lastFullCheck(host, path string) *time.Time {
	var last *time.Time
	for _, s := range b.snaps {
		if s.Host != host {
			continue
		}
		for _, d := range s.Databases() {
			if d.Path != path {
				continue
			}
			t := d.FullCheck
			if t == nil && s.Version == 1 && d.Check == "full" {
				t = &s.Time
			}
			if t != nil && (last == nil || t.After(*last)) {
				last = t
			}
		}
	}
	return last
}

// pageMapStored reports whether a reused database node's page map root
// is still indexed. (Its segments and groups are kept by prune as long as
// the root's snapshot lives; reading them all would cost a request per
// segment on a remote store.)
func (b *backup) pageMapStored(n *Node) bool {
	root, err := ParseID(n.PageMap)
	return err == nil && b.r.idx.Has(root)
}

// result waits for the database's node.
func (d *dbSource) result(ctx context.Context) (*Node, error) {
	select {
	case n := <-d.node:
		if n == nil {
			return nil, context.Cause(ctx)
		}
		return n, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// wait returns the check's result (once).
func (d *dbSource) wait() error {
	if d.checked {
		return nil
	}
	d.checked = true
	return <-d.checkDone
}

func (d *dbSource) close() {
	d.stopCheck()
	d.wait()
	if d.pages != nil {
		d.pages.Close()
	}
}

// readPages reads the pinned database page by page into a page map whose
// new groups go to the workers, and returns the database's node.
func (b *backup) readPages(ctx context.Context, d *dbSource, jobs chan<- *chunkJob) (*Node, error) {
	fi, err := os.Stat(d.src.abs)
	if err != nil {
		return nil, fmt.Errorf("chat database %s: %w", d.src.abs, err)
	}
	// The parent's page map, through the metadata cache: a nightly run
	// with the cache warm reads none of it from the store, a cold one
	// reads its segments in planned ranges, a window at a time.
	br := b.r.newBlobReader()
	defer br.close()
	var parent *parentPages
	if d.parentRoot != nil {
		if m, err := loadPageMap(ctx, br.meta, *d.parentRoot); err == nil {
			parent = &parentPages{ctx: ctx, load: br.meta, m: m, prefetch: func(ids []ID) { b.r.prefetchMeta(ctx, ids, nil) }}
		}
	}
	st := pageStore{
		storeGroup: func(ctx context.Context, id ID, data []byte) error {
			job := &chunkJob{data: data, hint: hintAuto, id: id, hashed: true, done: make(chan error, 1)}
			select {
			case jobs <- job:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		},
		saveMeta: b.meta.save,
		stored:   b.r.idx.Has,
		buf: func(ctx context.Context) ([]byte, error) {
			select {
			case buf := <-b.bufs:
				if cap(buf) < groupBytes+tagSize {
					buf = make([]byte, 0, groupBytes+tagSize)
				}
				return buf, nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
		idHasher: b.r.keys.newIDHasher(),
	}
	pageSize := uint32(d.pages.PageSize())
	count := d.pages.PageCount()
	pb := newPageMapBuilder(ctx, st, b.r.keys.newPageTagger(), parent, pageSize, count)
	var pgno uint32
	err = d.pages.Pages(ctx, func(n uint32, data []byte) error {
		pgno++
		if n != pgno {
			return fmt.Errorf("chat database %s: page %d came where page %d was expected", d.src.abs, n, pgno)
		}
		return pb.add(n, data)
	})
	if err == nil && pgno != count {
		err = fmt.Errorf("chat database %s: read %d pages, it has %d", d.src.abs, pgno, count)
	}
	if err != nil {
		if pb.group != nil {
			b.bufs <- pb.group[:0]
		}
		return nil, err
	}
	root, err := pb.finish()
	if err != nil {
		return nil, err
	}
	size := int64(count) * int64(pageSize)
	atomic.AddInt64(&b.stats.ReadBytes, size)
	if stamp1, err := stampDB(d.src.abs); err == nil && stamp1 == d.stamp0 {
		d.info.Stamp = &d.stamp0 // nothing was written since the pin
	}
	return &Node{Path: d.src.name, Type: TypeDB, Mode: unixMode(fi.Mode()), Size: size, MTime: fi.ModTime().UnixNano(), PageMap: root.String()}, nil
}

// DBStamp identifies a state of the chat database file (and its -wal):
// if it is the same at the next backup, nothing was written in between.
type DBStamp struct {
	Size     int64  `json:"size"`
	MTime    int64  `json:"mtime"`
	Inode    uint64 `json:"inode"`
	WALSize  int64  `json:"wal_size"`
	WALMTime int64  `json:"wal_mtime"`
}

func stampDB(path string) (DBStamp, error) {
	var st DBStamp
	fi, err := os.Stat(path)
	if err != nil {
		return st, err
	}
	st.Size, st.MTime = fi.Size(), fi.ModTime().UnixNano()
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Inode = sys.Ino
	}
	// An empty -wal holds nothing (a read-only reader may create one).
	if wi, err := os.Stat(path + "-wal"); err == nil && wi.Size() > 0 {
		st.WALSize, st.WALMTime = wi.Size(), wi.ModTime().UnixNano()
	}
	return st, nil
}
