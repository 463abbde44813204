package opaque

import (
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
)

// ErrInvalidMessage is wrapped by every decoding error: wrong length, a
// non-canonical encoding, an invalid or identity group element, or a message
// of another suite.
var ErrInvalidMessage = errors.New("opaque: invalid message")

func invalid(msg, why string) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidMessage, msg, why)
}

var errUninitialized = errors.New("opaque: message was not produced by this package or by a Suite's Unmarshal method")

// All messages are fixed-length concatenations of their fields, as defined by
// RFC 9807 §5.1, §6.1 and §6.3.1 (TLS presentation language, RFC 8446 §3).
// A message value is only made by this package: by the protocol functions or by
// the Suite's Unmarshal methods, which validate every field. Its group elements
// are kept decoded next to their canonical encodings.

// RegistrationRequest is the client's first registration message
// (RFC 9807 §5.1): blinded_message[Noe].
type RegistrationRequest struct {
	suite          Suite
	blindedMessage []byte
	blinded        group.Element
}

// RegistrationResponse is the server's registration message (RFC 9807 §5.1):
// evaluated_message[Noe] || server_public_key[Npk].
type RegistrationResponse struct {
	suite            Suite
	evaluatedMessage []byte
	evaluated        group.Element
	serverPublicKey  []byte
	serverPK         any
}

// RegistrationRecord is the client's final registration message, which the
// server stores as the credential file (RFC 9807 §5.1):
// client_public_key[Npk] || masking_key[Nh] || envelope, where
// envelope = envelope_nonce[Nn] || auth_tag[Nm] (§4.1.1).
type RegistrationRecord struct {
	suite           Suite
	clientPublicKey []byte
	clientPK        any
	maskingKey      []byte
	envelope        []byte
}

// CredentialRequest is the OPRF part of KE1 (RFC 9807 §6.3.1):
// blinded_message[Noe].
type CredentialRequest struct {
	suite          Suite
	blindedMessage []byte
	blinded        group.Element
}

// CredentialResponse is the OPRF and envelope part of KE2 (RFC 9807 §6.3.1):
// evaluated_message[Noe] || masking_nonce[Nn] || masked_response[Npk+Nn+Nm].
type CredentialResponse struct {
	suite            Suite
	evaluatedMessage []byte
	evaluated        group.Element
	maskingNonce     []byte
	maskedResponse   []byte
}

// KE1 is the client's first login message (RFC 9807 §6.1):
// CredentialRequest || client_nonce[Nn] || client_public_keyshare[Npk].
type KE1 struct {
	credentialRequest    CredentialRequest
	clientNonce          []byte
	clientPublicKeyshare []byte
	clientKeyshare       any
}

// KE2 is the server's login message (RFC 9807 §6.1):
// CredentialResponse || server_nonce[Nn] || server_public_keyshare[Npk] ||
// server_mac[Nm].
type KE2 struct {
	credentialResponse   CredentialResponse
	serverNonce          []byte
	serverPublicKeyshare []byte
	serverKeyshare       any
	serverMAC            []byte
}

// KE3 is the client's final login message (RFC 9807 §6.1): client_mac[Nm].
type KE3 struct {
	suite     Suite
	clientMAC []byte
}

// --- encoding ---

// MarshalBinary returns the wire encoding of m.
func (m *RegistrationRequest) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return clone(m.blindedMessage), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *RegistrationResponse) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return concat(m.evaluatedMessage, m.serverPublicKey), nil
}

// ServerPublicKey returns the server's AKE public key carried by the response,
// for clients that pin the server's key.
func (m *RegistrationResponse) ServerPublicKey() []byte {
	if m == nil {
		return nil
	}
	return clone(m.serverPublicKey)
}

// MarshalBinary returns the wire (and storage) encoding of m.
func (m *RegistrationRecord) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return concat(m.clientPublicKey, m.maskingKey, m.envelope), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *CredentialRequest) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return clone(m.blindedMessage), nil
}

// MarshalBinary returns the wire encoding of m.
func (m *CredentialResponse) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return m.bytes(), nil
}

func (m *CredentialResponse) bytes() []byte {
	return concat(m.evaluatedMessage, m.maskingNonce, m.maskedResponse)
}

// MarshalBinary returns the wire encoding of m.
func (m *KE1) MarshalBinary() ([]byte, error) {
	if m == nil || m.credentialRequest.suite.p == nil {
		return nil, errUninitialized
	}
	return m.bytes(), nil
}

func (m *KE1) bytes() []byte {
	return concat(m.credentialRequest.blindedMessage, m.clientNonce, m.clientPublicKeyshare)
}

func (m *KE1) suite() Suite { return m.credentialRequest.suite }

// CredentialRequest returns the credential request part of m.
func (m *KE1) CredentialRequest() *CredentialRequest {
	if m == nil {
		return nil
	}
	c := m.credentialRequest
	return &c
}

// MarshalBinary returns the wire encoding of m.
func (m *KE2) MarshalBinary() ([]byte, error) {
	if m == nil || m.credentialResponse.suite.p == nil {
		return nil, errUninitialized
	}
	return concat(m.credentialResponse.bytes(), m.serverNonce, m.serverPublicKeyshare, m.serverMAC), nil
}

func (m *KE2) suite() Suite { return m.credentialResponse.suite }

// CredentialResponse returns the credential response part of m.
func (m *KE2) CredentialResponse() *CredentialResponse {
	if m == nil {
		return nil
	}
	c := m.credentialResponse
	return &c
}

// MarshalBinary returns the wire encoding of m.
func (m *KE3) MarshalBinary() ([]byte, error) {
	if m == nil || m.suite.p == nil {
		return nil, errUninitialized
	}
	return clone(m.clientMAC), nil
}

// --- decoding ---

// reader splits a fixed-length message into its fields.
type reader struct{ b []byte }

func (r *reader) next(n int) []byte {
	out := clone(r.b[:n])
	r.b = r.b[n:]
	return out
}

// UnmarshalRegistrationRequest decodes and validates a RegistrationRequest.
func (s Suite) UnmarshalRegistrationRequest(data []byte) (*RegistrationRequest, error) {
	const name = "RegistrationRequest"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.registrationRequestSize() {
		return nil, invalid(name, "wrong length")
	}
	e, err := s.p.parseOPRFElement(data)
	if err != nil {
		return nil, invalid(name, "blinded_message: "+err.Error())
	}
	return &RegistrationRequest{suite: s, blindedMessage: clone(data), blinded: e}, nil
}

// UnmarshalRegistrationResponse decodes and validates a RegistrationResponse.
func (s Suite) UnmarshalRegistrationResponse(data []byte) (*RegistrationResponse, error) {
	const name = "RegistrationResponse"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.registrationResponseSize() {
		return nil, invalid(name, "wrong length")
	}
	r := reader{data}
	m := &RegistrationResponse{suite: s, evaluatedMessage: r.next(s.p.noe), serverPublicKey: r.next(s.p.npk())}
	var err error
	if m.evaluated, err = s.p.parseOPRFElement(m.evaluatedMessage); err != nil {
		return nil, invalid(name, "evaluated_message: "+err.Error())
	}
	if m.serverPK, err = s.p.ake.parsePublicKey(m.serverPublicKey); err != nil {
		return nil, invalid(name, "server_public_key: "+err.Error())
	}
	return m, nil
}

// UnmarshalRegistrationRecord decodes and validates a RegistrationRecord. The
// envelope and masking key are opaque random-looking strings and are not
// checked beyond their lengths; a fake record (see [Suite.CreateFakeRecord])
// decodes like a real one.
func (s Suite) UnmarshalRegistrationRecord(data []byte) (*RegistrationRecord, error) {
	const name = "RegistrationRecord"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.registrationRecordSize() {
		return nil, invalid(name, "wrong length")
	}
	r := reader{data}
	m := &RegistrationRecord{
		suite:           s,
		clientPublicKey: r.next(s.p.npk()),
		maskingKey:      r.next(s.p.nh),
		envelope:        r.next(s.p.envelopeSize()),
	}
	var err error
	if m.clientPK, err = s.p.ake.parsePublicKey(m.clientPublicKey); err != nil {
		return nil, invalid(name, "client_public_key: "+err.Error())
	}
	return m, nil
}

// UnmarshalCredentialRequest decodes and validates a CredentialRequest.
func (s Suite) UnmarshalCredentialRequest(data []byte) (*CredentialRequest, error) {
	const name = "CredentialRequest"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.credentialRequestSize() {
		return nil, invalid(name, "wrong length")
	}
	e, err := s.p.parseOPRFElement(data)
	if err != nil {
		return nil, invalid(name, "blinded_message: "+err.Error())
	}
	return &CredentialRequest{suite: s, blindedMessage: clone(data), blinded: e}, nil
}

// UnmarshalCredentialResponse decodes and validates a CredentialResponse.
func (s Suite) UnmarshalCredentialResponse(data []byte) (*CredentialResponse, error) {
	const name = "CredentialResponse"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.credentialResponseSize() {
		return nil, invalid(name, "wrong length")
	}
	r := reader{data}
	m := &CredentialResponse{
		suite:            s,
		evaluatedMessage: r.next(s.p.noe),
		maskingNonce:     r.next(nn),
		maskedResponse:   r.next(s.p.maskedResponseSize()),
	}
	var err error
	if m.evaluated, err = s.p.parseOPRFElement(m.evaluatedMessage); err != nil {
		return nil, invalid(name, "evaluated_message: "+err.Error())
	}
	return m, nil
}

// UnmarshalKE1 decodes and validates a KE1 message.
func (s Suite) UnmarshalKE1(data []byte) (*KE1, error) {
	const name = "KE1"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.ke1Size() {
		return nil, invalid(name, "wrong length")
	}
	r := reader{data}
	m := &KE1{
		credentialRequest:    CredentialRequest{suite: s, blindedMessage: r.next(s.p.noe)},
		clientNonce:          r.next(nn),
		clientPublicKeyshare: r.next(s.p.npk()),
	}
	var err error
	if m.credentialRequest.blinded, err = s.p.parseOPRFElement(m.credentialRequest.blindedMessage); err != nil {
		return nil, invalid(name, "blinded_message: "+err.Error())
	}
	if m.clientKeyshare, err = s.p.ake.parsePublicKey(m.clientPublicKeyshare); err != nil {
		return nil, invalid(name, "client_public_keyshare: "+err.Error())
	}
	return m, nil
}

// UnmarshalKE2 decodes and validates a KE2 message.
func (s Suite) UnmarshalKE2(data []byte) (*KE2, error) {
	const name = "KE2"
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.ke2Size() {
		return nil, invalid(name, "wrong length")
	}
	r := reader{data}
	m := &KE2{
		credentialResponse: CredentialResponse{
			suite:            s,
			evaluatedMessage: r.next(s.p.noe),
			maskingNonce:     r.next(nn),
			maskedResponse:   r.next(s.p.maskedResponseSize()),
		},
		serverNonce:          r.next(nn),
		serverPublicKeyshare: r.next(s.p.npk()),
		serverMAC:            r.next(s.p.nh),
	}
	var err error
	if m.credentialResponse.evaluated, err = s.p.parseOPRFElement(m.credentialResponse.evaluatedMessage); err != nil {
		return nil, invalid(name, "evaluated_message: "+err.Error())
	}
	if m.serverKeyshare, err = s.p.ake.parsePublicKey(m.serverPublicKeyshare); err != nil {
		return nil, invalid(name, "server_public_keyshare: "+err.Error())
	}
	return m, nil
}

// UnmarshalKE3 decodes and validates a KE3 message.
func (s Suite) UnmarshalKE3(data []byte) (*KE3, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(data) != s.p.ke3Size() {
		return nil, invalid("KE3", "wrong length")
	}
	return &KE3{suite: s, clientMAC: clone(data)}, nil
}
