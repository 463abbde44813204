package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// thresholdVaults are the vaults of a threshold test: real wabackup-vault
// processes.
type thresholdVaults struct {
	vaults []*vaulttest.Vault
	caCert string // every vault's certificate, in one file
}

// startThresholdVaults starts n vaults: the first three each with its own
// SoftHSM2 token and its own storage — bbolt for the first two, a 3-member
// etcd cluster for the third — and any more on bbolt with the development
// file sealer.
func startThresholdVaults(t *testing.T, n int) *thresholdVaults {
	t.Helper()
	vs := &thresholdVaults{}
	var pem []byte
	for i := range n {
		opt := vaulttest.Options{}
		if i < 3 {
			opt.HSM = vaulttest.SoftHSM(t)
		}
		if i == 2 {
			c := testservers.Etcd(t, 3)
			opt.Args = []string{"--store", "etcd://" + strings.Join(c.Endpoints(), ",") + "/realm-test"}
		}
		v := vaulttest.Start(t, opt)
		vs.vaults = append(vs.vaults, v)
		b, err := os.ReadFile(v.CACert)
		if err != nil {
			t.Fatal(err)
		}
		pem = append(pem, b...)
	}
	vs.caCert = filepath.Join(t.TempDir(), "vaults.pem")
	if err := os.WriteFile(vs.caCert, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return vs
}

func (vs *thresholdVaults) url(i int) string { return vs.vaults[i].URL }
func (vs *thresholdVaults) stop(i int)       { vs.vaults[i].Stop() }

// flags are --vault for the vaults given, in that order, and
// --vault-cacert.
func (vs *thresholdVaults) flags(idx ...int) []string {
	var f []string
	for _, i := range idx {
		f = append(f, "--vault", vs.vaults[i].URL)
	}
	return append(f, "--vault-cacert", vs.caCert)
}

// status asks vault i directly for the state of repo's default key.
func (vs *thresholdVaults) status(t *testing.T, i int, repo string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, "config"))
	var cfg struct{ ID string }
	if err != nil || json.Unmarshal(data, &cfg) != nil {
		t.Fatalf("config: %v", err)
	}
	r, err := vaultclient.NewRealm(vs.url(i), api.CredentialID(cfg.ID, ""), vaultclient.RealmOptions{Options: vaultclient.Options{CACertFile: vs.caCert, PinFile: "-"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}
