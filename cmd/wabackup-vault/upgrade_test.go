package main

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// Issue 23, finding 2, end to end: the vault binary upgrades the plain
// vault.db of an earlier version (same HSM), a record is destroyed, and
// the vault.db from before the upgrade is put back: the vault does not
// start, and says in one line which file it is and what to do.
func TestPreUpgradeVaultDBRefused(t *testing.T) {
	h := vaulttest.SoftHSM(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "vault.db")
	ctx := context.Background()
	id := api.CredentialID("pre-upgrade", "")
	sec := make([]byte, 32)
	_, _ = rand.Read(sec)

	// The earlier version: a BoltStore, sealed by the HSM's key.
	s, err := hsm.Open(hsm.Config{Module: h.Module, TokenLabel: h.Token, PIN: h.PIN, CreateKey: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := vault.OpenBolt(db)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vault.New(vault.Config{Store: st, Sealer: s, MaxGuesses: 10, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv.Handler())
	c, err := vaultclient.New(ts.URL, vaultclient.Options{HTTPClient: ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Register(ctx, id, []byte("right"), sec, 0)
	ts.Close()
	srv.Close()
	st.Close()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	preUpgrade, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}

	// This version: the upgrade, then the record destroyed.
	v := vaulttest.Start(t, vaulttest.Options{Dir: dir, HSM: h})
	for range 10 {
		if _, err := client(t, v).Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
			t.Fatal(err)
		}
	}
	v.Stop()

	if err := os.WriteFile(db, preUpgrade, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(rctx, vaulttest.Binary(t), "--listen", addr, "--data", dir, "--dev-tls", filepath.Join(dir, "tls"),
		"--pkcs11-module", h.Module, "--pkcs11-token", h.Token)
	cmd.Env = append(append(os.Environ(), h.Env()...), "WABACKUP_VAULT_PKCS11_PIN="+h.PIN)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("the vault on the pre-upgrade vault.db: %v, want exit status 1\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(l, "wabackup-vault: ") {
			line = l
		}
	}
	if !strings.Contains(line, db+" is a copy from before the key table upgrade") || !strings.Contains(line, "put back the current state of "+db) {
		t.Fatalf("the vault's last words: %q, want the file named as a copy from before the upgrade and what to put back\n%s", line, out)
	}
	t.Log(line)
}
