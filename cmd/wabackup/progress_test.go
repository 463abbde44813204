package main

import (
	"fmt"
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

// Progress in a real terminal (tmux): backup and restore show files done
// of the total, a percentage, an ETA and an IEC rate, check --read-data
// packs done of the total and a rate in packs; with stderr not a terminal
// none of them draws anything (issue 13, point 6).
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
	// Nothing drawn with stderr not a terminal: the output is the
	// summary line and the store's figures alone.
	quiet := func(what, summary string, args ...string) {
		t.Helper()
		out, code := intrRun(t, bin, dir, args...)
		// restore latest first says which snapshot latest is.
		if note, rest, ok := strings.Cut(out, "\n"); ok && strings.HasPrefix(note, "latest is snapshot ") {
			out = rest
		}
		if code != 0 || strings.ContainsAny(out, "%\r\x1b") || strings.Count(out, "\n") != 2 || !strings.HasPrefix(out, summary) || !strings.Contains(out, "\nstore: ") {
			t.Fatalf("%s with stderr not a terminal: exit %d, output %q", what, code, out)
		}
	}
	quiet("backup", "snapshot ", "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media")
	pct := regexp.MustCompile(`\d+%`)
	eta := regexp.MustCompile(`\[\d+s:\d+s\]`)
	rate := regexp.MustCompile(`([\d.]+) (B|KiB|MiB|GiB)/s`)
	files := regexp.MustCompile(`files \d+/48 `)
	packs := regexp.MustCompile(`^check: packs +\d+% .*\([1-9]\d*/\d+, [1-9]\d* packs/(s|min)\)`)
	// inTmux runs wabackup in a tmux pane until a frame matches all of
	// want, and returns that frame.
	inTmux := func(name string, want []*regexp.Regexp, args ...string) string {
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
		var screen, matched string
		for time.Now().Before(deadline) {
			out, _ := exec.Command("tmux", "-L", name, "capture-pane", "-p", "-t", name).Output()
			screen = string(out)
			if m := rate.FindStringSubmatch(screen); m != nil && m[2] == "GiB" {
				t.Fatalf("%s: an absurd rate: %s", name, m[0])
			}
			ok := true
			for _, re := range want {
				ok = ok && re.MatchString(screen)
			}
			if ok && matched == "" {
				matched = screen
			}
			if strings.Contains(screen, "restored ") || strings.Contains(screen, "saved: ") || strings.Contains(screen, "no errors") {
				// Finished: killing the pane earlier would interrupt the
				// command and leave the repository for the next steps
				// with unindexed packs.
				if matched != "" {
					return matched
				}
				break
			}
			time.Sleep(15 * time.Millisecond)
		}
		if matched != "" {
			t.Fatalf("%s: did not finish within a minute; the screen:\n%s", name, screen)
		}
		t.Fatalf("%s: no progress line matching %q; the screen:\n%s", name, want, screen)
		return ""
	}
	write() // every file changed: the second backup reads them all
	name := "wabackup-progress-" + filepath.Base(dir)
	// The second backup has a total (the first snapshot's).
	line := []*regexp.Regexp{regexp.MustCompile(`^backup: `), files, pct, eta, rate}
	t.Logf("backup:\n%s", inTmux(name+"-b", line, "backup", "--repo", "repo", "--key-file", "key.txt", "--media", "Media"))
	// A line of its own: restore latest first says which snapshot latest
	// is, on the line above.
	line[0] = regexp.MustCompile(`(?m)^restore: `)
	t.Logf("restore:\n%s", inTmux(name+"-r", line, "restore", "latest", "--repo", "repo", "--key-file", "key.txt", "--target", "out"))
	t.Logf("check:\n%s", inTmux(name+"-c", []*regexp.Regexp{packs, eta}, "check", "--read-data", "--repo", "repo", "--key-file", "key.txt"))
	quiet("restore", "restored ", "restore", "latest", "--repo", "repo", "--key-file", "key.txt", "--target", "out-pipe", "--include", "Media/VID-1*")
	quiet("check --read-data", "no errors", "check", "--read-data", "--repo", "repo", "--key-file", "key.txt")
}

// The file count and the bytes of a progress line are drawn together:
// every frame shows the files and the bytes of the same update.
func TestProgressLineDrawsFilesWithTheirBytes(t *testing.T) {
	var out strings.Builder
	l := newProgressLine(&out, "restore", 3, 3<<20)
	for i := int64(1); i <= 2; i++ {
		time.Sleep(110 * time.Millisecond) // past the 100 ms between frames
		l.update(i, 3, i<<20)
		frames := strings.Split(out.String(), "\r")
		last := frames[len(frames)-1]
		if want := fmt.Sprintf("restore: files %d/3 ", i); !strings.HasPrefix(last, want) || !strings.Contains(last, fmt.Sprintf("(%d.0/3.0 MiB", i)) {
			t.Fatalf("after update %d the last frame is %q", i, last)
		}
	}
	l.finish()
}

// The rate shown (and the ETA from it) is over the last seconds, not the
// average since the start: after a fast second and six slow ones it is
// the slow rate. (The library's rolling rate: the mean of its last ten
// samples, each over at least half a second.)
func TestProgressRateIsASlidingWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 7 s")
	}
	var out strings.Builder
	l := newProgressLine(&out, "restore", -1, 1<<40)
	start := time.Now()
	var n int64
	feed := func(perStep int64, d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			time.Sleep(20 * time.Millisecond)
			n += perStep
			l.update(0, -1, n)
		}
	}
	feed(4<<20, time.Second) // 200 MiB/s
	slowFrom, slowN := time.Now(), n
	feed(200<<10, 6*time.Second) // 10 MiB/s
	frames := strings.Split(out.String(), "\r")
	last := frames[len(frames)-1]
	m := regexp.MustCompile(`, ([\d.]+) MiB/s\)`).FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("no MiB/s rate in %q", last)
	}
	shown, _ := strconv.ParseFloat(m[1], 64)
	slow := float64(n-slowN) / time.Since(slowFrom).Seconds() / (1 << 20)
	overall := float64(n) / time.Since(start).Seconds() / (1 << 20)
	t.Logf("shown %.1f MiB/s, the last 6 s %.1f MiB/s, since the start %.1f MiB/s", shown, slow, overall)
	if shown < slow*0.6 || shown > slow*1.5 || shown > overall*0.7 {
		t.Fatalf("rate shown %.1f MiB/s; the last 6 s ran at %.1f MiB/s, the average since the start is %.1f MiB/s (%q)", shown, slow, overall, last)
	}
	l.finish()
}

func TestFilesDone(t *testing.T) {
	for _, c := range []struct {
		done, total int64
		want        string
	}{
		{0, 0, "backup: files 0/0"},
		{12, -1, "backup: files 12"},
		{1234, 5678, "backup: files 1,234/5,678"},
		{999, 1000000, "backup: files 999/1,000,000"},
	} {
		if got := filesDone("backup", c.done, c.total); got != c.want {
			t.Errorf("filesDone(%d, %d) = %q, want %q", c.done, c.total, got, c.want)
		}
	}
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}
