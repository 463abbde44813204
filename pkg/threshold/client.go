package threshold

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/secretsharing"
)

// Realm is the client's view of one realm: the protocol's six requests, over
// whatever transport the caller chooses (for the vault: HTTPS to a
// wabackup-vault, which runs a [RealmServer]). The transport must
// authenticate the realm and keep requests confidential: a Register2Request
// carries that realm's key shares, and a Recover3Request its unlock tag,
// which resets that realm's guess counter for whoever presents it. An error
// means the realm could not be asked or did not answer; every answer of the
// protocol, NotRegistered and NoGuesses included, is a response. Client
// calls the realms concurrently, each from its own goroutine.
type Realm interface {
	Register1(context.Context, *Register1Request) (*Register1Response, error)
	Register2(context.Context, *Register2Request) (*Register2Response, error)
	Recover1(context.Context, *Recover1Request) (*Recover1Response, error)
	Recover2(context.Context, *Recover2Request) (*Recover2Response, error)
	Recover3(context.Context, *Recover3Request) (*Recover3Response, error)
	Delete(context.Context, *DeleteRequest) (*DeleteResponse, error)
}

// Client registers, recovers and deletes one user's secret across the
// realms of a [Config]. It keeps nothing between calls and is safe for
// concurrent use (concurrent registrations of one user race, as they would
// from two machines).
type Client struct {
	cfg    Config
	realms []Realm
	// stretch is Argon2id with cfg.KDF and cfg.UserInfo; tests count it.
	stretch func(password []byte, v Version) []byte
	// form is the form Register makes: Form2, or Form1 where a test makes
	// a registration of the earlier form.
	form Form
	// set is realmSetEncoding(&cfg).
	set []byte
}

// NewClient returns a client for cfg that reaches realm cfg.Realms[i]
// through realms[i].
func NewClient(cfg Config, realms []Realm) (*Client, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if len(realms) != len(cfg.Realms) {
		return nil, fmt.Errorf("threshold: %d realm transports for %d realms", len(realms), len(cfg.Realms))
	}
	for i, r := range realms {
		if r == nil {
			return nil, fmt.Errorf("threshold: realm %d has no transport", i+1)
		}
	}
	c := &Client{cfg: cfg, realms: slices.Clone(realms)}
	c.cfg.UserInfo = bytes.Clone(cfg.UserInfo)
	c.cfg.Realms = make([]RealmConfig, len(cfg.Realms))
	for i, r := range cfg.Realms {
		c.cfg.Realms[i] = RealmConfig{ID: r.ID, PublicKey: bytes.Clone(r.PublicKey)}
	}
	c.stretch = func(password []byte, v Version) []byte {
		return c.cfg.KDF.stretch(password, v, c.cfg.UserInfo)
	}
	c.form, c.set = Form2, realmSetEncoding(&c.cfg)
	return c, nil
}

// Recovery is the result of a successful recovery.
type Recovery struct {
	Secret []byte // the SecretSize bytes given to Register
	// Form is the registration's form. A Form1 registration's realm set
	// was not authenticated before the unlock tags went out: register
	// again (with this client) to make it Form2.
	Form Form
	// Problems lists the realms that were unavailable, held another
	// registration or misbehaved; the secret was recovered without them.
	Problems []*RealmError
}

var errNoResponse = errors.New("threshold: the realm transport returned neither a response nor an error")

func nonNil[T any](r *T, err error) (*T, error) {
	if err == nil && r == nil {
		return nil, errNoResponse
	}
	return r, err
}

type answer[T any] struct {
	index int // share number, 1-based
	resp  *T
	err   error
}

// fanout calls call for every realm in indices concurrently and waits for
// all of them.
func fanout[T any](ctx context.Context, indices []int, call func(context.Context, int) (*T, error)) []answer[T] {
	out := make([]answer[T], len(indices))
	var wg sync.WaitGroup
	for j, i := range indices {
		wg.Go(func() {
			r, err := nonNil(call(ctx, i))
			out[j] = answer[T]{i, r, err}
		})
	}
	wg.Wait()
	return out
}

func (c *Client) all() []int {
	idx := make([]int, len(c.realms))
	for i := range idx {
		idx[i] = i + 1
	}
	return idx
}

func (c *Client) realm(i int) Realm { return c.realms[i-1] }
func (c *Client) id(i int) RealmID  { return c.cfg.Realms[i-1].ID }

func (c *Client) problem(i int, op string, err error) *RealmError {
	return &RealmError{Index: i, ID: c.id(i), Op: op, Err: err}
}

func statusError(s Status) error {
	switch s {
	case StatusNotRegistered:
		return ErrNotRegistered
	case StatusNoGuesses:
		return ErrNoGuesses
	case StatusVersionMismatch:
		return ErrOtherVersion
	}
	return ErrBadAnswer
}

// --- registration ---

// Register stores secret (SecretSize bytes) under password at every realm,
// with allowedGuesses wrong guesses allowed (1..MaxAllowedGuesses, and no
// more than each realm permits), replacing any earlier registration. It
// needs every realm: if one does not answer phase 1, nothing is changed
// anywhere; if one fails in phase 2, it returns a [*QuorumError] (see there
// for what then holds). It runs Argon2id once.
//
// The password should be prepared as for any wabackup password (the CLI's
// job); this package uses its bytes as they are.
func (c *Client) Register(ctx context.Context, password, secret []byte, allowedGuesses int) error {
	if len(secret) != SecretSize {
		return fmt.Errorf("threshold: secret of %d bytes; must be %d", len(secret), SecretSize)
	}
	if allowedGuesses < 1 || allowedGuesses > MaxAllowedGuesses {
		return fmt.Errorf("threshold: %d guesses allowed; must be 1..%d", allowedGuesses, MaxAllowedGuesses)
	}
	n := len(c.realms)
	all := c.all()
	var problems []*RealmError
	ok := 0
	for _, a := range fanout(ctx, all, func(ctx context.Context, i int) (*Register1Response, error) {
		return c.realm(i).Register1(ctx, &Register1Request{})
	}) {
		if a.err != nil {
			problems = append(problems, c.problem(a.index, "register1", a.err))
			continue
		}
		ok++
	}
	if ok < n {
		return &QuorumError{Op: "register", Answered: ok, Needed: n, Total: n, Problems: problems}
	}

	reqs, err := c.prepareRegistration(password, secret, uint16(allowedGuesses))
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range reqs {
			*r = Register2Request{}
		}
	}()
	ok = 0
	for _, a := range fanout(ctx, all, func(ctx context.Context, i int) (*Register2Response, error) {
		return c.realm(i).Register2(ctx, reqs[i-1])
	}) {
		if a.err != nil {
			problems = append(problems, c.problem(a.index, "register2", a.err))
			continue
		}
		ok++
	}
	if ok < n {
		return &QuorumError{Op: "register", Answered: ok, Needed: n, Total: n, Problems: problems}
	}
	return nil
}

// prepareRegistration is the whitepaper's PrepareRegister2: one request per
// realm, in configuration order.
func (c *Client) prepareRegistration(password, secret []byte, allowedGuesses uint16) ([]*Register2Request, error) {
	n, t := len(c.realms), c.cfg.Threshold
	var v Version
	if _, err := rand.Read(v[:]); err != nil {
		return nil, err
	}
	stretched := c.stretch(password, v)
	defer clear(stretched)
	accessKey, encryptionKeySeed := stretched[:32], stretched[32:]

	// The T-OPRF: a random root key, shared; the unoblivious evaluation
	// gives the unlock-key commitment and the unlock key.
	root := g.RandomNonZeroScalar(rand.Reader)
	defer wipe(root)
	keyShares := shamir(root, t, n)
	defer func() {
		for _, s := range keyShares {
			wipe(s.Value)
		}
	}()
	rootKey, err := oprfKey(root)
	if err != nil {
		return nil, err
	}
	out, err := oprf.NewServer(oprfSuite, rootKey).FullEvaluate(accessKey)
	if err != nil {
		return nil, err
	}
	defer clear(out)
	var commitment [commitmentSize]byte
	copy(commitment[:], out[:commitmentSize])
	unlockKey := out[commitmentSize : commitmentSize+unlockKeySize]

	// The one-time signing key, discarded when this function returns.
	verifyingKey, signingKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	defer clear(signingKey)

	// The encryption-key scalar, shared; the secret encrypted once.
	encryptionKeyScalar := g.RandomScalar(rand.Reader)
	defer wipe(encryptionKeyScalar)
	encShares := shamir(encryptionKeyScalar, t, n)
	defer func() {
		for _, s := range encShares {
			wipe(s.Value)
		}
	}()
	ct, err := sealSecret(encryptionKeySeed, encryptionKeyScalar, v, secret)
	if err != nil {
		return nil, err
	}

	reqs := make([]*Register2Request, n)
	for j := range reqs {
		rc := c.cfg.Realms[j]
		r := &Register2Request{
			Version:                  v,
			OPRFKeyShare:             scalarBytes(keyShares[j].Value),
			UnlockKeyCommitment:      commitment,
			UnlockKeyTag:             unlockKeyTag(c.form, unlockKey, rc),
			EncryptionKeyScalarShare: scalarBytes(encShares[j].Value),
			EncryptedSecret:          ct,
			AllowedGuesses:           allowedGuesses,
		}
		if c.form == Form2 {
			// commitment = password commitment || realm binding (§4a).
			copy(r.UnlockKeyCommitment[:], passwordCommitment2(out))
			copy(r.UnlockKeyCommitment[commitmentSize/2:], realmBinding(unlockKey, c.set, j+1, rc))
		}
		spk := &r.OPRFSignedPublicKey
		spk.PublicKey = elementBytes(g.NewElement().MulGen(keyShares[j].Value))
		copy(spk.VerifyingKey[:], verifyingKey)
		copy(spk.Signature[:], ed25519.Sign(signingKey, signedPublicKeyMessage(v, rc.ID, &spk.PublicKey)))
		r.EncryptedSecretCommitment = secretCommitment(c.form, unlockKey, rc, &r.EncryptionKeyScalarShare, &ct)
		reqs[j] = r
	}
	return reqs, nil
}

// --- recovery ---

// Recover recovers the secret with password. It succeeds while any
// threshold of realms answer correctly, excluding the others, and runs
// Argon2id at most once. Besides the secret it reports the realms it did
// without.
//
// Errors: a [*WrongPasswordError] for a wrong password (the guess was
// counted at every realm that evaluated it); an error wrapping
// [ErrNoGuesses] when so few realms still hold a share that the secret is
// gone for good; one wrapping [ErrNotRegistered] when too few realms hold a
// registration; a [*QuorumError] when too few realms answered usefully.
func (c *Client) Recover(ctx context.Context, password []byte) (*Recovery, error) {
	n, t := len(c.realms), c.cfg.Threshold
	var problems []*RealmError

	// Phase 1: a threshold of realms agreeing on a version.
	byVersion := map[Version][]int{}
	notRegistered, exhausted := 0, 0
	for _, a := range fanout(ctx, c.all(), func(ctx context.Context, i int) (*Recover1Response, error) {
		return c.realm(i).Recover1(ctx, &Recover1Request{})
	}) {
		switch {
		case a.err != nil:
			problems = append(problems, c.problem(a.index, "recover1", a.err))
		case a.resp.Status == StatusOK:
			byVersion[a.resp.Version] = append(byVersion[a.resp.Version], a.index)
		default:
			switch a.resp.Status {
			case StatusNotRegistered:
				notRegistered++
			case StatusNoGuesses:
				exhausted++
			}
			problems = append(problems, c.problem(a.index, "recover1", statusError(a.resp.Status)))
		}
	}
	var version Version
	var agreeing []int
	for v, idx := range byVersion {
		if len(idx) > len(agreeing) || len(idx) == len(agreeing) && bytes.Compare(v[:], version[:]) < 0 {
			version, agreeing = v, idx
		}
	}
	for v, idx := range byVersion {
		if v != version {
			for _, i := range idx {
				problems = append(problems, c.problem(i, "recover1", ErrOtherVersion))
			}
		}
	}
	if len(agreeing) < t {
		if notRegistered+exhausted > n-t {
			if exhausted > 0 {
				return nil, fmt.Errorf("%w: %d of the %d realms have no guesses left and %d no registration, so fewer than the %d needed can give the secret back: it is destroyed",
					ErrNoGuesses, exhausted, n, notRegistered, t)
			}
			return nil, fmt.Errorf("%w: at %d of the %d realms", ErrNotRegistered, notRegistered, n)
		}
		return nil, &QuorumError{Op: "recover", Answered: len(agreeing), Needed: t, Total: n, Problems: problems}
	}
	slices.Sort(agreeing)

	// Phase 2: the T-OPRF, from one Argon2id run.
	stretched := c.stretch(password, version)
	defer clear(stretched)
	accessKey, encryptionKeySeed := stretched[:32], stretched[32:]
	oc := oprf.NewClient(oprfSuite)
	fin, evalReq, err := oc.Blind([][]byte{accessKey})
	if err != nil {
		return nil, err
	}
	blinded := evalReq.Elements[0]
	req2 := &Recover2Request{Version: version, BlindedAccessKey: elementBytes(blinded)}

	type evaluation struct {
		index int
		z     group.Element
		resp  *Recover2Response
	}
	groups := map[string][]evaluation{}
	var evaluated []int // realms that answered OK: they counted the guess
	answered := map[int]*Recover2Response{}
	for _, a := range fanout(ctx, agreeing, func(ctx context.Context, i int) (*Recover2Response, error) {
		return c.realm(i).Recover2(ctx, req2)
	}) {
		if a.err != nil {
			problems = append(problems, c.problem(a.index, "recover2", a.err))
			continue
		}
		if a.resp.Status != StatusOK {
			problems = append(problems, c.problem(a.index, "recover2", statusError(a.resp.Status)))
			continue
		}
		evaluated = append(evaluated, a.index)
		answered[a.index] = a.resp
		z, err := c.checkEvaluation(a.index, version, blinded, a.resp)
		if err != nil {
			problems = append(problems, c.problem(a.index, "recover2", err))
			continue
		}
		// The first half of the commitment is the password commitment of
		// either form (form 2's second half differs from realm to realm).
		key := string(a.resp.OPRFSignedPublicKey.VerifyingKey[:]) + string(a.resp.UnlockKeyCommitment[:commitmentSize/2])
		groups[key] = append(groups[key], evaluation{a.index, z, a.resp})
	}
	var best []evaluation
	var bestKey string
	for k, evs := range groups {
		if len(evs) > len(best) || len(evs) == len(best) && k < bestKey {
			best, bestKey = evs, k
		}
	}
	for k, evs := range groups {
		if k != bestKey {
			for _, e := range evs {
				problems = append(problems, c.problem(e.index, "recover2", ErrDisagreement))
			}
		}
	}
	if len(best) < t {
		return nil, &QuorumError{Op: "recover", Answered: len(best), Needed: t, Total: n, Problems: problems}
	}
	slices.SortFunc(best, func(a, b evaluation) int { return a.index - b.index })
	indices := make([]int, t)
	zs := make([]group.Element, t)
	for j := range t {
		indices[j], zs[j] = best[j].index, best[j].z
	}
	outs, err := oc.Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{combine(indices, zs)}})
	if err != nil {
		return nil, fmt.Errorf("threshold: finalizing the T-OPRF: %w", err)
	}
	out := outs[0]
	defer clear(out)
	form := commitmentForm(out, best[0].resp)
	if form == 0 {
		left := MaxAllowedGuesses
		for _, e := range best {
			left = min(left, int(e.resp.AllowedGuesses)-int(e.resp.AttemptedGuesses))
		}
		return nil, &WrongPasswordError{GuessesLeft: left, Problems: problems}
	}
	unlockKey := out[commitmentSize : commitmentSize+unlockKeySize]

	// Form 2: the realm set is authenticated before any unlock tag leaves.
	// Every realm whose evaluation was used must show the binding of its
	// position, id and public key (the one its transport reached) to the
	// realm set the password was registered with; one that does not stops
	// the recovery, and no realm is sent anything more.
	if form == Form2 {
		var changed []int
		for _, e := range best {
			if !c.bound(out, e.index, e.resp) {
				changed = append(changed, e.index)
			}
		}
		if len(changed) > 0 {
			return nil, &RealmSetError{Changed: changed, Checked: len(best), Problems: problems}
		}
	}
	for _, e := range best {
		if commitmentForm(out, e.resp) != form {
			problems = append(problems, c.problem(e.index, "recover2", ErrDisagreement))
		}
	}

	// Phase 3: unlock tags to every realm that counted the guess (so that
	// all of them reset their counters), shares back. Of form 2, only to
	// realms that showed their binding: a realm outside the threshold's
	// group gets its tag only if its own commitment authenticates it.
	send := evaluated
	if form == Form2 {
		send = nil
		for _, i := range evaluated {
			if c.bound(out, i, answered[i]) {
				send = append(send, i)
			}
		}
	}
	type share struct {
		index int
		value group.Scalar
	}
	byCiphertext := map[[encryptedSecretSize]byte][]share{}
	for _, a := range fanout(ctx, send, func(ctx context.Context, i int) (*Recover3Response, error) {
		return c.realm(i).Recover3(ctx, &Recover3Request{Version: version, UnlockKeyTag: unlockKeyTag(form, unlockKey, c.cfg.Realms[i-1])})
	}) {
		if a.err != nil {
			problems = append(problems, c.problem(a.index, "recover3", a.err))
			continue
		}
		if a.resp.Status != StatusOK {
			// BadUnlockKeyTag for the tag the right password gives is
			// misbehaviour (statusError maps it to ErrBadAnswer).
			problems = append(problems, c.problem(a.index, "recover3", statusError(a.resp.Status)))
			continue
		}
		want := secretCommitment(form, unlockKey, c.cfg.Realms[a.index-1], &a.resp.EncryptionKeyScalarShare, &a.resp.EncryptedSecret)
		s, err := parseScalar(a.resp.EncryptionKeyScalarShare[:], false)
		if err != nil || subtle.ConstantTimeCompare(want[:], a.resp.EncryptedSecretCommitment[:]) != 1 {
			problems = append(problems, c.problem(a.index, "recover3", ErrBadShare))
			continue
		}
		byCiphertext[a.resp.EncryptedSecret] = append(byCiphertext[a.resp.EncryptedSecret], share{a.index, s})
	}
	var ct [encryptedSecretSize]byte
	var shares []share
	for k, ss := range byCiphertext {
		if len(ss) > len(shares) || len(ss) == len(shares) && bytes.Compare(k[:], ct[:]) < 0 {
			ct, shares = k, ss
		}
	}
	defer func() {
		for _, ss := range byCiphertext {
			for _, s := range ss {
				wipe(s.value)
			}
		}
	}()
	for k, ss := range byCiphertext {
		if k != ct {
			for _, s := range ss {
				problems = append(problems, c.problem(s.index, "recover3", ErrBadShare))
			}
		}
	}
	if len(shares) < t {
		return nil, &QuorumError{Op: "recover", Answered: len(shares), Needed: t, Total: n, Problems: problems}
	}
	slices.SortFunc(shares, func(a, b share) int { return a.index - b.index })
	ssh := make([]secretsharing.Share, t)
	for j := range t {
		ssh[j] = secretsharing.Share{ID: shareID(shares[j].index), Value: shares[j].value}
	}
	encryptionKeyScalar, err := secretsharing.Recover(uint(t-1), ssh)
	if err != nil {
		return nil, fmt.Errorf("threshold: recovering the encryption-key scalar: %w", err)
	}
	defer wipe(encryptionKeyScalar)
	secret, err := openSecret(encryptionKeySeed, encryptionKeyScalar, version, &ct)
	if err != nil {
		// Every share matched a commitment only the registering client
		// could make, so this takes a threshold of realms colluding with
		// someone who knows the unlock key, or a bug.
		return nil, err
	}
	return &Recovery{Secret: secret, Form: form, Problems: problems}, nil
}

// commitmentForm tells from the OPRF output which form of registration
// resp's unlock-key commitment belongs to: Form1 if it is out[0:32],
// Form2 if its first half is the form-2 password commitment, 0 if neither
// (a wrong password). Neither can be made without the output, so the form
// a realm reports is the registration's, whatever stands between.
func commitmentForm(out []byte, resp *Recover2Response) Form {
	switch {
	case subtle.ConstantTimeCompare(out[:commitmentSize], resp.UnlockKeyCommitment[:]) == 1:
		return Form1
	case subtle.ConstantTimeCompare(passwordCommitment2(out), resp.UnlockKeyCommitment[:commitmentSize/2]) == 1:
		return Form2
	}
	return 0
}

// bound reports whether realm i's form-2 commitment in resp carries the
// binding of realm i as this client is configured (position, id, public
// key) to this client's realm set.
func (c *Client) bound(out []byte, i int, resp *Recover2Response) bool {
	if resp == nil || commitmentForm(out, resp) != Form2 {
		return false
	}
	want := realmBinding(out[commitmentSize:commitmentSize+unlockKeySize], c.set, i, c.cfg.Realms[i-1])
	return subtle.ConstantTimeCompare(want, resp.UnlockKeyCommitment[commitmentSize/2:]) == 1
}

// checkEvaluation checks one realm's phase-2 answer: its OPRF public key is
// signed for this realm and version by the verifying key it came with, and
// its evaluation of blinded is proven for that public key. It returns the
// evaluation.
func (c *Client) checkEvaluation(i int, v Version, blinded group.Element, resp *Recover2Response) (group.Element, error) {
	spk := &resp.OPRFSignedPublicKey
	pk, err := parseElement(spk.PublicKey[:])
	if err != nil {
		return nil, ErrBadSignature
	}
	if !ed25519.Verify(spk.VerifyingKey[:], signedPublicKeyMessage(v, c.id(i), &spk.PublicKey), spk.Signature[:]) {
		return nil, ErrBadSignature
	}
	z, err := parseElement(resp.BlindedResult[:])
	if err != nil || !verifyProof(pk, blinded, z, &resp.BlindedResultProof) {
		return nil, ErrBadProof
	}
	if resp.AllowedGuesses == 0 || resp.AttemptedGuesses > resp.AllowedGuesses {
		return nil, ErrBadAnswer
	}
	return z, nil
}

// --- deletion ---

// Delete makes the user NotRegistered at every realm. It needs every realm;
// otherwise it returns a [*QuorumError] (the realms that answered have
// forgotten the user).
func (c *Client) Delete(ctx context.Context) error {
	n := len(c.realms)
	var problems []*RealmError
	ok := 0
	for _, a := range fanout(ctx, c.all(), func(ctx context.Context, i int) (*DeleteResponse, error) {
		return c.realm(i).Delete(ctx, &DeleteRequest{})
	}) {
		if a.err != nil {
			problems = append(problems, c.problem(a.index, "delete", a.err))
			continue
		}
		ok++
	}
	if ok < n {
		return &QuorumError{Op: "delete", Answered: ok, Needed: n, Total: n, Problems: problems}
	}
	return nil
}
