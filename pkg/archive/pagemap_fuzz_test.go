package archive

import (
	"bytes"
	"testing"
)

// FuzzDecodePageMap: the root decoder never panics, and what it accepts
// re-encodes to the same bytes (one encoding per page map).
func FuzzDecodePageMap(f *testing.F) {
	f.Add(encodePageMap(&pageMap{pageSize: 4096, pageCount: 40, segPages: 32, segments: []ID{{1}, {2}}}))
	f.Add(encodePageMap(&pageMap{pageSize: 512, pageCount: 0, segPages: 32}))
	f.Add([]byte("WPM1\x80\x20\x01\x20\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodePageMap(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodePageMap(m), b) {
			t.Fatalf("accepted a non-canonical page map: %x", b)
		}
		if uint64(len(m.segments))*uint64(m.segPages) < uint64(m.pageCount) {
			t.Fatalf("segments do not cover the pages: %+v", m)
		}
	})
}

// FuzzDecodeSegment: the segment decoder never panics, what it accepts
// re-encodes to the same bytes, and every reference is in range.
func FuzzDecodeSegment(f *testing.F) {
	f.Add(encodeSegment(testSegment(32, 3)))
	f.Add(encodeSegment(testSegment(1, 1)))
	f.Add([]byte("WPS1\x01\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSegment(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeSegment(s), b) {
			t.Fatalf("accepted a non-canonical segment: %x", b)
		}
		if len(s.tags) != len(s.refs)*pageTagSize {
			t.Fatalf("%d tag bytes for %d pages", len(s.tags), len(s.refs))
		}
		for _, r := range s.refs {
			if int(r.group) >= len(s.groups) {
				t.Fatalf("reference to group %d of %d", r.group, len(s.groups))
			}
		}
	})
}
