package opaque

// The OPAQUE-3DH key schedule (RFC 9807 §6.4.2).

// preamble is Preamble of RFC 9807 §6.4.2.1:
//
//	concat("OPAQUEv1-", I2OSP(len(context), 2), context,
//	       I2OSP(len(client_identity), 2), client_identity, ke1,
//	       I2OSP(len(server_identity), 2), server_identity,
//	       credential_response, server_nonce, server_public_keyshare)
func preamble(context, clientIdentity, ke1, serverIdentity, credentialResponse, serverNonce, serverPublicKeyshare []byte) []byte {
	b := make([]byte, 0, len(labelPreamble)+6+len(context)+len(clientIdentity)+len(ke1)+
		len(serverIdentity)+len(credentialResponse)+len(serverNonce)+len(serverPublicKeyshare))
	b = append(b, labelPreamble...)
	b = appendLengthPrefixed(b, context)
	b = appendLengthPrefixed(b, clientIdentity)
	b = append(b, ke1...)
	b = appendLengthPrefixed(b, serverIdentity)
	b = append(b, credentialResponse...)
	b = append(b, serverNonce...)
	b = append(b, serverPublicKeyshare...)
	return b
}

// akeKeys is the output of DeriveKeys, plus the MACs both sides compute.
type akeKeys struct {
	handshakeSecret []byte
	km2, km3        []byte
	sessionKey      []byte
	serverMAC       []byte // MAC(Km2, Hash(preamble))
	clientMAC       []byte // MAC(Km3, Hash(concat(preamble, server_mac)))
}

// deriveKeys is DeriveKeys of RFC 9807 §6.4.2.2 followed by the MAC
// computations of AuthServerRespond / AuthClientFinalize (§6.4.3, §6.4.4).
func (p *suiteParams) deriveKeys(ikm, preamble []byte) akeKeys {
	prk := p.extract(nil, ikm)
	th := p.hash(preamble)
	var k akeKeys
	k.handshakeSecret = p.deriveSecret(prk, labelHandshakeSecret, th)
	k.sessionKey = p.deriveSecret(prk, labelSessionKey, th)
	k.km2 = p.deriveSecret(k.handshakeSecret, labelServerMAC, nil)
	k.km3 = p.deriveSecret(k.handshakeSecret, labelClientMAC, nil)
	k.serverMAC = p.mac(k.km2, th)
	k.clientMAC = p.mac(k.km3, p.hash(concat(preamble, k.serverMAC)))
	clear(prk)
	return k
}

func (k *akeKeys) trace(tr *trace) {
	if tr != nil {
		tr.handshakeSecret = clone(k.handshakeSecret)
		tr.serverMACKey = clone(k.km2)
		tr.clientMACKey = clone(k.km3)
	}
}

func (k *akeKeys) wipe() {
	clear(k.handshakeSecret)
	clear(k.km2)
	clear(k.km3)
}

// tripleDH computes ikm = concat(dh1, dh2, dh3) for three (private, public)
// pairs, in order.
func (p *suiteParams) tripleDH(pairs [3][2]any) ([]byte, error) {
	var ikm []byte
	for _, pair := range pairs {
		d, err := p.ake.dh(pair[0], pair[1])
		if err != nil {
			return nil, err
		}
		ikm = append(ikm, d...)
		clear(d)
	}
	return ikm, nil
}
