package archive

// Fuzz targets for every parser of stored or typed-in data. Seeds are
// valid encodings produced by the package's own writers. Run one with e.g.
//
//	go test ./pkg/archive -run '^$' -fuzz '^FuzzDecodeIndex$' -fuzztime 15s
//
// Key slots and recovery keys have their own targets in pkg/keys.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
)

// fuzzKeys is a fixed key set: fuzzing needs reproducible ciphertexts.
func fuzzKeys() *keySet {
	var master keys.Key
	for i := range master {
		master[i] = byte(i*7 + 1)
	}
	return deriveKeys(master)
}

var fuzzPackID = ID{0xfa, 0xce, 0x01}

// fuzzPack builds a real pack with the package's packWriter and returns
// its bytes and entries.
func fuzzPack(t testing.TB, k *keySet, id ID, blobs [][]byte) ([]byte, []blobEntry) {
	t.Helper()
	pw, err := k.newPackWriter(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.discard()
	pw.id, pw.aead = id, k.packAEAD(id) // fixed id for reproducible seeds
	h := k.newIDHasher()
	for i, b := range blobs {
		h.Reset()
		h.Write(b)
		var cid ID
		h.Sum(cid[:0])
		flags := uint8(0)
		if i%2 == 1 {
			flags = flagZstd // the flag is only metadata here
		}
		if err := pw.add(cid, flags, b, len(b)); err != nil {
			t.Fatal(err)
		}
	}
	size, err := pw.finish()
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(pw.f, data); err != nil {
		t.Fatal(err)
	}
	return data, pw.entries
}

// fuzzEncodeTrailer is the trailer plaintext format (FORMAT.md §Packs),
// written independently of packWriter.finish as an oracle.
func fuzzEncodeTrailer(entries []blobEntry) []byte {
	b := []byte("WPK1")
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = append(b, e.Flags)
		for _, v := range []uint32{e.Counter, e.Offset, e.Length, e.RawLen} {
			b = binary.BigEndian.AppendUint32(b, v)
		}
	}
	return b
}

func fuzzSealTrailer(k *keySet, id ID, plain []byte) []byte {
	var nonce [12]byte
	return k.packAEAD(id).Seal(nil, packNonce(&nonce, trailerCounter), plain, trailerAAD)
}

// checkTrailerEntries asserts what a parsed trailer promises.
func checkTrailerEntries(t *testing.T, entries []blobEntry, sealedLen int, packSize int64) {
	t.Helper()
	var next int64
	for i, e := range entries {
		if e.Counter != uint32(i) || int64(e.Offset) != next || e.Length < tagSize || e.RawLen > maxChunkSize || e.Flags&^flagZstd != 0 {
			t.Fatalf("accepted inconsistent entry %d: %+v", i, e)
		}
		next += int64(e.Length)
	}
	if next+int64(sealedLen)+4 != packSize {
		t.Fatalf("accepted entries covering %d bytes of a %d-byte pack with a %d-byte trailer", next, packSize, sealedLen)
	}
}

func fuzzPackSeeds(t testing.TB, k *keySet) (packs [][]byte, entries [][]blobEntry) {
	for _, blobs := range [][][]byte{
		nil,
		{[]byte("a")},
		{[]byte("hello"), bytes.Repeat([]byte("x"), 1000), {}, []byte("chat")},
	} {
		p, e := fuzzPack(t, k, fuzzPackID, blobs)
		packs = append(packs, p)
		entries = append(entries, e)
	}
	return packs, entries
}

// FuzzParseTrailer feeds arbitrary sealed trailers (and pack sizes):
// nothing but the seeds authenticates, and nothing panics.
func FuzzParseTrailer(f *testing.F) {
	k := fuzzKeys()
	packs, _ := fuzzPackSeeds(f, k)
	for _, p := range packs {
		tl := binary.BigEndian.Uint32(p[len(p)-4:])
		f.Add(p[len(p)-4-int(tl):len(p)-4], int64(len(p)))
	}
	f.Add([]byte{}, int64(0))
	f.Add(make([]byte, 16), int64(20))
	f.Fuzz(func(t *testing.T, sealed []byte, packSize int64) {
		entries, err := k.parseTrailer(fuzzPackID, sealed, packSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		checkTrailerEntries(t, entries, len(sealed), packSize)
	})
}

// FuzzParseTrailerPlain seals arbitrary trailer plaintexts with the right
// key, so the structural checks behind the authentication are exercised.
// A trailer that parses re-encodes to exactly the same bytes.
func FuzzParseTrailerPlain(f *testing.F) {
	k := fuzzKeys()
	packs, entries := fuzzPackSeeds(f, k)
	for i, p := range packs {
		f.Add(fuzzEncodeTrailer(entries[i]), int64(len(p)))
	}
	f.Add([]byte("WPK1\x00\x00\x00\x00"), int64(4+8+16))
	f.Add([]byte("WPK1\xff\xff\xff\xff"), int64(1<<40))
	f.Fuzz(func(t *testing.T, plain []byte, packSize int64) {
		sealed := fuzzSealTrailer(k, fuzzPackID, plain)
		got, err := k.parseTrailer(fuzzPackID, sealed, packSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), packName(fuzzPackID)) {
				t.Fatalf("error does not wrap ErrCorrupt and name the pack: %v", err)
			}
			return
		}
		checkTrailerEntries(t, got, len(sealed), packSize)
		if re := fuzzEncodeTrailer(got); !bytes.Equal(re, plain) {
			t.Fatalf("accepted trailer re-encodes differently:\n%x\n%x", plain, re)
		}
	})
}

func fuzzIndexSeeds() [][]packIndex {
	mk := func(n int, base byte) []blobEntry {
		var es []blobEntry
		off := uint32(0)
		for i := range n {
			e := blobEntry{ID: ID{base, byte(i)}, Flags: uint8(i % 2), Counter: uint32(i), Offset: off, Length: 100 + uint32(i), RawLen: 90 + uint32(i)}
			off += e.Length
			es = append(es, e)
		}
		return es
	}
	return [][]packIndex{
		nil,
		{{id: ID{1}, size: 20, entries: []blobEntry{}}},
		{{id: ID{2}, size: 5000, entries: mk(3, 2)}, {id: ID{3}, size: 1 << 32, entries: mk(40, 3)}},
	}
}

func fuzzDecodeAll(data []byte) ([]packIndex, error) {
	var got []packIndex
	err := decodeIndex(bytes.NewReader(data), func(p packIndex) error {
		got = append(got, p)
		return nil
	})
	return got, err
}

// FuzzDecodeIndex: decodeIndex never panics, bounds what it allocates by
// what it reads, and what it accepts survives encodeIndex → decodeIndex
// unchanged.
func FuzzDecodeIndex(f *testing.F) {
	for _, packs := range fuzzIndexSeeds() {
		var b bytes.Buffer
		if err := encodeIndex(&b, packs); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	f.Add([]byte("WIX1\x80\x00"))                                               // non-minimal varint
	f.Add([]byte("WIX1\xff\xff\x3f"))                                           // 1M packs, no data
	f.Add([]byte("WIX1\x01" + strings.Repeat("\x00", 32) + "\x10\xff\xff\x3f")) // 1M blobs, no data
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := fuzzDecodeAll(data)
		if err != nil {
			return // which errors it returns is checked by the tamper tests
		}
		nblobs := 0
		for _, p := range got {
			nblobs += len(p.entries)
			for _, e := range p.entries {
				if uint64(e.Offset)+uint64(e.Length) > uint64(p.size) || e.Length < tagSize || e.RawLen > maxChunkSize || e.Flags&^flagZstd != 0 {
					t.Fatalf("accepted an entry outside its pack: %+v (pack size %d)", e, p.size)
				}
			}
		}
		// Every pack costs ≥34 bytes of input and every blob ≥37.
		if 34*len(got)+37*nblobs > len(data) {
			t.Fatalf("decoded %d packs and %d blobs from %d bytes", len(got), nblobs, len(data))
		}
		var b bytes.Buffer
		if err := encodeIndex(&b, got); err != nil {
			t.Fatal(err)
		}
		again, err := fuzzDecodeAll(b.Bytes())
		if err != nil {
			t.Fatalf("re-encoded index does not decode: %v", err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("round trip changed the index:\n%+v\n%+v", got, again)
		}
	})
}

// TestDecodeIndexHostileCounts: an index object that claims a million
// packs or blobs but holds none costs little memory.
func TestDecodeIndexHostileCounts(t *testing.T) {
	for _, data := range []string{
		"WIX1\x80\x80\x40", // 1M packs
		"WIX1\x01" + strings.Repeat("\x00", 32) + "\x10\x80\x80\x40", // 1M blobs in one pack
		"WIX1\xff\xff\xff\xff\x0f",                                   // 2^32-1 packs: over the bound
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := fuzzDecodeAll([]byte(data))
		runtime.ReadMemStats(&after)
		if !errors.Is(err, errIndexFormat) {
			t.Errorf("%q: %v, want errIndexFormat", data, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%q: allocated %d bytes", data, n)
		}
	}
}

// FuzzParseNode: a node that parses is valid (its path cannot leave the
// restore target) and survives a JSON round trip.
func FuzzParseNode(f *testing.F) {
	for _, n := range []Node{
		{Path: "Media", Type: TypeDir, Mode: 0o755, MTime: 1700000000123456789},
		{Path: "Media/Привет/日本語 😀.jpg", Type: TypeFile, Mode: 0o4640, Size: 5, MTime: 1, Inode: 42, Dev: 7, Chunks: []string{strings.Repeat("ab", 32), strings.Repeat("01", 32)}},
		{Path: "Media/link", Type: TypeSymlink, Mode: 0o777, Target: "../x"},
		{Path: "msgstore.db", Type: TypeFile, Mode: 0o600},
	} {
		b, err := json.Marshal(&n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"p":"../etc/passwd","t":"f","m":420,"mt":0}`,
		`{"p":"/abs","t":"d","m":493,"mt":0}`,
		`{"p":"a/./b","t":"d","m":493,"mt":0}`,
		`{"p":"a","t":"l","m":511,"mt":0,"l":"x","c":["00"]}`,
		`{"p":"a","P":"b","t":"d","m":0,"mt":0}`,
		`{"p":"a","t":"d","m":0,"mt":0} {}`,
		`{"p":"0","t":"f","m":100,"s":0,"m":0,"i":10,"dv":0,"C":[]}`, // case-insensitive and repeated keys
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		n, err := parseNode(line)
		if err != nil {
			return
		}
		if err := n.check(); err != nil {
			t.Fatalf("parsed node fails check: %v", err)
		}
		if !filepath.IsLocal(filepath.FromSlash(n.Path)) {
			t.Fatalf("accepted path %q could leave the restore target", n.Path)
		}
		target := filepath.Join("/restore", filepath.FromSlash(n.Path))
		if !strings.HasPrefix(target, "/restore/") {
			t.Fatalf("path %q joins to %q", n.Path, target)
		}
		// Compared as encodings: "c":[] and no "c" are the same node.
		b1, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		n2, err := parseNode(b1)
		if err != nil {
			t.Fatalf("re-encoded node does not parse: %v\n%s", err, b1)
		}
		if b2, _ := json.Marshal(n2); !bytes.Equal(b1, b2) || len(n.Chunks) != len(n2.Chunks) {
			t.Fatalf("round trip changed the node:\n%s\n%s", b1, b2)
		}
	})
}

// FuzzParseSnapshot: a snapshot that parses has a valid tree reference
// and survives a JSON round trip.
func FuzzParseSnapshot(f *testing.F) {
	s := Snapshot{Version: 1, Time: time.Date(2026, 3, 1, 12, 0, 0, 123, time.UTC), Host: "phone", User: "u", Parent: strings.Repeat("cd", 32),
		DB: "/data/msgstore.db", Media: "/sdcard/Media", Tags: []string{"daily"}, Tree: strings.Repeat("ef", 32), Partial: true, Warnings: 2,
		Stats: Stats{Files: 3, Dirs: 1, Bytes: 100, ReadBytes: 100, NewChunks: 2, NewBytes: 90, AddedBytes: 80, Unchanged: 1}}
	b, err := json.Marshal(&s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"v":1,"time":"2026-01-01T00:00:00+05:30","host":"h","tree":"` + strings.Repeat("0", 64) + `","stats":{}}`))
	f.Add([]byte(`{"v":2,"time":"2026-01-01T00:00:00Z","host":"h","tree":"x","stats":{}}`))
	full := s.Time.Add(-time.Hour)
	s2 := s
	s2.Version, s2.Tree, s2.Root, s2.DBCheck, s2.DBFullCheck = 2, "", []string{strings.Repeat("ab", 32), strings.Repeat("ac", 32)}, "quick", &full
	b, err = json.Marshal(&s2)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseSnapshot(data)
		if err != nil {
			return
		}
		if s.Version == 1 {
			if _, err := ParseID(s.Tree); err != nil {
				t.Fatalf("accepted tree reference %q", s.Tree)
			}
		} else if _, err := s.rootIDs(); err != nil || len(s.Root) == 0 || s.Tree != "" {
			t.Fatalf("accepted root %q, tree %q", s.Root, s.Tree)
		}
		b1, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("parsed snapshot does not marshal: %v", err)
		}
		s2, err := parseSnapshot(b1)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not parse: %v\n%s", err, b1)
		}
		b2, _ := json.Marshal(s2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed the snapshot:\n%s\n%s", b1, b2)
		}
	})
}

// FuzzParseConfig: a config that parses is valid and survives a JSON
// round trip.
func FuzzParseConfig(f *testing.F) {
	c := Config{Format: "wabackup", Version: FormatVersion, ID: strings.Repeat("0a", 16), Created: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		MinChunk: DefaultMinChunk, AvgChunk: DefaultAvgChunk, MaxChunk: DefaultMaxChunk, PackSize: DefaultPackSize}
	c.MAC = c.mac(fuzzKeys())
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(bytes.Replace(b, []byte(`"version": 1`), []byte(`"version": 2`), 1))
	f.Add(bytes.Replace(b, []byte(`"format"`), []byte(`"Format"`), 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error does not say it is about the config: %v", err)
			}
			return
		}
		if err := c.validate(); err != nil {
			t.Fatalf("parsed config is invalid: %v", err)
		}
		b1, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("parsed config does not marshal: %v", err)
		}
		c2, err := ParseConfig(b1)
		if err != nil {
			t.Fatalf("re-encoded config does not parse: %v\n%s", err, b1)
		}
		b2, _ := json.Marshal(c2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed the config:\n%s\n%s", b1, b2)
		}
	})
}

// FuzzParseID: exactly the 64-digit lowercase hex strings parse, and
// String gives them back.
func FuzzParseID(f *testing.F) {
	f.Add(strings.Repeat("0123456789abcdef", 4))
	f.Add(strings.Repeat("0123456789ABCDEF", 4))
	f.Add(strings.Repeat("a", 63))
	f.Add(strings.Repeat("g", 64))
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		b, herr := hex.DecodeString(s)
		valid := herr == nil && len(b) == 32 && s == strings.ToLower(s)
		if (err == nil) != valid {
			t.Fatalf("ParseID(%q): %v, hex says valid=%v", s, err, valid)
		}
		if err == nil && (id.String() != s || !bytes.Equal(id[:], b) || !strings.HasPrefix(s, id.Short())) {
			t.Fatalf("ParseID(%q) = %s", s, id)
		}
	})
}

const fuzzObjName = "index/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func fuzzSealStream(t testing.TB, k *keySet, name string, plain []byte, chunk int) []byte {
	t.Helper()
	var b bytes.Buffer
	sw, err := k.newStreamWriter(&b, name)
	if err != nil {
		t.Fatal(err)
	}
	for p := plain; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := sw.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fuzzOpenStream(k *keySet, name string, r io.Reader) ([]byte, error) {
	sr, err := k.newStreamReader(r, name)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(sr)
}

// FuzzStreamReader decrypts arbitrary bytes as a STREAM object: never a
// panic, always ErrCorrupt (naming the object) unless the input is one of
// the valid seeds; reading byte by byte gives the same result.
func FuzzStreamReader(f *testing.F) {
	k := fuzzKeys()
	for _, n := range []int{0, 1, 100, segmentSize, segmentSize + 1} {
		f.Add(fuzzSealStream(f, k, fuzzObjName, bytes.Repeat([]byte{7}, n), 4096))
	}
	f.Add([]byte{})
	f.Add(make([]byte, saltSize+tagSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := fuzzOpenStream(k, fuzzObjName, bytes.NewReader(data))
		got1, err1 := fuzzOpenStream(k, fuzzObjName, iotest.OneByteReader(bytes.NewReader(data)))
		if (err == nil) != (err1 == nil) || !bytes.Equal(got, got1) {
			t.Fatalf("whole reads: %v; byte reads: %v", err, err1)
		}
		if err != nil && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fuzzObjName)) {
			t.Fatalf("error does not wrap ErrCorrupt and name the object: %v", err)
		}
	})
}

// FuzzStreamRoundTrip: writer → reader gives the plaintext back for any
// length (including exact multiples of the segment size) and any write
// sizes; any single flipped byte, any truncation and the wrong object
// name make the reader fail with ErrCorrupt.
func FuzzStreamRoundTrip(f *testing.F) {
	for _, n := range []uint32{0, 1, segmentSize - 1, segmentSize, segmentSize + 1, 2 * segmentSize, 3 * segmentSize, 3*segmentSize + 1} {
		f.Add([]byte("seed"), n, uint32(1000), uint32(0), byte(0), uint32(0))
	}
	f.Add([]byte{}, uint32(segmentSize), uint32(segmentSize), uint32(16), byte(1), uint32(0))
	f.Add([]byte("x"), uint32(2*segmentSize), uint32(7), uint32(0), byte(0), uint32(segmentSize+saltSize+tagSize))
	f.Fuzz(func(t *testing.T, pattern []byte, n, wchunk, flipAt uint32, mask byte, cut uint32) {
		k := fuzzKeys()
		size := int(n % (3*segmentSize + 2))
		plain := make([]byte, size)
		for i := range plain {
			if len(pattern) > 0 {
				plain[i] = pattern[i%len(pattern)] + byte(i/len(pattern))
			} else {
				plain[i] = byte(i)
			}
		}
		ct := fuzzSealStream(t, k, fuzzObjName, plain, int(wchunk%(2*segmentSize))+1)
		segs := max(1, (size+segmentSize-1)/segmentSize)
		if want := saltSize + size + segs*tagSize; len(ct) != want {
			t.Fatalf("%d plaintext bytes sealed to %d bytes, want %d", size, len(ct), want)
		}
		got, err := fuzzOpenStream(k, fuzzObjName, iotest.HalfReader(bytes.NewReader(ct)))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("round trip of %d bytes: %v (got %d bytes)", size, err, len(got))
		}
		mustFail := func(what string, data []byte, name string) {
			t.Helper()
			_, err := fuzzOpenStream(k, name, bytes.NewReader(data))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: %v, want ErrCorrupt", what, err)
			}
		}
		if mask != 0 {
			bad := bytes.Clone(ct)
			bad[int(flipAt)%len(bad)] ^= mask
			mustFail("flipped byte", bad, fuzzObjName)
		}
		if cut != 0 {
			mustFail("truncated", ct[:int(cut)%len(ct)], fuzzObjName)
		}
		mustFail("appended byte", append(bytes.Clone(ct), 0), fuzzObjName)
		mustFail("wrong name", ct, strings.Replace(fuzzObjName, "index/", "trees/", 1))
	})
}
