package opaque

import "testing"

// BenchmarkServerLogin measures the server's side of one login, KE2 plus
// Finish, for ristretto255-SHA512. The client's KE1 and KE3 are computed with
// the timer stopped.
func BenchmarkServerLogin(b *testing.B) {
	p := newFuzzParty(b, Ristretto255SHA512)
	pw := []byte("pw")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ke1, cst, err := p.client.KE1(pw)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		ke2, sst, err := p.server.KE2(ke1, fuzzCredID, nil, p.record)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		ke3, _, _, err := p.client.KE3(cst, ke2)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := p.server.Finish(sst, ke3); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerLoginFake is the same for an unknown credential (fake
// record); it should cost the same as BenchmarkServerLogin.
func BenchmarkServerLoginFake(b *testing.B) {
	p := newFuzzParty(b, Ristretto255SHA512)
	ke1, _, err := p.client.KE1([]byte("pw"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := p.server.KE2(ke1, []byte("ghost"), nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}
