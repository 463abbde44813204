package vault_test

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The benchmarks (timed phases in vaulttest.BenchRegister/BenchLogin)
// measure the vault's own cost, one instance on the single-site store the
// vault binary uses (RatchetStore on bbolt: grouped commits, one fsync and
// one new epoch key per group). Run:
//
//	go test -run '^$' -bench . -benchtime 4000x ./pkg/vault

func benchServer(b *testing.B, withHSM bool) http.Handler {
	cfg := vault.Config{MaxGuesses: 10, LoginTimeout: time.Hour}
	dir := b.TempDir()
	var r interface {
		vault.Sealer
		vault.Ratchet
	}
	if withHSM {
		h := vaulttest.SoftHSM(b)
		s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true, Sessions: 8})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		r = s
	} else {
		s, err := vault.OpenFileSealer(filepath.Join(dir, "seal.key"), true)
		if err != nil {
			b.Fatal(err)
		}
		r = s
	}
	cfg.Sealer = r
	st, err := vault.OpenRatchet(filepath.Join(dir, "vault.db"), r)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return newEnvStore(b, cfg, st).srv.Handler()
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

// BenchmarkRealmRecover measures recoveries at one realm (recover1,
// recover2 with a durable count, recover3 with a durable reset), server
// side only.
func BenchmarkRealmRecover(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchRealmRecover(b, []http.Handler{benchServer(b, withHSM)})
		})
	}
}
