package opaque

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// Lengths fixed by RFC 9807 §2 for every configuration.
const (
	nn    = 32 // Nn: nonce length
	nseed = 32 // Nseed: seed length
)

// Domain-separation labels, verbatim from RFC 9807.
const (
	labelOPRFKey          = "OprfKey"                           // §5.2.2
	labelDeriveKeyPair    = "OPAQUE-DeriveKeyPair"              // §5.2.2
	labelDeriveDHKeyPair  = "OPAQUE-DeriveDiffieHellmanKeyPair" // §6.4.1
	labelMaskingKey       = "MaskingKey"                        // §4.1.2
	labelAuthKey          = "AuthKey"                           // §4.1.2
	labelExportKey        = "ExportKey"                         // §4.1.2
	labelPrivateKey       = "PrivateKey"                        // §4.1.2
	labelCredentialPad    = "CredentialResponsePad"             // §6.3.2.2
	labelPreamble         = "OPAQUEv1-"                         // §6.4.2.1
	labelExpandPrefix     = "OPAQUE-"                           // §6.4.2.1
	labelHandshakeSecret  = "HandshakeSecret"                   // §6.4.2.2
	labelSessionKey       = "SessionKey"                        // §6.4.2.2
	labelServerMAC        = "ServerMAC"                         // §6.4.2.2
	labelClientMAC        = "ClientMAC"                         // §6.4.2.2
	maxLengthPrefixed     = 1<<16 - 1                           // I2OSP(len(x), 2)
	maxExpandLabelContext = 255                                 // context<0..255>
)

// Suite is an OPAQUE-3DH configuration (RFC 9807 §7): OPRF, KDF, MAC, Hash and
// AKE group. The KSF and the context string are chosen separately, when a
// [Client] or [Server] is made. The zero Suite is invalid; use
// [Ristretto255SHA512] or [P256SHA256].
type Suite struct{ p *suiteParams }

// Ristretto255SHA512 is the configuration
// (ristretto255-SHA512, HKDF-SHA-512, HMAC-SHA-512, SHA-512, ristretto255),
// the first one RFC 9807 §7 recommends, and wabackup's default.
var Ristretto255SHA512 = Suite{&suiteParams{
	name:    "ristretto255-SHA512",
	oprf:    oprf.SuiteRistretto255,
	newHash: sha512.New,
	nh:      64,
	noe:     32,
	nok:     32,
	ake:     primeOrderAKE{suite: oprf.SuiteRistretto255, pkLen: 32, skLen: 32},
}}

// P256SHA256 is the configuration
// (P256-SHA256, HKDF-SHA-256, HMAC-SHA-256, SHA-256, P-256) of RFC 9807 §7.
var P256SHA256 = Suite{&suiteParams{
	name:    "P256-SHA256",
	oprf:    oprf.SuiteP256,
	newHash: sha256.New,
	nh:      32,
	noe:     33,
	nok:     32,
	ake:     primeOrderAKE{suite: oprf.SuiteP256, pkLen: 33, skLen: 32},
}}

type suiteParams struct {
	name    string
	oprf    oprf.Suite       // RFC 9497 modeOPRF suite
	newHash func() hash.Hash // Hash; KDF = HKDF-Hash, MAC = HMAC-Hash
	nh      int              // Nh = Nm = Nx (HMAC and HKDF over Hash)
	noe     int              // Noe: serialized OPRF element
	nok     int              // Nok: OPRF private key
	ake     akeGroup         // 3DH group
}

// String returns the name of the suite's OPRF, e.g. "ristretto255-SHA512".
func (s Suite) String() string {
	if s.p == nil {
		return "invalid"
	}
	return s.p.name
}

func (s Suite) check() error {
	if s.p == nil {
		return errors.New("opaque: invalid (zero) Suite")
	}
	return nil
}

func (p *suiteParams) npk() int { return p.ake.npk() }

// Sizes of the wire structures (RFC 9807 §5.1 and §6.1).
func (p *suiteParams) envelopeSize() int             { return nn + p.nh }
func (p *suiteParams) maskedResponseSize() int       { return p.npk() + nn + p.nh }
func (p *suiteParams) registrationRequestSize() int  { return p.noe }
func (p *suiteParams) registrationResponseSize() int { return p.noe + p.npk() }
func (p *suiteParams) registrationRecordSize() int {
	return p.npk() + p.nh + p.envelopeSize()
}
func (p *suiteParams) credentialRequestSize() int { return p.noe }
func (p *suiteParams) credentialResponseSize() int {
	return p.noe + nn + p.maskedResponseSize()
}
func (p *suiteParams) ke1Size() int { return p.credentialRequestSize() + nn + p.npk() }
func (p *suiteParams) ke2Size() int {
	return p.credentialResponseSize() + nn + p.npk() + p.nh
}
func (p *suiteParams) ke3Size() int { return p.nh }

// --- KDF, MAC, Hash (RFC 9807 §2.2, §2.3) ---

// mustNotFail turns an error that cannot happen for the fixed lengths used in
// this package into a panic.
func mustNotFail(b []byte, err error) []byte {
	if err != nil {
		panic("opaque: internal error: " + err.Error())
	}
	return b
}

// extract is HKDF-Extract(salt, ikm).
func (p *suiteParams) extract(salt, ikm []byte) []byte {
	return mustNotFail(hkdf.Extract(p.newHash, ikm, salt))
}

// expand is HKDF-Expand(prk, info, l).
func (p *suiteParams) expand(prk, info []byte, l int) []byte {
	return mustNotFail(hkdf.Expand(p.newHash, prk, string(info), l))
}

func (p *suiteParams) mac(key, msg []byte) []byte {
	m := hmac.New(p.newHash, key)
	m.Write(msg)
	return m.Sum(nil)
}

func (p *suiteParams) hash(msg []byte) []byte {
	h := p.newHash()
	h.Write(msg)
	return h.Sum(nil)
}

// expandLabel is Expand-Label of RFC 9807 §6.4.2.1, with the CustomLabel
// encoded as in RFC 8446 §3.4: uint16 length, label<8..255>, context<0..255>.
func (p *suiteParams) expandLabel(secret []byte, label string, context []byte, length int) []byte {
	full := labelExpandPrefix + label
	if len(full) > 255 || len(context) > maxExpandLabelContext {
		panic("opaque: internal error: Expand-Label argument too long")
	}
	info := make([]byte, 0, 2+1+len(full)+1+len(context))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, byte(len(context)))
	info = append(info, context...)
	return p.expand(secret, info, length)
}

// deriveSecret is Derive-Secret(secret, label, transcriptHash).
func (p *suiteParams) deriveSecret(secret []byte, label string, transcriptHash []byte) []byte {
	return p.expandLabel(secret, label, transcriptHash, p.nh)
}

// --- OPRF (RFC 9807 §2.1, RFC 9497 modeOPRF) ---

// deriveOPRFKey derives the per-credential OPRF key (RFC 9807 §5.2.2 and
// §6.3.2.2):
//
//	seed = Expand(oprf_seed, concat(credential_identifier, "OprfKey"), Nok)
//	(oprf_key, _) = DeriveKeyPair(seed, "OPAQUE-DeriveKeyPair")
func (p *suiteParams) deriveOPRFKey(oprfSeed, credentialIdentifier []byte) (*oprf.PrivateKey, error) {
	seed := p.expand(oprfSeed, concat(credentialIdentifier, []byte(labelOPRFKey)), p.nok)
	k, err := oprf.DeriveKey(p.oprf, oprf.BaseMode, seed, []byte(labelDeriveKeyPair))
	if err != nil {
		return nil, fmt.Errorf("opaque: OPRF key derivation failed: %w", err)
	}
	return k, nil
}

// randomBlind draws a non-zero OPRF scalar from crypto/rand.
func (p *suiteParams) randomBlind() group.Scalar {
	return p.oprf.Group().RandomNonZeroScalar(rand.Reader)
}

// parseScalar decodes a canonical, non-zero scalar of the OPRF group.
func (p *suiteParams) parseScalar(b []byte) (group.Scalar, error) {
	s := p.oprf.Group().NewScalar()
	if len(b) != p.nok || s.UnmarshalBinary(b) != nil || s.IsZero() {
		return nil, errors.New("opaque: invalid scalar")
	}
	return s, nil
}

// parseOPRFElement is the OPRF DeserializeElement of RFC 9497 §2.1: exactly
// Noe bytes, a canonical encoding of a group element that is not the identity.
func (p *suiteParams) parseOPRFElement(b []byte) (group.Element, error) {
	return parseElement(p.oprf.Group(), b, p.noe)
}

func parseElement(g group.Group, b []byte, size int) (group.Element, error) {
	if len(b) != size {
		return nil, errors.New("wrong element length")
	}
	e := g.NewElement()
	if err := e.UnmarshalBinary(b); err != nil {
		return nil, errors.New("invalid element encoding")
	}
	if e.IsIdentity() {
		return nil, errors.New("identity element")
	}
	// Reject any encoding that is not the one SerializeElement produces.
	enc, err := e.MarshalBinaryCompress()
	if err != nil || subtle.ConstantTimeCompare(enc, b) != 1 {
		return nil, errors.New("non-canonical element encoding")
	}
	return e, nil
}

func serializeElement(e group.Element) []byte {
	b, err := e.MarshalBinaryCompress()
	return mustNotFail(b, err)
}

// --- AKE group (RFC 9807 §6.4.1) ---

// akeGroup is the Diffie-Hellman group of OPAQUE-3DH. Private and public keys
// are opaque to the rest of the package; public keys are also kept in their
// Npk-byte encoding.
type akeGroup interface {
	npk() int
	nsk() int
	// deriveKeyPair is DeriveDiffieHellmanKeyPair(seed).
	deriveKeyPair(seed []byte) (sk any, pk []byte, err error)
	parsePrivateKey(b []byte) (any, error)
	// parsePublicKey validates an encoded public key (RFC 9807 §10.7).
	parsePublicKey(b []byte) (any, error)
	publicKey(sk any) []byte
	serializePrivateKey(sk any) []byte
	// dh is DiffieHellman(k, B); it fails if the result is the identity.
	dh(sk, pk any) ([]byte, error)
}

// primeOrderAKE implements 3DH over the OPRF's own prime-order group
// (RFC 9807 §6.4.1, "3DH ristretto255" and "3DH P-256"): keys are derived with
// RFC 9497 DeriveKeyPair(seed, "OPAQUE-DeriveDiffieHellmanKeyPair"), public
// keys and DH outputs are encoded with SerializeElement.
type primeOrderAKE struct {
	suite oprf.Suite
	pkLen int // Npk
	skLen int // Nsk
}

func (a primeOrderAKE) npk() int { return a.pkLen }
func (a primeOrderAKE) nsk() int { return a.skLen }

func (a primeOrderAKE) deriveKeyPair(seed []byte) (any, []byte, error) {
	k, err := oprf.DeriveKey(a.suite, oprf.BaseMode, seed, []byte(labelDeriveDHKeyPair))
	if err != nil {
		return nil, nil, fmt.Errorf("opaque: DeriveDiffieHellmanKeyPair failed: %w", err)
	}
	// circl keeps the scalar private; round-trip it through its encoding.
	b, err := k.MarshalBinary()
	if err != nil {
		return nil, nil, err
	}
	sk, err := a.parsePrivateKey(b)
	if err != nil {
		return nil, nil, err
	}
	return sk, a.publicKey(sk), nil
}

func (a primeOrderAKE) parsePrivateKey(b []byte) (any, error) {
	s := a.suite.Group().NewScalar()
	if len(b) != a.skLen || s.UnmarshalBinary(b) != nil || s.IsZero() {
		return nil, errors.New("opaque: invalid private key")
	}
	return s, nil
}

func (a primeOrderAKE) parsePublicKey(b []byte) (any, error) {
	return parseElement(a.suite.Group(), b, a.pkLen)
}

func (a primeOrderAKE) publicKey(sk any) []byte {
	return serializeElement(a.suite.Group().NewElement().MulGen(sk.(group.Scalar)))
}

func (a primeOrderAKE) serializePrivateKey(sk any) []byte {
	b, err := sk.(group.Scalar).MarshalBinary()
	return mustNotFail(b, err)
}

func (a primeOrderAKE) dh(sk, pk any) ([]byte, error) {
	e := a.suite.Group().NewElement().Mul(pk.(group.Element), sk.(group.Scalar))
	if e.IsIdentity() {
		return nil, errors.New("opaque: Diffie-Hellman result is the identity")
	}
	return serializeElement(e), nil
}

// --- byte helpers (RFC 9807 §1.2) ---

func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// appendLengthPrefixed appends I2OSP(len(x), 2) || x.
func appendLengthPrefixed(dst, x []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(x)))
	return append(dst, x...)
}

func xorBytes(a, b []byte) []byte {
	if len(a) != len(b) {
		panic("opaque: internal error: xor of unequal lengths")
	}
	out := make([]byte, len(a))
	subtle.XORBytes(out, a, b)
	return out
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("opaque: crypto/rand failed: " + err.Error())
	}
	return b
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
