package noise

import (
	"crypto/ecdh"
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/group"
)

// Curve is a Noise DH function (§4.1): key pairs as byte strings, DH
// results of Len bytes.
type Curve interface {
	// Name is the DH function's name in the protocol name.
	Name() string
	// Len is DHLEN, the length of public keys and DH results.
	Len() int
	// Generate makes a key pair from random.
	Generate(random io.Reader) (priv, pub []byte, err error)
	// DH returns the shared secret of priv and the public key pub; an
	// invalid pub, or a result that is the identity, is an error.
	DH(priv, pub []byte) ([]byte, error)

	check(pub []byte) error
}

// CheckPublicKey reports whether pub is a public key of c that DH
// accepts.
func CheckPublicKey(c Curve, pub []byte) error { return c.check(pub) }

// X25519 is Noise's "25519" (RFC 7748), from crypto/ecdh. A DH result of
// all zeros (a low-order public key) is refused, as §12.1 allows.
var X25519 Curve = x25519{}

type x25519 struct{}

func (x25519) Name() string { return "25519" }
func (x25519) Len() int     { return 32 }

func (x25519) Generate(random io.Reader) ([]byte, []byte, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(random, b); err != nil {
		return nil, nil, err
	}
	k, err := ecdh.X25519().NewPrivateKey(b)
	if err != nil {
		return nil, nil, err
	}
	return b, k.PublicKey().Bytes(), nil
}

func (x25519) check(pub []byte) error {
	_, err := ecdh.X25519().NewPublicKey(pub)
	return err
}

func (x25519) DH(priv, pub []byte) ([]byte, error) {
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return k.ECDH(p)
}

// Ristretto255 is DH over the ristretto255 group (RFC 9496), from circl:
// private keys are canonical non-zero scalars, public keys and results
// canonical element encodings (32 bytes). It is not one of the two DH
// functions Noise names; §12's requirements hold for it (a prime-order
// group whose encoding is checked, so no invalid or low-order key is
// accepted; the identity is refused as a key and as a result).
var Ristretto255 Curve = ristretto{}

type ristretto struct{}

var rg = group.Ristretto255

func (ristretto) Name() string { return "ristretto255" }
func (ristretto) Len() int     { return 32 }

func (ristretto) Generate(random io.Reader) ([]byte, []byte, error) {
	k := rg.RandomNonZeroScalar(random)
	priv, err := k.MarshalBinary()
	if err != nil {
		return nil, nil, err
	}
	pub, err := rg.NewElement().MulGen(k).MarshalBinary()
	return priv, pub, err
}

var errIdentity = errors.New("the identity element")

func (ristretto) element(pub []byte) (group.Element, error) {
	if len(pub) != 32 {
		return nil, fmt.Errorf("a public key of %d bytes", len(pub))
	}
	e := rg.NewElement()
	if err := e.UnmarshalBinary(pub); err != nil {
		return nil, err
	}
	if e.IsIdentity() {
		return nil, errIdentity
	}
	return e, nil
}

func (r ristretto) check(pub []byte) error {
	_, err := r.element(pub)
	return err
}

func (r ristretto) DH(priv, pub []byte) ([]byte, error) {
	k := rg.NewScalar()
	if err := k.UnmarshalBinary(priv); err != nil {
		return nil, fmt.Errorf("noise: a private key: %w", err)
	}
	if k.IsZero() {
		return nil, errors.New("noise: the zero private key")
	}
	e, err := r.element(pub)
	if err != nil {
		return nil, err
	}
	out := rg.NewElement().Mul(e, k)
	if out.IsIdentity() {
		return nil, errIdentity
	}
	return out.MarshalBinary()
}
