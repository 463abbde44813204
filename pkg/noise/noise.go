// Package noise runs one handshake of the Noise Protocol Framework
// (revision 34, noiseprotocol.org/noise.html): the one-round-trip NK
// pattern, whose initiator knows the responder's static public key and
// stays anonymous, with AES-256-GCM and SHA-256. Its two handshake
// messages carry one request and its response, and no transport message
// follows: it is the channel of wabackup-vault's realm API
// (docs/VAULT.md, "The realm channel"), as Juicebox runs Noise NK to its hardware realms.
//
//	NK:
//	  <- s
//	  ...
//	  -> e, es     the request: only the holder of s can read it
//	  <- e, ee     the response: only the holder of s can have written it
//
// The DH function is a parameter: [X25519] (Noise's "25519", with which
// the tests replay the cacophony vectors) or [Ristretto255], over which
// the vault's pinned key is defined. Every primitive comes from the
// standard library (crypto/ecdh, crypto/aes with cipher.NewGCM,
// crypto/hkdf, crypto/sha256) or cloudflare/circl's group.
//
// Each handshake message is encrypted under a key of its own, derived
// from a fresh ephemeral DH, with the nonce n = 0: no key ever encrypts
// twice.
package noise

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxMessage is the Noise bound on a message's length (§3).
const MaxMessage = 65535

const (
	hashLen = sha256.Size
	tagLen  = 16
)

// ErrDecrypt reports a message that does not decrypt: it was not made for
// this key and this prologue, or it was altered.
var ErrDecrypt = errors.New("noise: the message does not decrypt")

// symmetric is a SymmetricState with its CipherState (§5.1, §5.2).
type symmetric struct {
	ck, h [hashLen]byte
	aead  cipher.AEAD // nil until the first MixKey
	n     uint64
}

func newSymmetric(protocol string) *symmetric {
	s := &symmetric{}
	if len(protocol) <= hashLen {
		copy(s.h[:], protocol)
	} else {
		s.h = sha256.Sum256([]byte(protocol))
	}
	s.ck = s.h
	return s
}

func (s *symmetric) mixHash(data []byte) {
	d := sha256.New()
	d.Write(s.h[:])
	d.Write(data)
	d.Sum(s.h[:0])
}

// mixKey is MixKey: HKDF(ck, ikm) with two outputs, which is RFC 5869's
// Extract with ck as the salt, then Expand with an empty info (§4.3).
func (s *symmetric) mixKey(ikm []byte) error {
	prk, err := hkdf.Extract(sha256.New, ikm, s.ck[:])
	if err != nil {
		return err
	}
	out, err := hkdf.Expand(sha256.New, prk, "", 2*hashLen)
	if err != nil {
		return err
	}
	copy(s.ck[:], out[:hashLen])
	block, err := aes.NewCipher(out[hashLen:])
	if err != nil {
		return err
	}
	if s.aead, err = cipher.NewGCM(block); err != nil {
		return err
	}
	s.n = 0
	return nil
}

// nonce is AESGCM's: 32 zero bits, then n big-endian (§12.3).
func (s *symmetric) nonce() []byte {
	var b [12]byte
	binary.BigEndian.PutUint64(b[4:], s.n)
	return b[:]
}

func (s *symmetric) encryptAndHash(dst, pt []byte) []byte {
	start := len(dst)
	if s.aead == nil {
		dst = append(dst, pt...)
	} else {
		dst = s.aead.Seal(dst, s.nonce(), pt, s.h[:])
		s.n++
	}
	s.mixHash(dst[start:])
	return dst
}

func (s *symmetric) decryptAndHash(ct []byte) ([]byte, error) {
	var pt []byte
	if s.aead == nil {
		pt = append([]byte(nil), ct...)
	} else {
		var err error
		if pt, err = s.aead.Open(nil, s.nonce(), ct, s.h[:]); err != nil {
			return nil, ErrDecrypt
		}
		s.n++
	}
	s.mixHash(ct)
	return pt, nil
}

// ProtocolName is the Noise protocol name of NK over c.
func ProtocolName(c Curve) string { return "Noise_NK_" + c.Name() + "_AESGCM_SHA256" }

// initialize is Initialize for NK: the protocol name, the prologue, then
// the pre-message, the responder's static key.
func initialize(c Curve, prologue, rs []byte) *symmetric {
	s := newSymmetric(ProtocolName(c))
	s.mixHash(prologue)
	s.mixHash(rs)
	return s
}

// Initiator is the client's side of one handshake, between its request
// and the response.
type Initiator struct {
	c   Curve
	s   *symmetric
	e   []byte // the ephemeral private key
	hsh [hashLen]byte
}

// WriteRequest starts a handshake with the responder whose static public
// key is rs: it returns the first message (-> e, es) carrying payload,
// which only the holder of rs's private key can read. The ephemeral key
// comes from random (crypto/rand.Reader in use; the tests give the
// vectors').
func WriteRequest(c Curve, rs, prologue, payload []byte, random io.Reader) ([]byte, *Initiator, error) {
	if err := c.check(rs); err != nil {
		return nil, nil, fmt.Errorf("noise: the responder's static key: %w", err)
	}
	if c.Len()+len(payload)+tagLen > MaxMessage {
		return nil, nil, fmt.Errorf("noise: a payload of %d bytes; a message holds at most %d", len(payload), MaxMessage-c.Len()-tagLen)
	}
	s := initialize(c, prologue, rs)
	e, epub, err := c.Generate(random)
	if err != nil {
		return nil, nil, err
	}
	msg := append(make([]byte, 0, len(epub)+len(payload)+tagLen), epub...)
	s.mixHash(epub)
	dh, err := c.DH(e, rs)
	if err != nil {
		return nil, nil, err
	}
	if err := s.mixKey(dh); err != nil {
		return nil, nil, err
	}
	msg = s.encryptAndHash(msg, payload)
	return msg, &Initiator{c: c, s: s, e: e}, nil
}

// ReadResponse reads the responder's message (<- e, ee) and returns its
// payload. A message that decrypts was written by the holder of the
// static private key, in answer to this request: anything else is
// ErrDecrypt.
func (in *Initiator) ReadResponse(msg []byte) ([]byte, error) {
	if in.s == nil {
		return nil, errors.New("noise: the response was read already")
	}
	s := in.s
	in.s = nil
	n := in.c.Len()
	if len(msg) < n+tagLen || len(msg) > MaxMessage {
		return nil, fmt.Errorf("noise: a response of %d bytes", len(msg))
	}
	re := msg[:n]
	s.mixHash(re)
	dh, err := in.c.DH(in.e, re) // which checks re
	if err != nil {
		return nil, fmt.Errorf("noise: the responder's ephemeral key: %w", err)
	}
	if err := s.mixKey(dh); err != nil {
		return nil, err
	}
	pt, err := s.decryptAndHash(msg[n:])
	if err != nil {
		return nil, err
	}
	in.hsh = s.h
	return pt, nil
}

// HandshakeHash is h after the response was read (for the vectors).
func (in *Initiator) HandshakeHash() []byte { return in.hsh[:] }

// Responder is the server's side of one handshake, between the request
// and its response.
type Responder struct {
	c   Curve
	s   *symmetric
	re  []byte
	hsh [hashLen]byte
}

// ReadRequest reads an initiator's first message with the static key
// pair (priv, pub) and returns its payload. A message that was not made
// for pub and this prologue, or was altered, is ErrDecrypt.
func ReadRequest(c Curve, priv, pub, prologue, msg []byte) ([]byte, *Responder, error) {
	n := c.Len()
	if len(msg) < n+tagLen || len(msg) > MaxMessage {
		return nil, nil, fmt.Errorf("noise: a request of %d bytes", len(msg))
	}
	s := initialize(c, prologue, pub)
	re := msg[:n]
	s.mixHash(re)
	dh, err := c.DH(priv, re) // which checks re
	if err != nil {
		return nil, nil, fmt.Errorf("noise: the initiator's ephemeral key: %w", err)
	}
	if err := s.mixKey(dh); err != nil {
		return nil, nil, err
	}
	pt, err := s.decryptAndHash(msg[n:])
	if err != nil {
		return nil, nil, err
	}
	return pt, &Responder{c: c, s: s, re: append([]byte(nil), re...)}, nil
}

// WriteResponse returns the second message (<- e, ee) carrying payload,
// under a fresh ephemeral key from random.
func (r *Responder) WriteResponse(payload []byte, random io.Reader) ([]byte, error) {
	if r.s == nil {
		return nil, errors.New("noise: the response was written already")
	}
	if r.c.Len()+len(payload)+tagLen > MaxMessage {
		return nil, fmt.Errorf("noise: a payload of %d bytes; a message holds at most %d", len(payload), MaxMessage-r.c.Len()-tagLen)
	}
	s := r.s
	r.s = nil
	e, epub, err := r.c.Generate(random)
	if err != nil {
		return nil, err
	}
	msg := append(make([]byte, 0, len(epub)+len(payload)+tagLen), epub...)
	s.mixHash(epub)
	dh, err := r.c.DH(e, r.re)
	if err != nil {
		return nil, err
	}
	if err := s.mixKey(dh); err != nil {
		return nil, err
	}
	msg = s.encryptAndHash(msg, payload)
	r.hsh = s.h
	return msg, nil
}

// HandshakeHash is h after the response was written (for the vectors).
func (r *Responder) HandshakeHash() []byte { return r.hsh[:] }
