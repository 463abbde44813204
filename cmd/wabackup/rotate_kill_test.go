package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGKILL at random points of key rotate --rewrite on a 1 GB repository
// (issue 15, acceptance 3): after each kill check --read-data passes, and
// the last run finishes the job re-encrypting only the packs still under
// the old key.
func TestRotateRewriteKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1 GiB")
	}
	bin := intrBin(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "Media")
	var seed [32]byte
	s := uint64(time.Now().UnixNano())
	t.Logf("seed %d", s)
	rng := rand.New(rand.NewPCG(s, 1))
	stream := rand.NewChaCha8(seed)
	buf := make([]byte, 8<<20)
	for i := 0; i < 128; i++ {
		stream.Read(buf)
		p := filepath.Join(media, fmt.Sprintf("WhatsApp Video/%02d", i/16), fmt.Sprintf("VID-%03d.mp4", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, int) {
		t.Helper()
		return intrRun(t, bin, dir, args...)
	}
	if out, code := run("init", "--repo", "repo", "--key-out", "k1", "-q"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	start := time.Now()
	if out, code := run("backup", "--repo", "repo", "--key-file", "k1", "--media", "Media", "-q"); code != 0 {
		t.Fatalf("backup: %d %s", code, out)
	}
	backupTook := time.Since(start)
	packs, err := filepath.Glob(filepath.Join(dir, "repo", "data", "*", "*"))
	if err != nil || len(packs) < 20 {
		t.Fatalf("%d packs (%v)", len(packs), err)
	}
	oldPacks := regexp.MustCompile(`and (\d+) pack\(s\) are still under key epoch`)
	stillOld := func() int {
		t.Helper()
		out, code := run("check", "--read-data", "--repo", "repo", "--key-file", "k1")
		if code != 0 {
			t.Fatalf("check --read-data after a kill: exit %d\n%s", code, out)
		}
		if m := oldPacks.FindStringSubmatch(out); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
		return 0
	}
	for i := 0; i < 3; i++ {
		cmd := exec.Command(bin, "key", "rotate", "--rewrite", "--force", "--repo", "repo", "--key-file", "k1", "--key-out", fmt.Sprintf("k%d", i+2), "-q")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, ".config"), "XDG_CACHE_HOME="+filepath.Join(dir, ".cache"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rng.Int64N(int64(backupTook) * 3 / 4))
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		killed := err != nil
		t.Logf("kill %d after %v: killed %v", i+1, delay.Round(time.Millisecond), killed)
		n := stillOld()
		t.Logf("after kill %d: %d of %d packs still under the old key", i+1, n, len(packs))
	}
	left := stillOld()
	out, code := run("key", "rotate", "--rewrite", "--force", "--force", "--repo", "repo", "--key-file", "k1", "--key-out", "k9", "--json")
	if code != 0 {
		t.Fatalf("the last rotate --rewrite: exit %d\n%s", code, out)
	}
	var res struct {
		Rewritten     bool `json:"rewritten"`
		PacksRewriten int  `json:"packs_rewritten"`
		PacksSkipped  int  `json:"packs_skipped"`
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(line, `"key_rotated"`) {
			json.Unmarshal([]byte(line), &res)
		}
	}
	t.Logf("the last run: %+v (%d packs were still under the old key)", res, left)
	if !res.Rewritten || res.PacksRewriten+res.PacksSkipped != len(packs) {
		t.Fatalf("the last run: %+v, %d packs in the store", res, len(packs))
	}
	// It re-encrypted what was left, and nothing done before again (or,
	// when the kills all came before the rotation's keyring, everything
	// once).
	if left > 0 && res.PacksRewriten != left {
		t.Errorf("the last run re-encrypted %d packs; %d were still under the old key", res.PacksRewriten, left)
	}
	if out, code := run("check", "--read-data", "--repo", "repo", "--key-file", "k1"); code != 0 || strings.Contains(out, "still under key epoch") {
		t.Fatalf("check after the last run: exit %d\n%s", code, out)
	}
	// The key kept through every run restores it.
	if out, code := run("restore", "latest", "--repo", "repo", "--key-file", "k1", "--target", "out", "-q"); code != 0 {
		t.Fatalf("restore: %d %s", code, out)
	}
}
