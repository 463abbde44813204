package threshold

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestRecoverAvailability: with 3 realms and threshold 2, recovery succeeds
// with every realm up and with any one down (that one reported as
// unavailable), and fails with any two down, before any Argon2id run, with
// the error the CLI prints.
func TestRecoverAvailability(t *testing.T) {
	for _, tc := range []struct {
		name string
		down []int // 1-based
	}{
		{"all up", nil},
		{"realm 1 down", []int{1}},
		{"realm 2 down", []int{2}},
		{"realm 3 down", []int{3}},
		{"realms 1 and 2 down", []int{1, 2}},
		{"realms 1 and 3 down", []int{1, 3}},
		{"realms 2 and 3 down", []int{2, 3}},
		{"all down", []int{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 3, 2)
			secret := e.register(t, "correct horse")
			for _, i := range tc.down {
				e.realms[i-1].down.Store(true)
			}
			e.kdfRuns.Store(0)
			rec, err := e.recover("correct horse")
			if len(tc.down) <= 1 {
				if err != nil {
					t.Fatalf("recover: %v", err)
				}
				if string(rec.Secret) != string(secret) {
					t.Fatal("wrong secret")
				}
				for _, i := range tc.down {
					if ps := problemsAt(rec.Problems, i); len(ps) != 1 || !errors.Is(ps[0], errDown) {
						t.Errorf("problems at realm %d: %v", i, ps)
					}
				}
				if len(rec.Problems) != len(tc.down) {
					t.Errorf("problems: %v", rec.Problems)
				}
				if n := e.kdfRuns.Load(); n != 1 {
					t.Errorf("%d Argon2id runs, want 1", n)
				}
				return
			}
			var qe *QuorumError
			if !errors.As(err, &qe) {
				t.Fatalf("recover with %d down: %v, want a QuorumError", len(tc.down), err)
			}
			up := 3 - len(tc.down)
			want := fmt.Sprintf("threshold: recover: only %d of the 3 realms answered; 2 are needed", up)
			if err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			if qe.Answered != up || qe.Needed != 2 || qe.Total != 3 || len(qe.Problems) != len(tc.down) {
				t.Errorf("QuorumError %+v", qe)
			}
			if n := e.kdfRuns.Load(); n != 0 {
				t.Errorf("%d Argon2id runs, want 0", n)
			}
			// The realms that were up counted nothing: once the others
			// are back, nothing was lost.
			for _, i := range tc.down {
				e.realms[i-1].down.Store(false)
			}
			e.mustRecover(t, "correct horse", secret)
		})
	}
}

// TestWrongGuessesDestroy: ten wrong passwords each count at every realm
// and report the guesses left; then every realm is NoGuesses, and the right
// password no longer recovers anything.
func TestWrongGuessesDestroy(t *testing.T) {
	e := newEnv(t, 3, 2)
	e.register(t, "correct horse")
	for k := 1; k <= testGuesses; k++ {
		_, err := e.recover(fmt.Sprintf("wrong %d", k))
		var we *WrongPasswordError
		if !errors.As(err, &we) || !errors.Is(err, ErrWrongPassword) {
			t.Fatalf("wrong guess %d: %v", k, err)
		}
		if we.GuessesLeft != testGuesses-k {
			t.Errorf("wrong guess %d: %d guesses left, want %d", k, we.GuessesLeft, testGuesses-k)
		}
		if errors.Is(err, ErrMisbehaving) {
			t.Errorf("wrong guess %d reported as misbehaviour: %v", k, err)
		}
	}
	e.kdfRuns.Store(0)
	_, err := e.recover("correct horse")
	if !errors.Is(err, ErrNoGuesses) {
		t.Fatalf("right password after %d wrong: %v, want ErrNoGuesses", testGuesses, err)
	}
	if !strings.Contains(err.Error(), "destroyed") {
		t.Errorf("error does not say the secret is destroyed: %v", err)
	}
	if n := e.kdfRuns.Load(); n != 0 {
		t.Errorf("%d Argon2id runs for a destroyed secret, want 0", n)
	}
	for i, r := range e.realms {
		rec := r.st.record(t)
		if rec.State() != StateNoGuesses {
			t.Errorf("realm %d: state %v, want NoGuesses", i+1, rec.State())
		}
		if rec.reg != (registration{}) {
			t.Errorf("realm %d: NoGuesses record still holds the registration", i+1)
		}
	}
	// Re-registering starts over.
	secret := e.register(t, "new password")
	e.mustRecover(t, "new password", secret)
}

// TestRightPasswordResetsCounters: three wrong guesses, then the right
// password: every realm's counter is back at zero.
func TestRightPasswordResetsCounters(t *testing.T) {
	e := newEnv(t, 3, 2)
	secret := e.register(t, "correct horse")
	for k := 1; k <= 3; k++ {
		if _, err := e.recover("battery staple"); !errors.Is(err, ErrWrongPassword) {
			t.Fatal(err)
		}
	}
	for i, r := range e.realms {
		if got := r.st.record(t).GuessesLeft(); got != testGuesses-3 {
			t.Fatalf("realm %d: %d guesses left after 3 wrong, want %d", i+1, got, testGuesses-3)
		}
	}
	e.mustRecover(t, "correct horse", secret)
	for i, r := range e.realms {
		if got := r.st.record(t).GuessesLeft(); got != testGuesses {
			t.Errorf("realm %d: %d guesses left after the right password, want %d", i+1, got, testGuesses)
		}
	}
	_, err := e.recover("battery staple")
	var we *WrongPasswordError
	if !errors.As(err, &we) || we.GuessesLeft != testGuesses-1 {
		t.Errorf("wrong guess after the reset: %v", err)
	}
}

// TestGuessesLeftIsTheMinimum: a realm that was down during wrong guesses
// has more left than the others; the error reports the smallest count of
// the realms that evaluated.
func TestGuessesLeftIsTheMinimum(t *testing.T) {
	e := newEnv(t, 3, 2)
	e.register(t, "correct horse")
	e.realms[2].down.Store(true)
	for range 3 {
		if _, err := e.recover("wrong"); !errors.Is(err, ErrWrongPassword) {
			t.Fatal(err)
		}
	}
	e.realms[2].down.Store(false)
	_, err := e.recover("wrong")
	var we *WrongPasswordError
	if !errors.As(err, &we) {
		t.Fatal(err)
	}
	if we.GuessesLeft != testGuesses-4 {
		t.Errorf("%d guesses left, want min(%d, %d, %d) = %d", we.GuessesLeft,
			testGuesses-4, testGuesses-4, testGuesses-1, testGuesses-4)
	}
}

// TestArgon2idRuns: a recovery costs the client at most one Argon2id run:
// one when a threshold agrees on a version (right or wrong password), none
// otherwise. Registration costs one.
func TestArgon2idRuns(t *testing.T) {
	e := newEnv(t, 3, 2)
	check := func(what string, want int32, f func()) {
		t.Helper()
		e.kdfRuns.Store(0)
		f()
		if n := e.kdfRuns.Load(); n != want {
			t.Errorf("%s: %d Argon2id runs, want %d", what, n, want)
		}
	}
	check("recover, not registered", 0, func() {
		if _, err := e.recover("pw"); !errors.Is(err, ErrNotRegistered) {
			t.Errorf("recover before registering: %v", err)
		}
	})
	var secret []byte
	check("register", 1, func() { secret = e.register(t, "pw") })
	check("recover, right password", 1, func() { e.mustRecover(t, "pw", secret) })
	check("recover, wrong password", 1, func() { _, _ = e.recover("other") })
	e.realms[0].down.Store(true)
	check("recover, one realm down", 1, func() { e.mustRecover(t, "pw", secret) })
	e.realms[1].down.Store(true)
	check("recover, two realms down", 0, func() { _, _ = e.recover("pw") })
}

// TestRegistrationLifecycle: not registered, register, re-register with
// another password and secret (the old password no longer works), delete.
func TestRegistrationLifecycle(t *testing.T) {
	e := newEnv(t, 3, 2)
	if _, err := e.recover("pw"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("recover before registering: %v", err)
	}
	s1 := e.register(t, "first password")
	v1 := e.realms[0].st.record(t).reg.version
	e.mustRecover(t, "first password", s1)
	s2 := e.register(t, "second password")
	if v2 := e.realms[0].st.record(t).reg.version; v2 == v1 {
		t.Error("re-registration kept the version")
	}
	e.mustRecover(t, "second password", s2)
	if _, err := e.recover("first password"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("old password after re-registering: %v", err)
	}
	if err := e.client.Delete(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, r := range e.realms {
		if st := r.st.record(t).State(); st != StateNotRegistered {
			t.Errorf("realm %d after delete: %v", i+1, st)
		}
	}
	if _, err := e.recover("second password"); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("recover after delete: %v", err)
	}
	e.realms[1].down.Store(true)
	var qe *QuorumError
	if err := e.client.Delete(context.Background()); !errors.As(err, &qe) || qe.Op != "delete" || qe.Answered != 2 {
		t.Errorf("delete with a realm down: %v", err)
	}
}

// TestRegisterNeedsEveryRealm: a realm down in phase 1 stops registration
// before anything is written; a realm failing in phase 2 is reported, and
// the registration is recoverable from the others.
func TestRegisterNeedsEveryRealm(t *testing.T) {
	e := newEnv(t, 3, 2)
	old := e.register(t, "old")
	e.realms[2].down.Store(true)
	err := e.client.Register(context.Background(), []byte("new"), randomSecret(t), testGuesses)
	var qe *QuorumError
	if !errors.As(err, &qe) || qe.Op != "register" || qe.Answered != 2 || qe.Needed != 3 {
		t.Fatalf("register with a realm down: %v", err)
	}
	if want := "threshold: register: only 2 of the 3 realms answered; 3 are needed"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	e.realms[2].down.Store(false)
	e.mustRecover(t, "old", old) // nothing changed

	e.realms[2].st.failWrites = true
	s := randomSecret(t)
	err = e.client.Register(context.Background(), []byte("new"), s, testGuesses)
	if !errors.As(err, &qe) || qe.Answered != 2 || len(qe.Problems) != 1 || qe.Problems[0].Op != "register2" ||
		!errors.Is(qe.Problems[0], errStoreDown) {
		t.Fatalf("register with a failing store: %v", err)
	}
	e.realms[2].st.failWrites = false
	rec := e.mustRecover(t, "new", s)
	if ps := problemsAt(rec.Problems, 3); len(ps) != 1 || !errors.Is(ps[0], ErrOtherVersion) {
		t.Errorf("realm 3 with the old registration: %v", rec.Problems)
	}
}

// TestRealmGuessLimit: a registration allowing more guesses than a realm
// permits is refused by that realm.
func TestRealmGuessLimit(t *testing.T) {
	e := newEnv(t, 3, 2)
	err := e.client.Register(context.Background(), []byte("pw"), randomSecret(t), testGuesses+1)
	var qe *QuorumError
	if !errors.As(err, &qe) || qe.Answered != 0 || !errors.Is(qe.Problems[0], ErrInvalidRequest) {
		t.Fatalf("register with too many guesses: %v", err)
	}
}

// TestThresholds: other configurations work the same way: 1 of 1 (a single
// vault), 2 of 2, 3 of 5 with two down.
func TestThresholds(t *testing.T) {
	for _, tc := range []struct{ n, t, down int }{{1, 1, 0}, {2, 2, 0}, {3, 3, 0}, {5, 3, 2}, {4, 3, 1}} {
		t.Run(fmt.Sprintf("%d of %d, %d down", tc.t, tc.n, tc.down), func(t *testing.T) {
			e := newEnv(t, tc.n, tc.t)
			s := e.register(t, "pw")
			for i := range tc.down {
				e.realms[i].down.Store(true)
			}
			e.mustRecover(t, "pw", s)
			if _, err := e.recover("wrong"); !errors.Is(err, ErrWrongPassword) {
				t.Errorf("wrong password: %v", err)
			}
			e.realms[tc.down].down.Store(true)
			var qe *QuorumError
			if _, err := e.recover("pw"); !errors.As(err, &qe) || qe.Answered != tc.t-1 {
				t.Errorf("one more down: %v", err)
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	realms := func(n int) []RealmConfig {
		var rs []RealmConfig
		for i := 1; i <= n; i++ {
			rs = append(rs, RealmConfig{ID: testRealmID(i)})
		}
		return rs
	}
	dup := realms(3)
	dup[2].ID = dup[0].ID
	zero := realms(3)
	zero[1].ID = RealmID{}
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"2 of 3", Config{Realms: realms(3), Threshold: 2, KDF: DefaultKDF}, true},
		{"1 of 1", Config{Realms: realms(1), Threshold: 1, KDF: DefaultKDF}, true},
		{"3 of 5", Config{Realms: realms(5), Threshold: 3, KDF: DefaultKDF}, true},
		{"no realms", Config{Threshold: 1, KDF: DefaultKDF}, false},
		{"threshold 0", Config{Realms: realms(3), Threshold: 0, KDF: DefaultKDF}, false},
		{"threshold above n", Config{Realms: realms(3), Threshold: 4, KDF: DefaultKDF}, false},
		{"2 of 4 is not a majority", Config{Realms: realms(4), Threshold: 2, KDF: DefaultKDF}, false},
		{"1 of 2 is not a majority", Config{Realms: realms(2), Threshold: 1, KDF: DefaultKDF}, false},
		{"duplicate id", Config{Realms: dup, Threshold: 2, KDF: DefaultKDF}, false},
		{"zero id", Config{Realms: zero, Threshold: 2, KDF: DefaultKDF}, false},
		{"no KDF", Config{Realms: realms(3), Threshold: 2}, false},
		{"KDF memory above the cap", Config{Realms: realms(3), Threshold: 2,
			KDF: KDFParams{Time: 1, MemoryKiB: MaxKDFMemoryKiB + 1, Threads: 1}}, false},
		{"long user info", Config{Realms: realms(3), Threshold: 2, KDF: DefaultKDF,
			UserInfo: make([]byte, MaxUserInfo+1)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Check()
			if (err == nil) != tc.ok {
				t.Errorf("Check: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if _, err := NewClient(Config{Realms: realms(3), Threshold: 2, KDF: DefaultKDF}, make([]Realm, 2)); err == nil {
		t.Error("NewClient accepted 2 transports for 3 realms")
	}
	if _, err := NewClient(Config{Realms: realms(3), Threshold: 2, KDF: DefaultKDF}, make([]Realm, 3)); err == nil {
		t.Error("NewClient accepted nil transports")
	}
}

// TestRegisterArguments: the secret must be 32 bytes and at least one guess
// allowed.
func TestRegisterArguments(t *testing.T) {
	e := newEnv(t, 3, 2)
	ctx := context.Background()
	if err := e.client.Register(ctx, []byte("pw"), make([]byte, 31), 10); err == nil {
		t.Error("31-byte secret accepted")
	}
	if err := e.client.Register(ctx, []byte("pw"), make([]byte, 32), 0); err == nil {
		t.Error("zero guesses accepted")
	}
	for i, r := range e.realms {
		if st := r.st.record(t).State(); st != StateNotRegistered {
			t.Errorf("realm %d: %v after refused registrations", i+1, st)
		}
	}
}
