// Package vault is the wabackup key vault: an HTTPS service that holds, for
// each repository, a secret the client encrypted under its OPAQUE
// export_key, and releases it only to a client that completes an OPAQUE
// login with the password (RFC 9807). It counts every login attempt
// durably before answering it, resets the count only on a valid KE3, and
// destroys the record when the guess limit is reached. Its own secrets and
// its records are sealed at rest by a Sealer (an HSM in production).
// docs/VAULT.md describes the API and the threat model.
package vault

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Config configures a Server.
type Config struct {
	Store  Store
	Sealer Sealer
	// MaxGuesses caps the guess limit a client may ask for (default 10);
	// DefaultGuesses is used when it asks for none (default MaxGuesses).
	MaxGuesses     int
	DefaultGuesses int
	// LoginTimeout is how long a login may stay between KE2 and KE3
	// (default 1 minute); Token lifetime is the same.
	LoginTimeout time.Duration
	// RatePerSecond and RateBurst limit requests per client address
	// (token bucket); RatePerSecond 0 disables the limit.
	RatePerSecond float64
	RateBurst     int
	// AfterCount, if set, is called after an attempt was counted durably
	// and before KE2 is sent (tests).
	AfterCount func()
	// Logf logs (default log.Printf).
	Logf func(format string, args ...any)
}

// Server is the vault. It is safe for concurrent use.
type Server struct {
	cfg     Config
	op      *opaque.Server
	pub     []byte
	idKey   []byte // HMAC key for storage keys, derived from the OPRF seed
	mu      sync.Mutex
	pending map[string]*pendingLogin
	tokens  map[string]*token
	fake    map[string]int // attempts against unknown credentials, to mimic a counter
	rate    *rateLimiter
	stop    chan struct{}
	once    sync.Once
}

type pendingLogin struct {
	key, credID []byte
	st          *opaque.ServerLoginState
	gen         []byte // nil: fake login (unknown credential or at the limit)
	expires     time.Time
}

type token struct {
	key, credID, gen []byte
	expires          time.Time
}

// record is what the vault keeps per credential, sealed.
type record struct {
	Record  []byte `json:"r"` // OPAQUE RegistrationRecord
	Blob    []byte `json:"b"` // the client's escrow ciphertext
	Limit   int    `json:"l"`
	Failed  int    `json:"f"` // attempts counted since the last valid KE3
	Gen     []byte `json:"g"` // changes with every (re-)registration
	LastTry int64  `json:"t"` // unix nanoseconds of the last counted attempt
}

type serverKeys struct {
	Suite    string `json:"suite"`
	OPRFSeed []byte `json:"oprf_seed"`
	Private  []byte `json:"private_key"`
	Public   []byte `json:"public_key"`
}

var (
	serverKeysKey = []byte("server-keys")
	serverKeysAAD = []byte("wabackup-vault server keys v1")
	recordAAD     = "wabackup-vault record v1/"
)

// New opens the vault: it unseals the server keys from the store, or
// generates and stores them (sealed) on first start.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Sealer == nil {
		return nil, errors.New("vault: a store and a sealer are required")
	}
	if cfg.MaxGuesses <= 0 {
		cfg.MaxGuesses = 10
	}
	if cfg.DefaultGuesses <= 0 || cfg.DefaultGuesses > cfg.MaxGuesses {
		cfg.DefaultGuesses = cfg.MaxGuesses
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	keys, err := loadKeys(cfg.Store, cfg.Sealer)
	if err != nil {
		return nil, err
	}
	op, err := api.Suite.NewServer(opaque.ServerKeys{OPRFSeed: keys.OPRFSeed, PrivateKey: keys.Private, PublicKey: keys.Public}, nil, api.Context)
	if err != nil {
		return nil, err
	}
	idKey, err := hkdf.Key(sha256.New, keys.OPRFSeed, nil, "wabackup-vault storage key v1", 32)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, op: op, pub: keys.Public, idKey: idKey,
		pending: map[string]*pendingLogin{}, tokens: map[string]*token{}, fake: map[string]int{},
		stop: make(chan struct{}),
	}
	if cfg.RatePerSecond > 0 {
		s.rate = newRateLimiter(cfg.RatePerSecond, cfg.RateBurst)
	}
	go s.sweep()
	return s, nil
}

func loadKeys(st Store, sealer Sealer) (*serverKeys, error) {
	for {
		val, ver, err := st.Get(serverKeysKey)
		if err != nil {
			return nil, err
		}
		if ver != 0 {
			pt, err := sealer.Open(val, serverKeysAAD)
			if err != nil {
				return nil, fmt.Errorf("vault: unsealing the server keys: %w", err)
			}
			var k serverKeys
			if err := json.Unmarshal(pt, &k); err != nil {
				return nil, err
			}
			if k.Suite != api.Suite.String() {
				return nil, fmt.Errorf("vault: the store's keys are for suite %s, not %s", k.Suite, api.Suite)
			}
			return &k, nil
		}
		gk, err := api.Suite.GenerateServerKeys()
		if err != nil {
			return nil, err
		}
		k := serverKeys{Suite: api.Suite.String(), OPRFSeed: gk.OPRFSeed, Private: gk.PrivateKey, Public: gk.PublicKey}
		pt, _ := json.Marshal(k)
		sealed, err := sealer.Seal(pt, serverKeysAAD)
		if err != nil {
			return nil, err
		}
		if _, err := st.CompareAndSwap(serverKeysKey, 0, sealed); err != nil && !errors.Is(err, ErrConflict) {
			return nil, err
		}
	}
}

// Close stops the background sweeper. It does not close the store or sealer.
func (s *Server) Close() { s.once.Do(func() { close(s.stop) }) }

// PublicKey returns the vault's AKE public key.
func (s *Server) PublicKey() []byte { return s.pub }

// Fingerprint returns the SHA-256 hex fingerprint clients pin.
func (s *Server) Fingerprint() string { return api.Fingerprint(s.pub) }

// storageKey hides credential identifiers from a reader of the store.
func (s *Server) storageKey(credID []byte) []byte {
	m := hmac.New(sha256.New, s.idKey)
	m.Write(credID)
	return m.Sum(nil)
}

func (s *Server) getRecord(key []byte) (*record, uint64, error) {
	val, ver, err := s.cfg.Store.Get(key)
	if err != nil || ver == 0 {
		return nil, 0, err
	}
	pt, err := s.cfg.Sealer.Open(val, append([]byte(recordAAD), key...))
	if err != nil {
		return nil, 0, err
	}
	var r record
	if err := json.Unmarshal(pt, &r); err != nil {
		return nil, 0, err
	}
	return &r, ver, nil
}

func (s *Server) putRecord(key []byte, old uint64, r *record) (uint64, error) {
	pt, _ := json.Marshal(r)
	sealed, err := s.cfg.Sealer.Seal(pt, append([]byte(recordAAD), key...))
	if err != nil {
		return 0, err
	}
	return s.cfg.Store.CompareAndSwap(key, old, sealed)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// sweep forgets expired logins and tokens, and destroys records whose last
// allowed attempt expired unanswered.
func (s *Server) sweep() {
	t := time.NewTicker(s.cfg.LoginTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var expired [][]byte
		s.mu.Lock()
		for id, p := range s.pending {
			if now.After(p.expires) {
				delete(s.pending, id)
				if p.gen != nil {
					expired = append(expired, p.key)
				}
			}
		}
		for id, tk := range s.tokens {
			if now.After(tk.expires) {
				delete(s.tokens, id)
			}
		}
		s.mu.Unlock()
		for _, key := range expired {
			s.destroyIfSpent(key, nil)
		}
	}
}

// destroyIfSpent deletes the record under key if it reached its limit
// (and, if gen is given, is still that registration). It returns the
// attempts left.
func (s *Server) destroyIfSpent(key, gen []byte) (left int, err error) {
	for {
		r, ver, err := s.getRecord(key)
		if err != nil {
			return 0, err
		}
		if r == nil || (gen != nil && !hmac.Equal(gen, r.Gen)) {
			return s.fakeLeft(key), nil
		}
		if r.Failed < r.Limit {
			return r.Limit - r.Failed, nil
		}
		err = s.cfg.Store.Delete(key, ver)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err == nil {
			s.cfg.Logf("vault: guess limit reached, record destroyed")
		}
		return 0, err
	}
}

func (s *Server) fakeLeft(key []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(0, s.cfg.DefaultGuesses-s.fake[string(key)])
}

func (s *Server) fakeCount(key []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fake) > 1<<16 {
		clear(s.fake)
	}
	if s.fake[string(key)] < s.cfg.DefaultGuesses {
		s.fake[string(key)]++
	}
}

// padKey is a store entry rewritten on logins for unknown credentials, so
// that they cost a seal and a durable write like a counted attempt and
// their timing does not tell them apart.
var padKey = []byte("timing-pad")

func (s *Server) padWrite() error {
	_, ver, err := s.cfg.Store.Get(padKey)
	if err != nil {
		return err
	}
	sealed, err := s.cfg.Sealer.Seal(randBytes(64), padKey)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Store.CompareAndSwap(padKey, ver, sealed); err != nil && !errors.Is(err, ErrConflict) {
		// A store that cannot write now must not answer fake logins
		// either, or a 503 would tell a real credential from none.
		return err
	}
	return nil
}

// countAttempt counts one attempt durably. It returns the record to answer
// from, or nil when the credential is unknown, destroyed or spent (the
// login then goes on with the fake record).
func (s *Server) countAttempt(key []byte) (*record, error) {
	for {
		r, ver, err := s.getRecord(key)
		if err != nil || r == nil {
			return nil, err
		}
		now := time.Now()
		if r.Failed >= r.Limit {
			// Spent. The last counted attempt may still be in flight; once
			// it has expired the record goes.
			if now.Sub(time.Unix(0, r.LastTry)) > s.cfg.LoginTimeout {
				if err := s.cfg.Store.Delete(key, ver); errors.Is(err, ErrConflict) {
					continue
				} else if err != nil {
					return nil, err
				}
			}
			return nil, nil
		}
		r.Failed++
		r.LastTry = now.UnixNano()
		if _, err := s.putRecord(key, ver, r); errors.Is(err, ErrConflict) {
			continue
		} else if errors.Is(err, ErrUnavailable) {
			// The write's outcome is unknown (a replicated store lost its
			// leader mid-commit). If a fresh read shows it, the attempt is
			// counted and may be answered; otherwise refuse, and the count
			// may yet land: the safe side, never an uncounted answer.
			if got, _, rerr := s.getRecord(key); rerr == nil && got != nil &&
				got.Failed == r.Failed && got.LastTry == r.LastTry && hmac.Equal(got.Gen, r.Gen) {
				return r, nil
			}
			return nil, err
		} else if err != nil {
			return nil, err
		}
		return r, nil
	}
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathInfo, s.info)
	mux.HandleFunc("POST "+api.PathRegisterStart, s.registerStart)
	mux.HandleFunc("POST "+api.PathRegisterFinish, s.registerFinish)
	mux.HandleFunc("POST "+api.PathLoginStart, s.loginStart)
	mux.HandleFunc("POST "+api.PathLoginFinish, s.loginFinish)
	mux.HandleFunc("POST "+api.PathStatus, s.status)
	mux.HandleFunc("POST "+api.PathChangeStart, s.registerStart)
	mux.HandleFunc("POST "+api.PathChangeFinish, s.registerFinish)
	mux.HandleFunc("POST "+api.PathDelete, s.delete)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.rate != nil && r.Method == http.MethodPost {
			host, _, err := net.SplitHostPort(r.RemoteAddr)
			if err != nil {
				host = r.RemoteAddr
			}
			if !s.rate.allow(host) {
				w.Header().Set("Retry-After", "1")
				fail(w, http.StatusTooManyRequests, api.CodeRateLimited, "too many requests from this address", nil)
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		mux.ServeHTTP(w, r)
	})
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, msg string, left *int) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg, AttemptsLeft: left})
}

// internal answers a failed request: 503 if the store cannot reach a
// quorum (fail closed, the client may retry), else 500.
func (s *Server) internal(w http.ResponseWriter, err error) {
	s.cfg.Logf("vault: %v", err)
	if errors.Is(err, ErrUnavailable) {
		w.Header().Set("Retry-After", "5")
		fail(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the vault's store has no quorum: no login is answered uncounted; retry later", nil)
		return
	}
	fail(w, http.StatusInternalServerError, api.CodeInternal, "internal error", nil)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "malformed request: "+err.Error(), nil)
		return false
	}
	return true
}

func (s *Server) info(w http.ResponseWriter, _ *http.Request) {
	reply(w, api.Info{Suite: api.Suite.String(), PublicKey: s.pub, Fingerprint: s.Fingerprint(), MaxGuesses: s.cfg.MaxGuesses, DefaultGuesses: s.cfg.DefaultGuesses})
}

// takeToken returns the live token t names (nil if none); consume removes it.
func (s *Server) lookToken(t []byte, consume bool) *token {
	s.mu.Lock()
	defer s.mu.Unlock()
	tk := s.tokens[string(t)]
	if tk == nil || time.Now().After(tk.expires) {
		delete(s.tokens, string(t))
		return nil
	}
	if consume {
		delete(s.tokens, string(t))
	}
	return tk
}

func (s *Server) registerStart(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterStart
	if !decode(w, r, &req) {
		return
	}
	credID := req.CredentialID
	if req.Token != nil {
		tk := s.lookToken(req.Token, false)
		if tk == nil {
			fail(w, http.StatusUnauthorized, api.CodeBadToken, "unknown or expired token: log in again", nil)
			return
		}
		credID = tk.credID
	} else {
		if len(credID) == 0 || len(credID) > 1024 {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, "credential_id must be 1 to 1024 bytes", nil)
			return
		}
		// An OPRF evaluation for an existing record would let anyone test
		// passwords against a single KE2 offline: refuse it.
		_, ver, err := s.cfg.Store.Get(s.storageKey(credID))
		if err != nil {
			s.internal(w, err)
			return
		}
		if ver != 0 {
			fail(w, http.StatusConflict, api.CodeExists, "this credential is registered: change its password after a login, or delete it", nil)
			return
		}
	}
	rr, err := api.Suite.UnmarshalRegistrationRequest(req.Request)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	resp, err := s.op.RegistrationResponse(rr, credID)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	b, _ := resp.MarshalBinary()
	reply(w, api.RegisterStartReply{Response: b})
}

func (s *Server) registerFinish(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterFinish
	if !decode(w, r, &req) {
		return
	}
	if _, err := api.Suite.UnmarshalRegistrationRecord(req.Record); err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	if len(req.Blob) == 0 || len(req.Blob) > 1024 {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "blob must be 1 to 1024 bytes", nil)
		return
	}
	limit := req.Guesses
	if limit <= 0 {
		limit = s.cfg.DefaultGuesses
	}
	limit = min(limit, s.cfg.MaxGuesses)
	rec := &record{Record: req.Record, Blob: req.Blob, Limit: limit, Gen: randBytes(16)}
	if req.Token != nil {
		tk := s.lookToken(req.Token, true)
		if tk == nil {
			fail(w, http.StatusUnauthorized, api.CodeBadToken, "unknown or expired token: log in again", nil)
			return
		}
		for {
			old, ver, err := s.getRecord(tk.key)
			if err != nil {
				s.internal(w, err)
				return
			}
			if old == nil || !hmac.Equal(old.Gen, tk.gen) {
				fail(w, http.StatusUnauthorized, api.CodeBadToken, "the record changed since the login", nil)
				return
			}
			if req.Guesses <= 0 {
				rec.Limit = old.Limit
			}
			if _, err := s.putRecord(tk.key, ver, rec); errors.Is(err, ErrConflict) {
				continue
			} else if err != nil {
				s.internal(w, err)
				return
			}
			break
		}
	} else {
		if len(req.CredentialID) == 0 || len(req.CredentialID) > 1024 {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, "credential_id must be 1 to 1024 bytes", nil)
			return
		}
		if _, err := s.putRecord(s.storageKey(req.CredentialID), 0, rec); errors.Is(err, ErrConflict) {
			fail(w, http.StatusConflict, api.CodeExists, "this credential is registered", nil)
			return
		} else if err != nil {
			s.internal(w, err)
			return
		}
	}
	reply(w, api.RegisterFinishReply{Guesses: rec.Limit})
}

func (s *Server) loginStart(w http.ResponseWriter, r *http.Request) {
	var req api.LoginStart
	if !decode(w, r, &req) {
		return
	}
	if len(req.CredentialID) == 0 || len(req.CredentialID) > 1024 {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "credential_id must be 1 to 1024 bytes", nil)
		return
	}
	ke1, err := api.Suite.UnmarshalKE1(req.KE1)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	key := s.storageKey(req.CredentialID)
	rec, err := s.countAttempt(key)
	if err != nil {
		s.internal(w, err)
		return
	}
	var oprec *opaque.RegistrationRecord
	var gen []byte
	if rec != nil {
		if oprec, err = api.Suite.UnmarshalRegistrationRecord(rec.Record); err != nil {
			s.internal(w, err)
			return
		}
		gen = rec.Gen
		if s.cfg.AfterCount != nil {
			s.cfg.AfterCount()
		}
	} else {
		if err := s.padWrite(); err != nil {
			s.internal(w, err)
			return
		}
		s.fakeCount(key)
	}
	ke2, st, err := s.op.KE2(ke1, req.CredentialID, nil, oprec)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	id := randBytes(16)
	s.mu.Lock()
	s.pending[string(id)] = &pendingLogin{key: key, credID: req.CredentialID, st: st, gen: gen, expires: time.Now().Add(s.cfg.LoginTimeout)}
	s.mu.Unlock()
	b, _ := ke2.MarshalBinary()
	reply(w, api.LoginStartReply{LoginID: id, KE2: b})
}

func (s *Server) loginFinish(w http.ResponseWriter, r *http.Request) {
	var req api.LoginFinish
	if !decode(w, r, &req) {
		return
	}
	s.mu.Lock()
	p := s.pending[string(req.LoginID)]
	delete(s.pending, string(req.LoginID))
	s.mu.Unlock()
	if p == nil || time.Now().After(p.expires) {
		// The attempt stays counted; the client must start a new login.
		fail(w, http.StatusUnauthorized, api.CodeLoginExpired, "unknown or expired login (the attempt was counted): start again", nil)
		return
	}
	var sessionKey []byte
	var err error
	if len(req.KE3) > 0 {
		var ke3 *opaque.KE3
		if ke3, err = api.Suite.UnmarshalKE3(req.KE3); err == nil {
			sessionKey, err = s.op.Finish(p.st, ke3)
		}
	} else {
		err = errors.New("abandoned")
	}
	if err != nil || p.gen == nil {
		left := 0
		if p.gen == nil {
			left = s.fakeLeft(p.key)
		} else if left, err = s.destroyIfSpent(p.key, p.gen); err != nil {
			s.internal(w, err)
			return
		}
		fail(w, http.StatusUnauthorized, api.CodeWrongPassword, "wrong password", &left)
		return
	}
	// A valid KE3: reset the counter and release the blob.
	var rec *record
	for {
		var ver uint64
		rec, ver, err = s.getRecord(p.key)
		if err != nil {
			s.internal(w, err)
			return
		}
		if rec == nil || !hmac.Equal(rec.Gen, p.gen) {
			left := s.fakeLeft(p.key)
			fail(w, http.StatusUnauthorized, api.CodeWrongPassword, "wrong password", &left)
			return
		}
		rec.Failed = 0
		if _, err = s.putRecord(p.key, ver, rec); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			s.internal(w, err)
			return
		}
		break
	}
	blob, err := api.Seal(sessionKey, api.ReleaseLabel, rec.Blob, req.LoginID)
	if err != nil {
		s.internal(w, err)
		return
	}
	tok := randBytes(32)
	s.mu.Lock()
	s.tokens[string(tok)] = &token{key: p.key, credID: p.credID, gen: p.gen, expires: time.Now().Add(s.cfg.LoginTimeout)}
	s.mu.Unlock()
	reply(w, api.LoginFinishReply{Blob: blob, Token: tok})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	var req api.Status
	if !decode(w, r, &req) {
		return
	}
	key := s.storageKey(req.CredentialID)
	rec, ver, err := s.getRecord(key)
	if err != nil {
		s.internal(w, err)
		return
	}
	if rec == nil {
		reply(w, api.StatusReply{AttemptsLeft: s.fakeLeft(key), Limit: s.cfg.DefaultGuesses})
		return
	}
	if rec.Failed >= rec.Limit && time.Since(time.Unix(0, rec.LastTry)) > s.cfg.LoginTimeout {
		_ = s.cfg.Store.Delete(key, ver)
	}
	reply(w, api.StatusReply{AttemptsLeft: max(0, rec.Limit-rec.Failed), Limit: rec.Limit})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	var req api.Delete
	if !decode(w, r, &req) {
		return
	}
	tk := s.lookToken(req.Token, true)
	if tk == nil {
		fail(w, http.StatusUnauthorized, api.CodeBadToken, "unknown or expired token: log in again", nil)
		return
	}
	for {
		rec, ver, err := s.getRecord(tk.key)
		if err != nil {
			s.internal(w, err)
			return
		}
		if rec == nil || !hmac.Equal(rec.Gen, tk.gen) {
			fail(w, http.StatusUnauthorized, api.CodeBadToken, "the record changed since the login", nil)
			return
		}
		if err := s.cfg.Store.Delete(tk.key, ver); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			s.internal(w, err)
			return
		}
		break
	}
	reply(w, struct{}{})
}

// rateLimiter is a token bucket per client address.
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if burst < 1 {
		burst = 1
	}
	return &rateLimiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

func (l *rateLimiter) allow(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) > 1<<16 {
			clear(l.buckets)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[addr] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
