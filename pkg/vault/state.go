package vault

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"
)

// The vault keeps nothing in memory between two requests of a login, a
// registration or a password change: what it must remember travels with
// the client, sealed under a key every replica derives from the sealed
// server keys (docs/VAULT.md, "Any replica finishes"). Single use is
// recorded in the store, in the same transaction that counts the attempt
// (logins) or that writes the record (registrations, tokens by the
// record's generation).

// stateKind tells the sealed states apart; each is sealed with its own
// associated data, so one cannot be passed off as another.
type stateKind byte

const (
	kindLogin    stateKind = 1 // login id: from KE2 to KE3
	kindToken    stateKind = 2 // token: after a valid KE3, for change and delete
	kindRegister stateKind = 3 // registration or password change in progress
)

var kindLabel = map[stateKind]string{
	kindLogin:    "wabackup-vault state v1/login",
	kindToken:    "wabackup-vault state v1/token",
	kindRegister: "wabackup-vault state v1/register",
}

// state is a sealed state's content. Every kind has the same fixed-size
// fields, so a login id for an unknown credential is as long as one for a
// real record.
type state struct {
	kind    stateKind
	expires time.Time
	skey    [32]byte // storage key of the credential
	nonce   [16]byte // login: the pending login's id in the entry
	gen     [16]byte // record generation (token, change); random for fake logins
	flags   byte
	a, b    [64]byte // login: expected client MAC, session key; register: OPRF key id in a
	credID  []byte
}

const (
	flagReal    = 1 // login: a real record answered KE2
	flagCounted = 2 // login: the attempt was counted (a pending entry exists)
	flagChange  = 4 // register: a password change of the record with gen
)

const stateFixed = 1 + 8 + 32 + 16 + 16 + 1 + 64 + 64
const stateSalt = 32

// stateSealer seals states with AES-256-GCM under a key derived, for each
// state, with HKDF-SHA-256 from the replicas' shared state key and a
// random 32-byte salt sent with it. Each derived key seals one state, so
// the all-zero GCM nonce is never reused under a key, and there is no
// bound on how many states the vault may seal.
type stateSealer struct{ key []byte }

var errBadState = errors.New("vault: malformed or forged state")

func (ss stateSealer) seal(st *state) ([]byte, error) {
	pt := make([]byte, stateFixed, stateFixed+len(st.credID))
	pt[0] = byte(st.kind)
	binary.BigEndian.PutUint64(pt[1:], uint64(st.expires.UnixNano()))
	o := 9
	o += copy(pt[o:], st.skey[:])
	o += copy(pt[o:], st.nonce[:])
	o += copy(pt[o:], st.gen[:])
	pt[o] = st.flags
	o++
	o += copy(pt[o:], st.a[:])
	copy(pt[o:], st.b[:])
	pt = append(pt, st.credID...)
	return sealSalted(ss.key, kindLabel[st.kind], pt, []byte(kindLabel[st.kind]))
}

// open returns the state sealed in b if it is of kind and has not
// expired; expired reports a valid but expired state.
func (ss stateSealer) open(b []byte, kind stateKind) (st *state, expired bool, err error) {
	if len(b) < stateSalt+stateFixed+16 {
		return nil, false, errBadState
	}
	pt, err := openSalted(ss.key, kindLabel[kind], b, []byte(kindLabel[kind]))
	if err != nil || stateKind(pt[0]) != kind {
		return nil, false, errBadState
	}
	st = &state{kind: kind, expires: time.Unix(0, int64(binary.BigEndian.Uint64(pt[1:])))}
	o := 9
	o += copy(st.skey[:], pt[o:])
	o += copy(st.nonce[:], pt[o:])
	o += copy(st.gen[:], pt[o:])
	st.flags = pt[o]
	o++
	o += copy(st.a[:], pt[o:])
	o += copy(st.b[:], pt[o:])
	st.credID = pt[o:]
	return st, time.Now().After(st.expires), nil
}

// sealSalted seals plaintext under a key used once: HKDF-SHA-256(key, a
// fresh 32-byte salt, label), with the all-zero nonce. It returns salt ||
// ciphertext || tag. Login ids, tokens and registrations (stateSealer) and
// entries on etcd are sealed this way.
func sealSalted(key []byte, label string, plaintext, aad []byte) ([]byte, error) {
	salt := randBytes(stateSalt)
	a, err := saltedAEAD(key, salt, label)
	if err != nil {
		return nil, err
	}
	var nonce [12]byte
	return a.Seal(salt, nonce[:], plaintext, aad), nil
}

// openSalted reverses sealSalted.
func openSalted(key []byte, label string, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < stateSalt+16 {
		return nil, errBadState
	}
	a, err := saltedAEAD(key, sealed[:stateSalt], label)
	if err != nil {
		return nil, err
	}
	var nonce [12]byte
	return a.Open(nil, nonce[:], sealed[stateSalt:], aad)
}

func saltedAEAD(key, salt []byte, label string) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key, salt, label, 32)
	if err != nil {
		return nil, err
	}
	return gcm(k)
}
