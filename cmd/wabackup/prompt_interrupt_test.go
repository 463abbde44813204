package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCtrlCAtPrompt is issue 26, item 6: Ctrl-C at a secret prompt ends
// the command at once with exit 130 and the terminal as it was (echo on),
// instead of waiting for Enter. It runs wabackup in a real terminal
// (tmux), types Ctrl-C at the key-or-password prompt and reads the exit
// code and the terminal's echo setting from the same pane.
func TestCtrlCAtPrompt(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("WABACKUP_REQUIRE_SERVERS") == "1" {
			t.Fatal("tmux is missing (scripts/test.sh installs it)")
		}
		t.Skip("no tmux")
	}
	bin := intrBin(t)
	dir := t.TempDir()
	if out, code := intrRun(t, bin, dir, "init", "--repo", "repo", "--key-out", "key.txt", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	out, code := intrRun(t, bin, dir, "key", "list", "--repo", "repo", "--key-file", "key.txt", "--json")
	if code != 0 {
		t.Fatalf("key list: %d %s", code, out)
	}
	var slot string
	for _, m := range jsonLines(t, out) {
		if m["kind"] == "recovery" {
			slot, _ = m["id"].(string)
		}
	}
	if slot == "" {
		t.Fatalf("no recovery slot in %s", out)
	}
	for i, tt := range []struct {
		name, prompt string
		args         []string
	}{
		{"the key or password", "Enter the 64-digit key or the password:", []string{"snapshots", "--repo", "repo"}},
		{"a confirmation", `Type "remove" to remove it:`, []string{"key", "remove", slot[:8], "--repo", "repo", "--key-file", "key.txt"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("wabackup-prompt-%d-%s", i, filepath.Base(dir))
			env := []string{"env", "XDG_CONFIG_HOME=" + filepath.Join(dir, ".config"), "XDG_CACHE_HOME=" + filepath.Join(dir, ".cache"), bin}
			shell := strings.Join(quoteAll(append(env, tt.args...)), " ") +
				`; echo "exit=$?"; stty -a | tr ' ' '\n' | grep -x -- '-\?echo' | sed 's/^/tty:/'; sleep 30`
			cmd := exec.Command("tmux", "-L", name, "-f", "/dev/null", "new-session", "-d", "-s", name, "-x", "120", "-y", "10", "-c", dir, shell)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("tmux: %v %s", err, out)
			}
			defer exec.Command("tmux", "-L", name, "kill-server").Run()
			screen := func() string {
				out, _ := exec.Command("tmux", "-L", name, "capture-pane", "-p", "-t", name).Output()
				return string(out)
			}
			wait := func(what string, ok func(string) bool) string {
				t.Helper()
				deadline := time.Now().Add(20 * time.Second)
				for time.Now().Before(deadline) {
					if s := screen(); ok(s) {
						return s
					}
					time.Sleep(20 * time.Millisecond)
				}
				t.Fatalf("no %s; the screen:\n%s", what, screen())
				return ""
			}
			wait("prompt", func(s string) bool { return strings.Contains(s, tt.prompt) })
			time.Sleep(200 * time.Millisecond) // the prompt reads from the terminal now
			sent := time.Now()
			if out, err := exec.Command("tmux", "-L", name, "send-keys", "-t", name, "C-c").CombinedOutput(); err != nil {
				t.Fatalf("send-keys: %v %s", err, out)
			}
			s := wait("exit line", func(s string) bool { return strings.Contains(s, "tty:") })
			took := time.Since(sent)
			if !strings.Contains(s, "exit=130") {
				t.Fatalf("Ctrl-C at the prompt: no exit 130; the screen:\n%s", s)
			}
			if !strings.Contains(s, "tty:echo") || strings.Contains(s, "tty:-echo") {
				t.Fatalf("the terminal was left without echo; the screen:\n%s", s)
			}
			t.Logf("ended %v after Ctrl-C:\n%s", took.Round(time.Millisecond), s)
		})
	}
	// Nothing was removed.
	if out, code := intrRun(t, bin, dir, "snapshots", "--repo", "repo", "--key-file", "key.txt"); code != 0 {
		t.Fatalf("the key after Ctrl-C at the confirmation: %d %s", code, out)
	}
}
