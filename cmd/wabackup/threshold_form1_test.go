package main

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
)

// untar unpacks the gzipped tar file into dir.
func untar(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("tar entry %q outside %s", h.Name, dir)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, os.FileMode(h.Mode)&0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestThresholdForm1Fixture opens a repository and vaults written by the
// code before issue 23 (testdata/form1-threshold.tar.gz: three vaults' data
// directories and the repository, stored as that code left them): the key
// comes back with a warning that recommends key rotate, check reports the
// slot, key rotate through the vaults registers the key again in the
// checked form and keeps the slot in it, after which the repository opens
// without the warning, check is quiet, and the snapshot restores.
func TestThresholdForm1Fixture(t *testing.T) {
	dir := t.TempDir()
	untar(t, filepath.Join("testdata", "form1-threshold.tar.gz"), dir)
	var vaultFlags []string
	var ca []byte
	for _, v := range []string{"v1", "v2", "v3"} {
		vt := vaulttest.Start(t, vaulttest.Options{Dir: filepath.Join(dir, v)})
		vaultFlags = append(vaultFlags, "--vault", vt.URL)
		b, err := os.ReadFile(vt.CACert)
		if err != nil {
			t.Fatal(err)
		}
		ca = append(ca, b...)
	}
	caFile := filepath.Join(dir, "vaults.pem")
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	repo, pw := filepath.Join(dir, "repo"), filepath.Join(dir, "pw.txt")
	// The vaults listen at other addresses than the slot records: every
	// position is given, so the slot's fingerprints and realm ids decide.
	open := args([]string{"--repo", repo, "--password-file", pw, "--vault-cacert", caFile}, vaultFlags...)
	home := filepath.Join(dir, "home")

	code, _, errs := wabIn(t, home, args([]string{"snapshots"}, open...)...)
	if code != 0 || !strings.Contains(errs, "was registered by an earlier version") || !strings.Contains(errs, "wabackup key rotate") {
		t.Fatalf("open through form-1 vaults: exit %d %s", code, errs)
	}
	key := []string{"--repo", repo, "--key-file", filepath.Join(dir, "key.txt")}
	code, _, errs = wabIn(t, home, args([]string{"check"}, key...)...)
	if code != 0 || !strings.Contains(errs, "was written by an earlier version") {
		t.Fatalf("check of a form-1 slot: exit %d %s", code, errs)
	}

	out := wabOK(t, home, args([]string{"key", "rotate", "--force", "--key-out", filepath.Join(dir, "key2.txt")}, open...)...)
	if !strings.Contains(out, "registered the key escrowed in") {
		t.Fatalf("key rotate did not register the key again: %s", out)
	}
	ids := vaultSlots(t, home, "--repo", repo, "--key-file", filepath.Join(dir, "key2.txt"))
	if len(ids) != 1 {
		t.Fatalf("vault slots after the rotation: %v", ids)
	}
	data, err := os.ReadFile(filepath.Join(repo, "keys", ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	var slot struct{ Extra map[string]string }
	if err := json.Unmarshal(data, &slot); err != nil || slot.Extra["vault_threshold_form"] != "2" {
		t.Fatalf("the kept slot: %s %v", data, err)
	}

	code, _, errs = wabIn(t, home, args([]string{"snapshots"}, open...)...)
	if code != 0 || strings.Contains(errs, "earlier version") {
		t.Fatalf("open after key rotate: exit %d %s", code, errs)
	}
	key2 := []string{"--repo", repo, "--key-file", filepath.Join(dir, "key2.txt")}
	code, _, errs = wabIn(t, home, args([]string{"check"}, key2...)...)
	if code != 0 || strings.Contains(errs, "earlier version") {
		t.Fatalf("check after key rotate: exit %d %s", code, errs)
	}
	target := filepath.Join(dir, "restored")
	wabOK(t, home, args([]string{"restore", "latest", "--target", target}, open...)...)
	got, err := os.ReadFile(filepath.Join(target, "data", "a.txt"))
	if err != nil {
		matches, _ := filepath.Glob(filepath.Join(target, "*", "*"))
		t.Fatalf("restore: %v (%v)", err, matches)
	}
	if string(got) != "hello\n" {
		t.Fatalf("restored %q", got)
	}
}
