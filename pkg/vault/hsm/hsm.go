// Package hsm is the vault's production Sealer: AES-256-GCM with a key
// generated inside a PKCS#11 token (an HSM; SoftHSM2 in tests), marked
// sensitive and non-extractable, so it never leaves the token. It needs
// cgo (github.com/miekg/pkcs11) and is imported only by the vault binary.
package hsm

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// Config names the token and the key.
type Config struct {
	Module     string // PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so
	TokenLabel string // the token is found by label
	PIN        string // user PIN
	KeyLabel   string // label of the AES key (default "wabackup-vault-seal")
	// CreateKey generates the key on the token if no key has the label.
	CreateKey bool
	// Sessions is the number of PKCS#11 sessions used concurrently
	// (default 4).
	Sessions int
}

// Sealer seals with an AES key held by a PKCS#11 token. It implements
// vault.Sealer.
type Sealer struct {
	ctx      *pkcs11.Ctx
	key      pkcs11.ObjectHandle
	keyLabel string
	sessions chan pkcs11.SessionHandle
	all      []pkcs11.SessionHandle
	once     sync.Once

	// epochMu serializes making, destroying and finding epoch keys:
	// SoftHSM2 fails (CKR_GENERAL_ERROR) or crashes when token objects
	// are created and destroyed from several sessions at once.
	epochMu   sync.Mutex
	handlesMu sync.Mutex
	handles   map[string]pkcs11.ObjectHandle // epoch key id → handle
	destroyed map[string]bool                // epoch keys this sealer destroyed lately (guarded by epochMu)
	gone      []string                       // their order, oldest first
}

// destroyedKept bounds how many destroyed epoch key ids a Sealer
// remembers, so that destroying one again (several RatchetStores sharing
// the sealer each clean up the key before the one they superseded) costs
// no search of the token.
const destroyedKept = 256

// ErrUnseal is returned when a sealed value does not open.
var ErrUnseal = errors.New("hsm: sealed value does not open (wrong key or tampered data)")

// Open loads the module, logs in to the token and finds (or creates) the key.
func Open(cfg Config) (_ *Sealer, err error) {
	if cfg.KeyLabel == "" {
		cfg.KeyLabel = "wabackup-vault-seal"
	}
	if cfg.Sessions <= 0 {
		cfg.Sessions = 4
	}
	p := pkcs11.New(cfg.Module)
	if p == nil {
		return nil, fmt.Errorf("hsm: cannot load PKCS#11 module %s", cfg.Module)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		return nil, fmt.Errorf("hsm: initialize %s: %w", cfg.Module, err)
	}
	s := &Sealer{ctx: p, keyLabel: cfg.KeyLabel, sessions: make(chan pkcs11.SessionHandle, cfg.Sessions), handles: map[string]pkcs11.ObjectHandle{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("hsm: slot list: %w", err)
	}
	slot, found := uint(0), false
	for _, sl := range slots {
		ti, err := p.GetTokenInfo(sl)
		if err == nil && ti.Label == cfg.TokenLabel {
			slot, found = sl, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("hsm: no token labelled %q in %s", cfg.TokenLabel, cfg.Module)
	}
	for i := range cfg.Sessions {
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return nil, fmt.Errorf("hsm: open session: %w", err)
		}
		s.all = append(s.all, sh)
		if i == 0 {
			if err := p.Login(sh, pkcs11.CKU_USER, cfg.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
				return nil, fmt.Errorf("hsm: login to token %q: %w", cfg.TokenLabel, err)
			}
		}
	}
	sh := s.all[0]
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, cfg.KeyLabel),
	}
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	objs, _, err := p.FindObjects(sh, 2)
	_ = p.FindObjectsFinal(sh)
	if err != nil {
		return nil, err
	}
	switch {
	case len(objs) > 1:
		return nil, fmt.Errorf("hsm: %d keys labelled %q", len(objs), cfg.KeyLabel)
	case len(objs) == 1:
		s.key = objs[0]
	case !cfg.CreateKey:
		return nil, fmt.Errorf("hsm: no key labelled %q on token %q (start once with key creation allowed)", cfg.KeyLabel, cfg.TokenLabel)
	default:
		s.key, err = p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, cfg.KeyLabel),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		})
		if err != nil {
			return nil, fmt.Errorf("hsm: generate key: %w", err)
		}
	}
	for _, sh := range s.all {
		s.sessions <- sh
	}
	return s, nil
}

const ivLen, tagBits = 12, 128

// Seal encrypts with CKM_AES_GCM: iv(12) || ciphertext || tag(16).
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	return s.sealWith(func(pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) { return s.key, nil }, plaintext, aad)
}

// Open decrypts what Seal produced; a tampered value gives ErrUnseal.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	return s.openWith(func(pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) { return s.key, nil }, sealed, aad)
}

// sealWith seals under the key key finds (in the session it is given).
func (s *Sealer) sealWith(key func(pkcs11.SessionHandle) (pkcs11.ObjectHandle, error), plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, ivLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(iv, aad, tagBits)
	defer params.Free()
	sh, done := s.session()
	defer done()
	k, err := key(sh)
	if err != nil {
		return nil, err
	}
	if err := s.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, k); err != nil {
		return nil, fmt.Errorf("hsm: encrypt: %w", err)
	}
	ct, err := s.ctx.Encrypt(sh, plaintext)
	if err != nil {
		return nil, fmt.Errorf("hsm: encrypt: %w", err)
	}
	return append(iv, ct...), nil
}

// openWith reverses sealWith.
func (s *Sealer) openWith(key func(pkcs11.SessionHandle) (pkcs11.ObjectHandle, error), sealed, aad []byte) ([]byte, error) {
	if len(sealed) < ivLen+tagBits/8 {
		return nil, ErrUnseal
	}
	params := pkcs11.NewGCMParams(sealed[:ivLen], aad, tagBits)
	defer params.Free()
	sh, done := s.session()
	defer done()
	k, err := key(sh)
	if err != nil {
		return nil, err
	}
	if err := s.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, k); err != nil {
		return nil, fmt.Errorf("hsm: decrypt: %w", err)
	}
	pt, err := s.ctx.Decrypt(sh, sealed[ivLen:])
	if err != nil {
		// SoftHSM reports a bad tag as CKR_GENERAL_ERROR; any failure here
		// means the value does not open.
		return nil, fmt.Errorf("%w: %v", ErrUnseal, err)
	}
	return pt, nil
}

// Close logs out and releases the module.
func (s *Sealer) Close() error {
	s.once.Do(func() {
		if len(s.all) > 0 {
			_ = s.ctx.Logout(s.all[0])
		}
		for _, sh := range s.all {
			_ = s.ctx.CloseSession(sh)
		}
		_ = s.ctx.Finalize()
		s.ctx.Destroy()
	})
	return nil
}

// EpochLabel labels the epoch keys (vault.Ratchet) on the token; their
// CKA_ID is the epoch key's id.
const EpochLabel = "wabackup-vault-epoch"

func (s *Sealer) session() (pkcs11.SessionHandle, func()) {
	sh := <-s.sessions
	return sh, func() { s.sessions <- sh }
}

// NewEpochKey implements vault.Ratchet: an AES-256 token key, sensitive
// and non-extractable, labelled EpochLabel, whose CKA_ID is prefix and 8
// random bytes.
func (s *Sealer) NewEpochKey(prefix []byte) ([]byte, error) {
	id := make([]byte, len(prefix)+8)
	copy(id, prefix)
	if _, err := rand.Read(id[len(prefix):]); err != nil {
		return nil, err
	}
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	sh, done := s.session()
	defer done()
	h, err := s.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, EpochLabel),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: generate epoch key: %w", err)
	}
	s.handlesMu.Lock()
	s.handles[string(id)] = h
	s.handlesMu.Unlock()
	return id, nil
}

func (s *Sealer) findEpoch(sh pkcs11.SessionHandle, id []byte) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, EpochLabel),
	}
	if id != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	if err := s.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	defer s.ctx.FindObjectsFinal(sh)
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := s.ctx.FindObjects(sh, 64)
		if err != nil {
			return nil, err
		}
		if len(objs) == 0 {
			return all, nil
		}
		all = append(all, objs...)
	}
}

// EpochKeys implements vault.Ratchet.
func (s *Sealer) EpochKeys(prefix []byte) ([][]byte, error) {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	sh, done := s.session()
	defer done()
	objs, err := s.findEpoch(sh, nil)
	if err != nil {
		return nil, fmt.Errorf("hsm: find epoch keys: %w", err)
	}
	var ids [][]byte
	for _, o := range objs {
		a, err := s.ctx.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return nil, fmt.Errorf("hsm: epoch key id: %w", err)
		}
		if bytes.HasPrefix(a[0].Value, prefix) {
			ids = append(ids, a[0].Value)
		}
	}
	return ids, nil
}

// DestroyEpochKey implements vault.Ratchet (C_DestroyObject). The key is
// the one whose handle the sealer holds (it made or found it), else the
// one a search of the token finds; a key this sealer destroyed lately is
// not searched for again.
func (s *Sealer) DestroyEpochKey(id []byte) error {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	if s.destroyed[string(id)] {
		return nil
	}
	s.handlesMu.Lock()
	h, held := s.handles[string(id)]
	delete(s.handles, string(id))
	s.handlesMu.Unlock()
	sh, done := s.session()
	defer done()
	objs := []pkcs11.ObjectHandle{h}
	if !held {
		var err error
		if objs, err = s.findEpoch(sh, id); err != nil {
			return fmt.Errorf("hsm: find epoch key: %w", err)
		}
	}
	for _, o := range objs {
		if err := s.ctx.DestroyObject(sh, o); err != nil {
			return fmt.Errorf("hsm: destroy epoch key: %w", err)
		}
	}
	if s.destroyed == nil {
		s.destroyed = map[string]bool{}
	}
	s.destroyed[string(id)] = true
	s.gone = append(s.gone, string(id))
	if len(s.gone) > destroyedKept {
		delete(s.destroyed, s.gone[0])
		s.gone = s.gone[1:]
	}
	return nil
}

func (s *Sealer) epochKey(sh pkcs11.SessionHandle, id []byte) (pkcs11.ObjectHandle, error) {
	s.handlesMu.Lock()
	h, ok := s.handles[string(id)]
	s.handlesMu.Unlock()
	if ok {
		return h, nil
	}
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	objs, err := s.findEpoch(sh, id)
	if err != nil {
		return 0, fmt.Errorf("hsm: find epoch key: %w", err)
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("hsm: %d epoch keys with id %x", len(objs), id)
	}
	s.handlesMu.Lock()
	s.handles[string(id)] = objs[0]
	s.handlesMu.Unlock()
	return objs[0], nil
}

// SealEpoch implements vault.Ratchet: CKM_AES_GCM under the epoch key,
// iv(12) || ciphertext || tag(16). Each epoch key seals one value.
func (s *Sealer) SealEpoch(id, plaintext, aad []byte) ([]byte, error) {
	return s.sealWith(func(sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) { return s.epochKey(sh, id) }, plaintext, aad)
}

// OpenEpoch implements vault.Ratchet.
func (s *Sealer) OpenEpoch(id, sealed, aad []byte) ([]byte, error) {
	return s.openWith(func(sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) { return s.epochKey(sh, id) }, sealed, aad)
}

// RecordLabel labels the records (vault.Ratchet) on the token: data
// objects (CKO_DATA), private token objects, whose CKA_APPLICATION is the
// label of the sealing key they belong to and CKA_VALUE the record.
const RecordLabel = "wabackup-vault-record"

func (s *Sealer) findRecords(sh pkcs11.SessionHandle) ([][]byte, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, RecordLabel),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, s.keyLabel),
	}
	if err := s.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, fmt.Errorf("hsm: find records: %w", err)
	}
	var objs []pkcs11.ObjectHandle
	for {
		o, _, err := s.ctx.FindObjects(sh, 64)
		if err != nil {
			_ = s.ctx.FindObjectsFinal(sh)
			return nil, fmt.Errorf("hsm: find records: %w", err)
		}
		if len(o) == 0 {
			break
		}
		objs = append(objs, o...)
	}
	if err := s.ctx.FindObjectsFinal(sh); err != nil {
		return nil, fmt.Errorf("hsm: find records: %w", err)
	}
	var recs [][]byte
	for _, o := range objs {
		a, err := s.ctx.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return nil, fmt.Errorf("hsm: read a record: %w", err)
		}
		recs = append(recs, a[0].Value)
	}
	return recs, nil
}

// Record implements vault.Ratchet: a data object labelled RecordLabel on
// the token (made only if none holds rec yet).
func (s *Sealer) Record(rec []byte) error {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	sh, done := s.session()
	defer done()
	recs, err := s.findRecords(sh)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if bytes.Equal(r, rec) {
			return nil
		}
	}
	if _, err := s.ctx.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, RecordLabel),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, s.keyLabel),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, rec),
	}); err != nil {
		return fmt.Errorf("hsm: keep a record: %w", err)
	}
	return nil
}

// Records implements vault.Ratchet.
func (s *Sealer) Records() ([][]byte, error) {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	sh, done := s.session()
	defer done()
	return s.findRecords(sh)
}
