package opaque

import (
	"crypto/hmac"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// trace receives intermediate values so that tests can hold them to the
// RFC 9807 test vectors. It is nil outside tests.
type trace struct {
	oprfKey            []byte
	randomizedPassword []byte
	maskingKey         []byte
	authKey            []byte
	clientPublicKey    []byte
	envelope           []byte
	handshakeSecret    []byte
	serverMACKey       []byte
	clientMACKey       []byte
}

// cleartextCredentials is CleartextCredentials of RFC 9807 §4, with the
// identities already defaulted to the public keys.
type cleartextCredentials struct {
	serverPublicKey []byte
	serverIdentity  []byte
	clientIdentity  []byte
}

// createCleartextCredentials is CreateCleartextCredentials (RFC 9807 §4): an
// absent (nil or empty) identity defaults to the party's public key.
func createCleartextCredentials(serverPublicKey, clientPublicKey, serverIdentity, clientIdentity []byte) cleartextCredentials {
	if len(serverIdentity) == 0 {
		serverIdentity = serverPublicKey
	}
	if len(clientIdentity) == 0 {
		clientIdentity = clientPublicKey
	}
	return cleartextCredentials{serverPublicKey, serverIdentity, clientIdentity}
}

// bytes serializes CleartextCredentials: server_public_key[Npk] ||
// server_identity<1..2^16-1> || client_identity<1..2^16-1>.
func (c cleartextCredentials) bytes() []byte {
	b := make([]byte, 0, len(c.serverPublicKey)+4+len(c.serverIdentity)+len(c.clientIdentity))
	b = append(b, c.serverPublicKey...)
	b = appendLengthPrefixed(b, c.serverIdentity)
	b = appendLengthPrefixed(b, c.clientIdentity)
	return b
}

// envelopeSecrets holds the values both Store and Recover derive from
// randomized_password and envelope_nonce (RFC 9807 §4.1.2, §4.1.3).
type envelopeSecrets struct {
	authKey   []byte
	exportKey []byte
	clientSK  any
	clientPK  []byte
}

func (p *suiteParams) envelopeSecrets(randomizedPassword, envelopeNonce []byte) (envelopeSecrets, error) {
	authKey := p.expand(randomizedPassword, concat(envelopeNonce, []byte(labelAuthKey)), p.nh)
	exportKey := p.expand(randomizedPassword, concat(envelopeNonce, []byte(labelExportKey)), p.nh)
	seed := p.expand(randomizedPassword, concat(envelopeNonce, []byte(labelPrivateKey)), nseed)
	defer clear(seed)
	sk, pk, err := p.ake.deriveKeyPair(seed)
	if err != nil {
		return envelopeSecrets{}, err
	}
	return envelopeSecrets{authKey, exportKey, sk, pk}, nil
}

// storeEnvelope is Store of RFC 9807 §4.1.2. It returns the envelope
// (envelope_nonce || auth_tag), client_public_key, masking_key and export_key.
func (p *suiteParams) storeEnvelope(randomizedPassword, serverPublicKey, serverIdentity, clientIdentity, envelopeNonce []byte, tr *trace) (envelope, clientPublicKey, maskingKey, exportKey []byte, err error) {
	maskingKey = p.expand(randomizedPassword, []byte(labelMaskingKey), p.nh)
	sec, err := p.envelopeSecrets(randomizedPassword, envelopeNonce)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	creds := createCleartextCredentials(serverPublicKey, sec.clientPK, serverIdentity, clientIdentity)
	authTag := p.mac(sec.authKey, concat(envelopeNonce, creds.bytes()))
	envelope = concat(envelopeNonce, authTag)
	if tr != nil {
		tr.authKey = clone(sec.authKey)
		tr.maskingKey = clone(maskingKey)
		tr.clientPublicKey = clone(sec.clientPK)
		tr.envelope = clone(envelope)
	}
	clear(sec.authKey)
	return envelope, sec.clientPK, maskingKey, sec.exportKey, nil
}

var errEnvelopeRecovery = fmt.Errorf("%w: envelope recovery failed (wrong password, unknown user, or altered KE2)", ErrAuthentication)

// recoverEnvelope is Recover of RFC 9807 §4.1.3. On failure every intermediate value
// is dropped and errEnvelopeRecovery returned.
func (p *suiteParams) recoverEnvelope(randomizedPassword, serverPublicKey, envelope, serverIdentity, clientIdentity []byte, tr *trace) (clientSK any, creds cleartextCredentials, exportKey []byte, err error) {
	nonce, authTag := envelope[:nn], envelope[nn:]
	sec, err := p.envelopeSecrets(randomizedPassword, nonce)
	if err != nil {
		return nil, cleartextCredentials{}, nil, errEnvelopeRecovery
	}
	creds = createCleartextCredentials(serverPublicKey, sec.clientPK, serverIdentity, clientIdentity)
	expectedTag := p.mac(sec.authKey, concat(nonce, creds.bytes()))
	if tr != nil {
		tr.authKey = clone(sec.authKey)
	}
	clear(sec.authKey)
	if !hmac.Equal(authTag, expectedTag) {
		clear(sec.exportKey)
		return nil, cleartextCredentials{}, nil, errEnvelopeRecovery
	}
	return sec.clientSK, creds, sec.exportKey, nil
}

// --- OPRF client and server steps (RFC 9807 §2.1) ---

var errInvalidInput = errors.New("opaque: OPRF blinding failed (InvalidInputError); try again or use another password")

// blind is Blind(password) with a caller-chosen blind.
func (p *suiteParams) blind(password []byte, blind group.Scalar) (*oprf.FinalizeData, group.Element, error) {
	fin, req, err := oprf.NewClient(p.oprf).DeterministicBlind([][]byte{password}, []oprf.Blind{blind})
	if err != nil {
		return nil, nil, errInvalidInput
	}
	return fin, req.Elements[0], nil
}

// finalize is Finalize(password, blind, evaluated_element): the oprf_output.
func (p *suiteParams) finalize(fin *oprf.FinalizeData, evaluated group.Element) ([]byte, error) {
	out, err := oprf.NewClient(p.oprf).Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{evaluated}})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// blindEvaluate derives the credential's OPRF key and computes
// BlindEvaluate(oprf_key, blinded_element), returned with its serialization.
func (p *suiteParams) blindEvaluate(oprfSeed, credentialIdentifier []byte, blinded group.Element, tr *trace) (group.Element, []byte, error) {
	k, err := p.deriveOPRFKey(oprfSeed, credentialIdentifier)
	if err != nil {
		return nil, nil, err
	}
	if tr != nil {
		tr.oprfKey, _ = k.MarshalBinary()
	}
	// circl's Evaluate does not reject the identity; our decoders already did.
	if blinded == nil || blinded.IsIdentity() {
		return nil, nil, errors.New("opaque: blinded element is the identity")
	}
	ev, err := oprf.NewServer(p.oprf, k).Evaluate(&oprf.EvaluationRequest{Elements: []oprf.Blinded{blinded}})
	if err != nil {
		return nil, nil, err
	}
	e := ev.Elements[0]
	if e.IsIdentity() {
		return nil, nil, errors.New("opaque: evaluated element is the identity")
	}
	return e, serializeElement(e), nil
}

// randomizedPassword computes
//
//	stretched_oprf_output = Stretch(oprf_output)
//	randomized_password = Extract("", concat(oprf_output, stretched_oprf_output))
func (p *suiteParams) randomizedPassword(ksf KSF, oprfOutput []byte) []byte {
	stretched := ksf.Stretch(oprfOutput)
	ikm := concat(oprfOutput, stretched)
	rwd := p.extract(nil, ikm)
	clear(stretched)
	clear(ikm)
	return rwd
}
