package etcdstore_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The benchmarks mirror pkg/vault's (timed phases in
// vaulttest.BenchRegister/BenchLogin), with three vault instances sharing
// a 3-member etcd cluster on this machine; request i goes to instance i%3
// (KE1 and KE3 of a login to the same one). Run:
//
//	go test -run '^$' -bench . -benchtime 4000x ./pkg/vault/etcdstore

func benchInstances(b *testing.B, withHSM bool) []http.Handler {
	c := testservers.Etcd(b, 3)
	s := newSite(b, c, vault.Config{MaxGuesses: 10, LoginTimeout: time.Hour})
	s.timeout = 10 * time.Second
	if withHSM {
		// One SoftHSM2 token, one sealer shared by the three instances:
		// in production, one HSM cluster whose members at each site
		// replicate the token's keys.
		h := vaulttest.SoftHSM(b)
		hs, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true, Sessions: 8})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hs.Close() })
		s.sealer = hs
	}
	var hs []http.Handler
	for _, in := range s.instances(b, 3) {
		hs = append(hs, in.srv.Handler())
	}
	return hs
}

func BenchmarkRegister(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchRegister(b, benchInstances(b, withHSM))
		})
	}
}

// BenchmarkLogin measures full logins (KE1 → KE2 with a count committed by
// a majority, KE3 → release with a committed reset), server side only.
func BenchmarkLogin(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchLogin(b, benchInstances(b, withHSM))
		})
	}
}

// BenchmarkRealmRecover measures recoveries at one realm of three
// instances (recover1, recover2 with a count committed by a majority,
// recover3 with a committed reset), server side only.
func BenchmarkRealmRecover(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(vaulttest.SealerName(withHSM), func(b *testing.B) {
			vaulttest.BenchRealmRecover(b, benchInstances(b, withHSM))
		})
	}
}
