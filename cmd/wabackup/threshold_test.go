package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// thresholdFiles are a test's repository, media and password files.
type thresholdFiles struct {
	work, repo, media, pw, bad, key string
}

func newThresholdFiles(t *testing.T) *thresholdFiles {
	t.Helper()
	work := t.TempDir()
	f := &thresholdFiles{work: work, repo: filepath.Join(work, "repo"), media: filepath.Join(work, "Media"),
		pw: filepath.Join(work, "pw.txt"), bad: filepath.Join(work, "bad.txt"), key: filepath.Join(work, "key.txt")}
	writeTree(t, f.media)
	if err := os.WriteFile(f.pw, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.bad, []byte("wrong horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *thresholdFiles) home(name string) string { return filepath.Join(f.work, name) }

// wabOK runs wabackup and fails the test unless it exits 0.
func wabOK(t *testing.T, home string, args ...string) string {
	t.Helper()
	code, out, errs := wabIn(t, home, args...)
	if code != 0 {
		t.Fatalf("wabackup %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func args(base []string, more ...string) []string {
	return append(append([]string{}, base...), more...)
}

// realmStatus runs key vault-status --json and returns each vault's
// entry.
func realmStatus(t *testing.T, home string, flags ...string) []map[string]any {
	t.Helper()
	code, out, errs := wabIn(t, home, args([]string{"key", "vault-status", "--json"}, flags...)...)
	msgs := checkJSONLines(t, "key vault-status --json", out, jsonDoc(t))
	if len(msgs) == 0 || msgs[0]["message_type"] != "vault_status" {
		t.Fatalf("vault-status: exit %d %s %s", code, out, errs)
	}
	var l []map[string]any
	for _, v := range msgs[0]["vaults"].([]any) {
		l = append(l, v.(map[string]any))
	}
	return l
}

func checkRestored(t *testing.T, f *thresholdFiles, target string) {
	t.Helper()
	want, got := treeContents(t, f.media), treeContents(t, filepath.Join(target, "Media"))
	if len(want) != 5 || len(got) != len(want) {
		t.Fatalf("restored %d files, want %d", len(got), len(want))
	}
	for p, b := range want {
		if got[p] != b {
			t.Fatalf("%s differs after restore", p)
		}
	}
}

// Issue 14, acceptance 1: three vaults, each with its own HSM token and
// storage (one on a 3-member etcd cluster), threshold 2. init escrows the
// key across them; a fresh HOME restores with the password only (the
// vaults given again, or one of them: the slot remembers the set),
// byte-identical; with one vault stopped the restore still works (and
// warns about it); with two stopped it fails cleanly, exit 1.
func TestThresholdEndToEnd(t *testing.T) {
	vs := startThresholdVaults(t, 3)
	f := newThresholdFiles(t)
	all := vs.flags(0, 1, 2)
	out := wabOK(t, f.home("h1"), args([]string{"init", "--repo", f.repo, "--password-file", f.pw, "--key-out", f.key, "--vault-threshold", "2"}, all...)...)
	if !strings.Contains(out, "escrowed the key across 3 vaults, any 2 of which give it back") {
		t.Fatalf("init: %s", out)
	}
	wabOK(t, f.home("h1"), "backup", "--repo", f.repo, "--key-file", f.key, "--media", f.media)
	// The vault password does not open the repository by itself.
	if code, _, _ := wabIn(t, f.home("h1"), "snapshots", "--repo", f.repo, "--password-file", f.pw); code != exitWrongKey {
		t.Fatalf("the vault password opened the repository directly: exit %d", code)
	}

	// A new machine: the repository, the vaults and the password.
	target := filepath.Join(f.work, "restored")
	wabOK(t, f.home("h2"), args([]string{"restore", "latest", "--repo", f.repo, "--password-file", f.pw, "--target", target}, all...)...)
	checkRestored(t, f, target)
	var pins map[string]string
	data, err := os.ReadFile(filepath.Join(f.home("h2"), ".config", "wabackup", "vaults.json"))
	if err != nil || json.Unmarshal(data, &pins) != nil || len(pins) != 3 {
		t.Fatalf("vaults.json after a threshold restore: %s %v", data, err)
	}
	// Another new machine naming one of the vaults only.
	target2 := filepath.Join(f.work, "restored2")
	wabOK(t, f.home("h3"), args([]string{"restore", "latest", "--repo", f.repo, "--password-file", f.pw, "--target", target2}, vs.flags(2)...)...)
	checkRestored(t, f, target2)
	// key recover through the vaults prints a new 64-digit key.
	if out := wabOK(t, f.home("h3"), args([]string{"key", "recover", "--repo", f.repo, "--password-file", f.pw}, vs.flags(0)...)...); !strings.Contains(out, "recovered through vaults "+strings.Join([]string{vs.url(0), vs.url(1), vs.url(2)}, ", ")+". A new 64-digit key") {
		t.Fatalf("key recover: %s", out)
	}

	// One vault down: the other two give the key back.
	vs.stop(1)
	target3 := filepath.Join(f.work, "restored3")
	code, out, errs := wabIn(t, f.home("h4"), args([]string{"restore", "latest", "--repo", f.repo, "--password-file", f.pw, "--target", target3}, all...)...)
	if code != 0 || !strings.Contains(errs, "vault 2 "+vs.url(1)) {
		t.Fatalf("restore with vault 2 stopped: exit %d\n%s\n%s", code, out, errs)
	}
	checkRestored(t, f, target3)

	// Two down: exit 1, one line, before the password is asked.
	vs.stop(2)
	code, out, errs = wabIn(t, f.home("h5"), args([]string{"restore", "latest", "--repo", f.repo, "--target", filepath.Join(f.work, "restored4")}, all...)...)
	if code != exitFatal {
		t.Fatalf("restore with two vaults stopped: exit %d\n%s\n%s", code, out, errs)
	}
	oneErrorLine(t, "restore with two vaults stopped", errs, "only 1 of the 3 vaults answered; 2 are needed")
}

// Issue 14, acceptance 2: a correct password after 3 wrong ones resets
// every vault's counter; after 10 wrong ones every vault's share is
// destroyed, and the right password no longer recovers the key.
func TestThresholdWrongPasswords(t *testing.T) {
	vs := startThresholdVaults(t, 3)
	f := newThresholdFiles(t)
	all := vs.flags(0, 1, 2)
	home := f.home("h")
	wabOK(t, home, args([]string{"init", "--repo", f.repo, "--password-file", f.pw, "--key-out", f.key}, all...)...)
	open := func(pw string) (int, string) {
		code, _, errs := wabIn(t, home, args([]string{"snapshots", "--repo", f.repo, "--password-file", pw}, all...)...)
		return code, errs
	}
	for i := 1; i <= 3; i++ {
		code, errs := open(f.bad)
		if code != exitWrongKey {
			t.Fatalf("wrong password %d: exit %d %s", i, code, errs)
		}
		oneErrorLine(t, "a wrong password", errs, fmt.Sprintf("wrong password — %d attempts left before the key is destroyed", 10-i))
	}
	for i, v := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if v["state"] != "registered" || v["attempts_left"] != json.Number("7") {
			t.Fatalf("vault %d after 3 wrong passwords: %v", i+1, v)
		}
	}
	if code, errs := open(f.pw); code != 0 {
		t.Fatalf("the right password: exit %d %s", code, errs)
	}
	for i, v := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if v["state"] != "registered" || v["attempts_left"] != json.Number("10") || v["limit"] != json.Number("10") {
			t.Fatalf("vault %d after the right password: %v", i+1, v)
		}
	}
	for i := 1; i <= 10; i++ {
		code, errs := open(f.bad)
		want := fmt.Sprintf("wrong password — %d attempts left before the key is destroyed", 10-i)
		if i == 10 {
			want = "wrong password — no attempts left: the key is destroyed"
		}
		if code != exitWrongKey {
			t.Fatalf("wrong password %d: exit %d %s", i, code, errs)
		}
		oneErrorLine(t, "a wrong password", errs, want)
	}
	// Every vault has counted its last guess (the next request makes it
	// NoGuesses).
	for i, v := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if v["attempts_left"] != json.Number("0") {
			t.Fatalf("vault %d after 10 wrong passwords: %v", i+1, v)
		}
	}
	code, errs := open(f.pw)
	if code != exitWrongKey {
		t.Fatalf("the right password after 10 wrong ones: exit %d %s", code, errs)
	}
	oneErrorLine(t, "the right password after 10 wrong ones", errs, "is destroyed")
	for i, v := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if v["state"] != "no_guesses" {
			t.Fatalf("vault %d after 10 wrong passwords: %v", i+1, v)
		}
	}
	// The 64-digit key still opens the repository.
	wabOK(t, home, "snapshots", "--repo", f.repo, "--key-file", f.key)
}

// A threshold slot whose extra fields were altered is not trusted: the
// vaults' answers to the right password show that its realm set is not
// the registered one before any unlock tag is sent, so neither the open
// nor vault-passwd goes on (the vaults' records are untouched: the old
// password still works once the slot is put back).
func TestThresholdSlotAltered(t *testing.T) {
	vs := startThresholdVaults(t, 4)
	f := newThresholdFiles(t)
	home := f.home("h")
	all := vs.flags(0, 1, 2)
	wabOK(t, home, args([]string{"init", "--repo", f.repo, "--password-file", f.pw, "--key-out", f.key}, all...)...)
	ids := vaultSlots(t, home, "--repo", f.repo, "--key-file", f.key)
	if len(ids) != 1 {
		t.Fatalf("vault slots: %v", ids)
	}
	path := filepath.Join(f.repo, "keys", ids[0])
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Vault 3 replaced by the fourth vault, with its own fingerprint and
	// realm id, as someone who can write the repository would.
	code, out, _ := wabIn(t, home, args([]string{"init", "--repo", filepath.Join(f.work, "other"), "--password-file", f.pw, "--json"}, vs.flags(0, 1, 3)...)...)
	if code != 0 {
		t.Fatalf("init of another repository: %s", out)
	}
	var fourth map[string]any
	for _, m := range jsonLines(t, out) {
		if m["message_type"] == "vault_escrowed" {
			fourth = m["vaults"].([]any)[2].(map[string]any)
		}
	}
	var slot map[string]any
	if err := json.Unmarshal(orig, &slot); err != nil {
		t.Fatal(err)
	}
	extra := slot["extra"].(map[string]any)
	for name, alter := range map[string]func(){
		"another vault 3": func() {
			extra["vault_realm_3_url"], extra["vault_realm_3_fingerprint"], extra["vault_realm_3_id"] = fourth["url"], fourth["fingerprint"], fourth["realm_id"]
		},
		"threshold 3": func() { extra["vault_threshold"] = "3" },
	} {
		saved := map[string]any{}
		for k, v := range extra {
			saved[k] = v
		}
		alter()
		data, _ := json.Marshal(slot)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errs := wabIn(t, f.home("fresh-"+name), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, vs.flags(0)...)...)
		// The vaults' answers show the change after the password check,
		// before any unlock tag is sent (issue 23).
		if code != exitFatal || !strings.Contains(errs, "vault slot "+ids[0][:8]+" was changed") || !strings.Contains(errs, "no unlock tag was sent") {
			t.Fatalf("%s: exit %d %s", name, code, errs)
		}
		pw2 := filepath.Join(f.work, "pw2")
		os.WriteFile(pw2, []byte("a new one"), 0o600)
		code, _, errs = wabIn(t, home, args([]string{"key", "vault-passwd", "--repo", f.repo, "--password-file", f.pw, "--new-password-file", pw2}, vs.flags(0)...)...)
		if code != exitFatal || !strings.Contains(errs, "was changed") {
			t.Fatalf("vault-passwd through an altered slot (%s): exit %d %s", name, code, errs)
		}
		for k := range extra {
			delete(extra, k)
		}
		for k, v := range saved {
			extra[k] = v
		}
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	wabOK(t, f.home("fresh"), args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, all...)...)
}

// key escrow on an existing repository, vault-status, vault-passwd (the
// old password stops working, the new one opens), vault-delete (the
// shares and the slot go); --json output documented.
func TestThresholdKeyCommands(t *testing.T) {
	vs := startThresholdVaults(t, 3)
	f := newThresholdFiles(t)
	home := f.home("h")
	all := vs.flags(0, 1, 2)
	doc := jsonDoc(t)
	wabOK(t, home, "init", "--repo", f.repo, "--key-out", f.key)
	// A threshold that is not a majority is refused before anything is
	// escrowed.
	code, _, errs := wabIn(t, home, args([]string{"key", "escrow", "--repo", f.repo, "--key-file", f.key, "--new-password-file", f.pw, "--vault-threshold", "1"}, all...)...)
	if code != exitFatal {
		t.Fatalf("threshold 1 of 3: exit %d %s", code, errs)
	}
	oneErrorLine(t, "threshold 1 of 3", errs, "must be more than half of them")
	out := wabOK(t, home, args([]string{"key", "escrow", "--json", "--repo", f.repo, "--key-file", f.key, "--new-password-file", f.pw}, all...)...)
	msgs := checkJSONLines(t, "key escrow --json", out, doc)
	if len(msgs) != 1 || msgs[0]["threshold"] != json.Number("2") || len(msgs[0]["vaults"].([]any)) != 3 {
		t.Fatalf("key escrow --json: %s", out)
	}
	// A second escrow under the same name is refused: it would replace
	// the first one's shares.
	code, _, errs = wabIn(t, home, args([]string{"key", "escrow", "--repo", f.repo, "--key-file", f.key, "--new-password-file", f.pw}, all...)...)
	if code != exitFatal {
		t.Fatalf("second escrow: exit %d %s", code, errs)
	}
	oneErrorLine(t, "a second escrow", errs, "a key is already escrowed under the name \"default\" in 3 of these 3 vaults")

	out = wabOK(t, home, args([]string{"key", "vault-status", "--repo", f.repo}, all...)...)
	if strings.Count(out, "holds its share, 10 of 10 attempts left") != 3 {
		t.Fatalf("vault-status: %s", out)
	}
	// vault-passwd: the new password opens, the old one does not.
	pw2 := filepath.Join(f.work, "pw2")
	os.WriteFile(pw2, []byte("a new one"), 0o600)
	out = wabOK(t, home, args([]string{"key", "vault-passwd", "--json", "--repo", f.repo, "--password-file", f.pw, "--new-password-file", pw2}, all...)...)
	checkJSONLines(t, "key vault-passwd --json", out, doc)
	if code, _, errs := wabIn(t, home, args([]string{"snapshots", "--repo", f.repo, "--password-file", f.pw}, all...)...); code != exitWrongKey {
		t.Fatalf("the old password after vault-passwd: exit %d %s", code, errs)
	}
	wabOK(t, f.home("h2"), args([]string{"snapshots", "--repo", f.repo, "--password-file", pw2}, all...)...)
	// key rotate through the vaults keeps the threshold slot (remade for
	// the new key epoch with the same extra fields): a new machine still
	// opens with the password; the old 64-digit key no longer does.
	k2 := filepath.Join(f.work, "k2")
	out = wabOK(t, home, args([]string{"key", "rotate", "--force", "--repo", f.repo, "--password-file", pw2, "--key-out", k2}, all...)...)
	if !strings.Contains(out, "kept vault") {
		t.Fatalf("rotate through the vaults: %s", out)
	}
	wabOK(t, f.home("h3"), args([]string{"snapshots", "--repo", f.repo, "--password-file", pw2}, vs.flags(1)...)...)
	if code, _, _ := wabIn(t, home, "snapshots", "--repo", f.repo, "--key-file", f.key); code != exitWrongKey {
		t.Fatalf("the revoked 64-digit key: exit %d", code)
	}
	f.key = k2
	// vault-status with a vault down: shown as not reachable; still a
	// threshold.
	vs.stop(0)
	out = wabOK(t, home, args([]string{"key", "vault-status", "--repo", f.repo}, all...)...)
	if !strings.Contains(out, "vault 1 of 3 "+vs.url(0)) || !strings.Contains(out, "not reachable") || !strings.Contains(out, "2 of the 3 vaults hold their share") {
		t.Fatalf("vault-status with vault 1 down: %s", out)
	}
	st := realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...)
	if st[0]["reachable"] != false || st[1]["reachable"] != true {
		t.Fatalf("vault-status --json with vault 1 down: %v", st)
	}
	// vault-delete: a wrong password deletes nothing; the right one the
	// shares (at the two up: the third alone gives nothing back) and the
	// slot.
	if code, _, errs := wabIn(t, home, args([]string{"key", "vault-delete", "--repo", f.repo, "--password-file", f.bad}, all...)...); code != exitWrongKey {
		t.Fatalf("vault-delete with a wrong password: exit %d %s", code, errs)
	}
	code, out, errs = wabIn(t, home, args([]string{"key", "vault-delete", "--json", "--repo", f.repo, "--password-file", pw2}, all...)...)
	msgs = checkJSONLines(t, "key vault-delete --json", out, doc)
	var deleted map[string]any
	for _, m := range msgs {
		if m["message_type"] == "vault_deleted" {
			deleted = m
		}
	}
	if code != 0 || deleted == nil || len(deleted["removed"].([]any)) != 1 || len(deleted["vaults"].([]any)) != 3 {
		t.Fatalf("vault-delete: exit %d %s %s", code, out, errs)
	}
	if got := vaultSlots(t, home, "--repo", f.repo, "--key-file", f.key); len(got) != 0 {
		t.Fatalf("vault slots after vault-delete: %v", got)
	}
	// The vaults that answered hold nothing for the repository any more.
	for _, i := range []int{1, 2} {
		if st := vs.status(t, i, f.repo); st != "not_registered" {
			t.Fatalf("vault %d after vault-delete: %s", i+1, st)
		}
	}
	// And a fresh escrow under the same name is accepted (the share left
	// at the stopped vault does not count as a key).
	wabOK(t, home, args([]string{"key", "escrow", "--repo", f.repo, "--key-file", f.key, "--new-password-file", f.pw}, vs.flags(1, 2)...)...)
}

// Pins and addresses: --vault-fingerprint, one per vault, is checked
// before anything is escrowed and against what the slot records; the
// vaults may be given again under other addresses (each must present the
// slot's fingerprint and realm id: one that does not is left out, with a
// warning, and the others recover the key); the password is prepared
// (NFC) before it reaches the protocol, so another form of it opens.
func TestThresholdPinsAndAddresses(t *testing.T) {
	vs := startThresholdVaults(t, 4)
	f := newThresholdFiles(t)
	home := f.home("h")
	all := vs.flags(0, 1, 2)
	var fps []string
	for i := range 4 {
		r, err := vaultclient.NewRealm(vs.url(i), []byte("x"), vaultclient.RealmOptions{Options: vaultclient.Options{CACertFile: vs.caCert, PinFile: "-"}})
		if err != nil {
			t.Fatal(err)
		}
		in, err := r.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		fps = append(fps, in.Fingerprint)
	}
	pins := func(fp ...string) []string {
		var l []string
		for _, x := range fp {
			l = append(l, "--vault-fingerprint", x)
		}
		return l
	}
	nfd, nfc := filepath.Join(f.work, "nfd"), filepath.Join(f.work, "nfc")
	os.WriteFile(nfd, []byte("cafe\u0301 au lait"), 0o600)
	os.WriteFile(nfc, []byte("caf\u00e9 au lait"), 0o600)
	wabOK(t, home, "init", "--repo", f.repo, "--key-out", f.key)
	escrow := args([]string{"key", "escrow", "--repo", f.repo, "--key-file", f.key, "--new-password-file", nfd}, all...)
	// A wrong pin for vault 2: refused before anything is escrowed.
	wrong := strings.Repeat("ab", 32)
	code, _, errs := wabIn(t, home, args(escrow, pins(fps[0], wrong, fps[2])...)...)
	if code != exitFatal || !strings.Contains(errs, "but --vault-fingerprint pins "+wrong) || !strings.Contains(errs, "all 3 are needed to escrow the key") {
		t.Fatalf("escrow with a wrong pin: exit %d %s", code, errs)
	}
	for i := range 3 {
		if st := vs.status(t, i, f.repo); st != "not_registered" {
			t.Fatalf("vault %d after a refused escrow: %s", i+1, st)
		}
	}
	code, _, errs = wabIn(t, home, args(escrow, pins(fps[0], fps[1])...)...)
	if code != exitFatal {
		t.Fatalf("two pins for three vaults: exit %d %s", code, errs)
	}
	oneErrorLine(t, "two pins for three vaults", errs, "2 --vault-fingerprint for 3 --vault: give one per vault, in the same order")
	wabOK(t, home, args(escrow, pins(fps[0], fps[1], fps[2])...)...)

	// A new machine, pinning the vaults out of band, vault 2 under
	// another address; the other form of the password.
	fresh := f.home("fresh")
	local := strings.Replace(vs.url(1), "127.0.0.1", "localhost", 1)
	moved := []string{"--vault", vs.url(0), "--vault", local, "--vault", vs.url(2), "--vault-cacert", vs.caCert}
	code, _, errs = wabIn(t, fresh, args([]string{"snapshots", "--repo", f.repo, "--password-file", nfc}, args(moved, pins(fps[0], fps[1], fps[2])...)...)...)
	if code != 0 || errs != "" {
		t.Fatalf("open with vault 2 under another address: exit %d %s", code, errs)
	}
	var pinned map[string]string
	data, _ := os.ReadFile(filepath.Join(fresh, ".config", "wabackup", "vaults.json"))
	if json.Unmarshal(data, &pinned) != nil || pinned[local] != fps[1] {
		t.Fatalf("vaults.json: %s", data)
	}
	// A pin that is not the slot's: refused before the password is spent.
	code, _, errs = wabIn(t, f.home("fresh2"), args([]string{"snapshots", "--repo", f.repo, "--password-file", nfc, "--vault-fingerprint", wrong}, vs.flags(0)...)...)
	if code != exitFatal {
		t.Fatalf("a wrong pin on a new machine: exit %d %s", code, errs)
	}
	oneErrorLine(t, "a wrong pin on a new machine", errs, "records vault fingerprint "+fps[0]+", not "+wrong)
	// Vault 2's position given the fourth vault's address: that vault
	// presents another key, is asked nothing else, and the other two
	// recover the key.
	code, _, errs = wabIn(t, f.home("fresh3"), "snapshots", "--repo", f.repo, "--password-file", nfc,
		"--vault", vs.url(0), "--vault", vs.url(3), "--vault", vs.url(2), "--vault-cacert", vs.caCert)
	if code != 0 || !strings.Contains(errs, "vault 2 "+vs.url(3)+": presents public key fingerprint "+fps[3]) {
		t.Fatalf("open with another vault at vault 2's position: exit %d %s", code, errs)
	}
	for _, m := range realmStatus(t, home, args([]string{"--repo", f.repo}, all...)...) {
		if m["attempts_left"] != json.Number("10") {
			t.Fatalf("attempts after the opens: %v", m)
		}
	}
}
