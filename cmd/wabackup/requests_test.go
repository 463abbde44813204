//go:build unix

package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// Issue 24, acceptance 1: the store requests of the runs that matter over
// a home uplink, counted by the binary itself (its --json summary's
// "requests", cloud.Counter: on the wire for S3 and Drive) and asserted
// against a bound, so that a regression in round trips fails here. Each
// figure is also checked against what reached the server: a counting
// proxy in front of versitygw, the Drive emulator's own count.
//
// The bound of each figure is max(today, target): today is what this
// code made when the test was written (the most of ten runs: check on a
// local store and prune on Drive vary by up to three requests with the
// order in which concurrent readers open packs and folders), target the
// issue's. A count that grows past today's fails; when the metadata cache
// and the batched reads (issue 24, points 1–3) bring a count down, lower
// its today to the new figure, until it reaches the target.

// requestBound is one figure's bound.
type requestBound struct {
	scenario, backend string
	target            int64  // the target; 0: none stated
	plus              string // the target grows by this count of the run: "new packs" or "new files"
	today             int64  // measured when the test was written
}

// The scenarios, in the order they run on each backend.
const (
	scFirst    = "first backup"
	scNoChange = "no-change nightly"
	scChanged  = "nightly after a change"
	scCold     = "database restore, empty cache"
	scWarm     = "database restore, warm cache"
	scCheck    = "check"
	scPrune    = "forget --prune"
)

var requestScenarios = []string{scFirst, scNoChange, scChanged, scCold, scWarm, scCheck, scPrune}

// The targets (issue 24, "Targets"), stated for realistic data and taken
// here as they are: S3, a no-change nightly ≤ 15 requests; a nightly
// after a day of use ≤ 30 + the new packs; a database restore on an empty
// cache ≤ 1.2x restic's + 5 (restic made 18 there: 1.2 × 18 + 5 = 26).
// Drive: the nightly ≤ 30 API calls + the new files (taken for the
// no-change nightly too, whose one new file is its snapshot). The issue
// states no target for a first backup, a warm restore, check or prune,
// nor for Drive's restore, and none for a local store, whose requests are
// calls into the file system: those are bound by today's figure only.
var requestBounds = []requestBound{
	// Re-measured after the metadata cache and page groups in packs of
	// their own (issue 24): the extra
	// page-group pack costs a first backup one put (+ a Drive lookup), a
	// check and a prune on Drive a few lookups; everything a nightly run
	// or a restore reads fell.
	{scFirst, "local", 0, "", 18},               // target: none (local store); today: 18 (17 before the page-group pack)
	{scNoChange, "local", 0, "", 18},            // target: none (local store); today: 18
	{scChanged, "local", 0, "", 26},             // target: none (local store); today: 26 (25 before the page-group pack)
	{scCold, "local", 0, "", 25},                // target: none (local store); today: 25
	{scWarm, "local", 0, "", 23},                // target: none (local store); today: 23
	{scCheck, "local", 0, "", 35},               // target: none (local store); today: 32–35
	{scPrune, "local", 0, "", 35},               // target: none (local store); today: 35
	{scFirst, "s3", 0, "", 22},                  // target: none; today: 22 (21 before the page-group pack)
	{scNoChange, "s3", 15, "", 20},              // target: 15 (issue 24); today: 20 (28 before the metadata cache)
	{scChanged, "s3", 30, "new packs", 27},      // target: 30 + new packs (issue 24; 4 here); today: 27 (45 before)
	{scCold, "s3", 26, "", 26},                  // target: 26 (issue 24: 1.2 × restic's 18 + 5); today: 26 (31 before)
	{scWarm, "s3", 0, "", 19},                   // target: none; today: 19 (29 before)
	{scCheck, "s3", 0, "", 66},                  // target: none; today: 66
	{scPrune, "s3", 0, "", 63},                  // target: none; today: 63
	{scFirst, "gdrive", 0, "", 45},              // target: none; today: 45 (41 before the page-group pack)
	{scNoChange, "gdrive", 30, "new files", 34}, // target: 30 + new files (issue 24; 1 here, the snapshot); today: 34 (49 before)
	{scChanged, "gdrive", 30, "new files", 56},  // target: 30 + new files (issue 24; 6 here); today: 56 (89 before)
	{scCold, "gdrive", 0, "", 51},               // target: none; today: 51 (61 before)
	{scWarm, "gdrive", 0, "", 36},               // target: none; today: 36 (57 before)
	{scCheck, "gdrive", 0, "", 129},             // target: none; today: 129 (127 before the page-group pack)
	{scPrune, "gdrive", 0, "", 128},             // target: none; today: 125 (+3: it varies with the order readers open folders; 117–119 before the page-group pack)
}

// requestRun is what one run of a scenario made.
type requestRun struct {
	counts   map[string]int64 // the summary's "requests"
	up, down int64
	served   int64 // requests the server saw (-1: no server)
	newPacks int64 // data/ objects the run added
	newFiles int64 // objects the run added
}

// reqBackend runs the scenarios against one kind of store.
type reqBackend struct {
	name    string
	repo    string
	initArg []string
	env     []string
	drive   string                                // the Drive emulator's URL (gdrive)
	served  func() int64                          // requests the server has seen so far, nil for none
	objects func(t *testing.T) (all, packs int64) // objects in the repository
}

func TestRequestCounts(t *testing.T) {
	if _, err := wabBinary(); err != nil {
		t.Fatalf("the wabackup test binary is not in PATH: %v", err)
	}
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	emu := driveemu.Start(t, driveemu.Options{Token: gdAdminToken})
	data := t.TempDir()
	db, media := requestData(t, data)

	var backends []reqBackend
	// local
	localRepo := filepath.Join(t.TempDir(), "repo")
	backends = append(backends, reqBackend{name: "local", repo: localRepo,
		objects: func(t *testing.T) (int64, int64) {
			st, err := local.Open(localRepo, false)
			if err != nil {
				t.Fatal(err)
			}
			return countObjects(t, st)
		}})
	// S3: versitygw behind a proxy that counts the requests it passes on
	proxy := newRequestProxy(t, srv.Endpoint)
	bucket := fmt.Sprintf("wab-requests-%d", os.Getpid())
	backends = append(backends, reqBackend{name: "s3", repo: "s3:http://" + proxy.addr + "/" + bucket + "/repo",
		initArg: []string{"--s3-create-bucket"},
		env:     []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey},
		served:  proxy.n.Load,
		objects: func(t *testing.T) (int64, int64) {
			st, err := s3.New(context.Background(), s3.Config{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "repo", Region: srv.Region,
				Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			return countObjects(t, st)
		}})
	// Google Drive: the emulator, logged in with its static token
	backends = append(backends, reqBackend{name: "gdrive", repo: "gdrive://appdata/wab-requests",
		env:    []string{gdrive.EndpointEnv + "=" + emu.URL},
		drive:  emu.URL,
		served: func() int64 { return int64(emu.Calls(driveemu.OpAny)) },
		objects: func(t *testing.T) (int64, int64) {
			st, err := gdrive.New(context.Background(), gdrive.Config{Space: gdrive.SpaceAppData, Path: "wab-requests", Endpoint: emu.URL,
				TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: gdAdminToken})})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			return countObjects(t, st)
		}})

	got := map[string]map[string]requestRun{} // scenario → backend → run
	for _, sc := range requestScenarios {
		got[sc] = map[string]requestRun{}
	}
	for _, b := range backends {
		// Each backend starts from the same data: the change is made on
		// a copy.
		bdata := filepath.Join(t.TempDir(), "data")
		if err := os.CopyFS(bdata, os.DirFS(data)); err != nil {
			t.Fatal(err)
		}
		bdb, bmedia := filepath.Join(bdata, filepath.Base(db)), filepath.Join(bdata, filepath.Base(media))
		t.Run(b.name, func(t *testing.T) {
			c := newRequestCLI(t, b)
			c.run(t, "", append([]string{"init", "--repo", b.repo, "--key-out", c.key}, b.initArg...)...)
			backup := []string{"backup", "--db", bdb, "--media", bmedia}
			got[scFirst][b.name] = c.run(t, "summary", backup...)
			got[scNoChange][b.name] = c.run(t, "summary", backup...)
			changeRequestData(t, bdb, bmedia)
			got[scChanged][b.name] = c.run(t, "summary", backup...)
			cold := filepath.Join(c.dir, "new-machine-cache")
			got[scCold][b.name] = c.run(t, "summary", "restore", "latest", "--include", filepath.Base(bdb),
				"--target", filepath.Join(c.dir, "cold"), "--cache-dir", cold)
			got[scWarm][b.name] = c.run(t, "summary", "restore", "latest", "--include", filepath.Base(bdb),
				"--target", filepath.Join(c.dir, "warm"))
			for _, dir := range []string{"cold", "warm"} {
				if a, b := fileHash(t, bdb), fileHash(t, filepath.Join(c.dir, dir, filepath.Base(bdb))); a != b {
					t.Errorf("the %s restore's database differs from the source", dir)
				}
			}
			got[scCheck][b.name] = c.run(t, "summary", "check")
			got[scPrune][b.name] = c.run(t, "prune", "forget", "--keep-last", "1", "--prune")
		})
	}

	// The figures, as a table, and their bounds.
	var tab strings.Builder
	fmt.Fprintf(&tab, "%-31s %-7s %6s %6s %6s %6s %6s %6s %10s %10s  %s\n", "scenario", "store", "total", "list", "get", "stat", "put", "delete", "up", "down", "bound (target; today)")
	for _, sc := range requestScenarios {
		for _, b := range backends {
			r, ok := got[sc][b.name]
			if !ok {
				continue
			}
			bound := "—"
			if rb, ok := findBound(sc, b.name); ok {
				bound = rb.describe(r)
				if limit := rb.limit(r); r.counts["total"] > limit {
					t.Errorf("%s on %s: %d requests (%v), more than %d (%s): a regression in round trips", sc, b.name, r.counts["total"], r.counts, limit, bound)
				}
			}
			fmt.Fprintf(&tab, "%-31s %-7s %6d %6d %6d %6d %6d %6d %10d %10d  %s\n", sc, b.name, r.counts["total"], r.counts["list"], r.counts["get"],
				r.counts["stat"], r.counts["put"], r.counts["delete"], r.up, r.down, bound)
		}
	}
	t.Logf("store requests (issue 24):\n%s", tab.String())
}

func findBound(scenario, backend string) (requestBound, bool) {
	for _, b := range requestBounds {
		if b.scenario == scenario && b.backend == backend {
			return b, true
		}
	}
	return requestBound{}, false
}

// limit is the bound of a run: max(today, target (+ the run's new packs
// or files)).
func (b requestBound) limit(r requestRun) int64 {
	target := b.target
	switch b.plus {
	case "new packs":
		target += r.newPacks
	case "new files":
		target += r.newFiles
	}
	return max(b.today, target)
}

func (b requestBound) describe(r requestRun) string {
	target := "none"
	if b.target > 0 {
		target = fmt.Sprint(b.target)
		switch b.plus {
		case "new packs":
			target += fmt.Sprintf(" + %d new packs", r.newPacks)
		case "new files":
			target += fmt.Sprintf(" + %d new files", r.newFiles)
		}
	}
	return fmt.Sprintf("≤ %d (%s; %d)", b.limit(r), target, b.today)
}

// requestCLI runs wabackup --json against one backend's repository from
// one home directory (its cache warm from run to run).
type requestCLI struct {
	b   reqBackend
	dir string
	env []string
	key string
}

func newRequestCLI(t *testing.T, b reqBackend) *requestCLI {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + tmp,
		"XDG_CONFIG_HOME=" + filepath.Join(dir, ".config"), "XDG_CACHE_HOME=" + filepath.Join(dir, ".cache")}, b.env...)
	if v := os.Getenv("GOCOVERDIR"); v != "" {
		env = append(env, "GOCOVERDIR="+v)
	}
	if b.drive != "" {
		// logged in: the emulator's static token, which never expires
		tok, err := json.Marshal(map[string]any{"client_id": gdClientID, "client_secret": gdClientSecret,
			"auth_url": b.drive + "/auth", "token_url": b.drive + "/token",
			"scopes": []string{gdrive.ScopeAppData}, "token": map[string]any{"access_token": gdAdminToken, "token_type": "Bearer"}})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, ".config", "wabackup", "gdrive-token.json")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, tok, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &requestCLI{b: b, dir: dir, env: env, key: filepath.Join(dir, "key.txt")}
}

// run runs wabackup ARGS --json, requires exit 0, and returns the
// figures of its message of type typ ("" for none).
func (c *requestCLI) run(t *testing.T, typ string, args ...string) requestRun {
	t.Helper()
	if args[0] != "init" {
		args = append(args, "--repo", c.b.repo, "--key-file", c.key)
	}
	args = append(args, "--json")
	var served0, all0, packs0 int64
	if typ != "" {
		all0, packs0 = c.b.objects(t) // before the server's count: Drive's listing goes to the same server
	}
	if c.b.served != nil {
		served0 = c.b.served()
	}
	res := runWab(c.dir, c.env, 2*time.Minute, args...)
	if res.err != nil || res.code != 0 {
		t.Fatalf("wabackup %s: exit %d (%v)\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.err, res.stdout, res.stderr)
	}
	r := requestRun{served: -1}
	if c.b.served != nil {
		r.served = c.b.served() - served0
	}
	if typ == "" {
		return r
	}
	all1, packs1 := c.b.objects(t)
	r.newFiles, r.newPacks = max(all1-all0, 0), max(packs1-packs0, 0)
	m := res.message(t, typ)
	req, ok := m["requests"].(map[string]any)
	if !ok {
		t.Fatalf("wabackup %s: no requests in %v", strings.Join(args, " "), m)
	}
	r.counts = map[string]int64{}
	var sum int64
	for k, v := range req {
		n, ok := v.(float64)
		if !ok {
			t.Fatalf("requests.%s = %v, not a number", k, v)
		}
		r.counts[k] = int64(n)
		if k != "total" {
			sum += int64(n)
		}
	}
	for _, k := range append([]string{"total"}, kindNames()...) {
		if _, ok := r.counts[k]; !ok {
			t.Errorf("wabackup %s: requests has no %q: %v", strings.Join(args, " "), k, req)
		}
	}
	if sum != r.counts["total"] {
		t.Errorf("wabackup %s: requests.total %d is not the sum of the kinds, %d", strings.Join(args, " "), r.counts["total"], sum)
	}
	r.up, r.down = num(t, m, "bytes_up"), num(t, m, "bytes_down")
	if r.served >= 0 && r.served != r.counts["total"] {
		t.Errorf("wabackup %s: the summary counts %d requests, the server saw %d", strings.Join(args, " "), r.counts["total"], r.served)
	}
	t.Logf("wabackup %s: %d requests %v, %d bytes up, %d down (%d new objects, %d new packs)", args[0], r.counts["total"], req, r.up, r.down, r.newFiles, r.newPacks)
	return r
}

func kindNames() []string {
	var out []string
	for _, k := range cloud.Kinds() {
		out = append(out, k.String())
	}
	return out
}

// countObjects counts the repository's objects and its packs (data/).
func countObjects(t *testing.T, st cloud.Store) (all, packs int64) {
	t.Helper()
	err := st.List(context.Background(), "", func(oi cloud.ObjectInfo) error {
		all++
		if strings.HasPrefix(oi.Name, "data/") {
			packs++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return all, packs
}

// requestProxy is a reverse proxy that counts the HTTP requests it
// passes on: the server's view of what wabackup sent.
type requestProxy struct {
	addr string
	n    atomic.Int64
}

func newRequestProxy(t *testing.T, target string) *requestProxy {
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &requestProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.n.Add(1)
		rp.ServeHTTP(w, r) // the Host header is passed on: the signature holds
	}))
	t.Cleanup(hs.Close)
	p.addr = strings.TrimPrefix(hs.URL, "http://")
	return p
}

// requestData writes the small dataset of the request counts: the chat
// database of the S3 fault tests (20,000 messages, about 1.4 MiB) and a
// media folder of 24 files in four folders (3 MiB).
func requestData(t *testing.T, dir string) (db, media string) {
	t.Helper()
	db, _ = faultData(t, dir, 0)
	media = filepath.Join(dir, "Media")
	rng := rand.New(rand.NewPCG(24, 4))
	for i := range 24 {
		folder := []string{"WhatsApp Images", "WhatsApp Video", "WhatsApp Voice Notes/202547", "WhatsApp Documents"}[i%4]
		writeRandom(t, rng, filepath.Join(media, folder, fmt.Sprintf("IMG-%03d.jpg", i)), 16<<10+rng.IntN(240<<10))
	}
	return db, media
}

// changeRequestData is a day of use: 300 new messages, 50 changed, and
// three new media files, one in a new folder.
func changeRequestData(t *testing.T, db, media string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(25, 4))
	for i, p := range []string{"WhatsApp Images/IMG-day-1.jpg", "WhatsApp Images/IMG-day-2.jpg", "WhatsApp Images/Sent/IMG-day-3.jpg"} {
		writeRandom(t, rng, filepath.Join(media, p), 100<<10+i*50<<10)
	}
	sdb, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	tx, err := sdb.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if _, err := tx.Exec("INSERT INTO message (chat, text) VALUES (?, ?)", i%11, fmt.Sprintf("a new message %d: on my way", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec("UPDATE message SET text = text || ' (edited)' WHERE id % 400 = 7"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		t.Fatal(err)
	}
}

func writeRandom(t *testing.T, rng *rand.Rand, p string, size int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000+rng.Int64N(1e7), 0)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
}
