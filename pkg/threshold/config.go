package threshold

import "fmt"

// RealmID identifies a realm among all realms a client is configured with
// (the whitepaper's realm.id). It enters the unlock tag, the secret
// commitment and the signed OPRF public key of that realm's registration.
type RealmID [16]byte

// Version identifies one registration of a user across all realms. It is
// drawn at random by every registration (so a realm cannot exhaust a
// client's versions) and is also the Argon2id salt (with the user info).
type Version [16]byte

// RealmConfig is one realm of a client's configuration.
type RealmConfig struct {
	ID RealmID
	// PublicKey is the realm's long-term identity key, the one the
	// transport authenticates the realm by (for the vault: its AKE key,
	// pinned by fingerprint, which the realm channel ends at). A form-2
	// registration binds it into the realm's unlock tag and into the realm
	// set the client checks before it sends any unlock tag, so it must be
	// the key the transport actually reached, never one read from storage
	// unchecked. It may be empty (then nothing is bound).
	PublicKey []byte
}

// Form is the form of a registration, which a recovery learns from the
// realms' unlock-key commitment (docs/THRESHOLD.md §4a).
type Form uint8

const (
	// Form1 is the registrations of issue 14: unlock tags bind the realm
	// id only, and nothing authenticates the realm set before recover3.
	// They still recover; a caller should register again.
	Form1 Form = 1
	// Form2 is realm-bound: each realm's unlock tag binds its public key,
	// and each realm's unlock-key commitment carries a MAC over the realm
	// set that the client checks after recover2, before any recover3.
	// Register makes this form.
	Form2 Form = 2
)

// Config is everything besides the password that registration and recovery
// need, and what a client stores (public, but to be authenticated) to find
// its secret again: the realms, the threshold, the Argon2id parameters and
// the user info.
type Config struct {
	// Realms lists the realms; realm i (0-based) holds share number i+1, so
	// the order must be the same for registration and recovery.
	Realms []RealmConfig
	// Threshold is how many realms recovery needs: 1 <= Threshold <=
	// len(Realms), and more than half of them (2*Threshold > len(Realms)),
	// so that at most one registration can ever have a threshold of realms
	// behind it.
	Threshold int
	// KDF is the Argon2id profile the password is stretched with.
	KDF KDFParams
	// UserInfo is mixed into the salt: a stable, public per-user string
	// (for the vault: the credential identifier), so that a realm cannot
	// hand out a salt for which a password table was precomputed for
	// everyone. At most MaxUserInfo bytes.
	UserInfo []byte
}

// SecretSize is the size of the escrowed secret: a key.
const SecretSize = 32

// Limits on a configuration.
const (
	MaxRealms         = 32   // realms in a configuration
	MaxUserInfo       = 1024 // bytes of Config.UserInfo
	MaxPublicKey      = 1024 // bytes of RealmConfig.PublicKey
	MaxAllowedGuesses = 1<<16 - 1
)

// KDFParams are the parameters of Argon2id (RFC 9106, version 0x13), which
// stretches the password into 64 bytes with the salt
// version || SHA-256(frame("wabackup threshold v1 salt", user info)).
type KDFParams struct {
	Time      uint32 // t, passes over memory
	MemoryKiB uint32 // m, in KiB
	Threads   uint8  // p, lanes (the output depends on it)
}

// DefaultKDF is wabackup's Argon2id profile for password slots and the vault
// (RFC 9106's second recommended option, t = 3, m = 64 MiB, with p = 4), so
// that whoever compromises a threshold of realms still pays that much per
// password candidate.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

// Caps on Argon2id parameters, the same as the repository's key slots use,
// so that a hostile configuration cannot make a client allocate gigabytes.
const (
	MaxKDFMemoryKiB = 256 * 1024
	MaxKDFTime      = 16
	MaxKDFThreads   = 16
)

// Check reports whether p is usable: Time in 1..MaxKDFTime, Threads in
// 1..MaxKDFThreads, MemoryKiB between 8*Threads and MaxKDFMemoryKiB.
func (p KDFParams) Check() error {
	switch {
	case p.Time < 1 || p.Time > MaxKDFTime:
		return fmt.Errorf("threshold: argon2id time %d out of range 1..%d", p.Time, MaxKDFTime)
	case p.Threads < 1 || p.Threads > MaxKDFThreads:
		return fmt.Errorf("threshold: argon2id threads %d out of range 1..%d", p.Threads, MaxKDFThreads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > MaxKDFMemoryKiB:
		return fmt.Errorf("threshold: argon2id memory %d KiB out of range %d..%d",
			p.MemoryKiB, 8*uint32(p.Threads), MaxKDFMemoryKiB)
	}
	return nil
}

// Check reports whether c is a usable configuration.
func (c *Config) Check() error {
	n := len(c.Realms)
	switch {
	case n < 1 || n > MaxRealms:
		return fmt.Errorf("threshold: %d realms; need 1..%d", n, MaxRealms)
	case c.Threshold < 1 || c.Threshold > n:
		return fmt.Errorf("threshold: threshold %d out of range 1..%d", c.Threshold, n)
	case 2*c.Threshold <= n:
		return fmt.Errorf("threshold: threshold %d of %d realms is not more than half of them", c.Threshold, n)
	case len(c.UserInfo) > MaxUserInfo:
		return fmt.Errorf("threshold: user info of %d bytes; at most %d", len(c.UserInfo), MaxUserInfo)
	}
	if err := c.KDF.Check(); err != nil {
		return err
	}
	seen := make(map[RealmID]bool, n)
	for i, r := range c.Realms {
		if r.ID == (RealmID{}) {
			return fmt.Errorf("threshold: realm %d has the zero id", i+1)
		}
		if seen[r.ID] {
			return fmt.Errorf("threshold: realm id %x appears twice", r.ID[:])
		}
		seen[r.ID] = true
		if len(r.PublicKey) > MaxPublicKey {
			return fmt.Errorf("threshold: realm %d: public key of %d bytes; at most %d", i+1, len(r.PublicKey), MaxPublicKey)
		}
	}
	return nil
}
