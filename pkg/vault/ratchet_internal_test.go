package vault

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A vault.db whose root is a "WRT1" one (the bucket keys in the root, no
// epoch key id beside it: written before the groups) opens, and its next
// commit writes a root with groups.
func TestRatchetOpensFlatRoot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vault.db")
	r, err := NewKeySealer(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenRatchet(path, r)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := st.CompareAndSwap([]byte(fmt.Sprint("k", i)), 0, []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	st.mu.RLock()
	flat := append([]byte(nil), ratchetMagic...)
	flat = binary.BigEndian.AppendUint64(flat, st.seq)
	for i := range st.bkeys {
		flat = append(flat, st.bkeys[i][:]...)
	}
	epoch := st.epoch
	st.mu.RUnlock()
	st.Close()
	sealed, err := r.SealEpoch(epoch, flat, ratchetRootAAD)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(ratchetTable)
		for g := range ratchetGroups {
			if err := tb.Delete(bucketName16(groupBlob(g))); err != nil {
				return err
			}
		}
		if err := tb.Delete(ratchetEpoch); err != nil {
			return err
		}
		return tb.Put(ratchetRoot, sealed)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for round := range 3 {
		st, err := OpenRatchet(path, r)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i := range 50 {
			got, _, err := st.Get([]byte(fmt.Sprint("k", i)))
			if err != nil || string(got) != fmt.Sprint("v", i) {
				t.Fatalf("round %d: k%d = %q %v", round, i, got, err)
			}
		}
		if _, err := st.CompareAndSwap([]byte(fmt.Sprint("new", round)), 0, []byte("x")); err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
}
