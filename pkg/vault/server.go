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
	"mime"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Config configures a Server.
type Config struct {
	Store  Store
	Sealer Sealer
	// MaxGuesses is the guess limit of every record (default 10).
	// DefaultGuesses, if set lower, is used instead (older configurations
	// had both). Every record gets the same limit, and so does every
	// unknown credential, so the limit does not tell them apart.
	MaxGuesses     int
	DefaultGuesses int
	// LoginTimeout is how long a login may stay between KE2 and KE3
	// (default 1 minute); tokens and registrations in progress live as
	// long.
	LoginTimeout time.Duration
	// RatePerSecond and RateBurst limit requests per client address
	// (token bucket; IPv6 addresses by their /64); RatePerSecond 0
	// disables the limit.
	RatePerSecond float64
	RateBurst     int
	// AfterCount, if set, is called after an attempt on a real record was
	// counted durably and before KE2 is sent (tests).
	AfterCount func()
	// Logf logs (default log.Printf).
	Logf func(format string, args ...any)
}

// Server is the vault. It is safe for concurrent use, and several Servers
// on one shared Store (etcd) are replicas of one vault: any of them
// answers any request, whichever answered the one before.
type Server struct {
	cfg   Config
	limit int
	op    *opaque.Server
	pub   []byte
	priv  []byte // the AKE private key, which is also the realm channel's static key
	idKey []byte // HMAC key for storage keys, derived from the OPRF seed
	// entryKey seals entries on stores that do not seal values (entryLabel)
	entryKey []byte
	states   stateSealer
	rate     *rateLimiter
	// realm answers the realm API (realm.go); realmHMAC keys its records'
	// storage keys, derived from the OPRF seed
	realm     *threshold.RealmServer
	realmHMAC []byte

	mu      sync.Mutex
	watched map[string]time.Time // spent records to destroy once their last login expired
	stop    chan struct{}
	once    sync.Once
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
	if cfg.DefaultGuesses > threshold.MaxAllowedGuesses {
		return nil, fmt.Errorf("vault: a guess limit of %d; at most %d", cfg.DefaultGuesses, threshold.MaxAllowedGuesses)
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
	stateKey, err := hkdf.Key(sha256.New, keys.OPRFSeed, nil, "wabackup-vault state key v1", 32)
	if err != nil {
		return nil, err
	}
	// Entries on a store that does not seal values (etcd) are sealed under
	// a key per entry from this one, not by the HSM directly: an HSM's
	// GCM with random 96-bit IVs under one key would approach the 2³²
	// bound on seals within weeks at a busy vault's write rate. Like the
	// OPRF seed it comes from, it is sealed by the HSM at rest and held in
	// the vault's memory while it runs.
	entryKey, err := hkdf.Key(sha256.New, keys.OPRFSeed, nil, "wabackup-vault entry key v1", 32)
	if err != nil {
		return nil, err
	}
	realmHMAC, err := hkdf.Key(sha256.New, keys.OPRFSeed, nil, realmLabel, 32)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, limit: cfg.DefaultGuesses, op: op, pub: keys.Public, priv: keys.Private, idKey: idKey, entryKey: entryKey,
		states: stateSealer{key: stateKey}, watched: map[string]time.Time{},
		stop: make(chan struct{}), realmHMAC: realmHMAC,
	}
	realmID, err := s.loadRealmID()
	if err != nil {
		return nil, err
	}
	if s.realm, err = threshold.NewRealmServer(realmID, s.limit); err != nil {
		return nil, err
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

// GuessLimit returns the guess limit of every record, OPAQUE and realm.
func (s *Server) GuessLimit() int { return s.limit }

// Fingerprint returns the SHA-256 hex fingerprint clients pin.
func (s *Server) Fingerprint() string { return api.Fingerprint(s.pub) }

// storageKey hides credential identifiers from a reader of the store.
func (s *Server) storageKey(credID []byte) []byte {
	m := hmac.New(sha256.New, s.idKey)
	m.Write(credID)
	return m.Sum(nil)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// watch remembers a record that reached its limit, to destroy it once its
// last login has expired unanswered even if no request touches it again
// (any request that does destroys it first).
func (s *Server) watch(key []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.watched) < 1<<16 {
		s.watched[string(key)] = time.Now().Add(s.cfg.LoginTimeout)
	}
}

// sweep destroys the watched records whose last allowed attempt expired.
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
		var due [][]byte
		s.mu.Lock()
		for k, at := range s.watched {
			if now.After(at) {
				due = append(due, []byte(k))
				delete(s.watched, k)
			}
		}
		s.mu.Unlock()
		for _, key := range due {
			if err := s.destroyIfSpent(key); err != nil {
				s.cfg.Logf("vault: destroying a spent record: %v", err)
			}
		}
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
	mux.HandleFunc("POST "+api.PathChangeStart, s.tokenChannel(api.PathChangeStart, s.registerStart))
	mux.HandleFunc("POST "+api.PathChangeFinish, s.tokenChannel(api.PathChangeFinish, s.registerFinish))
	mux.HandleFunc("POST "+api.PathDelete, s.tokenChannel(api.PathDelete, s.delete))
	s.realmRoutes(mux)
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

func validCredID(w http.ResponseWriter, id []byte) bool {
	if len(id) == 0 || len(id) > 1024 {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "credential_id must be 1 to 1024 bytes", nil)
		return false
	}
	return true
}

func (s *Server) info(w http.ResponseWriter, _ *http.Request) {
	reply(w, api.Info{Suite: api.Suite.String(), PublicKey: s.pub, Fingerprint: s.Fingerprint(), MaxGuesses: s.limit, DefaultGuesses: s.limit})
}

func badToken(w http.ResponseWriter, msg string) {
	fail(w, http.StatusUnauthorized, api.CodeBadToken, msg, nil)
}

// openToken opens a change/delete token; it writes the refusal itself.
func (s *Server) openToken(w http.ResponseWriter, b []byte) *state {
	tk, expired, err := s.states.open(b, kindToken)
	if err != nil || expired {
		badToken(w, "unknown or expired token: log in again")
		return nil
	}
	return tk
}

// tokenChannel serves h, an endpoint that takes a login's token
// (api.TokenPaths), only inside the realm channel (channel, realm.go):
// the token is read by this vault's key alone, and only it can answer.
// A request outside the channel — what a client older than the channel
// sends — is refused (400 channel_required) before its body is read.
func (s *Server) tokenChannel(path string, h http.HandlerFunc) http.HandlerFunc {
	in := s.channel(path, h)
	return func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != api.RealmChannelType {
			fail(w, http.StatusBadRequest, api.CodeChannelRequired, path+" takes a login's token and is answered only inside the realm channel (docs/VAULT.md, API): this client is older than the vault; upgrade it", nil)
			return
		}
		in(w, r)
	}
}

func (s *Server) registerStart(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterStart
	if !decode(w, r, &req) {
		return
	}
	// A token is taken at change/start only, which is served inside the
	// realm channel (tokenChannel), and change/start needs one.
	change := r.URL.Path == api.PathChangeStart
	if !change && req.Token != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "a token is taken only by "+api.PathChangeStart+", inside the realm channel", nil)
		return
	}
	if change && req.Token == nil {
		badToken(w, "a password change needs the token of a login")
		return
	}
	st := &state{kind: kindRegister, expires: time.Now().Add(s.cfg.LoginTimeout)}
	if change {
		tk := s.openToken(w, req.Token)
		if tk == nil {
			return
		}
		e, _, err := s.getEntry(tk.skey[:])
		if err != nil {
			s.internal(w, err)
			return
		}
		if !e.real() || !hmac.Equal(e.Gen, tk.gen[:]) {
			badToken(w, "the record changed since the login")
			return
		}
		st.skey, st.gen, st.credID, st.flags = tk.skey, tk.gen, tk.credID, flagChange
	} else {
		if !validCredID(w, req.CredentialID) {
			return
		}
		key := s.storageKey(req.CredentialID)
		// An OPRF evaluation under an existing record's key would let
		// anyone test passwords against a single KE2 offline. Under a
		// fresh key (below) it would be harmless, but a registration
		// over a record could not finish anyway: refuse it here.
		e, _, err := s.getEntry(key)
		if err != nil {
			s.internal(w, err)
			return
		}
		if e.real() {
			fail(w, http.StatusConflict, api.CodeExists, "this credential is registered: change its password after a login, or delete it", nil)
			return
		}
		copy(st.skey[:], key)
		st.credID = req.CredentialID
	}
	rr, err := api.Suite.UnmarshalRegistrationRequest(req.Request)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	// A fresh OPRF key for this registration: its randomness (KeyID)
	// travels sealed in the state and is kept in the record.
	keyID := randBytes(32)
	copy(st.a[:], keyID)
	resp, err := s.op.RegistrationResponse(rr, registeredIdentifier(st.credID, keyID))
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	sealed, err := s.states.seal(st)
	if err != nil {
		s.internal(w, err)
		return
	}
	b, _ := resp.MarshalBinary()
	reply(w, api.RegisterStartReply{Response: b, State: sealed})
}

func (s *Server) registerFinish(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterFinish
	if !decode(w, r, &req) {
		return
	}
	st, expired, err := s.states.open(req.State, kindRegister)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "missing or forged registration state (from register/start or change/start)", nil)
		return
	}
	if expired {
		fail(w, http.StatusUnauthorized, api.CodeLoginExpired, "the registration took too long: start again", nil)
		return
	}
	change := st.flags&flagChange != 0
	if change != (r.URL.Path == api.PathChangeFinish) {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, "registration state of another kind", nil)
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
	if req.Guesses != 0 && req.Guesses != s.limit {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("this vault gives every record the same guess limit, %d, so that it cannot tell a registered credential from an unknown one", s.limit), nil)
		return
	}
	key := st.skey[:]
	for {
		old, ver, err := s.getEntry(key)
		if err != nil {
			s.internal(w, err)
			return
		}
		if change && (!old.real() || !hmac.Equal(old.Gen, st.gen[:])) {
			badToken(w, "the record changed since the login")
			return
		}
		if !change && old.real() {
			fail(w, http.StatusConflict, api.CodeExists, "this credential is registered", nil)
			return
		}
		rec := &entry{Record: req.Record, KeyID: append([]byte(nil), st.a[:32]...), Blob: req.Blob, Limit: s.limit, Gen: randBytes(16)}
		if old != nil {
			rec.Seq = old.Seq + 1
		}
		if _, err := s.putEntry(key, ver, rec); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			s.internal(w, err)
			return
		}
		break
	}
	reply(w, api.RegisterFinishReply{Guesses: s.limit})
}

func (s *Server) loginStart(w http.ResponseWriter, r *http.Request) {
	var req api.LoginStart
	if !decode(w, r, &req) {
		return
	}
	if !validCredID(w, req.CredentialID) {
		return
	}
	ke1, err := api.Suite.UnmarshalKE1(req.KE1)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	key := s.storageKey(req.CredentialID)
	st := &state{kind: kindLogin, expires: time.Now().Add(s.cfg.LoginTimeout), credID: req.CredentialID}
	copy(st.skey[:], key)
	copy(st.nonce[:], randBytes(16))
	e, counted, err := s.countAttempt(key, st.nonce[:], st.expires)
	if err != nil {
		s.internal(w, err)
		return
	}
	var oprec *opaque.RegistrationRecord
	ident := oprfIdentifier(req.CredentialID, &entry{})
	copy(st.gen[:], randBytes(16))
	if counted {
		st.flags |= flagCounted
		if e.real() {
			if oprec, err = api.Suite.UnmarshalRegistrationRecord(e.Record); err != nil {
				s.internal(w, err)
				return
			}
			ident = oprfIdentifier(req.CredentialID, e)
			copy(st.gen[:], e.Gen)
			st.flags |= flagReal
			if s.cfg.AfterCount != nil {
				s.cfg.AfterCount()
			}
		}
	}
	ke2, lst, err := s.op.KE2(ke1, ident, nil, oprec)
	if err != nil {
		fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
		return
	}
	ls, err := lst.MarshalBinary()
	if err != nil {
		s.internal(w, err)
		return
	}
	copy(st.a[:], ls[:64])
	copy(st.b[:], ls[64:])
	id, err := s.states.seal(st)
	if err != nil {
		s.internal(w, err)
		return
	}
	b, _ := ke2.MarshalBinary()
	reply(w, api.LoginStartReply{LoginID: id, KE2: b})
}

func (s *Server) loginFinish(w http.ResponseWriter, r *http.Request) {
	var req api.LoginFinish
	if !decode(w, r, &req) {
		return
	}
	st, expired, err := s.states.open(req.LoginID, kindLogin)
	if err != nil || expired {
		// An expired login's attempt stays counted; the client must start
		// a new one.
		fail(w, http.StatusUnauthorized, api.CodeLoginExpired, "unknown or expired login (the attempt was counted): start again", nil)
		return
	}
	key := st.skey[:]
	// Check KE3 before touching the store: a valid one proves the password.
	var sessionKey []byte
	ok := false
	if len(req.KE3) > 0 && st.flags&flagReal != 0 {
		if ke3, err := api.Suite.UnmarshalKE3(req.KE3); err == nil {
			lst, err := api.Suite.UnmarshalServerLoginState(append(st.a[:], st.b[:]...))
			if err == nil {
				sessionKey, err = s.op.Finish(lst, ke3)
				ok = err == nil
			}
		}
	}
	if st.flags&flagCounted == 0 {
		// Answered uncounted (a spent record, or an unknown credential at
		// its limit): nothing to finish.
		e, _, err := s.getEntry(key)
		if err != nil {
			s.internal(w, err)
			return
		}
		left := s.limit
		if e != nil {
			left = max(0, e.Limit-e.Failed)
		}
		fail(w, http.StatusUnauthorized, api.CodeWrongPassword, "wrong password", &left)
		return
	}
	e, taken, err := s.finishLogin(key, st, ok)
	if err != nil {
		s.internal(w, err)
		return
	}
	if !taken {
		fail(w, http.StatusUnauthorized, api.CodeLoginExpired, "unknown or expired login (the attempt was counted): start again", nil)
		return
	}
	if !ok || !e.real() {
		left := max(0, e.Limit-e.Failed)
		fail(w, http.StatusUnauthorized, api.CodeWrongPassword, "wrong password", &left)
		return
	}
	blob, err := api.Seal(sessionKey, api.ReleaseLabel, e.Blob, req.LoginID)
	if err != nil {
		s.internal(w, err)
		return
	}
	tk := &state{kind: kindToken, expires: time.Now().Add(s.cfg.LoginTimeout), skey: st.skey, gen: st.gen, credID: st.credID}
	copy(tk.nonce[:], randBytes(16))
	tok, err := s.states.seal(tk)
	if err != nil {
		s.internal(w, err)
		return
	}
	// The token is sealed under the session key like the blob: only the
	// client that ran the login reads it, whoever relays the answer (the
	// KE3 travels in the clear within TLS, and anyone may wrap it in a
	// realm channel of their own; the answer's token is no use to them).
	if tok, err = api.Seal(sessionKey, api.TokenLabel, tok, req.LoginID); err != nil {
		s.internal(w, err)
		return
	}
	reply(w, api.LoginFinishReply{Blob: blob, Token: tok})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	var req api.Status
	if !decode(w, r, &req) {
		return
	}
	key := s.storageKey(req.CredentialID)
	e, _, err := s.getEntry(key)
	if err != nil {
		s.internal(w, err)
		return
	}
	if e == nil {
		reply(w, api.StatusReply{AttemptsLeft: s.limit, Limit: s.limit})
		return
	}
	e.prune(time.Now())
	if e.spent() {
		if err := s.destroyIfSpent(key); err != nil {
			s.internal(w, err)
			return
		}
	}
	reply(w, api.StatusReply{AttemptsLeft: max(0, e.Limit-e.Failed), Limit: e.Limit})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	var req api.Delete
	if !decode(w, r, &req) {
		return
	}
	tk := s.openToken(w, req.Token)
	if tk == nil {
		return
	}
	for {
		e, ver, err := s.getEntry(tk.skey[:])
		if err != nil {
			s.internal(w, err)
			return
		}
		if !e.real() || !hmac.Equal(e.Gen, tk.gen[:]) {
			badToken(w, "the record changed since the login")
			return
		}
		if err := s.cfg.Store.Delete(tk.skey[:], ver); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			s.internal(w, err)
			return
		}
		break
	}
	s.compact()
	reply(w, struct{}{})
}

// Registered reports whether a record is registered under credID (for
// operators' tools and tests; the API answers unknown credentials as if
// they were registered).
func (s *Server) Registered(credID []byte) (bool, error) {
	e, _, err := s.getEntry(s.storageKey(credID))
	return e.real(), err
}
