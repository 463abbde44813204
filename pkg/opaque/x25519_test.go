package opaque

import (
	"crypto/ecdh"
	"crypto/sha512"
	"errors"

	"github.com/cloudflare/circl/oprf"
)

// The RFC's curve25519 vectors pair the ristretto255-SHA512 OPRF with a 3DH
// over X25519 (RFC 9807 §6.4.1, "3DH Curve25519"). That configuration is not
// offered by the package; this test-only suite plugs the standard library's
// X25519 into the same protocol code so that those vectors check it too.
var testRistretto255X25519 = Suite{&suiteParams{
	name:    "ristretto255-SHA512 with X25519 AKE (test only)",
	oprf:    oprf.SuiteRistretto255,
	newHash: sha512.New,
	nh:      64,
	noe:     32,
	nok:     32,
	ake:     x25519AKE{},
}}

type x25519AKE struct{}

func (x25519AKE) npk() int { return 32 }
func (x25519AKE) nsk() int { return 32 }

// deriveKeyPair: the private key is the seed itself; the public key is
// X25519(seed, 9).
func (a x25519AKE) deriveKeyPair(seed []byte) (any, []byte, error) {
	k, err := a.parsePrivateKey(seed)
	if err != nil {
		return nil, nil, err
	}
	return k, a.publicKey(k), nil
}

func (x25519AKE) parsePrivateKey(b []byte) (any, error) {
	return ecdh.X25519().NewPrivateKey(b)
}

func (x25519AKE) parsePublicKey(b []byte) (any, error) {
	if len(b) != 32 {
		return nil, errors.New("wrong X25519 public key length")
	}
	return ecdh.X25519().NewPublicKey(b)
}

func (x25519AKE) publicKey(sk any) []byte {
	return sk.(*ecdh.PrivateKey).PublicKey().Bytes()
}

func (x25519AKE) serializePrivateKey(sk any) []byte {
	return sk.(*ecdh.PrivateKey).Bytes()
}

// dh is X25519(k, B), used raw; crypto/ecdh rejects an all-zero result.
func (x25519AKE) dh(sk, pk any) ([]byte, error) {
	return sk.(*ecdh.PrivateKey).ECDH(pk.(*ecdh.PublicKey))
}
