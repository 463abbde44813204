//go:build unix

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/internal/testservers"
)

// TestChaos (issue 24, acceptance 4) runs backups and restores against a
// real S3 server (versitygw) through toxiproxy while it breaks the link in
// the ways a home connection does: half of the connections reset 300 ms
// into their answer, connections that stop answering, connections cut
// after a few kilobytes, answers sliced into tiny writes, and a slow link.
// Every run must end within the run's retry budget plus one idle timeout
// (and some slack for the work itself), with exit 0 or one line naming the
// store, the operation and the last error (exit 1); after every round,
// with the toxics gone, check passes; at the end a restore is identical to
// the source. Nothing already stored is lost: a failed backup leaves the
// repository as it was, and the next one goes on.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a dozen backups and restores through toxiproxy")
	}
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	toxi := testservers.StartToxiproxy(t, srv.Endpoint)
	c := newS3CLI(t, srv)
	db, media := faultData(t, t.TempDir(), 12)

	const (
		idle   = 2 * time.Second // per connection silence
		budget = 8 * time.Second // the run's time without progress
		slack  = 40 * time.Second
	)
	bucket := fmt.Sprintf("wab-chaos-%d", os.Getpid())
	repo := fmt.Sprintf("s3:http://%s/%s/repo?idle-timeout=%v&retry-budget=%v", toxi.Addr(), bucket, idle, budget)
	key := filepath.Join(c.dir, "key.txt")
	flags := []string{"--repo", repo, "--key-file", key, "--retry-budget", budget.String()}
	c.run(0, "init", "--repo", repo, "--s3-create-bucket", "--key-out", key, "-q")

	rounds := []struct {
		name   string
		toxics func()
		// ok: the run must succeed; else it may succeed or fail with the
		// clear error, but must end in time.
		ok bool
	}{
		{"reset half of the connections 300 ms into the answer", func() {
			toxi.Toxic("reset", "reset_peer", "downstream", 0.5, map[string]any{"timeout": 300})
		}, false},
		{"slicer: answers in tiny writes", func() {
			toxi.Toxic("slice", "slicer", "downstream", 1, map[string]any{"average_size": 512, "size_variation": 256, "delay": 10})
		}, true},
		{"slow link: 2 MB/s each way", func() {
			toxi.Toxic("up", "bandwidth", "upstream", 1, map[string]any{"rate": 2000})
			toxi.Toxic("down", "bandwidth", "downstream", 1, map[string]any{"rate": 2000})
		}, true},
		{"connections cut after 64 KiB", func() {
			toxi.Toxic("limit", "limit_data", "downstream", 1, map[string]any{"bytes": 64 << 10})
		}, false},
		{"the server stops answering", func() {
			toxi.Toxic("silence", "timeout", "downstream", 1, map[string]any{"timeout": 0})
		}, false},
	}
	for i, rd := range rounds {
		t.Run(rd.name, func(t *testing.T) {
			// Something new to store each round.
			extra := filepath.Join(media, "chaos", fmt.Sprintf("round-%d.bin", i))
			if err := os.MkdirAll(filepath.Dir(extra), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(extra, []byte(strings.Repeat(fmt.Sprintf("round %d ", i), 300_000)), 0o644); err != nil {
				t.Fatal(err)
			}
			rd.toxics()
			for _, args := range [][]string{
				append([]string{"backup", "--db", db, "--media", media, "-q"}, flags...),
				append([]string{"restore", "latest", "--target", filepath.Join(c.dir, fmt.Sprintf("r%d", i)), "-q"}, flags...),
			} {
				r := runWab(c.dir, c.env, 5*time.Minute, args...)
				if r.err != nil {
					t.Fatalf("wabackup %s: %v", args[0], r.err)
				}
				t.Logf("%s under %q: exit %d in %v %s", args[0], rd.name, r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
				if r.took > budget+idle+slack {
					t.Errorf("%s took %v: more than the retry budget %v + idle timeout %v (+%v)", args[0], r.took, budget, idle, slack)
				}
				switch {
				case r.code == 0:
				case rd.ok:
					t.Fatalf("%s: exit %d under %q, want 0: %s", args[0], r.code, rd.name, r.stderr)
				case r.code != exitFatal:
					t.Fatalf("%s: exit %d, want 0 or %d: %s", args[0], r.code, exitFatal, r.stderr)
				default:
					if msg := r.failureShape(); msg != "" {
						t.Fatalf("%s: %s", args[0], msg)
					}
					if !strings.Contains(r.stderr, toxi.Addr()) {
						t.Errorf("%s: the error does not name the store: %s", args[0], r.stderr)
					}
				}
			}
			toxi.Clear()
			c.run(0, append([]string{"check"}, flags...)...)
		})
	}
	// All toxics gone: a backup stores whatever a failed round left, and
	// the restore is the source.
	c.run(0, append([]string{"backup", "--db", db, "--media", media, "-q"}, flags...)...)
	c.run(0, append([]string{"check", "--read-data"}, flags...)...)
	target := filepath.Join(c.dir, "final")
	c.run(0, append([]string{"restore", "latest", "--target", target, "-q"}, flags...)...)
	if got := treeDigest(t, filepath.Join(target, "Media")); got != treeDigest(t, media) {
		t.Errorf("the final restore differs from the source")
	}
}
