package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// The hostile-store suite (issue 23, section 4) for what the CLI reads
// before it is authenticated besides a threshold slot's realm set
// (pkg/escrow's TestHostileThresholdSlot): a single-vault slot's extra
// fields and the local pin file, vaults.json. Each row mutates one of them
// as a writer of the repository (or of the machine's config) could, runs
// an open with the right password, and asserts its outcome class, the
// exit code, a one-line message, and the vault's attempts afterwards:
// no mutation makes the vault count a guess that is not the user's one
// attempt, and none loses anything (the honest open works after each).

// v1Relay stands between the client and a vault for the OPAQUE API with a
// key of its own: /v1/info shows its key, everything else is forwarded as
// it is (OPAQUE authenticates the vault by the key in the user's envelope,
// so the relay cannot answer in the vault's name; it only watches).
func startV1Relay(t *testing.T, vaultURL, caCert string) (*httptest.Server, string) {
	t.Helper()
	_, pub, err := noise.Ristretto255.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	client := vaultHTTPClient(t, caCert)
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fw, _ := http.NewRequestWithContext(r.Context(), r.Method, vaultURL+r.URL.Path, bytes.NewReader(body))
		fw.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := client.Do(fw)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if r.URL.Path == api.PathInfo {
			var in api.Info
			json.Unmarshal(out, &in)
			in.PublicKey, in.Fingerprint = pub, api.Fingerprint(pub)
			out, _ = json.Marshal(in)
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	}))
	t.Cleanup(ts.Close)
	return ts, api.Fingerprint(pub)
}

func TestHostileSingleVaultSlotAndPins(t *testing.T) {
	a := vaulttest.Start(t, vaulttest.Options{})
	b := vaulttest.Start(t, vaulttest.Options{})
	f := newThresholdFiles(t)
	home := f.home("h")
	ca := appendCert(t, a.CACert)
	caData, _ := os.ReadFile(b.CACert)
	caAll := filepath.Join(f.work, "ab.pem")
	os.WriteFile(caAll, append(mustRead(t, ca), caData...), 0o600)
	relay, relayFP := startV1Relay(t, a.URL, a.CACert)
	trusted := appendCert(t, caAll, relay)
	flagsA := []string{"--vault", a.URL, "--vault-cacert", trusted}

	wabOK(t, home, args([]string{"init", "--repo", f.repo, "--password-file", f.pw, "--key-out", f.key}, flagsA...)...)
	ids := vaultSlots(t, home, "--repo", f.repo, "--key-file", f.key)
	if len(ids) != 1 {
		t.Fatalf("vault slots: %v", ids)
	}
	path := filepath.Join(f.repo, "keys", ids[0])
	orig := mustRead(t, path)
	var origSlot map[string]any
	json.Unmarshal(orig, &origSlot)
	origExtra := origSlot["extra"].(map[string]any)
	fpA := origExtra["vault_fingerprint"].(string)
	infoB := vaultInfo(t, b.URL, b.CACert)

	attempts := func() string {
		t.Helper()
		code, out, errs := wabIn(t, home, args([]string{"key", "vault-status", "--json", "--repo", f.repo, "--key-file", f.key}, flagsA...)...)
		for _, m := range jsonLines(t, out) {
			if m["message_type"] == "vault_status" {
				return fmt.Sprint(m["attempts_left"])
			}
		}
		t.Fatalf("vault-status: exit %d %s %s", code, out, errs)
		return ""
	}
	honest := func(what string) {
		t.Helper()
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		wabOK(t, f.home("honest"), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, flagsA...)...)
		if got := attempts(); got != "10" {
			t.Fatalf("after %s and an honest open: %s attempts left", what, got)
		}
	}

	slotRows := []struct {
		name  string
		field string
		value string // "-": deleted
		flags []string
		code  int    // exit code of the open
		want  string // in the one-line error, or "" for success
		left  string // attempts left after the open
	}{
		// The vault's answer resets its count; the slot, whose fields are
		// bound into its associated data, does not open.
		{"url pointed at another vault", "vault_url", b.URL, flagsA, exitFatal, "does not open with the key", "10"},
		{"url deleted", "vault_url", "-", flagsA, exitFatal, "does not open with the key", "10"},
		{"fingerprint of another vault", "vault_fingerprint", infoB.Fingerprint, flagsA, exitFatal, "presents public key fingerprint " + fpA, "10"},
		{"fingerprint truncated", "vault_fingerprint", fpA[:32], flagsA, exitFatal, "fingerprint", "10"},
		{"url and fingerprint pointed at a relay", "vault_url+fingerprint", relay.URL + " " + relayFP, []string{"--vault", relay.URL, "--vault-cacert", trusted}, exitFatal, "does not open with the key", "10"},
		{"name changed", "vault_name", "someone-else", flagsA, exitWrongKey, "wrong password", "10"},
	}
	for _, tt := range slotRows {
		t.Run("slot/"+tt.name, func(t *testing.T) {
			var slot map[string]any
			json.Unmarshal(orig, &slot)
			ex := slot["extra"].(map[string]any)
			switch {
			case tt.value == "-":
				delete(ex, tt.field)
			case tt.field == "vault_url+fingerprint":
				v := strings.Fields(tt.value)
				ex["vault_url"], ex["vault_fingerprint"] = v[0], v[1]
			default:
				ex[tt.field] = tt.value
			}
			data, _ := json.Marshal(slot)
			os.WriteFile(path, data, 0o600)
			code, _, errs := wabIn(t, f.home("victim-"+tt.name), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, tt.flags...)...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, errs)
			}
			if tt.want != "" {
				oneErrorLine(t, tt.name, errs, tt.want)
			}
			os.WriteFile(path, orig, 0o600)
			if got := attempts(); got != tt.left {
				t.Fatalf("%s attempts left, want %s", got, tt.left)
			}
			honest(tt.name)
		})
	}

	// The pin file: written on first use by the honest opens above.
	pins := filepath.Join(f.home("honest"), ".config", "wabackup", "vaults.json")
	origPins := mustRead(t, pins)
	pinRows := []struct {
		name   string
		mutate func(map[string]string) []byte
		code   int
		want   string
	}{
		{"pin of another vault", func(m map[string]string) []byte {
			m[a.URL] = infoB.Fingerprint
			b, _ := json.Marshal(m)
			return b
		}, exitFatal, "presents public key fingerprint " + fpA},
		{"pin deleted", func(m map[string]string) []byte {
			delete(m, a.URL)
			b, _ := json.Marshal(m)
			return b
		}, 0, ""},
		{"file truncated", func(map[string]string) []byte { return origPins[:len(origPins)/2] }, exitFatal, "vaults.json"},
	}
	for _, tt := range pinRows {
		t.Run("pins/"+tt.name, func(t *testing.T) {
			var m map[string]string
			if err := json.Unmarshal(origPins, &m); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(pins, tt.mutate(m), 0o600)
			code, _, errs := wabIn(t, f.home("honest"), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, flagsA...)...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, errs)
			}
			if tt.want != "" {
				oneErrorLine(t, tt.name, errs, tt.want)
			}
			if got := attempts(); got != "10" {
				t.Fatalf("%s attempts left after a mutated pin file", got)
			}
			os.WriteFile(pins, origPins, 0o600)
			honest(tt.name)
		})
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vaultInfo fetches a vault's /v1/info.
func vaultInfo(t *testing.T, url, caCert string) *api.Info {
	t.Helper()
	resp, err := vaultHTTPClient(t, caCert).Get(url + api.PathInfo)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var in api.Info
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		t.Fatal(err)
	}
	in.Fingerprint = api.Fingerprint(in.PublicKey)
	return &in
}
