package noise

import (
	"bytes"
	"crypto/rand"
	"testing"
)

var fuzzPriv, fuzzPub, _ = Ristretto255.Generate(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))

// FuzzReadRequest: any bytes a client sends are refused or read, never a
// panic; what reads answers.
func FuzzReadRequest(f *testing.F) {
	m, _, _ := WriteRequest(Ristretto255, fuzzPub, []byte("p"), []byte("hello"), rand.Reader)
	f.Add(m)
	f.Add(m[:32])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		pt, r, err := ReadRequest(Ristretto255, fuzzPriv, fuzzPub, []byte("p"), msg)
		if err != nil {
			return
		}
		if len(pt) != len(msg)-32-tagLen {
			t.Fatalf("a payload of %d bytes from %d", len(pt), len(msg))
		}
		if _, err := r.WriteResponse(pt, rand.Reader); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzReadResponse: any bytes in answer are refused (nothing but the
// responder's own answer reads), never a panic.
func FuzzReadResponse(f *testing.F) {
	f.Add(make([]byte, 48))
	f.Add(fuzzPub)
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, in, _ := WriteRequest(Ristretto255, fuzzPub, nil, []byte("hello"), rand.Reader)
		if _, err := in.ReadResponse(msg); err == nil {
			t.Fatal("bytes not from the responder were read as its answer")
		}
	})
}
