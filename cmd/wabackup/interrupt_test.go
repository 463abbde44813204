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
	if !strings.Contains(out, `"snapshots":[]`) {
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

// stagedFiles lists what is left in a local repository's staging
// directory.
func stagedFiles(t *testing.T, repo string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(repo, ".tmp"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Acceptance 5 of issue 12: a backup to a local repository killed
// (SIGKILL) ten times at random moments leaves no staged file, and after
// the next backup check reports no orphan.
func TestKilledBackupsLeaveNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 40 MiB ten times")
	}
	bin := intrBin(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "Media")
	os.MkdirAll(media, 0o755)
	var seed [32]byte
	seed[0] = 5
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 4<<20)
	for i := 0; i < 10; i++ {
		rng.Read(buf)
		if err := os.WriteFile(filepath.Join(media, "VID-"+string(rune('a'+i))+".mp4"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := intrRun(t, bin, dir, "init", "--repo", "timing", "--key-out", "k0.txt", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	start := time.Now()
	intrRun(t, bin, dir, "backup", "--repo", "timing", "--key-file", "k0.txt", "--media", "Media", "-q")
	full := time.Since(start)
	if out, code := intrRun(t, bin, dir, "init", "--repo", "repo", "--key-out", "key.txt", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	pick := rand.New(rand.NewPCG(3, 4))
	killed := 0
	for i := 0; i < 10; i++ {
		// Change most files each time, so every run has as much to store
		// as the timed one.
		for k := 0; k < 8; k++ {
			rng.Read(buf)
			os.WriteFile(filepath.Join(media, "VID-"+string(rune('a'+k))+".mp4"), buf, 0o644)
		}
		cmd := exec.Command(bin, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media", "-q")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, ".config"), "XDG_CACHE_HOME="+filepath.Join(dir, ".cache"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration((0.1 + 0.8*pick.Float64()) * float64(full)))
		cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err != nil {
			killed++
		}
		if left := stagedFiles(t, filepath.Join(dir, "repo")); len(left) > 0 {
			t.Fatalf("kill %d left staged files: %v", i+1, left)
		}
	}
	t.Logf("%d of 10 backups were killed before they finished", killed)
	if out, code := intrRun(t, bin, dir, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media", "-q"); code != 0 {
		t.Fatalf("backup after the kills: %d %s", code, out)
	}
	if left := stagedFiles(t, filepath.Join(dir, "repo")); len(left) > 0 {
		t.Fatalf("staged files after the next backup: %v", left)
	}
	out, code := intrRun(t, bin, dir, "check", "--repo", "repo", "--key-file", "key.txt")
	if code != 0 || strings.Contains(out, "warning") || strings.Contains(out, "orphan") || strings.Contains(out, "not in any index") {
		t.Fatalf("check after the kills and a backup: %d %s", code, out)
	}
}
