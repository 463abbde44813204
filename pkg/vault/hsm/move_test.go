package hsm_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/wabackup/wabackup/pkg/vault/hsm"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// TestSealingKeyMovesToAnotherToken follows docs/VAULT.md's key ceremony
// for plain PKCS#11 between two real (SoftHSM2) tokens: the sealing key is
// generated sensitive and extractable on the first, wrapped with RSA-OAEP
// under a transport key pair made on the second, and unwrapped there as a
// non-extractable token key with the vault's label. A value sealed by a
// vault on the first token then opens with the second, and the copy can
// be wrapped out no further.
func TestSealingKeyMovesToAnotherToken(t *testing.T) {
	a := vaulttest.SoftHSM(t)
	b := &vaulttest.HSM{Conf: a.Conf, Module: a.Module, Token: a.Token + "-b", PIN: a.PIN + "b"}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", b.Token, "--so-pin", "so-"+b.PIN, "--pin", b.PIN)
	cmd.Env = append(os.Environ(), b.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}

	ceremony(t, a, b)

	sa, err := hsm.Open(hsm.Config{Module: a.Module, TokenLabel: a.Token, PIN: a.PIN})
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the vault's server keys")
	sealed, err := sa.Seal(secret, []byte("server-keys"))
	sa.Close()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := hsm.Open(hsm.Config{Module: b.Module, TokenLabel: b.Token, PIN: b.PIN})
	if err != nil {
		t.Fatalf("the second site's vault finds no sealing key: %v", err)
	}
	defer sb.Close()
	got, err := sb.Open(sealed, []byte("server-keys"))
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("the second token does not open what the first sealed: %q, %v", got, err)
	}
}

// ceremony copies a new sealing key from token a to token b.
func ceremony(t *testing.T, a, b *vaulttest.HSM) {
	t.Helper()
	p := pkcs11.New(a.Module)
	if p == nil {
		t.Fatal("cannot load the PKCS#11 module")
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	var sessions []pkcs11.SessionHandle
	defer func() {
		for _, sh := range sessions {
			p.Logout(sh)
			p.CloseSession(sh)
		}
		p.Finalize()
		p.Destroy()
	}()
	login := func(h *vaulttest.HSM) pkcs11.SessionHandle {
		slots, err := p.GetSlotList(true)
		if err != nil {
			t.Fatal(err)
		}
		for _, sl := range slots {
			if ti, err := p.GetTokenInfo(sl); err == nil && ti.Label == h.Token {
				sh, err := p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Login(sh, pkcs11.CKU_USER, h.PIN); err != nil {
					t.Fatal(err)
				}
				sessions = append(sessions, sh)
				return sh
			}
		}
		t.Fatalf("no token %q", h.Token)
		return 0
	}
	sa, sb := login(a), login(b)
	attr := pkcs11.NewAttribute

	// 1. On the first HSM: the sealing key, sensitive but extractable.
	key, err := p.GenerateKey(sa, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		attr(pkcs11.CKA_VALUE_LEN, 32), attr(pkcs11.CKA_LABEL, "wabackup-vault-seal"),
		attr(pkcs11.CKA_TOKEN, true), attr(pkcs11.CKA_PRIVATE, true), attr(pkcs11.CKA_SENSITIVE, true),
		attr(pkcs11.CKA_EXTRACTABLE, true), attr(pkcs11.CKA_ENCRYPT, true), attr(pkcs11.CKA_DECRYPT, true),
	})
	if err != nil {
		t.Fatalf("generate the sealing key: %v", err)
	}
	// 2. On the second: a transport key pair (session objects).
	pub, priv, err := p.GenerateKeyPair(sb, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_MODULUS_BITS, 3072),
			attr(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}), attr(pkcs11.CKA_WRAP, true)},
		[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_PRIVATE, true),
			attr(pkcs11.CKA_SENSITIVE, true), attr(pkcs11.CKA_UNWRAP, true)})
	if err != nil {
		t.Fatalf("generate the transport key pair: %v", err)
	}
	// 3. Its public half goes to the first HSM.
	pa, err := p.GetAttributeValue(sb, pub, []*pkcs11.Attribute{attr(pkcs11.CKA_MODULUS, nil), attr(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
	if err != nil {
		t.Fatal(err)
	}
	pubOnA, err := p.CreateObject(sa, []*pkcs11.Attribute{
		attr(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_WRAP, true),
		attr(pkcs11.CKA_MODULUS, pa[0].Value), attr(pkcs11.CKA_PUBLIC_EXPONENT, pa[1].Value),
	})
	if err != nil {
		t.Fatal(err)
	}
	// 4. Wrap there, unwrap on the second as a non-extractable token key.
	oaep := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
		pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}
	wrapped, err := p.WrapKey(sa, oaep, pubOnA, key)
	if err != nil {
		t.Fatalf("wrap the sealing key: %v", err)
	}
	copyOnB, err := p.UnwrapKey(sb, oaep, priv, wrapped, []*pkcs11.Attribute{
		attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		attr(pkcs11.CKA_LABEL, "wabackup-vault-seal"), attr(pkcs11.CKA_TOKEN, true), attr(pkcs11.CKA_PRIVATE, true),
		attr(pkcs11.CKA_SENSITIVE, true), attr(pkcs11.CKA_EXTRACTABLE, false),
		attr(pkcs11.CKA_ENCRYPT, true), attr(pkcs11.CKA_DECRYPT, true),
	})
	if err != nil {
		t.Fatalf("unwrap the sealing key on the second token: %v", err)
	}
	// 5. The copy leaves its HSM no more; the transport keys go.
	if _, err := p.WrapKey(sb, oaep, pub, copyOnB); !errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
		t.Errorf("wrapping the copied key out again: %v, want CKR_KEY_UNEXTRACTABLE", err)
	}
	for _, o := range []struct {
		s pkcs11.SessionHandle
		h pkcs11.ObjectHandle
	}{{sb, pub}, {sb, priv}, {sa, pubOnA}} {
		if err := p.DestroyObject(o.s, o.h); err != nil {
			t.Fatal(err)
		}
	}
}
