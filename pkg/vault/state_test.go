package vault

import (
	"bytes"
	"testing"
	"time"
)

func testStates() stateSealer { return stateSealer{key: bytes.Repeat([]byte{7}, 32)} }

// Sealed states round-trip, are refused under another kind, when altered
// and when expired, and a login id for an unknown credential is as long as
// one for a record.
func TestSealedStates(t *testing.T) {
	ss := testStates()
	st := &state{kind: kindLogin, expires: time.Now().Add(time.Minute), flags: flagReal | flagCounted, credID: []byte("wabackup/v1/repo/default")}
	st.skey[0], st.nonce[1], st.gen[2], st.a[3], st.b[63] = 1, 2, 3, 4, 5
	b, err := ss.seal(st)
	if err != nil {
		t.Fatal(err)
	}
	got, expired, err := ss.open(b, kindLogin)
	if err != nil || expired {
		t.Fatalf("open: %v (expired %v)", err, expired)
	}
	if got.skey != st.skey || got.nonce != st.nonce || got.gen != st.gen || got.a != st.a || got.b != st.b ||
		got.flags != st.flags || !bytes.Equal(got.credID, st.credID) || !got.expires.Equal(st.expires) {
		t.Fatalf("round trip: %+v, want %+v", got, st)
	}
	if _, _, err := ss.open(b, kindToken); err == nil {
		t.Fatal("a login id opened as a token")
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, _, err := ss.open(c, kindLogin); err == nil {
			t.Fatalf("altered byte %d accepted", i)
		}
	}
	if _, _, err := (stateSealer{key: bytes.Repeat([]byte{8}, 32)}).open(b, kindLogin); err == nil {
		t.Fatal("opened under another state key")
	}
	st.expires = time.Now().Add(-time.Second)
	b2, _ := ss.seal(st)
	if _, expired, err := ss.open(b2, kindLogin); err != nil || !expired {
		t.Fatalf("expired state: %v, expired %v", err, expired)
	}
	fake := &state{kind: kindLogin, expires: st.expires, flags: flagCounted, credID: st.credID}
	b3, _ := ss.seal(fake)
	if len(b3) != len(b) {
		t.Fatalf("a fake login id is %d bytes, a real one %d", len(b3), len(b))
	}
}

// FuzzOpenState: login ids, tokens and registration states come from
// clients; opening any bytes must fail cleanly or give a state that
// round-trips.
func FuzzOpenState(f *testing.F) {
	ss := testStates()
	st := &state{kind: kindToken, expires: time.Now().Add(time.Hour), credID: []byte("id")}
	b, _ := ss.seal(st)
	f.Add(b, uint8(kindToken))
	f.Add([]byte{}, uint8(kindLogin))
	f.Add(make([]byte, stateSalt+stateFixed+16), uint8(kindRegister))
	f.Fuzz(func(t *testing.T, b []byte, kind uint8) {
		k := stateKind(kind%3 + 1)
		got, _, err := ss.open(b, k)
		if err != nil {
			return
		}
		if got.kind != k {
			t.Fatalf("kind %d opened as %d", got.kind, k)
		}
	})
}
