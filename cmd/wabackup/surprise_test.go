package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A 63-digit key typed at the prompt gets the key's format error (exit
// 12), not "wrong key or password" (issue 13).
func TestTypedMalformedKey(t *testing.T) {
	work := t.TempDir()
	home := filepath.Join(work, "home")
	repo := filepath.Join(work, "repo")
	key := filepath.Join(work, "key.txt")
	if code, out, errs := wabIn(t, home, "init", "--repo", repo, "--key-out", key, "-q"); code != 0 {
		t.Fatalf("init: %d %s %s", code, out, errs)
	}
	k, _ := os.ReadFile(key)
	typed := strings.TrimSpace(string(k))
	typed = typed[:len(typed)-1] // one digit short
	defer func(p func(string, bool) ([]byte, error)) { promptSecret = p }(promptSecret)
	promptSecret = func(string, bool) ([]byte, error) { return []byte(typed), nil }
	code, _, errs := wabIn(t, home, "snapshots", "--repo", repo)
	if code != exitWrongKey {
		t.Fatalf("exit %d, want %d: %s", code, exitWrongKey, errs)
	}
	oneErrorLine(t, "a 63-digit key at the prompt", errs, "the 64-digit key typed: ")
	if strings.Contains(errs, "wrong key or password") {
		t.Fatalf("message %q", errs)
	}
	// A password is still a password.
	promptSecret = func(string, bool) ([]byte, error) { return []byte("not a key at all"), nil }
	if code, _, errs := wabIn(t, home, "snapshots", "--repo", repo); code != exitWrongKey || strings.Contains(errs, "typed") {
		t.Fatalf("a wrong password: exit %d %s", code, errs)
	}
}

// A full local disk is exit 15, as the table says; a flag error after
// --json still answers in JSON.
func TestExitCodesAndJSONFlagErrors(t *testing.T) {
	err := fmt.Errorf("writing pack: %w", &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC})
	if got := exitCode(err, false); got != exitStoreFull {
		t.Fatalf("ENOSPC: exit %d, want %d", got, exitStoreFull)
	}
	var out, errb bytes.Buffer
	code := run([]string{"snapshots", "--bogus", "--json"}, &out, &errb)
	if code != exitFatal || !strings.Contains(out.String(), `"message_type":"exit_error"`) {
		t.Fatalf("flag error with --json after it: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

// Every --json line has a message_type (issue 13, point 7).
func TestJSONLinesHaveMessageType(t *testing.T) {
	work := t.TempDir()
	home := filepath.Join(work, "home")
	repo := filepath.Join(work, "repo")
	key := filepath.Join(work, "key.txt")
	if code, _, errs := wabIn(t, home, "init", "--repo", repo, "--key-out", key, "--json"); code != 0 {
		t.Fatal(errs)
	}
	for _, args := range [][]string{
		{"version", "--json"},
		{"key", "list", "--json", "--repo", repo, "--key-file", key},
		{"snapshots", "--json", "--repo", repo, "--key-file", key},
		{"check", "--json", "--repo", repo, "--key-file", key},
		{"stats", "--json", "--repo", repo, "--key-file", key},
	} {
		code, out, errs := wabIn(t, home, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, errs)
		}
		for _, l := range jsonLines(t, out) {
			if _, ok := l["message_type"].(string); !ok {
				t.Errorf("%v: a line without message_type: %v", args, l)
			}
			for k, v := range l {
				if v == nil && k != "db_full_check" && k != "parent" {
					t.Errorf("%v: %s is null", args, k)
				}
			}
		}
	}
}

// TestTypedKeyNeverAPassword is issue 26, item 10: a value typed at the
// prompt that looks like a 64-digit key but has a typo is a key format
// error naming the position, never a password try: not at the repository
// (a password slot whose password is that very text does not open), and
// not at a vault (no attempt is counted).
func TestTypedKeyNeverAPassword(t *testing.T) {
	work := t.TempDir()
	home := filepath.Join(work, "home")
	key := filepath.Join(work, "key.txt")
	repo := filepath.Join(work, "repo")
	if code, out, errs := wabIn(t, home, "init", "--repo", repo, "--key-out", key, "-q"); code != 0 {
		t.Fatalf("init: %d %s %s", code, out, errs)
	}
	k, _ := os.ReadFile(key)
	good := strings.TrimSpace(string(k))
	swap := func(i int, c byte) string { b := []byte(good); b[i] = c; return string(b) }
	tests := []struct {
		name, typed, want string
	}{
		{"o for 0", swap(12, 'o'), "'o' at position 13 is not a hex digit"},
		{"l for 1 in the last group", swap(len(good)-2, 'l'), fmt.Sprintf("'l' at position %d is not a hex digit", len(good)-1)},
		{"a digit dropped", good[:20] + good[21:], "has 63 hex digits, want 64"},
		{"a digit doubled", good[:20] + good[20:21] + good[20:], "has 65 hex digits, want 64"},
		{"no spaces, one typo", strings.ReplaceAll(swap(5, 'x'), " ", ""), "is not a hex digit"},
	}
	defer func(p func(string, bool) ([]byte, error)) { promptSecret = p }(promptSecret)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A password slot whose password is the typo itself: a
			// password try would open the repository.
			pwFile := filepath.Join(work, "pw-"+strings.ReplaceAll(tt.name, " ", "-"))
			os.WriteFile(pwFile, []byte(tt.typed+"\n"), 0o600)
			if code, _, errs := wabIn(t, home, "key", "add", "--repo", repo, "--key-file", key, "--new-password-file", pwFile); code != 0 {
				t.Fatalf("key add: %d %s", code, errs)
			}
			promptSecret = func(string, bool) ([]byte, error) { return []byte(tt.typed), nil }
			code, _, errs := wabIn(t, home, "snapshots", "--repo", repo)
			if code != exitWrongKey {
				t.Fatalf("exit %d, want %d: %s", code, exitWrongKey, errs)
			}
			oneErrorLine(t, tt.name, errs, "the 64-digit key typed: ")
			if !strings.Contains(errs, tt.want) || !strings.Contains(errs, "not tried as a password") {
				t.Fatalf("message %q, want %q", errs, tt.want)
			}
		})
	}
	// The right key at the prompt opens it; a password is still a password.
	promptSecret = func(string, bool) ([]byte, error) { return []byte(good), nil }
	if code, _, errs := wabIn(t, home, "snapshots", "--repo", repo); code != 0 {
		t.Fatalf("the key typed right: %d %s", code, errs)
	}
}
