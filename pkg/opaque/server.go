package opaque

import (
	"crypto/hmac"
	"errors"
	"fmt"
)

// ServerKeys is the server's long-term key material (RFC 9807 §3.1):
// oprf_seed (Nh bytes), from which every credential's OPRF key is derived, and
// the AKE key pair. All three are secret except PublicKey, and all must be
// kept for as long as any record made with them is in use.
type ServerKeys struct {
	OPRFSeed   []byte
	PrivateKey []byte // serialized scalar, Nsk bytes
	PublicKey  []byte // serialized element, Npk bytes
}

// GenerateServerKeys draws a fresh oprf_seed and derives an AKE key pair from a
// fresh seed with DeriveDiffieHellmanKeyPair (RFC 9807 §6.4.1).
func (s Suite) GenerateServerKeys() (ServerKeys, error) {
	if err := s.check(); err != nil {
		return ServerKeys{}, err
	}
	seed := randomBytes(nseed)
	defer clear(seed)
	sk, pk, err := s.p.ake.deriveKeyPair(seed)
	if err != nil {
		return ServerKeys{}, err
	}
	return ServerKeys{
		OPRFSeed:   randomBytes(s.p.nh),
		PrivateKey: s.p.ake.serializePrivateKey(sk),
		PublicKey:  pk,
	}, nil
}

// Server runs the server side of OPAQUE. It holds configuration only and is
// safe for concurrent use; each login keeps its state in a [ServerLoginState].
type Server struct {
	suite          Suite
	oprfSeed       []byte
	sk             any
	publicKey      []byte
	serverIdentity []byte
	context        []byte
	fake           *RegistrationRecord
}

// ServerLoginState is the server's state between [Server.KE2] and
// [Server.Finish] (RFC 9807 ServerAkeState). It is single-use.
type ServerLoginState struct {
	expectedClientMAC []byte
	sessionKey        []byte
	done              bool
}

// NewServer returns a server for suite s with the given keys, its optional
// server_identity (empty: its public key) and the shared context string (at
// most 65535 bytes), which must equal the clients'. It checks that the key
// pair matches and that OPRFSeed is Nh bytes.
//
// The server makes one fake record (see [Suite.CreateFakeRecord]) that
// [Server.KE2] uses for unknown credentials.
func (s Suite) NewServer(keys ServerKeys, serverIdentity, context []byte) (*Server, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(keys.OPRFSeed) != s.p.nh {
		return nil, fmt.Errorf("opaque: OPRFSeed must be %d bytes for %s", s.p.nh, s)
	}
	sk, err := s.p.ake.parsePrivateKey(keys.PrivateKey)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(s.p.ake.publicKey(sk), keys.PublicKey) {
		return nil, errors.New("opaque: PublicKey does not match PrivateKey")
	}
	if len(serverIdentity) > maxLengthPrefixed || len(context) > maxLengthPrefixed {
		return nil, errors.New("opaque: server identity or context longer than 65535 bytes")
	}
	fake, err := s.CreateFakeRecord()
	if err != nil {
		return nil, err
	}
	return &Server{
		suite:          s,
		oprfSeed:       clone(keys.OPRFSeed),
		sk:             sk,
		publicKey:      clone(keys.PublicKey),
		serverIdentity: clone(serverIdentity),
		context:        clone(context),
		fake:           fake,
	}, nil
}

// PublicKey returns the server's AKE public key.
func (s *Server) PublicKey() []byte { return clone(s.publicKey) }

// CreateFakeRecord returns a fake RegistrationRecord for answering login
// attempts on unregistered credentials (RFC 9807 §6.3.2.2): a random
// client_public_key, a random masking_key and an all-zero envelope. A server
// should make one, store it alongside the real records and use it for every
// unknown credential, so that looking it up costs what a real lookup costs.
func (s Suite) CreateFakeRecord() (*RegistrationRecord, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	seed := randomBytes(nseed)
	defer clear(seed)
	_, pk, err := s.p.ake.deriveKeyPair(seed)
	if err != nil {
		return nil, err
	}
	parsed, err := s.p.ake.parsePublicKey(pk)
	if err != nil {
		return nil, err
	}
	return &RegistrationRecord{
		suite:           s,
		clientPublicKey: pk,
		clientPK:        parsed,
		maskingKey:      randomBytes(s.p.nh),
		envelope:        make([]byte, s.p.envelopeSize()),
	}, nil
}

// RegistrationResponse answers a registration request for the credential
// credentialIdentifier (RFC 9807 §5.2.2, CreateRegistrationResponse). The
// identifier must be unique per client and stay the same for its logins.
func (s *Server) RegistrationResponse(req *RegistrationRequest, credentialIdentifier []byte) (*RegistrationResponse, error) {
	return s.createRegistrationResponse(req, credentialIdentifier, nil)
}

func (s *Server) createRegistrationResponse(req *RegistrationRequest, credentialIdentifier []byte, tr *trace) (*RegistrationResponse, error) {
	if req == nil || req.suite.p != s.suite.p {
		return nil, fmt.Errorf("%w: RegistrationRequest of another suite", ErrInvalidMessage)
	}
	if len(credentialIdentifier) == 0 {
		return nil, errors.New("opaque: empty credential identifier")
	}
	evaluated, enc, err := s.suite.p.blindEvaluate(s.oprfSeed, credentialIdentifier, req.blinded, tr)
	if err != nil {
		return nil, err
	}
	serverPK, err := s.suite.p.ake.parsePublicKey(s.publicKey)
	if err != nil {
		return nil, err
	}
	return &RegistrationResponse{
		suite:            s.suite,
		evaluatedMessage: enc,
		evaluated:        evaluated,
		serverPublicKey:  clone(s.publicKey),
		serverPK:         serverPK,
	}, nil
}

// KE2 answers a login's KE1 (RFC 9807 §6.2.2 GenerateKE2, with
// CreateCredentialResponse of §6.3.2.2 and AuthServerRespond of §6.4.4).
// credentialIdentifier and record are those stored at registration;
// clientIdentity is the client_identity the client uses (empty: its public
// key). If the credential is unknown, pass a nil record: KE2 is then computed
// from the server's fake record exactly as for a real one, so the response
// does not reveal whether the credential exists, and the client's KE3 fails.
//
// RFC 9807 §9.2 advises counting a login as failed unless [Server.Finish]
// succeeds: the client learns from KE2 whether its password was right.
func (s *Server) KE2(ke1 *KE1, credentialIdentifier, clientIdentity []byte, record *RegistrationRecord) (*KE2, *ServerLoginState, error) {
	return s.generateKE2(ke1, credentialIdentifier, clientIdentity, record,
		randomBytes(nn), randomBytes(nn), randomBytes(nseed), nil)
}

func (s *Server) generateKE2(ke1 *KE1, credentialIdentifier, clientIdentity []byte, record *RegistrationRecord,
	maskingNonce, serverNonce, serverKeyshareSeed []byte, tr *trace,
) (*KE2, *ServerLoginState, error) {
	p := s.suite.p
	if ke1 == nil || ke1.suite().p != p {
		return nil, nil, fmt.Errorf("%w: KE1 of another suite", ErrInvalidMessage)
	}
	if record == nil {
		record = s.fake
	}
	if record.suite.p != p {
		return nil, nil, fmt.Errorf("%w: RegistrationRecord of another suite", ErrInvalidMessage)
	}
	if len(credentialIdentifier) == 0 {
		return nil, nil, errors.New("opaque: empty credential identifier")
	}
	if len(clientIdentity) > maxLengthPrefixed {
		return nil, nil, errors.New("opaque: client identity longer than 65535 bytes")
	}

	// CreateCredentialResponse (§6.3.2.2).
	evaluated, enc, err := p.blindEvaluate(s.oprfSeed, credentialIdentifier, ke1.credentialRequest.blinded, tr)
	if err != nil {
		return nil, nil, err
	}
	pad := p.expand(record.maskingKey, concat(maskingNonce, []byte(labelCredentialPad)), p.maskedResponseSize())
	cr := CredentialResponse{
		suite:            s.suite,
		evaluatedMessage: enc,
		evaluated:        evaluated,
		maskingNonce:     clone(maskingNonce),
		maskedResponse:   xorBytes(pad, concat(s.publicKey, record.envelope)),
	}

	// AuthServerRespond (§6.4.4).
	creds := createCleartextCredentials(s.publicKey, record.clientPublicKey, s.serverIdentity, clientIdentity)
	serverSecret, serverPublicKeyshare, err := p.ake.deriveKeyPair(serverKeyshareSeed)
	if err != nil {
		return nil, nil, err
	}
	serverKeyshare, err := p.ake.parsePublicKey(serverPublicKeyshare)
	if err != nil {
		return nil, nil, err
	}
	pre := preamble(s.context, creds.clientIdentity, ke1.bytes(), creds.serverIdentity,
		cr.bytes(), serverNonce, serverPublicKeyshare)
	ikm, err := p.tripleDH([3][2]any{
		{serverSecret, ke1.clientKeyshare},
		{s.sk, ke1.clientKeyshare},
		{serverSecret, record.clientPK},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: KE1: %v", ErrInvalidMessage, err)
	}
	keys := p.deriveKeys(ikm, pre)
	clear(ikm)
	keys.trace(tr)
	keys.wipe()

	ke2 := &KE2{
		credentialResponse:   cr,
		serverNonce:          clone(serverNonce),
		serverPublicKeyshare: serverPublicKeyshare,
		serverKeyshare:       serverKeyshare,
		serverMAC:            keys.serverMAC,
	}
	return ke2, &ServerLoginState{expectedClientMAC: keys.clientMAC, sessionKey: keys.sessionKey}, nil
}

// Finish checks the client's KE3 and returns the session_key (RFC 9807
// §6.2.4 ServerFinish, AuthServerFinalize of §6.4.4). The MAC is compared in
// constant time; on mismatch it returns an error wrapping
// [ErrAuthentication]. The state is used up either way.
func (s *Server) Finish(st *ServerLoginState, ke3 *KE3) (sessionKey []byte, err error) {
	if st == nil || st.expectedClientMAC == nil {
		return nil, errors.New("opaque: nil login state")
	}
	if st.done {
		return nil, errStateUsed
	}
	st.done = true
	defer func() {
		clear(st.expectedClientMAC)
		st.sessionKey = nil
	}()
	if ke3 == nil || ke3.suite.p != s.suite.p {
		clear(st.sessionKey)
		return nil, fmt.Errorf("%w: KE3 of another suite", ErrInvalidMessage)
	}
	if !hmac.Equal(ke3.clientMAC, st.expectedClientMAC) {
		clear(st.sessionKey)
		return nil, fmt.Errorf("%w: client MAC mismatch (ClientAuthenticationError)", ErrAuthentication)
	}
	return st.sessionKey, nil
}

// MarshalBinary serializes the login state (expected client MAC || session
// key, 2·Nh bytes), so that a server without memory between KE2 and KE3
// (several replicas behind a load balancer) can hand it to the client
// sealed and finish the login on any replica. It is secret: seal it under
// an AEAD key only the servers hold, and record its single use yourself,
// since a deserialized copy cannot know whether another was used.
func (st *ServerLoginState) MarshalBinary() ([]byte, error) {
	if st == nil || st.done || st.expectedClientMAC == nil {
		return nil, errStateUsed
	}
	return concat(st.expectedClientMAC, st.sessionKey), nil
}

// UnmarshalServerLoginState reverses [ServerLoginState.MarshalBinary].
func (s Suite) UnmarshalServerLoginState(b []byte) (*ServerLoginState, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(b) != 2*s.p.nh {
		return nil, fmt.Errorf("%w: server login state of %d bytes, want %d", ErrInvalidMessage, len(b), 2*s.p.nh)
	}
	return &ServerLoginState{expectedClientMAC: clone(b[:s.p.nh]), sessionKey: clone(b[s.p.nh:])}, nil
}
