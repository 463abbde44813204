package threshold

import (
	"encoding/binary"
	"fmt"
)

// Every message is
//
//	wire version (1 byte, = 1) || kind (1 byte) || fields
//
// with fixed-length fields in the order their struct declares them;
// integers are big-endian. A response that carries a status has it as its
// first field, and only the fields of that status follow. docs/THRESHOLD.md
// lists every layout. A decoder accepts exactly the bytes MarshalBinary
// produces for some valid message, and nothing else.

const wireVersion = 1

type kind byte

const (
	kindRegister1Request  kind = 0x01
	kindRegister1Response kind = 0x02
	kindRegister2Request  kind = 0x03
	kindRegister2Response kind = 0x04
	kindRecover1Request   kind = 0x05
	kindRecover1Response  kind = 0x06
	kindRecover2Request   kind = 0x07
	kindRecover2Response  kind = 0x08
	kindRecover3Request   kind = 0x09
	kindRecover3Response  kind = 0x0a
	kindDeleteRequest     kind = 0x0b
	kindDeleteResponse    kind = 0x0c
)

// Status is a realm's answer to a recovery request.
type Status uint8

// The statuses. Recover1Response carries OK, NotRegistered or NoGuesses;
// Recover2Response also VersionMismatch; Recover3Response also
// BadUnlockKeyTag.
const (
	StatusOK              Status = 1
	StatusNotRegistered   Status = 2 // the user has no registration here
	StatusNoGuesses       Status = 3 // the registration's guesses are used up; it is gone
	StatusVersionMismatch Status = 4 // the request is for another registration
	StatusBadUnlockKeyTag Status = 5 // the unlock tag is wrong (recover3 only)
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "OK"
	case StatusNotRegistered:
		return "NotRegistered"
	case StatusNoGuesses:
		return "NoGuesses"
	case StatusVersionMismatch:
		return "VersionMismatch"
	case StatusBadUnlockKeyTag:
		return "BadUnlockKeyTag"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// SignedPublicKey is a realm's OPRF public key (its key share times the
// generator), signed with the registration's one-time Ed25519 key over
// frame("wabackup threshold v1 oprf public key", version, realm id,
// public key). The signing key is discarded after registration.
type SignedPublicKey struct {
	PublicKey    [elementSize]byte
	VerifyingKey [verifyingKeySize]byte
	Signature    [signatureSize]byte
}

// Register1Request asks a realm whether it is available (phase 1 of
// registration).
type Register1Request struct{}

// Register1Response is a realm's answer: it is available.
type Register1Response struct{}

// Register2Request is a registration, for one realm (phase 2 of
// registration). It holds that realm's secrets; send it only to that realm.
type Register2Request struct {
	Version                   Version
	OPRFKeyShare              [scalarSize]byte // the realm's share of the root OPRF key; non-zero
	OPRFSignedPublicKey       SignedPublicKey
	UnlockKeyCommitment       [commitmentSize]byte
	UnlockKeyTag              [tagSize]byte
	EncryptionKeyScalarShare  [scalarSize]byte
	EncryptedSecret           [encryptedSecretSize]byte
	EncryptedSecretCommitment [tagSize]byte
	AllowedGuesses            uint16 // at least 1
}

// Register2Response is a realm's answer: the registration is stored.
type Register2Response struct{}

// Recover1Request asks a realm for the user's registration version (phase 1
// of recovery).
type Recover1Request struct{}

// Recover1Response is a realm's answer to recover1: OK with the version,
// NotRegistered or NoGuesses.
type Recover1Response struct {
	Status  Status
	Version Version // OK only
}

// Recover2Request is the blinded T-OPRF input (phase 2 of recovery). It costs
// the user one guess at the realm.
type Recover2Request struct {
	Version          Version
	BlindedAccessKey [elementSize]byte
}

// Recover2Response is a realm's answer to recover2: OK with its evaluation,
// the evaluation's DLEQ proof, its signed public key, the unlock-key
// commitment and its guess counters (the guess already counted);
// NotRegistered, NoGuesses or VersionMismatch.
type Recover2Response struct {
	Status              Status
	BlindedResult       [elementSize]byte
	BlindedResultProof  [proofSize]byte
	OPRFSignedPublicKey SignedPublicKey
	UnlockKeyCommitment [commitmentSize]byte
	AllowedGuesses      uint16 // at least 1
	AttemptedGuesses    uint16 // 1..AllowedGuesses
}

// Recover3Request proves knowledge of the password to a realm (phase 3 of
// recovery).
type Recover3Request struct {
	Version      Version
	UnlockKeyTag [tagSize]byte
}

// Recover3Response is a realm's answer to recover3: OK with its
// encryption-key share, the encrypted secret and its commitment (the guess
// counter reset); BadUnlockKeyTag with the guesses left; NotRegistered,
// NoGuesses or VersionMismatch.
type Recover3Response struct {
	Status                    Status
	EncryptionKeyScalarShare  [scalarSize]byte          // OK only
	EncryptedSecret           [encryptedSecretSize]byte // OK only
	EncryptedSecretCommitment [tagSize]byte             // OK only
	GuessesRemaining          uint16                    // BadUnlockKeyTag only
}

// DeleteRequest asks a realm to forget the user.
type DeleteRequest struct{}

// DeleteResponse is a realm's answer: the user is NotRegistered there.
type DeleteResponse struct{}

// --- sizes ---

const (
	headerSize          = 2
	signedPublicKeySize = elementSize + verifyingKeySize + signatureSize
	register2Size       = headerSize + len(Version{}) + scalarSize + signedPublicKeySize + commitmentSize +
		tagSize + scalarSize + encryptedSecretSize + tagSize + 2
	recover1OKSize  = headerSize + 1 + len(Version{})
	recover2ReqSize = headerSize + len(Version{}) + elementSize
	recover2OKSize  = headerSize + 1 + elementSize + proofSize + signedPublicKeySize + commitmentSize + 2 + 2
	recover3ReqSize = headerSize + len(Version{}) + tagSize
	recover3OKSize  = headerSize + 1 + scalarSize + encryptedSecretSize + tagSize
	recover3BadSize = headerSize + 1 + 2
	statusOnlySize  = headerSize + 1
)

// --- encoding ---

func header(k kind, size int) []byte {
	b := make([]byte, headerSize, size)
	b[0], b[1] = wireVersion, byte(k)
	return b
}

func appendSignedPublicKey(b []byte, s *SignedPublicKey) []byte {
	b = append(b, s.PublicKey[:]...)
	b = append(b, s.VerifyingKey[:]...)
	return append(b, s.Signature[:]...)
}

// MarshalBinary returns the wire encoding of m.
func (m *Register1Request) MarshalBinary() ([]byte, error) {
	return header(kindRegister1Request, headerSize), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Register1Response) MarshalBinary() ([]byte, error) {
	return header(kindRegister1Response, headerSize), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Register2Request) MarshalBinary() ([]byte, error) {
	b := header(kindRegister2Request, register2Size)
	b = append(b, m.Version[:]...)
	b = append(b, m.OPRFKeyShare[:]...)
	b = appendSignedPublicKey(b, &m.OPRFSignedPublicKey)
	b = append(b, m.UnlockKeyCommitment[:]...)
	b = append(b, m.UnlockKeyTag[:]...)
	b = append(b, m.EncryptionKeyScalarShare[:]...)
	b = append(b, m.EncryptedSecret[:]...)
	b = append(b, m.EncryptedSecretCommitment[:]...)
	return binary.BigEndian.AppendUint16(b, m.AllowedGuesses), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Register2Response) MarshalBinary() ([]byte, error) {
	return header(kindRegister2Response, headerSize), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover1Request) MarshalBinary() ([]byte, error) {
	return header(kindRecover1Request, headerSize), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover1Response) MarshalBinary() ([]byte, error) {
	b := header(kindRecover1Response, recover1OKSize)
	b = append(b, byte(m.Status))
	switch m.Status {
	case StatusOK:
		return append(b, m.Version[:]...), nil
	case StatusNotRegistered, StatusNoGuesses:
		return b, nil
	}
	return nil, fmt.Errorf("threshold: Recover1Response with status %v", m.Status)
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover2Request) MarshalBinary() ([]byte, error) {
	b := header(kindRecover2Request, recover2ReqSize)
	b = append(b, m.Version[:]...)
	return append(b, m.BlindedAccessKey[:]...), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover2Response) MarshalBinary() ([]byte, error) {
	b := header(kindRecover2Response, recover2OKSize)
	b = append(b, byte(m.Status))
	switch m.Status {
	case StatusOK:
		b = append(b, m.BlindedResult[:]...)
		b = append(b, m.BlindedResultProof[:]...)
		b = appendSignedPublicKey(b, &m.OPRFSignedPublicKey)
		b = append(b, m.UnlockKeyCommitment[:]...)
		b = binary.BigEndian.AppendUint16(b, m.AllowedGuesses)
		return binary.BigEndian.AppendUint16(b, m.AttemptedGuesses), nil
	case StatusNotRegistered, StatusNoGuesses, StatusVersionMismatch:
		return b, nil
	}
	return nil, fmt.Errorf("threshold: Recover2Response with status %v", m.Status)
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover3Request) MarshalBinary() ([]byte, error) {
	b := header(kindRecover3Request, recover3ReqSize)
	b = append(b, m.Version[:]...)
	return append(b, m.UnlockKeyTag[:]...), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *Recover3Response) MarshalBinary() ([]byte, error) {
	b := header(kindRecover3Response, recover3OKSize)
	b = append(b, byte(m.Status))
	switch m.Status {
	case StatusOK:
		b = append(b, m.EncryptionKeyScalarShare[:]...)
		b = append(b, m.EncryptedSecret[:]...)
		return append(b, m.EncryptedSecretCommitment[:]...), nil
	case StatusBadUnlockKeyTag:
		return binary.BigEndian.AppendUint16(b, m.GuessesRemaining), nil
	case StatusNotRegistered, StatusNoGuesses, StatusVersionMismatch:
		return b, nil
	}
	return nil, fmt.Errorf("threshold: Recover3Response with status %v", m.Status)
}

// MarshalBinary returns the wire encoding of m.
func (m *DeleteRequest) MarshalBinary() ([]byte, error) {
	return header(kindDeleteRequest, headerSize), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *DeleteResponse) MarshalBinary() ([]byte, error) {
	return header(kindDeleteResponse, headerSize), nil
}

// --- decoding ---

func invalid(name, why string) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidMessage, name, why)
}

// reader splits a message whose total length has been checked.
type reader struct{ b []byte }

func (r *reader) take(dst []byte) {
	copy(dst, r.b[:len(dst)])
	r.b = r.b[len(dst):]
}

func (r *reader) u16() uint16 {
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) signedPublicKey(s *SignedPublicKey) {
	r.take(s.PublicKey[:])
	r.take(s.VerifyingKey[:])
	r.take(s.Signature[:])
}

func checkHeader(data []byte, k kind, name string) error {
	if len(data) < headerSize {
		return invalid(name, "too short")
	}
	if data[0] != wireVersion {
		return invalid(name, fmt.Sprintf("wire version %d", data[0]))
	}
	if kind(data[1]) != k {
		return invalid(name, fmt.Sprintf("message kind %#02x", data[1]))
	}
	return nil
}

// open checks the header and that the message is size bytes long.
func open(data []byte, k kind, name string, size int) (*reader, error) {
	if err := checkHeader(data, k, name); err != nil {
		return nil, err
	}
	if len(data) != size {
		return nil, invalid(name, "wrong length")
	}
	return &reader{data[headerSize:]}, nil
}

// status checks the header, reads a response's status and checks that the
// message has the length sizes gives for that status (a status missing from
// sizes is not allowed in this message).
func status(data []byte, k kind, name string, sizes map[Status]int) (Status, *reader, error) {
	if err := checkHeader(data, k, name); err != nil {
		return 0, nil, err
	}
	if len(data) < statusOnlySize {
		return 0, nil, invalid(name, "too short")
	}
	st := Status(data[headerSize])
	size, ok := sizes[st]
	if !ok {
		return 0, nil, invalid(name, "status "+st.String())
	}
	if len(data) != size {
		return 0, nil, invalid(name, "wrong length for status "+st.String())
	}
	return st, &reader{data[statusOnlySize:]}, nil
}

func checkElement(name, field string, b []byte) error {
	if _, err := parseElement(b); err != nil {
		return invalid(name, field+": "+err.Error())
	}
	return nil
}

func checkScalar(name, field string, b []byte, nonZero bool) error {
	if _, err := parseScalar(b, nonZero); err != nil {
		return invalid(name, field+": "+err.Error())
	}
	return nil
}

func emptyMessage(data []byte, k kind, name string) error {
	_, err := open(data, k, name, headerSize)
	return err
}

// UnmarshalRegister1Request decodes a Register1Request.
func UnmarshalRegister1Request(data []byte) (*Register1Request, error) {
	if err := emptyMessage(data, kindRegister1Request, "Register1Request"); err != nil {
		return nil, err
	}
	return &Register1Request{}, nil
}

// UnmarshalRegister1Response decodes a Register1Response.
func UnmarshalRegister1Response(data []byte) (*Register1Response, error) {
	if err := emptyMessage(data, kindRegister1Response, "Register1Response"); err != nil {
		return nil, err
	}
	return &Register1Response{}, nil
}

// UnmarshalRegister2Request decodes and validates a Register2Request: the
// OPRF key share is a canonical non-zero scalar, the encryption-key share a
// canonical scalar, the OPRF public key a canonical non-identity element,
// and at least one guess is allowed. (The realm checks the signature and
// that the public key matches the share when it processes the request.)
func UnmarshalRegister2Request(data []byte) (*Register2Request, error) {
	const name = "Register2Request"
	r, err := open(data, kindRegister2Request, name, register2Size)
	if err != nil {
		return nil, err
	}
	m := new(Register2Request)
	r.take(m.Version[:])
	r.take(m.OPRFKeyShare[:])
	r.signedPublicKey(&m.OPRFSignedPublicKey)
	r.take(m.UnlockKeyCommitment[:])
	r.take(m.UnlockKeyTag[:])
	r.take(m.EncryptionKeyScalarShare[:])
	r.take(m.EncryptedSecret[:])
	r.take(m.EncryptedSecretCommitment[:])
	m.AllowedGuesses = r.u16()
	if err := checkScalar(name, "OPRF key share", m.OPRFKeyShare[:], true); err != nil {
		return nil, err
	}
	if err := checkElement(name, "OPRF public key", m.OPRFSignedPublicKey.PublicKey[:]); err != nil {
		return nil, err
	}
	if err := checkScalar(name, "encryption-key share", m.EncryptionKeyScalarShare[:], false); err != nil {
		return nil, err
	}
	if m.AllowedGuesses == 0 {
		return nil, invalid(name, "no guesses allowed")
	}
	return m, nil
}

// UnmarshalRegister2Response decodes a Register2Response.
func UnmarshalRegister2Response(data []byte) (*Register2Response, error) {
	if err := emptyMessage(data, kindRegister2Response, "Register2Response"); err != nil {
		return nil, err
	}
	return &Register2Response{}, nil
}

// UnmarshalRecover1Request decodes a Recover1Request.
func UnmarshalRecover1Request(data []byte) (*Recover1Request, error) {
	if err := emptyMessage(data, kindRecover1Request, "Recover1Request"); err != nil {
		return nil, err
	}
	return &Recover1Request{}, nil
}

// UnmarshalRecover1Response decodes a Recover1Response.
func UnmarshalRecover1Response(data []byte) (*Recover1Response, error) {
	st, r, err := status(data, kindRecover1Response, "Recover1Response", map[Status]int{
		StatusOK: recover1OKSize, StatusNotRegistered: statusOnlySize, StatusNoGuesses: statusOnlySize,
	})
	if err != nil {
		return nil, err
	}
	m := &Recover1Response{Status: st}
	if st == StatusOK {
		r.take(m.Version[:])
	}
	return m, nil
}

// UnmarshalRecover2Request decodes a Recover2Request; the blinded access key
// is a canonical non-identity element.
func UnmarshalRecover2Request(data []byte) (*Recover2Request, error) {
	const name = "Recover2Request"
	r, err := open(data, kindRecover2Request, name, recover2ReqSize)
	if err != nil {
		return nil, err
	}
	m := new(Recover2Request)
	r.take(m.Version[:])
	r.take(m.BlindedAccessKey[:])
	if err := checkElement(name, "blinded access key", m.BlindedAccessKey[:]); err != nil {
		return nil, err
	}
	return m, nil
}

// UnmarshalRecover2Response decodes a Recover2Response: with status OK, the
// blinded result and the public key are canonical non-identity elements, the
// proof two canonical scalars, and 1 <= AttemptedGuesses <= AllowedGuesses.
func UnmarshalRecover2Response(data []byte) (*Recover2Response, error) {
	const name = "Recover2Response"
	st, r, err := status(data, kindRecover2Response, name, map[Status]int{
		StatusOK: recover2OKSize, StatusNotRegistered: statusOnlySize,
		StatusNoGuesses: statusOnlySize, StatusVersionMismatch: statusOnlySize,
	})
	if err != nil {
		return nil, err
	}
	m := &Recover2Response{Status: st}
	if st != StatusOK {
		return m, nil
	}
	r.take(m.BlindedResult[:])
	r.take(m.BlindedResultProof[:])
	r.signedPublicKey(&m.OPRFSignedPublicKey)
	r.take(m.UnlockKeyCommitment[:])
	m.AllowedGuesses = r.u16()
	m.AttemptedGuesses = r.u16()
	if err := checkElement(name, "blinded result", m.BlindedResult[:]); err != nil {
		return nil, err
	}
	if err := checkScalar(name, "proof", m.BlindedResultProof[:scalarSize], false); err != nil {
		return nil, err
	}
	if err := checkScalar(name, "proof", m.BlindedResultProof[scalarSize:], false); err != nil {
		return nil, err
	}
	if err := checkElement(name, "OPRF public key", m.OPRFSignedPublicKey.PublicKey[:]); err != nil {
		return nil, err
	}
	if m.AllowedGuesses == 0 || m.AttemptedGuesses == 0 || m.AttemptedGuesses > m.AllowedGuesses {
		return nil, invalid(name, fmt.Sprintf("%d of %d guesses attempted", m.AttemptedGuesses, m.AllowedGuesses))
	}
	return m, nil
}

// UnmarshalRecover3Request decodes a Recover3Request.
func UnmarshalRecover3Request(data []byte) (*Recover3Request, error) {
	r, err := open(data, kindRecover3Request, "Recover3Request", recover3ReqSize)
	if err != nil {
		return nil, err
	}
	m := new(Recover3Request)
	r.take(m.Version[:])
	r.take(m.UnlockKeyTag[:])
	return m, nil
}

// UnmarshalRecover3Response decodes a Recover3Response; with status OK the
// encryption-key share is a canonical scalar.
func UnmarshalRecover3Response(data []byte) (*Recover3Response, error) {
	const name = "Recover3Response"
	st, r, err := status(data, kindRecover3Response, name, map[Status]int{
		StatusOK: recover3OKSize, StatusBadUnlockKeyTag: recover3BadSize, StatusNotRegistered: statusOnlySize,
		StatusNoGuesses: statusOnlySize, StatusVersionMismatch: statusOnlySize,
	})
	if err != nil {
		return nil, err
	}
	m := &Recover3Response{Status: st}
	switch st {
	case StatusOK:
		r.take(m.EncryptionKeyScalarShare[:])
		r.take(m.EncryptedSecret[:])
		r.take(m.EncryptedSecretCommitment[:])
		if err := checkScalar(name, "encryption-key share", m.EncryptionKeyScalarShare[:], false); err != nil {
			return nil, err
		}
	case StatusBadUnlockKeyTag:
		m.GuessesRemaining = r.u16()
	}
	return m, nil
}

// UnmarshalDeleteRequest decodes a DeleteRequest.
func UnmarshalDeleteRequest(data []byte) (*DeleteRequest, error) {
	if err := emptyMessage(data, kindDeleteRequest, "DeleteRequest"); err != nil {
		return nil, err
	}
	return &DeleteRequest{}, nil
}

// UnmarshalDeleteResponse decodes a DeleteResponse.
func UnmarshalDeleteResponse(data []byte) (*DeleteResponse, error) {
	if err := emptyMessage(data, kindDeleteResponse, "DeleteResponse"); err != nil {
		return nil, err
	}
	return &DeleteResponse{}, nil
}
