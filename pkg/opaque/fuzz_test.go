package opaque

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzParty is a registered client and its server, for pushing decoded
// messages one protocol step further.
type fuzzParty struct {
	client *Client
	server *Server
	record *RegistrationRecord
}

var fuzzCredID = []byte("fuzz-user")

func newFuzzParty(tb testing.TB, s Suite) fuzzParty {
	keys, err := s.GenerateServerKeys()
	if err != nil {
		tb.Fatal(err)
	}
	server, err := s.NewServer(keys, nil, []byte("fuzz"))
	if err != nil {
		tb.Fatal(err)
	}
	client, err := s.NewClient(IdentityKSF{}, Identities{}, []byte("fuzz"))
	if err != nil {
		tb.Fatal(err)
	}
	req, st, err := client.RegistrationRequest([]byte("pw"))
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := server.RegistrationResponse(req, fuzzCredID)
	if err != nil {
		tb.Fatal(err)
	}
	rec, _, err := client.FinalizeRegistration(st, resp)
	if err != nil {
		tb.Fatal(err)
	}
	return fuzzParty{client, server, rec}
}

// fuzzDecoder fuzzes one decoder over both suites: it must never panic,
// must wrap ErrInvalidMessage when it rejects, and what it accepts must
// re-encode to the same bytes. then, if set, processes the accepted message.
func fuzzDecoder(f *testing.F, name string, then func(t *testing.T, p fuzzParty, m any)) {
	var d decoder
	for _, x := range decoders {
		if x.name == name {
			d = x
		}
	}
	parties := make([]fuzzParty, len(testSuites))
	for i, s := range testSuites {
		parties[i] = newFuzzParty(f, s)
		good := validMessages(f, s)[name]
		f.Add(uint8(i), good)
		f.Add(uint8(i), good[:len(good)-1])
		f.Add(uint8(i), append(bytes.Clone(good), 0))
		for _, e := range badElements(s) {
			b := bytes.Clone(good)
			copy(b, e)
			f.Add(uint8(i), b)
		}
	}
	f.Fuzz(func(t *testing.T, sel uint8, data []byte) {
		i := int(sel) % len(testSuites)
		m, err := d.decode(testSuites[i], data)
		if err != nil {
			if !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("rejection does not wrap ErrInvalidMessage: %v", err)
			}
			return
		}
		re, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(re, data) {
			t.Fatalf("accepted %x but re-encodes to %x (%v)", data, re, err)
		}
		if then != nil {
			then(t, parties[i], m)
		}
	})
}

func FuzzUnmarshalRegistrationRequest(f *testing.F) {
	fuzzDecoder(f, "RegistrationRequest", func(t *testing.T, p fuzzParty, m any) {
		if _, err := p.server.RegistrationResponse(m.(*RegistrationRequest), fuzzCredID); err != nil {
			t.Fatalf("valid request not answered: %v", err)
		}
	})
}

func FuzzUnmarshalRegistrationResponse(f *testing.F) {
	fuzzDecoder(f, "RegistrationResponse", func(t *testing.T, p fuzzParty, m any) {
		_, st, err := p.client.RegistrationRequest([]byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		_, _, _ = p.client.FinalizeRegistration(st, m.(*RegistrationResponse))
	})
}

func FuzzUnmarshalRegistrationRecord(f *testing.F) {
	fuzzDecoder(f, "RegistrationRecord", func(t *testing.T, p fuzzParty, m any) {
		ke1, _, err := p.client.KE1([]byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := p.server.KE2(ke1, fuzzCredID, nil, m.(*RegistrationRecord)); err != nil {
			t.Fatalf("KE2 with a valid record: %v", err)
		}
	})
}

func FuzzUnmarshalCredentialRequest(f *testing.F) {
	fuzzDecoder(f, "CredentialRequest", nil)
}

func FuzzUnmarshalCredentialResponse(f *testing.F) {
	fuzzDecoder(f, "CredentialResponse", nil)
}

func FuzzUnmarshalKE1(f *testing.F) {
	fuzzDecoder(f, "KE1", func(t *testing.T, p fuzzParty, m any) {
		if _, _, err := p.server.KE2(m.(*KE1), fuzzCredID, nil, p.record); err != nil {
			t.Fatalf("valid KE1 not answered: %v", err)
		}
	})
}

func FuzzUnmarshalKE2(f *testing.F) {
	fuzzDecoder(f, "KE2", func(t *testing.T, p fuzzParty, m any) {
		_, st, err := p.client.KE1([]byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := p.client.KE3(st, m.(*KE2)); err == nil {
			t.Fatal("client accepted a KE2 not made for its KE1")
		}
	})
}

func FuzzUnmarshalKE3(f *testing.F) {
	fuzzDecoder(f, "KE3", func(t *testing.T, p fuzzParty, m any) {
		ke1, _, err := p.client.KE1([]byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		_, st, err := p.server.KE2(ke1, fuzzCredID, nil, p.record)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.server.Finish(st, m.(*KE3)); !errors.Is(err, ErrAuthentication) {
			t.Fatalf("server did not reject a forged KE3: %v", err)
		}
	})
}
