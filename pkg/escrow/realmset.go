// Package escrow owns what a repository's vault slots record about where
// their key is escrowed, and the threshold recovery that trusts none of it
// until the vaults' answers have authenticated it: the realm set a
// threshold vault slot names ([RealmSet], [ParseRealmSet], [RealmSet.Extra]),
// its form, and the recovery flow ([Recover]) that builds the protocol
// configuration from the keys the transport actually reached, lets
// pkg/threshold check the realm set before any unlock tag leaves, and
// checks the slot itself with the secret that comes back.
//
// It imports pkg/keys (slots), pkg/threshold (the protocol) and
// pkg/vault/api (the vault's info); it does no I/O of its own beyond the
// vaults' transports its caller gives it. docs/THRESHOLD.md §4a and
// docs/FORMAT.md ("Vault slots") specify what it reads and writes.
package escrow

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// MaxVaults is how many vaults one threshold slot can name: its extra
// fields (at most 40, pkg/keys) hold six fields and three per vault.
const MaxVaults = 9

// Keys of a vault slot's extra data, bound into the slot's associated data
// (keys.NewVaultSlot). Vault i (1-based: it holds share number i) of a
// threshold slot has vault_realm_<i>_url, vault_realm_<i>_fingerprint and
// vault_realm_<i>_id.
const (
	ExtraName      = "vault_name"           // the key's name in its vaults (--vault-name)
	ExtraThreshold = "vault_threshold"      // "2"
	ExtraRealms    = "vault_realms"         // how many vaults: "3"
	ExtraArgon2id  = "vault_argon2id"       // "t=3,m=65536,p=4"
	ExtraUserInfo  = "vault_user_info"      // the credential id, which pkg/threshold mixes into the salt
	ExtraForm      = "vault_threshold_form" // "2" for realm-bound registrations; absent for form 1
)

// RealmKey is the extra key of field what ("url", "fingerprint", "id") of
// vault i (1-based).
func RealmKey(i int, what string) string { return fmt.Sprintf("vault_realm_%d_%s", i, what) }

// IsThresholdSlot reports whether s is a vault slot of threshold escrow.
func IsThresholdSlot(s *keys.Slot) bool {
	return s.Kind == keys.KindVault && s.Extra[ExtraThreshold] != ""
}

// SlotName is the name a vault slot's key has in its vault(s).
func SlotName(s *keys.Slot) string {
	if n := s.Extra[ExtraName]; n != "" {
		return n
	}
	return api.DefaultName
}

// ParseFingerprint checks a vault fingerprint (64 hex digits, any case,
// surrounding space ignored) and returns it in lower case.
func ParseFingerprint(s string) (string, error) {
	fp := strings.ToLower(strings.TrimSpace(s))
	if len(fp) != 64 || strings.Trim(fp, "0123456789abcdef") != "" {
		return "", fmt.Errorf("--vault-fingerprint %q: want the 64 hex digits wabackup-vault prints at start", s)
	}
	return fp, nil
}

// Realm is one vault of a threshold slot.
type Realm struct {
	URL         string
	Fingerprint string // of the vault's key, as the slot records it
	ID          threshold.RealmID
}

// RealmSet is what a threshold vault slot records: everything recovery
// needs besides the password. Until a recovery has authenticated it, it
// only says whom to ask.
type RealmSet struct {
	Name      string // the key's name (--vault-name)
	Threshold int
	KDF       threshold.KDFParams
	UserInfo  []byte // the credential id
	Realms    []Realm
	// Form is the form of registration the slot says it was written for:
	// Form2 with ExtraForm "2", Form1 without. What counts at recovery is
	// the form the vaults' answers show; this is what `check` can report
	// without asking them.
	Form threshold.Form
}

// FormatKDF is the canonical text of Argon2id parameters: "t=3,m=65536,p=4".
func FormatKDF(p threshold.KDFParams) string {
	return fmt.Sprintf("t=%d,m=%d,p=%d", p.Time, p.MemoryKiB, p.Threads)
}

// ParseKDF reads FormatKDF's text, refusing any other spelling and
// parameters outside threshold's caps.
func ParseKDF(s string) (threshold.KDFParams, error) {
	var p threshold.KDFParams
	var t, m, par uint64
	f := strings.Split(s, ",")
	ok := len(f) == 3 && strings.HasPrefix(f[0], "t=") && strings.HasPrefix(f[1], "m=") && strings.HasPrefix(f[2], "p=")
	var e1, e2, e3 error
	if ok {
		t, e1 = strconv.ParseUint(f[0][2:], 10, 32)
		m, e2 = strconv.ParseUint(f[1][2:], 10, 32)
		par, e3 = strconv.ParseUint(f[2][2:], 10, 8)
	}
	if !ok || e1 != nil || e2 != nil || e3 != nil {
		return p, fmt.Errorf("%s %q: want t=PASSES,m=KIB,p=LANES", ExtraArgon2id, s)
	}
	p = threshold.KDFParams{Time: uint32(t), MemoryKiB: uint32(m), Threads: uint8(par)}
	if FormatKDF(p) != s {
		return p, fmt.Errorf("%s %q: not in canonical form", ExtraArgon2id, s)
	}
	return p, p.Check()
}

// Extra is the slot's extra data for s. It always writes form 2: the
// registrations this package's callers make are form 2.
func (s *RealmSet) Extra() map[string]string {
	m := map[string]string{
		ExtraName:      s.Name,
		ExtraThreshold: strconv.Itoa(s.Threshold),
		ExtraRealms:    strconv.Itoa(len(s.Realms)),
		ExtraArgon2id:  FormatKDF(s.KDF),
		ExtraUserInfo:  string(s.UserInfo),
		ExtraForm:      "2",
	}
	for i, r := range s.Realms {
		m[RealmKey(i+1, "url")] = r.URL
		m[RealmKey(i+1, "fingerprint")] = r.Fingerprint
		m[RealmKey(i+1, "id")] = hex.EncodeToString(r.ID[:])
	}
	return m
}

// MalformedSlotError: a threshold slot's extra data cannot be read.
type MalformedSlotError struct {
	SlotID string
	Detail string
}

func (e *MalformedSlotError) Error() string {
	return fmt.Sprintf("the repository's vault slot %.8s is malformed (%s)", e.SlotID, e.Detail)
}

// ParseRealmSet reads a threshold slot's extra data, refusing anything
// but the canonical spelling of every field. What it returns is not
// trusted: see [Recover].
func ParseRealmSet(s *keys.Slot) (*RealmSet, error) {
	bad := func(format string, args ...any) (*RealmSet, error) {
		return nil, &MalformedSlotError{s.ID, fmt.Sprintf(format, args...)}
	}
	ex := s.Extra
	n, err := strconv.Atoi(ex[ExtraRealms])
	if err != nil || n < 1 || n > MaxVaults || strconv.Itoa(n) != ex[ExtraRealms] {
		return bad("%s %q", ExtraRealms, ex[ExtraRealms])
	}
	t, err := strconv.Atoi(ex[ExtraThreshold])
	if err != nil || strconv.Itoa(t) != ex[ExtraThreshold] {
		return bad("%s %q", ExtraThreshold, ex[ExtraThreshold])
	}
	kdf, err := ParseKDF(ex[ExtraArgon2id])
	if err != nil {
		return bad("%v", err)
	}
	set := &RealmSet{Name: SlotName(s), Threshold: t, KDF: kdf, UserInfo: []byte(ex[ExtraUserInfo]), Form: threshold.Form1}
	switch f, ok := ex[ExtraForm]; {
	case !ok:
	case f == "2":
		set.Form = threshold.Form2
	default:
		return bad("%s %q", ExtraForm, f)
	}
	if len(set.UserInfo) == 0 {
		return bad("no %s", ExtraUserInfo)
	}
	for i := 1; i <= n; i++ {
		e := Realm{URL: ex[RealmKey(i, "url")], Fingerprint: ex[RealmKey(i, "fingerprint")]}
		if !strings.HasPrefix(e.URL, "https://") {
			return bad("vault %d: URL %q", i, e.URL)
		}
		if _, err := ParseFingerprint(e.Fingerprint); err != nil || strings.ToLower(e.Fingerprint) != e.Fingerprint {
			return bad("vault %d: fingerprint %q", i, e.Fingerprint)
		}
		id, err := hex.DecodeString(ex[RealmKey(i, "id")])
		if err != nil || len(id) != len(e.ID) || hex.EncodeToString(id) != ex[RealmKey(i, "id")] {
			return bad("vault %d: realm id %q", i, ex[RealmKey(i, "id")])
		}
		copy(e.ID[:], id)
		set.Realms = append(set.Realms, e)
	}
	for k := range ex {
		if !set.knows(k) {
			return bad("unknown field %q", k)
		}
	}
	cfg := set.Config(nil)
	if err := cfg.Check(); err != nil {
		return bad("%v", err)
	}
	return set, nil
}

// knows reports whether k is a field of s's extra data.
func (s *RealmSet) knows(k string) bool {
	switch k {
	case ExtraName, ExtraThreshold, ExtraRealms, ExtraArgon2id, ExtraUserInfo, ExtraForm:
		return true
	}
	for i := range s.Realms {
		for _, what := range []string{"url", "fingerprint", "id"} {
			if k == RealmKey(i+1, what) {
				return true
			}
		}
	}
	return false
}

// CheckCredential refuses s unless its user info is the credential of
// the repository repoID under s's name (api.CredentialID), as every slot
// this package's callers write has it. A slot whose user info names
// another repository's credential, or another name's, would spend the
// user's guess on someone else's registration; it is refused before any
// vault is asked.
func (s *RealmSet) CheckCredential(slotID, repoID string) error {
	if string(s.UserInfo) != string(api.CredentialID(repoID, s.Name)) {
		return &MalformedSlotError{slotID, fmt.Sprintf("%s %q is not this repository's credential for the name %q", ExtraUserInfo, s.UserInfo, s.Name)}
	}
	return nil
}

// Config is the pkg/threshold configuration s describes, with publicKeys[i]
// as realm i's public key (nil: none). The keys must be the ones the
// transports reached, never read from storage unchecked.
func (s *RealmSet) Config(publicKeys [][]byte) threshold.Config {
	cfg := threshold.Config{Threshold: s.Threshold, KDF: s.KDF, UserInfo: s.UserInfo}
	for i, r := range s.Realms {
		rc := threshold.RealmConfig{ID: r.ID}
		if i < len(publicKeys) {
			rc.PublicKey = publicKeys[i]
		}
		cfg.Realms = append(cfg.Realms, rc)
	}
	return cfg
}

// URLs are the vaults' addresses, in the set's order.
func (s *RealmSet) URLs() []string {
	var l []string
	for _, r := range s.Realms {
		l = append(l, r.URL)
	}
	return l
}

// Describe is "2 of 3 vaults (URL1, URL2, URL3)".
func (s *RealmSet) Describe() string {
	return fmt.Sprintf("%d of %d vaults (%s)", s.Threshold, len(s.Realms), strings.Join(s.URLs(), ", "))
}

// Flags is the --vault flags that name s's vaults, for messages.
func (s *RealmSet) Flags() string {
	var b strings.Builder
	for _, u := range s.URLs() {
		fmt.Fprintf(&b, "--vault %s ", u)
	}
	return strings.TrimSpace(b.String())
}

// SameRealms reports whether s and o name the same realms in the same
// order (whatever their addresses).
func (s *RealmSet) SameRealms(o *RealmSet) bool {
	return slices.EqualFunc(s.Realms, o.Realms, func(a, b Realm) bool { return a.ID == b.ID })
}
