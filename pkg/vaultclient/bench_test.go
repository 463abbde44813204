package vaultclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// BenchmarkRecoverThreeVaults is what a user waits for on a restore
// through threshold escrow, less the network: one recovery with the right
// password by pkg/threshold's client through three Realms (this package,
// HTTPS, TLS 1.3) to three wabackup-vault processes on loopback, each
// with its own SoftHSM2 token and bbolt store, threshold 2. Every
// recovery is timed on its own; the median and the 99th percentile are
// reported (ms-median, ms-p99), nothing is asserted about them. With the
// default Argon2id profile it is the real wait; with a minimal one, the
// protocol's and the vaults' share of it.
//
//	go test -run '^$' -bench RecoverThreeVaults -benchtime 200x ./pkg/vaultclient
func BenchmarkRecoverThreeVaults(b *testing.B) {
	var vaults []*vaulttest.Vault
	for range 3 {
		vaults = append(vaults, vaulttest.Start(b, vaulttest.Options{HSM: vaulttest.SoftHSM(b)}))
	}
	for _, kdf := range []struct {
		name string
		p    threshold.KDFParams
	}{
		{"argon2id=default", threshold.DefaultKDF},
		{"argon2id=minimal", cheapKDF},
	} {
		cred := api.CredentialID(fmt.Sprintf("bench-%x", randBytes(8)), "")
		ctx := context.Background()
		var realms []*vaultclient.Realm
		var trs []threshold.Realm
		for _, v := range vaults {
			r, err := vaultclient.NewRealm(v.URL, cred, vaultclient.RealmOptions{Options: vaultclient.Options{CACertFile: v.CACert, PinFile: "-"}})
			if err != nil {
				b.Fatal(err)
			}
			realms, trs = append(realms, r), append(trs, r)
		}
		cfg := config(b, realms, 2, cred)
		cfg.KDF = kdf.p
		c, err := threshold.NewClient(cfg, trs)
		if err != nil {
			b.Fatal(err)
		}
		secret := randBytes(32)
		if err := c.Register(ctx, []byte("correct horse battery staple"), secret, 10); err != nil {
			b.Fatal(err)
		}
		b.Run(kdf.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				rec, err := c.Recover(ctx, []byte("correct horse battery staple"))
				lat = append(lat, time.Since(start))
				if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 0 {
					b.Fatalf("recover: %v %v", rec, err)
				}
			}
			slices.Sort(lat)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(lat[len(lat)/2]), "ms-median")
			b.ReportMetric(ms(lat[(len(lat)*99+99)/100-1]), "ms-p99")
		})
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
