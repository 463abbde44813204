package opaque

import (
	"crypto/hmac"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// ErrAuthentication is returned (wrapped) when a login fails: by
// [Client.KE3] when the password is wrong or KE2 was not produced by the
// server holding the client's record (RFC 9807 EnvelopeRecoveryError and
// ServerAuthenticationError), and by [Server.Finish] when KE3 does not prove
// knowledge of the password (ClientAuthenticationError).
var ErrAuthentication = errors.New("opaque: authentication failed")

var errStateUsed = errors.New("opaque: login or registration state already used; start again")

// Identities are the optional application-level identities of RFC 9807 §4.
// An empty identity is absent and defaults to the party's public key, as the
// RFC requires; identities may not exceed 65535 bytes.
type Identities struct {
	Client []byte // client_identity, e.g. an account name
	Server []byte // server_identity, e.g. a domain name
}

// Client runs the client side of OPAQUE. It holds configuration only and is
// safe for concurrent use; each registration or login keeps its state in a
// separate state value.
type Client struct {
	suite   Suite
	ksf     KSF
	ids     Identities
	context []byte
}

// ClientRegistrationState is the client's state between
// [Client.RegistrationRequest] and [Client.FinalizeRegistration]. It is
// single-use and holds the password.
type ClientRegistrationState struct {
	suite    Suite
	password []byte
	fin      *oprf.FinalizeData
	done     bool
}

// ClientLoginState is the client's state between [Client.KE1] and
// [Client.KE3] (RFC 9807 ClientState with its ClientAkeState). It is
// single-use and holds the password.
type ClientLoginState struct {
	suite        Suite
	password     []byte
	fin          *oprf.FinalizeData
	clientSecret any
	ke1          []byte
	done         bool
}

// NewClient returns a client for suite s. ksf must be the KSF the records were
// (or will be) registered with; ids are the optional identities; context is
// the application's shared context string of RFC 9807 §6.4.2.1 (at most 65535
// bytes), which must equal the server's.
func (s Suite) NewClient(ksf KSF, ids Identities, context []byte) (*Client, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := validateKSF(ksf); err != nil {
		return nil, err
	}
	if len(ids.Client) > maxLengthPrefixed || len(ids.Server) > maxLengthPrefixed {
		return nil, errors.New("opaque: identity longer than 65535 bytes")
	}
	if len(context) > maxLengthPrefixed {
		return nil, errors.New("opaque: context longer than 65535 bytes")
	}
	return &Client{
		suite:   s,
		ksf:     ksf,
		ids:     Identities{Client: clone(ids.Client), Server: clone(ids.Server)},
		context: clone(context),
	}, nil
}

// RegistrationRequest starts registering password (RFC 9807 §5.2.1,
// CreateRegistrationRequest). Send the request to the server over a channel
// that authenticates the server and keeps the later record confidential
// (RFC 9807 §5, §10.10).
func (c *Client) RegistrationRequest(password []byte) (*RegistrationRequest, *ClientRegistrationState, error) {
	return c.createRegistrationRequest(password, c.suite.p.randomBlind())
}

func (c *Client) createRegistrationRequest(password []byte, blind group.Scalar) (*RegistrationRequest, *ClientRegistrationState, error) {
	pw := clone(password)
	fin, blinded, err := c.suite.p.blind(pw, blind)
	if err != nil {
		return nil, nil, err
	}
	req := &RegistrationRequest{suite: c.suite, blindedMessage: serializeElement(blinded), blinded: blinded}
	return req, &ClientRegistrationState{suite: c.suite, password: pw, fin: fin}, nil
}

// FinalizeRegistration completes registration (RFC 9807 §5.2.3,
// FinalizeRegistrationRequest, with Store of §4.1.2). It returns the record
// to send to the server and the export_key. The client should check
// resp.ServerPublicKey() if it knows the server's key in advance.
func (c *Client) FinalizeRegistration(st *ClientRegistrationState, resp *RegistrationResponse) (record *RegistrationRecord, exportKey []byte, err error) {
	return c.finalizeRegistration(st, resp, randomBytes(nn), nil)
}

func (c *Client) finalizeRegistration(st *ClientRegistrationState, resp *RegistrationResponse, envelopeNonce []byte, tr *trace) (*RegistrationRecord, []byte, error) {
	if st == nil || st.fin == nil {
		return nil, nil, errors.New("opaque: nil registration state")
	}
	if st.done {
		return nil, nil, errStateUsed
	}
	if resp == nil || resp.suite.p != c.suite.p || st.suite.p != c.suite.p {
		return nil, nil, fmt.Errorf("%w: RegistrationResponse of another suite", ErrInvalidMessage)
	}
	st.done = true
	defer clear(st.password)
	p := c.suite.p

	oprfOutput, err := p.finalize(st.fin, resp.evaluated)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: RegistrationResponse: %v", ErrInvalidMessage, err)
	}
	rwd := p.randomizedPassword(c.ksf, oprfOutput)
	defer clear(rwd)
	clear(oprfOutput)
	if tr != nil {
		tr.randomizedPassword = clone(rwd)
	}
	envelope, clientPublicKey, maskingKey, exportKey, err := p.storeEnvelope(rwd, resp.serverPublicKey, c.ids.Server, c.ids.Client, envelopeNonce, tr)
	if err != nil {
		return nil, nil, err
	}
	clientPK, err := p.ake.parsePublicKey(clientPublicKey)
	if err != nil {
		return nil, nil, err
	}
	rec := &RegistrationRecord{
		suite:           c.suite,
		clientPublicKey: clientPublicKey,
		clientPK:        clientPK,
		maskingKey:      maskingKey,
		envelope:        envelope,
	}
	return rec, exportKey, nil
}

// KE1 starts a login with password (RFC 9807 §6.2.1 GenerateKE1, with
// CreateCredentialRequest of §6.3.2.1 and AuthClientStart of §6.4.3).
func (c *Client) KE1(password []byte) (*KE1, *ClientLoginState, error) {
	return c.generateKE1(password, c.suite.p.randomBlind(), randomBytes(nn), randomBytes(nseed))
}

func (c *Client) generateKE1(password []byte, blind group.Scalar, clientNonce, clientKeyshareSeed []byte) (*KE1, *ClientLoginState, error) {
	p := c.suite.p
	pw := clone(password)
	fin, blinded, err := p.blind(pw, blind)
	if err != nil {
		return nil, nil, err
	}
	clientSecret, clientPublicKeyshare, err := p.ake.deriveKeyPair(clientKeyshareSeed)
	if err != nil {
		return nil, nil, err
	}
	clientKeyshare, err := p.ake.parsePublicKey(clientPublicKeyshare)
	if err != nil {
		return nil, nil, err
	}
	ke1 := &KE1{
		credentialRequest:    CredentialRequest{suite: c.suite, blindedMessage: serializeElement(blinded), blinded: blinded},
		clientNonce:          clone(clientNonce),
		clientPublicKeyshare: clientPublicKeyshare,
		clientKeyshare:       clientKeyshare,
	}
	st := &ClientLoginState{suite: c.suite, password: pw, fin: fin, clientSecret: clientSecret, ke1: ke1.bytes()}
	return ke1, st, nil
}

// KE3 processes the server's KE2 (RFC 9807 §6.2.3 GenerateKE3, with
// RecoverCredentials of §6.3.2.3, Recover of §4.1.3 and AuthClientFinalize of
// §6.4.3). On success it returns KE3 for the server, the session_key and the
// export_key; the export_key must not be used if this returns an error. A
// wrong password, a KE2 for an unknown user, or an altered KE2 all give an
// error wrapping [ErrAuthentication]. The state is used up either way.
func (c *Client) KE3(st *ClientLoginState, ke2 *KE2) (ke3 *KE3, sessionKey, exportKey []byte, err error) {
	return c.generateKE3(st, ke2, nil)
}

func (c *Client) generateKE3(st *ClientLoginState, ke2 *KE2, tr *trace) (*KE3, []byte, []byte, error) {
	if st == nil || st.fin == nil {
		return nil, nil, nil, errors.New("opaque: nil login state")
	}
	if st.done {
		return nil, nil, nil, errStateUsed
	}
	if ke2 == nil || ke2.suite().p != c.suite.p || st.suite.p != c.suite.p {
		return nil, nil, nil, fmt.Errorf("%w: KE2 of another suite", ErrInvalidMessage)
	}
	st.done = true
	defer clear(st.password)
	p := c.suite.p
	cr := &ke2.credentialResponse

	// RecoverCredentials (§6.3.2.3).
	oprfOutput, err := p.finalize(st.fin, cr.evaluated)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: KE2: %v", ErrInvalidMessage, err)
	}
	rwd := p.randomizedPassword(c.ksf, oprfOutput)
	defer clear(rwd)
	clear(oprfOutput)
	maskingKey := p.expand(rwd, []byte(labelMaskingKey), p.nh)
	pad := p.expand(maskingKey, concat(cr.maskingNonce, []byte(labelCredentialPad)), p.maskedResponseSize())
	unmasked := xorBytes(pad, cr.maskedResponse)
	serverPublicKey, envelope := unmasked[:p.npk()], unmasked[p.npk():]
	if tr != nil {
		tr.randomizedPassword = clone(rwd)
		tr.maskingKey = clone(maskingKey)
	}
	clear(maskingKey)
	clientSK, creds, exportKey, err := p.recoverEnvelope(rwd, serverPublicKey, envelope, c.ids.Server, c.ids.Client, tr)
	if err != nil {
		return nil, nil, nil, err
	}
	serverPK, err := p.ake.parsePublicKey(serverPublicKey)
	if err != nil {
		clear(exportKey)
		return nil, nil, nil, fmt.Errorf("%w: invalid server public key in envelope", ErrAuthentication)
	}

	// AuthClientFinalize (§6.4.3).
	ikm, err := p.tripleDH([3][2]any{
		{st.clientSecret, ke2.serverKeyshare},
		{st.clientSecret, serverPK},
		{clientSK, ke2.serverKeyshare},
	})
	st.clientSecret = nil
	if err != nil {
		clear(exportKey)
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrAuthentication, err)
	}
	pre := preamble(c.context, creds.clientIdentity, st.ke1, creds.serverIdentity,
		cr.bytes(), ke2.serverNonce, ke2.serverPublicKeyshare)
	keys := p.deriveKeys(ikm, pre)
	clear(ikm)
	keys.trace(tr)
	defer keys.wipe()
	if !hmac.Equal(ke2.serverMAC, keys.serverMAC) {
		clear(exportKey)
		clear(keys.sessionKey)
		return nil, nil, nil, fmt.Errorf("%w: server MAC mismatch (ServerAuthenticationError)", ErrAuthentication)
	}
	return &KE3{suite: c.suite, clientMAC: keys.clientMAC}, keys.sessionKey, exportKey, nil
}
