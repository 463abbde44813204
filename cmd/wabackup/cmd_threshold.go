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
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/escrow"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

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

// vaultSetFlags checks --vault and --vault-fingerprint and returns the
// URLs (trailing "/" removed) and the fingerprints (lowercase; nil if none
// were given, else one per URL).
func (a *app) vaultSetFlags() (urls, fps []string, err error) {
	if len(a.vaultURLs) == 0 {
		return nil, nil, errors.New("give --vault URL")
	}
	if len(a.vaultURLs) > escrow.MaxVaults {
		return nil, nil, fmt.Errorf("%d --vault given: a key can be spread over at most %d vaults", len(a.vaultURLs), escrow.MaxVaults)
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
		fp, err := escrow.ParseFingerprint(f)
		if err != nil {
			return nil, nil, err
		}
		fps = append(fps, fp)
	}
	return urls, fps, nil
}

// realmChoice is the threshold slot the --vault flags pick, with the
// addresses to use for its vaults.
type realmChoice struct {
	slot *keys.Slot
	set  *escrow.RealmSet
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
func (a *app) thresholdSlot(slots []*keys.Slot, repoID string, urls, fps []string) (*realmChoice, error) {
	type cand struct {
		rc    *realmChoice
		pos   []int // slot position of each URL given
		score int
	}
	var subset, override []cand
	var malformed error
	for _, s := range slots {
		if !escrow.IsThresholdSlot(s) || a.vaultName != "" && escrow.SlotName(s) != a.vaultName {
			continue
		}
		set, err := escrow.ParseRealmSet(s)
		if err == nil {
			err = set.CheckCredential(s.ID, repoID)
		}
		if err != nil {
			malformed = err
			continue
		}
		su := set.URLs()
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
func (a *app) chooseVaultSlot(ctx context.Context, repoID string, slots []*keys.Slot) (*keys.Slot, *realmChoice, error) {
	urls, fps, err := a.vaultSetFlags()
	if err != nil {
		return nil, nil, err
	}
	single, several := false, false
	for _, s := range slots {
		if s.Kind != keys.KindVault || a.vaultName != "" && escrow.SlotName(s) != a.vaultName {
			continue
		}
		if escrow.IsThresholdSlot(s) {
			several = true
			continue
		}
		single = true
		if len(urls) == 1 && strings.TrimRight(s.Extra[vaultExtraURL], "/") == urls[0] {
			s, err := a.vaultSlot(ctx, slots)
			return s, nil, err
		}
	}
	rc, err := a.thresholdSlot(slots, repoID, urls, fps)
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
		if set, err := escrow.ParseRealmSet(s); err == nil && escrow.IsThresholdSlot(s) {
			l = append(l, set.Describe())
		} else if !escrow.IsThresholdSlot(s) {
			l = append(l, s.Extra[vaultExtraURL])
		}
	}
	return nil, nil, &noVaultSlotError{fmt.Sprintf("the repository has no vault key slot for %s, so it does not open through those vaults (the key was never escrowed there, or was deleted with key vault-delete); its vault slots are for %s", strings.Join(urls, ", "), strings.Join(l, "; "))}
}

// realmTarget is a threshold slot's vaults, ready to be asked: the
// recovery flow of pkg/escrow, with the vaults' transports and the infos
// the last reach got from them.
type realmTarget struct {
	escrow.Target
	realms []*vaultclient.Realm // Target.Vaults, for Status
}

func (a *app) newRealmTarget(rc *realmChoice) (*realmTarget, error) {
	t := &realmTarget{Target: escrow.Target{Slot: rc.slot, Set: rc.set, URLs: rc.urls}}
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
		t.Vaults = append(t.Vaults, r)
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
		if r.Index < 1 || r.Index > len(t.URLs) || seen[r.Index] {
			continue
		}
		seen[r.Index] = true
		out = append(out, vaultProblem{r.Index, t.URLs[r.Index-1], r.Err})
	}
	slices.SortFunc(out, func(a, b vaultProblem) int { return a.index - b.index })
	return out
}

// reach asks every vault for its info and fails unless need of them
// answer with the pinned key and realm id. The infos are kept: the keys
// they show are the ones recovery binds.
func (t *realmTarget) reach(ctx context.Context, need int, what string) ([]*api.RealmInfo, []vaultProblem, error) {
	ins, errs := t.Reach(ctx)
	var ps []vaultProblem
	for i, err := range errs {
		if err != nil {
			ps = append(ps, vaultProblem{i + 1, t.URLs[i], err})
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

// recoverThreshold asks the password's secret back from the vaults (a
// threshold of them, reached by reach) through pkg/escrow, which
// authenticates the slot's realm set before any unlock tag leaves and the
// slot itself with the secret. It warns about the vaults it did without,
// and about a registration of the earlier form.
func (a *app) recoverThreshold(ctx context.Context, t *realmTarget, pw []byte) (keys.Key, threshold.Form, error) {
	var k keys.Key
	rec, err := t.Recover(ctx, pw)
	var qe *threshold.QuorumError
	var wp *threshold.WrongPasswordError
	switch {
	case errors.As(err, &wp):
		return k, 0, &thresholdWrongPasswordError{left: wp.GuessesLeft}
	case errors.Is(err, threshold.ErrNoGuesses):
		return k, 0, &vaultDestroyedError{fmt.Sprintf("the key escrowed in %s is destroyed: after too many wrong passwords fewer than %d of the vaults still hold it (%s); open the repository with the 64-digit key or another slot, and escrow it again",
			t.Set.Describe(), t.Set.Threshold, strings.TrimPrefix(err.Error(), "threshold: no guesses left: "))}
	case errors.Is(err, threshold.ErrNotRegistered):
		return k, 0, fmt.Errorf("%s hold no key for this repository under the name %q (it was deleted with key vault-delete, or the vaults lost it)", t.Set.Describe(), t.Set.Name)
	case errors.As(err, &qe):
		return k, 0, &vaultsError{answered: qe.Answered, needed: qe.Needed, total: qe.Total, problems: t.problems(qe.Problems)}
	case err != nil:
		return k, 0, err
	}
	for _, p := range t.problems(rec.Problems) {
		a.out.Warnf("%s — the key came back from the other vaults", p)
	}
	if rec.Form == threshold.Form1 {
		a.out.Warnf("the key escrowed in %s was registered by an earlier version of wabackup, which does not check the repository's vault slot before it sends the vaults their unlock tags (so whoever can write the repository could have collected them): run wabackup key rotate %s to register it again in the checked form", t.Set.Describe(), t.Set.Flags())
	}
	return rec.Key, rec.Form, nil
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
	if _, _, err := t.reach(ctx, t.Set.Threshold, ""); err != nil {
		return cred, err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return cred, err
	}
	k, form, err := a.recoverThreshold(ctx, t, pw)
	if err != nil {
		return cred, err
	}
	cred.VaultSecret = &k
	a.thresholdOpened = &thresholdOpening{target: t, password: pw, form: form}
	a.vaultUsed = "vaults " + strings.Join(t.URLs, ", ")
	return cred, nil
}

// thresholdOpening is how the repository was opened through a threshold
// slot: key rotate keeps that slot and, where its registration or its
// fields are of the earlier form, registers the same secret again.
type thresholdOpening struct {
	target   *realmTarget
	password []byte
	form     threshold.Form // of the registration the vaults hold
}

// renewThreshold makes the threshold slot the repository was opened with
// current before key rotate keeps it: a registration of form 1 is made
// again (form 2, the same secret and password, at every vault), and the
// extra fields the kept slot gets are returned (form 2). It returns nil
// when the slot was not opened through threshold vaults.
func (a *app) renewThreshold(ctx context.Context, slotID string, secret []byte) (map[string]string, error) {
	o := a.thresholdOpened
	if o == nil || o.target.Slot.ID != slotID {
		return nil, nil
	}
	t := o.target
	if o.form == threshold.Form1 {
		n := len(t.realms)
		ins, _, err := t.reach(ctx, n, "to register the key again in the checked form")
		if err != nil {
			return nil, fmt.Errorf("nothing was rotated: %w", err)
		}
		c, err := t.Client()
		if err != nil {
			return nil, err
		}
		guesses := threshold.MaxAllowedGuesses
		for _, in := range ins {
			guesses = min(guesses, in.MaxGuesses)
		}
		if err := c.Register(ctx, keys.NormalizePassword(o.password), secret, guesses); err != nil {
			var qe *threshold.QuorumError
			if errors.As(err, &qe) {
				err = &vaultsError{answered: qe.Answered, needed: n, total: n, all: true, what: "to register the key again", problems: t.problems(qe.Problems)}
			}
			return nil, fmt.Errorf("nothing was rotated: the key escrowed in %s could not be registered again in the checked form: %w", t.Set.Describe(), err)
		}
		o.form = threshold.Form2
		a.out.Printf("registered the key escrowed in %s again, in the checked form\n", t.Set.Describe())
	}
	return t.Set.Extra(), nil
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
	set := &escrow.RealmSet{Name: name, Threshold: thr, KDF: threshold.DefaultKDF, UserInfo: credID}
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
		set.Realms = append(set.Realms, escrow.Realm{URL: u})
	}
	t := &realmTarget{Target: escrow.Target{Set: set, URLs: urls}, realms: realms}
	for _, rl := range realms {
		t.Vaults = append(t.Vaults, rl)
	}
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
	c, err := t.Client()
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
	s, err := r.AddVaultSlot(ctx, sec, slotLabel(thr, n, urls), set.Extra())
	if err != nil {
		return nil, fmt.Errorf("the key was escrowed in the vaults but the repository's vault slot was not written: %w", err)
	}
	if regErr != nil {
		// A threshold stored it: the slot opens; the others lack their
		// share until the next registration.
		a.out.Warnf("only %d of the %d vaults stored their share (%s): the key can be recovered, but from those only; run wabackup key vault-passwd %s (the same password twice will do) when the others answer",
			qe.Answered, n, problemList(t.problems(qe.Problems)), set.Flags())
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
	for i, e := range t.Set.Realms {
		m := map[string]any{"url": t.URLs[i], "fingerprint": e.Fingerprint, "realm_id": hex.EncodeToString(e.ID[:]), "reachable": errs[i] == nil}
		head := fmt.Sprintf("vault %d of %d %s (fingerprint %s)", i+1, n, t.URLs[i], e.Fingerprint)
		if errs[i] != nil {
			m["error"] = oneLine(errs[i].Error())
			a.out.Printf("%s: not reachable: %s\n", head, vaultProblem{i + 1, t.URLs[i], errs[i]}.msg())
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
	a.out.JSON(map[string]any{"message_type": "vault_status", "name": t.Set.Name, "threshold": t.Set.Threshold, "vaults": vl})
	if holding < t.Set.Threshold {
		return fmt.Errorf("only %d of the %d vaults hold their share of the key; %d are needed to recover it", holding, n, t.Set.Threshold)
	}
	a.out.Printf("%d of the %d vaults hold their share; any %d give the key back\n", holding, n, t.Set.Threshold)
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
	sec, _, err := a.recoverThreshold(ctx, t, old)
	if err != nil {
		return err
	}
	defer clear(sec[:])
	c, err := t.Client()
	if err != nil {
		return err
	}
	pw, err := a.vaultPassword(true, newPwFile)
	if err != nil {
		return err
	}
	guesses := threshold.MaxAllowedGuesses
	for _, in := range ins {
		guesses = min(guesses, in.MaxGuesses)
	}
	err = c.Register(ctx, keys.NormalizePassword(pw), sec[:], guesses)
	var qe *threshold.QuorumError
	switch {
	case errors.As(err, &qe) && phaseOneFailed(qe):
		return fmt.Errorf("the password was not changed: %w", &vaultsError{answered: qe.Answered, needed: n, total: n, all: true, what: "to change the password", problems: t.problems(qe.Problems)})
	case errors.As(err, &qe) && qe.Answered >= t.Set.Threshold:
		a.out.Warnf("the new password is set at only %d of the %d vaults (%s): it opens the repository, from those only; run key vault-passwd again (the new password as the current one) when the others answer",
			qe.Answered, n, problemList(t.problems(qe.Problems)))
	case errors.As(err, &qe):
		still := "the old password still opens the repository"
		if n-qe.Answered < t.Set.Threshold {
			still = "neither password may open the repository now: run key vault-passwd again with the new password as the current one, or use the 64-digit key"
		}
		return fmt.Errorf("the new password reached only %d of the %d vaults (%s); %s", qe.Answered, n, problemList(t.problems(qe.Problems)), still)
	case err != nil:
		return err
	}
	a.out.JSON(map[string]any{"message_type": "vault_password_changed", "vaults": t.URLs})
	a.out.Printf("vault password changed at %s\n", strings.Join(t.URLs, ", "))
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
	doomed, others := []*keys.Slot{t.Slot}, 0
	for _, s := range vt.slots {
		switch {
		case s.ID == t.Slot.ID:
		case escrow.IsThresholdSlot(s):
			if set, err := escrow.ParseRealmSet(s); err == nil && set.Name == t.Set.Name && set.SameRealms(t.Set) {
				doomed = append(doomed, s)
			} else {
				others++
			}
		default:
			others++
		}
	}
	if others == 0 {
		return fmt.Errorf("refusing to delete the key escrowed in %s: its vault slot is the repository's only key slot, so nothing would open the repository any more; get a 64-digit key first with wabackup key recover %s", t.Set.Describe(), t.Set.Flags())
	}
	if _, _, err := t.reach(ctx, t.Set.Threshold, ""); err != nil {
		return err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return err
	}
	sec, _, err := a.recoverThreshold(ctx, t, pw)
	clear(sec[:])
	if err != nil {
		return err
	}
	c, err := t.Client()
	if err != nil {
		return err
	}
	err = c.Delete(ctx)
	var qe *threshold.QuorumError
	if errors.As(err, &qe) {
		if n-qe.Answered >= t.Set.Threshold {
			return fmt.Errorf("the key was deleted at only %d of the %d vaults (%s): the others can still give it back, so the repository's vault slot is kept; run key vault-delete again when they answer", qe.Answered, n, problemList(t.problems(qe.Problems)))
		}
		a.out.Warnf("%s did not answer the deletion and still hold a share, which alone gives nothing back (fewer than %d)", problemList(t.problems(qe.Problems)), t.Set.Threshold)
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
	a.out.JSON(map[string]any{"message_type": "vault_deleted", "vaults": t.URLs, "name": t.Set.Name, "removed": removed})
	a.out.Printf("deleted the key escrowed in %s and removed the repository's vault slot %s: the repository no longer opens through these vaults (the 64-digit key and its other slots still open it)\n", t.Set.Describe(), strings.Join(shortIDs(removed), ", "))
	return nil
}
