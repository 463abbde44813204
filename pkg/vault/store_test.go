package vault_test

import (
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/storetest"
)

// The store conformance suite against the bbolt store (the etcd store runs
// it in package etcdstore).
func TestBoltStoreConformance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	storetest.Run(t, func(t *testing.T) vault.Store {
		s, err := vault.OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
