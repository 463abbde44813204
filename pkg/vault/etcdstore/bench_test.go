package etcdstore_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The benchmarks mirror pkg/vault's: the vault's own cost, with the
// client's side of OPAQUE (opaque.IdentityKSF, no Argon2id) computed
// outside the timed phases and the handlers called directly (no TLS). Here
// three vault instances share a 3-member etcd cluster on this machine;
// request i goes to instance i%3 (KE1 and KE3 of a login to the same
// one), from `workers` goroutines. Run:
//
//	go test -run '^$' -bench . -benchtime 4000x ./pkg/vault/etcdstore

const workers = 64

func benchInstances(b *testing.B, withHSM bool) []http.Handler {
	c := testservers.Etcd(b, 3)
	s := newSite(b, c, vault.Config{MaxGuesses: 10, LoginTimeout: time.Hour})
	s.timeout = 10 * time.Second
	if withHSM {
		// One SoftHSM2 token, one sealer shared by the three instances (in
		// production each site has its own HSM with the same key).
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

func call(b *testing.B, h http.Handler, path string, in, out any) {
	body, _ := json.Marshal(in)
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.RemoteAddr = "127.0.0.1:1"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != 200 {
		b.Errorf("%s: %d %s", path, w.Code, w.Body)
		return
	}
	if out != nil {
		if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
			b.Error(err)
		}
	}
}

func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

var benchClient, _ = api.Suite.NewClient(opaque.IdentityKSF{}, opaque.Identities{}, api.Context)

func register(b *testing.B, hs []http.Handler, n int, prefix string, timed bool) {
	reqs := make([][]byte, n)
	states := make([]*opaque.ClientRegistrationState, n)
	parallel(n, func(i int) {
		r, st, err := benchClient.RegistrationRequest([]byte("password"))
		if err != nil {
			b.Error(err)
		}
		reqs[i], _ = r.MarshalBinary()
		states[i] = st
	})
	resps := make([]api.RegisterStartReply, n)
	if timed {
		b.StartTimer()
	}
	parallel(n, func(i int) {
		call(b, hs[i%len(hs)], api.PathRegisterStart, api.RegisterStart{CredentialID: []byte(fmt.Sprint(prefix, i)), Request: reqs[i]}, &resps[i])
	})
	if timed {
		b.StopTimer()
	}
	recs := make([][]byte, n)
	parallel(n, func(i int) {
		resp, err := api.Suite.UnmarshalRegistrationResponse(resps[i].Response)
		if err != nil {
			b.Error(err)
			return
		}
		rec, _, err := benchClient.FinalizeRegistration(states[i], resp)
		if err != nil {
			b.Error(err)
			return
		}
		recs[i], _ = rec.MarshalBinary()
	})
	if timed {
		b.StartTimer()
	}
	parallel(n, func(i int) {
		call(b, hs[i%len(hs)], api.PathRegisterFinish, api.RegisterFinish{CredentialID: []byte(fmt.Sprint(prefix, i)), Record: recs[i], Blob: make([]byte, 60)}, nil)
	})
	if timed {
		b.StopTimer()
	}
}

func sealerName(withHSM bool) string {
	if withHSM {
		return "softhsm"
	}
	return "filekey"
}

func BenchmarkRegister(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(sealerName(withHSM), func(b *testing.B) {
			hs := benchInstances(b, withHSM)
			b.StopTimer()
			b.ResetTimer()
			register(b, hs, b.N, "reg-", true)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
		})
	}
}

// BenchmarkLogin measures full logins (KE1 → KE2 with a count committed by
// a majority, KE3 → release with a committed reset), server side only.
func BenchmarkLogin(b *testing.B) {
	for _, withHSM := range []bool{false, true} {
		b.Run(sealerName(withHSM), func(b *testing.B) {
			hs := benchInstances(b, withHSM)
			b.StopTimer()
			nrec := b.N/5 + 1
			register(b, hs, nrec, "login-", false)
			ke1s := make([][]byte, b.N)
			sts := make([]*opaque.ClientLoginState, b.N)
			parallel(b.N, func(i int) {
				k, st, err := benchClient.KE1([]byte("password"))
				if err != nil {
					b.Error(err)
				}
				ke1s[i], _ = k.MarshalBinary()
				sts[i] = st
			})
			replies := make([]api.LoginStartReply, b.N)
			b.ResetTimer()
			b.StartTimer()
			parallel(b.N, func(i int) {
				call(b, hs[i%len(hs)], api.PathLoginStart, api.LoginStart{CredentialID: []byte(fmt.Sprint("login-", i%nrec)), KE1: ke1s[i]}, &replies[i])
			})
			b.StopTimer()
			ke3s := make([][]byte, b.N)
			parallel(b.N, func(i int) {
				ke2, err := api.Suite.UnmarshalKE2(replies[i].KE2)
				if err != nil {
					b.Error(err)
					return
				}
				ke3, _, _, err := benchClient.KE3(sts[i], ke2)
				if err != nil {
					b.Error(err)
					return
				}
				ke3s[i], _ = ke3.MarshalBinary()
			})
			b.StartTimer()
			parallel(b.N, func(i int) {
				call(b, hs[i%len(hs)], api.PathLoginFinish, api.LoginFinish{LoginID: replies[i].LoginID, KE3: ke3s[i]}, &api.LoginFinishReply{})
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
		})
	}
}
