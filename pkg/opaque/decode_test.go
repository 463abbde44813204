package opaque

import (
	"bytes"
	"errors"
	"testing"
)

// decoder is one message type's decoder, as the fuzz targets and strictness
// tests see it.
type decoder struct {
	name   string
	decode func(s Suite, b []byte) (interface{ MarshalBinary() ([]byte, error) }, error)
	size   func(p *suiteParams) int
	// element fields: offset and which encoding (OPRF element or AKE key).
	elements func(p *suiteParams) []int
}

func dec[T interface{ MarshalBinary() ([]byte, error) }](f func(Suite, []byte) (T, error)) func(Suite, []byte) (interface{ MarshalBinary() ([]byte, error) }, error) {
	return func(s Suite, b []byte) (interface{ MarshalBinary() ([]byte, error) }, error) {
		m, err := f(s, b)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
}

var decoders = []decoder{
	{"RegistrationRequest", dec(Suite.UnmarshalRegistrationRequest),
		(*suiteParams).registrationRequestSize, func(p *suiteParams) []int { return []int{0} }},
	{"RegistrationResponse", dec(Suite.UnmarshalRegistrationResponse),
		(*suiteParams).registrationResponseSize, func(p *suiteParams) []int { return []int{0, p.noe} }},
	{"RegistrationRecord", dec(Suite.UnmarshalRegistrationRecord),
		(*suiteParams).registrationRecordSize, func(p *suiteParams) []int { return []int{0} }},
	{"CredentialRequest", dec(Suite.UnmarshalCredentialRequest),
		(*suiteParams).credentialRequestSize, func(p *suiteParams) []int { return []int{0} }},
	{"CredentialResponse", dec(Suite.UnmarshalCredentialResponse),
		(*suiteParams).credentialResponseSize, func(p *suiteParams) []int { return []int{0} }},
	{"KE1", dec(Suite.UnmarshalKE1),
		(*suiteParams).ke1Size, func(p *suiteParams) []int { return []int{0, p.noe + nn} }},
	{"KE2", dec(Suite.UnmarshalKE2),
		(*suiteParams).ke2Size, func(p *suiteParams) []int { return []int{0, p.credentialResponseSize() + nn} }},
	{"KE3", dec(Suite.UnmarshalKE3),
		(*suiteParams).ke3Size, func(p *suiteParams) []int { return nil }},
}

// validMessages returns a valid encoding of every message type for s.
func validMessages(t testing.TB, s Suite) map[string][]byte {
	t.Helper()
	fail := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	keys, err := s.GenerateServerKeys()
	fail(err)
	server, err := s.NewServer(keys, nil, nil)
	fail(err)
	client, err := s.NewClient(IdentityKSF{}, Identities{}, nil)
	fail(err)
	pw, cid := []byte("password"), []byte("cid")
	req, rst, err := client.RegistrationRequest(pw)
	fail(err)
	resp, err := server.RegistrationResponse(req, cid)
	fail(err)
	rec, _, err := client.FinalizeRegistration(rst, resp)
	fail(err)
	ke1, cst, err := client.KE1(pw)
	fail(err)
	ke2, _, err := server.KE2(ke1, cid, nil, rec)
	fail(err)
	ke3, _, _, err := client.KE3(cst, ke2)
	fail(err)
	out := map[string][]byte{}
	for name, m := range map[string]interface{ MarshalBinary() ([]byte, error) }{
		"RegistrationRequest": req, "RegistrationResponse": resp, "RegistrationRecord": rec,
		"CredentialRequest": ke1.CredentialRequest(), "CredentialResponse": ke2.CredentialResponse(),
		"KE1": ke1, "KE2": ke2, "KE3": ke3,
	} {
		b, err := m.MarshalBinary()
		fail(err)
		out[name] = b
	}
	return out
}

// badElements are encodings every decoder must reject where a group element
// (or AKE public key) is expected.
func badElements(s Suite) map[string][]byte {
	n := s.p.noe // = Npk for both suites
	ff := bytes.Repeat([]byte{0xff}, n)
	zero := make([]byte, n)
	m := map[string][]byte{"all-0xff": ff}
	switch s.p {
	case Ristretto255SHA512.p:
		m["identity (all zero)"] = zero
		// s = 1 is "negative" (odd), so not a canonical ristretto255 encoding.
		one := make([]byte, n)
		one[0] = 1
		m["negative s"] = one
		// p = 2^255 - 19 itself: field element not reduced.
		pEnc := bytes.Repeat([]byte{0xff}, n)
		pEnc[0], pEnc[31] = 0xed, 0x7f
		m["unreduced s = p"] = pEnc
	case P256SHA256.p:
		m["all zero (no such compressed point)"] = zero
		over := append([]byte{0x02}, bytes.Repeat([]byte{0xff}, n-1)...) // x >= p
		m["x >= p"] = over
		bad := make([]byte, n)
		bad[0] = 0x05 // invalid tag
		bad[n-1] = 1
		m["bad tag"] = bad
		off := make([]byte, n)
		off[0], off[n-1] = 0x02, 0x01 // x = 1: x^3 - 3x + b is a non-residue mod p
		m["x=1 off curve"] = off
	}
	return m
}

func TestDecodersStrict(t *testing.T) {
	for _, s := range testSuites {
		valid := validMessages(t, s)
		for _, d := range decoders {
			t.Run(s.String()+"/"+d.name, func(t *testing.T) {
				good := valid[d.name]
				if len(good) != d.size(s.p) {
					t.Fatalf("valid message is %d bytes, want %d", len(good), d.size(s.p))
				}
				m, err := d.decode(s, good)
				if err != nil {
					t.Fatalf("valid message rejected: %v", err)
				}
				if re, _ := m.MarshalBinary(); !bytes.Equal(re, good) {
					t.Fatal("round trip changed the message")
				}
				reject := func(what string, b []byte) {
					t.Helper()
					_, err := d.decode(s, b)
					if err == nil {
						t.Errorf("%s accepted", what)
					} else if !errors.Is(err, ErrInvalidMessage) {
						t.Errorf("%s: error %v does not wrap ErrInvalidMessage", what, err)
					}
				}
				reject("empty", nil)
				reject("one byte short", good[:len(good)-1])
				reject("trailing byte", append(bytes.Clone(good), 0))
				reject("doubled", append(bytes.Clone(good), good...))
				for _, off := range d.elements(s.p) {
					for what, e := range badElements(s) {
						b := bytes.Clone(good)
						copy(b[off:], e)
						reject("element at "+itoa(off)+": "+what, b)
					}
				}
				if _, err := (Suite{}).UnmarshalKE1(good); err == nil {
					t.Error("zero Suite decoded a message")
				}
			})
		}
	}
}

// A P-256 point must come compressed: the uncompressed (65-byte) and
// infinity (1-byte) encodings that circl also accepts are rejected.
func TestP256OnlyCompressed(t *testing.T) {
	s := P256SHA256
	g := s.p.oprf.Group()
	e := g.NewElement().MulGen(g.RandomNonZeroScalar(randReader{}))
	unc, _ := e.MarshalBinary()
	if len(unc) != 65 {
		t.Fatalf("uncompressed point is %d bytes", len(unc))
	}
	for _, b := range [][]byte{unc, {0}} {
		if _, err := s.UnmarshalRegistrationRequest(b); err == nil {
			t.Errorf("accepted %d-byte encoding", len(b))
		}
		if _, err := parseElement(g, b, len(b)); err == nil {
			t.Errorf("parseElement accepted %d-byte encoding", len(b))
		}
	}
}

type randReader struct{}

func (randReader) Read(b []byte) (int, error) { copy(b, randomBytes(len(b))); return len(b), nil }

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
