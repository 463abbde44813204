// Package storetest is the conformance suite of vault.Store
// implementations: compare-and-swap, versions that never repeat (not even
// across a delete), concurrent read-modify-write that loses and repeats
// nothing, binary keys, and durability across a reopen.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault"
)

// Opener opens the store under test. Run calls it once, closes the store
// and calls it again to check that writes survive a reopen: both calls
// must reach the same data, and the data must start empty.
type Opener func(t *testing.T) vault.Store

// Run runs the suite as subtests of t. Each subtest uses its own keys, so
// one store may serve them all.
func Run(t *testing.T, open Opener) {
	s := open(t)
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})
	t.Run("Absent", func(t *testing.T) { testAbsent(t, s) })
	t.Run("CompareAndSwap", func(t *testing.T) { testCAS(t, s) })
	t.Run("DeleteNeverRepeatsVersions", func(t *testing.T) { testDelete(t, s) })
	t.Run("BinaryKeysAndValues", func(t *testing.T) { testBinary(t, s) })
	t.Run("ConcurrentIncrements", func(t *testing.T) { testConcurrent(t, s, "counter", 32, 5) })
	t.Run("Reopen", func(t *testing.T) {
		k := []byte("reopen")
		v1, err := s.CompareAndSwap(k, 0, []byte("kept"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		closed = true
		s = open(t)
		closed = false
		val, ver, err := s.Get(k)
		if err != nil || string(val) != "kept" || ver != v1 {
			t.Fatalf("after reopen: %q %d %v, want \"kept\" %d", val, ver, err, v1)
		}
		if n := readCounter(t, s, "counter"); n != 32*5 {
			t.Fatalf("counter after reopen: %d, want %d", n, 32*5)
		}
	})
}

func testAbsent(t *testing.T, s vault.Store) {
	val, ver, err := s.Get([]byte("absent"))
	if val != nil || ver != 0 || err != nil {
		t.Fatalf("absent key: %q %d %v", val, ver, err)
	}
	if err := s.Delete([]byte("absent"), 0); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("delete of an absent key with version 0: %v, want ErrConflict", err)
	}
	if err := s.Delete([]byte("absent"), 12345); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("delete of an absent key: %v, want ErrConflict", err)
	}
	if _, err := s.CompareAndSwap([]byte("absent"), 12345, []byte("x")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("swap of an absent key with a version: %v, want ErrConflict", err)
	}
	if _, ver, _ := s.Get([]byte("absent")); ver != 0 {
		t.Fatal("a failed swap created the key")
	}
}

func testCAS(t *testing.T, s vault.Store) {
	k := []byte("cas")
	v1, err := s.CompareAndSwap(k, 0, []byte("one"))
	if err != nil || v1 == 0 {
		t.Fatalf("create: %d %v", v1, err)
	}
	if _, err := s.CompareAndSwap(k, 0, []byte("again")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("create over an existing value: %v", err)
	}
	v2, err := s.CompareAndSwap(k, v1, []byte("two"))
	if err != nil || v2 <= v1 {
		t.Fatalf("swap: %d after %d, %v", v2, v1, err)
	}
	if _, err := s.CompareAndSwap(k, v1, []byte("stale")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale version: %v", err)
	}
	if val, ver, err := s.Get(k); string(val) != "two" || ver != v2 || err != nil {
		t.Fatalf("get: %q %d %v", val, ver, err)
	}
	// Versions are per store, not per key: another key's write must not
	// make an old version of this key current again.
	if _, err := s.CompareAndSwap([]byte("cas-other"), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(k, v1, []byte("stale")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale version after another write: %v", err)
	}
	v3, err := s.CompareAndSwap(k, v2, []byte("three"))
	if err != nil || v3 <= v2 {
		t.Fatalf("swap: %d after %d, %v", v3, v2, err)
	}
}

func testDelete(t *testing.T, s vault.Store) {
	k := []byte("del")
	v1, err := s.CompareAndSwap(k, 0, []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := s.CompareAndSwap(k, v1, []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(k, v1); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := s.Delete(k, 0); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("delete with version 0: %v", err)
	}
	if err := s.Delete(k, v2); err != nil {
		t.Fatal(err)
	}
	if val, ver, err := s.Get(k); val != nil || ver != 0 || err != nil {
		t.Fatalf("after delete: %q %d %v", val, ver, err)
	}
	if err := s.Delete(k, v2); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.CompareAndSwap(k, v2, []byte("ghost")); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("swap of a deleted key with its old version: %v", err)
	}
	v3, err := s.CompareAndSwap(k, 0, []byte("three"))
	if err != nil || v3 <= v2 {
		t.Fatalf("versions must not repeat after a delete: %d after %d (%v)", v3, v2, err)
	}
	if v3 == v1 || v3 == v2 {
		t.Fatal("a version repeated")
	}
}

func testBinary(t *testing.T, s vault.Store) {
	// Record keys are HMAC outputs: any bytes, including ones that look
	// like separators, and prefixes of each other.
	keys := [][]byte{{0}, {0, 0}, {0xff, '/', 0}, []byte("bin/"), []byte("bin"), bytes.Repeat([]byte{0xa5}, 32)}
	vers := make([]uint64, len(keys))
	for i, k := range keys {
		v, err := s.CompareAndSwap(k, 0, append([]byte{0, byte(i)}, k...))
		if err != nil {
			t.Fatalf("key %x: %v", k, err)
		}
		vers[i] = v
	}
	for i, k := range keys {
		val, ver, err := s.Get(k)
		if err != nil || ver != vers[i] || !bytes.Equal(val, append([]byte{0, byte(i)}, k...)) {
			t.Fatalf("key %x: %x %d %v", k, val, ver, err)
		}
	}
	// An empty value is a value, not an absence.
	v, err := s.CompareAndSwap([]byte("empty"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if val, ver, err := s.Get([]byte("empty")); len(val) != 0 || ver != v || err != nil {
		t.Fatalf("empty value: %q %d %v", val, ver, err)
	}
}

// testConcurrent runs workers goroutines that each add n to a counter by
// read-modify-write with retry on conflict: the result must be exact.
func testConcurrent(t *testing.T, s vault.Store, key string, workers, n int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conflicts := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				for {
					val, ver, err := s.Get([]byte(key))
					if err != nil {
						t.Error(err)
						return
					}
					c := 0
					if val != nil {
						fmt.Sscan(string(val), &c)
					}
					_, err = s.CompareAndSwap([]byte(key), ver, []byte(fmt.Sprint(c+1)))
					if errors.Is(err, vault.ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	if got := readCounter(t, s, key); got != workers*n {
		t.Fatalf("counter %d, want %d (%d conflicts retried)", got, workers*n, conflicts)
	}
	t.Logf("%d increments, %d conflicts retried", workers*n, conflicts)
}

func readCounter(t *testing.T, s vault.Store, key string) int {
	t.Helper()
	val, _, err := s.Get([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	fmt.Sscan(string(val), &c)
	return c
}
