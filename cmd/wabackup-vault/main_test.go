package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

func client(t *testing.T, v *vaulttest.Vault) *vaultclient.Client {
	t.Helper()
	c, err := vaultclient.New(v.URL, vaultclient.Options{CACertFile: v.CACert, KSF: opaque.IdentityKSF{}, PinFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Acceptance 3: the vault killed (SIGKILL) after counting an attempt and
// before answering it keeps the count, over several kills.
func TestKillAfterCountKeepsTheCount(t *testing.T) {
	for _, withHSM := range []bool{false, true} {
		name := "file-sealer"
		if withHSM {
			name = "softhsm"
		}
		t.Run(name, func(t *testing.T) {
			opt := vaulttest.Options{Dir: t.TempDir(), Args: []string{"--max-guesses", "5"}}
			if withHSM {
				opt.HSM = vaulttest.SoftHSM(t)
			}
			ctx := context.Background()
			v := vaulttest.Start(t, opt)
			c := client(t, v)
			id := api.CredentialID("durable", "")
			sec := make([]byte, 32)
			_, _ = rand.Read(sec)
			if _, _, err := c.Register(ctx, id, []byte("right"), sec, 0); err != nil {
				t.Fatal(err)
			}
			v.Stop()
			for kill := 1; kill <= 3; kill++ {
				popt := opt
				popt.Env = []string{"WABACKUP_VAULT_TEST_PAUSE_AFTER_COUNT=1"}
				pv := vaulttest.Start(t, popt)
				pc := client(t, pv)
				errc := make(chan error, 1)
				go func() {
					_, err := pc.Recover(ctx, id, []byte("right"))
					errc <- err
				}()
				if err := pv.WaitFor("attempt counted durably", 20*time.Second); err != nil {
					t.Fatal(err)
				}
				pv.Kill()
				if err := <-errc; err == nil {
					t.Fatal("a login answered by a killed vault")
				}
				v := vaulttest.Start(t, opt)
				left, _, err := client(t, v).Status(ctx, id)
				v.Stop()
				if err != nil || left != 5-kill {
					t.Fatalf("after kill %d: %d attempts left (%v), want %d", kill, left, err, 5-kill)
				}
			}
			// The right password still works, and resets the counter.
			v = vaulttest.Start(t, opt)
			c = client(t, v)
			got, err := c.Recover(ctx, id, []byte("right"))
			if err != nil || !bytes.Equal(got, sec) {
				t.Fatalf("recover: %v", err)
			}
			if left, _, _ := c.Status(ctx, id); left != 5 {
				t.Fatalf("%d left after a success", left)
			}
			if _, err := c.Recover(ctx, id, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
				t.Fatal(err)
			}
		})
	}
}
