package main

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/wabackup/wabackup/pkg/escrow"
	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// channelRelay is the attacker of issue 23's finding 1: a TLS server with a
// certificate the client trusts and a realm-channel key of its own, standing
// in front of a real vault. It answers /v2/info with the vault's realm id and
// its own key, ends every realm-channel request at its own key, reads it,
// and sends it on in a channel of its own to the vault's key; the answer
// goes back the same way. It records the path of every request it read.
type channelRelay struct {
	ts        *httptest.Server
	priv, pub []byte
	vault     string // the real vault's URL
	vaultKey  []byte
	client    *http.Client // trusts the real vault

	mu   sync.Mutex
	read []string // paths of the requests it read in plain
}

func startChannelRelay(t *testing.T, vaultURL, caCert string) *channelRelay {
	t.Helper()
	priv, pub, err := noise.Ristretto255.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := &channelRelay{priv: priv, pub: pub, vault: vaultURL}
	r.client = vaultHTTPClient(t, caCert)
	resp, err := r.client.Get(vaultURL + api.PathRealmInfo)
	if err != nil {
		t.Fatal(err)
	}
	var in api.RealmInfo
	err = json.NewDecoder(resp.Body).Decode(&in)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	r.vaultKey = in.PublicKey
	r.ts = httptest.NewTLSServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.ts.Close)
	return r
}

func (r *channelRelay) fingerprint() string { return api.Fingerprint(r.pub) }

func (r *channelRelay) paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.read)
}

func (r *channelRelay) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if req.Method == http.MethodGet && req.URL.Path == api.PathRealmInfo {
		resp, err := r.client.Get(r.vault + api.PathRealmInfo)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		var in api.RealmInfo
		json.NewDecoder(resp.Body).Decode(&in)
		resp.Body.Close()
		in.PublicKey, in.Fingerprint = r.pub, r.fingerprint()
		json.NewEncoder(w).Encode(in)
		return
	}
	ctype := req.Header.Get("Content-Type")
	if ctype == api.RealmChannelType {
		prologue := api.RealmPrologue(req.URL.Path)
		pt, rs, err := noise.ReadRequest(noise.Ristretto255, r.priv, r.pub, prologue, body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.read = append(r.read, req.URL.Path)
		r.mu.Unlock()
		msg, toVault, err := noise.WriteRequest(noise.Ristretto255, r.vaultKey, prologue, pt, rand.Reader)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		out, code, octype, err := r.forward(req, msg, ctype)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		if code == http.StatusOK && octype == api.RealmChannelType {
			inner, err := toVault.ReadResponse(out)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			if out, err = rs.WriteResponse(inner, rand.Reader); err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
		}
		w.Header().Set("Content-Type", octype)
		w.WriteHeader(code)
		w.Write(out)
		return
	}
	out, code, octype, err := r.forward(req, body, ctype)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", octype)
	w.WriteHeader(code)
	w.Write(out)
}

func (r *channelRelay) forward(req *http.Request, body []byte, ctype string) ([]byte, int, string, error) {
	fw, err := http.NewRequestWithContext(req.Context(), req.Method, r.vault+req.URL.Path, bytes.NewReader(body))
	if err != nil {
		return nil, 0, "", err
	}
	fw.Header.Set("Content-Type", ctype)
	resp, err := r.client.Do(fw)
	if err != nil {
		return nil, 0, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return out, resp.StatusCode, resp.Header.Get("Content-Type"), err
}

// vaultHTTPClient trusts the certificates in caCert.
func vaultHTTPClient(t *testing.T, caCert string) *http.Client {
	t.Helper()
	pemData, err := os.ReadFile(caCert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("no certificate in %s", caCert)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// appendCert writes ts's certificate after the certificates in file, into a
// new file.
func appendCert(t *testing.T, file string, servers ...*httptest.Server) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range servers {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})...)
	}
	out := filepath.Join(t.TempDir(), "trusted.pem")
	if err := os.WriteFile(out, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestThresholdSlotRewrittenToRelays reproduces issue 23's finding 1 end to
// end, against three real vaults: someone who can write the repository
// rewrites every vault entry of the threshold slot to a relay of his own
// (its address and the fingerprint of its own channel key; the realm ids
// kept), each relay holding a certificate the client trusts, ending the
// realm channel at its own key and forwarding to the real vault. The
// victim opens the repository with the right password on a new machine:
// the command fails with one line naming the slot and the changed vaults
// (exit 1), and no relay ever read a recover3 (or any unlock tag); each
// vault counted the one guess. The slot as it was written still opens the
// repository afterwards, and that resets the count.
func TestThresholdSlotRewrittenToRelays(t *testing.T) {
	vs := startThresholdVaults(t, 3)
	f := newThresholdFiles(t)
	home := f.home("h")
	all := vs.flags(0, 1, 2)
	wabOK(t, home, args([]string{"init", "--repo", f.repo, "--password-file", f.pw, "--key-out", f.key}, all...)...)
	ids := vaultSlots(t, home, "--repo", f.repo, "--key-file", f.key)
	if len(ids) != 1 {
		t.Fatalf("vault slots: %v", ids)
	}
	path := filepath.Join(f.repo, "keys", ids[0])
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var relays []*channelRelay
	var servers []*httptest.Server
	for i := range 3 {
		r := startChannelRelay(t, vs.url(i), vs.caCert)
		relays = append(relays, r)
		servers = append(servers, r.ts)
	}
	trusted := appendCert(t, vs.caCert, servers...)

	var slot map[string]any
	if err := json.Unmarshal(orig, &slot); err != nil {
		t.Fatal(err)
	}
	extra := slot["extra"].(map[string]any)
	if extra["vault_threshold_form"] != "2" {
		t.Fatalf("a new threshold slot without the form-2 marker: %v", extra)
	}
	for i, r := range relays {
		extra[escrow.RealmKey(i+1, "url")] = r.ts.URL
		extra[escrow.RealmKey(i+1, "fingerprint")] = r.fingerprint()
	}
	data, _ := json.Marshal(slot)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	code, _, errs := wabIn(t, f.home("victim"), "snapshots", "--repo", f.repo, "--password-file", f.pw,
		"--vault", relays[0].ts.URL, "--vault-cacert", trusted)
	if code != exitFatal {
		t.Fatalf("recovery through relays: exit %d %s", code, errs)
	}
	oneErrorLine(t, "recovery through relays", errs, "vault slot "+ids[0][:8]+" was changed")
	if !strings.Contains(errs, "no unlock tag was sent") {
		t.Fatalf("message: %s", errs)
	}
	for i, r := range relays {
		p := r.paths()
		if !slices.Contains(p, api.PathRealmRecover2) {
			t.Fatalf("relay %d read %v: the attack did not run", i+1, p)
		}
		if slices.Contains(p, api.PathRealmRecover3) {
			t.Fatalf("relay %d read a recover3: %v", i+1, p)
		}
	}
	// The slot as written: each vault counted the victim's one guess; it
	// opens the repository, and that resets the count.
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if m["attempts_left"] != json.Number("9") {
			t.Fatalf("after the refused recovery: %v", m)
		}
	}
	wabOK(t, f.home("victim2"), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, vs.flags(0)...)...)
	for _, m := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if m["attempts_left"] != json.Number("10") {
			t.Fatalf("after the honest recovery: %v", m)
		}
	}
}
