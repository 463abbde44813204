package archive

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	_ "modernc.org/sqlite" // the on-disk index cache
)

// blobLoc is where a chunk lives.
type blobLoc struct {
	counter uint32
	offset  uint32
	length  uint32
	rawLen  uint32
	flags   uint8
}

type packInfo struct {
	id   ID
	size int64
}

// Index maps chunk ids to their place in the packs. It lives in a local
// SQLite file (the index cache, FORMAT.md §6), not in memory: lookups read
// pages through a small, fixed page cache, so RAM does not grow with the
// repository. It is safe for concurrent use.
type Index struct {
	db   *sql.DB
	path string
	temp bool

	mu               sync.Mutex // serialises writers
	has, look, hasPk *sql.Stmt

	gen atomic.Uint64 // bumped by every write, so rd sees it
	rd  txReader
}

// txReader answers chunk lookups inside one long read transaction on a
// connection of its own: a lookup is then one B-tree search, without the
// WAL shared-memory locking every autocommit query pays (which made a
// no-change backup of 100,000 small files spend half its time locking).
// It starts a new transaction once the cache was written to, so it sees
// what this process added, and every readTxLookups lookups, so the
// cache's WAL can be checkpointed.
type txReader struct {
	mu        sync.Mutex
	conn      *sql.Conn
	tx        *sql.Tx
	has, look *sql.Stmt
	n         int
	gen       uint64
}

const readTxLookups = 4096

// begin makes sure r holds a current read transaction.
func (r *txReader) begin(x *Index) error {
	if r.tx != nil && r.n < readTxLookups && r.gen == x.gen.Load() {
		return nil
	}
	r.end()
	if r.conn == nil {
		c, err := x.db.Conn(context.Background())
		if err != nil {
			return err
		}
		r.conn = c
	}
	tx, err := r.conn.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	r.gen = x.gen.Load()
	has, err := tx.Prepare("SELECT 1 FROM blobs WHERE id = ?")
	if err == nil {
		r.look, err = tx.Prepare("SELECT b.counter, b.off, b.len, b.raw, b.flags, p.id, p.size FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.id = ?")
	}
	if err != nil {
		tx.Rollback()
		return err
	}
	r.tx, r.has, r.n = tx, has, 0
	return nil
}

func (r *txReader) end() {
	if r.tx != nil {
		r.tx.Rollback()
		r.tx, r.has, r.look = nil, nil, nil
	}
}

func (r *txReader) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.end()
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

const indexSchema = `
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA cache_size=-1024;
CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (id BLOB PRIMARY KEY, pack INTEGER NOT NULL, counter INTEGER NOT NULL,
	off INTEGER NOT NULL, len INTEGER NOT NULL, raw INTEGER NOT NULL, flags INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs (pack, counter);
CREATE TABLE IF NOT EXISTS blobs_alt (id BLOB NOT NULL, pack INTEGER NOT NULL, counter INTEGER NOT NULL,
	off INTEGER NOT NULL, len INTEGER NOT NULL, raw INTEGER NOT NULL, flags INTEGER NOT NULL,
	PRIMARY KEY (id, pack)) WITHOUT ROWID;
`

// openIndex opens (creating) the index cache at path; "" makes a
// temporary one in dir that is removed by close.
func openIndex(path, dir string) (*Index, error) {
	x := &Index{path: path}
	if path == "" {
		f, err := os.CreateTemp(dir, "index-*.sqlite")
		if err != nil {
			return nil, fmt.Errorf("index cache: %w", err)
		}
		f.Close()
		x.path, x.temp = f.Name(), true
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+x.path+"?_pragma=busy_timeout(30000)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	x.db = db
	if _, err := db.Exec(indexSchema); err != nil {
		db.Close()
		if !x.temp {
			// A damaged cache is rebuilt from the repository.
			removeDB(x.path)
			return openIndex(path, dir)
		}
		return nil, fmt.Errorf("index cache %s: %w", x.path, err)
	}
	for _, p := range []struct {
		s **sql.Stmt
		q string
	}{
		{&x.has, "SELECT 1 FROM blobs WHERE id = ?"},
		{&x.look, "SELECT b.counter, b.off, b.len, b.raw, b.flags, p.id, p.size FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.id = ?"},
		{&x.hasPk, "SELECT 1 FROM packs WHERE id = ?"},
	} {
		if *p.s, err = db.Prepare(p.q); err != nil {
			db.Close()
			return nil, err
		}
	}
	return x, nil
}

func removeDB(p string) {
	for _, s := range []string{"", "-wal", "-shm"} {
		os.Remove(p + s)
	}
}

func (x *Index) close() error {
	if x == nil || x.db == nil {
		return nil
	}
	x.rd.close()
	err := x.db.Close()
	if x.temp {
		removeDB(x.path)
	}
	return err
}

// reset empties the cache.
func (x *Index) reset() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	defer x.gen.Add(1)
	_, err := x.db.Exec("DELETE FROM blobs; DELETE FROM blobs_alt; DELETE FROM packs; DELETE FROM files;")
	return err
}

// addPacks records packs (and, if file is set, that the index object file
// has been loaded) in one transaction.
func (x *Index) addPacks(packs []packIndex, file string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	defer x.gen.Add(1)
	tx, err := x.db.Begin()
	if err != nil {
		return fmt.Errorf("index cache: %w", err)
	}
	defer tx.Rollback()
	insPack, err := tx.Prepare("INSERT INTO packs (id, size) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET size = excluded.size RETURNING seq")
	if err != nil {
		return err
	}
	insBlob, err := tx.Prepare("INSERT INTO blobs (id, pack, counter, off, len, raw, flags) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
	if err != nil {
		return err
	}
	// A chunk stored in another pack too (a healing backup sent it again,
	// two backups sent it at once): the other copy is kept as an
	// alternative, for when the first one's pack is missing or damaged.
	insAlt, err := tx.Prepare("INSERT OR IGNORE INTO blobs_alt (id, pack, counter, off, len, raw, flags) SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE id = ? AND pack = ?)")
	if err != nil {
		return err
	}
	for _, p := range packs {
		var seq int64
		if err := insPack.QueryRow(p.id[:], p.size).Scan(&seq); err != nil {
			return fmt.Errorf("index cache: %w", err)
		}
		for _, e := range p.entries {
			res, err := insBlob.Exec(e.ID[:], seq, e.Counter, e.Offset, e.Length, e.RawLen, e.Flags)
			if err != nil {
				return fmt.Errorf("index cache: %w", err)
			}
			if n, err := res.RowsAffected(); err == nil && n == 0 {
				if _, err := insAlt.Exec(e.ID[:], seq, e.Counter, e.Offset, e.Length, e.RawLen, e.Flags, e.ID[:], seq); err != nil {
					return fmt.Errorf("index cache: %w", err)
				}
			}
		}
	}
	if file != "" {
		if _, err := tx.Exec("INSERT OR IGNORE INTO files (name) VALUES (?)", file); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Has reports whether the chunk is stored.
func (x *Index) Has(id ID) bool {
	var one int
	x.rd.mu.Lock()
	defer x.rd.mu.Unlock()
	if x.rd.begin(x) != nil {
		return x.has.QueryRow(id[:]).Scan(&one) == nil
	}
	x.rd.n++
	return x.rd.has.QueryRow(id[:]).Scan(&one) == nil
}

// hasMany returns which of ids are stored, asking in batches.
func (x *Index) hasMany(ids []ID) map[ID]bool {
	out := make(map[ID]bool, len(ids))
	const batch = 500
	for len(ids) > 0 {
		n := min(len(ids), batch)
		if err := x.hasBatch(ids[:n], out); err != nil {
			// Fall back to one query each.
			for _, id := range ids[:n] {
				if x.Has(id) {
					out[id] = true
				}
			}
		}
		ids = ids[n:]
	}
	return out
}

func (x *Index) hasBatch(ids []ID, out map[ID]bool) error {
	args := make([]any, len(ids))
	for i := range ids {
		args[i] = ids[i][:]
	}
	q := "SELECT id FROM blobs WHERE id IN (?" + strings.Repeat(",?", len(ids)-1) + ")"
	x.rd.mu.Lock()
	defer x.rd.mu.Unlock()
	if err := x.rd.begin(x); err != nil {
		return err
	}
	x.rd.n += len(ids)
	rows, err := x.rd.tx.Query(q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return err
		}
		var id ID
		if copy(id[:], b) == len(id) {
			out[id] = true
		}
	}
	return rows.Err()
}

func (x *Index) lookup(id ID) (blobLoc, packInfo, bool) {
	var l blobLoc
	var p packInfo
	var pid []byte
	look := x.look
	x.rd.mu.Lock()
	defer x.rd.mu.Unlock()
	if x.rd.begin(x) == nil {
		x.rd.n++
		look = x.rd.look
	}
	err := look.QueryRow(id[:]).Scan(&l.counter, &l.offset, &l.length, &l.rawLen, &l.flags, &pid, &p.size)
	if err != nil || len(pid) != len(p.id) {
		return l, p, false
	}
	copy(p.id[:], pid)
	return l, p, true
}

func (x *Index) hasPack(id ID) bool {
	var one int
	return x.hasPk.QueryRow(id[:]).Scan(&one) == nil
}

// Len returns the number of chunks and packs.
func (x *Index) Len() (chunks, packs int) {
	x.db.QueryRow("SELECT count(*) FROM blobs").Scan(&chunks)
	x.db.QueryRow("SELECT count(*) FROM packs").Scan(&packs)
	return
}

// files returns the names of the index objects the cache holds.
func (x *Index) files() (map[string]bool, error) {
	rows, err := x.db.Query("SELECT name FROM files")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out[n] = true
	}
	return out, rows.Err()
}

// allPacks lists the indexed packs (a few dozen bytes per 32 MiB pack).
func (x *Index) allPacks() ([]packInfo, error) {
	rows, err := x.db.Query("SELECT id, size FROM packs ORDER BY seq")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []packInfo
	for rows.Next() {
		var p packInfo
		var id []byte
		if err := rows.Scan(&id, &p.size); err != nil {
			return nil, err
		}
		copy(p.id[:], id)
		out = append(out, p)
	}
	return out, rows.Err()
}

// eachPack calls fn for every indexed pack with the blobs the index
// locates in it, in counter order, streaming: one pack at a time in RAM.
func (x *Index) eachPack(fn func(p packInfo, entries []blobEntry) error) error {
	rows, err := x.db.Query(`SELECT p.id, p.size, b.id, b.counter, b.off, b.len, b.raw, b.flags
		FROM packs p LEFT JOIN blobs b ON b.pack = p.seq ORDER BY p.seq, b.counter`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var cur packInfo
	var entries []blobEntry
	started := false
	for rows.Next() {
		var pid, bid []byte
		var p packInfo
		var e blobEntry
		var counter, off, ln, raw, flags sql.NullInt64
		if err := rows.Scan(&pid, &p.size, &bid, &counter, &off, &ln, &raw, &flags); err != nil {
			return err
		}
		copy(p.id[:], pid)
		if !started || p.id != cur.id {
			if started {
				if err := fn(cur, entries); err != nil {
					return err
				}
			}
			cur, entries, started = p, nil, true
		}
		if bid == nil {
			continue
		}
		copy(e.ID[:], bid)
		e.Counter, e.Offset, e.Length, e.RawLen, e.Flags = uint32(counter.Int64), uint32(off.Int64), uint32(ln.Int64), uint32(raw.Int64), uint8(flags.Int64)
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if started {
		return fn(cur, entries)
	}
	return nil
}

// packIndex is one pack's part of an index object.
type packIndex struct {
	id      ID
	size    int64
	entries []blobEntry
}

const indexMagic = "WIX1"

// Bounds a decoder enforces (a hostile or damaged object must not make us
// allocate without limit).
const (
	maxPacksPerIndex = 1 << 20
	maxBlobsPerPack  = 1 << 20
	maxPackSize      = 1 << 32
)

func encodeIndex(w io.Writer, packs []packIndex) error {
	bw := bufio.NewWriter(w)
	var buf []byte
	buf = append(buf, indexMagic...)
	buf = binary.AppendUvarint(buf, uint64(len(packs)))
	for _, p := range packs {
		buf = append(buf, p.id[:]...)
		buf = binary.AppendUvarint(buf, uint64(p.size))
		buf = binary.AppendUvarint(buf, uint64(len(p.entries)))
		for _, e := range p.entries {
			buf = append(buf, e.ID[:]...)
			buf = append(buf, e.Flags)
			buf = binary.AppendUvarint(buf, uint64(e.Counter))
			buf = binary.AppendUvarint(buf, uint64(e.Offset))
			buf = binary.AppendUvarint(buf, uint64(e.Length))
			buf = binary.AppendUvarint(buf, uint64(e.RawLen))
			if len(buf) > 32<<10 {
				if _, err := bw.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	return bw.Flush()
}

var errIndexFormat = errors.New("malformed index")

// decodeIndex parses an index object's plaintext, calling fn per pack.
// A failure of r itself (an authentication or read error) is returned as
// it is; errIndexFormat means r's data is not a valid index.
func decodeIndex(r io.Reader, fn func(packIndex) error) error {
	src := &srcErr{r: r}
	br := bufio.NewReader(src)
	bad := func() error {
		if src.err != nil {
			return src.err
		}
		return errIndexFormat
	}
	var magic [4]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil || string(magic[:]) != indexMagic {
		return bad()
	}
	uv := func(max uint64) (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err != nil || v > max {
			return 0, bad()
		}
		return v, nil
	}
	np, err := uv(maxPacksPerIndex)
	if err != nil {
		return err
	}
	for i := uint64(0); i < np; i++ {
		var p packIndex
		if _, err := io.ReadFull(br, p.id[:]); err != nil {
			return bad()
		}
		size, err := uv(maxPackSize)
		if err != nil {
			return err
		}
		p.size = int64(size)
		ne, err := uv(maxBlobsPerPack)
		if err != nil {
			return err
		}
		p.entries = make([]blobEntry, 0, min(ne, 4096))
		for j := uint64(0); j < ne; j++ {
			var e blobEntry
			if _, err := io.ReadFull(br, e.ID[:]); err != nil {
				return bad()
			}
			if e.Flags, err = br.ReadByte(); err != nil || e.Flags&^flagZstd != 0 {
				return bad()
			}
			var v [4]uint64
			for k := range v {
				if v[k], err = uv(1<<32 - 1); err != nil {
					return err
				}
			}
			e.Counter, e.Offset, e.Length, e.RawLen = uint32(v[0]), uint32(v[1]), uint32(v[2]), uint32(v[3])
			if uint64(e.Offset)+uint64(e.Length) > size || e.Length < tagSize || e.RawLen > maxChunkSize {
				return errIndexFormat
			}
			p.entries = append(p.entries, e)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		if src.err != nil {
			return src.err
		}
		return fmt.Errorf("%w: trailing data", errIndexFormat)
	}
	return nil
}

// packEntries returns the blobs the index locates in one pack.
func (x *Index) packEntries(id ID) ([]blobEntry, error) {
	rows, err := x.db.Query(`SELECT b.id, b.counter, b.off, b.len, b.raw, b.flags FROM blobs b
		JOIN packs p ON p.seq = b.pack WHERE p.id = ? ORDER BY b.counter`, id[:])
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
		copy(e.ID[:], bid)
		out = append(out, e)
	}
	return out, rows.Err()
}

// usedSet is an on-disk set of chunk ids (for prune), kept in the index
// cache so its size does not cost RAM.
type usedSet struct {
	x   *Index
	tx  *sql.Tx
	ins *sql.Stmt
	n   int
}

func (x *Index) newUsedSet() (*usedSet, error) {
	if _, err := x.db.Exec("CREATE TABLE IF NOT EXISTS used (id BLOB PRIMARY KEY) WITHOUT ROWID; DELETE FROM used;"); err != nil {
		return nil, err
	}
	return &usedSet{x: x}, nil
}

func (u *usedSet) add(id ID) error {
	if u.tx == nil {
		tx, err := u.x.db.Begin()
		if err != nil {
			return err
		}
		ins, err := tx.Prepare("INSERT OR IGNORE INTO used (id) VALUES (?)")
		if err != nil {
			tx.Rollback()
			return err
		}
		u.tx, u.ins = tx, ins
	}
	if _, err := u.ins.Exec(id[:]); err != nil {
		return err
	}
	if u.n++; u.n%(1<<14) == 0 {
		return u.flush()
	}
	return nil
}

// addNew adds id and reports whether it was not in the set yet (one
// statement in the open transaction, so it sees what was added before).
func (u *usedSet) addNew(id ID) (bool, error) {
	if u.tx == nil {
		tx, err := u.x.db.Begin()
		if err != nil {
			return false, err
		}
		ins, err := tx.Prepare("INSERT OR IGNORE INTO used (id) VALUES (?)")
		if err != nil {
			tx.Rollback()
			return false, err
		}
		u.tx, u.ins = tx, ins
	}
	res, err := u.ins.Exec(id[:])
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, err
	}
	if u.n++; u.n%(1<<14) == 0 {
		if err := u.flush(); err != nil {
			return false, err
		}
	}
	return n == 1, nil
}

func (u *usedSet) flush() error {
	if u.tx == nil {
		return nil
	}
	err := u.tx.Commit()
	u.tx, u.ins = nil, nil
	return err
}

func (u *usedSet) has(id ID) bool {
	var one int
	return u.x.db.QueryRow("SELECT 1 FROM used WHERE id = ?", id[:]).Scan(&one) == nil
}

func (u *usedSet) drop() {
	u.flush()
	u.x.db.Exec("DROP TABLE IF EXISTS used")
}

// blobAt is one stored copy of a chunk.
type blobAt struct {
	loc  blobLoc
	pack packInfo
}

// alternatives returns the other stored copies of a chunk (in packs other
// than the one lookup gives).
func (x *Index) alternatives(id ID) []blobAt {
	rows, err := x.db.Query("SELECT a.counter, a.off, a.len, a.raw, a.flags, p.id, p.size FROM blobs_alt a JOIN packs p ON p.seq = a.pack WHERE a.id = ?", id[:])
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []blobAt
	for rows.Next() {
		var b blobAt
		var pid []byte
		if rows.Scan(&b.loc.counter, &b.loc.offset, &b.loc.length, &b.loc.rawLen, &b.loc.flags, &pid, &b.pack.size) == nil && len(pid) == len(b.pack.id) {
			copy(b.pack.id[:], pid)
			out = append(out, b)
		}
	}
	return out
}

// markBad stops the index from locating chunks in the given packs (the
// store no longer has them, or has them truncated): a chunk with a copy
// in another pack is located there instead; one without is no longer
// "stored", so a backup sends it again. It returns those lost chunks. The
// packs stay listed (so they are not adopted again); their locations move
// to the alternatives.
func (x *Index) markBad(bad []ID) (lost []ID, lostIn map[ID]int, err error) {
	lostIn = map[ID]int{}
	if len(bad) == 0 {
		return nil, lostIn, nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	defer x.gen.Add(1)
	tx, err := x.db.Begin()
	if err != nil {
		return nil, nil, fmt.Errorf("index cache: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("CREATE TEMP TABLE IF NOT EXISTS bad (seq INTEGER PRIMARY KEY); DELETE FROM bad"); err != nil {
		return nil, nil, err
	}
	for _, id := range bad {
		if _, err := tx.Exec("INSERT OR IGNORE INTO bad (seq) SELECT seq FROM packs WHERE id = ?", id[:]); err != nil {
			return nil, nil, err
		}
	}
	rows, err := tx.Query("SELECT b.id, p.id FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.pack IN (SELECT seq FROM bad)")
	if err != nil {
		return nil, nil, err
	}
	var ids, packOf [][]byte
	for rows.Next() {
		var b, pk []byte
		if err := rows.Scan(&b, &pk); err != nil {
			rows.Close()
			return nil, nil, err
		}
		ids = append(ids, b)
		packOf = append(packOf, pk)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	for i, id := range ids {
		// Keep the bad copy as an alternative, then take a good one, if
		// any, as the chunk's location.
		if _, err := tx.Exec("INSERT OR IGNORE INTO blobs_alt SELECT id, pack, counter, off, len, raw, flags FROM blobs WHERE id = ?", id); err != nil {
			return nil, nil, err
		}
		if _, err := tx.Exec("DELETE FROM blobs WHERE id = ?", id); err != nil {
			return nil, nil, err
		}
		res, err := tx.Exec(`INSERT INTO blobs SELECT id, pack, counter, off, len, raw, flags FROM blobs_alt
			WHERE id = ? AND pack NOT IN (SELECT seq FROM bad) LIMIT 1`, id)
		if err != nil {
			return nil, nil, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var c, pk ID
			copy(c[:], id)
			copy(pk[:], packOf[i])
			lost = append(lost, c)
			lostIn[pk]++
		} else if _, err := tx.Exec("DELETE FROM blobs_alt WHERE id = ? AND pack = (SELECT pack FROM blobs WHERE id = ?)", id, id); err != nil {
			return nil, nil, err
		}
	}
	return lost, lostIn, tx.Commit()
}
