package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Key safety (issue 13, point 1): --key-out never overwrites a key file
// without --force (and writes it 0600); key ids need 4 hex digits and must
// be unambiguous; the slot in use and the last 64-digit key are removed
// only with --force (stdin is not a terminal here).
func TestKeySafety(t *testing.T) {
	work := t.TempDir()
	home := filepath.Join(work, "home")
	repo, repo2 := filepath.Join(work, "repo"), filepath.Join(work, "repo2")
	key := filepath.Join(work, "key.txt")
	pw := filepath.Join(work, "pw.txt")
	os.WriteFile(pw, []byte("a password"), 0o600)
	if code, out, errs := wabIn(t, home, "init", "--repo", repo, "--key-out", key, "-q"); code != 0 {
		t.Fatalf("init: %d %s %s", code, out, errs)
	}
	before, _ := os.ReadFile(key)
	code, _, errs := wabIn(t, home, "init", "--repo", repo2, "--key-out", key, "-q")
	if code != exitFatal {
		t.Fatalf("init over an existing key file: exit %d %s", code, errs)
	}
	oneErrorLine(t, "init over an existing key file", errs, "exists: refusing to overwrite it")
	if after, _ := os.ReadFile(key); string(after) != string(before) {
		t.Fatal("the first repository's key file was changed")
	}
	if _, err := os.Stat(filepath.Join(repo2, "config")); err == nil {
		t.Fatal("a repository was created although its key could not be written")
	}
	key2 := filepath.Join(work, "key2.txt")
	os.WriteFile(key2, []byte("old"), 0o644)
	if code, out, errs := wabIn(t, home, "init", "--repo", repo2, "--key-out", key2, "--force", "-q"); code != 0 {
		t.Fatalf("init --force: %d %s %s", code, out, errs)
	}
	if fi, _ := os.Stat(key2); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}

	viaKey := []string{"--repo", repo, "--key-file", key}
	viaPw := []string{"--repo", repo, "--password-file", pw}
	if code, out, errs := wabIn(t, home, append([]string{"key", "add", "--new-password-file", pw}, viaKey...)...); code != 0 {
		t.Fatalf("key add: %d %s %s", code, out, errs)
	}
	var recovery string
	for id, kind := range slotKinds(t, home, viaKey) {
		if kind == "recovery" {
			recovery = id
		}
	}
	// Too short an id.
	code, _, errs = wabIn(t, home, append([]string{"key", "remove", recovery[:1]}, viaPw...)...)
	if code != exitFatal {
		t.Fatalf("remove with a 1-digit id: exit %d", code)
	}
	oneErrorLine(t, "a 1-digit key id", errs, "give at least 4 hex digits")
	// The slot in use and the last 64-digit key: refused without --force.
	code, _, errs = wabIn(t, home, append([]string{"key", "remove", recovery[:8]}, viaKey...)...)
	if code != exitFatal {
		t.Fatalf("remove the slot in use: exit %d", code)
	}
	oneErrorLine(t, "removing the slot in use", errs, "it is the slot this command opened the repository with, and it is the repository's last 64-digit key")
	// Opened with the password it is still the last 64-digit key.
	code, _, errs = wabIn(t, home, append([]string{"key", "remove", recovery[:8]}, viaPw...)...)
	if code != exitFatal || !strings.Contains(errs, "last 64-digit key") {
		t.Fatalf("remove the last 64-digit key: exit %d %s", code, errs)
	}
	// With a second 64-digit key, the first can go; then the second is
	// the last one again.
	if code, out, errs := wabIn(t, home, append([]string{"key", "add", "--recovery"}, viaPw...)...); code != 0 {
		t.Fatalf("key add --recovery: %d %s %s", code, out, errs)
	}
	if code, out, errs := wabIn(t, home, append([]string{"key", "remove", recovery[:8]}, viaPw...)...); code != 0 {
		t.Fatalf("remove one of two 64-digit keys: %d %s %s", code, out, errs)
	}
	var second string
	for id, kind := range slotKinds(t, home, viaPw) {
		if kind == "recovery" {
			second = id
		}
	}
	if code, _, errs := wabIn(t, home, append([]string{"key", "remove", second[:8]}, viaPw...)...); code != exitFatal || !strings.Contains(errs, "last 64-digit key") {
		t.Fatalf("remove the second, now last, 64-digit key: exit %d %s", code, errs)
	}
	if code, out, errs := wabIn(t, home, append([]string{"key", "remove", "--force", second[:8]}, viaPw...)...); code != 0 {
		t.Fatalf("remove --force: %d %s %s", code, out, errs)
	}
}

// slotKinds lists the repository's key slots: id → kind.
func slotKinds(t *testing.T, home string, via []string) map[string]string {
	t.Helper()
	code, out, errs := wabIn(t, home, append([]string{"key", "list", "--json"}, via...)...)
	if code != 0 {
		t.Fatalf("key list: %d %s", code, errs)
	}
	m := map[string]string{}
	for _, l := range jsonLines(t, out) {
		if id, ok := l["id"].(string); ok {
			m[id] = l["kind"].(string)
		}
	}
	return m
}

// key rotate --keep: another password slot survives the rotation (its
// password from --keep-password-file); a password slot not kept is
// revoked; a wrong password for a kept slot stops the rotation before
// anything changes.
func TestRotateKeep(t *testing.T) {
	work := t.TempDir()
	home := filepath.Join(work, "home")
	repo := filepath.Join(work, "repo")
	file := func(name, text string) string {
		p := filepath.Join(work, name)
		if err := os.WriteFile(p, []byte(text+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k1 := filepath.Join(work, "k1")
	phone, laptop, wrong := file("phone", "phone password"), file("laptop", "laptop password"), file("wrong", "not it")
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, errs := wabIn(t, home, args...)
		if code != 0 {
			t.Fatalf("wabackup %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	mustRun("init", "--repo", repo, "--key-out", k1, "-q")
	var added struct{ ID string }
	json.Unmarshal([]byte(mustRun("key", "add", "--repo", repo, "--key-file", k1, "--new-password-file", phone, "--label", "phone", "--json")), &added)
	mustRun("key", "add", "--repo", repo, "--key-file", k1, "--new-password-file", laptop, "--label", "old-laptop")
	code, _, errs := wabIn(t, home, "key", "rotate", "--force", "--repo", repo, "--key-file", k1, "--key-out", filepath.Join(work, "k2"), "--keep", added.ID[:8], "--keep-password-file", wrong)
	if code != exitWrongKey || !strings.Contains(errs, "does not open it") {
		t.Fatalf("a wrong password for --keep: exit %d %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(work, "k2")); err == nil {
		t.Fatal("a failed rotation wrote a key file")
	}
	out := mustRun("key", "rotate", "--force", "--repo", repo, "--key-file", k1, "--key-out", filepath.Join(work, "k2"), "--keep", added.ID[:8], "--keep-password-file", phone)
	for _, want := range []string{"kept recovery", "kept password " + added.ID[:8] + " (its slot is now", "revoked password", "(old-laptop)"} {
		if !strings.Contains(out, want) {
			t.Errorf("rotate output lacks %q:\n%s", want, out)
		}
	}
	mustRun("snapshots", "--repo", repo, "--password-file", phone)
	mustRun("snapshots", "--repo", repo, "--key-file", filepath.Join(work, "k2"))
	if code, _, _ := wabIn(t, home, "snapshots", "--repo", repo, "--password-file", laptop); code != exitWrongKey {
		t.Errorf("the password not kept: exit %d", code)
	}
}
