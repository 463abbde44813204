package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// BenchmarkHTTPSLogin is a load generator against the real binary
// (SoftHSM2 sealer, bbolt, TLS 1.3): 32 clients log in concurrently with
// opaque.IdentityKSF. The client's OPAQUE work and TLS run on the same
// cores as the vault, so this is a lower bound for the server alone
// (pkg/vault's BenchmarkLogin measures that).
//
//	go test -run '^$' -bench HTTPS -benchtime 3000x ./cmd/wabackup-vault
func BenchmarkHTTPSLogin(b *testing.B) {
	v := vaulttest.Start(b, vaulttest.Options{HSM: vaulttest.SoftHSM(b)})
	c, err := vaultclient.New(v.URL, vaultclient.Options{CACertFile: v.CACert, KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const clients = 32
	for i := range clients {
		if _, _, err := c.Register(ctx, api.CredentialID(fmt.Sprint("bench", i), ""), []byte("pw"), make([]byte, 32), 0); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := api.CredentialID(fmt.Sprint("bench", i), "")
			for next.Add(1) <= int64(b.N) {
				if _, err := c.Recover(ctx, id, []byte("pw")); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}
