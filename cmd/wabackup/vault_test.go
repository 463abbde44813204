package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// wabIn runs wabackup in-process under home (HOME and XDG dirs) and
// returns its exit code, stdout and stderr.
func wabIn(t *testing.T, home string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, ".cache"))
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeTree(t *testing.T, dir string) {
	t.Helper()
	for i, size := range []int{0, 1, 4096, 300 << 10, 2 << 20} {
		b := make([]byte, size)
		_, _ = rand.Read(b)
		p := filepath.Join(dir, "sub"+string(rune('a'+i%2)), "file"+string(rune('0'+i)))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func treeContents(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		m[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Acceptance 5: init with the vault (SoftHSM2-sealed) under one HOME,
// restore under a fresh HOME with only the repository path, the vault URL
// and the password; byte-identical. A wrong password says how many
// attempts are left, with exit 12; a vault with another key is refused.
func TestVaultEndToEnd(t *testing.T) {
	h := vaulttest.SoftHSM(t)
	v := vaulttest.Start(t, vaulttest.Options{HSM: h})
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	media := filepath.Join(work, "Media")
	writeTree(t, media)
	pw := filepath.Join(work, "pw.txt")
	if err := os.WriteFile(pw, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(work, "bad.txt")
	if err := os.WriteFile(bad, []byte("wrong horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(work, "key.txt")
	home1, home2 := filepath.Join(work, "home1"), filepath.Join(work, "home2")
	vflags := []string{"--vault", v.URL, "--vault-cacert", v.CACert}

	code, out, errs := wabIn(t, home1, append([]string{"init", "--repo", repo, "--password-file", pw, "--key-out", keyFile}, vflags...)...)
	if code != 0 || !strings.Contains(out, "escrowed the key in vault") {
		t.Fatalf("init: %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs := wabIn(t, home1, "backup", "--repo", repo, "--key-file", keyFile, "--media", media); code != 0 {
		t.Fatalf("backup: %d\n%s\n%s", code, out, errs)
	}
	// The repository does not open with the vault password itself.
	if code, _, _ := wabIn(t, home1, "snapshots", "--repo", repo, "--password-file", pw); code != exitWrongKey {
		t.Fatalf("the vault password opened the repository directly: exit %d", code)
	}

	// A new machine: a fresh HOME, the repository, the vault, the password.
	target := filepath.Join(work, "restored")
	code, out, errs = wabIn(t, home2, append([]string{"restore", "latest", "--repo", repo, "--password-file", pw, "--target", target}, vflags...)...)
	if code != 0 {
		t.Fatalf("restore through the vault: %d\n%s\n%s", code, out, errs)
	}
	want, got := treeContents(t, media), treeContents(t, filepath.Join(target, "Media"))
	if len(want) != 5 || len(got) != len(want) {
		t.Fatalf("restored %d files, want %d", len(got), len(want))
	}
	for p, b := range want {
		if got[p] != b {
			t.Fatalf("%s differs after restore", p)
		}
	}
	// The vault's key was pinned on first use in the new HOME.
	var pins map[string]string
	data, err := os.ReadFile(filepath.Join(home2, ".config", "wabackup", "vaults.json"))
	if err != nil || json.Unmarshal(data, &pins) != nil || len(pins[v.URL]) != 64 {
		t.Fatalf("vaults.json: %s %v", data, err)
	}

	// A wrong password: exit 12 and the attempts left.
	code, _, errs = wabIn(t, home2, append([]string{"snapshots", "--repo", repo, "--password-file", bad}, vflags...)...)
	if code != exitWrongKey || !strings.Contains(errs, "wrong password — 9 attempts left before the key is destroyed") {
		t.Fatalf("wrong password: exit %d: %s", code, errs)
	}
	// key recover prints a new 64-digit key and resets the counter.
	code, out, errs = wabIn(t, home2, append([]string{"key", "recover", "--repo", repo, "--password-file", pw}, vflags...)...)
	if code != 0 || !strings.Contains(out, "new 64-digit key") {
		t.Fatalf("key recover: %d\n%s\n%s", code, out, errs)
	}

	// Another vault at the same URL (a new key): a hard error naming both
	// fingerprints.
	v.Stop()
	v2 := vaulttest.Start(t, vaulttest.Options{HSM: h, Args: []string{"--listen", strings.TrimPrefix(v.URL, "https://"), "--pkcs11-key-label", "other"}})
	code, _, errs = wabIn(t, home2, "snapshots", "--repo", repo, "--password-file", pw, "--vault-cacert", v2.CACert, "--vault", v.URL)
	if code == 0 || !strings.Contains(errs, pins[v.URL]) || !strings.Contains(errs, "fingerprint") {
		t.Fatalf("a different vault key was accepted: exit %d: %s", code, errs)
	}
}

// key escrow adds a vault slot to an existing repository.
func TestVaultKeyEscrow(t *testing.T) {
	v := vaulttest.Start(t, vaulttest.Options{})
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	keyFile := filepath.Join(work, "key.txt")
	pw := filepath.Join(work, "pw.txt")
	if err := os.WriteFile(pw, []byte("escrow me"), 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(work, "home")
	if code, out, errs := wabIn(t, home, "init", "--repo", repo, "--key-out", keyFile); code != 0 {
		t.Fatalf("init: %d %s %s", code, out, errs)
	}
	vflags := []string{"--vault", v.URL, "--vault-cacert", v.CACert}
	if code, out, errs := wabIn(t, home, append([]string{"key", "escrow", "--repo", repo, "--key-file", keyFile, "--new-password-file", pw}, vflags...)...); code != 0 {
		t.Fatalf("key escrow: %d %s %s", code, out, errs)
	}
	code, out, errs := wabIn(t, filepath.Join(work, "home2"), append([]string{"key", "list", "--repo", repo, "--password-file", pw}, vflags...)...)
	if code != 0 || !strings.Contains(out, "vault") {
		t.Fatalf("key list through the vault: %d %s %s", code, out, errs)
	}
	// Change the vault password; the old one stops working.
	pw2 := filepath.Join(work, "pw2.txt")
	if err := os.WriteFile(pw2, []byte("a new one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := wabIn(t, home, append([]string{"key", "vault-passwd", "--repo", repo, "--password-file", pw, "--new-password-file", pw2}, vflags...)...); code != 0 {
		t.Fatalf("key vault-passwd: %d %s %s", code, out, errs)
	}
	if code, _, errs := wabIn(t, home, append([]string{"snapshots", "--repo", repo, "--password-file", pw}, vflags...)...); code != exitWrongKey || !strings.Contains(errs, "9 attempts left") {
		t.Fatalf("old vault password: %d %s", code, errs)
	}
	if code, out, errs := wabIn(t, home, append([]string{"key", "vault-status", "--repo", repo}, vflags...)...); code != 0 || !strings.Contains(out, "9 of 10 attempts left") {
		t.Fatalf("key vault-status: %d %s %s", code, out, errs)
	}
	if code, out, errs := wabIn(t, home, append([]string{"snapshots", "--repo", repo, "--password-file", pw2}, vflags...)...); code != 0 {
		t.Fatalf("new vault password: %d %s %s", code, out, errs)
	}
}
