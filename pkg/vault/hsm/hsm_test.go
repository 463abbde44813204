package hsm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

func TestSealerSoftHSM(t *testing.T) {
	h := vaulttest.SoftHSM(t)
	cfg := hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN}
	if _, err := hsm.Open(cfg); err == nil {
		t.Fatal("opened without a key and without CreateKey")
	}
	cfg.CreateKey = true
	s, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pt := []byte("the vault's secrets")
	sealed, err := s.Seal(pt, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, pt) || len(sealed) != 12+len(pt)+16 {
		t.Fatalf("sealed %x", sealed)
	}
	got, err := s.Open(sealed, []byte("aad"))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := s.Open(sealed, []byte("other")); !errors.Is(err, hsm.ErrUnseal) {
		t.Fatalf("wrong aad: %v", err)
	}
	bad := bytes.Clone(sealed)
	bad[len(bad)-1] ^= 1
	if _, err := s.Open(bad, []byte("aad")); !errors.Is(err, hsm.ErrUnseal) {
		t.Fatalf("tampered: %v", err)
	}
	s.Close()
	// The key persists on the token and is found by label.
	cfg.CreateKey = false
	s2, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.Open(sealed, []byte("aad")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("reopen: %v", err)
	}
	cfg.PIN = "wrong"
	if _, err := hsm.Open(cfg); err == nil {
		t.Fatal("wrong PIN accepted")
	}
}
