package threshold

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// realmFixture is realm 1 of a 2-of-3 configuration and the registration
// requests the client makes for all three realms.
type realmFixture struct {
	srv  *RealmServer
	st   *memStore
	reqs []*Register2Request
}

func newRealmFixture(tb testing.TB) *realmFixture {
	tb.Helper()
	e := newEnv(tb, 3, 2)
	reqs, err := e.client.prepareRegistration([]byte("pw"), randomSecret(tb), testGuesses)
	if err != nil {
		tb.Fatal(err)
	}
	return &realmFixture{srv: e.realms[0].srv, st: &memStore{}, reqs: reqs}
}

// TestRealmStateMachine walks one realm through its states: NotRegistered,
// Registered (guesses counted in recover2 only, reset only by the right tag
// in recover3, the last allowed guess still able to succeed), NoGuesses
// (reached from recover1, recover2 or a wrong tag with no guess left;
// left only by registering again), and back to NotRegistered by delete.
func TestRealmStateMachine(t *testing.T) {
	f := newRealmFixture(t)
	ctx := context.Background()
	reg := f.reqs[0]
	v := reg.Version
	other := v
	other[0] ^= 1
	rightTag := reg.UnlockKeyTag
	wrongTag := rightTag
	wrongTag[0] ^= 1
	blinded := randomElementBytes()

	recover1 := func() (Status, error) {
		r, err := f.srv.Recover1(ctx, f.st, &Recover1Request{})
		if err == nil && r.Status == StatusOK && r.Version != v {
			return 0, fmt.Errorf("version %x, want %x", r.Version, v)
		}
		return statusOf(r, err)
	}
	recover2 := func(v Version) func() (Status, error) {
		return func() (Status, error) {
			return statusOf(f.srv.Recover2(ctx, f.st, &Recover2Request{Version: v, BlindedAccessKey: blinded}))
		}
	}
	recover3 := func(v Version, tag [tagSize]byte, wantLeft int) func() (Status, error) {
		return func() (Status, error) {
			r, err := f.srv.Recover3(ctx, f.st, &Recover3Request{Version: v, UnlockKeyTag: tag})
			if err == nil && r.Status == StatusBadUnlockKeyTag && int(r.GuessesRemaining) != wantLeft {
				return 0, fmt.Errorf("%d guesses remaining, want %d", r.GuessesRemaining, wantLeft)
			}
			if err == nil && r.Status == StatusOK && (r.EncryptionKeyScalarShare != reg.EncryptionKeyScalarShare ||
				r.EncryptedSecret != reg.EncryptedSecret || r.EncryptedSecretCommitment != reg.EncryptedSecretCommitment) {
				return 0, errors.New("recover3 returned other values than registered")
			}
			return statusOf(r, err)
		}
	}
	register := func() (Status, error) {
		_, err := f.srv.Register2(ctx, f.st, reg)
		return StatusOK, err
	}
	del := func() (Status, error) {
		_, err := f.srv.Delete(ctx, f.st, &DeleteRequest{})
		return StatusOK, err
	}

	steps := []struct {
		name      string
		times     int
		do        func() (Status, error)
		want      Status
		state     State
		attempted int
	}{
		{"recover1, nothing registered", 1, recover1, StatusNotRegistered, StateNotRegistered, 0},
		{"recover2, nothing registered", 1, recover2(v), StatusNotRegistered, StateNotRegistered, 0},
		{"recover3, nothing registered", 1, recover3(v, rightTag, 0), StatusNotRegistered, StateNotRegistered, 0},
		{"register", 1, register, StatusOK, StateRegistered, 0},
		{"recover1", 1, recover1, StatusOK, StateRegistered, 0},
		{"recover2, other version: not counted", 1, recover2(other), StatusVersionMismatch, StateRegistered, 0},
		{"recover2 counts", 1, recover2(v), StatusOK, StateRegistered, 1},
		{"recover3, wrong tag: no reset, no count", 1, recover3(v, wrongTag, testGuesses-1), StatusBadUnlockKeyTag, StateRegistered, 1},
		{"recover3, other version", 1, recover3(other, rightTag, 0), StatusVersionMismatch, StateRegistered, 1},
		{"recover3, right tag resets", 1, recover3(v, rightTag, 0), StatusOK, StateRegistered, 0},
		{"recover3, right tag again", 1, recover3(v, rightTag, 0), StatusOK, StateRegistered, 0},
		{"recover2 up to the limit", testGuesses, recover2(v), StatusOK, StateRegistered, testGuesses},
		{"recover3 after the last guess, right tag", 1, recover3(v, rightTag, 0), StatusOK, StateRegistered, 0},
		{"recover2 up to the limit again", testGuesses, recover2(v), StatusOK, StateRegistered, testGuesses},
		{"recover3 after the last guess, wrong tag", 1, recover3(v, wrongTag, 0), StatusBadUnlockKeyTag, StateNoGuesses, 0},
		{"recover1, no guesses", 1, recover1, StatusNoGuesses, StateNoGuesses, 0},
		{"recover2, no guesses", 1, recover2(v), StatusNoGuesses, StateNoGuesses, 0},
		{"recover3, no guesses", 1, recover3(v, rightTag, 0), StatusNoGuesses, StateNoGuesses, 0},
		{"register again", 1, register, StatusOK, StateRegistered, 0},
		{"recover2 to the limit", testGuesses, recover2(v), StatusOK, StateRegistered, testGuesses},
		{"recover1 at the limit", 1, recover1, StatusNoGuesses, StateNoGuesses, 0},
		{"register a third time", 1, register, StatusOK, StateRegistered, 0},
		{"recover2 to the limit, third time", testGuesses, recover2(v), StatusOK, StateRegistered, testGuesses},
		{"recover2 beyond the limit", 1, recover2(v), StatusNoGuesses, StateNoGuesses, 0},
		{"register a fourth time", 1, register, StatusOK, StateRegistered, 0},
		{"delete", 1, del, StatusOK, StateNotRegistered, 0},
		{"recover1 after delete", 1, recover1, StatusNotRegistered, StateNotRegistered, 0},
		{"delete again", 1, del, StatusOK, StateNotRegistered, 0},
	}
	for _, s := range steps {
		for k := range s.times {
			got, err := s.do()
			if err != nil {
				t.Fatalf("%s (#%d): %v", s.name, k+1, err)
			}
			if got != s.want {
				t.Fatalf("%s (#%d): %v, want %v", s.name, k+1, got, s.want)
			}
		}
		rec := f.st.record(t)
		if rec.State() != s.state || int(rec.reg.attemptedGuesses) != s.attempted {
			t.Fatalf("%s: %v with %d attempted, want %v with %d", s.name, rec.State(), rec.reg.attemptedGuesses, s.state, s.attempted)
		}
		if s.state == StateRegistered && rec.GuessesLeft() != testGuesses-s.attempted {
			t.Fatalf("%s: GuessesLeft %d", s.name, rec.GuessesLeft())
		}
		if s.state == StateRegistered && (rec.AllowedGuesses() != testGuesses || rec.Version() != rec.reg.version) {
			t.Fatalf("%s: AllowedGuesses %d, Version %x", s.name, rec.AllowedGuesses(), rec.Version())
		}
		if s.state != StateRegistered && (rec.AllowedGuesses() != 0 || rec.Version() != (Version{})) {
			t.Fatalf("%s: a %v record has AllowedGuesses %d, Version %x", s.name, s.state, rec.AllowedGuesses(), rec.Version())
		}
		if s.state != StateRegistered && rec.reg != (registration{}) {
			t.Fatalf("%s: a %v record holds registration data", s.name, s.state)
		}
	}
}

type statused interface{ status() Status }

func (r *Recover1Response) status() Status { return r.Status }
func (r *Recover2Response) status() Status { return r.Status }
func (r *Recover3Response) status() Status { return r.Status }

func statusOf[T statused](r T, err error) (Status, error) {
	if err != nil {
		return 0, err
	}
	return r.status(), nil
}

// TestRealmRefusesBadRegistrations: a realm stores only registrations it
// can answer consistently.
func TestRealmRefusesBadRegistrations(t *testing.T) {
	f := newRealmFixture(t)
	for _, tc := range []struct {
		name   string
		mutate func(r *Register2Request)
	}{
		{"public key of another share", func(r *Register2Request) { r.OPRFSignedPublicKey = f.reqs[1].OPRFSignedPublicKey }},
		{"share and key of another realm, signed for it", func(r *Register2Request) { *r = *f.reqs[1] }},
		{"bad signature", func(r *Register2Request) { r.OPRFSignedPublicKey.Signature[0] ^= 1 }},
		{"signature for another version", func(r *Register2Request) { r.Version[0] ^= 1 }},
		{"more guesses than the realm allows", func(r *Register2Request) { r.AllowedGuesses = testGuesses + 1 }},
		{"no guesses", func(r *Register2Request) { r.AllowedGuesses = 0 }},
		{"zero key share", func(r *Register2Request) { r.OPRFKeyShare = [scalarSize]byte{} }},
		{"non-canonical encryption-key share", func(r *Register2Request) { r.EncryptionKeyScalarShare = [scalarSize]byte{31: 0xff} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := *f.reqs[0]
			tc.mutate(&r)
			if _, err := f.srv.Register2(context.Background(), f.st, &r); !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("Register2: %v, want ErrInvalidRequest", err)
			}
			if f.st.data != nil {
				t.Error("a refused registration was stored")
			}
		})
	}
	ctx := context.Background()
	if _, err := f.srv.Register2(ctx, f.st, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("nil Register2Request: %v", err)
	}
	if _, err := f.srv.Register2(ctx, f.st, f.reqs[0]); err != nil {
		t.Fatalf("the good registration: %v", err)
	}
}

// TestRecover2CountsFirst: the evaluation is never returned unless the
// record counting the guess was stored; a malformed blinded input is
// refused before anything is counted.
func TestRecover2CountsFirst(t *testing.T) {
	f := newRealmFixture(t)
	ctx := context.Background()
	if _, err := f.srv.Register2(ctx, f.st, f.reqs[0]); err != nil {
		t.Fatal(err)
	}
	req := &Recover2Request{Version: f.reqs[0].Version, BlindedAccessKey: randomElementBytes()}
	f.st.failWrites = true
	resp, err := f.srv.Recover2(ctx, f.st, req)
	if !errors.Is(err, errStoreDown) || resp != nil {
		t.Fatalf("Recover2 with a failing store: %v, %v", resp, err)
	}
	f.st.failWrites = false
	if n := f.st.record(t).reg.attemptedGuesses; n != 0 {
		t.Fatalf("%d attempted", n)
	}
	for _, bad := range [][elementSize]byte{{}, {0: 1}, {31: 0x80}} {
		if _, err := f.srv.Recover2(ctx, f.st, &Recover2Request{Version: req.Version, BlindedAccessKey: bad}); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("blinded access key %x: %v", bad, err)
		}
	}
	if n := f.st.record(t).reg.attemptedGuesses; n != 0 {
		t.Fatalf("%d attempted after malformed requests", n)
	}
	if resp, err := f.srv.Recover2(ctx, f.st, req); err != nil || resp.Status != StatusOK || resp.AttemptedGuesses != 1 {
		t.Fatalf("Recover2: %+v, %v", resp, err)
	}
}

// TestRealmConcurrentGuesses: concurrent recover2 requests are counted
// one by one; exactly the allowed number get an evaluation.
func TestRealmConcurrentGuesses(t *testing.T) {
	f := newRealmFixture(t)
	ctx := context.Background()
	if _, err := f.srv.Register2(ctx, f.st, f.reqs[0]); err != nil {
		t.Fatal(err)
	}
	req := &Recover2Request{Version: f.reqs[0].Version, BlindedAccessKey: randomElementBytes()}
	var mu sync.Mutex
	counts := map[Status]int{}
	var wg sync.WaitGroup
	for range 3 * testGuesses {
		wg.Go(func() {
			resp, err := f.srv.Recover2(ctx, f.st, req)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			counts[resp.Status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if counts[StatusOK] != testGuesses || counts[StatusNoGuesses] != 2*testGuesses {
		t.Errorf("answers %v, want %d OK and %d NoGuesses", counts, testGuesses, 2*testGuesses)
	}
}

func TestNewRealmServer(t *testing.T) {
	for _, tc := range []struct {
		id  RealmID
		max int
		ok  bool
	}{
		{testRealmID(1), 10, true},
		{testRealmID(1), MaxAllowedGuesses, true},
		{RealmID{}, 10, false},
		{testRealmID(1), 0, false},
		{testRealmID(1), MaxAllowedGuesses + 1, false},
	} {
		if _, err := NewRealmServer(tc.id, tc.max); (err == nil) != tc.ok {
			t.Errorf("NewRealmServer(%x, %d): %v", tc.id, tc.max, err)
		}
	}
}
