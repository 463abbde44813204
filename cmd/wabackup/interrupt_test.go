package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// intrBin returns a path that runs this test binary as wabackup (the
// testscript.Main dispatch goes by the program's name).
func intrBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "wabackup")
	if err := os.Symlink(os.Args[0], bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func intrRun(t *testing.T, bin, dir string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, ".config"), "XDG_CACHE_HOME="+filepath.Join(dir, ".cache"))
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// Ctrl-C during a backup: exit 130 with one line, nothing half-written is
// referenced (check passes, no snapshot), and the next backup completes
// re-using what was stored.
func TestInterruptedBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 160 MiB")
	}
	bin := intrBin(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "Media")
	os.MkdirAll(media, 0o755)
	var seed [32]byte
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 8<<20)
	for i := 0; i < 20; i++ {
		rng.Read(buf)
		if err := os.WriteFile(filepath.Join(media, "VID-"+strings.Repeat("x", i%5)+string(rune('a'+i))+".mp4"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := intrRun(t, bin, dir, "init", "--repo", "repo", "--key-out", "key.txt", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	// Find a moment inside the backup: time a full one first.
	if out, code := intrRun(t, bin, dir, "backup", "--repo", "repo2", "--key-file", "key.txt", "--media", "Media", "-q"); code != 10 {
		t.Fatalf("backup to a missing repo: %d %s", code, out)
	}
	intrRun(t, bin, dir, "init", "--repo", "timing", "--key-out", "key2.txt", "-q")
	start := time.Now()
	intrRun(t, bin, dir, "backup", "--repo", "timing", "--key-file", "key2.txt", "--media", "Media", "-q")
	full := time.Since(start)

	cmd := exec.Command(bin, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, ".config"), "XDG_CACHE_HOME="+filepath.Join(dir, ".cache"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(full / 2)
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code == 0 {
		t.Skipf("the backup finished before the interrupt (%v)", full)
	}
	if code != 130 {
		t.Fatalf("interrupted backup: exit %d, want 130; stderr %q", code, stderr.String())
	}
	if got := strings.TrimSpace(stderr.String()); got != "wabackup: interrupted" {
		t.Errorf("stderr = %q, want one line", got)
	}
	if out, code := intrRun(t, bin, dir, "check", "--repo", "repo", "--key-file", "key.txt"); code != 0 {
		t.Fatalf("check after interrupt: %d %s", code, out)
	}
	out, _ := intrRun(t, bin, dir, "snapshots", "--repo", "repo", "--key-file", "key.txt", "--json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("an interrupted backup left a snapshot: %s", out)
	}
	out, code = intrRun(t, bin, dir, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media", "--json")
	if code != 0 {
		t.Fatalf("backup after interrupt: %d %s", code, out)
	}
	var sum struct {
		AddedBytes int64 `json:"added_bytes"`
		Bytes      int64 `json:"bytes"`
	}
	json.Unmarshal([]byte(out), &sum)
	t.Logf("after the interrupt the backup added %d of %d bytes", sum.AddedBytes, sum.Bytes)
	if out, code := intrRun(t, bin, dir, "check", "--read-data", "--repo", "repo", "--key-file", "key.txt"); code != 0 {
		t.Fatalf("check: %d %s", code, out)
	}
}
