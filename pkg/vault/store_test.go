package vault_test

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault"
)

func TestBoltStoreCAS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := vault.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	k := []byte("k")
	if v, ver, err := s.Get(k); v != nil || ver != 0 || err != nil {
		t.Fatalf("absent: %q %d %v", v, ver, err)
	}
	v1, err := s.CompareAndSwap(k, 0, []byte("one"))
	if err != nil || v1 == 0 {
		t.Fatal(v1, err)
	}
	if _, err := s.CompareAndSwap(k, 0, []byte("again")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("create over existing: %v", err)
	}
	v2, err := s.CompareAndSwap(k, v1, []byte("two"))
	if err != nil || v2 <= v1 {
		t.Fatal(v2, err)
	}
	if _, err := s.CompareAndSwap(k, v1, []byte("stale")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale version: %v", err)
	}
	if err := s.Delete(k, v1); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := s.Delete(k, v2); err != nil {
		t.Fatal(err)
	}
	v3, err := s.CompareAndSwap(k, 0, []byte("three"))
	if err != nil || v3 <= v2 {
		t.Fatalf("versions must not repeat after a delete: %d after %d (%v)", v3, v2, err)
	}
	// Concurrent increments: every one lands exactly once.
	ck := []byte("counter")
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				val, ver, err := s.Get(ck)
				if err != nil {
					t.Error(err)
					return
				}
				n := len(val)
				if _, err := s.CompareAndSwap(ck, ver, make([]byte, n+1)); errors.Is(err, vault.ErrConflict) {
					continue
				} else if err != nil {
					t.Error(err)
				}
				return
			}
		}()
	}
	wg.Wait()
	s.Close()
	// Durable: reopen and read.
	s, err = vault.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if val, _, _ := s.Get(ck); len(val) != 40 {
		t.Fatalf("counter %d, want 40", len(val))
	}
	if val, ver, _ := s.Get(k); string(val) != "three" || ver != v3 {
		t.Fatalf("after reopen: %q %d", val, ver)
	}
}
