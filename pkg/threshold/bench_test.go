package threshold

import (
	"bytes"
	"context"
	"testing"
)

// BenchmarkRecover is one recovery with the right password by a client
// from three in-memory realms, threshold 2, every message and record encoded
// and decoded on the way. With the default Argon2id profile it is what a
// user waits for (less the network); with a minimal profile it is the
// protocol's own cost. realm-ns/recovery is the time one realm spends on one
// recovery (its three requests, with their decoding and encoding and the
// record's), averaged over the three.
func BenchmarkRecover(b *testing.B) {
	for _, kdf := range []struct {
		name string
		p    KDFParams
	}{
		{"argon2id=default", DefaultKDF},
		{"argon2id=minimal", testKDF},
	} {
		b.Run(kdf.name, func(b *testing.B) {
			e := newEnvKDF(b, 3, 2, kdf.p)
			secret := e.register(b, "correct horse battery staple")
			for _, r := range e.realms {
				r.serverNanos.Store(0)
			}
			n := 0
			for b.Loop() {
				rec, err := e.recover("correct horse battery staple")
				if err != nil || !bytes.Equal(rec.Secret, secret) {
					b.Fatal(err)
				}
				n++
			}
			var realm int64
			for _, r := range e.realms {
				realm += r.serverNanos.Load()
			}
			b.ReportMetric(float64(realm)/float64(n)/float64(len(e.realms)), "realm-ns/recovery")
		})
	}
}

// BenchmarkRealmRecovery is one realm's side of one recovery, called
// directly: recover1, recover2 (evaluation and proof) and recover3 with the
// right tag, over a store that decodes and encodes the record each time.
// Its inverse is a realm's recoveries per second per core, before storage
// and transport costs.
func BenchmarkRealmRecovery(b *testing.B) {
	f := newRealmFixture(b)
	ctx := context.Background()
	reg := f.reqs[0]
	if _, err := f.srv.Register2(ctx, f.st, reg); err != nil {
		b.Fatal(err)
	}
	r2 := &Recover2Request{Version: reg.Version, BlindedAccessKey: randomElementBytes()}
	r3 := &Recover3Request{Version: reg.Version, UnlockKeyTag: reg.UnlockKeyTag}
	for b.Loop() {
		if r, err := f.srv.Recover1(ctx, f.st, &Recover1Request{}); err != nil || r.Status != StatusOK {
			b.Fatal(r, err)
		}
		if r, err := f.srv.Recover2(ctx, f.st, r2); err != nil || r.Status != StatusOK {
			b.Fatal(r, err)
		}
		if r, err := f.srv.Recover3(ctx, f.st, r3); err != nil || r.Status != StatusOK {
			b.Fatal(r, err)
		}
	}
}
