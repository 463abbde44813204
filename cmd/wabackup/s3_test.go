//go:build unix

package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/wabackup/wabackup/internal/testservers"
)

// End-to-end tests of the CLI against a real S3 server (versitygw, started
// by internal/testservers), directly and through a fault-injecting proxy.
// They skip when versitygw is not installed, unless
// WABACKUP_REQUIRE_SERVERS=1. Credentials reach the wabackup process the
// way they reach it in real life: AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY in its environment.

// TestS3Scripts runs the scripts in testdata/s3 against one versitygw.
// Each script gets its own bucket name ($BUCKET, not yet created) and:
//
//	$S3        the gateway's host:port
//	$S3KEY, $S3SECRET  its root credentials (also in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
//	$VGWROOT   the gateway's posix root: $VGWROOT/BUCKET/KEY is object KEY
//	$DEAD      a loopback host:port where nothing listens (connections are refused)
//	$S3TLS, $S3TLSKEY, $S3TLSSECRET  a second gateway, serving HTTPS, and its credentials
//	$S3TLSCA   the PEM file of its self-signed certificate
//
// and the commands of TestScripts, with wab passing the AWS variables on
// and requiring every failure to be reported on exactly one line.
func TestS3Scripts(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	tlsSrv := testservers.StartVersityGW(t, testservers.VersityGWOptions{TLS: true})
	dead := deadAddr(t)
	var seq atomic.Int64
	testscript.Run(t, testscript.Params{
		Dir: "testdata/s3",
		Setup: func(env *testscript.Env) error {
			env.Setenv("HOME", env.WorkDir) // no ~/.aws/credentials of the machine
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(env.WorkDir, ".config"))
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, ".cache"))
			env.Setenv("S3", srv.Endpoint)
			env.Setenv("S3KEY", srv.AccessKey)
			env.Setenv("S3SECRET", srv.SecretKey)
			env.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
			env.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
			env.Setenv("VGWROOT", srv.Root)
			env.Setenv("DEAD", dead)
			env.Setenv("S3TLS", tlsSrv.Endpoint)
			env.Setenv("S3TLSKEY", tlsSrv.AccessKey)
			env.Setenv("S3TLSSECRET", tlsSrv.SecretKey)
			env.Setenv("S3TLSCA", tlsSrv.CACertFile)
			env.Setenv("BUCKET", fmt.Sprintf("wab-script-%d-%d", os.Getpid(), seq.Add(1)))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"wab":     cmdWabS3,
			"mktree":  cmdMktree,
			"mkdb":    cmdMkdb,
			"dbcheck": cmdDBCheck,
			"cmptree": cmdCmptree,
		},
	})
}

// cmdWabS3 is cmdWab with a check that a failure (any code but 0 and 3)
// is one line: "wabackup: …" on stderr, or with --json nothing on stderr
// and an exit_error object as the last line of stdout.
func cmdWabS3(ts *testscript.TestScript, neg bool, args []string) {
	res := runScriptWab(ts, neg, args)
	if !neg {
		if msg := res.failureShape(); msg != "" {
			ts.Fatalf("wabackup %s: %s", strings.Join(res.args, " "), msg)
		}
	}
}

// wabResult is one run of the wabackup binary.
type wabResult struct {
	args           []string
	code           int
	stdout, stderr string
	took           time.Duration
	err            error // the binary could not be run
}

// wabBinary is the test binary, installed as "wabackup" in PATH by
// testscript.Main (see TestMain).
func wabBinary() (string, error) {
	return exec.LookPath("wabackup")
}

// runWab runs wabackup in dir with exactly env (plus nothing else), and
// kills it after limit (0: 10 minutes).
func runWab(dir string, env []string, limit time.Duration, args ...string) wabResult {
	res := wabResult{args: args}
	bin, err := wabBinary()
	if err != nil {
		res.err = err
		return res
	}
	if limit == 0 {
		limit = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	res.took = time.Since(start)
	res.stdout, res.stderr = stdout.String(), stderr.String()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			res.err = err
			return res
		}
		res.code = ee.ExitCode()
		if ctx.Err() != nil {
			res.err = fmt.Errorf("killed after %v", limit)
		}
	}
	return res
}

// failureShape returns what is wrong with the way a failure was reported,
// or "" if it is one line as it should be.
func (r wabResult) failureShape() string {
	if r.code == 0 || r.code == 3 {
		return ""
	}
	isJSON := false
	for _, a := range r.args {
		isJSON = isJSON || a == "--json"
	}
	if isJSON {
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		last := lines[len(lines)-1]
		var m struct {
			Type    string `json:"message_type"`
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if r.stderr != "" || json.Unmarshal([]byte(last), &m) != nil || m.Type != "exit_error" || m.Code != r.code || m.Message == "" {
			return fmt.Sprintf("with --json, want nothing on stderr and an exit_error object with code %d last on stdout; got stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		return ""
	}
	if !strings.HasPrefix(r.stderr, "wabackup: ") || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		return fmt.Sprintf("exit %d: want one line \"wabackup: …\" on stderr, got %q", r.code, r.stderr)
	}
	return ""
}

// message returns the first object of this message_type printed by a
// --json run.
func (r wabResult) message(t *testing.T, typ string) map[string]any {
	t.Helper()
	for _, line := range strings.Split(r.stdout, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message_type"] == typ {
			return m
		}
	}
	t.Fatalf("wabackup %s: no JSON %s in %q", strings.Join(r.args, " "), typ, r.stdout)
	return nil
}

// deadAddr returns a loopback host:port that refuses connections for the
// rest of the test: a socket is bound to it but never listens, so no
// other process can take the port meanwhile.
func deadAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// s3CLI runs wabackup against one gateway from one working directory.
type s3CLI struct {
	t   *testing.T
	srv *testservers.Server
	dir string
	env []string
}

func newS3CLI(t *testing.T, srv *testservers.Server) *s3CLI {
	if _, err := wabBinary(); err != nil {
		t.Fatalf("the wabackup test binary is not in PATH: %v", err)
	}
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + tmp,
		"XDG_CONFIG_HOME=" + filepath.Join(dir, ".config"), "XDG_CACHE_HOME=" + filepath.Join(dir, ".cache"),
		"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	if v := os.Getenv("GOCOVERDIR"); v != "" {
		env = append(env, "GOCOVERDIR="+v)
	}
	return &s3CLI{t: t, srv: srv, dir: dir, env: env}
}

// run runs wabackup and requires exit code want and, for a failure, a
// one-line message.
func (c *s3CLI) run(want int, args ...string) wabResult {
	c.t.Helper()
	r := runWab(c.dir, c.env, 0, args...)
	if r.err != nil {
		c.t.Fatalf("wabackup %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	c.t.Logf("wabackup %s: exit %d in %v", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond))
	if r.code != want {
		c.t.Fatalf("wabackup %s: exit code %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	if msg := r.failureShape(); msg != "" {
		c.t.Fatalf("wabackup %s: %s", strings.Join(args, " "), msg)
	}
	return r
}

// start runs wabackup in the background; wait for it with the returned
// function.
func (c *s3CLI) start(args ...string) func() wabResult {
	ch := make(chan wabResult, 1)
	go func() { ch <- runWab(c.dir, c.env, 5*time.Minute, args...) }()
	return func() wabResult {
		r := <-ch
		if r.err != nil {
			c.t.Fatalf("wabackup %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
		}
		c.t.Logf("wabackup %s: exit %d in %v", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond))
		return r
	}
}

// faultData writes a media tree of about mediaMiB MiB of incompressible
// data (.mp4 and .jpg files, stored raw) and a small chat database under
// dir, and returns their paths.
func faultData(t *testing.T, dir string, mediaMiB int) (db, media string) {
	t.Helper()
	media = filepath.Join(dir, "Media")
	var cc [32]byte
	copy(cc[:], "wabackup s3 fault test data....")
	stream := rand.NewChaCha8(cc)
	rng := rand.New(rand.NewPCG(3, 4))
	write := func(p string, size int) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		stream.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1700000000+rng.Int64N(1e7), 0)
		os.Chtimes(p, mt, mt)
	}
	left := mediaMiB << 20
	for i := 0; left > 0; i++ {
		// videos of 5 to 20 MiB, and a few photos between them
		n := min(left, (5+rng.IntN(16))<<20)
		write(filepath.Join(media, "WhatsApp Video", fmt.Sprintf("VID-%03d.mp4", i)), n)
		left -= n
		for j := 0; j < 5 && left > 0; j++ {
			m := min(left, 1+rng.IntN(400<<10))
			write(filepath.Join(media, "WhatsApp Images", fmt.Sprintf("IMG-%03d-%d.jpg", i, j)), m)
			left -= m
		}
	}
	db = filepath.Join(dir, "msgstore.db")
	sdb, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	for _, q := range []string{"PRAGMA journal_mode=WAL", "CREATE TABLE message (id INTEGER PRIMARY KEY, chat INTEGER, text TEXT)"} {
		if _, err := sdb.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := sdb.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20000; i++ {
		if _, err := tx.Exec("INSERT INTO message (chat, text) VALUES (?, ?)", i%11, fmt.Sprintf("message %d: running late, see you at the usual place", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return db, media
}

// treeDigest describes every file under root (path, mode, SHA-256, mtime).
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	out, err := describeTree(root)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

// storedPacks returns the pack objects in the gateway's root under
// bucket/prefix/data/ and their total size.
func storedPacks(t *testing.T, srv *testservers.Server, bucket, prefix string) (n int, size int64) {
	t.Helper()
	root := filepath.Join(srv.Root, bucket, prefix, "data")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && len(d.Name()) == 64 {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n++
			size += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, size
}

func num(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok {
		t.Fatalf("summary has no number %q: %v", key, m)
	}
	return int64(v)
}

// faultMediaMiB is the size of the fault tests' media: enough for four
// 32 MiB packs, each sent as two 16 MiB parts.
const faultMediaMiB = 110

// TestS3Faults backs up through a fault proxy: first with intermittent
// faults (connections reset in the middle of parts, a network stall
// longer than the idle timeout, bursts of 503 SlowDown, an answer lost
// after the server stored the object), which the backup must ride out;
// then with the server gone for good in the middle of the backup, which
// must fail cleanly within the retry budget and leave a repository that
// checks out and that the next backup finishes, reusing what was stored.
func TestS3Faults(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a few hundred MiB through versitygw")
	}
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	db, media := faultData(t, t.TempDir(), faultMediaMiB)
	want := treeDigest(t, media)
	var fullAdded int64

	t.Run("Intermittent", func(t *testing.T) {
		c := newS3CLI(t, srv)
		proxy := testservers.FaultProxy(t, srv.Endpoint)
		bucket := fmt.Sprintf("wab-faults-%d", os.Getpid())
		repo := "s3:http://" + proxy.Addr() + "/" + bucket + "/repo?retry-budget=60s&idle-timeout=2s"
		key := filepath.Join(c.dir, "key.txt")
		c.run(0, "init", "--repo", repo, "--s3-create-bucket", "--key-out", key, "-q")

		// Armed before the backup starts, hit during it: the first three
		// connections to carry 6 MiB are reset (in the middle of a 16 MiB
		// part), the first three part uploads are answered "503
		// SlowDown", and the answer to the first multipart upload's
		// initiation is lost after the server created the upload.
		proxy.ResetAfterBytes(6<<20, 3)
		proxy.FailRequests("partNumber=", 3, 503, "SlowDown")
		proxy.DropResponse("?uploads", 1)
		wait := c.start("backup", "--repo", repo, "--key-file", key, "--db", db, "--media", media, "--json")
		// Once uploads are under way, the network goes silent for longer
		// than the idle timeout, then comes a burst of SlowDown answers,
		// and the answer to the first index upload (at the end of the
		// backup) is lost after the server stored it.
		stalled := make(chan time.Time, 1)
		go func() {
			deadline := time.Now().Add(2 * time.Minute)
			for proxy.Stats().Resets == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			proxy.Stall(3 * time.Second)
			stalled <- time.Now()
			time.Sleep(3500 * time.Millisecond)
			proxy.SlowDown(4)
			for proxy.Stats().Dropped == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			proxy.DropResponse("PUT /"+bucket+"/repo/index/", 1)
		}()
		r := wait()
		if r.code != 0 {
			t.Fatalf("backup through intermittent faults: exit %d\nstdout: %s\nstderr: %s\n%v", r.code, r.stdout, r.stderr, proxy)
		}
		select {
		case at := <-stalled:
			t.Logf("stalled the network at %v into the backup", at.Sub(time.Now().Add(-r.took)).Round(time.Millisecond))
		default:
			t.Errorf("the backup finished before the stall")
		}
		st := proxy.Stats()
		t.Logf("%v", proxy)
		if st.Resets != 3 {
			t.Errorf("%d connections reset, want 3", st.Resets)
		}
		if st.Failed < 3 {
			t.Errorf("%d requests answered SlowDown, want at least 3", st.Failed)
		}
		if st.Dropped != 2 {
			t.Errorf("%d answers dropped, want 2", st.Dropped)
		}
		s := r.message(t, "summary")
		fullAdded = num(t, s, "added_bytes")
		if fullAdded < faultMediaMiB<<20 {
			t.Errorf("added %d bytes, want at least the %d MiB of incompressible media", fullAdded, faultMediaMiB)
		}
		n, size := storedPacks(t, srv, bucket, "repo")
		t.Logf("%d packs stored, %d bytes; backup added %d bytes", n, size, fullAdded)
		if n < 3 {
			t.Errorf("%d packs stored, want several", n)
		}

		// Reading back through resets: every chunk is authentic, the
		// restore is byte-identical.
		proxy.ResetAfterBytes(5<<20, 2)
		r = c.run(0, "check", "--read-data", "--repo", repo, "--key-file", key)
		if !strings.HasPrefix(r.stdout, "no errors: 1 snapshots") {
			t.Errorf("check: %q", r.stdout)
		}
		target := filepath.Join(c.dir, "restored")
		c.run(0, "restore", "latest", "--repo", repo, "--key-file", key, "--target", target, "-q")
		if got := treeDigest(t, filepath.Join(target, "Media")); got != want {
			t.Errorf("restored media differ from the source")
		}
		t.Logf("%v", proxy)
		// The upload whose initiation answer was lost (and any other
		// one whose answer the stall swallowed) is orphaned: nothing
		// references it, and cleanup aborts it. Retried parts leave
		// nothing behind.
		r = c.run(0, "cleanup", "--repo", repo, "--older-than", "0s", "--json")
		if n := num(t, r.message(t, "cleanup"), "aborted_uploads"); n < 1 {
			t.Errorf("cleanup aborted %d uploads, want the orphaned one at least", n)
		}
		r = c.run(0, "cleanup", "--repo", repo, "--older-than", "0s", "--json")
		if !strings.Contains(r.stdout, `"aborted_uploads":0`) {
			t.Errorf("uploads left after cleanup: %s", r.stdout)
		}
	})

	t.Run("ServerGone", func(t *testing.T) {
		c := newS3CLI(t, srv)
		proxy := testservers.FaultProxy(t, srv.Endpoint)
		bucket := fmt.Sprintf("wab-gone-%d", os.Getpid())
		const budget = 3 * time.Second
		repo := "s3:http://" + proxy.Addr() + "/" + bucket + "/repo?retry-budget=" + budget.String() + "&idle-timeout=2s"
		key := filepath.Join(c.dir, "key.txt")
		c.run(0, "init", "--repo", repo, "--s3-create-bucket", "--key-out", key, "-q")

		wait := c.start("backup", "--repo", repo, "--key-file", key, "--db", db, "--media", media)
		// The server goes away for good once a pack is stored.
		downAt := make(chan time.Time, 1)
		go func() {
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				if n, _ := storedPacks(t, srv, bucket, "repo"); n > 0 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			proxy.Down()
			downAt <- time.Now()
		}()
		r := wait()
		down := <-downAt
		took := time.Since(down)
		t.Logf("backup failed %v after the server went away: %s", took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
		if r.code != 1 {
			t.Fatalf("backup with the server gone: exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
		failMsg := r.stderr
		if msg := r.failureShape(); msg != "" {
			t.Errorf("%s", msg)
		}
		if !strings.Contains(r.stderr, "cannot reach S3 server "+proxy.Addr()) || !strings.Contains(r.stderr, "gave up after") {
			t.Errorf("message does not say the server could not be reached within the budget: %q", r.stderr)
		}
		// The failed request gives up after the budget; the lock is
		// then removed with a Stat and a Delete, each with the same
		// budget. Allow that, the idle timeout and some slack.
		if limit := 3*budget + 2*time.Second + 10*time.Second; took > limit {
			t.Errorf("backup took %v to fail after the server went away, want less than %v", took, limit)
		}
		packsBefore, bytesBefore := storedPacks(t, srv, bucket, "repo")
		t.Logf("%d pack(s), %d bytes, made it before the server went away; %v", packsBefore, bytesBefore, proxy)
		if packsBefore == 0 {
			t.Fatal("no pack was stored before the failure")
		}

		// Back up: the repository checks out and no snapshot was saved
		// (none can reference a missing pack).
		proxy.Up()
		r = c.run(0, "check", "--read-data", "--repo", repo, "--key-file", key)
		if !strings.HasPrefix(r.stdout, "no errors: 0 snapshots") {
			t.Errorf("check after the failed backup: %q", r.stdout)
		}
		r = c.run(0, "snapshots", "--repo", repo, "--key-file", key, "--json")
		if !strings.Contains(r.stdout, `"snapshots":[]`) {
			t.Errorf("snapshots after the failed backup: %s", r.stdout)
		}
		// An upload the dead server kept the backup from aborting is
		// named in the message; cleanup removes it (the default
		// --older-than 24h spares it, as it would a running backup's).
		// (If the server completed that upload but its answer was lost
		// when it went away, nothing is left: the pack is stored, and
		// the next backup adopts it.)
		leftBehind := false
		if m := regexp.MustCompile(`s3 put (data/[0-9a-f]{2}/[0-9a-f]{64}): .*the incomplete upload could not be aborted`).FindStringSubmatch(failMsg); m != nil {
			_, err := os.Stat(filepath.Join(srv.Root, bucket, "repo", m[1]))
			leftBehind = err != nil
			t.Logf("the message names an upload left behind of %s; completed on the server all the same: %v", m[1], err == nil)
		}
		r = c.run(0, "cleanup", "--repo", repo, "--json")
		if !strings.Contains(r.stdout, `"aborted_uploads":0`) {
			t.Errorf("cleanup without --older-than aborted a fresh upload: %s", r.stdout)
		}
		r = c.run(0, "cleanup", "--repo", repo, "--older-than", "0s", "--json")
		aborted := num(t, r.message(t, "cleanup"), "aborted_uploads")
		t.Logf("cleanup --older-than 0s aborted %d upload(s)", aborted)
		if leftBehind && aborted < 1 {
			t.Errorf("the message named an upload left behind, cleanup found none")
		}

		// The next backup finishes, reusing the packs that made it.
		r = c.run(0, "backup", "--repo", repo, "--key-file", key, "--db", db, "--media", media, "--json")
		added := num(t, r.message(t, "summary"), "added_bytes")
		t.Logf("second backup added %d bytes (a full backup added %d; %d were stored before the failure)", added, fullAdded, bytesBefore)
		if fullAdded > 0 {
			if added >= fullAdded {
				t.Errorf("the backup after the failure added %d bytes, a full one %d: the stored packs were not reused", added, fullAdded)
			}
			// Everything stored before is reused: what is added is the
			// rest, give or take a pack of chunks cut differently.
			if slack := int64(8 << 20); added > fullAdded-bytesBefore+slack {
				t.Errorf("added %d bytes, want at most %d (full %d - stored %d + slack)", added, fullAdded-bytesBefore+slack, fullAdded, bytesBefore)
			}
		}
		r = c.run(0, "check", "--read-data", "--repo", repo, "--key-file", key)
		if !strings.HasPrefix(r.stdout, "no errors: 1 snapshots") {
			t.Errorf("check after the second backup: %q", r.stdout)
		}
		target := filepath.Join(c.dir, "restored")
		c.run(0, "restore", "latest", "--repo", repo, "--key-file", key, "--target", target, "-q")
		if got := treeDigest(t, filepath.Join(target, "Media")); got != want {
			t.Errorf("restored media differ from the source")
		}
		// The failed backup's lock (its process is gone) does not block
		// an exclusive operation, and prune keeps what the snapshot uses.
		c.run(0, "forget", "--keep-last", "1", "--prune", "--repo", repo, "--key-file", key)
		c.run(0, "check", "--repo", repo, "--key-file", key)
		r = c.run(0, "cleanup", "--repo", repo, "--older-than", "0s", "--json")
		if !strings.Contains(r.stdout, `"aborted_uploads":0`) {
			t.Errorf("uploads left after prune: %s", r.stdout)
		}
	})
}

// TestS3Unreachable: with nothing listening, every command fails with
// exit 1 and one line, within the retry budget (opening a store probes
// for at most 10 s, less with a smaller budget).
func TestS3Unreachable(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	c := newS3CLI(t, srv)
	dead := deadAddr(t)
	key := filepath.Join(c.dir, "key.txt")
	c.run(0, "init", "--repo", "s3:http://"+srv.Endpoint+"/wab-unreach", "--s3-create-bucket", "--key-out", key, "-q")
	media := filepath.Join(c.dir, "Media")
	os.MkdirAll(media, 0o755)
	os.WriteFile(filepath.Join(media, "a.jpg"), []byte("x"), 0o644)
	for _, tc := range []struct {
		budget string
		limit  time.Duration
		args   []string
	}{
		{"2s", 2*time.Second + 5*time.Second, []string{"snapshots", "--key-file", key}},
		{"2s", 2*time.Second + 5*time.Second, []string{"init", "--s3-create-bucket"}},
		{"2s", 2*time.Second + 5*time.Second, []string{"backup", "--key-file", key, "--media", media, "--json"}},
		{"", 10*time.Second + 5*time.Second, []string{"check", "--key-file", key}}, // the default budget: the probe stops at 10 s
	} {
		repo := "s3:http://" + dead + "/wab-unreach"
		if tc.budget != "" {
			repo += "?retry-budget=" + tc.budget
		}
		r := c.run(1, append([]string{"--repo", repo}, tc.args...)...)
		out := r.stderr + r.stdout
		if !strings.Contains(out, "cannot reach S3 server "+dead+": connection refused (gave up after") {
			t.Errorf("%s: message %q", tc.args[0], out)
		}
		if r.took > tc.limit {
			t.Errorf("%s with retry budget %q took %v, want at most %v", tc.args[0], tc.budget, r.took, tc.limit)
		}
	}
}
