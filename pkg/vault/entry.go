package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
)

// entry is what the vault keeps, sealed, under a credential's storage key.
// A real entry holds an OPAQUE record; a fake entry holds none and only
// counts: it is written by the first counted login against an unknown
// credential, and it is what a destroyed record leaves behind (its
// counter at the limit), so unknown, destroyed and spent credentials
// answer alike, on every replica and across restarts.
type entry struct {
	Record []byte `json:"r,omitempty"` // OPAQUE RegistrationRecord; nil: fake entry
	// KeyID is the per-registration randomness of the record's OPRF key
	// (oprfIdentifier); a new one with every registration and password
	// change. Nil in records written before it existed (their OPRF key
	// is the one RFC 9807 derives from the credential id).
	KeyID   []byte    `json:"k,omitempty"`
	Blob    []byte    `json:"b,omitempty"` // the client's escrow ciphertext
	Limit   int       `json:"l"`
	Failed  int       `json:"f"` // attempts counted since the last valid KE3
	Gen     []byte    `json:"g,omitempty"`
	LastTry int64     `json:"t"` // unix nanoseconds of the last counted attempt
	Seq     uint64    `json:"s,omitempty"`
	Pending []pending `json:"p,omitempty"` // counted logins not finished yet
}

// pending is a counted login awaiting its KE3: removing it is what makes
// a login id single-use on every replica.
type pending struct {
	ID      []byte `json:"i"`
	Expires int64  `json:"e"`
}

// maxPending bounds an entry's pending logins; the oldest is dropped
// first (its KE3 is then refused, its attempt stays counted).
const maxPending = 32

func (e *entry) real() bool { return e != nil && e.Record != nil }

// spent reports a real record at its limit with no login in flight: it is
// destroyed when next touched.
func (e *entry) spent() bool { return e.real() && e.Failed >= e.Limit && len(e.Pending) == 0 }

func (e *entry) prune(now time.Time) {
	live := e.Pending[:0]
	for _, p := range e.Pending {
		if now.UnixNano() <= p.Expires {
			live = append(live, p)
		}
	}
	e.Pending = live
	if len(e.Pending) == 0 {
		e.Pending = nil
	}
}

func (e *entry) take(id []byte) bool {
	for i, p := range e.Pending {
		if bytes.Equal(p.ID, id) {
			e.Pending = append(e.Pending[:i], e.Pending[i+1:]...)
			if len(e.Pending) == 0 {
				e.Pending = nil
			}
			return true
		}
	}
	return false
}

func (e *entry) has(id []byte) bool {
	for _, p := range e.Pending {
		if bytes.Equal(p.ID, id) {
			return true
		}
	}
	return false
}

// tombstone is what a destroyed record leaves: a fake entry at its limit.
func (e *entry) tombstone() *entry {
	return &entry{Limit: e.Limit, Failed: e.Limit, LastTry: e.LastTry, Seq: e.Seq + 1}
}

const (
	recordAADv1 = "wabackup-vault record v1/"
	recordAAD   = "wabackup-vault record v2/"
)

func (s *Server) entryAAD(key []byte) []byte { return append([]byte(recordAAD), key...) }

// getEntry reads and unseals the entry under key; (nil, 0, nil) if none.
func (s *Server) getEntry(key []byte) (*entry, uint64, error) {
	val, ver, err := s.cfg.Store.Get(key)
	if err != nil || ver == 0 {
		return nil, 0, err
	}
	var e entry
	if _, ok := s.cfg.Store.(ValueSealer); ok && json.Unmarshal(val, &e) == nil {
		return &e, ver, nil
	}
	if pt, err := openSalted(s.entryKey, entryLabel, val, s.entryAAD(key)); err == nil {
		if err := json.Unmarshal(pt, &e); err != nil {
			return nil, 0, err
		}
		return &e, ver, nil
	}
	// Sealed by the Sealer (entries written before the entry key).
	pt, err := s.cfg.Sealer.Open(val, s.entryAAD(key))
	if err != nil {
		// A record of the first format (same fields, its own label).
		var err1 error
		if pt, err1 = s.cfg.Sealer.Open(val, append([]byte(recordAADv1), key...)); err1 != nil {
			return nil, 0, err
		}
	}
	if err := json.Unmarshal(pt, &e); err != nil {
		return nil, 0, err
	}
	return &e, ver, nil
}

// putEntry seals e and writes it if the stored version is still old.
func (s *Server) putEntry(key []byte, old uint64, e *entry) (uint64, error) {
	pt, _ := json.Marshal(e)
	sealed, err := s.sealStored(key, pt)
	if err != nil {
		return 0, err
	}
	return s.cfg.Store.CompareAndSwap(key, old, sealed)
}

// sealStored seals a value to be stored under key: on a store that seals
// values itself (RatchetStore) it goes in as it is; on any other (etcd) it
// is sealed under a key of its own from the entry key (sealSalted, AAD
// recordAAD || key, so it opens under no other key). Entries, realm
// records and the realm id are all stored this way.
func (s *Server) sealStored(key, plaintext []byte) ([]byte, error) {
	if _, ok := s.cfg.Store.(ValueSealer); ok {
		return plaintext, nil
	}
	return sealSalted(s.entryKey, entryLabel, plaintext, s.entryAAD(key))
}

// openStored reverses sealStored. On a store that seals values itself, a
// value it took over from the plain store it replaced (a realm id, a
// realm record) is still sealed the plain store's way: it opens as such
// (no value the store seals itself does, short of forging a tag under
// the entry key), else it is the value.
func (s *Server) openStored(key, val []byte) ([]byte, error) {
	if _, ok := s.cfg.Store.(ValueSealer); ok {
		if pt, err := openSalted(s.entryKey, entryLabel, val, s.entryAAD(key)); err == nil {
			return pt, nil
		}
		return val, nil
	}
	return openSalted(s.entryKey, entryLabel, val, s.entryAAD(key))
}

// entryLabel is the HKDF info of the keys entries are sealed under (on a
// store that does not seal values itself: etcd).
const entryLabel = "wabackup-vault entry v2"

// oprfIdentifier is the credential_identifier the OPRF key is derived
// from (RFC 9807 §5.2.2: the server chooses it, the client never sees it).
// A real record's mixes in its random KeyID, drawn at registration, so no
// evaluation made before the registration (register/start, or login/start
// on the still unknown credential) is under the key the record uses. A
// fake entry's depends on the credential id only, so an unknown
// credential answers with the same key every time, on every replica.
func oprfIdentifier(credID []byte, e *entry) []byte {
	if e.real() {
		if e.KeyID == nil {
			return credID // a record of the first format
		}
		return registeredIdentifier(credID, e.KeyID)
	}
	return append([]byte("wabackup-vault oprf v2/fake/"), credID...)
}

func registeredIdentifier(credID, keyID []byte) []byte {
	b := append([]byte("wabackup-vault oprf v2/registered/"), keyID...)
	return append(b, credID...)
}

// countAttempt counts one login attempt durably, with id as its pending
// login, and returns the entry to answer KE2 from: real (counted), fake
// (counted for an unknown credential), or one answered uncounted (counted
// false: a spent record or a fake entry at its limit).
func (s *Server) countAttempt(key, id []byte, expires time.Time) (e *entry, counted bool, err error) {
	for {
		e, ver, err := s.getEntry(key)
		if err != nil {
			return nil, false, err
		}
		now := time.Now()
		if e == nil {
			e = &entry{Limit: s.limit}
		}
		e.prune(now)
		if e.Failed >= e.Limit {
			if e.spent() {
				if err := s.destroy(key, ver, e); errors.Is(err, ErrConflict) {
					continue
				} else if err != nil {
					return nil, false, err
				}
				e = e.tombstone()
			}
			return e, false, nil
		}
		e.Failed++
		e.LastTry = now.UnixNano()
		e.Seq++
		e.Pending = append(e.Pending, pending{ID: id, Expires: expires.UnixNano()})
		if len(e.Pending) > maxPending {
			e.Pending = e.Pending[1:]
		}
		if _, err := s.putEntry(key, ver, e); errors.Is(err, ErrConflict) {
			continue
		} else if errors.Is(err, ErrUnavailable) {
			// The write's outcome is unknown (a replicated store lost its
			// leader mid-commit). If a fresh read shows it, the attempt is
			// counted and may be answered; otherwise refuse, and the count
			// may yet land: the safe side, never an uncounted answer.
			if got, _, rerr := s.getEntry(key); rerr == nil && got != nil && got.has(id) {
				return e, true, nil
			}
			return nil, false, err
		} else if err != nil {
			return nil, false, err
		}
		if e.real() && e.Failed >= e.Limit {
			s.watch(key)
		}
		return e, true, nil
	}
}

// finishLogin ends the counted login st under key: on a valid KE3 (ok) it
// resets the counter, otherwise the attempt stays counted and a record
// whose last allowed attempt this was is destroyed. It returns the entry
// as written; taken is false if the login was already finished (by any
// replica) or dropped.
func (s *Server) finishLogin(key []byte, st *state, ok bool) (e *entry, taken bool, err error) {
	for {
		e, ver, err := s.getEntry(key)
		if err != nil || e == nil {
			return nil, false, err
		}
		e.prune(time.Now())
		if !e.take(st.nonce[:]) {
			return e, false, nil
		}
		e.Seq++
		genuine := st.flags&flagReal != 0 && e.real() && bytes.Equal(e.Gen, st.gen[:])
		ok = ok && genuine
		if ok {
			e.Failed = 0
		}
		if !ok && e.spent() {
			if err := s.destroy(key, ver, e); errors.Is(err, ErrConflict) {
				continue
			} else if err != nil {
				return nil, false, err
			}
			return e.tombstone(), true, nil
		}
		if _, err := s.putEntry(key, ver, e); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return nil, false, err
		}
		if !ok {
			e.Record = nil // not released
		}
		return e, true, nil
	}
}

// destroy replaces the record under key (at version ver) by its
// tombstone, and has the store drop old copies it keeps (etcd revisions).
func (s *Server) destroy(key []byte, ver uint64, e *entry) error {
	if _, err := s.putEntry(key, ver, e.tombstone()); err != nil {
		return err
	}
	s.cfg.Logf("vault: guess limit reached, record destroyed")
	s.compact()
	return nil
}

// destroyIfSpent destroys the record under key if it is spent.
func (s *Server) destroyIfSpent(key []byte) error {
	for {
		e, ver, err := s.getEntry(key)
		if err != nil || e == nil {
			return err
		}
		e.prune(time.Now())
		if !e.spent() {
			return nil
		}
		if err := s.destroy(key, ver, e); !errors.Is(err, ErrConflict) {
			return err
		}
	}
}

// compact has a store that keeps superseded values drop them.
func (s *Server) compact() {
	if c, ok := s.cfg.Store.(Compactor); ok {
		if err := c.Compact(); err != nil {
			s.cfg.Logf("vault: compacting the store after a destroy: %v", err)
		}
	}
}
