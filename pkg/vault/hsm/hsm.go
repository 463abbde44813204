// Package hsm is the vault's production Sealer: AES-256-GCM with a key
// generated inside a PKCS#11 token (an HSM; SoftHSM2 in tests), marked
// sensitive and non-extractable, so it never leaves the token. It needs
// cgo (github.com/miekg/pkcs11) and is imported only by the vault binary.
package hsm

import (
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
	sessions chan pkcs11.SessionHandle
	all      []pkcs11.SessionHandle
	once     sync.Once
}

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
	s := &Sealer{ctx: p, sessions: make(chan pkcs11.SessionHandle, cfg.Sessions)}
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
	iv := make([]byte, ivLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(iv, aad, tagBits)
	defer params.Free()
	sh := <-s.sessions
	defer func() { s.sessions <- sh }()
	if err := s.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, s.key); err != nil {
		return nil, fmt.Errorf("hsm: encrypt: %w", err)
	}
	ct, err := s.ctx.Encrypt(sh, plaintext)
	if err != nil {
		return nil, fmt.Errorf("hsm: encrypt: %w", err)
	}
	return append(iv, ct...), nil
}

// Open decrypts what Seal produced; a tampered value gives ErrUnseal.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < ivLen+tagBits/8 {
		return nil, ErrUnseal
	}
	params := pkcs11.NewGCMParams(sealed[:ivLen], aad, tagBits)
	defer params.Free()
	sh := <-s.sessions
	defer func() { s.sessions <- sh }()
	if err := s.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, s.key); err != nil {
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
