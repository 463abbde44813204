package main

// Threshold escrow: the repository's vault secret spread over several
// independent vaults (pkg/threshold, docs/THRESHOLD.md), any threshold of
// which give it back. A single --vault keeps the OPAQUE path of
// cmd_vault.go.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// maxVaults is how many vaults one threshold slot can name: its extra
// fields (at most 32) hold five fields and three per vault.
const maxVaults = 9

// Keys of a threshold vault slot's extra data, bound into the slot's
// associated data like every vault slot's (keys.NewVaultSlot). Vault i
// (1-based: it holds share number i) has vault_realm_<i>_url,
// vault_realm_<i>_fingerprint and vault_realm_<i>_id.
const (
	vaultExtraThreshold = "vault_threshold" // "2"
	vaultExtraRealms    = "vault_realms"    // how many vaults: "3"
	vaultExtraArgon2id  = "vault_argon2id"  // "t=3,m=65536,p=4"
	vaultExtraUserInfo  = "vault_user_info" // the credential id, which pkg/threshold mixes into the salt
)

func realmKey(i int, what string) string { return fmt.Sprintf("vault_realm_%d_%s", i, what) }

// isThresholdSlot reports whether s is a vault slot of threshold escrow.
func isThresholdSlot(s *keys.Slot) bool {
	return s.Kind == keys.KindVault && s.Extra[vaultExtraThreshold] != ""
}

// deriveVaultFlags sets vaultURL and vaultFP, which the single-vault path
// uses, from the repeatable flags.
func (a *app) deriveVaultFlags() {
	a.vaultURL, a.vaultFP = "", ""
	if len(a.vaultURLs) == 1 {
		a.vaultURL = a.vaultURLs[0]
	}
	if len(a.vaultURLs) <= 1 && len(a.vaultFPs) == 1 {
		a.vaultFP = a.vaultFPs[0]
	}
}

// viaVault reports whether --vault was given.
func (a *app) viaVault() bool { return len(a.vaultURLs) > 0 }

// withoutVault runs fn as if no --vault had been given (to open the
// repository with its key or password before escrowing).
func (a *app) withoutVault(fn func() error) error {
	urls := a.vaultURLs
	a.vaultURLs = nil
	a.deriveVaultFlags()
	defer func() {
		a.vaultURLs = urls
		a.deriveVaultFlags()
	}()
	return fn()
}

// parseFingerprint checks a --vault-fingerprint.
func parseFingerprint(s string) (string, error) {
	fp := strings.ToLower(strings.TrimSpace(s))
	if len(fp) != 64 || strings.Trim(fp, "0123456789abcdef") != "" {
		return "", fmt.Errorf("--vault-fingerprint %q: want the 64 hex digits wabackup-vault prints at start", s)
	}
	return fp, nil
}

// vaultSetFlags checks --vault and --vault-fingerprint and returns the
// URLs (trailing "/" removed) and the fingerprints (lowercase; nil if none
// were given, else one per URL).
func (a *app) vaultSetFlags() (urls, fps []string, err error) {
	if len(a.vaultURLs) == 0 {
		return nil, nil, errors.New("give --vault URL")
	}
	if len(a.vaultURLs) > maxVaults {
		return nil, nil, fmt.Errorf("%d --vault given: a key can be spread over at most %d vaults", len(a.vaultURLs), maxVaults)
	}
	for _, u := range a.vaultURLs {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if !strings.HasPrefix(u, "https://") {
			return nil, nil, fmt.Errorf("vault URL %q: only https:// is allowed", u)
		}
		if slices.Contains(urls, u) {
			return nil, nil, fmt.Errorf("--vault %s is given twice", u)
		}
		urls = append(urls, u)
	}
	if len(a.vaultFPs) > 0 && len(a.vaultFPs) != len(urls) {
		return nil, nil, fmt.Errorf("%d --vault-fingerprint for %d --vault: give one per vault, in the same order", len(a.vaultFPs), len(urls))
	}
	for _, f := range a.vaultFPs {
		fp, err := parseFingerprint(f)
		if err != nil {
			return nil, nil, err
		}
		fps = append(fps, fp)
	}
	return urls, fps, nil
}

// realmEntry is one vault of a threshold slot.
type realmEntry struct {
	URL         string
	Fingerprint string
	ID          threshold.RealmID
}

// realmSet is what a threshold vault slot records: everything recovery
// needs besides the password.
type realmSet struct {
	Name      string // the key's name (--vault-name)
	Threshold int
	KDF       threshold.KDFParams
	UserInfo  []byte // the credential id
	Realms    []realmEntry
}

func formatKDF(p threshold.KDFParams) string {
	return fmt.Sprintf("t=%d,m=%d,p=%d", p.Time, p.MemoryKiB, p.Threads)
}

func parseKDF(s string) (threshold.KDFParams, error) {
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
		return p, fmt.Errorf("%s %q: want t=PASSES,m=KIB,p=LANES", vaultExtraArgon2id, s)
	}
	p = threshold.KDFParams{Time: uint32(t), MemoryKiB: uint32(m), Threads: uint8(par)}
	if formatKDF(p) != s {
		return p, fmt.Errorf("%s %q: not in canonical form", vaultExtraArgon2id, s)
	}
	return p, p.Check()
}

// extra is the slot's extra data for s.
func (s *realmSet) extra() map[string]string {
	m := map[string]string{
		vaultExtraName:      s.Name,
		vaultExtraThreshold: strconv.Itoa(s.Threshold),
		vaultExtraRealms:    strconv.Itoa(len(s.Realms)),
		vaultExtraArgon2id:  formatKDF(s.KDF),
		vaultExtraUserInfo:  string(s.UserInfo),
	}
	for i, r := range s.Realms {
		m[realmKey(i+1, "url")] = r.URL
		m[realmKey(i+1, "fingerprint")] = r.Fingerprint
		m[realmKey(i+1, "id")] = hex.EncodeToString(r.ID[:])
	}
	return m
}

// parseRealmSet reads a threshold slot's extra data. What it says is not
// trusted until the slot opens with the secret the vaults give back
// (verifySlot): until then it only says whom to ask.
func parseRealmSet(s *keys.Slot) (*realmSet, error) {
	bad := func(format string, args ...any) (*realmSet, error) {
		return nil, fmt.Errorf("the repository's vault slot %.8s is malformed (%s)", s.ID, fmt.Sprintf(format, args...))
	}
	ex := s.Extra
	n, err := strconv.Atoi(ex[vaultExtraRealms])
	if err != nil || n < 1 || n > maxVaults || strconv.Itoa(n) != ex[vaultExtraRealms] {
		return bad("%s %q", vaultExtraRealms, ex[vaultExtraRealms])
	}
	t, err := strconv.Atoi(ex[vaultExtraThreshold])
	if err != nil || strconv.Itoa(t) != ex[vaultExtraThreshold] {
		return bad("%s %q", vaultExtraThreshold, ex[vaultExtraThreshold])
	}
	kdf, err := parseKDF(ex[vaultExtraArgon2id])
	if err != nil {
		return bad("%v", err)
	}
	set := &realmSet{Name: slotVaultName(s), Threshold: t, KDF: kdf, UserInfo: []byte(ex[vaultExtraUserInfo])}
	if len(set.UserInfo) == 0 {
		return bad("no %s", vaultExtraUserInfo)
	}
	for i := 1; i <= n; i++ {
		e := realmEntry{URL: ex[realmKey(i, "url")], Fingerprint: ex[realmKey(i, "fingerprint")]}
		if !strings.HasPrefix(e.URL, "https://") {
			return bad("vault %d: URL %q", i, e.URL)
		}
		if _, err := parseFingerprint(e.Fingerprint); err != nil || strings.ToLower(e.Fingerprint) != e.Fingerprint {
			return bad("vault %d: fingerprint %q", i, e.Fingerprint)
		}
		id, err := hex.DecodeString(ex[realmKey(i, "id")])
		if err != nil || len(id) != len(e.ID) {
			return bad("vault %d: realm id %q", i, ex[realmKey(i, "id")])
		}
		copy(e.ID[:], id)
		set.Realms = append(set.Realms, e)
	}
	cfg := set.config()
	if err := cfg.Check(); err != nil {
		return bad("%v", err)
	}
	return set, nil
}

// config is the pkg/threshold configuration s describes.
func (s *realmSet) config() threshold.Config {
	cfg := threshold.Config{Threshold: s.Threshold, KDF: s.KDF, UserInfo: s.UserInfo}
	for _, r := range s.Realms {
		cfg.Realms = append(cfg.Realms, threshold.RealmConfig{ID: r.ID})
	}
	return cfg
}

func (s *realmSet) urls() []string {
	var l []string
	for _, r := range s.Realms {
		l = append(l, r.URL)
	}
	return l
}

// describe is "2 of 3 vaults (URL1, URL2, URL3)".
func (s *realmSet) describe() string {
	return fmt.Sprintf("%d of %d vaults (%s)", s.Threshold, len(s.Realms), strings.Join(s.urls(), ", "))
}

// flags is the --vault flags that name s's vaults, for messages.
func (s *realmSet) flags() string {
	var b strings.Builder
	for _, u := range s.urls() {
		fmt.Fprintf(&b, "--vault %s ", u)
	}
	return strings.TrimSpace(b.String())
}

// sameRealms reports whether a and b name the same realms in the same
// order (whatever their addresses).
func (s *realmSet) sameRealms(o *realmSet) bool {
	if len(s.Realms) != len(o.Realms) {
		return false
	}
	for i := range s.Realms {
		if s.Realms[i].ID != o.Realms[i].ID {
			return false
		}
	}
	return true
}

// realmChoice is the threshold slot the --vault flags pick, with the
// addresses to use for its vaults.
type realmChoice struct {
	slot *keys.Slot
	set  *realmSet
	urls []string // the address of each of the set's vaults, in its order
	fps  []string // --vault-fingerprint per vault of the set ("" where not given)
}

// thresholdSlot picks the threshold vault slot the --vault URLs name
// (docs/VAULT.md, "Several vaults"): the newest slot (under --vault-name)
// that lists every URL given, whichever were left out (a single --vault
// that is one of a slot's vaults picks the slot and so its whole set);
// failing that, with as many URLs as the slot has vaults, the slot whose
// addresses agree with the URLs at the most positions, the others then
// being new addresses of the vaults at those positions (each must still
// present the fingerprint and realm id the slot records). It returns nil
// when no slot fits.
func (a *app) thresholdSlot(slots []*keys.Slot, urls, fps []string) (*realmChoice, error) {
	type cand struct {
		rc    *realmChoice
		pos   []int // slot position of each URL given
		score int
	}
	var subset, override []cand
	var malformed error
	for _, s := range slots {
		if !isThresholdSlot(s) || a.vaultName != "" && slotVaultName(s) != a.vaultName {
			continue
		}
		set, err := parseRealmSet(s)
		if err != nil {
			malformed = err
			continue
		}
		su := set.urls()
		pos, all := make([]int, len(urls)), true
		for j, u := range urls {
			if pos[j] = slices.Index(su, u); pos[j] < 0 {
				all = false
			}
		}
		switch {
		case all:
			subset = append(subset, cand{rc: &realmChoice{slot: s, set: set, urls: su}, pos: pos})
		case len(urls) > 1 && len(urls) == len(su):
			c := cand{rc: &realmChoice{slot: s, set: set, urls: urls}, pos: make([]int, len(urls))}
			for j := range urls {
				c.pos[j] = j
				if su[j] == urls[j] {
					c.score++
				}
			}
			override = append(override, c)
		}
	}
	group := subset
	if len(group) == 0 {
		best := -1
		for _, c := range override {
			if c.score > best {
				best, group = c.score, nil
			}
			if c.score == best {
				group = append(group, c)
			}
		}
	}
	if len(group) == 0 {
		return nil, malformed
	}
	chosen, names := group[0], map[string]bool{}
	for _, c := range group {
		names[c.rc.set.Name] = true
		if c.rc.slot.Created.After(chosen.rc.slot.Created) {
			chosen = c
		}
	}
	if len(names) > 1 {
		return nil, fmt.Errorf("the repository has keys escrowed in these vaults under several names (%s): pick one with --vault-name", strings.Join(slices.Sorted(maps.Keys(names)), ", "))
	}
	rc := chosen.rc
	rc.fps = make([]string, len(rc.set.Realms))
	for j, fp := range fps {
		p := chosen.pos[j]
		if want := rc.set.Realms[p].Fingerprint; fp != want {
			return nil, fmt.Errorf("the repository's vault slot for %s records vault fingerprint %s, not %s (--vault-fingerprint): the slot belongs to another vault or was altered", urls[j], want, fp)
		}
		rc.fps[p] = fp
	}
	return rc, nil
}

// chooseVaultSlot picks the repository's vault slot for the --vault
// flags: with one --vault, a single-vault slot for that URL as always
// (vaultSlot), else a threshold slot that lists it, else vaultSlot's other
// rules; with several, a threshold slot (thresholdSlot). The choice is nil
// for a single-vault slot.
func (a *app) chooseVaultSlot(ctx context.Context, slots []*keys.Slot) (*keys.Slot, *realmChoice, error) {
	urls, fps, err := a.vaultSetFlags()
	if err != nil {
		return nil, nil, err
	}
	single, several := false, false
	for _, s := range slots {
		if s.Kind != keys.KindVault || a.vaultName != "" && slotVaultName(s) != a.vaultName {
			continue
		}
		if isThresholdSlot(s) {
			several = true
			continue
		}
		single = true
		if len(urls) == 1 && strings.TrimRight(s.Extra[vaultExtraURL], "/") == urls[0] {
			s, err := a.vaultSlot(ctx, slots)
			return s, nil, err
		}
	}
	rc, err := a.thresholdSlot(slots, urls, fps)
	if err != nil {
		return nil, nil, err
	}
	if rc != nil {
		return rc.slot, rc, nil
	}
	if len(urls) == 1 && (single || !several) {
		s, err := a.vaultSlot(ctx, slots)
		return s, nil, err
	}
	if !several && !single {
		return nil, nil, &noVaultSlotError{"the repository has no vault key slot, so it does not open through a vault (the key was never escrowed, or was deleted with key vault-delete): use the 64-digit key or a password, or escrow the key with wabackup key escrow --vault URL"}
	}
	var l []string
	for _, s := range slots {
		if s.Kind != keys.KindVault {
			continue
		}
		if set, err := parseRealmSet(s); err == nil && isThresholdSlot(s) {
			l = append(l, set.describe())
		} else if !isThresholdSlot(s) {
			l = append(l, s.Extra[vaultExtraURL])
		}
	}
	return nil, nil, &noVaultSlotError{fmt.Sprintf("the repository has no vault key slot for %s, so it does not open through those vaults (the key was never escrowed there, or was deleted with key vault-delete); its vault slots are for %s", strings.Join(urls, ", "), strings.Join(l, "; "))}
}

// realmTarget is a threshold slot's vaults, ready to be asked.
type realmTarget struct {
	slot   *keys.Slot
	set    *realmSet
	urls   []string
	realms []*vaultclient.Realm
	client *threshold.Client
}

func (a *app) newRealmTarget(rc *realmChoice) (*realmTarget, error) {
	t := &realmTarget{slot: rc.slot, set: rc.set, urls: rc.urls}
	var trs []threshold.Realm
	for i, e := range rc.set.Realms {
		src := "the repository's vault slot"
		if rc.fps != nil && rc.fps[i] != "" {
			src = "--vault-fingerprint"
		}
		r, err := vaultclient.NewRealm(rc.urls[i], rc.set.UserInfo, vaultclient.RealmOptions{
			Options: vaultclient.Options{CACertFile: a.vaultCACert, Pin: e.Fingerprint, PinSource: src},
			ID:      e.ID,
		})
		if err != nil {
			return nil, err
		}
		t.realms = append(t.realms, r)
		trs = append(trs, r)
	}
	var err error
	if t.client, err = threshold.NewClient(rc.set.config(), trs); err != nil {
		return nil, fmt.Errorf("the repository's vault slot %.8s: %w", rc.slot.ID, err)
	}
	return t, nil
}

// parallel runs fn for 0..n-1 concurrently and returns the errors.
func parallel(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errs
}

// infos asks every realm for its /v2/info (checking the pins).
func infos(ctx context.Context, realms []*vaultclient.Realm) ([]*api.RealmInfo, []error) {
	out := make([]*api.RealmInfo, len(realms))
	errs := parallel(len(realms), func(i int) (err error) {
		out[i], err = realms[i].Info(ctx)
		return err
	})
	return out, errs
}

// vaultProblem is what went wrong with one vault.
type vaultProblem struct {
	index int // 1-based
	url   string
	err   error
}

// vaultsError: too few vaults gave a usable answer.
type vaultsError struct {
	answered, needed, total int
	all                     bool   // every vault is needed
	what                    string // "to escrow the key", …
	problems                []vaultProblem
}

func (e *vaultsError) Error() string {
	var b strings.Builder
	verb := "are"
	if e.needed == 1 {
		verb = "is"
	}
	if e.all {
		fmt.Fprintf(&b, "only %d of the %d vaults answered; all %d are needed", e.answered, e.total, e.needed)
	} else {
		fmt.Fprintf(&b, "only %d of the %d vaults answered; %d %s needed", e.answered, e.total, e.needed, verb)
	}
	if e.what != "" {
		b.WriteString(" " + e.what)
	}
	if len(e.problems) > 0 {
		b.WriteString(" (" + problemList(e.problems) + ")")
	}
	return b.String()
}

func problemList(ps []vaultProblem) string {
	var l []string
	for _, p := range ps {
		l = append(l, p.String())
	}
	return strings.Join(l, "; ")
}

func (p vaultProblem) String() string { return fmt.Sprintf("vault %d %s: %s", p.index, p.url, p.msg()) }

// msg is the problem without the vault's URL.
func (p vaultProblem) msg() string {
	msg := oneLine(p.err.Error())
	msg = strings.TrimPrefix(msg, "vault "+p.url+": ")
	msg = strings.TrimPrefix(msg, "vault "+p.url+" ") // "vault URL presents …"
	return strings.TrimPrefix(msg, "threshold: ")
}

// problems turns pkg/threshold's per-realm errors into vault problems,
// one per vault (the first for each).
func (t *realmTarget) problems(rs []*threshold.RealmError) []vaultProblem {
	var out []vaultProblem
	seen := map[int]bool{}
	for _, r := range rs {
		if r.Index < 1 || r.Index > len(t.urls) || seen[r.Index] {
			continue
		}
		seen[r.Index] = true
		out = append(out, vaultProblem{r.Index, t.urls[r.Index-1], r.Err})
	}
	slices.SortFunc(out, func(a, b vaultProblem) int { return a.index - b.index })
	return out
}

// reach asks every vault for its info and fails unless need of them
// answer with the pinned key and realm id.
func (t *realmTarget) reach(ctx context.Context, need int, what string) ([]*api.RealmInfo, []vaultProblem, error) {
	ins, errs := infos(ctx, t.realms)
	var ps []vaultProblem
	for i, err := range errs {
		if err != nil {
			ps = append(ps, vaultProblem{i + 1, t.urls[i], err})
		}
	}
	if ok := len(t.realms) - len(ps); ok < need {
		return nil, ps, &vaultsError{answered: ok, needed: need, total: len(t.realms), all: need == len(t.realms) && what != "", what: what, problems: ps}
	}
	return ins, ps, nil
}

// thresholdWrongPasswordError: the vaults do not accept the password.
type thresholdWrongPasswordError struct{ left int }

func (e *thresholdWrongPasswordError) Error() string {
	if e.left <= 0 {
		return "wrong password — no attempts left: the key is destroyed"
	}
	return fmt.Sprintf("wrong password — %d attempts left before the key is destroyed", e.left)
}

func (e *thresholdWrongPasswordError) Unwrap() error { return keys.ErrWrongKey }

// vaultDestroyedError: too few vaults still hold a share.
type vaultDestroyedError struct{ msg string }

func (e *vaultDestroyedError) Error() string { return e.msg }
func (e *vaultDestroyedError) Unwrap() error { return keys.ErrWrongKey }

// untrustedSlotError: the secret the vaults gave back does not open the
// slot that named them.
type untrustedSlotError struct{ id, vaults string }

func (e *untrustedSlotError) Error() string {
	return fmt.Sprintf("the repository's vault slot %.8s does not open with the key %s gave back: what it records about its vaults (addresses, fingerprints, realm ids, threshold) was altered, so it is not trusted (or those vaults hold a newer escrow under the same name)", e.id, e.vaults)
}

// recover asks the password's secret back from the vaults (a threshold
// of them) and checks that it opens the slot whose extra fields named
// them: only then is what the slot says about its vaults trusted. It
// warns about the vaults it did without.
func (a *app) recoverThreshold(ctx context.Context, t *realmTarget, pw []byte) (keys.Key, error) {
	var k keys.Key
	rec, err := t.client.Recover(ctx, keys.NormalizePassword(pw))
	var qe *threshold.QuorumError
	var wp *threshold.WrongPasswordError
	switch {
	case errors.As(err, &wp):
		return k, &thresholdWrongPasswordError{left: wp.GuessesLeft}
	case errors.Is(err, threshold.ErrNoGuesses):
		return k, &vaultDestroyedError{fmt.Sprintf("the key escrowed in %s is destroyed: after too many wrong passwords fewer than %d of the vaults still hold it (%s); open the repository with the 64-digit key or another slot, and escrow it again",
			t.set.describe(), t.set.Threshold, strings.TrimPrefix(err.Error(), "threshold: no guesses left: "))}
	case errors.Is(err, threshold.ErrNotRegistered):
		return k, fmt.Errorf("%s hold no key for this repository under the name %q (it was deleted with key vault-delete, or the vaults lost it)", t.set.describe(), t.set.Name)
	case errors.As(err, &qe):
		return k, &vaultsError{answered: qe.Answered, needed: qe.Needed, total: qe.Total, problems: t.problems(qe.Problems)}
	case err != nil:
		return k, err
	}
	defer clear(rec.Secret)
	for _, p := range t.problems(rec.Problems) {
		a.out.Warnf("%s — the key came back from the other vaults", p)
	}
	if len(rec.Secret) != keys.KeySize {
		return k, fmt.Errorf("the vaults returned a %d-byte secret, want %d", len(rec.Secret), keys.KeySize)
	}
	copy(k[:], rec.Secret)
	if _, err := t.slot.Unwrap(k[:]); err != nil || !t.slot.ExtraAuthentic() {
		return keys.Key{}, &untrustedSlotError{t.slot.ID, t.set.describe()}
	}
	return k, nil
}

// thresholdCredentials opens the repository through a threshold slot's
// vaults: every vault is asked for its info in parallel first (a wrong
// pin, or too few vaults, fails before the password is asked), then the
// password, once.
func (a *app) thresholdCredentials(ctx context.Context, rc *realmChoice) (archive.Credentials, error) {
	var cred archive.Credentials
	t, err := a.newRealmTarget(rc)
	if err != nil {
		return cred, err
	}
	if _, _, err := t.reach(ctx, t.set.Threshold, ""); err != nil {
		return cred, err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return cred, err
	}
	k, err := a.recoverThreshold(ctx, t, pw)
	if err != nil {
		return cred, err
	}
	cred.VaultSecret = &k
	a.vaultUsed = "vaults " + strings.Join(t.urls, ", ")
	return cred, nil
}

// defaultThreshold is the smallest majority of n.
func defaultThreshold(n int) int { return n/2 + 1 }

// slotLabel is the label of a threshold slot (informational, at most 256
// bytes).
func slotLabel(t, n int, urls []string) string {
	l := fmt.Sprintf("vaults, %d of %d: %s", t, n, strings.Join(urls, " "))
	for len(l) > 256 {
		_, size := utf8.DecodeLastRuneInString(l[:253])
		l = l[:253-size+1]
		if utf8.ValidString(l) {
			l += "…"
			break
		}
	}
	return l
}

// escrowThreshold makes a fresh vault secret, registers it across the
// --vault vaults (all of them must take their share) and adds a slot
// recording them to the unlocked repository.
func (a *app) escrowThreshold(ctx context.Context, r *archive.Repository, pw []byte, urls, fps []string) (*keys.Slot, error) {
	n := len(urls)
	thr := a.vaultThreshold
	if thr == 0 {
		thr = defaultThreshold(n)
	}
	if thr < 1 || thr > n || 2*thr <= n {
		return nil, fmt.Errorf("--vault-threshold %d with %d vaults: it must be more than half of them and at most all (%d to %d), so that no two sets of vaults can each give back a different key", thr, n, defaultThreshold(n), n)
	}
	name := a.vaultName
	if name == "" {
		name = api.DefaultName
	}
	credID := api.CredentialID(r.Config().ID, name)
	set := &realmSet{Name: name, Threshold: thr, KDF: threshold.DefaultKDF, UserInfo: credID}
	var realms []*vaultclient.Realm
	for i, u := range urls {
		opt := vaultclient.RealmOptions{Options: vaultclient.Options{CACertFile: a.vaultCACert}}
		if fps != nil {
			opt.Pin, opt.PinSource = fps[i], "--vault-fingerprint"
		}
		rl, err := vaultclient.NewRealm(u, credID, opt)
		if err != nil {
			return nil, err
		}
		realms = append(realms, rl)
		set.Realms = append(set.Realms, realmEntry{URL: u})
	}
	t := &realmTarget{set: set, urls: urls, realms: realms}
	ins, _, err := t.reach(ctx, n, "to escrow the key")
	if err != nil {
		return nil, err
	}
	guesses := threshold.MaxAllowedGuesses
	for i, in := range ins {
		set.Realms[i].Fingerprint, set.Realms[i].ID = in.Fingerprint, realms[i].ID()
		for j := range i {
			if set.Realms[j].Fingerprint == in.Fingerprint || set.Realms[j].ID == set.Realms[i].ID {
				return nil, fmt.Errorf("--vault %s and --vault %s are the same vault (fingerprint %s): spreading the key over it twice protects nothing", urls[j], urls[i], in.Fingerprint)
			}
		}
		guesses = min(guesses, in.MaxGuesses)
	}
	// A key another escrow left at a threshold of these vaults under this
	// name would be replaced: refuse, as a single vault does.
	held := 0
	errs := parallel(n, func(i int) error {
		st, err := realms[i].Status(ctx)
		if err == nil && st.State == api.RealmRegistered {
			return errHeld
		}
		return err
	})
	var ps []vaultProblem
	for i, err := range errs {
		switch {
		case errors.Is(err, errHeld):
			held++
		case err != nil:
			ps = append(ps, vaultProblem{i + 1, urls[i], err})
		}
	}
	if len(ps) > 0 {
		return nil, &vaultsError{answered: n - len(ps), needed: n, total: n, all: true, what: "to escrow the key", problems: ps}
	}
	if held >= thr {
		return nil, fmt.Errorf("a key is already escrowed under the name %q in %d of these %d vaults: recover it, or change its password (key vault-passwd), or pick another --vault-name", name, held, n)
	}
	cfg := set.config()
	for i, in := range ins {
		cfg.Realms[i].PublicKey = in.PublicKey
	}
	var trs []threshold.Realm
	for _, rl := range realms {
		trs = append(trs, rl)
	}
	c, err := threshold.NewClient(cfg, trs)
	if err != nil {
		return nil, err
	}
	var sec keys.Key
	if _, err := rand.Read(sec[:]); err != nil {
		return nil, err
	}
	defer clear(sec[:])
	regErr := c.Register(ctx, keys.NormalizePassword(pw), sec[:], guesses)
	var qe *threshold.QuorumError
	if regErr != nil && !(errors.As(regErr, &qe) && qe.Answered >= thr && !phaseOneFailed(qe)) {
		if errors.As(regErr, &qe) {
			return nil, &vaultsError{answered: qe.Answered, needed: n, total: n, all: true, what: "to escrow the key", problems: t.problems(qe.Problems)}
		}
		return nil, regErr
	}
	s, err := r.AddVaultSlot(ctx, sec, slotLabel(thr, n, urls), set.extra())
	if err != nil {
		return nil, fmt.Errorf("the key was escrowed in the vaults but the repository's vault slot was not written: %w", err)
	}
	if regErr != nil {
		// A threshold stored it: the slot opens; the others lack their
		// share until the next registration.
		a.out.Warnf("only %d of the %d vaults stored their share (%s): the key can be recovered, but from those only; run wabackup key vault-passwd %s (the same password twice will do) when the others answer",
			qe.Answered, n, problemList(t.problems(qe.Problems)), set.flags())
	}
	var vl []map[string]any
	for i, e := range set.Realms {
		vl = append(vl, map[string]any{"url": e.URL, "fingerprint": e.Fingerprint, "realm_id": hex.EncodeToString(set.Realms[i].ID[:])})
	}
	a.out.JSON(map[string]any{"message_type": "vault_escrowed", "id": s.ID, "name": name, "guesses": guesses, "threshold": thr, "vaults": vl})
	a.out.Printf("escrowed the key across %d vaults, any %d of which give it back (%d wrong guesses allowed):\n", n, thr, guesses)
	for i, e := range set.Realms {
		a.out.Printf("  vault %d: %s (fingerprint %s)\n", i+1, e.URL, e.Fingerprint)
	}
	return s, nil
}

var errHeld = errors.New("registered")

// phaseOneFailed reports whether a registration failed before any realm
// stored anything.
func phaseOneFailed(qe *threshold.QuorumError) bool {
	for _, p := range qe.Problems {
		if p.Op == "register1" {
			return true
		}
	}
	return false
}

// thresholdStatus prints each vault of the slot: reachable, what it holds
// and the attempts left. It fails (after printing) if fewer than the
// threshold hold the key.
func (a *app) thresholdStatus(ctx context.Context, t *realmTarget) error {
	n := len(t.realms)
	sts := make([]*api.RealmStatus, n)
	errs := parallel(n, func(i int) (err error) {
		sts[i], err = t.realms[i].Status(ctx)
		return err
	})
	var vl []map[string]any
	holding := 0
	for i, e := range t.set.Realms {
		m := map[string]any{"url": t.urls[i], "fingerprint": e.Fingerprint, "realm_id": hex.EncodeToString(e.ID[:]), "reachable": errs[i] == nil}
		head := fmt.Sprintf("vault %d of %d %s (fingerprint %s)", i+1, n, t.urls[i], e.Fingerprint)
		if errs[i] != nil {
			m["error"] = oneLine(errs[i].Error())
			a.out.Printf("%s: not reachable: %s\n", head, vaultProblem{i + 1, t.urls[i], errs[i]}.msg())
			vl = append(vl, m)
			continue
		}
		st := sts[i]
		m["state"], m["attempts_left"], m["limit"] = st.State, st.GuessesLeft, st.Limit
		switch st.State {
		case api.RealmRegistered:
			holding++
			a.out.Printf("%s: holds its share, %d of %d attempts left\n", head, st.GuessesLeft, st.Limit)
		case api.RealmNoGuesses:
			a.out.Printf("%s: no attempts left, its share is destroyed\n", head)
		default:
			a.out.Printf("%s: holds no share for this repository\n", head)
		}
		vl = append(vl, m)
	}
	a.out.JSON(map[string]any{"message_type": "vault_status", "name": t.set.Name, "threshold": t.set.Threshold, "vaults": vl})
	if holding < t.set.Threshold {
		return fmt.Errorf("only %d of the %d vaults hold their share of the key; %d are needed to recover it", holding, n, t.set.Threshold)
	}
	a.out.Printf("%d of the %d vaults hold their share; any %d give the key back\n", holding, n, t.set.Threshold)
	return nil
}

// thresholdPasswd changes the password: recover with the current one
// (which checks the slot), then register the same secret across the same
// vaults under the new one. Every vault must answer.
func (a *app) thresholdPasswd(ctx context.Context, t *realmTarget, newPwFile string) error {
	n := len(t.realms)
	ins, _, err := t.reach(ctx, n, "to change the password")
	if err != nil {
		return err
	}
	old, err := a.vaultPassword(false, "")
	if err != nil {
		return err
	}
	sec, err := a.recoverThreshold(ctx, t, old)
	if err != nil {
		return err
	}
	defer clear(sec[:])
	pw, err := a.vaultPassword(true, newPwFile)
	if err != nil {
		return err
	}
	guesses := threshold.MaxAllowedGuesses
	for _, in := range ins {
		guesses = min(guesses, in.MaxGuesses)
	}
	err = t.client.Register(ctx, keys.NormalizePassword(pw), sec[:], guesses)
	var qe *threshold.QuorumError
	switch {
	case errors.As(err, &qe) && phaseOneFailed(qe):
		return fmt.Errorf("the password was not changed: %w", &vaultsError{answered: qe.Answered, needed: n, total: n, all: true, what: "to change the password", problems: t.problems(qe.Problems)})
	case errors.As(err, &qe) && qe.Answered >= t.set.Threshold:
		a.out.Warnf("the new password is set at only %d of the %d vaults (%s): it opens the repository, from those only; run key vault-passwd again (the new password as the current one) when the others answer",
			qe.Answered, n, problemList(t.problems(qe.Problems)))
	case errors.As(err, &qe):
		still := "the old password still opens the repository"
		if n-qe.Answered < t.set.Threshold {
			still = "neither password may open the repository now: run key vault-passwd again with the new password as the current one, or use the 64-digit key"
		}
		return fmt.Errorf("the new password reached only %d of the %d vaults (%s); %s", qe.Answered, n, problemList(t.problems(qe.Problems)), still)
	case err != nil:
		return err
	}
	a.out.JSON(map[string]any{"message_type": "vault_password_changed", "vaults": t.urls})
	a.out.Printf("vault password changed at %s\n", strings.Join(t.urls, ", "))
	return nil
}

// thresholdDelete deletes the key at every vault after a recovery with
// the password (so a wrong password deletes nothing), then removes the
// repository's slots for it. Vaults that do not answer the deletion keep
// their share; once fewer than the threshold hold one, the key is gone
// and the slots are removed all the same.
func (a *app) thresholdDelete(ctx context.Context, vt *vaultTarget) error {
	t := vt.rt
	n := len(t.realms)
	doomed, others := []*keys.Slot{t.slot}, 0
	for _, s := range vt.slots {
		switch {
		case s.ID == t.slot.ID:
		case isThresholdSlot(s):
			if set, err := parseRealmSet(s); err == nil && set.Name == t.set.Name && set.sameRealms(t.set) {
				doomed = append(doomed, s)
			} else {
				others++
			}
		default:
			others++
		}
	}
	if others == 0 {
		return fmt.Errorf("refusing to delete the key escrowed in %s: its vault slot is the repository's only key slot, so nothing would open the repository any more; get a 64-digit key first with wabackup key recover %s", t.set.describe(), t.set.flags())
	}
	if _, _, err := t.reach(ctx, t.set.Threshold, ""); err != nil {
		return err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return err
	}
	sec, err := a.recoverThreshold(ctx, t, pw)
	clear(sec[:])
	if err != nil {
		return err
	}
	err = t.client.Delete(ctx)
	var qe *threshold.QuorumError
	if errors.As(err, &qe) {
		if n-qe.Answered >= t.set.Threshold {
			return fmt.Errorf("the key was deleted at only %d of the %d vaults (%s): the others can still give it back, so the repository's vault slot is kept; run key vault-delete again when they answer", qe.Answered, n, problemList(t.problems(qe.Problems)))
		}
		a.out.Warnf("%s did not answer the deletion and still hold a share, which alone gives nothing back (fewer than %d)", problemList(t.problems(qe.Problems)), t.set.Threshold)
	} else if err != nil {
		return err
	}
	removed := []string{}
	remove := func(fn func() error) error { return fn() }
	if vt.repo.Unlocked() {
		remove = func(fn func() error) error { return a.withLock(ctx, vt.repo, true, "key vault-delete", fn) }
	}
	if err := remove(func() error {
		for _, s := range doomed {
			if _, err := vt.repo.RemoveSlot(ctx, s.ID); err != nil {
				return fmt.Errorf("the key was deleted from the vaults, but the repository's vault slot %s was not removed (remove it with wabackup key remove %s): %w", s.ID[:8], s.ID[:8], err)
			}
			removed = append(removed, s.ID)
		}
		return nil
	}); err != nil {
		return err
	}
	a.out.JSON(map[string]any{"message_type": "vault_deleted", "vaults": t.urls, "name": t.set.Name, "removed": removed})
	a.out.Printf("deleted the key escrowed in %s and removed the repository's vault slot %s: the repository no longer opens through these vaults (the 64-digit key and its other slots still open it)\n", t.set.describe(), strings.Join(shortIDs(removed), ", "))
	return nil
}
