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

// Records (vault.Ratchet) are token objects: kept once, found again by a
// new session, apart from the epoch keys (destroying one leaves them),
// and belonging to the sealing key: a sealer with another key label on
// the same token sees none of them.
func TestRecordsSoftHSM(t *testing.T) {
	h := vaulttest.SoftHSM(t)
	cfg := hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true}
	s, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := s.Records(); err != nil || len(recs) != 0 {
		t.Fatalf("records of a new token: %q %v", recs, err)
	}
	for _, rec := range []string{"one", "two", "one"} {
		if err := s.Record([]byte(rec)); err != nil {
			t.Fatal(err)
		}
	}
	id, err := s.NewEpochKey([]byte("table"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DestroyEpochKey(id); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.EpochKeys(nil); err != nil || len(ids) != 0 {
		t.Fatalf("epoch keys: %x %v", ids, err)
	}
	s.Close()

	s, err = hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.Records()
	if err != nil || len(recs) != 2 || !(string(recs[0]) == "one" && string(recs[1]) == "two" || string(recs[0]) == "two" && string(recs[1]) == "one") {
		t.Fatalf("records after a reopen: %q %v, want one and two", recs, err)
	}
	s.Close()
	cfg.KeyLabel = "another vault's key"
	s, err = hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if recs, err := s.Records(); err != nil || len(recs) != 0 {
		t.Fatalf("records seen through another sealing key: %q %v", recs, err)
	}
}
