package vaultclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// mitm is a TLS proxy in front of a vault, holding a certificate the
// client trusts (every httptest server has the same one): it records every
// body it relays and, in replay mode, answers each POST with the first
// answer it saw for that path instead of asking the vault.
type mitm struct {
	ts     *httptest.Server
	mu     sync.Mutex
	seen   [][]byte
	first  map[string][]byte
	replay atomic.Bool
	swap   atomic.Pointer[[]byte] // a public key to announce in /v2/info instead of the vault's
}

func startMITM(t *testing.T, target testRealm) *mitm {
	m := &mitm{first: map[string][]byte{}}
	m.ts = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m.mu.Lock()
		m.seen = append(m.seen, body)
		old, replayable := m.first[r.URL.Path]
		m.mu.Unlock()
		if m.replay.Load() && replayable {
			w.Header().Set("Content-Type", api.RealmChannelType)
			w.Write(old)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target.URL+r.URL.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := target.client.Do(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if k := m.swap.Load(); k != nil && r.URL.Path == api.PathRealmInfo {
			var in api.RealmInfo
			json.Unmarshal(out, &in)
			in.PublicKey, in.Fingerprint = *k, api.Fingerprint(*k)
			out, _ = json.Marshal(in)
		}
		m.mu.Lock()
		m.seen = append(m.seen, out)
		if _, ok := m.first[r.URL.Path]; !ok && r.Method == http.MethodPost {
			m.first[r.URL.Path] = out
		}
		m.mu.Unlock()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	}))
	t.Cleanup(m.ts.Close)
	return m
}

// spy is a threshold.Realm that keeps every secret the client sends to
// or receives from one realm: the messages in their binary encodings and
// the fields a man in the middle would want (the unlock tag above all).
type spy struct {
	threshold.Realm
	mu       sync.Mutex
	secrets  [][]byte
	messages [][]byte
}

func (s *spy) add(b ...[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets = append(s.secrets, b...)
}

func (s *spy) addMessage(m interface{ MarshalBinary() ([]byte, error) }) {
	b, _ := m.MarshalBinary()
	// A JSON envelope in the clear would carry it in base64.
	s.add(b, []byte(base64.StdEncoding.EncodeToString(b)))
	s.mu.Lock()
	s.messages = append(s.messages, b)
	s.mu.Unlock()
}

func (s *spy) Register2(ctx context.Context, req *threshold.Register2Request) (*threshold.Register2Response, error) {
	s.addMessage(req)
	s.add(req.UnlockKeyTag[:], req.OPRFKeyShare[:], req.EncryptionKeyScalarShare[:], req.EncryptedSecret[:])
	return s.Realm.Register2(ctx, req)
}

func (s *spy) Recover2(ctx context.Context, req *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	s.addMessage(req)
	resp, err := s.Realm.Recover2(ctx, req)
	if err == nil {
		s.addMessage(resp)
		s.add(resp.BlindedResult[:])
	}
	return resp, err
}

func (s *spy) Recover3(ctx context.Context, req *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	s.addMessage(req)
	s.add(req.UnlockKeyTag[:])
	resp, err := s.Realm.Recover3(ctx, req)
	if err == nil {
		s.addMessage(resp)
		s.add(resp.EncryptionKeyScalarShare[:], resp.EncryptedSecret[:])
	}
	return resp, err
}

// leaked returns how many of the spy's secrets appear in what the man in
// the middle saw.
func leaked(s *spy, seen [][]byte) int {
	n := 0
	for _, sec := range s.secrets {
		for _, b := range seen {
			if bytes.Contains(b, sec) {
				n++
				break
			}
		}
	}
	return n
}

// A man in the middle of one realm's connection, with a TLS certificate
// the client trusts, relays a registration and two recoveries: it sees no
// unlock tag, no key share, no evaluation and no encrypted secret (the
// same check finds every one of them in the plain JSON the realm API
// carries inside its channel). When it answers in the realm's name —
// replaying the realm's earlier answers, or announcing its own key — the
// client refuses the answers (a *ChannelError, or the pin), counts the
// realm as failed, and recovers with the other two.
func TestRealmChannelAgainstManInTheMiddle(t *testing.T) {
	trs := startRealms(t, 3)
	m := startMITM(t, trs[0])
	pinFile := filepath.Join(t.TempDir(), "vaults.json")
	cred := api.CredentialID("repo", "")
	urls := []string{m.ts.URL, trs[1].URL, trs[2].URL}
	var realms []*vaultclient.Realm
	var tr []threshold.Realm
	sp := &spy{}
	for i, u := range urls {
		r, err := vaultclient.NewRealm(u, cred, realmOpts(trs[i], pinFile))
		if err != nil {
			t.Fatal(err)
		}
		realms = append(realms, r)
		if i == 0 {
			sp.Realm = r
			tr = append(tr, sp)
		} else {
			tr = append(tr, r)
		}
	}
	ctx := context.Background()
	c, cfg, secret := registered(t, realms, tr, cred)
	for range 2 {
		rec, err := c.Recover(ctx, []byte("pw"))
		if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 0 {
			t.Fatalf("recover through the relay: %v %v", rec, err)
		}
	}
	m.mu.Lock()
	seen := append([][]byte(nil), m.seen...)
	m.mu.Unlock()
	if len(sp.secrets) < 20 || len(seen) < 10 {
		t.Fatalf("%d secrets, %d bodies seen", len(sp.secrets), len(seen))
	}
	if n := leaked(sp, seen); n != 0 {
		t.Fatalf("the man in the middle saw %d of the %d secrets", n, len(sp.secrets))
	}
	// Control: the same check finds every message in the JSON bodies the
	// realm API carries inside the channel.
	var plain [][]byte
	for _, msg := range sp.messages {
		b, _ := json.Marshal(api.RealmRequest{CredentialID: cred, Message: msg})
		plain = append(plain, b)
	}
	if n := leaked(sp, plain); n < len(sp.messages) {
		t.Fatalf("the check finds %d of %d messages in plain JSON", n, len(sp.messages))
	}

	// Replayed answers.
	m.replay.Store(true)
	rec, err := c.Recover(ctx, []byte("pw"))
	var ce *vaultclient.ChannelError
	if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 1 || rec.Problems[0].Index != 1 || !errors.As(rec.Problems[0], &ce) {
		t.Fatalf("recover with replayed answers from realm 1: %v %v", rec, err)
	}
	m.replay.Store(false)

	// Its own key in /v2/info: the pin (recorded on first use) refuses it.
	_, pub := newRistretto(t)
	m.swap.Store(&pub)
	r, _ := vaultclient.NewRealm(m.ts.URL, cred, realmOpts(trs[0], pinFile))
	c2, _ := threshold.NewClient(cfg, []threshold.Realm{r, realms[1], realms[2]})
	rec, err = c2.Recover(ctx, []byte("pw"))
	var pm *vaultclient.PinMismatchError
	if err != nil || !bytes.Equal(rec.Secret, secret) || len(rec.Problems) != 1 || !errors.As(rec.Problems[0], &pm) {
		t.Fatalf("recover with a substituted key at realm 1: %v %v", rec, err)
	}
	// A wrong password is still a wrong password.
	var wp *threshold.WrongPasswordError
	if _, err := c2.Recover(ctx, []byte("nope")); !errors.As(err, &wp) {
		t.Fatalf("a wrong password with realm 1 impersonated: %v", err)
	}
}

func newRistretto(t *testing.T) (priv, pub []byte) {
	priv, pub, err := noise.Ristretto255.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}
