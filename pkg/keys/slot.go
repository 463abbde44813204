package keys

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// ErrWrongKey is wrapped by Unwrap when the secret does not open the slot:
// a wrong password or key, or a slot whose authenticated parts were
// modified. The two cases are deliberately indistinguishable.
var ErrWrongKey = errors.New("wrong key or password")

// ErrBadSlot is wrapped by every error about a slot's structure: ParseSlot
// on malformed input, and Marshal or Unwrap on a slot that breaks the
// rules ParseSlot enforces.
var ErrBadSlot = errors.New("invalid key slot")

// Argon2Params are the Argon2id cost parameters of a password slot
// (RFC 9106 names: t, m, p).
type Argon2Params struct {
	Time      uint32 `json:"t"` // passes over memory
	MemoryKiB uint32 `json:"m"` // memory in KiB
	Threads   uint8  `json:"p"` // lanes, and threads used to fill them
}

// DefaultArgon2 are the parameters for new password slots: RFC 9106's
// second recommended option (t = 3, m = 64 MiB), with 4 lanes as in borg 2.
// That takes roughly 0.1–0.5 s depending on the machine (about 0.1 s on a
// 2-core AMD EPYC server, more on an older laptop), which is negligible
// once per backup or restore but makes every guess of an offline attacker
// cost 64 MiB of memory and the same time. (Argon2id output depends on p, so
// p = 4 is part of the slot, not just a speed setting.)
var DefaultArgon2 = Argon2Params{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

// Caps on Argon2 parameters, enforced whenever a slot is created, parsed or
// unwrapped so that a hostile repository cannot make a client allocate
// gigabytes of memory or spin for minutes.
const (
	MaxArgon2MemoryKiB = 256 * 1024 // 256 MiB
	MaxArgon2Time      = 16
	MaxArgon2Threads   = 16
)

// Check reports whether p is usable: Time in 1..MaxArgon2Time, Threads in
// 1..MaxArgon2Threads, and MemoryKiB between 8*Threads (RFC 9106's
// minimum) and MaxArgon2MemoryKiB. It imposes no minimum cost beyond that:
// weak parameters only weaken the slot that carries them. The error wraps
// ErrBadSlot.
func (p Argon2Params) Check() error {
	switch {
	case p.Time < 1 || p.Time > MaxArgon2Time:
		return fmt.Errorf("%w: argon2id time %d out of range 1..%d", ErrBadSlot, p.Time, MaxArgon2Time)
	case p.Threads < 1 || p.Threads > MaxArgon2Threads:
		return fmt.Errorf("%w: argon2id threads %d out of range 1..%d", ErrBadSlot, p.Threads, MaxArgon2Threads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > MaxArgon2MemoryKiB:
		return fmt.Errorf("%w: argon2id memory %d KiB out of range %d..%d", ErrBadSlot,
			p.MemoryKiB, 8*uint32(p.Threads), MaxArgon2MemoryKiB)
	}
	return nil
}

// SlotKind says what kind of secret opens a slot.
type SlotKind string

// The slot kinds.
const (
	KindRecovery SlotKind = "recovery" // a 32-byte recovery key
	KindPassword SlotKind = "password" // a password, stretched with Argon2id
	KindVault    SlotKind = "vault"    // a 32-byte secret held by a key vault
)

// SlotVersion is the only slot format version this package reads and writes.
const SlotVersion = 1

// Field sizes of a version 1 slot.
const (
	slotIDSize      = 16
	slotSaltSize    = 32
	slotNonceSize   = 12
	slotWrappedSize = KeySize + 16 // the master key plus the GCM tag
)

// Limits on the informational fields, and on a slot's encoded size.
const (
	maxLabelLen    = 256
	maxExtraFields = 40   // a threshold slot of 9 vaults has 33
	maxExtraLen    = 1024 // per key and per value
	maxSlotSize    = 64 * 1024
)

// Slot is one wrapping of a repository's master key. Its JSON encoding (see
// Marshal and ParseSlot) is the on-store format: one object with the field
// names below, byte strings in standard base64 with padding, "created" in
// RFC 3339, and "argon2id" an object {"t": passes, "m": KiB, "p": lanes}.
// The package documentation describes the construction. For example:
//
//	{"v":1,"id":"6f1c...","kind":"password","label":"laptop","created":"2025-01-02T03:04:05Z",
//	 "argon2id":{"t":3,"m":65536,"p":4},"salt":"...","nonce":"...","wrapped":"..."}
type Slot struct {
	Version int               `json:"v"`                  // SlotVersion
	ID      string            `json:"id"`                 // 16 random bytes as 32 lowercase hex digits
	Kind    SlotKind          `json:"kind"`               // what opens it
	Label   string            `json:"label,omitempty"`    // user note such as a hostname; not authenticated
	Created time.Time         `json:"created"`            // creation time (UTC, seconds); not authenticated
	KDF     *Argon2Params     `json:"argon2id,omitempty"` // password slots only
	Salt    []byte            `json:"salt"`               // 32 random bytes
	Nonce   []byte            `json:"nonce"`              // 12 random bytes
	Wrapped []byte            `json:"wrapped"`            // AES-256-GCM ciphertext and tag of the master key (48 bytes)
	Extra   map[string]string `json:"extra,omitempty"`    // kind-specific data (e.g. a vault's URL); authenticated for vault slots only (ExtraAuthentic)

	extraAuthentic bool
}

// NewRecoverySlot wraps master under a recovery key.
func NewRecoverySlot(master, recovery Key, label string) (*Slot, error) {
	if recovery == (Key{}) {
		return nil, errors.New("keys: refusing an all-zero recovery key")
	}
	return newSlot(KindRecovery, master, recovery[:], nil, label, nil)
}

// NewPasswordSlot wraps master under a password, stretched with Argon2id
// using p (normally DefaultArgon2). The password is first normalized with
// NormalizePassword. Changing a password means creating a new slot this
// way and deleting the old one.
func NewPasswordSlot(master Key, password []byte, p Argon2Params, label string) (*Slot, error) {
	if len(password) == 0 {
		return nil, errors.New("keys: empty password")
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return newSlot(KindPassword, master, NormalizePassword(password), &p, label, nil)
}

// NewVaultSlot wraps master under a 32-byte secret held by a key vault.
// extra records how to reach the vault; it is stored in the clear, and
// bound into the slot's associated data, so an opened slot's extra is the
// one it was made with (ExtraAuthentic). The map is copied.
func NewVaultSlot(master, secret Key, label string, extra map[string]string) (*Slot, error) {
	if secret == (Key{}) {
		return nil, errors.New("keys: refusing an all-zero vault secret")
	}
	var ex map[string]string
	if len(extra) > 0 {
		ex = make(map[string]string, len(extra))
		for k, v := range extra {
			ex[k] = v
		}
	}
	return newSlot(KindVault, master, secret[:], nil, label, ex)
}

func newSlot(kind SlotKind, master Key, secret []byte, p *Argon2Params, label string, extra map[string]string) (*Slot, error) {
	if master == (Key{}) {
		return nil, errors.New("keys: refusing an all-zero master key")
	}
	var rnd [slotIDSize + slotSaltSize + slotNonceSize]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("keys: reading random bytes: %w", err)
	}
	s := &Slot{
		Version: SlotVersion,
		ID:      hex.EncodeToString(rnd[:slotIDSize]),
		Kind:    kind,
		Label:   label,
		Created: time.Now().UTC().Truncate(time.Second),
		KDF:     p,
		Salt:    bytes.Clone(rnd[slotIDSize : slotIDSize+slotSaltSize]),
		Nonce:   bytes.Clone(rnd[slotIDSize+slotSaltSize:]),
		Extra:   extra,
	}
	if err := s.checkHeader(); err != nil {
		return nil, err
	}
	aead, err := s.aead(secret)
	if err != nil {
		return nil, err
	}
	s.Wrapped = aead.Seal(nil, s.Nonce, master[:], s.boundAAD())
	return s, nil
}

// Unwrap returns the master key. secret is the 32-byte recovery key or
// vault secret for those kinds, and the password for password slots. The
// slot is checked first (including the Argon2 caps, before Argon2 runs);
// a structural problem gives an error wrapping ErrBadSlot. A secret that
// does not open the slot gives an error wrapping ErrWrongKey.
//
// A password is tried normalized (NormalizePassword) and, if that differs
// from what was typed and does not open the slot, as typed: slots made
// before passwords were normalized still open.
func (s *Slot) Unwrap(secret []byte) (Key, error) {
	budget := ^uint64(0)
	return s.UnwrapWithin(secret, &budget)
}

// Argon2Budget is the Argon2id work one open of a repository may spend on
// its password slots, in passes × KiB: what one slot at the caps costs
// (MaxArgon2Time × MaxArgon2MemoryKiB), or 21 slots at DefaultArgon2. A
// hostile repository holding many password slots cannot make an open run
// Argon2id more than that.
const Argon2Budget = uint64(MaxArgon2Time) * MaxArgon2MemoryKiB

// ErrArgon2Budget is returned by UnwrapWithin when the next Argon2id run
// would exceed the budget left.
var ErrArgon2Budget = errors.New("keys: the Argon2id work allowed for one open is spent")

// Cost is the Argon2id work of one try of a password slot, in passes ×
// KiB (0 for other kinds).
func (s *Slot) Cost() uint64 {
	if s.Kind != KindPassword || s.KDF == nil {
		return 0
	}
	return uint64(s.KDF.Time) * uint64(s.KDF.MemoryKiB)
}

// UnwrapWithin is Unwrap that deducts each Argon2id run's cost from
// *budget first, and fails with ErrArgon2Budget instead of running one
// that does not fit.
func (s *Slot) UnwrapWithin(secret []byte, budget *uint64) (Key, error) {
	if err := s.check(); err != nil {
		return Key{}, err
	}
	if s.Kind == KindPassword {
		spend := func() error {
			if s.Cost() > *budget {
				return ErrArgon2Budget
			}
			*budget -= s.Cost()
			return nil
		}
		if err := spend(); err != nil {
			return Key{}, err
		}
		n := NormalizePassword(secret)
		master, err := s.unwrap(n)
		if errors.Is(err, ErrWrongKey) && !bytes.Equal(n, secret) {
			if err := spend(); err != nil {
				return Key{}, err
			}
			return s.unwrap(secret)
		}
		return master, err
	}
	return s.unwrap(secret)
}

func (s *Slot) unwrap(secret []byte) (Key, error) {
	if s.Kind != KindPassword && len(secret) != KeySize {
		return Key{}, fmt.Errorf("%w: a %s slot takes a %d-byte key, got %d bytes", ErrWrongKey, s.Kind, KeySize, len(secret))
	}
	aead, err := s.aead(secret)
	if err != nil {
		return Key{}, err
	}
	var master Key
	s.extraAuthentic = false
	out, err := aead.Open(master[:0], s.Nonce, s.Wrapped, s.boundAAD())
	if err == nil && len(out) == KeySize {
		s.extraAuthentic = s.Kind == KindVault
		return master, nil
	}
	if s.Kind == KindVault && len(s.Extra) > 0 {
		// A vault slot made before its extra fields were bound.
		if out, err := aead.Open(master[:0], s.Nonce, s.Wrapped, s.aad()); err == nil && len(out) == KeySize {
			return master, nil
		}
	}
	return Key{}, ErrWrongKey
}

// ExtraAuthentic reports whether the slot's Extra fields are the ones it
// was made with: true for a vault slot that Unwrap opened whose
// associated data binds them. It is false before
// the slot is opened, for other kinds, and for vault slots made before
// the binding existed, whose extra fields anyone could have changed.
func (s *Slot) ExtraAuthentic() bool { return s.extraAuthentic }

// boundAAD is the associated data a slot is sealed with: aad, and for a
// vault slot with extra fields, those fields in canonical order (see the
// package documentation).
func (s *Slot) boundAAD() []byte {
	b := s.aad()
	if s.Kind != KindVault || len(s.Extra) == 0 {
		return b
	}
	names := make([]string, 0, len(s.Extra))
	for k := range s.Extra {
		names = append(names, k)
	}
	slices.Sort(names)
	b = append(b, "extra"...)
	b = append(b, byte(len(names)))
	for _, k := range names {
		b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Extra[k])))
		b = append(b, s.Extra[k]...)
	}
	return b
}

// aead derives the slot's wrapping key from secret and returns AES-256-GCM
// keyed with it. s must have passed checkHeader.
func (s *Slot) aead(secret []byte) (cipher.AEAD, error) {
	var w []byte
	switch s.Kind {
	case KindPassword:
		w = argon2.IDKey(secret, s.Salt, s.KDF.Time, s.KDF.MemoryKiB, s.KDF.Threads, KeySize)
	default:
		var err error
		w, err = hkdf.Key(sha256.New, secret, s.Salt, "wabackup v1 slot wrap", KeySize)
		if err != nil {
			return nil, fmt.Errorf("keys: hkdf: %w", err)
		}
	}
	block, err := aes.NewCipher(w)
	clear(w)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return aead, nil
}

// aadPrefix starts the associated data of every version 1 slot.
const aadPrefix = "wabackup-slot-v1"

// aad returns the canonical encoding of the slot's authenticated header
// (see the package documentation). s must have passed checkHeader.
func (s *Slot) aad() []byte {
	id, _ := hex.DecodeString(s.ID)
	b := make([]byte, 0, len(aadPrefix)+1+len(s.Kind)+len(id)+9)
	b = append(b, aadPrefix...)
	b = append(b, byte(len(s.Kind)))
	b = append(b, s.Kind...)
	b = append(b, id...)
	var p Argon2Params
	if s.KDF != nil {
		p = *s.KDF
	}
	b = binary.BigEndian.AppendUint32(b, p.Time)
	b = binary.BigEndian.AppendUint32(b, p.MemoryKiB)
	b = append(b, p.Threads)
	return b
}

// check enforces everything ParseSlot promises about a slot.
func (s *Slot) check() error {
	if err := s.checkHeader(); err != nil {
		return err
	}
	return checkLen("wrapped key", s.Wrapped, slotWrappedSize)
}

// checkHeader is check without the wrapped key, which newSlot has yet to
// compute when it calls it.
func (s *Slot) checkHeader() error {
	if s == nil {
		return fmt.Errorf("%w: nil slot", ErrBadSlot)
	}
	if s.Version != SlotVersion {
		return fmt.Errorf("%w: unsupported version %d", ErrBadSlot, s.Version)
	}
	if !isLowerHex(s.ID, 2*slotIDSize) {
		return fmt.Errorf("%w: id %s is not %d lowercase hex digits", ErrBadSlot, quoteShort(s.ID), 2*slotIDSize)
	}
	switch s.Kind {
	case KindPassword:
		if s.KDF == nil {
			return fmt.Errorf("%w: password slot without argon2id parameters", ErrBadSlot)
		}
		if err := s.KDF.Check(); err != nil {
			return err
		}
	case KindRecovery, KindVault:
		if s.KDF != nil {
			return fmt.Errorf("%w: %s slot with argon2id parameters", ErrBadSlot, s.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown kind %s", ErrBadSlot, quoteShort(string(s.Kind)))
	}
	if err := checkText("label", s.Label, maxLabelLen); err != nil {
		return err
	}
	if s.Created.IsZero() {
		return fmt.Errorf("%w: missing creation time", ErrBadSlot)
	}
	if y := s.Created.Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: creation year %d out of range", ErrBadSlot, y)
	}
	if err := checkLen("salt", s.Salt, slotSaltSize); err != nil {
		return err
	}
	if err := checkLen("nonce", s.Nonce, slotNonceSize); err != nil {
		return err
	}
	if len(s.Extra) > maxExtraFields {
		return fmt.Errorf("%w: %d extra fields, at most %d allowed", ErrBadSlot, len(s.Extra), maxExtraFields)
	}
	for k, v := range s.Extra {
		if k == "" {
			return fmt.Errorf("%w: empty extra field name", ErrBadSlot)
		}
		if err := checkText("extra field name", k, maxExtraLen); err != nil {
			return err
		}
		if err := checkText("extra field "+quoteShort(k), v, maxExtraLen); err != nil {
			return err
		}
	}
	return nil
}

// quoteShort quotes s for an error message, cutting it short if it is long.
func quoteShort(s string) string {
	const max = 40
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
}

func checkLen(what string, b []byte, want int) error {
	if len(b) != want {
		return fmt.Errorf("%w: %s is %d bytes, want %d", ErrBadSlot, what, len(b), want)
	}
	return nil
}

// checkText rejects overlong strings, invalid UTF-8 and control characters
// (which could, for example, smuggle terminal escapes into a listing).
func checkText(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrBadSlot, what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrBadSlot, what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s contains control character %U", ErrBadSlot, what, r)
		}
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Marshal returns the slot's on-store JSON encoding. It fails, with an
// error wrapping ErrBadSlot, on a slot ParseSlot would reject.
func (s *Slot) Marshal() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSlot, err)
	}
	return b, nil
}

// ParseSlot decodes a slot written by Marshal. It is strict, because the
// store may be hostile: the input must be a single JSON object with no
// trailing data, no unknown, misspelt (field names are case-sensitive) or
// duplicated fields, a known version and kind, every required field
// present with its exact length, and Argon2 parameters within the caps.
// Every error wraps ErrBadSlot.
func ParseSlot(data []byte) (*Slot, error) {
	if len(data) > maxSlotSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d allowed", ErrBadSlot, len(data), maxSlotSize)
	}
	if err := checkJSONShape(data); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %w", ErrBadSlot, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Slot
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSlot, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadSlot)
	}
	if len(s.Extra) == 0 {
		s.Extra = nil // "extra": {} and no "extra" mean the same
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Field names, matched exactly, of the slot object and its argon2id object.
var (
	slotFields   = map[string]bool{"v": true, "id": true, "kind": true, "label": true, "created": true, "argon2id": true, "salt": true, "nonce": true, "wrapped": true, "extra": true}
	argon2Fields = map[string]bool{"t": true, "m": true, "p": true}
)

// checkJSONShape walks data's tokens and rejects what encoding/json would
// silently accept: anything but one object, duplicate keys at any depth,
// and top-level or argon2id field names that match only case-insensitively.
// It also rejects trailing data.
func checkJSONShape(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	if err := walkObject(dec, slotFields, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// walkObject consumes an object whose opening brace has been read. allowed,
// if not nil, lists the permitted keys (a top-level "argon2id" among them
// is a slot's, whose own keys are checked too); nested objects may have
// any keys, none twice. path names the object in errors.
func walkObject(dec *json.Decoder, allowed map[string]bool, path string) error {
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("unexpected %v in object", tok)
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %s", quoteShort(path+key))
		}
		seen[key] = true
		if allowed != nil && !allowed[key] {
			return fmt.Errorf("unknown field %s", quoteShort(path+key))
		}
		var sub map[string]bool
		if path == "" && key == "argon2id" && allowed != nil && allowed["argon2id"] {
			sub = argon2Fields
		}
		if err := walkValue(dec, sub, path+key+"."); err != nil {
			return err
		}
	}
	_, err := dec.Token() // the closing brace
	return err
}

// walkValue consumes one value; allowed applies if it is an object.
func walkValue(dec *json.Decoder, allowed map[string]bool, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		return walkObject(dec, allowed, path)
	case json.Delim('['):
		for dec.More() {
			if err := walkValue(dec, nil, path); err != nil {
				return err
			}
		}
		_, err := dec.Token()
		return err
	}
	return nil
}
