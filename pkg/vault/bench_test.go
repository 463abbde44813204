package vault_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The benchmarks (timed phases in vaulttest.BenchRegister/BenchLogin)
// measure the vault's own cost, one instance on bbolt, whose Batch commits
// many counts per fsync. Run:
//
//	go test -run '^$' -bench . -benchtime 4000x ./pkg/vault

func benchServer(b *testing.B, withHSM bool) http.Handler {
	cfg := vault.Config{MaxGuesses: 10, LoginTimeout: time.Hour}
	if withHSM {
		h := vaulttest.SoftHSM(b)
		s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true, Sessions: 8})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		cfg.Sealer = s
	}
	return newEnv(b, cfg).srv.Handler()
}

func BenchmarkRegister(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchRegister(b, []http.Handler{benchServer(b, withHSM)})
		})
	}
}

// BenchmarkLogin measures full logins (KE1 → KE2 with a durable count,
// KE3 → release with a durable reset), server side only.
func BenchmarkLogin(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchLogin(b, []http.Handler{benchServer(b, withHSM)})
		})
	}
}
