package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// tourSubstitutions are the only changes the test makes to the README's
// tour before it runs it: each must match exactly once, and every other
// line runs as written.
var tourSubstitutions = []struct{ old, new, why string }{
	{`"1dcf d86e ... b78c"`, `"$(tour_key)"`, "the placeholder key: the 64-digit key init printed above"},
	{`3f2a81c0`, `"$(tour_slot)"`, "the example slot id: a password slot that key list shows (not the one in use)"},
}

// configSubstitution is the only change made to the README's config file:
// its home directory is the test's.
const configSubstitution = "/home/me"

// tourPrelude runs before the tour: set -e (and pipefail) semantics, a
// failing command named on stderr, and the two functions the
// substitutions call. The tour's standard output goes to $TOUR_OUT, so
// tour_key reads what init printed.
const tourPrelude = `set -eo pipefail
trap 'echo "tour: line $LINENO: exit $?: $BASH_COMMAND" >&2' ERR
cd "$TOUR_CWD"
tour_key() {
	local line re='^    ([0-9a-f]{4}( [0-9a-f]{4}){15})$'
	while IFS= read -r line; do
		if [[ $line =~ $re ]]; then printf '%s\n' "${BASH_REMATCH[1]}"; return 0; fi
	done < "$TOUR_OUT"
	echo "tour: init printed no 64-digit key" >&2; return 1
}
tour_slot() {
	local line id= re='"id":"([0-9a-f]{8})[0-9a-f]*"'
	while IFS= read -r line; do
		if [[ $line == *'"kind":"password"'* && $line == *'"current":false'* && $line =~ $re ]]; then id=${BASH_REMATCH[1]}; fi
	done < <(wabackup key list --json)
	if [[ -z $id ]]; then echo "tour: key list shows no password slot to remove" >&2; return 1; fi
	printf '%s\n' "$id"
}
`

const tourDone = "tour: every step ran"

// readmeBlock returns the first fenced block (```fence) after the line
// heading of README.md, and the README line number of its first line.
func readmeBlock(t *testing.T, readme []string, heading, fence string) (int, []string) {
	t.Helper()
	for i, l := range readme {
		if l != heading {
			continue
		}
		for j := i + 1; j < len(readme); j++ {
			if strings.HasPrefix(readme[j], "## ") || strings.HasPrefix(readme[j], "### ") {
				break // the next section
			}
			if readme[j] != "```"+fence {
				continue
			}
			for k := j + 1; k < len(readme); k++ {
				if readme[k] == "```" {
					return j + 2, readme[j+1 : k]
				}
			}
			t.Fatalf("README.md: the block after %q is not closed", heading)
		}
		t.Fatalf("README.md: no ```%s block after %q", fence, heading)
	}
	t.Fatalf("README.md: no section %q", heading)
	return 0, nil
}

// tourScript applies tourSubstitutions to the tour's lines and checks
// that each matched once and that every other line is unchanged.
func tourScript(t *testing.T, block []string) []string {
	t.Helper()
	out := make([]string, len(block))
	used := make([]int, len(tourSubstitutions))
	for i, l := range block {
		out[i] = l
		for j, s := range tourSubstitutions {
			used[j] += strings.Count(l, s.old)
			out[i] = strings.ReplaceAll(out[i], s.old, s.new)
		}
	}
	for j, s := range tourSubstitutions {
		if used[j] != 1 {
			t.Fatalf("README tour: the substitution of %q (%s) matched %d times, want exactly once: update the README or the test", s.old, s.why, used[j])
		}
	}
	// Every line is the README's, or the README's with one substitution.
	changed := 0
	for i := range block {
		if out[i] == block[i] {
			continue
		}
		ok := false
		for _, s := range tourSubstitutions {
			if strings.Replace(block[i], s.old, s.new, 1) == out[i] {
				ok = true
			}
		}
		if !ok {
			t.Fatalf("README tour line %q would run as %q: not one of the listed substitutions", block[i], out[i])
		}
		changed++
	}
	if changed != len(tourSubstitutions) {
		t.Fatalf("README tour: %d lines changed, want %d (one per substitution)", changed, len(tourSubstitutions))
	}
	return out
}

func readmeLines(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(data), "\n")
}

// Issue 13, acceptance 2: the README's five-minute tour runs as written
// (but for the substitutions listed above) with bash against the real
// binary in a fresh HOME holding the sample data in ~/chat; then the
// config file of "Settings, secrets and cron", written where and as the
// README shows, makes a plain `wabackup backup` and `wabackup snapshots`
// work.
func TestReadmeTour(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed to run the README's tour")
	}
	readme := readmeLines(t)
	start, block := readmeBlock(t, readme, "## A five-minute tour", "sh")
	tour := tourScript(t, block)

	bin := intrBin(t)
	home, aux := t.TempDir(), t.TempDir()
	if err := os.CopyFS(filepath.Join(home, "chat"), os.DirFS("../../testdata/sample")); err != nil {
		t.Fatal(err)
	}
	pw1, pw2 := "correct horse battery staple", "tr0ub4dor&3"
	newPwFile := filepath.Join(aux, "new-password")
	if err := os.WriteFile(newPwFile, []byte(pw2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	baseEnv := []string{"HOME=" + home, "PATH=" + filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "TMPDIR=" + aux}
	if v := os.Getenv("GOCOVERDIR"); v != "" {
		baseEnv = append(baseEnv, "GOCOVERDIR="+v)
	}

	prelude := strings.Split(strings.TrimSuffix(tourPrelude, "\n"), "\n")
	script := strings.Join(prelude, "\n") + "\n" + strings.Join(tour, "\n") + "\necho '" + tourDone + "' >&2\n"
	scriptFile, outFile := filepath.Join(aux, "tour.sh"), filepath.Join(aux, "tour.out")
	if err := os.WriteFile(scriptFile, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bash, "--noprofile", "--norc", scriptFile)
	cmd.Dir = aux
	// The password of init --password and of the commands before the key
	// file is named; the new password of key passwd and key add: the
	// non-interactive ways the README names.
	// The tour runs in a directory that is not HOME (issue 26, item 13):
	// every file it names is under ~, so it works wherever one stands.
	cwd := t.TempDir()
	cmd.Env = slices.Concat(baseEnv, []string{"TOUR_OUT=" + outFile, "TOUR_CWD=" + cwd, "WABACKUP_PASSWORD=" + pw1, "WABACKUP_NEW_PASSWORD_FILE=" + newPwFile})
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	runErr := cmd.Run()
	stdout, _ := os.ReadFile(outFile)
	t.Logf("the tour's output:\n%s\n%s", stdout, stderr.String())
	if m := regexp.MustCompile(`tour: line (\d+): exit (\d+): (.*)`).FindStringSubmatch(stderr.String()); m != nil {
		n, _ := strconv.Atoi(m[1])
		if i := n - len(prelude) - 1; i >= 0 && i < len(block) {
			t.Fatalf("README.md:%d: %q failed with exit code %s (ran as: %s)", start+i, block[i], m[2], m[3])
		}
		t.Fatalf("the tour failed outside the README's lines: line %d of the script, exit %s: %s", n, m[2], m[3])
	}
	if runErr != nil || !strings.HasSuffix(strings.TrimSpace(stderr.String()), tourDone) {
		t.Fatalf("the tour did not run to its end: %v", runErr)
	}

	// It did what it says: step 4 restored everything, then just the
	// voice notes; step 5 reassembled the database.
	same := func(a, b string) {
		t.Helper()
		da, err := describeTree(a)
		if err != nil {
			t.Fatal(err)
		}
		db, err := describeTree(b)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(da, "\n") != strings.Join(db, "\n") {
			t.Errorf("%s and %s differ:\n%s\n---\n%s", a, b, strings.Join(da, "\n"), strings.Join(db, "\n"))
		}
	}
	same(filepath.Join(home, "chat", "Media"), filepath.Join(home, "restored", "Media"))
	same(filepath.Join(home, "chat", "Media", "WhatsApp Voice Notes"), filepath.Join(home, "r", "Media", "WhatsApp Voice Notes"))
	if ents, _ := os.ReadDir(filepath.Join(home, "r", "Media")); len(ents) != 1 {
		t.Errorf("restore --include 'Media/WhatsApp Voice Notes' wrote %d folders into ~/r/Media, want 1", len(ents))
	}
	for _, f := range []string{filepath.Join(home, "msgstore.db"), filepath.Join(home, "restored", "msgstore.db"), filepath.Join(home, "restored", "wa.db")} {
		a, _ := os.ReadFile(filepath.Join(home, "chat", filepath.Base(f)))
		b, err := os.ReadFile(f)
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s is not the sample database (%v)", f, err)
		}
	}
	// Step 8: the password of step 1 was replaced, a password and a key
	// were added, and a password slot removed.
	wab := func(env []string, args ...string) (string, int) {
		t.Helper()
		c := exec.Command(bin, args...)
		c.Dir, c.Env = home, env
		o, err := c.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(o), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(o), 0
	}
	repo := filepath.Join(home, "backup", "chat")
	o, code := wab(baseEnv, "key", "list", "--repo", repo, "--key-file", filepath.Join(home, "key.txt"), "--json")
	kinds := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
		var s struct{ Kind string }
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("key list --json: %d %s", code, o)
		}
		kinds[s.Kind]++
	}
	if code != 0 || kinds["recovery"] != 2 || kinds["password"] != 1 || len(kinds) != 2 {
		t.Errorf("after the tour the slots are %v, want 2 recovery and 1 password:\n%s", kinds, o)
	}
	if o, code := wab(slices.Concat(baseEnv, []string{"WABACKUP_PASSWORD=" + pw2}), "snapshots", "--repo", repo, "-q"); code != 0 {
		t.Errorf("the password of key passwd does not open the repository: %d %s", code, o)
	}
	if o, code := wab(slices.Concat(baseEnv, []string{"WABACKUP_PASSWORD=" + pw1}), "snapshots", "--repo", repo, "-q"); code != exitWrongKey {
		t.Errorf("the password key passwd replaced still opens the repository: %d %s", code, o)
	}

	// The config file, as "Settings, secrets and cron" shows it.
	cstart, conf := readmeBlock(t, readme, "### Settings, secrets and cron", "")
	where, ok := strings.CutPrefix(conf[0], "# ~/")
	if !ok {
		t.Fatalf("README.md:%d: the config example does not start with # ~/PATH: %q", cstart, conf[0])
	}
	confPath := filepath.Join(home, where)
	if want := filepath.Join(home, ".config", "wabackup", "config"); confPath != want {
		t.Fatalf("README.md:%d: the config example is at %s, not at $XDG_CONFIG_HOME/wabackup/config", cstart, conf[0])
	}
	text := strings.Join(conf, "\n") + "\n"
	if !strings.Contains(text, configSubstitution) {
		t.Fatalf("README.md:%d: the config example has no %s to replace with the test's home", cstart, configSubstitution)
	}
	text = strings.ReplaceAll(text, configSubstitution, home)
	if err := os.MkdirAll(filepath.Dir(confPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(confPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// The key file it names holds the key of the tour's repository.
	keyFile := ""
	for _, l := range conf {
		if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "key-file" {
			keyFile = strings.ReplaceAll(strings.TrimSpace(v), configSubstitution, home)
		}
	}
	key, err := os.ReadFile(filepath.Join(home, "key.txt"))
	if err != nil || keyFile == "" {
		t.Fatalf("the key file: %q %v", keyFile, err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if o, code := wab(baseEnv, "backup"); code != 0 {
		t.Fatalf("wabackup backup with the README's config file: exit %d\n%s\nconfig:\n%s", code, o, text)
	}
	if o, code := wab(baseEnv, "snapshots"); code != 0 || !strings.Contains(o, "2 snapshot(s)") {
		t.Fatalf("wabackup snapshots with the README's config file: exit %d\n%s", code, o)
	}
	o, _ = wab(baseEnv, "snapshots", "--json")
	var list struct {
		Snapshots []struct {
			DB, Media string
			DBs       []struct{ Path string }
		}
	}
	if err := json.Unmarshal([]byte(o), &list); err != nil || len(list.Snapshots) != 2 {
		t.Fatalf("snapshots --json: %v %s", err, o)
	}
	if s := list.Snapshots[1]; len(s.DBs) != 2 || s.DBs[0].Path != filepath.Join(home, "chat", "msgstore.db") || s.DBs[1].Path != filepath.Join(home, "chat", "wa.db") || s.Media != filepath.Join(home, "chat", "Media") {
		t.Errorf("the backup made with the config file holds %+v and %q, not the config's two databases and media", s.DBs, s.Media)
	}
}
