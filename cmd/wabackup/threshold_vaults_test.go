package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/internal/realmtest"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// thresholdVaults are the vaults of a threshold test.
type thresholdVaults struct {
	urls   []string
	stops  []func()
	caCert string // every vault's certificate, in one file
}

// startThresholdVaults starts n vaults.
func startThresholdVaults(t *testing.T, n int) *thresholdVaults {
	t.Helper()
	vs := &thresholdVaults{}
	for range n {
		s := realmtest.Start(t, 10)
		vs.urls = append(vs.urls, s.URL)
		vs.stops = append(vs.stops, s.Stop)
		vs.caCert = s.CACert
	}
	return vs
}

func (vs *thresholdVaults) url(i int) string { return vs.urls[i] }
func (vs *thresholdVaults) stop(i int)       { vs.stops[i]() }

// flags are --vault for the vaults given, in that order, and
// --vault-cacert.
func (vs *thresholdVaults) flags(idx ...int) []string {
	var f []string
	for _, i := range idx {
		f = append(f, "--vault", vs.urls[i])
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
	r, err := vaultclient.NewRealm(vs.urls[i], api.CredentialID(cfg.ID, ""), vaultclient.RealmOptions{Options: vaultclient.Options{CACertFile: vs.caCert, PinFile: "-"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}
