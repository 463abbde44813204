package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Progress in a real terminal (tmux): backup and restore show a
// percentage and an ETA; with stderr not a terminal nothing is drawn
// (issue 13, point 6).
func TestProgressInTerminal(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 384 MiB")
	}
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("WABACKUP_REQUIRE_SERVERS") == "1" {
			t.Fatal("tmux is missing (scripts/test.sh installs it)")
		}
		t.Skip("no tmux")
	}
	bin := intrBin(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "Media")
	os.MkdirAll(media, 0o755)
	var seed [32]byte
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 8<<20)
	write := func() {
		for i := 0; i < 48; i++ {
			rng.Read(buf)
			os.WriteFile(filepath.Join(media, "VID-"+strconv.Itoa(i)+".mp4"), buf, 0o644)
		}
	}
	write()
	if out, code := intrRun(t, bin, dir, "init", "--repo", "repo", "--key-out", "key.txt", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	if out, code := intrRun(t, bin, dir, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media"); code != 0 || strings.ContainsAny(out, "%\r") {
		t.Fatalf("backup with stderr not a terminal: exit %d, output %q", code, out)
	}
	pct := regexp.MustCompile(`\d+%`)
	eta := regexp.MustCompile(`\[\d+s:\d+s\]`)
	rate := regexp.MustCompile(`([\d.]+) (B|KiB|MiB|GiB)/s`)
	inTmux := func(name string, args ...string) string {
		t.Helper()
		env := []string{"env", "XDG_CONFIG_HOME=" + filepath.Join(dir, ".config"), "XDG_CACHE_HOME=" + filepath.Join(dir, ".cache"), bin}
		shell := strings.Join(quoteAll(append(env, args...)), " ") + "; sleep 30"
		// A server of its own per session (-L), so that one exiting
		// cannot take the next one down.
		cmd := exec.Command("tmux", "-L", name, "-f", "/dev/null", "new-session", "-d", "-s", name, "-x", "160", "-y", "8", "-c", dir, shell)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tmux: %v %s", err, out)
		}
		defer exec.Command("tmux", "-L", name, "kill-server").Run()
		deadline := time.Now().Add(60 * time.Second)
		var screen string
		for time.Now().Before(deadline) {
			out, _ := exec.Command("tmux", "-L", name, "capture-pane", "-p", "-t", name).Output()
			screen = string(out)
			if m := rate.FindStringSubmatch(screen); m != nil && m[2] == "GiB" {
				t.Fatalf("%s: an absurd rate: %s", name, m[0])
			}
			if pct.MatchString(screen) && eta.MatchString(screen) && rate.MatchString(screen) {
				return screen
			}
			if strings.Contains(screen, "restored ") || strings.Contains(screen, "saved: ") {
				break
			}
			time.Sleep(15 * time.Millisecond)
		}
		t.Fatalf("%s: no progress line with a percentage and an ETA; the screen:\n%s", name, screen)
		return ""
	}
	write() // every file changed: the second backup reads them all
	name := "wabackup-progress-" + filepath.Base(dir)
	t.Logf("backup:\n%s", inTmux(name+"-b", "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media"))
	t.Logf("restore:\n%s", inTmux(name+"-r", "restore", "latest", "--repo", "repo", "--key-file", "key.txt", "--target", "out"))
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}
