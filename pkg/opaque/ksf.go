package opaque

import (
	"errors"

	"golang.org/x/crypto/argon2"
)

// KSF is the key stretching function of RFC 9807 §2.3: a slow,
// collision-resistant hash the client applies to the OPRF output before
// deriving its keys. Client and server-side records are bound to it: a record
// made with one KSF can only be opened with the same KSF and parameters.
type KSF interface {
	Stretch(msg []byte) []byte
}

// IdentityKSF returns its input unchanged. It is the KSF of the RFC 9807 test
// vectors and must not be used for real passwords.
type IdentityKSF struct{}

// Stretch returns msg.
func (IdentityKSF) Stretch(msg []byte) []byte { return clone(msg) }

// Argon2idKSF is Argon2id (RFC 9106, version 0x13) used as RFC 9807 §7 uses
// it: Argon2id(S = zeroes(16), p = Threads, T = Nh, m = MemoryKiB, t = Time,
// K = nil, X = nil). The salt is fixed to 16 zero bytes because the per-user
// OPRF key already acts as a secret salt (RFC 9807 §10.11), and the output
// length T equals the input length, which is Nh since the input is the OPRF
// output.
type Argon2idKSF struct {
	Time      uint32 // t, passes over memory; at least 1
	MemoryKiB uint32 // m, in KiB; at least 8*Threads
	Threads   uint8  // p, lanes; at least 1
}

// DefaultArgon2idKSF is wabackup's KSF profile: Argon2id with t = 3,
// m = 64 MiB, p = 4, the second recommended option of RFC 9106 §4 (meant
// for settings where the first option's 2 GiB is unavailable).
//
// RFC 9807 §7 suggests m = 2 GiB with t = 1. In OPAQUE the client, not the
// server, pays for the KSF, and our clients include phones and old laptops;
// 2 GiB would not fit their memory. With 64 MiB and three passes, a current
// laptop stretches in roughly 0.1 to 0.3 s, well under a second, while an
// offline attacker who has stolen the server's records still pays 64 MiB and
// three passes per password guess. Changing these parameters changes every
// export_key and requires every user to re-register.
var DefaultArgon2idKSF = Argon2idKSF{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

var zeroSalt16 [16]byte

// Stretch returns Argon2id(msg) with a 16-byte zero salt and len(msg) output
// bytes. It panics if the parameters are invalid; [Suite.NewClient] rejects
// such parameters up front.
func (k Argon2idKSF) Stretch(msg []byte) []byte {
	if err := k.validate(); err != nil {
		panic(err)
	}
	return argon2.IDKey(msg, zeroSalt16[:], k.Time, k.MemoryKiB, k.Threads, uint32(len(msg)))
}

func (k Argon2idKSF) validate() error {
	if k.Time < 1 || k.Threads < 1 || k.MemoryKiB < 8*uint32(k.Threads) {
		return errors.New("opaque: invalid Argon2id parameters (need Time >= 1, Threads >= 1, MemoryKiB >= 8*Threads)")
	}
	return nil
}

func validateKSF(ksf KSF) error {
	switch k := ksf.(type) {
	case nil:
		return errors.New("opaque: nil KSF")
	case Argon2idKSF:
		return k.validate()
	case *Argon2idKSF:
		if k == nil {
			return errors.New("opaque: nil KSF")
		}
		return k.validate()
	}
	return nil
}
