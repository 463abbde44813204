package vaulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// The vault benchmarks of pkg/vault (one instance on bbolt) and
// pkg/vault/etcdstore (three instances on etcd) share their timed phases:
// they measure the vault's own cost, with the client's side of OPAQUE
// (opaque.IdentityKSF, so no Argon2id) computed outside the timer and the
// handlers called directly (no TLS). Request i goes to handler i%len(hs)
// (KE1 and KE3 of a login to the same one), from BenchWorkers goroutines,
// so stores that batch commits can commit many counts at once.

// BenchWorkers is how many requests the benchmarks keep in flight.
const BenchWorkers = 64

// SealerName names a benchmark's sealer.
func SealerName(withHSM bool) string {
	if withHSM {
		return "softhsm"
	}
	return "filekey"
}

// BenchRegister times b.N registrations (both requests of each).
func BenchRegister(b *testing.B, hs []http.Handler) {
	b.StopTimer()
	b.ResetTimer()
	register(b, hs, b.N, "reg-", true)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}

// BenchLogin times b.N full logins (KE1 → KE2 with a durable count, KE3 →
// release with a durable reset).
func BenchLogin(b *testing.B, hs []http.Handler) {
	b.StopTimer()
	// Every record gets at most 5 logins in flight (limit 10).
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

// parallel runs f(i) for i < n on BenchWorkers goroutines.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range BenchWorkers {
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

// register registers n credentials (untimed helper or timed phases).
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
		call(b, hs[i%len(hs)], api.PathRegisterFinish, api.RegisterFinish{CredentialID: []byte(fmt.Sprint(prefix, i)), Record: recs[i], Blob: make([]byte, 60), State: resps[i].State}, nil)
	})
	if timed {
		b.StopTimer()
	}
}

// benchRealmRecords is how many users BenchRealmRecover spreads its
// recoveries over: more than BenchWorkers, so that concurrent recoveries
// seldom share a record (they would only retry their compare-and-swap).
const benchRealmRecords = 256

// BenchRealmRecover times b.N recoveries at one realm, each its three
// requests in turn — recover1 (the version), recover2 (a durable count,
// then the evaluation and its proof), recover3 (the right unlock tag: a
// durable reset, then the share) — from BenchWorkers goroutines; request
// i goes to handler i%len(hs), all three of a recovery to the same one.
// The client's work is done before the timer: users are registered
// through pkg/threshold (one realm, threshold 1), and one recovery each
// records the requests the timed ones replay (the same blinded input:
// the realm's cost does not depend on it).
func BenchRealmRecover(b *testing.B, hs []http.Handler) {
	b.StopTimer()
	ctx := context.Background()
	reps := make([]Replica, len(hs))
	for i, h := range hs {
		reps[i] = Replica{Handler: h}
	}
	rc, err := reps[0].RealmConfig(ctx)
	if err != nil {
		b.Fatal(err)
	}
	nrec := min(b.N, benchRealmRecords)
	recover2s, recover3s := make([][]byte, nrec), make([][]byte, nrec)
	parallel(nrec, func(i int) {
		cred := []byte(fmt.Sprint("realm-", i))
		var r2, r3 []byte
		tr := &Realm{Replicas: reps, CredentialID: cred, Observe: func(path string, _, _ int, req, _ []byte) {
			switch path {
			case api.PathRealmRecover2:
				r2 = req
			case api.PathRealmRecover3:
				r3 = req
			}
		}}
		c, err := threshold.NewClient(threshold.Config{Realms: []threshold.RealmConfig{rc}, Threshold: 1,
			KDF: threshold.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, UserInfo: cred}, []threshold.Realm{tr})
		if err == nil {
			err = c.Register(ctx, []byte("password"), make([]byte, threshold.SecretSize), 10)
		}
		if err == nil {
			_, err = c.Recover(ctx, []byte("password"))
		}
		if err != nil {
			b.Error(err)
			return
		}
		recover2s[i], recover3s[i] = r2, r3
	})
	if b.Failed() {
		return
	}
	// The client's side of the realm channel too: each request's channel
	// message is made before the timer, each answer opened after it.
	recover1, _ := (&threshold.Recover1Request{}).MarshalBinary()
	paths := [3]string{api.PathRealmRecover1, api.PathRealmRecover2, api.PathRealmRecover3}
	type sealed struct {
		msg  []byte
		open func(int, string, []byte) (int, []byte, error)
		code int
		resp []byte
		ct   string
	}
	reqs := make([][3]sealed, b.N)
	parallel(b.N, func(i int) {
		k := i % nrec
		cred := []byte(fmt.Sprint("realm-", k))
		for j, m := range [3][]byte{recover1, recover2s[k], recover3s[k]} {
			body, _ := json.Marshal(api.RealmRequest{CredentialID: cred, Message: m})
			msg, open, err := Seal(rc.PublicKey, paths[j], body)
			if err != nil {
				b.Error(err)
				return
			}
			reqs[i][j] = sealed{msg: msg, open: open}
		}
	})
	b.ResetTimer()
	b.StartTimer()
	parallel(b.N, func(i int) {
		rep := reps[i%len(reps)]
		for j := range paths {
			q := &reqs[i][j]
			var err error
			if q.code, q.resp, q.ct, err = rep.PostRaw(ctx, paths[j], api.RealmChannelType, q.msg); err != nil || q.code != http.StatusOK {
				b.Errorf("%s: %d %s %v", paths[j], q.code, q.resp, err)
				return
			}
		}
	})
	b.StopTimer()
	parallel(b.N, func(i int) {
		for j := range paths {
			q := &reqs[i][j]
			code, resp, err := q.open(q.code, q.ct, q.resp)
			var out api.RealmReply
			if err == nil && code == http.StatusOK {
				err = json.Unmarshal(resp, &out)
			}
			if err == nil {
				var st threshold.Status
				switch j {
				case 0:
					r, derr := threshold.UnmarshalRecover1Response(out.Message)
					if err = derr; err == nil {
						st = r.Status
					}
				case 1:
					r, derr := threshold.UnmarshalRecover2Response(out.Message)
					if err = derr; err == nil {
						st = r.Status
					}
				case 2:
					r, derr := threshold.UnmarshalRecover3Response(out.Message)
					if err = derr; err == nil {
						st = r.Status
					}
				}
				if err == nil && st != threshold.StatusOK {
					err = fmt.Errorf("status %v", st)
				}
			}
			if err != nil || code != http.StatusOK {
				b.Errorf("%s: %d %v", paths[j], code, err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "recoveries/s")
}
