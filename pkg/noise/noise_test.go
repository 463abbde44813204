package noise

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

type vector struct {
	Protocol      string   `json:"protocol_name"`
	InitPrologue  hexBytes `json:"init_prologue"`
	InitEphemeral hexBytes `json:"init_ephemeral"`
	InitRemote    hexBytes `json:"init_remote_static"`
	RespPrologue  hexBytes `json:"resp_prologue"`
	RespStatic    hexBytes `json:"resp_static"`
	RespEphemeral hexBytes `json:"resp_ephemeral"`
	HandshakeHash hexBytes `json:"handshake_hash"`
	Messages      []struct {
		Payload    hexBytes `json:"payload"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"messages"`
}

// The cacophony vector of Noise_NK_25519_AESGCM_SHA256: both handshake
// messages byte for byte, from both sides, and the handshake hash.
func TestCacophonyVector(t *testing.T) {
	b, err := os.ReadFile("testdata/cacophony-nk.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Vectors []vector }
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range f.Vectors {
		if v.Protocol != ProtocolName(X25519) {
			t.Fatalf("vector for %s, want %s", v.Protocol, ProtocolName(X25519))
		}
		_, respPub, err := X25519.Generate(bytes.NewReader(v.RespStatic))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(respPub, v.InitRemote) {
			t.Fatalf("the responder's public key %x, want %x", respPub, v.InitRemote)
		}
		m0, m1 := v.Messages[0], v.Messages[1]
		msg, in, err := WriteRequest(X25519, v.InitRemote, v.InitPrologue, m0.Payload, bytes.NewReader(v.InitEphemeral))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(msg, m0.Ciphertext) {
			t.Fatalf("message 0:\n got %x\nwant %x", msg, m0.Ciphertext)
		}
		pt, r, err := ReadRequest(X25519, v.RespStatic, respPub, v.RespPrologue, msg)
		if err != nil || !bytes.Equal(pt, m0.Payload) {
			t.Fatalf("responder read %q, %v", pt, err)
		}
		resp, err := r.WriteResponse(m1.Payload, bytes.NewReader(v.RespEphemeral))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp, m1.Ciphertext) {
			t.Fatalf("message 1:\n got %x\nwant %x", resp, m1.Ciphertext)
		}
		pt, err = in.ReadResponse(resp)
		if err != nil || !bytes.Equal(pt, m1.Payload) {
			t.Fatalf("initiator read %q, %v", pt, err)
		}
		if !bytes.Equal(in.HandshakeHash(), v.HandshakeHash) || !bytes.Equal(r.HandshakeHash(), v.HandshakeHash) {
			t.Fatalf("handshake hash %x / %x, want %x", in.HandshakeHash(), r.HandshakeHash(), v.HandshakeHash)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range []Curve{X25519, Ristretto255} {
		t.Run(c.Name(), func(t *testing.T) {
			priv, pub, err := c.Generate(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			_, other, _ := c.Generate(rand.Reader)
			req := []byte("recover3: the unlock tag")
			msg, in, err := WriteRequest(c, pub, []byte("p"), req, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(msg, req) {
				t.Fatal("the request is in the clear")
			}
			got, r, err := ReadRequest(c, priv, pub, []byte("p"), msg)
			if err != nil || !bytes.Equal(got, req) {
				t.Fatalf("read %q, %v", got, err)
			}
			resp, err := r.WriteResponse([]byte("the answer"), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.WriteResponse(nil, rand.Reader); err == nil {
				t.Fatal("a second response was written")
			}
			// Every byte of the response matters.
			for i := range resp {
				bad := bytes.Clone(resp)
				bad[i] ^= 1
				cp := *in
				cp.s = cloneSym(in.s)
				if _, err := cp.ReadResponse(bad); err == nil {
					t.Fatalf("a response altered at byte %d was read", i)
				}
			}
			got, err = in.ReadResponse(resp)
			if err != nil || string(got) != "the answer" {
				t.Fatalf("read %q, %v", got, err)
			}
			if _, err := in.ReadResponse(resp); err == nil {
				t.Fatal("a response was read twice")
			}

			// The request is for pub and this prologue only, and every
			// byte of it matters.
			msg, _, _ = WriteRequest(c, pub, []byte("p"), req, rand.Reader)
			if _, _, err := ReadRequest(c, priv, pub, []byte("q"), msg); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("another prologue: %v", err)
			}
			msg2, _, _ := WriteRequest(c, other, []byte("p"), req, rand.Reader)
			if _, _, err := ReadRequest(c, priv, pub, []byte("p"), msg2); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("a request for another key: %v", err)
			}
			for i := range msg {
				bad := bytes.Clone(msg)
				bad[i] ^= 0x80
				if _, _, err := ReadRequest(c, priv, pub, []byte("p"), bad); err == nil {
					t.Fatalf("a request altered at byte %d was read", i)
				}
			}
			if _, _, err := ReadRequest(c, priv, pub, []byte("p"), msg[:len(msg)-1]); err == nil {
				t.Fatal("a truncated request was read")
			}
		})
	}
}

// Another responder's answer, or one to another request (a replay),
// does not read.
func TestResponseBoundToRequest(t *testing.T) {
	c := Ristretto255
	priv, pub, _ := c.Generate(rand.Reader)
	mitmPriv, mitmPub, _ := c.Generate(rand.Reader)

	msg1, in1, _ := WriteRequest(c, pub, nil, []byte("one"), rand.Reader)
	_, r1, err := ReadRequest(c, priv, pub, nil, msg1)
	if err != nil {
		t.Fatal(err)
	}
	resp1, _ := r1.WriteResponse([]byte("answer one"), rand.Reader)
	if _, err := in1.ReadResponse(resp1); err != nil {
		t.Fatal(err)
	}
	// A replay of resp1 to a new request.
	_, in2, _ := WriteRequest(c, pub, nil, []byte("two"), rand.Reader)
	if _, err := in2.ReadResponse(resp1); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("a replayed response: %v", err)
	}
	// A man in the middle answering with its own key.
	msg3, in3, _ := WriteRequest(c, pub, nil, []byte("three"), rand.Reader)
	if _, _, err := ReadRequest(c, mitmPriv, mitmPub, nil, msg3); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("another key read the request: %v", err)
	}
	_, fake, _ := ReadRequest(c, mitmPriv, mitmPub, nil, mustWrite(t, c, mitmPub))
	forged, _ := fake.WriteResponse([]byte("forged"), rand.Reader)
	if _, err := in3.ReadResponse(forged); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("a forged response: %v", err)
	}
}

func mustWrite(t *testing.T, c Curve, pub []byte) []byte {
	m, _, err := WriteRequest(c, pub, nil, nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func cloneSym(s *symmetric) *symmetric {
	c := *s
	return &c
}

func TestBadKeys(t *testing.T) {
	identity := make([]byte, 32)
	if _, _, err := WriteRequest(Ristretto255, identity, nil, nil, rand.Reader); err == nil {
		t.Fatal("the identity as a static key")
	}
	if _, _, err := WriteRequest(Ristretto255, bytes.Repeat([]byte{0xff}, 32), nil, nil, rand.Reader); err == nil {
		t.Fatal("a non-canonical static key")
	}
	if _, _, err := WriteRequest(X25519, make([]byte, 31), nil, nil, rand.Reader); err == nil {
		t.Fatal("a short static key")
	}
	// A low-order X25519 key gives an all-zero DH, refused.
	if _, _, err := WriteRequest(X25519, identity, nil, nil, rand.Reader); err == nil {
		t.Fatal("a low-order X25519 key")
	}
	if _, _, err := WriteRequest(Ristretto255, mustPub(t), nil, make([]byte, MaxMessage), rand.Reader); err == nil {
		t.Fatal("a payload over the bound")
	}
}

func mustPub(t *testing.T) []byte {
	_, pub, err := Ristretto255.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}
