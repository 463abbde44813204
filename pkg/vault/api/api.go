// Package api holds what the wabackup key vault and its clients share: the
// JSON messages of the HTTP API (docs/VAULT.md), the OPAQUE configuration,
// the credential identifier and the two small AEAD layers around the
// escrowed secret. It is pure Go and imports nothing of the server, so the
// cgo-free CLI can use it.
package api

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/wabackup/wabackup/pkg/opaque"
)

// Suite is the OPAQUE configuration of the vault.
var Suite = opaque.Ristretto255SHA512

// Context is the OPAQUE context string (RFC 9807 §6.4.2.1) the vault and
// its clients share.
var Context = []byte("wabackup key vault v1")

// Labels of the HKDF derivations.
const (
	// EscrowLabel derives, from the OPAQUE export_key, the key the client
	// encrypts the escrowed secret under before it leaves the machine.
	EscrowLabel = "wabackup vault escrow v1"
	// ReleaseLabel derives, from the OPAQUE session_key, the key the vault
	// encrypts the escrowed blob under when it releases it.
	ReleaseLabel = "wabackup vault release v1"
	// TokenLabel derives, from the OPAQUE session_key, the key the vault
	// encrypts a login's token under when it answers KE3 (Seal with
	// TokenLabel, aad = login id): only the client that ran the login can
	// read it, and it then sends it only inside the realm channel
	// (TokenPaths).
	TokenLabel = "wabackup vault token v1"
)

// DefaultName is the credential name used when the user picks none.
const DefaultName = "default"

// CredentialID is the OPAQUE credential_identifier of a repository's
// escrowed secret: "wabackup/v1/" || repository id || "/" || name.
func CredentialID(repoID, name string) []byte {
	if name == "" {
		name = DefaultName
	}
	return []byte("wabackup/v1/" + repoID + "/" + name)
}

// Fingerprint is the SHA-256 of the vault's AKE public key in lowercase hex.
func Fingerprint(publicKey []byte) string {
	h := sha256.Sum256(publicKey)
	return hex.EncodeToString(h[:])
}

// ErrDecrypt is returned when a sealed blob does not open.
var ErrDecrypt = errors.New("vault: blob does not decrypt")

func aead(secret []byte, label string) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, secret, nil, label, 32)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Seal encrypts plaintext with AES-256-GCM under HKDF-SHA-256(secret,
// label) with a random 12-byte nonce: nonce || ciphertext || tag.
func Seal(secret []byte, label string, plaintext, aad []byte) ([]byte, error) {
	a, err := aead(secret, label)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(plaintext)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return a.Seal(nonce, nonce, plaintext, aad), nil
}

// Open reverses Seal.
func Open(secret []byte, label string, sealed, aad []byte) ([]byte, error) {
	a, err := aead(secret, label)
	if err != nil {
		return nil, err
	}
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return nil, ErrDecrypt
	}
	pt, err := a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// Paths of the API, all under the vault's base URL.
const (
	PathInfo           = "/v1/info"
	PathRegisterStart  = "/v1/register/start"
	PathRegisterFinish = "/v1/register/finish"
	PathLoginStart     = "/v1/login/start"
	PathLoginFinish    = "/v1/login/finish"
	PathStatus         = "/v1/status"
	PathChangeStart    = "/v1/change/start"
	PathChangeFinish   = "/v1/change/finish"
	PathDelete         = "/v1/delete"
)

// TokenPaths are the version 1 endpoints that take a login's token: the
// vault answers them only inside the realm channel (RealmChannelType,
// with RealmPrologue(path)), as it answers every POST of the realm API,
// and refuses them outside it with CodeChannelRequired. The token thus
// never crosses TLS in the clear: a man in the middle holding a
// certificate the client trusts can neither read it nor use it
// (docs/VAULT.md, "API").
var TokenPaths = []string{PathChangeStart, PathChangeFinish, PathDelete}

// Info is the answer to GET /v1/info.
type Info struct {
	Suite          string `json:"suite"`
	PublicKey      []byte `json:"public_key"`
	Fingerprint    string `json:"fingerprint"`
	MaxGuesses     int    `json:"max_guesses"`
	DefaultGuesses int    `json:"default_guesses"`
}

// RegisterStart starts a registration (at PathRegisterStart, with
// CredentialID) or a password change (at PathChangeStart, inside the
// realm channel, with Token instead).
type RegisterStart struct {
	CredentialID []byte `json:"credential_id,omitempty"`
	Token        []byte `json:"token,omitempty"`
	Request      []byte `json:"request"`
}

// RegisterStartReply carries the OPAQUE registration response.
type RegisterStartReply struct {
	Response []byte `json:"response"`
	// State is the vault's sealed registration state (the randomness of
	// the record's fresh OPRF key among it): send it back with
	// RegisterFinish, to any replica.
	State []byte `json:"state"`
}

// RegisterFinish uploads the record and the escrowed ciphertext. The
// sealed State says which credential, and for a password change which
// generation of its record, it replaces: CredentialID and Token are
// ignored (clients before the realm channel sent them).
type RegisterFinish struct {
	CredentialID []byte `json:"credential_id,omitempty"`
	Token        []byte `json:"token,omitempty"`
	Record       []byte `json:"record"`
	Blob         []byte `json:"blob"`
	Guesses      int    `json:"guesses,omitempty"`
	State        []byte `json:"state"`
}

// RegisterFinishReply says how many guesses the record allows.
type RegisterFinishReply struct {
	Guesses int `json:"guesses"`
}

// LoginStart carries KE1.
type LoginStart struct {
	CredentialID []byte `json:"credential_id"`
	KE1          []byte `json:"ke1"`
}

// LoginStartReply carries KE2 and the id of the pending login.
type LoginStartReply struct {
	LoginID []byte `json:"login_id"`
	KE2     []byte `json:"ke2"`
}

// LoginFinish carries KE3; an empty KE3 abandons the login (the client
// found its password wrong on KE2), which counts as the failure it is.
type LoginFinish struct {
	LoginID []byte `json:"login_id"`
	KE3     []byte `json:"ke3,omitempty"`
}

// LoginFinishReply carries the escrowed blob sealed under the session key
// (Seal with ReleaseLabel, aad = login id) and the token for change and
// delete, sealed under the session key too (Seal with TokenLabel, aad =
// login id): the client opens it and sends it only inside the realm
// channel (TokenPaths).
type LoginFinishReply struct {
	Blob  []byte `json:"blob"`
	Token []byte `json:"token"`
}

// Status asks how many attempts are left.
type Status struct {
	CredentialID []byte `json:"credential_id"`
}

// StatusReply answers Status.
type StatusReply struct {
	AttemptsLeft int `json:"attempts_left"`
	Limit        int `json:"limit"`
}

// Delete destroys the record; Token comes from a completed login (opened
// from LoginFinishReply.Token). It travels inside the realm channel.
type Delete struct {
	Token []byte `json:"token"`
}

// Error is the body of every non-2xx answer. Code is one of the Code*
// constants.
type Error struct {
	Code         string `json:"code"`
	Message      string `json:"message"`
	AttemptsLeft *int   `json:"attempts_left,omitempty"`
}

// Error codes.
const (
	CodeBadRequest    = "bad_request"
	CodeExists        = "exists"
	CodeWrongPassword = "wrong_password"
	CodeBadToken      = "bad_token"
	CodeLoginExpired  = "login_expired"
	CodeRateLimited   = "rate_limited"
	CodeInternal      = "internal"
	// CodeUnavailable (503): the vault cannot reach its store's quorum
	// and answers no login rather than an uncounted one; retry later or
	// at another site.
	CodeUnavailable = "unavailable"
	// CodeChannelRequired (400): a request to one of TokenPaths outside
	// the realm channel, as a client older than the channel sends it.
	CodeChannelRequired = "channel_required"
)
