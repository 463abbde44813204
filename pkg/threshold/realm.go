package threshold

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
)

// RecordStore is one user's record at a realm, in the caller's storage (for
// the vault: sealed, in bbolt or etcd). The caller picks the user (for the
// vault: by the authenticated credential) and hands the RealmServer the
// store for that user.
type RecordStore interface {
	// Update reads the user's record, calls fn with it (nil when there is
	// none) and, if fn returns a non-nil record, stores that record in
	// place of the old one, atomically with respect to other Updates of the
	// same user. When Update returns nil, what fn returned is durable. If
	// fn returns an error, nothing is stored and Update returns the error.
	// fn may be called more than once (e.g. by an optimistic store that
	// retries on a conflict); it must not keep the record it is given. A
	// NotRegistered record may be stored as the absence of a record.
	Update(ctx context.Context, fn func(current *RealmRecord) (*RealmRecord, error)) error
}

// RealmServer is the realm side of the protocol: a state machine over each
// user's [RealmRecord]. It keeps no state of its own besides its id and
// guess limit (the records hold everything, the signing key was discarded by
// the registering client), so any number of replicas over the same storage
// can serve the same users. It is safe for concurrent use.
//
// Each method handles one request for the user whose record st holds. A
// request the realm refuses returns an error wrapping [ErrInvalidRequest];
// a storage error is returned as is. Every other outcome, including
// NotRegistered and NoGuesses, is a response.
type RealmServer struct {
	id         RealmID
	maxGuesses uint16
}

// NewRealmServer returns the realm with the given id, which accepts
// registrations allowing at most maxGuesses guesses (1..MaxAllowedGuesses).
func NewRealmServer(id RealmID, maxGuesses int) (*RealmServer, error) {
	if id == (RealmID{}) {
		return nil, errors.New("threshold: zero realm id")
	}
	if maxGuesses < 1 || maxGuesses > MaxAllowedGuesses {
		return nil, fmt.Errorf("threshold: guess limit %d out of range 1..%d", maxGuesses, MaxAllowedGuesses)
	}
	return &RealmServer{id: id, maxGuesses: uint16(maxGuesses)}, nil
}

// ID returns the realm's id.
func (s *RealmServer) ID() RealmID { return s.id }

func nilRequest(name string) error { return fmt.Errorf("%w: nil %s", ErrInvalidRequest, name) }

// Register1 answers phase 1 of registration: the realm is available. It
// does not touch st.
func (s *RealmServer) Register1(ctx context.Context, st RecordStore, req *Register1Request) (*Register1Response, error) {
	if req == nil {
		return nil, nilRequest("Register1Request")
	}
	return &Register1Response{}, nil
}

// Register2 stores a registration, replacing whatever the user had (a
// previous registration, or NoGuesses), with no guesses attempted. It first
// checks that the OPRF public key is the key share times the generator and
// that its signature verifies for this realm, so a realm never stores a
// registration it could not answer consistently.
func (s *RealmServer) Register2(ctx context.Context, st RecordStore, req *Register2Request) (*Register2Response, error) {
	if req == nil {
		return nil, nilRequest("Register2Request")
	}
	reg, err := s.checkRegistration(req)
	if err != nil {
		return nil, err
	}
	if err := st.Update(ctx, func(*RealmRecord) (*RealmRecord, error) {
		return &RealmRecord{state: StateRegistered, reg: reg}, nil
	}); err != nil {
		return nil, err
	}
	return &Register2Response{}, nil
}

func (s *RealmServer) checkRegistration(req *Register2Request) (registration, error) {
	bad := func(why string) (registration, error) {
		return registration{}, fmt.Errorf("%w: registration: %s", ErrInvalidRequest, why)
	}
	k, err := parseScalar(req.OPRFKeyShare[:], true)
	if err != nil {
		return bad("OPRF key share: " + err.Error())
	}
	defer wipe(k)
	if _, err := parseScalar(req.EncryptionKeyScalarShare[:], false); err != nil {
		return bad("encryption-key share: " + err.Error())
	}
	spk := &req.OPRFSignedPublicKey
	if elementBytes(g.NewElement().MulGen(k)) != spk.PublicKey {
		return bad("the OPRF public key is not the key share's")
	}
	if !ed25519.Verify(spk.VerifyingKey[:], signedPublicKeyMessage(req.Version, s.id, &spk.PublicKey), spk.Signature[:]) {
		return bad("the OPRF public key's signature does not verify for this realm")
	}
	if req.AllowedGuesses < 1 || req.AllowedGuesses > s.maxGuesses {
		return bad(fmt.Sprintf("%d guesses allowed; this realm allows 1..%d", req.AllowedGuesses, s.maxGuesses))
	}
	return registration{
		version:                   req.Version,
		oprfKeyShare:              req.OPRFKeyShare,
		signedPublicKey:           *spk,
		unlockKeyCommitment:       req.UnlockKeyCommitment,
		unlockKeyTag:              req.UnlockKeyTag,
		encryptionKeyScalarShare:  req.EncryptionKeyScalarShare,
		encryptedSecret:           req.EncryptedSecret,
		encryptedSecretCommitment: req.EncryptedSecretCommitment,
		allowedGuesses:            req.AllowedGuesses,
	}, nil
}

// noGuesses is the record a registration becomes when its guesses are used
// up: the registration itself is erased.
func noGuesses() *RealmRecord { return &RealmRecord{state: StateNoGuesses} }

// Recover1 answers phase 1 of recovery with the registration's version. A
// registration whose guesses are used up becomes NoGuesses here.
func (s *RealmServer) Recover1(ctx context.Context, st RecordStore, req *Recover1Request) (*Recover1Response, error) {
	if req == nil {
		return nil, nilRequest("Recover1Request")
	}
	var resp Recover1Response
	err := st.Update(ctx, func(cur *RealmRecord) (*RealmRecord, error) {
		resp = Recover1Response{}
		switch cur.State() {
		case StateNotRegistered:
			resp.Status = StatusNotRegistered
			return nil, nil
		case StateNoGuesses:
			resp.Status = StatusNoGuesses
			return nil, nil
		}
		if cur.reg.attemptedGuesses >= cur.reg.allowedGuesses {
			resp.Status = StatusNoGuesses
			return noGuesses(), nil
		}
		resp.Status, resp.Version = StatusOK, cur.reg.version
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// Recover2 answers phase 2 of recovery: it counts the guess, and only once
// the record that counts it is stored (Update returned) does it evaluate the
// blinded access key under its key share and prove the evaluation. A
// registration whose guesses are used up becomes NoGuesses; a request for
// another version is answered VersionMismatch without counting.
func (s *RealmServer) Recover2(ctx context.Context, st RecordStore, req *Recover2Request) (*Recover2Response, error) {
	if req == nil {
		return nil, nilRequest("Recover2Request")
	}
	blinded, err := parseElement(req.BlindedAccessKey[:])
	if err != nil {
		return nil, fmt.Errorf("%w: blinded access key: %v", ErrInvalidRequest, err)
	}
	var (
		status Status
		reg    registration
	)
	err = st.Update(ctx, func(cur *RealmRecord) (*RealmRecord, error) {
		status, reg = 0, registration{}
		switch cur.State() {
		case StateNotRegistered:
			status = StatusNotRegistered
			return nil, nil
		case StateNoGuesses:
			status = StatusNoGuesses
			return nil, nil
		}
		if cur.reg.attemptedGuesses >= cur.reg.allowedGuesses {
			status = StatusNoGuesses
			return noGuesses(), nil
		}
		if req.Version != cur.reg.version {
			status = StatusVersionMismatch
			return nil, nil
		}
		next := *cur
		next.reg.attemptedGuesses++
		status, reg = StatusOK, next.reg
		return &next, nil
	})
	defer clear(reg.oprfKeyShare[:])
	if err != nil {
		return nil, err
	}
	if status != StatusOK {
		return &Recover2Response{Status: status}, nil
	}
	// The guess is counted and stored; now the evaluation.
	k, err := parseScalar(reg.oprfKeyShare[:], true)
	if err != nil {
		return nil, fmt.Errorf("threshold: stored OPRF key share: %w", err)
	}
	defer wipe(k)
	pk, err := parseElement(reg.signedPublicKey.PublicKey[:])
	if err != nil {
		return nil, fmt.Errorf("threshold: stored OPRF public key: %w", err)
	}
	z, err := evaluate(k, blinded)
	if err != nil {
		return nil, err
	}
	r := g.RandomNonZeroScalar(rand.Reader)
	defer wipe(r)
	proof, err := prove(k, pk, blinded, z, r)
	if err != nil {
		return nil, err
	}
	return &Recover2Response{
		Status:              StatusOK,
		BlindedResult:       elementBytes(z),
		BlindedResultProof:  proof,
		OPRFSignedPublicKey: reg.signedPublicKey,
		UnlockKeyCommitment: reg.unlockKeyCommitment,
		AllowedGuesses:      reg.allowedGuesses,
		AttemptedGuesses:    reg.attemptedGuesses,
	}, nil
}

// Recover3 answers phase 3 of recovery. With the right unlock tag it resets
// the guess counter and returns the encryption-key share, the encrypted
// secret and its commitment; with a wrong one it answers BadUnlockKeyTag
// with the guesses left, and a registration with none left becomes
// NoGuesses. A wrong tag does not count as a guess (the guess was counted
// in phase 2; a tag cannot be guessed, it has 128 bits).
func (s *RealmServer) Recover3(ctx context.Context, st RecordStore, req *Recover3Request) (*Recover3Response, error) {
	if req == nil {
		return nil, nilRequest("Recover3Request")
	}
	var resp Recover3Response
	err := st.Update(ctx, func(cur *RealmRecord) (*RealmRecord, error) {
		resp = Recover3Response{}
		switch cur.State() {
		case StateNotRegistered:
			resp.Status = StatusNotRegistered
			return nil, nil
		case StateNoGuesses:
			resp.Status = StatusNoGuesses
			return nil, nil
		}
		if req.Version != cur.reg.version {
			resp.Status = StatusVersionMismatch
			return nil, nil
		}
		if subtle.ConstantTimeCompare(req.UnlockKeyTag[:], cur.reg.unlockKeyTag[:]) != 1 {
			left := cur.reg.allowedGuesses - cur.reg.attemptedGuesses
			resp.Status, resp.GuessesRemaining = StatusBadUnlockKeyTag, left
			if left == 0 {
				return noGuesses(), nil
			}
			return nil, nil
		}
		resp.Status = StatusOK
		resp.EncryptionKeyScalarShare = cur.reg.encryptionKeyScalarShare
		resp.EncryptedSecret = cur.reg.encryptedSecret
		resp.EncryptedSecretCommitment = cur.reg.encryptedSecretCommitment
		if cur.reg.attemptedGuesses == 0 {
			return nil, nil
		}
		next := *cur
		next.reg.attemptedGuesses = 0
		return &next, nil
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// Delete makes the user NotRegistered.
func (s *RealmServer) Delete(ctx context.Context, st RecordStore, req *DeleteRequest) (*DeleteResponse, error) {
	if req == nil {
		return nil, nilRequest("DeleteRequest")
	}
	if err := st.Update(ctx, func(*RealmRecord) (*RealmRecord, error) {
		return &RealmRecord{}, nil
	}); err != nil {
		return nil, err
	}
	return &DeleteResponse{}, nil
}
