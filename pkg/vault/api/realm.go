package api

import (
	"errors"
	"fmt"
)

// The realm API (API version 2): a wabackup-vault is also one realm of a
// threshold escrow across several independent vaults (pkg/threshold,
// docs/THRESHOLD.md). Each call carries one pkg/threshold message in its
// binary encoding; the vault answers with the matching response's binary
// encoding. Errors are Error bodies, as in version 1 (CodeBadRequest for
// a malformed message, CodeRateLimited, CodeUnavailable, CodeInternal);
// the protocol's own outcomes (NotRegistered, NoGuesses, a wrong unlock
// tag…) are statuses inside the response message, with HTTP 200.
//
// Every POST travels inside the realm channel (docs/VAULT.md, "The realm channel"): its
// body is the first message of a Noise NK handshake (pkg/noise, over
// ristretto255, to the vault's public key, with RealmPrologue(path)),
// whose payload is the JSON request below; the answer, with HTTP 200, is
// the handshake's second message, whose payload is a RealmAnswer: the
// status and the JSON body the vault would have sent without the channel.
// Only the holder of the vault's private key can read a request or write
// an answer the client accepts. A body that is not such a message is a
// bad request (400, outside the channel), as are a rate-limited request
// (429) and a body over 64 KiB: statuses outside the channel are never
// the vault's word.

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

// RealmChannelType is the Content-Type of a request or answer in the
// realm channel.
const RealmChannelType = "application/vnd.wabackup.realm-channel"

// RealmPrologue is the Noise prologue of a request to path: a request
// made for one path is not read at another.
func RealmPrologue(path string) []byte {
	return append([]byte("wabackup-vault realm channel v1\x00"), path...)
}

// MarshalRealmAnswer frames an answer in the channel: the HTTP status as
// 2 bytes big-endian, then the body.
func MarshalRealmAnswer(status int, body []byte) []byte {
	return append([]byte{byte(status >> 8), byte(status)}, body...)
}

// UnmarshalRealmAnswer reads what MarshalRealmAnswer made.
func UnmarshalRealmAnswer(b []byte) (status int, body []byte, err error) {
	if len(b) < 2 {
		return 0, nil, errors.New("an answer of less than 2 bytes")
	}
	status = int(b[0])<<8 | int(b[1])
	if status < 100 || status > 599 {
		return 0, nil, fmt.Errorf("an answer with status %d", status)
	}
	return status, b[2:], nil
}

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
