package vault

import (
	"encoding/json"
	"path/filepath"
	"testing"
)

// On a store that does not seal values, entries are sealed under a key
// per entry (not by the Sealer, whose random-IV GCM under one key would
// near its bound on a busy vault), and entries the Sealer sealed before
// still open.
func TestEntrySealing(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenBolt(filepath.Join(dir, "vault.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sealer, err := OpenFileSealer(filepath.Join(dir, "seal.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Store: st, Sealer: sealer, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key := []byte("0123456789abcdef0123456789abcdef")
	if _, err := s.putEntry(key, 0, &entry{Limit: 10, Failed: 3}); err != nil {
		t.Fatal(err)
	}
	raw, ver, _ := st.Get(key)
	if _, err := sealer.Open(raw, s.entryAAD(key)); err == nil {
		t.Fatal("the entry was sealed by the Sealer")
	}
	if e, _, err := s.getEntry(key); err != nil || e.Failed != 3 {
		t.Fatalf("getEntry: %+v %v", e, err)
	}
	// An entry the Sealer sealed (written by an earlier version).
	pt, _ := json.Marshal(&entry{Limit: 10, Failed: 5})
	old, _ := sealer.Seal(pt, s.entryAAD(key))
	if _, err := st.CompareAndSwap(key, ver, old); err != nil {
		t.Fatal(err)
	}
	if e, _, err := s.getEntry(key); err != nil || e.Failed != 5 {
		t.Fatalf("getEntry of a Sealer-sealed entry: %+v %v", e, err)
	}
	// Moved to another key, it does not open.
	other := []byte("fedcba9876543210fedcba9876543210")
	raw, _, _ = st.Get(key)
	st.CompareAndSwap(other, 0, raw)
	if _, _, err := s.getEntry(other); err == nil {
		t.Fatal("an entry opened under another storage key")
	}
}
