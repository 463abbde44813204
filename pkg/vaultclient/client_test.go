package vaultclient_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// startVault runs an in-process vault with its own keys on a TLS 1.3 server.
func startVault(t *testing.T) (*vault.Server, *httptest.Server) {
	t.Helper()
	st, err := vault.OpenBolt(filepath.Join(t.TempDir(), "v.db"))
	if err != nil {
		t.Fatal(err)
	}
	se, err := vault.NewKeySealer(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vault.New(vault.Config{Store: st, Sealer: se, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	t.Cleanup(func() { ts.Close(); srv.Close(); st.Close() })
	return srv, ts
}

func TestPinning(t *testing.T) {
	srv, ts := startVault(t)
	pinFile := filepath.Join(t.TempDir(), "wabackup", "vaults.json")
	ctx := context.Background()
	c, err := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: pinFile})
	if err != nil {
		t.Fatal(err)
	}
	id := api.CredentialID("r", "")
	fp, _, err := c.Register(ctx, id, []byte("pw"), make([]byte, 32), 0)
	if err != nil || fp != srv.Fingerprint() {
		t.Fatalf("register: %s %v", fp, err)
	}
	var pins map[string]string
	data, _ := os.ReadFile(pinFile)
	if json.Unmarshal(data, &pins) != nil || pins[ts.URL] != fp {
		t.Fatalf("pin file: %s", data)
	}
	// A pin given by the repository that does not match.
	other := strings.Repeat("ab", 32)
	c2, _ := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: pinFile, Pin: other})
	_, err = c2.Recover(ctx, id, []byte("pw"))
	var pm *vaultclient.PinMismatchError
	if !errors.As(err, &pm) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), fp) {
		t.Fatalf("repository pin mismatch: %v", err)
	}
	// The pin file names another key for this URL.
	pins[ts.URL] = other
	data, _ = json.Marshal(pins)
	if err := os.WriteFile(pinFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c3, _ := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: pinFile})
	if _, _, err := c3.Status(ctx, id); !errors.As(err, &pm) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), fp) {
		t.Fatalf("pin file mismatch: %v", err)
	}
	// No attempt was spent by the refused clients.
	c4, _ := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if left, _, err := c4.Status(ctx, id); err != nil || left != 10 {
		t.Fatalf("status: %d %v", left, err)
	}
	if _, err := vaultclient.New("http://example.com", vaultclient.Options{}); err == nil {
		t.Fatal("plain http accepted")
	}
}
