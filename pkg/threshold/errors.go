package threshold

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidMessage is wrapped by every decoding error: wrong length,
	// wrong message kind or wire version, a status the message cannot
	// carry, a non-canonical or identity group element, a non-canonical
	// scalar, or counters out of range.
	ErrInvalidMessage = errors.New("threshold: invalid message")

	// ErrInvalidRequest is wrapped when a realm refuses a well-formed
	// request: a registration whose OPRF key share does not match its
	// signed public key, whose signature does not verify, or that allows
	// more guesses than the realm permits.
	ErrInvalidRequest = errors.New("threshold: invalid request")

	// ErrNotRegistered: the user has no registration (at a realm, or at
	// enough realms to recover from).
	ErrNotRegistered = errors.New("threshold: not registered")

	// ErrNoGuesses: the guesses are used up (at a realm, or at so many
	// realms that fewer than a threshold still hold a share: the secret is
	// destroyed for good).
	ErrNoGuesses = errors.New("threshold: no guesses left")

	// ErrOtherVersion: a realm holds another registration than the one the
	// threshold agrees on (it missed a re-registration, or it changed
	// during the recovery).
	ErrOtherVersion = errors.New("threshold: the realm holds another registration")

	// ErrWrongPassword is wrapped by [*WrongPasswordError].
	ErrWrongPassword = errors.New("threshold: wrong password")

	// ErrMisbehaving is wrapped by every kind of realm misbehaviour the
	// client detects.
	ErrMisbehaving = errors.New("threshold: realm misbehaved")
)

// The kinds of misbehaviour; each wraps [ErrMisbehaving].
var (
	// ErrBadSignature: the realm's signed OPRF public key does not verify
	// under the verifying key it came with (a substituted public key).
	ErrBadSignature error = misbehaviour("its signed OPRF public key does not verify")
	// ErrBadProof: the realm's evaluation does not come with a valid DLEQ
	// proof for its public key (a wrong evaluation or a bad proof).
	ErrBadProof error = misbehaviour("its evaluation proof does not verify")
	// ErrDisagreement: the realm's verifying key or unlock-key commitment
	// differs from the ones a threshold of realms agree on.
	ErrDisagreement error = misbehaviour("its verifying key or unlock-key commitment differs from the threshold's")
	// ErrBadShare: the realm's encryption-key share or encrypted secret does
	// not match its commitment.
	ErrBadShare error = misbehaviour("its encryption-key share or encrypted secret does not match its commitment")
	// ErrBadAnswer: the realm answered with a status the protocol does not
	// allow at that point (e.g. it rejected the unlock tag the right
	// password gives).
	ErrBadAnswer error = misbehaviour("it answered out of protocol")
)

type misbehaviour string

func (e misbehaviour) Error() string        { return "threshold: realm misbehaved: " + string(e) }
func (e misbehaviour) Is(target error) bool { return target == ErrMisbehaving }

// RealmError is what went wrong with one realm: a transport error, a status
// that made it unusable, or misbehaviour.
type RealmError struct {
	Index int     // 1-based position in Config.Realms (its share number)
	ID    RealmID // its id
	Op    string  // the request: "register1", "register2", "recover1", "recover2", "recover3", "delete"
	Err   error
}

func (e *RealmError) Error() string {
	return fmt.Sprintf("realm %d (%x): %s: %v", e.Index, e.ID[:], e.Op, e.Err)
}

func (e *RealmError) Unwrap() error { return e.Err }

// QuorumError reports that too few realms gave a usable answer for an
// operation to succeed. Registration and deletion need every realm; recovery
// needs the threshold. After a failed registration, Answered may still be at
// least the threshold: the new registration is then recoverable, but not
// from every realm; registering again fixes that.
type QuorumError struct {
	Op       string        // "register", "recover" or "delete"
	Answered int           // realms that gave a usable answer at the step that failed
	Needed   int           // how many that step needs
	Total    int           // realms in the configuration
	Problems []*RealmError // what went wrong with the others
}

func (e *QuorumError) Error() string {
	verb := "are"
	if e.Needed == 1 {
		verb = "is"
	}
	realms := "realms"
	if e.Total == 1 {
		realms = "realm"
	}
	return fmt.Sprintf("threshold: %s: only %d of the %d %s answered; %d %s needed",
		e.Op, e.Answered, e.Total, realms, e.Needed, verb)
}

// WrongPasswordError is the result of a recovery with a wrong password.
type WrongPasswordError struct {
	// GuessesLeft is the minimum, over the realms whose evaluations were
	// used, of the guesses they have left; at 0 the next recovery finds the
	// secret destroyed.
	GuessesLeft int
	// Problems lists realms that failed or misbehaved along the way; they
	// did not cause the result.
	Problems []*RealmError
}

func (e *WrongPasswordError) Error() string {
	return fmt.Sprintf("threshold: wrong password (%d guesses left)", e.GuessesLeft)
}

func (e *WrongPasswordError) Is(target error) bool { return target == ErrWrongPassword }

// ErrRealmSetChanged is wrapped by [*RealmSetError].
var ErrRealmSetChanged = errors.New("threshold: the realm set is not the one the password was registered with")

// RealmSetError is the result of a recovery whose configuration is not the
// one the (right) password was registered with: a realm's public key,
// position or id, or the threshold, the Argon2id parameters, the user info
// or the list of realm ids, was changed where the configuration was stored
// (a relay put in a realm's place, for instance). It is found after
// recover2 and before recover3, so no unlock tag was sent to any realm;
// the guess recover2 counted stays counted.
type RealmSetError struct {
	// Changed lists the positions (1-based) of the realms whose binding did
	// not verify; when it holds every realm checked, the change may be in
	// what all of them share (threshold, parameters, realm list) rather
	// than in each realm's key.
	Changed []int
	// Checked is how many realms' bindings were checked.
	Checked int
	// Problems lists realms that failed or misbehaved along the way.
	Problems []*RealmError
}

func (e *RealmSetError) Error() string {
	if len(e.Changed) == e.Checked {
		return fmt.Sprintf("threshold: the realm set is not the one the password was registered with (no realm of the %d checked shows its binding: the realms' keys, the threshold, the parameters or the list of realms were changed)", e.Checked)
	}
	return fmt.Sprintf("threshold: realms %v are not the ones the password was registered with (their keys, ids or positions were changed)", e.Changed)
}

func (e *RealmSetError) Is(target error) bool { return target == ErrRealmSetChanged }
