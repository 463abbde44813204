package vault

import (
	"bytes"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A crash in the first upgrade, after its "making" record and epoch key
// and before its commit landed, does not make the plain store look like a
// copy from before an upgrade: the next open takes it over, and records
// that the table was made.
func TestUpgradeAfterACrashInTheFirstCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vault.db")
	r, err := OpenFileSealer(filepath.Join(dir, "seal.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bs.CompareAndSwap([]byte("k"), 0, []byte("v")); err != nil {
		t.Fatal(err)
	}
	bs.Close()
	// What the first open did before the crash.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	tid, err := (&boltRatchet{db: db, path: path}).Init(randBytes(8))
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Record(append(bytes.Clone(recordMaking), tid...)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.NewEpochKey(tid); err != nil {
		t.Fatal(err)
	}

	st, err := OpenRatchet(path, r)
	if err != nil {
		t.Fatalf("the open after a crash in the first upgrade: %v", err)
	}
	if got, _, err := st.Get([]byte("k")); err != nil || string(got) != "v" {
		t.Fatalf("taken over: %q %v", got, err)
	}
	st.Close()
	recs, err := r.Records()
	if err != nil {
		t.Fatal(err)
	}
	made := false
	for _, rec := range recs {
		made = made || bytes.Equal(rec, append(bytes.Clone(recordMade), tid...))
	}
	if !made {
		t.Fatal("the upgrade is not recorded in the sealer")
	}
}
