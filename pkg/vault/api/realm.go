package api

// The realm API (API version 2): a wabackup-vault is also one realm of a
// threshold escrow across several independent vaults (pkg/threshold,
// docs/THRESHOLD.md). Each call carries one pkg/threshold message in its
// binary encoding; the vault answers with the matching response's binary
// encoding. Errors are Error bodies, as in version 1 (CodeBadRequest for
// a malformed message, CodeRateLimited, CodeUnavailable, CodeInternal);
// the protocol's own outcomes (NotRegistered, NoGuesses, a wrong unlock
// tag…) are statuses inside the response message, with HTTP 200.

// Paths of the realm API.
const (
	PathRealmInfo      = "/v2/info"
	PathRealmRegister1 = "/v2/register1"
	PathRealmRegister2 = "/v2/register2"
	PathRealmRecover1  = "/v2/recover1"
	PathRealmRecover2  = "/v2/recover2"
	PathRealmRecover3  = "/v2/recover3"
	PathRealmDelete    = "/v2/delete"
	PathRealmStatus    = "/v2/status"
)

// RealmInfo is the answer to GET /v2/info.
type RealmInfo struct {
	// RealmID is the realm's id, 16 random bytes made at the vault's
	// first start and kept in its sealed storage, as 32 hex digits.
	RealmID string `json:"realm_id"`
	// PublicKey and Fingerprint are the vault's long-term key and its
	// fingerprint, as in Info: the client pins the realm by it.
	PublicKey   []byte `json:"public_key"`
	Fingerprint string `json:"fingerprint"`
	MaxGuesses  int    `json:"max_guesses"`
}

// RealmRequest is the body of every POST of the realm API but status.
// CredentialID names the user's record (CredentialID(repository id,
// name), as in version 1; the realm keeps its records apart from the
// OPAQUE ones). Message is the pkg/threshold request (Register1Request,
// …) in its binary encoding.
type RealmRequest struct {
	CredentialID []byte `json:"credential_id"`
	Message      []byte `json:"message"`
}

// RealmReply carries the pkg/threshold response in its binary encoding.
type RealmReply struct {
	Message []byte `json:"message"`
}

// RealmStatusRequest asks for a record's state without spending a guess.
type RealmStatusRequest struct {
	CredentialID []byte `json:"credential_id"`
}

// RealmStatus is the answer to POST /v2/status.
type RealmStatus struct {
	State       string `json:"state"` // RealmNotRegistered, RealmRegistered or RealmNoGuesses
	GuessesLeft int    `json:"guesses_left"`
	Limit       int    `json:"limit"`
}

// Realm record states in RealmStatus.
const (
	RealmNotRegistered = "not_registered"
	RealmRegistered    = "registered"
	RealmNoGuesses     = "no_guesses"
)
