// Package threshold is the protocol core of threshold key escrow: it spreads
// one 32-byte secret over n independently run realms so that any threshold t
// of them give it back to whoever knows the password, while fewer than t
// learn nothing about the password or the secret, and every realm counts
// wrong guesses on its own and destroys its share when they run out. It
// follows the Juicebox protocol (Juicebox whitepaper, Revision 7), built from
// RFC 9497's OPRF and DLEQ proof, Shamir sharing, Ed25519, HMAC-SHA-256,
// HKDF-SHA-256, AES-256-GCM and Argon2id; docs/THRESHOLD.md is the
// specification, including where and why it departs from the whitepaper.
//
// The package does no I/O of its own. The client side ([Client]) talks to
// each realm through the [Realm] interface, so the transport is the caller's;
// the realm side ([RealmServer]) keeps one [RealmRecord] per user in storage
// the caller provides through [RecordStore]. Messages travel as the byte
// strings of their MarshalBinary methods and are decoded by the Unmarshal
// functions, which reject anything malformed with an error wrapping
// [ErrInvalidMessage].
//
// # Flow
//
//	Register (client.Register): register1 to every realm (all must answer);
//	  then one Argon2id run and register2 to every realm, which stores the
//	  registration and resets its guess counter.
//	Recover (client.Recover): recover1 to every realm, which answers with the
//	  registration's version; one Argon2id run with the version as salt;
//	  recover2 (the blinded OPRF input) to the realms that agree on the
//	  version, each of which counts the guess and stores the count before it
//	  returns its evaluation and proof; the client checks signatures and
//	  proofs, combines a threshold of evaluations and compares the result
//	  with the unlock-key commitment (a wrong password ends here);
//	  recover3 (a per-realm unlock tag) to the realms that evaluated, each of
//	  which resets its counter and returns its encryption-key share; the
//	  client checks each share against its commitment and decrypts.
//	Delete (client.Delete): every realm forgets the user.
//
// # Errors
//
// Recover returns a [*WrongPasswordError] (wrapping [ErrWrongPassword]) with
// the guesses left, [ErrNoGuesses] when too few realms still hold a share,
// [ErrNotRegistered], or a [*QuorumError] when too few realms answered
// usefully ("only 1 of the 3 realms answered; 2 are needed"). Realms that
// failed or misbehaved along the way are listed as [*RealmError] values;
// misbehaviour wraps [ErrMisbehaving] and one of its kinds ([ErrBadProof],
// [ErrBadSignature], [ErrDisagreement], [ErrBadShare], [ErrBadAnswer]).
package threshold
