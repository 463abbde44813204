package threshold

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

type decodeFunc func([]byte) (marshaler, error)

func dec[T marshaler](f func([]byte) (T, error)) decodeFunc {
	return func(b []byte) (marshaler, error) {
		m, err := f(b)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
}

// decoders are every decoder of the package, by the name of what it decodes.
var decoders = map[string]decodeFunc{
	"Register1Request":  dec(UnmarshalRegister1Request),
	"Register1Response": dec(UnmarshalRegister1Response),
	"Register2Request":  dec(UnmarshalRegister2Request),
	"Register2Response": dec(UnmarshalRegister2Response),
	"Recover1Request":   dec(UnmarshalRecover1Request),
	"Recover1Response":  dec(UnmarshalRecover1Response),
	"Recover2Request":   dec(UnmarshalRecover2Request),
	"Recover2Response":  dec(UnmarshalRecover2Response),
	"Recover3Request":   dec(UnmarshalRecover3Request),
	"Recover3Response":  dec(UnmarshalRecover3Response),
	"DeleteRequest":     dec(UnmarshalDeleteRequest),
	"DeleteResponse":    dec(UnmarshalDeleteResponse),
	"RealmRecord":       dec(UnmarshalRealmRecord),
}

func typeName(m any) string { return strings.TrimPrefix(fmt.Sprintf("%T", m), "*threshold.") }

// collectMessages returns real encodings of every message type in every
// status it can carry, and of records in every state: those of a
// registration, recoveries with the right and a wrong password and a
// deletion over in-memory realms, and the remaining statuses from the
// realm directly.
func collectMessages(tb testing.TB) map[string][][]byte {
	tb.Helper()
	msgs := map[string][][]byte{}
	seen := map[string]bool{}
	var mu sync.Mutex // the realms are called concurrently
	add := func(m any) {
		b, err := m.(marshaler).MarshalBinary()
		if err != nil {
			tb.Error(err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		name := typeName(m)
		if !seen[name+string(b)] {
			seen[name+string(b)] = true
			msgs[name] = append(msgs[name], b)
		}
	}
	addRecord := func(r *testRealm) { add(r.st.record(tb)) }

	e := newEnv(tb, 3, 2)
	for _, r := range e.realms {
		r.onRequest, r.onResponse = add, add
	}
	addRecord(e.realms[0])
	secret := e.register(tb, "pw")
	e.mustRecover(tb, "pw", secret)
	if _, err := e.recover("wrong"); !errors.Is(err, ErrWrongPassword) {
		tb.Fatal(err)
	}
	addRecord(e.realms[0])
	if err := e.client.Delete(context.Background()); err != nil {
		tb.Fatal(err)
	}
	_, _ = e.recover("pw")

	// The statuses a client rarely sees, from realm 1 directly.
	ctx := context.Background()
	srv, st := e.realms[0].srv, &memStore{}
	reqs, err := e.client.prepareRegistration([]byte("pw"), secret, testGuesses)
	if err != nil {
		tb.Fatal(err)
	}
	v := reqs[0].Version
	other := v
	other[0] ^= 1
	r2 := &Recover2Request{Version: v, BlindedAccessKey: randomElementBytes()}
	r3 := &Recover3Request{Version: v}
	must := func(m any, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
		add(m)
	}
	must(srv.Recover2(ctx, st, r2)) // NotRegistered
	must(srv.Recover3(ctx, st, r3)) // NotRegistered
	must(srv.Register2(ctx, st, reqs[0]))
	must(srv.Recover2(ctx, st, &Recover2Request{Version: other, BlindedAccessKey: r2.BlindedAccessKey})) // VersionMismatch
	must(srv.Recover3(ctx, st, &Recover3Request{Version: other}))                                        // VersionMismatch
	must(srv.Recover3(ctx, st, r3))                                                                      // BadUnlockKeyTag
	for range testGuesses {
		must(srv.Recover2(ctx, st, r2))
	}
	add(st.record(tb))
	must(srv.Recover3(ctx, st, r3)) // BadUnlockKeyTag with 0 left: NoGuesses
	add(st.record(tb))
	must(srv.Recover1(ctx, st, &Recover1Request{})) // NoGuesses
	must(srv.Recover2(ctx, st, r2))                 // NoGuesses
	must(srv.Recover3(ctx, st, r3))                 // NoGuesses
	return msgs
}

// TestDecodeRoundTrip: every real message decodes and re-encodes to the
// same bytes, and the collection covers every status of every response and
// every record state.
func TestDecodeRoundTrip(t *testing.T) {
	msgs := collectMessages(t)
	statuses := map[string]map[Status]bool{}
	states := map[State]bool{}
	for name, d := range decoders {
		if len(msgs[name]) == 0 {
			t.Errorf("no %s collected", name)
		}
		for _, b := range msgs[name] {
			m, err := d(b)
			if err != nil {
				t.Errorf("%s %x: %v", name, b, err)
				continue
			}
			re, err := m.MarshalBinary()
			if err != nil || !bytes.Equal(re, b) {
				t.Errorf("%s: %x re-encodes to %x (%v)", name, b, re, err)
			}
			if s, ok := m.(statused); ok {
				if statuses[name] == nil {
					statuses[name] = map[Status]bool{}
				}
				statuses[name][s.status()] = true
			}
			if r, ok := m.(*RealmRecord); ok {
				states[r.State()] = true
			}
		}
	}
	want := map[string]int{"Recover1Response": 3, "Recover2Response": 4, "Recover3Response": 5}
	for name, n := range want {
		if len(statuses[name]) != n {
			t.Errorf("%s: statuses %v, want %d", name, statuses[name], n)
		}
	}
	if len(states) != 3 {
		t.Errorf("record states %v, want all 3", states)
	}
}

// TestDecodeRejectsMalformed: for every real message, every truncation, an
// extra byte, another wire version or format, every other message kind, and
// every status the message cannot carry, are rejected with
// ErrInvalidMessage.
func TestDecodeRejectsMalformed(t *testing.T) {
	msgs := collectMessages(t)
	reject := func(name, what string, b []byte) {
		t.Helper()
		m, err := decoders[name](b)
		if err == nil {
			t.Errorf("%s, %s: %x accepted as %+v", name, what, b, m)
		} else if !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s, %s: error does not wrap ErrInvalidMessage: %v", name, what, err)
		}
	}
	allowed := map[string][]Status{
		"Recover1Response": {StatusOK, StatusNotRegistered, StatusNoGuesses},
		"Recover2Response": {StatusOK, StatusNotRegistered, StatusNoGuesses, StatusVersionMismatch},
		"Recover3Response": {StatusOK, StatusNotRegistered, StatusNoGuesses, StatusVersionMismatch, StatusBadUnlockKeyTag},
	}
	for name, list := range msgs {
		for _, good := range list {
			for n := range len(good) {
				reject(name, fmt.Sprintf("truncated to %d", n), good[:n])
			}
			reject(name, "extra byte", append(bytes.Clone(good), 0))
			for _, v := range []byte{0, 2, 0xff} {
				b := bytes.Clone(good)
				b[0] = v
				reject(name, fmt.Sprintf("version/format %d", v), b)
			}
			if name == "RealmRecord" {
				for _, s := range []byte{3, 0xff} {
					b := bytes.Clone(good)
					b[1] = s
					reject(name, fmt.Sprintf("state %d", s), b)
				}
				continue
			}
			for k := range 256 {
				if kind(k) != kind(good[1]) {
					b := bytes.Clone(good)
					b[1] = byte(k)
					reject(name, fmt.Sprintf("kind %#x", k), b)
				}
			}
			if ok, has := allowed[name]; has {
				for s := range 256 {
					isAllowed := false
					for _, a := range ok {
						isAllowed = isAllowed || Status(s) == a
					}
					b := bytes.Clone(good)
					b[headerSize] = byte(s)
					if !isAllowed {
						reject(name, fmt.Sprintf("status %d", s), b)
					} else if hasFields(Status(s)) || hasFields(Status(good[headerSize])) {
						if Status(s) != Status(good[headerSize]) {
							reject(name, fmt.Sprintf("status %d with the fields of %d", s, good[headerSize]), b)
						}
					}
				}
			}
		}
	}
}

// hasFields tells the statuses that carry fields from those that are the
// status byte alone (and so are interchangeable as far as decoding goes).
func hasFields(s Status) bool { return s == StatusOK || s == StatusBadUnlockKeyTag }

// Encodings the decoders must refuse in element and scalar fields.
var (
	badElements = map[string][]byte{
		"identity":          make([]byte, 32),
		"negative":          {1, 31: 0},
		"above p":           bytes.Repeat([]byte{0xff}, 32),
		"p (non-canonical)": append([]byte{0xed}, append(bytes.Repeat([]byte{0xff}, 30), 0x7f)...),
		"not an encoding":   {2, 31: 0x7f},
	}
	badScalars = map[string][]byte{
		"order l":  {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 31: 0x10},
		"all ones": bytes.Repeat([]byte{0xff}, 32),
	}
)

// TestDecodeRejectsBadFields: bad group elements, bad scalars, a zero
// OPRF key share and impossible guess counters are rejected in every field
// that holds them.
func TestDecodeRejectsBadFields(t *testing.T) {
	msgs := collectMessages(t)
	first := func(name string, status Status) []byte {
		for _, b := range msgs[name] {
			if name == "RealmRecord" {
				if State(b[1]) == StateRegistered {
					return b
				}
				continue
			}
			if status == 0 || Status(b[headerSize]) == status {
				return b
			}
		}
		t.Fatalf("no %s with status %v", name, status)
		return nil
	}
	type field struct {
		name   string
		msg    string
		status Status
		off    int
		bad    map[string][]byte
	}
	zero := map[string][]byte{"zero": make([]byte, 32)}
	counters := func(allowed, attempted uint16) map[string][]byte {
		return map[string][]byte{fmt.Sprintf("%d of %d", attempted, allowed): {byte(allowed >> 8), byte(allowed), byte(attempted >> 8), byte(attempted)}}
	}
	fields := []field{
		{"OPRF key share", "Register2Request", 0, 18, badScalars},
		{"OPRF key share", "Register2Request", 0, 18, zero},
		{"OPRF public key", "Register2Request", 0, 50, badElements},
		{"encryption-key share", "Register2Request", 0, 226, badScalars},
		{"no guesses", "Register2Request", 0, 322, map[string][]byte{"0": {0, 0}}},
		{"blinded access key", "Recover2Request", 0, 18, badElements},
		{"blinded result", "Recover2Response", StatusOK, 3, badElements},
		{"proof c", "Recover2Response", StatusOK, 35, badScalars},
		{"proof s", "Recover2Response", StatusOK, 67, badScalars},
		{"OPRF public key", "Recover2Response", StatusOK, 99, badElements},
		{"counters", "Recover2Response", StatusOK, 259, counters(10, 11)},
		{"counters", "Recover2Response", StatusOK, 259, counters(10, 0)},
		{"counters", "Recover2Response", StatusOK, 259, counters(0, 0)},
		{"encryption-key share", "Recover3Response", StatusOK, 3, badScalars},
		{"OPRF key share", "RealmRecord", 0, 18, badScalars},
		{"OPRF key share", "RealmRecord", 0, 18, zero},
		{"OPRF public key", "RealmRecord", 0, 50, badElements},
		{"encryption-key share", "RealmRecord", 0, 226, badScalars},
		{"counters", "RealmRecord", 0, 322, counters(10, 11)},
		{"counters", "RealmRecord", 0, 322, counters(0, 0)},
	}
	for _, f := range fields {
		good := first(f.msg, f.status)
		if _, err := decoders[f.msg](good); err != nil {
			t.Fatal(err)
		}
		for what, v := range f.bad {
			b := bytes.Clone(good)
			copy(b[f.off:], v)
			if _, err := decoders[f.msg](b); !errors.Is(err, ErrInvalidMessage) {
				t.Errorf("%s %s %s: %v, want ErrInvalidMessage", f.msg, f.name, what, err)
			}
		}
	}
}

// TestMarshalRefusesBadStatus: a response whose status it cannot carry has
// no encoding.
func TestMarshalRefusesBadStatus(t *testing.T) {
	for _, m := range []marshaler{
		&Recover1Response{}, &Recover1Response{Status: StatusVersionMismatch},
		&Recover2Response{}, &Recover2Response{Status: StatusBadUnlockKeyTag},
		&Recover3Response{}, &Recover3Response{Status: 6},
		&RealmRecord{state: 3},
	} {
		if b, err := m.MarshalBinary(); err == nil {
			t.Errorf("%T %+v encoded as %x", m, m, b)
		}
	}
}

// TestWireSizes pins the sizes docs/THRESHOLD.md gives for every message
// and record.
func TestWireSizes(t *testing.T) {
	msgs := collectMessages(t)
	want := map[string][]int{
		"Register1Request": {2}, "Register1Response": {2}, "Register2Request": {324}, "Register2Response": {2},
		"Recover1Request": {2}, "Recover1Response": {19, 3}, "Recover2Request": {50}, "Recover2Response": {263, 3},
		"Recover3Request": {34}, "Recover3Response": {99, 5, 3}, "DeleteRequest": {2}, "DeleteResponse": {2},
		"RealmRecord": {326, 2},
	}
	for name, sizes := range want {
		for _, b := range msgs[name] {
			if !slices.Contains(sizes, len(b)) {
				t.Errorf("%s of %d bytes; docs/THRESHOLD.md says %v", name, len(b), sizes)
			}
		}
	}
}
