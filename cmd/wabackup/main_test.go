package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	_ "modernc.org/sqlite"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/keys"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"wabackup": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
		"peakrss":  peakRSSMain,
	})
}

// peakRSSMain runs its arguments as a command and writes the command's
// peak RSS (KiB) to the file named by $PEAKRSS_FILE. It exists because a
// child started by a large process (go test) reports the parent's peak as
// its own: os/exec starts children with vfork, and Linux counts the
// address space a child had before its exec. A small process in between
// measures the command alone.
func peakRSSMain() {
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, "peakrss:", err)
		os.Exit(1)
	}
	kib := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	if werr := os.WriteFile(os.Getenv("PEAKRSS_FILE"), []byte(strconv.FormatInt(kib, 10)), 0o644); werr != nil {
		fmt.Fprintln(os.Stderr, "peakrss:", werr)
		os.Exit(1)
	}
	os.Exit(cmd.ProcessState.ExitCode())
}

// measuredRSS makes cmd run under peakrss and returns a function that,
// once cmd has run, gives its peak RSS in KiB.
func measuredRSS(t *testing.T, cmd *exec.Cmd) func() int64 {
	t.Helper()
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "peakrss")
	if err := os.Symlink(os.Args[0], wrapper); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "kib")
	cmd.Args = append([]string{wrapper}, cmd.Args...)
	cmd.Args[1] = cmd.Path
	cmd.Path = wrapper
	cmd.Env = append(cmd.Environ(), "PEAKRSS_FILE="+file)
	return func() int64 {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// TestScripts runs the end-to-end CLI scripts in testdata/script. Besides
// testscript's built-ins they have:
//
//	wab CODE ARGS...   run wabackup in-process and require exit code CODE
//	mktree DIR SEED    write a random media tree (unicode names, empty and large files)
//	mkdb FILE ROWS     write a WAL-mode SQLite chat database
//	dbcheck FILE ROWS  the database passes integrity_check and has ROWS messages
//	cmptree A B        the two trees have the same files, contents, modes and mtimes
//	holdlock REPO KEYFILE  hold an exclusive repository lock until the script ends
//	badname DIR        create a file whose name is not valid UTF-8
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(env.WorkDir, ".config"))
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, ".cache"))
			sample, err := filepath.Abs("../../testdata/sample")
			if err != nil {
				return err
			}
			env.Setenv("SAMPLE", sample)
			v1, err := filepath.Abs("../../testdata/v1repo")
			if err != nil {
				return err
			}
			env.Setenv("V1REPO", v1)
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"wab":      cmdWab,
			"mktree":   cmdMktree,
			"mkdb":     cmdMkdb,
			"dbcheck":  cmdDBCheck,
			"cmptree":  cmdCmptree,
			"holdlock": cmdHoldlock,
			"badname":  cmdBadname,
		},
	})
}

// wabPassEnv is what the wabackup subprocess of a script inherits from
// the script's environment.
var wabPassEnv = []string{"PATH", "HOME", "WORK", "TMPDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "GOMAXPROCS", "GOCOVERDIR",
	"WABACKUP_KEY", "WABACKUP_KEY_FILE", "WABACKUP_PASSWORD", "WABACKUP_PASSWORD_FILE", "WABACKUP_PASSWORD_COMMAND",
	"WABACKUP_REPO", "WABACKUP_CONFIG", "WABACKUP_DB", "WABACKUP_MEDIA", "WABACKUP_VAULT", "WABACKUP_VAULT_CACERT", "SOFTHSM2_CONF",
	"WABACKUP_GDRIVE_ENDPOINT", "WABACKUP_GDRIVE_CLIENT_SECRET",
	"WABACKUP_MEIDA", // a typo, for config.txtar
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"}

// scriptWab prepares the wabackup binary of the script's PATH to run in
// $WORK with the wabPassEnv variables of the script's environment.
func scriptWab(ts *testscript.TestScript, args []string) *exec.Cmd {
	bin := ""
	for _, dir := range filepath.SplitList(ts.Getenv("PATH")) {
		if p := filepath.Join(dir, "wabackup"); fileExists(p) {
			bin = p
			break
		}
	}
	if bin == "" {
		ts.Fatalf("wabackup not found in the script's PATH")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = ts.Getenv("WORK")
	for _, n := range wabPassEnv {
		if v := ts.Getenv(n); v != "" {
			cmd.Env = append(cmd.Env, n+"="+v)
		}
	}
	return cmd
}

// wantCode reads the CODE of "wab CODE ARGS...".
func wantCode(ts *testscript.TestScript, code string) int {
	want, err := strconv.Atoi(code)
	if err != nil {
		ts.Fatalf("bad exit code %q", code)
	}
	return want
}

// checkExit fails the script unless wabackup (run with args, finished
// with err) exited with want, or, negated, with anything else.
func checkExit(ts *testscript.TestScript, neg bool, want int, args []string, err error, took time.Duration, stderr string) int {
	got := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			ts.Fatalf("running wabackup: %v", err)
		}
		got = ee.ExitCode()
	}
	if (got == want) == neg {
		ts.Fatalf("wabackup %s: exit code %d, want %d (%v)\nstderr: %s", strings.Join(args, " "), got, want, took.Round(time.Millisecond), stderr)
	}
	return got
}

// runScriptWab runs "wab CODE ARGS...": wabackup with ARGS must exit with
// CODE (with !, with another code). Its output goes to the script's.
func runScriptWab(ts *testscript.TestScript, neg bool, args []string) wabResult {
	if len(args) < 1 {
		ts.Fatalf("usage: wab CODE ARGS...")
	}
	want := wantCode(ts, args[0])
	cmd := scriptWab(ts, args[1:])
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := wabResult{args: args[1:], stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	fmt.Fprint(ts.Stdout(), res.stdout)
	fmt.Fprint(ts.Stderr(), res.stderr)
	res.code = checkExit(ts, neg, want, res.args, err, res.took, res.stderr)
	return res
}

func cmdWab(ts *testscript.TestScript, neg bool, args []string) {
	runScriptWab(ts, neg, args)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func cmdMktree(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: mktree DIR SEED")
	}
	seed, _ := strconv.Atoi(args[1])
	root := ts.MkAbs(args[0])
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	var cc [32]byte
	cc[0] = byte(seed)
	stream := rand.NewChaCha8(cc)
	names := []string{"WhatsApp Images", "WhatsApp Video", "WhatsApp Voice Notes/202547", "WhatsApp Documents", "Привет", "émoji 😀"}
	write := func(p string, size int) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		data := make([]byte, size)
		stream.Read(data)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			ts.Fatalf("%v", err)
		}
		mt := time.Unix(1700000000+rng.Int64N(1e7), rng.Int64N(1e9))
		os.Chtimes(p, mt, mt)
	}
	write(filepath.Join(root, "empty.txt"), 0)
	write(filepath.Join(root, "WhatsApp Video", "VID-big.mp4"), 6<<20)
	for i := 0; i < 40; i++ {
		write(filepath.Join(root, names[rng.IntN(len(names))], fmt.Sprintf("IMG-%d.jpg", i)), rng.IntN(300000))
	}
}

func cmdMkdb(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: mkdb FILE ROWS")
	}
	n, _ := strconv.Atoi(args[1])
	db, err := sql.Open("sqlite", ts.MkAbs(args[0]))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	defer db.Close()
	for _, q := range []string{"PRAGMA journal_mode=WAL", "CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY, chat INTEGER, text TEXT)"} {
		if _, err := db.Exec(q); err != nil {
			ts.Fatalf("%v", err)
		}
	}
	tx, _ := db.Begin()
	for i := 0; i < n; i++ {
		if _, err := tx.Exec("INSERT INTO message (chat, text) VALUES (?, ?)", i%7, fmt.Sprintf("message number %d, see you at the usual place", i)); err != nil {
			ts.Fatalf("%v", err)
		}
	}
	if err := tx.Commit(); err != nil {
		ts.Fatalf("%v", err)
	}
}

func cmdDBCheck(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: dbcheck FILE ROWS")
	}
	db, err := sql.Open("sqlite", ts.MkAbs(args[0]))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		ts.Fatalf("integrity_check: %q %v", res, err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM message").Scan(&n); err != nil {
		ts.Fatalf("%v", err)
	}
	if strconv.Itoa(n) != args[1] {
		ts.Fatalf("%d messages, want %s", n, args[1])
	}
}

// describeTree lists every entry under root (path, mode, and for files
// SHA-256 and mtime), sorted.
func describeTree(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%s %v", rel, fi.Mode())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x %d", sha256.Sum256(data), fi.ModTime().UnixNano())
		}
		out = append(out, desc)
		return nil
	})
	sort.Strings(out)
	return out, err
}

func cmdCmptree(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: cmptree A B")
	}
	a, err := describeTree(ts.MkAbs(args[0]))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	b, err := describeTree(ts.MkAbs(args[1]))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	same := strings.Join(a, "\n") == strings.Join(b, "\n")
	if same == neg {
		ts.Fatalf("trees %s and %s: same=%v\n%s\n---\n%s", args[0], args[1], same, strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}

func cmdHoldlock(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: holdlock REPO KEYFILE")
	}
	ctx := context.Background()
	st, err := cloud.Open(ctx, ts.MkAbs(args[0]), false)
	if err != nil {
		ts.Fatalf("%v", err)
	}
	r, err := archive.Open(ctx, st)
	if err != nil {
		ts.Fatalf("%v", err)
	}
	data, err := os.ReadFile(ts.MkAbs(args[1]))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	k, err := keys.ParseRecoveryKey(string(data))
	if err != nil {
		ts.Fatalf("%v", err)
	}
	if err := r.Unlock(ctx, archive.Credentials{RecoveryKey: &k}); err != nil {
		ts.Fatalf("%v", err)
	}
	l, err := r.Lock(ctx, true, "test", 0)
	if err != nil {
		ts.Fatalf("%v", err)
	}
	ts.Defer(func() { l.Unlock() })
}

func cmdBadname(ts *testscript.TestScript, neg bool, args []string) {
	if err := os.WriteFile(filepath.Join(ts.MkAbs(args[0]), "bad\xffname.jpg"), []byte("x"), 0o644); err != nil {
		ts.Fatalf("%v", err)
	}
}
