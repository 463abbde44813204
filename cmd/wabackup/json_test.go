package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// jsonExempt are the commands that need no JSON case, and why. Every
// other command of the tree needs one in TestJSONEverywhere; a usage
// error is JSON for all of them all the same.
var jsonExempt = map[string]string{
	"help":                  "prints help text (as --help does; docs/JSON.md says so)",
	"exit-codes":            "a help topic: prints its text (docs/JSON.md says so)",
	"completion bash":       "writes a shell script (as generate --completion does; docs/JSON.md says so)",
	"completion zsh":        "writes a shell script",
	"completion fish":       "writes a shell script",
	"completion powershell": "writes a shell script",
	"key escrow":            "needs a key vault server (vault_test.go runs it)",
	"key recover":           "needs a key vault server (vault_test.go runs it)",
	"key vault-status":      "needs a key vault server (vault_test.go runs it)",
	"key vault-passwd":      "needs a key vault server (vault_test.go runs it)",
	"key vault-delete":      "needs a key vault server (vault_test.go runs it)",
}

// jsonNullOK are the keys whose value may be null: the columns of a
// row (SQL NULL), and the time of a snapshot's last full database check
// when there never was one. Any other null fails: lists are [], never null.
var jsonNullOK = map[string]func(path string) bool{
	"row":       func(string) bool { return true },
	"snapshots": func(p string) bool { return p == "snapshots[].db_full_check" },
}

// jsonCase runs wabackup CMD ARGS... --json.
type jsonCase struct {
	cmd   string   // the command path below wabackup, e.g. "key add"
	args  []string // after it; $NAME is what an earlier case saved
	env   []string // more environment (e.g. another repository)
	code  int      // the exit code
	types []string // message types that must be among the lines
	raw   bool     // stdout is raw data, not JSON (documented)
	check func(t *testing.T, msgs []map[string]any, stdout string)
}

// commandPaths lists every command of the tree ("" for the root), with
// cobra's help and completion commands, as Execute adds them.
func commandPaths() map[string]*cobra.Command {
	root := newApp(io.Discard, io.Discard).rootCommand()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	out := map[string]*cobra.Command{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		out[strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), root.Name()), " ")] = c
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return out
}

// jsonDoc reads docs/JSON.md's table: the fields documented for each
// message type (the union over the rows that name it).
func jsonDoc(t *testing.T) map[string]map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../../docs/JSON.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile("`([a-z_]+)\\??`")
	doc := map[string]map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		cols := strings.Split(l, "|")
		if len(cols) != 5 || strings.HasPrefix(strings.TrimSpace(cols[1]), "---") {
			continue
		}
		fields := map[string]bool{}
		for _, m := range name.FindAllStringSubmatch(cols[3], -1) {
			fields[m[1]] = true
		}
		for _, m := range name.FindAllStringSubmatch(cols[2], -1) {
			if doc[m[1]] == nil {
				doc[m[1]] = map[string]bool{}
			}
			for f := range fields {
				doc[m[1]][f] = true
			}
		}
	}
	if len(doc) < 10 {
		t.Fatalf("docs/JSON.md: found only %d message types in its table", len(doc))
	}
	return doc
}

// checkJSONLines checks that stdout is JSON objects, one a line, each with a
// string message_type, no null but where jsonNullOK allows one, and only
// the fields docs/JSON.md documents for its type.
func checkJSONLines(t *testing.T, what, stdout string, doc map[string]map[string]bool) []map[string]any {
	t.Helper()
	if stdout == "" {
		return nil
	}
	if !strings.HasSuffix(stdout, "\n") {
		t.Errorf("%s: stdout does not end with a newline: %q", what, stdout)
	}
	var msgs []map[string]any
	bad := 0
	for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(l))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil || m == nil || dec.More() {
			if bad++; bad == 1 {
				t.Errorf("%s: a line that is not one JSON object: %q (%v)", what, l, err)
			}
			continue
		}
		mt, ok := m["message_type"].(string)
		if !ok || mt == "" {
			t.Errorf("%s: a line without a string message_type: %s", what, l)
			continue
		}
		fields, documented := doc[mt]
		if !documented {
			t.Errorf("%s: message_type %q is not documented in docs/JSON.md", what, mt)
		}
		for k := range m {
			if k != "message_type" && documented && mt != "row" && !fields[k] {
				t.Errorf("%s: field %q of %q is not documented in docs/JSON.md", what, k, mt)
			}
		}
		var nulls []string
		findNulls(m, "", &nulls)
		for _, p := range nulls {
			if ok := jsonNullOK[mt]; ok == nil || !ok(p) {
				t.Errorf("%s: %s is null in %s (lists are [], never null)", what, p, l)
			}
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// findNulls lists the paths (list indices as []) of the null values in v.
func findNulls(v any, path string, out *[]string) {
	switch x := v.(type) {
	case nil:
		*out = append(*out, path)
	case map[string]any:
		for k, e := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			findNulls(e, p, out)
		}
	case []any:
		for _, e := range x {
			findNulls(e, path+"[]", out)
		}
	}
}

func msgTypes(msgs []map[string]any) []string {
	var out []string
	for _, m := range msgs {
		if mt, ok := m["message_type"].(string); ok && !slices.Contains(out, mt) {
			out = append(out, mt)
		}
	}
	return out
}

// Issue 13, point 7: with --json every command prints JSON objects with a
// message_type, one a line; lists are [] when empty, never null; every
// message type and field is documented in docs/JSON.md; a usage error
// (unknown flag, bad duration, a missing or extra argument, a missing
// subcommand) is one exit_error line with code 1, and exit 1. The cases
// run in order against one small repository (two snapshots of
// testdata/sample) and an empty one; every command of the cobra tree has
// a case or an exemption with its reason.
func TestJSONEverywhere(t *testing.T) {
	bin := intrBin(t)
	work := t.TempDir()
	if err := os.CopyFS(filepath.Join(work, "sample"), os.DirFS("../../testdata/sample")); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(work, "v1"), os.DirFS("../../testdata/v1repo")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(work, "pw1.txt"), []byte("first password\n"), 0o600)
	os.WriteFile(filepath.Join(work, "pw2.txt"), []byte("second password\n"), 0o600)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WABACKUP_") {
			env = append(env, e)
		}
	}
	env = append(env, "HOME="+filepath.Join(work, "home"), "XDG_CONFIG_HOME="+filepath.Join(work, ".config"),
		"XDG_CACHE_HOME="+filepath.Join(work, ".cache"), "WABACKUP_REPO=repo", "WABACKUP_KEY_FILE=key.txt")
	emptyRepo := []string{"WABACKUP_REPO=empty", "WABACKUP_KEY_FILE=empty-key.txt"}
	run := func(more []string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Env = work, slices.Concat(env, more)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), code
	}
	must := func(more []string, args ...string) {
		t.Helper()
		if o, e, code := run(more, args...); code != 0 {
			t.Fatalf("wabackup %s: exit %d\n%s%s", strings.Join(args, " "), code, o, e)
		}
	}
	must(nil, "init", "--key-out", "key.txt", "-q")
	must(nil, "backup", "--db", "sample/msgstore.db", "--media", "sample/Media", "--tag", "first", "-q")
	os.WriteFile(filepath.Join(work, "sample", "Media", "WhatsApp Images", "IMG-new.jpg"), []byte("a new picture"), 0o644)
	must(nil, "backup", "--db", "sample/msgstore.db", "--media", "sample/Media", "-q")
	must(emptyRepo, "init", "--key-out", "empty-key.txt", "-q")
	doc := jsonDoc(t)

	vars := map[string]string{}
	save := func(name string, msgs []map[string]any, mt, field string) {
		for _, m := range msgs {
			if m["message_type"] == mt {
				if s, ok := m[field].(string); ok {
					vars[name] = s
				}
			}
		}
	}
	// emptyList fails unless the message of type mt has field as [].
	emptyList := func(mt, field string) func(t *testing.T, msgs []map[string]any, stdout string) {
		return func(t *testing.T, msgs []map[string]any, stdout string) {
			t.Helper()
			for _, m := range msgs {
				if m["message_type"] == mt {
					if l, ok := m[field].([]any); !ok || len(l) != 0 {
						t.Errorf("%s.%s = %v, want []", mt, field, m[field])
					}
					return
				}
			}
			t.Errorf("no %s message", mt)
		}
	}
	count := func(mt string, n int) func(t *testing.T, msgs []map[string]any, stdout string) {
		return func(t *testing.T, msgs []map[string]any, stdout string) {
			t.Helper()
			got := 0
			for _, m := range msgs {
				if m["message_type"] == mt {
					got++
				}
			}
			if got != n {
				t.Errorf("%d %s messages, want %d", got, mt, n)
			}
		}
	}
	cases := []jsonCase{
		{cmd: "version", types: []string{"version"}},
		{cmd: "init", args: []string{"--repo", "fresh"}, types: []string{"init"}},
		{cmd: "snapshots", types: []string{"snapshots"}, check: func(t *testing.T, msgs []map[string]any, _ string) {
			list, _ := msgs[0]["snapshots"].([]any)
			if len(list) != 2 {
				t.Fatalf("%d snapshots, want 2", len(list))
			}
			vars["SNAP1"], _ = list[0].(map[string]any)["id"].(string)
			vars["SNAP2"], _ = list[1].(map[string]any)["id"].(string)
		}},
		{cmd: "snapshots", env: emptyRepo, types: []string{"snapshots"}, check: func(t *testing.T, _ []map[string]any, stdout string) {
			if strings.TrimSpace(stdout) != `{"message_type":"snapshots","snapshots":[]}` {
				t.Errorf("an empty repository: %s", stdout)
			}
		}},
		{cmd: "snapshots", args: []string{"--tag", "no-such-tag"}, types: []string{"snapshots"}, check: emptyList("snapshots", "snapshots")},
		{cmd: "backup", args: []string{"--db", "sample/msgstore.db", "--media", "sample/Media", "--tag", "third"}, types: []string{"summary"}},
		// The newest snapshot holds no database: sql and restore latest say
		// which one they take instead, in a warning.
		{cmd: "backup", args: []string{"--media", "sample/Media"}, types: []string{"summary"}},
		{cmd: "snapshots", args: []string{"--latest", "1"}, types: []string{"snapshots"}},
		{cmd: "sql", args: []string{"latest", "SELECT count(*) AS n, NULL AS missing FROM message"}, types: []string{"warning", "row"}},
		{cmd: "restore", args: []string{"latest", "--target", "out"}, types: []string{"warning", "summary"}, check: emptyList("summary", "not_restored")},
		{cmd: "restore", args: []string{"latest", "--target", "out", "--dry-run"}, types: []string{"restore_plan"}},
		{cmd: "ls", args: []string{"latest", "Media/WhatsApp Voice Notes"}, types: []string{"node"}},
		{cmd: "find", args: []string{"*.opus"}, types: []string{"node", "find_summary"}},
		{cmd: "find", args: []string{"no-such-file-*"}, types: []string{"find_summary"}, check: count("node", 0)},
		{cmd: "find", args: []string{"*"}, env: emptyRepo, types: []string{"find_summary"}, check: count("node", 0)},
		{cmd: "dump", args: []string{"$SNAP2", "msgstore.db"}, raw: true, check: func(t *testing.T, _ []map[string]any, stdout string) {
			if db, _ := os.ReadFile(filepath.Join(work, "sample", "msgstore.db")); stdout != string(db) {
				t.Errorf("dump --json wrote %d bytes, not the database's %d", len(stdout), len(db))
			}
		}},
		{cmd: "dump", args: []string{"latest", "no/such/file"}, code: 1, types: []string{"exit_error"}},
		{cmd: "diff", args: []string{"$SNAP1", "$SNAP2"}, types: []string{"change", "diff_summary"}},
		{cmd: "stats", types: []string{"stats"}},
		{cmd: "stats", env: emptyRepo, types: []string{"stats"}},
		{cmd: "check", types: []string{"summary"}},
		{cmd: "check", args: []string{"--read-data"}, types: []string{"summary"}},
		{cmd: "check", args: []string{"--db", "$SNAP2"}, types: []string{"summary"}},
		{cmd: "check", env: emptyRepo, types: []string{"summary"}},
		{cmd: "forget", args: []string{"--keep-last", "1", "--dry-run"}, types: []string{"forget"}, check: count("forget", 4)},
		{cmd: "forget", args: []string{"--keep-last", "2"}, types: []string{"forget"}},
		{cmd: "forget", args: []string{"--keep-last", "1", "--prune"}, env: emptyRepo, types: []string{"prune"}, check: count("forget", 0)},
		{cmd: "prune", args: []string{"--dry-run"}, types: []string{"prune"}},
		{cmd: "prune", types: []string{"prune"}},
		{cmd: "key list", types: []string{"key"}},
		{cmd: "key add", args: []string{"--new-password-file", "pw1.txt"}, types: []string{"key_added"}, check: func(t *testing.T, msgs []map[string]any, _ string) {
			save("SLOT", msgs, "key_added", "id")
		}},
		{cmd: "key add", args: []string{"--recovery"}, types: []string{"key_added"}},
		{cmd: "key passwd", args: []string{"--id", "$SLOT", "--new-password-file", "pw2.txt"}, types: []string{"password_changed"}, check: func(t *testing.T, msgs []map[string]any, _ string) {
			save("SLOT", msgs, "password_changed", "id")
		}},
		{cmd: "key remove", args: []string{"$SLOT"}, types: []string{"key_removed"}},
		{cmd: "key rotate", args: []string{"-n"}, types: []string{"key_rotate_plan"}},
		{cmd: "key rotate", args: []string{"--force"}, types: []string{"key_rotated"}},
		{cmd: "repair index", args: []string{"--dry-run"}, types: []string{"repair_index"}, check: emptyList("repair_index", "damaged_packs")},
		{cmd: "repair index", types: []string{"repair_index"}, check: emptyList("repair_index", "damaged_packs")},
		{cmd: "repair snapshots", args: []string{"--all", "--dry-run"}, types: []string{"repair_snapshot"}, check: emptyList("repair_snapshot", "dropped")},
		{cmd: "repair snapshots", args: []string{"latest"}, types: []string{"repair_snapshot"}, check: emptyList("repair_snapshot", "dropped")},
		{cmd: "cleanup", types: []string{"cleanup"}},
		{cmd: "cache", types: []string{"cache"}},
		{cmd: "cache", args: []string{"--cleanup"}, types: []string{"cache"}},
		{cmd: "migrate", types: []string{"migrate"}},
		{cmd: "migrate", env: []string{"WABACKUP_REPO=v1/repo", "WABACKUP_KEY_FILE=v1/key.txt"}, types: []string{"migrate"}},
		{cmd: "unlock", types: []string{"unlock"}},
		{cmd: "generate", args: []string{"--man", "man"}, types: []string{"generate"}},
		{cmd: "generate", args: []string{"--completion", "bash"}, raw: true},
		{cmd: "login", args: []string{"gdrive"}, code: 1, types: []string{"exit_error"}}, // no OAuth client: the error is JSON
		{cmd: "logout", args: []string{"gdrive"}, types: []string{"logout"}},
		{cmd: "key vault-status", code: 1, types: []string{"exit_error"}}, // no --vault: the error is JSON
	}

	tree := commandPaths()
	covered := map[string]bool{}
	for _, c := range cases {
		if tree[c.cmd] == nil {
			t.Errorf("a case for %q, which is not a command", c.cmd)
		}
		covered[c.cmd] = true
	}
	for p, why := range jsonExempt {
		if tree[p] == nil {
			t.Errorf("%q is exempt (%s) but is not a command", p, why)
		}
	}
	var paths []string
	for p := range tree {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		c := tree[p]
		if c.Hidden || c.HasSubCommands() || covered[p] || jsonExempt[p] != "" {
			continue
		}
		t.Errorf("command %q has no case in TestJSONEverywhere (nor an exemption with its reason)", p)
	}

	seen := map[string]bool{}
	for _, c := range cases {
		var args []string
		if c.cmd != "" {
			args = strings.Fields(c.cmd)
		}
		for _, a := range c.args {
			args = append(args, os.Expand(a, func(k string) string { return vars[k] }))
		}
		args = append(args, "--json")
		what := "wabackup " + strings.Join(args, " ")
		stdout, stderr, code := run(c.env, args...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", what, code, c.code, stdout, stderr)
			continue
		}
		if stderr != "" {
			t.Errorf("%s: with --json, stderr has %q", what, stderr)
		}
		if c.raw {
			if c.check != nil {
				c.check(t, nil, stdout)
			}
			continue
		}
		msgs := checkJSONLines(t, what, stdout, doc)
		got := msgTypes(msgs)
		for _, mt := range got {
			seen[mt] = true
		}
		for _, mt := range c.types {
			if !slices.Contains(got, mt) {
				t.Errorf("%s: no %q message; got %v\n%s", what, mt, got, stdout)
			}
		}
		if c.code != 0 && (len(msgs) == 0 || msgs[len(msgs)-1]["message_type"] != "exit_error") {
			t.Errorf("%s: the last line is not the exit_error", what)
		}
		if c.check != nil {
			c.check(t, msgs, stdout)
		}
	}
	t.Logf("message types seen: %v", slices.Sorted(maps.Keys(seen)))

	// Usage errors, for every command: exactly one exit_error line with
	// code 1, exit 1, the error in the message, nothing on stderr.
	usage := func(what string, want string, args ...string) {
		t.Helper()
		stdout, stderr, code := run(nil, args...)
		msgs := checkJSONLines(t, what, stdout, doc)
		if code != 1 || len(msgs) != 1 || stderr != "" {
			t.Errorf("%s: exit %d, %d lines, stderr %q; want exit 1 and one exit_error line\n%s", what, code, len(msgs), stderr, stdout)
			return
		}
		m := msgs[0]
		msg, _ := m["message"].(string)
		if m["message_type"] != "exit_error" || fmt.Sprint(m["code"]) != "1" || !strings.Contains(msg, want) {
			t.Errorf("%s: %s, want an exit_error with code 1 saying %q", what, stdout, want)
		}
	}
	for _, p := range paths {
		c := tree[p]
		if c.Hidden {
			continue
		}
		words := strings.Fields(p)
		p = strings.TrimSpace("wabackup " + p)
		// --json last: the flag error stops parsing before it.
		usage(p+": an unknown flag", "unknown flag: --no-such-flag", slices.Concat(words, []string{"--no-such-flag", "--json"})...)
		usage(p+": a bad duration", `invalid argument "soon" for "--retry-lock"`, slices.Concat(words, []string{"--retry-lock", "soon", "--json"})...)
		if c.Args != nil {
			if err := c.Args(c, nil); err != nil {
				usage(p+": a missing argument", err.Error(), slices.Concat(words, []string{"--json"})...)
			} else if err := c.Args(c, []string{"a1", "a2", "a3"}); err != nil {
				usage(p+": an extra argument", err.Error(), slices.Concat(words, []string{"a1", "a2", "a3", "--json"})...)
			}
		}
		if c.HasSubCommands() {
			usage(p+": no subcommand", "needs a command", slices.Concat(words, []string{"--json"})...)
			usage(p+": an unknown subcommand", `unknown command "no-such-command"`, slices.Concat(words, []string{"no-such-command", "--json"})...)
		}
	}
}
