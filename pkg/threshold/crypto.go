package threshold

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	_ "crypto/sha512" // crypto.SHA512 for the DLEQ proof
	"crypto/subtle"
	"encoding/binary"
	"errors"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/math/polynomial"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/secretsharing"
	"github.com/cloudflare/circl/zk/dleq"
	"golang.org/x/crypto/argon2"
)

// The primitives, all from Go's standard library, golang.org/x/crypto and
// github.com/cloudflare/circl (docs/THRESHOLD.md, "Primitives").

// g is ristretto255, the group of the OPRF, the proofs and the sharing.
var g = group.Ristretto255

// oprfSuite is RFC 9497's ristretto255-SHA512; the T-OPRF's input and output
// follow its OPRF mode (modeOPRF, 0x00).
var oprfSuite = oprf.SuiteRistretto255

// dleqParams make each realm's proof exactly RFC 9497's VOPRF proof
// (GenerateProof, §2.2.1) with the contextString of modeVOPRF (0x01): the
// proof a VOPRF server holding the realm's key share would send.
var dleqParams = dleq.Params{G: g, H: crypto.SHA512, DST: []byte("OPRFV1-\x01-ristretto255-SHA512")}

// Sizes of the fixed-length fields.
const (
	elementSize         = 32 // a ristretto255 element
	scalarSize          = 32 // a ristretto255 scalar
	proofSize           = 2 * scalarSize
	verifyingKeySize    = 32 // Ed25519 public key
	signatureSize       = 64 // Ed25519 signature
	commitmentSize      = 32 // unlock-key commitment: the first half of the OPRF output
	unlockKeySize       = 32 // the second half
	tagSize             = 16 // unlock-key tag and encrypted-secret commitment: HMAC-SHA-256 truncated
	stretchedSize       = 64 // Argon2id output: access key || encryption-key seed
	encryptedSecretSize = SecretSize + 16
)

// Domain-separation labels.
const (
	labelSalt             = "wabackup threshold v1 salt"
	labelSignedPublicKey  = "wabackup threshold v1 oprf public key"
	labelUnlockKeyTag     = "wabackup threshold v1 unlock key tag"
	labelSecretCommitment = "wabackup threshold v1 encrypted secret commitment"
	labelEncryptionKey    = "wabackup threshold v1 encryption key"
	labelSecretAAD        = "wabackup threshold v1 secret"

	// Form 2 (realm-bound registrations, docs/THRESHOLD.md §4a).
	labelCommitment2       = "wabackup threshold v2 unlock key commitment"
	labelRealmSet2         = "wabackup threshold v2 realm set"
	labelRealmBinding2     = "wabackup threshold v2 realm binding"
	labelUnlockKeyTag2     = "wabackup threshold v2 unlock key tag"
	labelSecretCommitment2 = "wabackup threshold v2 encrypted secret commitment"
)

// frame encodes a label and fields unambiguously: each as a 4-byte
// big-endian length followed by its bytes.
func frame(label string, fields ...[]byte) []byte {
	n := 4 + len(label)
	for _, f := range fields {
		n += 4 + len(f)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint32(b, uint32(len(label)))
	b = append(b, label...)
	for _, f := range fields {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// mac is HMAC-SHA-256(key, frame(label, fields...)) truncated to size bytes.
func mac(key []byte, size int, label string, fields ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(frame(label, fields...))
	return m.Sum(nil)[:size]
}

// salt is version || SHA-256(frame(labelSalt, userInfo)).
func salt(v Version, userInfo []byte) []byte {
	h := sha256.Sum256(frame(labelSalt, userInfo))
	return append(v[:], h[:]...)
}

// stretch is Argon2id(password, salt(v, userInfo)) with 64 output bytes: the
// access key (the T-OPRF input) and the encryption-key seed.
func (p KDFParams) stretch(password []byte, v Version, userInfo []byte) []byte {
	return argon2.IDKey(password, salt(v, userInfo), p.Time, p.MemoryKiB, p.Threads, stretchedSize)
}

// unlockKeyTag is realm i's unlock tag: form 1 binds the realm id, form 2
// the realm id and the realm's public key, so that a tag made for one
// realm is refused by every other, and a tag the client made for a key
// that is not the realm's (a relay's) is refused by the realm.
func unlockKeyTag(f Form, unlockKey []byte, r RealmConfig) (t [tagSize]byte) {
	if f == Form1 {
		copy(t[:], mac(unlockKey, tagSize, labelUnlockKeyTag, r.ID[:]))
	} else {
		copy(t[:], mac(unlockKey, tagSize, labelUnlockKeyTag2, r.ID[:], r.PublicKey))
	}
	return t
}

func secretCommitment(f Form, unlockKey []byte, r RealmConfig, share *[scalarSize]byte, ct *[encryptedSecretSize]byte) (c [tagSize]byte) {
	if f == Form1 {
		copy(c[:], mac(unlockKey, tagSize, labelSecretCommitment, r.ID[:], share[:], ct[:]))
	} else {
		copy(c[:], mac(unlockKey, tagSize, labelSecretCommitment2, r.ID[:], r.PublicKey, share[:], ct[:]))
	}
	return c
}

// passwordCommitment2 is the first half of a form-2 unlock-key commitment:
// HMAC-SHA-256 keyed with the first half of the OPRF output (form 1's whole
// commitment), so that the two forms' commitments never coincide and a
// client tells them apart from the output alone.
func passwordCommitment2(out []byte) []byte {
	return mac(out[:commitmentSize], commitmentSize/2, labelCommitment2)
}

// realmSetEncoding is the canonical encoding of what a form-2 registration
// authenticates besides each realm's own entry: the threshold, the number
// of realms, the Argon2id parameters, the user info and every realm id in
// order.
func realmSetEncoding(c *Config) []byte {
	var params [11]byte
	params[0], params[1] = byte(c.Threshold), byte(len(c.Realms))
	binary.BigEndian.PutUint32(params[2:], c.KDF.Time)
	binary.BigEndian.PutUint32(params[6:], c.KDF.MemoryKiB)
	params[10] = c.KDF.Threads
	fields := [][]byte{params[:], c.UserInfo}
	for _, r := range c.Realms {
		fields = append(fields, r.ID[:])
	}
	return frame(labelRealmSet2, fields...)
}

// realmBinding is the second half of realm i's (1-based) form-2 unlock-key
// commitment: a MAC under the unlock key over the realm set and realm i's
// position, id and public key. Only the password and a threshold of the
// registered realms' evaluations give the key, so a client checks it after
// recover2 and before any recover3, and a realm set changed in storage (a
// realm's key replaced by a relay's, the threshold, the order) fails it.
func realmBinding(unlockKey, set []byte, i int, r RealmConfig) []byte {
	return mac(unlockKey, commitmentSize/2, labelRealmBinding2, set, []byte{byte(i)}, r.ID[:], r.PublicKey)
}

func signedPublicKeyMessage(v Version, id RealmID, publicKey *[elementSize]byte) []byte {
	return frame(labelSignedPublicKey, v[:], id[:], publicKey[:])
}

// secretAEAD is AES-256-GCM under HKDF-SHA-256(seed || scalar, info =
// labelEncryptionKey): a key used for exactly one encryption (see
// docs/THRESHOLD.md, "Nonces").
func secretAEAD(seed []byte, scalar group.Scalar) (cipher.AEAD, error) {
	sb := scalarBytes(scalar)
	ikm := append(append(make([]byte, 0, len(seed)+scalarSize), seed...), sb[:]...)
	key, err := hkdf.Key(sha256.New, ikm, nil, labelEncryptionKey, 32)
	clear(ikm)
	clear(sb[:])
	if err != nil {
		return nil, err
	}
	defer clear(key)
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// zeroNonce is the only nonce the secret's key ever sees.
var zeroNonce [12]byte

func secretAAD(v Version) []byte { return frame(labelSecretAAD, v[:]) }

func sealSecret(seed []byte, scalar group.Scalar, v Version, secret []byte) (ct [encryptedSecretSize]byte, err error) {
	a, err := secretAEAD(seed, scalar)
	if err != nil {
		return ct, err
	}
	copy(ct[:], a.Seal(nil, zeroNonce[:], secret, secretAAD(v)))
	return ct, nil
}

var errSecretDoesNotOpen = errors.New("threshold: the encrypted secret does not open")

func openSecret(seed []byte, scalar group.Scalar, v Version, ct *[encryptedSecretSize]byte) ([]byte, error) {
	a, err := secretAEAD(seed, scalar)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, zeroNonce[:], ct[:], secretAAD(v))
	if err != nil {
		return nil, errSecretDoesNotOpen
	}
	return pt, nil
}

// --- group elements and scalars ---

var (
	errElement = errors.New("not a canonical encoding of a non-identity ristretto255 element")
	errScalar  = errors.New("not a canonical ristretto255 scalar")
	errZero    = errors.New("zero scalar")
)

// parseElement decodes a canonical, non-identity ristretto255 element.
func parseElement(b []byte) (group.Element, error) {
	if len(b) != elementSize {
		return nil, errElement
	}
	e := g.NewElement()
	if e.UnmarshalBinary(b) != nil || e.IsIdentity() {
		return nil, errElement
	}
	enc, err := e.MarshalBinaryCompress()
	if err != nil || subtle.ConstantTimeCompare(enc, b) != 1 {
		return nil, errElement
	}
	return e, nil
}

// parseScalar decodes a canonical scalar (little-endian, below the group
// order), refusing zero if nonZero.
func parseScalar(b []byte, nonZero bool) (group.Scalar, error) {
	s := g.NewScalar()
	if len(b) != scalarSize || s.UnmarshalBinary(b) != nil {
		return nil, errScalar
	}
	if nonZero && s.IsZero() {
		return nil, errZero
	}
	return s, nil
}

func elementBytes(e group.Element) (b [elementSize]byte) {
	enc, err := e.MarshalBinaryCompress()
	if err != nil || len(enc) != elementSize {
		panic("threshold: internal error: element encoding")
	}
	copy(b[:], enc)
	return b
}

func scalarBytes(s group.Scalar) (b [scalarSize]byte) {
	enc, err := s.MarshalBinary()
	if err != nil || len(enc) != scalarSize {
		panic("threshold: internal error: scalar encoding")
	}
	copy(b[:], enc)
	clear(enc)
	return b
}

// wipe overwrites scalars that held secrets.
func wipe(scalars ...group.Scalar) {
	for _, s := range scalars {
		if s != nil {
			s.SetUint64(0)
		}
	}
}

func shareID(index int) group.Scalar { return g.NewScalar().SetUint64(uint64(index)) }

// shamir splits secret into n shares, any t of which recover it; share i
// (0-based) has ID i+1. No share is zero, so every OPRF key share is a valid
// RFC 9497 private key (a zero share has probability 2^-252; the polynomial is
// drawn again).
func shamir(secret group.Scalar, t, n int) []secretsharing.Share {
	for {
		ss := secretsharing.New(rand.Reader, uint(t-1), secret)
		shares := make([]secretsharing.Share, n)
		ok := true
		for i := range shares {
			shares[i] = ss.ShareWithID(shareID(i + 1))
			ok = ok && !shares[i].Value.IsZero()
		}
		if ok {
			return shares
		}
	}
}

// --- the T-OPRF ---

func oprfKey(k group.Scalar) (*oprf.PrivateKey, error) {
	kb := scalarBytes(k)
	defer clear(kb[:])
	key := new(oprf.PrivateKey)
	if err := key.UnmarshalBinary(oprfSuite, kb[:]); err != nil {
		return nil, err
	}
	return key, nil
}

// evaluate is RFC 9497 BlindEvaluate with key share k.
func evaluate(k group.Scalar, blinded group.Element) (group.Element, error) {
	key, err := oprfKey(k)
	if err != nil {
		return nil, err
	}
	ev, err := oprf.NewServer(oprfSuite, key).Evaluate(&oprf.EvaluationRequest{Elements: []oprf.Blinded{blinded}})
	if err != nil {
		return nil, err
	}
	return ev.Elements[0], nil
}

// prove is RFC 9497 GenerateProof(k, G, publicKey, [blinded], [evaluated])
// with proof randomness r.
func prove(k group.Scalar, publicKey, blinded, evaluated group.Element, r group.Scalar) (p [proofSize]byte, err error) {
	proof, err := dleq.Prover{Params: dleqParams}.ProveBatchWithRandomnessRFC9497(
		k, publicKey, []group.Element{blinded}, []group.Element{evaluated}, r)
	if err != nil {
		return p, err
	}
	b, err := proof.MarshalBinary()
	if err != nil {
		return p, err
	}
	copy(p[:], b)
	return p, nil
}

// verifyProof is RFC 9497 VerifyProof(G, publicKey, [blinded], [evaluated], proof).
func verifyProof(publicKey, blinded, evaluated group.Element, proof *[proofSize]byte) bool {
	var p dleq.Proof
	if p.UnmarshalBinary(g, proof[:]) != nil {
		return false
	}
	return dleq.Verifier{Params: dleqParams}.VerifyBatchRFC9497(
		publicKey, []group.Element{blinded}, []group.Element{evaluated}, &p)
}

// combine interpolates the realms' evaluations "in the exponent": with
// λ_j the Lagrange coefficients at 0 of the share numbers, Σ λ_j·Z_j is
// the evaluation under the root key (JKKX17's 2HashTDH).
func combine(indices []int, evaluations []group.Element) group.Element {
	xs := make([]group.Scalar, len(indices))
	for j, i := range indices {
		xs[j] = shareID(i)
	}
	zero := g.NewScalar()
	sum := g.Identity()
	for j, z := range evaluations {
		sum.Add(sum, g.NewElement().Mul(z, polynomial.LagrangeBase(uint(j), xs, zero)))
	}
	return sum
}
