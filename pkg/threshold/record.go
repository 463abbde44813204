package threshold

import (
	"encoding/binary"
	"fmt"
)

// State is where a user stands at a realm (the whitepaper's realm state).
type State uint8

// The states. The zero RealmRecord, and the absence of one, is
// StateNotRegistered.
const (
	StateNotRegistered State = 0 // no registration; the default
	StateRegistered    State = 1 // a registration that can still be recovered
	StateNoGuesses     State = 2 // the guesses ran out; the registration is erased
)

func (s State) String() string {
	switch s {
	case StateNotRegistered:
		return "NotRegistered"
	case StateRegistered:
		return "Registered"
	case StateNoGuesses:
		return "NoGuesses"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// RealmRecord is what a realm keeps for one user: a value the caller stores
// (through [RecordStore]) as the bytes of MarshalBinary and reads back with
// [UnmarshalRealmRecord]. A Registered record holds the realm's OPRF key
// share and encryption-key share, which are secret: store it sealed. The
// zero value is a NotRegistered record.
type RealmRecord struct {
	state State
	reg   registration // StateRegistered only
}

// registration is the whitepaper's registration state at realm i.
type registration struct {
	version                   Version
	oprfKeyShare              [scalarSize]byte
	signedPublicKey           SignedPublicKey
	unlockKeyCommitment       [commitmentSize]byte
	unlockKeyTag              [tagSize]byte
	encryptionKeyScalarShare  [scalarSize]byte
	encryptedSecret           [encryptedSecretSize]byte
	encryptedSecretCommitment [tagSize]byte
	allowedGuesses            uint16
	attemptedGuesses          uint16
}

// State returns the record's state; a nil record is NotRegistered.
func (r *RealmRecord) State() State {
	if r == nil {
		return StateNotRegistered
	}
	return r.state
}

// GuessesLeft returns how many more recover2 requests a Registered record
// answers (allowed minus attempted guesses), and 0 in the other states.
func (r *RealmRecord) GuessesLeft() int {
	if r.State() != StateRegistered {
		return 0
	}
	return int(r.reg.allowedGuesses) - int(r.reg.attemptedGuesses)
}

// AllowedGuesses returns the guess limit a Registered record was
// registered with, and 0 in the other states.
func (r *RealmRecord) AllowedGuesses() int {
	if r.State() != StateRegistered {
		return 0
	}
	return int(r.reg.allowedGuesses)
}

// Version returns the registration's version of a Registered record, and
// the zero Version in the other states. A store can compare versions to
// tell a new registration from a counter update of the same one.
func (r *RealmRecord) Version() Version {
	if r.State() != StateRegistered {
		return Version{}
	}
	return r.reg.version
}

// The record encoding:
//
//	format (1 byte, = 1) || state (1 byte) || registration (Registered only)
//
// where registration is version[16] || oprf_key_share[32] ||
// oprf_public_key[32] || verifying_key[32] || signature[64] ||
// unlock_key_commitment[32] || unlock_key_tag[16] ||
// encryption_key_scalar_share[32] || encrypted_secret[48] ||
// encrypted_secret_commitment[16] || allowed_guesses[2] ||
// attempted_guesses[2].
const (
	recordFormat         = 1
	recordHeaderSize     = 2
	recordRegisteredSize = recordHeaderSize + len(Version{}) + scalarSize + signedPublicKeySize +
		commitmentSize + tagSize + scalarSize + encryptedSecretSize + tagSize + 2 + 2
)

// MarshalBinary returns the storage encoding of r (nil encodes as a
// NotRegistered record).
func (r *RealmRecord) MarshalBinary() ([]byte, error) {
	st := r.State()
	b := make([]byte, 0, recordRegisteredSize)
	b = append(b, recordFormat, byte(st))
	switch st {
	case StateNotRegistered, StateNoGuesses:
		return b, nil
	case StateRegistered:
	default:
		return nil, fmt.Errorf("threshold: RealmRecord in state %v", st)
	}
	g := &r.reg
	b = append(b, g.version[:]...)
	b = append(b, g.oprfKeyShare[:]...)
	b = appendSignedPublicKey(b, &g.signedPublicKey)
	b = append(b, g.unlockKeyCommitment[:]...)
	b = append(b, g.unlockKeyTag[:]...)
	b = append(b, g.encryptionKeyScalarShare[:]...)
	b = append(b, g.encryptedSecret[:]...)
	b = append(b, g.encryptedSecretCommitment[:]...)
	b = binary.BigEndian.AppendUint16(b, g.allowedGuesses)
	return binary.BigEndian.AppendUint16(b, g.attemptedGuesses), nil
}

// UnmarshalRealmRecord decodes and validates a stored record: a known
// format and state, the exact length for that state, canonical scalars (a
// non-zero OPRF key share), a canonical non-identity public key, and
// 0 <= attempted <= allowed with allowed >= 1.
func UnmarshalRealmRecord(data []byte) (*RealmRecord, error) {
	const name = "RealmRecord"
	if len(data) < recordHeaderSize {
		return nil, invalid(name, "too short")
	}
	if data[0] != recordFormat {
		return nil, invalid(name, fmt.Sprintf("format %d", data[0]))
	}
	st := State(data[1])
	switch st {
	case StateNotRegistered, StateNoGuesses:
		if len(data) != recordHeaderSize {
			return nil, invalid(name, "wrong length for state "+st.String())
		}
		return &RealmRecord{state: st}, nil
	case StateRegistered:
		if len(data) != recordRegisteredSize {
			return nil, invalid(name, "wrong length for state "+st.String())
		}
	default:
		return nil, invalid(name, "state "+st.String())
	}
	r := &reader{data[recordHeaderSize:]}
	rec := &RealmRecord{state: st}
	g := &rec.reg
	r.take(g.version[:])
	r.take(g.oprfKeyShare[:])
	r.signedPublicKey(&g.signedPublicKey)
	r.take(g.unlockKeyCommitment[:])
	r.take(g.unlockKeyTag[:])
	r.take(g.encryptionKeyScalarShare[:])
	r.take(g.encryptedSecret[:])
	r.take(g.encryptedSecretCommitment[:])
	g.allowedGuesses = r.u16()
	g.attemptedGuesses = r.u16()
	if err := checkScalar(name, "OPRF key share", g.oprfKeyShare[:], true); err != nil {
		return nil, err
	}
	if err := checkElement(name, "OPRF public key", g.signedPublicKey.PublicKey[:]); err != nil {
		return nil, err
	}
	if err := checkScalar(name, "encryption-key share", g.encryptionKeyScalarShare[:], false); err != nil {
		return nil, err
	}
	if g.allowedGuesses == 0 || g.attemptedGuesses > g.allowedGuesses {
		return nil, invalid(name, fmt.Sprintf("%d of %d guesses attempted", g.attemptedGuesses, g.allowedGuesses))
	}
	return rec, nil
}
