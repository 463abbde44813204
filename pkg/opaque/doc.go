// Package opaque implements OPAQUE-3DH, the augmented password-authenticated
// key exchange of RFC 9807 (draft-irtf-cfrg-opaque-18), and nothing more.
// It is held to the RFC's test vectors byte for byte.
//
// A client registers a password with a server without revealing it, and
// later logs in with it: both sides get a shared session_key, and the client
// also gets an export_key, a stable per-password secret the server never sees
// (wabackup uses it to protect backup keys, RFC 9807 §10.4).
//
// # Configurations
//
// Two suites are offered (RFC 9807 §7): [Ristretto255SHA512], the default,
// and [P256SHA256]. In each, the OPRF is RFC 9497 modeOPRF of that suite
// (github.com/cloudflare/circl/oprf), the KDF is HKDF and the MAC is HMAC over
// the suite's hash, and 3DH runs in the OPRF's group. The key stretching
// function is pluggable ([KSF]); [DefaultArgon2idKSF] is our profile and
// [IdentityKSF] exists only for the test vectors. The optional context string
// and identities are set when making a [Client] or [Server].
//
// # Flow
//
//	Registration (RFC 9807 §5), over a channel that authenticates the server
//	and is confidential:
//	  client: req, st := c.RegistrationRequest(password)
//	  server: resp := s.RegistrationResponse(req, credentialIdentifier)
//	  client: record, exportKey := c.FinalizeRegistration(st, resp)
//	  server: store record under credentialIdentifier
//
//	Login (RFC 9807 §6):
//	  client: ke1, cst := c.KE1(password)
//	  server: ke2, sst := s.KE2(ke1, credentialIdentifier, clientIdentity, record or nil)
//	  client: ke3, sessionKey, exportKey := c.KE3(cst, ke2)   // ErrAuthentication on a wrong password
//	  server: sessionKey := s.Finish(sst, ke3)                // ErrAuthentication on a bad KE3
//
// Messages travel as the byte strings of their MarshalBinary methods and are
// decoded with the Suite's Unmarshal methods, which reject wrong lengths,
// non-canonical encodings, invalid points and the identity element.
//
// # Map to RFC 9807
//
//	§3.1  setup                         Suite.GenerateServerKeys
//	§4    CreateCleartextCredentials    createCleartextCredentials (identities default to public keys)
//	§4.1.2 Store                        suiteParams.storeEnvelope, called by Client.FinalizeRegistration
//	§4.1.3 Recover                      suiteParams.recoverEnvelope, called by Client.KE3
//	§5.1  registration messages         RegistrationRequest, RegistrationResponse, RegistrationRecord
//	§5.2.1 CreateRegistrationRequest    Client.RegistrationRequest
//	§5.2.2 CreateRegistrationResponse   Server.RegistrationResponse (OPRF key: suiteParams.deriveOPRFKey)
//	§5.2.3 FinalizeRegistrationRequest  Client.FinalizeRegistration
//	§6.1  KE1, KE2, KE3                 KE1, KE2, KE3
//	§6.2.1 GenerateKE1                  Client.KE1 (CreateCredentialRequest §6.3.2.1, AuthClientStart §6.4.3)
//	§6.2.2 GenerateKE2                  Server.KE2 (CreateCredentialResponse §6.3.2.2, AuthServerRespond §6.4.4)
//	§6.2.3 GenerateKE3                  Client.KE3 (RecoverCredentials §6.3.2.3, AuthClientFinalize §6.4.3)
//	§6.2.4 ServerFinish                 Server.Finish (AuthServerFinalize §6.4.4)
//	§6.3.1 credential messages          CredentialRequest, CredentialResponse
//	§6.3.2.2 fake records               Suite.CreateFakeRecord; Server.KE2 with a nil record
//	§6.4.1 DeriveDiffieHellmanKeyPair   primeOrderAKE.deriveKeyPair (RFC 9497 DeriveKeyPair,
//	                                    info "OPAQUE-DeriveDiffieHellmanKeyPair")
//	§6.4.2.1 Expand-Label, Preamble     suiteParams.expandLabel, preamble
//	§6.4.2.2 DeriveKeys                 suiteParams.deriveKeys
//	§7    configurations, Argon2id      Ristretto255SHA512, P256SHA256, Argon2idKSF
//	§10.7 input validation              the Suite's Unmarshal methods; DH results are checked
//	                                    not to be the identity
//
// The protocol functions take their randomness (blinds, nonces, key-share
// seeds, masking and envelope nonces) as arguments internally, so the tests
// can replay the RFC's vectors; the exported API draws it from crypto/rand.
//
// # Using it safely
//
// The client learns on receiving KE2 whether its password was right, so a
// server that limits guesses must count every KE2 as a failed attempt until
// Finish succeeds (RFC 9807 §9.2). Unknown credentials must be answered with
// KE2 from a fake record (a nil record), so that KE2 does not reveal which
// credentials exist. The password is the only OPRF input, as in the RFC's
// vectors; applications that want to bind the client and server identities
// into the OPRF (RFC 9807 §9.1) can encode them into the password input.
// Client, Server and the Suites are safe for concurrent use; the state values
// are single-use and not.
package opaque
