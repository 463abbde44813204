package vault

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// The realm API (API version 2, pkg/vault/api/realm.go): the vault is also
// one realm of a threshold escrow across several independent vaults
// (pkg/threshold, docs/THRESHOLD.md). A threshold.RealmServer runs the
// protocol; the vault gives it a RecordStore per user over its own Store,
// so a realm record is counted, sealed and rolled back (or not) exactly
// like a v1 entry, and every replica sharing the store (etcd) is one
// realm: the realm id is kept in the store too.

var (
	// realmIDKey holds the realm id (sealed like an entry).
	realmIDKey = []byte("realm-id")
	// realmPrefix starts the storage key of every realm record, so realm
	// records and OPAQUE entries (32-byte keys) never share a key.
	realmPrefix = []byte("realm/")
)

// realmLabel derives, from the OPRF seed, the HMAC key of realm storage
// keys: another key than the entries', so a reader of the store cannot
// link a credential's realm record to its OPAQUE entry.
const realmLabel = "wabackup-vault realm storage key v1"

// loadRealmID returns the realm id the store holds, or makes one (16
// random bytes) and stores it, create-if-absent, on the first start: of
// several replicas starting at once on one store, one writes it and every
// one of them reads that one back.
func (s *Server) loadRealmID() (threshold.RealmID, error) {
	for {
		val, ver, err := s.cfg.Store.Get(realmIDKey)
		if err != nil {
			return threshold.RealmID{}, err
		}
		if ver != 0 {
			pt, err := s.openStored(realmIDKey, val)
			if err != nil {
				return threshold.RealmID{}, fmt.Errorf("vault: the realm id does not open: %w", err)
			}
			var id threshold.RealmID
			if len(pt) != len(id) || bytes.Equal(pt, make([]byte, len(id))) {
				return threshold.RealmID{}, fmt.Errorf("vault: malformed realm id in the store (%d bytes)", len(pt))
			}
			copy(id[:], pt)
			return id, nil
		}
		var id threshold.RealmID
		for id == (threshold.RealmID{}) {
			copy(id[:], randBytes(len(id)))
		}
		sealed, err := s.sealStored(realmIDKey, id[:])
		if err != nil {
			return threshold.RealmID{}, err
		}
		if _, err := s.cfg.Store.CompareAndSwap(realmIDKey, 0, sealed); err != nil && !errors.Is(err, ErrConflict) {
			return threshold.RealmID{}, err
		}
	}
}

// RealmID returns the vault's realm id.
func (s *Server) RealmID() threshold.RealmID { return s.realm.ID() }

// realmKey is the storage key of credID's realm record: realmPrefix ||
// HMAC-SHA-256(realm storage key, credential id).
func (s *Server) realmKey(credID []byte) []byte {
	m := hmac.New(sha256.New, s.realmHMAC)
	m.Write(credID)
	return m.Sum(append([]byte(nil), realmPrefix...))
}

// realmRecords is one user's threshold.RecordStore over the vault's Store.
type realmRecords struct {
	s   *Server
	key []byte
	// replace lets a record that does not open be replaced (register2,
	// delete, whose outcome does not depend on the record): a registration
	// heals a record put back from an older copy, which every other
	// request refuses (500) as v1 does.
	replace bool
}

// getRealmRecord reads and unseals the realm record under key; (nil, 0,
// nil) if there is none. A record that does not open (put back from an
// older copy of the storage, or altered) fails with an error wrapping
// ErrRolledBack and, if the store knows it, the version it holds.
func (s *Server) getRealmRecord(key []byte) (*threshold.RealmRecord, uint64, error) {
	val, ver, err := s.cfg.Store.Get(key)
	if errors.Is(err, ErrRolledBack) {
		return nil, ver, fmt.Errorf("a realm record: %w", err)
	}
	if err != nil || ver == 0 {
		return nil, 0, err
	}
	pt, err := s.openStored(key, val)
	if err != nil {
		return nil, ver, fmt.Errorf("%w: a realm record does not open: %v", ErrRolledBack, err)
	}
	rec, err := threshold.UnmarshalRealmRecord(pt)
	if err != nil {
		return nil, 0, fmt.Errorf("vault: a stored realm record: %w", err)
	}
	return rec, ver, nil
}

// Update implements threshold.RecordStore: read, fn, then one
// compare-and-swap (or delete) against the version read, again from the
// read if another request or replica wrote in between. When it returns
// nil the write is durable (the Store's contract: bbolt synced, etcd
// committed by a majority); a write whose outcome is unknown (etcd lost
// its quorum) fails with ErrUnavailable, and the realm then answers
// nothing from it. A NotRegistered record is stored as no record.
func (r realmRecords) Update(ctx context.Context, fn func(*threshold.RealmRecord) (*threshold.RealmRecord, error)) error {
	st := r.s.cfg.Store
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, ver, err := r.s.getRealmRecord(r.key)
		unreadable := false
		if err != nil {
			if !r.replace || !errors.Is(err, ErrRolledBack) || ver == 0 {
				return err
			}
			r.s.cfg.Logf("vault: replacing a realm record that does not open: %v", err)
			cur, unreadable = nil, true
		}
		next, err := fn(cur)
		if err != nil || next == nil {
			return err
		}
		if next.State() == threshold.StateNotRegistered {
			if ver == 0 {
				return nil
			}
			err = st.Delete(r.key, ver)
		} else {
			var b, sealed []byte
			if b, err = next.MarshalBinary(); err != nil {
				return err
			}
			if sealed, err = r.s.sealStored(r.key, b); err != nil {
				return err
			}
			_, err = st.CompareAndSwap(r.key, ver, sealed)
		}
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		// A registration was erased (NoGuesses, deleted) or replaced: a
		// store that keeps old values (etcd revisions) drops them, so its
		// key shares cannot be read back.
		if unreadable || cur.State() == threshold.StateRegistered && next.Version() != cur.Version() {
			r.s.compact()
		}
		return nil
	}
}

func (s *Server) realmInfo(w http.ResponseWriter, _ *http.Request) {
	id := s.realm.ID()
	reply(w, api.RealmInfo{RealmID: hex.EncodeToString(id[:]), PublicKey: s.pub, Fingerprint: s.Fingerprint(), MaxGuesses: s.limit})
}

// realmHandler answers one realm request: the JSON envelope, then the
// pkg/threshold message in it, then the realm's answer to it over the
// user's record. A message that does not decode, and a registration the
// realm refuses, are bad requests (400); a store that cannot answer is
// 503 (no quorum) or 500, as in version 1. Every outcome of the protocol
// is a response with 200.
func realmHandler[Req any, Resp encoding.BinaryMarshaler](s *Server, replace bool, decodeMsg func([]byte) (*Req, error),
	call func(context.Context, threshold.RecordStore, *Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.RealmRequest
		if !decode(w, r, &req) || !validCredID(w, req.CredentialID) {
			return
		}
		m, err := decodeMsg(req.Message)
		if err != nil {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
			return
		}
		resp, err := call(r.Context(), realmRecords{s: s, key: s.realmKey(req.CredentialID), replace: replace}, m)
		if errors.Is(err, threshold.ErrInvalidRequest) {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, err.Error(), nil)
			return
		}
		if err != nil {
			s.internal(w, err)
			return
		}
		b, err := resp.MarshalBinary()
		if err != nil {
			s.internal(w, err)
			return
		}
		reply(w, api.RealmReply{Message: b})
	}
}

// realmStatus reads the user's record and spends nothing. A Registered
// record whose last guess was counted and not yet answered by recover3 is
// reported as registered with 0 guesses left (the right unlock tag can
// still reset it; the next recover1 or recover2 makes it NoGuesses).
func (s *Server) realmStatus(w http.ResponseWriter, r *http.Request) {
	var req api.RealmStatusRequest
	if !decode(w, r, &req) || !validCredID(w, req.CredentialID) {
		return
	}
	rec, _, err := s.getRealmRecord(s.realmKey(req.CredentialID))
	if err != nil {
		s.internal(w, err)
		return
	}
	st := api.RealmStatus{State: api.RealmNotRegistered, Limit: s.limit}
	switch rec.State() {
	case threshold.StateRegistered:
		st.State, st.GuessesLeft, st.Limit = api.RealmRegistered, rec.GuessesLeft(), rec.AllowedGuesses()
	case threshold.StateNoGuesses:
		st.State = api.RealmNoGuesses
	}
	reply(w, st)
}

// answer is the inner response of a request in the realm channel.
type answer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (a *answer) Header() http.Header { return a.header }
func (a *answer) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
}
func (a *answer) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	return a.body.Write(b)
}

// channel serves h inside the realm channel (api.RealmChannelType): it
// reads the request body as the first message of a Noise NK handshake to
// the vault's key with path's prologue, gives h its payload, and answers
// with the second message carrying h's status and body. A body that is
// not such a message is refused (400) outside the channel.
func (s *Server) channel(path string, h http.HandlerFunc) http.HandlerFunc {
	prologue := api.RealmPrologue(path)
	return func(w http.ResponseWriter, r *http.Request) {
		msg, err := io.ReadAll(r.Body)
		if err != nil {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, "reading the request: "+err.Error(), nil)
			return
		}
		payload, hs, err := noise.ReadRequest(noise.Ristretto255, s.priv, s.pub, prologue, msg)
		if err != nil {
			fail(w, http.StatusBadRequest, api.CodeBadRequest, "the request is not a realm-channel message to this vault's key for "+path+" (docs/VAULT.md, the realm channel): "+err.Error(), nil)
			return
		}
		inner := r.Clone(r.Context())
		inner.Body = io.NopCloser(bytes.NewReader(payload))
		inner.ContentLength = int64(len(payload))
		inner.Header.Set("Content-Type", "application/json")
		a := &answer{header: http.Header{}}
		h(a, inner)
		if a.status == 0 {
			a.status = http.StatusOK
		}
		out, err := hs.WriteResponse(api.MarshalRealmAnswer(a.status, a.body.Bytes()), rand.Reader)
		if err != nil {
			s.internal(w, err)
			return
		}
		w.Header().Set("Content-Type", api.RealmChannelType)
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(out)
	}
}

// realmRoutes adds the realm API to mux: /v2/info in the clear (the
// client checks the key it names against its pins), every POST inside
// the channel.
func (s *Server) realmRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathRealmInfo, s.realmInfo)
	post := func(path string, h http.HandlerFunc) { mux.HandleFunc("POST "+path, s.channel(path, h)) }
	post(api.PathRealmRegister1, realmHandler(s, false, threshold.UnmarshalRegister1Request, s.realm.Register1))
	post(api.PathRealmRegister2, realmHandler(s, true, threshold.UnmarshalRegister2Request, s.realm.Register2))
	post(api.PathRealmRecover1, realmHandler(s, false, threshold.UnmarshalRecover1Request, s.realm.Recover1))
	post(api.PathRealmRecover2, realmHandler(s, false, threshold.UnmarshalRecover2Request, s.realm.Recover2))
	post(api.PathRealmRecover3, realmHandler(s, false, threshold.UnmarshalRecover3Request, s.realm.Recover3))
	post(api.PathRealmDelete, realmHandler(s, true, threshold.UnmarshalDeleteRequest, s.realm.Delete))
	post(api.PathRealmStatus, s.realmStatus)
}
