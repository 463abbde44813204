package hsm_test

import (
	"testing"

	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// BenchmarkEpochKey measures what every RatchetStore commit asks of the
// HSM: make an epoch key, seal a root under it, destroy the key before.
//
//	go test -run '^$' -bench EpochKey ./pkg/vault/hsm
func BenchmarkEpochKey(b *testing.B) {
	h := vaulttest.SoftHSM(b)
	s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	root := make([]byte, 2100)
	var prev []byte
	for b.Loop() {
		id, err := s.NewEpochKey([]byte("bench"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.SealEpoch(id, root, []byte("aad")); err != nil {
			b.Fatal(err)
		}
		if prev != nil {
			if err := s.DestroyEpochKey(prev); err != nil {
				b.Fatal(err)
			}
		}
		prev = id
	}
}
