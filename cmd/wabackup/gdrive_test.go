package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
)

// The OAuth client the emulator accepts in these tests, and the static
// token the test itself uses to look into the emulated Drive.
const (
	gdClientID     = "123456789012-wabackuptest.apps.googleusercontent.com"
	gdClientSecret = "GOCSPX-emulated-client-secret"
	gdAdminToken   = "emu-admin-token"
)

// gdState is one script's emulator and bookkeeping.
type gdState struct {
	emu *driveemu.Server

	markBytes   int64 // UploadedToday at the last `drive mark`
	markUploads int   // upload requests at the last `drive mark`

	tokens map[string]gdSavedToken // `gdtoken save NAME`
}

type gdSavedToken struct{ access, refresh string }

type gdStateKey struct{}

func gdstate(ts *testscript.TestScript) *gdState {
	return ts.Value(gdStateKey{}).(*gdState)
}

// TestGDriveScripts runs the scripts in testdata/gdrive: gdrive://
// repositories end to end, through the real binary, against the Drive
// emulator (pkg/cloud/gdrive/driveemu) that each script gets of its own
// on 127.0.0.1. The environment has $EMU (the emulator's base URL, also in
// WABACKUP_GDRIVE_ENDPOINT), $CLIENT_ID and $CLIENT_SECRET (the OAuth
// client the emulator accepts). Besides mktree, mkdb, dbcheck and cmptree
// (see TestScripts) the scripts have:
//
//	wab CODE ARGS...         run wabackup, require exit code CODE (as in
//	                         TestScripts; also passes GOMAXPROCS and
//	                         WABACKUP_GDRIVE_CLIENT_SECRET)
//	gdlogin MODE CODE ARGS...
//	                         run wabackup ARGS (a login) and act as the user
//	                         in the browser: paste (open the printed URL,
//	                         paste the address it redirects to on stdin),
//	                         code (paste only the code), badstate (paste the
//	                         address with another state), eof (paste
//	                         nothing), appdataonly (paste, but the user
//	                         granted only drive.appdata), loopback (follow
//	                         the redirect to wabackup's loopback listener, as
//	                         a browser on the same machine does; there is no
//	                         xdg-open in PATH)
//	gdtoken mode PERM        the token cache exists with permissions PERM
//	gdtoken save NAME        remember the cached access and refresh tokens
//	gdtoken changed NAME     the cached access token is not NAME's (a refresh
//	                         was saved) and the refresh token is NAME's
//	gdtoken expire           make the cached access token look expired
//	gdtoken dead NAME        the emulator refuses NAME's refresh token
//	                         (invalid_grant): it was revoked
//	drive expire|revoke      the emulator forgets every access token (the
//	                         client still thinks them valid) | revokes every
//	                         refresh token (the user removed the app's access)
//	drive fault OP FAULT [AFTER [COUNT [RETRYAFTER]]]
//	                         inject a fault (driveemu.Rule); OP any for all
//	drive clear              remove the fault rules
//	drive fired N            the fault rules have failed exactly N requests
//	drive cap BYTES|+BYTES|off
//	                         set the daily upload cap (+: above what was
//	                         uploaded today so far)
//	drive mark               remember the bytes and requests uploaded so far
//	drive ls REPO FILE       write "name size mtime" of every object of the
//	                         repository to FILE (uses the API: not while
//	                         faults are set)
//	drive newpacks OLD NEW MIN
//	                         every data/ object of listing OLD is in NEW,
//	                         unchanged, and NEW has at least MIN more
//	drive resumed REPO BEFORE CAPPED JSON DIR
//	                         the backup whose --json output is in JSON went
//	                         on from an interrupted one without sending again
//	                         what it had stored: BEFORE and CAPPED list REPO
//	                         before and after the interrupted run, which was
//	                         to add the new files in DIR. Every data/ object
//	                         of CAPPED is still stored unchanged; added_bytes
//	                         is the size of the data/ objects CAPPED lacks;
//	                         the bytes uploaded since `drive mark` exceed it
//	                         by less than gdMetadataAllowance; and new_bytes
//	                         plus the packs the interrupted run stored make
//	                         up the files in DIR (their chunks were adopted,
//	                         not packed again)
//	drive clientjson FILE    write a client_secret_….json for the emulator
func TestGDriveScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/gdrive",
		Setup: func(env *testscript.Env) error {
			emu := driveemu.New(driveemu.Options{Token: gdAdminToken, ClientID: gdClientID, ClientSecret: gdClientSecret})
			if err := emu.Listen("127.0.0.1:0"); err != nil {
				return err
			}
			env.Defer(func() { emu.Close() })
			env.Values[gdStateKey{}] = &gdState{emu: emu, tokens: map[string]gdSavedToken{}}
			env.Setenv("EMU", emu.URL)
			env.Setenv("WABACKUP_GDRIVE_ENDPOINT", emu.URL)
			env.Setenv("CLIENT_ID", gdClientID)
			env.Setenv("CLIENT_SECRET", gdClientSecret)
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(env.WorkDir, ".config"))
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, ".cache"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"wab":     cmdWab,
			"gdlogin": cmdGDLogin,
			"gdtoken": cmdGDToken,
			"drive":   cmdDrive,
			"mktree":  cmdMktree,
			"mkdb":    cmdMkdb,
			"dbcheck": cmdDBCheck,
			"cmptree": cmdCmptree,
		},
	})
}

// cmdGDLogin runs a login and plays the user's part in the browser.
func cmdGDLogin(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 3 {
		ts.Fatalf("usage: gdlogin paste|code|badstate|eof|appdataonly|loopback CODE ARGS...")
	}
	mode := args[0]
	want := wantCode(ts, args[1])
	cmd := scriptWab(ts, args[2:])
	if mode == "loopback" {
		// Only wabackup in PATH, so no real browser can be started.
		for i, e := range cmd.Env {
			if strings.HasPrefix(e, "PATH=") {
				cmd.Env[i] = "PATH=" + filepath.Dir(cmd.Path)
			}
		}
	}
	stdin, err := cmd.StdinPipe()
	ts.Check(err)
	errPipe, err := cmd.StderrPipe()
	ts.Check(err)
	var stdout strings.Builder
	cmd.Stdout = &stdout
	ts.Check(cmd.Start())
	killer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	defer killer.Stop()

	// Read stderr as it comes, looking for the consent URL.
	var (
		mu     sync.Mutex
		stderr strings.Builder
	)
	urls := make(chan string, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(urls)
		sent := false
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			stderr.WriteString(line + "\n")
			mu.Unlock()
			if u := strings.TrimSpace(line); !sent && strings.HasPrefix(u, "http") && strings.Contains(u, "/auth?") {
				urls <- u
				sent = true
			}
		}
		io.Copy(io.Discard, errPipe)
	}()

	var actErr error
	if authURL, ok := <-urls; ok {
		actErr = gdBrowser(mode, authURL, stdin)
	}
	stdin.Close()
	<-readDone
	err = cmd.Wait()
	mu.Lock()
	errText := stderr.String()
	mu.Unlock()
	fmt.Fprint(ts.Stdout(), stdout.String())
	fmt.Fprint(ts.Stderr(), errText)
	if actErr != nil {
		ts.Fatalf("playing the browser (%s): %v", mode, actErr)
	}
	checkExit(ts, neg, want, args[2:], err, 0, errText)
}

// gdBrowser does what the user and the browser do with the consent URL.
func gdBrowser(mode, authURL string, stdin io.Writer) error {
	if mode == "eof" {
		return nil
	}
	if mode == "loopback" {
		// A browser on the same machine: the emulator consents at once and
		// redirects to wabackup's loopback listener, which ends the login.
		resp, err := http.Get(authURL)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "logged in") {
			return fmt.Errorf("the loopback page answered %s: %s", resp.Status, body)
		}
		return nil
	}
	if mode == "appdataonly" {
		// Google's granular consent: the user unticks drive.file.
		u, err := url.Parse(authURL)
		if err != nil {
			return err
		}
		q := u.Query()
		q.Set("scope", driveemu.ScopeAppData)
		u.RawQuery = q.Encode()
		authURL = u.String()
	}
	// The browser is on another machine: the redirect to 127.0.0.1 fails
	// there, and the user copies the address from the address bar.
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(authURL)
	if err != nil {
		return err
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || loc == "" {
		return fmt.Errorf("the consent page answered %s, Location %q", resp.Status, loc)
	}
	u, err := url.Parse(loc)
	if err != nil {
		return err
	}
	paste := loc
	switch mode {
	case "paste", "appdataonly":
	case "code":
		paste = u.Query().Get("code")
	case "badstate":
		q := u.Query()
		q.Set("state", "not-the-state-wabackup-sent")
		u.RawQuery = q.Encode()
		paste = u.String()
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	_, err = io.WriteString(stdin, paste+"\n")
	return err
}

// gdCache reads the token cache the way the test sees it.
type gdCache struct {
	ClientID string `json:"client_id"`
	TokenURL string `json:"token_url"`
	Token    struct {
		AccessToken  string    `json:"access_token"`
		RefreshToken string    `json:"refresh_token"`
		Expiry       time.Time `json:"expiry"`
	} `json:"token"`
}

func gdTokenPath(ts *testscript.TestScript) string {
	return filepath.Join(ts.Getenv("XDG_CONFIG_HOME"), "wabackup", "gdrive-token.json")
}

func gdReadCache(ts *testscript.TestScript) (gdCache, map[string]any) {
	b, err := os.ReadFile(gdTokenPath(ts))
	ts.Check(err)
	var c gdCache
	var raw map[string]any
	ts.Check(json.Unmarshal(b, &c))
	ts.Check(json.Unmarshal(b, &raw))
	if c.Token.AccessToken == "" || c.Token.RefreshToken == "" {
		ts.Fatalf("the token cache lacks a token:\n%s", b)
	}
	return c, raw
}

func cmdGDToken(ts *testscript.TestScript, neg bool, args []string) {
	st := gdstate(ts)
	if len(args) < 1 {
		ts.Fatalf("usage: gdtoken mode|save|changed|expire|dead ...")
	}
	arg := func() string {
		if len(args) != 2 {
			ts.Fatalf("usage: gdtoken %s ARG", args[0])
		}
		return args[1]
	}
	switch args[0] {
	case "mode":
		want, err := strconv.ParseUint(arg(), 8, 32)
		ts.Check(err)
		fi, err := os.Stat(gdTokenPath(ts))
		ts.Check(err)
		if got := fi.Mode().Perm(); (got == os.FileMode(want)) == neg {
			ts.Fatalf("%s has mode %#o, want %#o", gdTokenPath(ts), got, want)
		}
	case "save":
		c, _ := gdReadCache(ts)
		st.tokens[arg()] = gdSavedToken{c.Token.AccessToken, c.Token.RefreshToken}
	case "changed":
		old, ok := st.tokens[arg()]
		if !ok {
			ts.Fatalf("no token saved as %s", args[1])
		}
		c, _ := gdReadCache(ts)
		if (c.Token.AccessToken != old.access) == neg {
			ts.Fatalf("cached access token changed: %v, want %v", c.Token.AccessToken != old.access, !neg)
		}
		if c.Token.RefreshToken != old.refresh {
			ts.Fatalf("the refresh token changed from %s to %s", old.refresh, c.Token.RefreshToken)
		}
		if !c.Token.Expiry.After(time.Now()) {
			ts.Fatalf("the cached access token expires at %s, in the past", c.Token.Expiry)
		}
	case "expire":
		_, raw := gdReadCache(ts)
		raw["token"].(map[string]any)["expiry"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
		delete(raw["token"].(map[string]any), "expires_in")
		b, err := json.MarshalIndent(raw, "", "  ")
		ts.Check(err)
		ts.Check(os.WriteFile(gdTokenPath(ts), b, 0o600))
	case "dead":
		old, ok := st.tokens[arg()]
		if !ok {
			ts.Fatalf("no token saved as %s", args[1])
		}
		resp, err := http.PostForm(st.emu.URL+"/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {old.refresh},
			"client_id": {gdClientID}, "client_secret": {gdClientSecret}})
		ts.Check(err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		dead := resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "invalid_grant")
		if dead == neg {
			ts.Fatalf("refreshing with %s's refresh token: %s %s", args[1], resp.Status, body)
		}
	default:
		ts.Fatalf("unknown gdtoken command %q", args[0])
	}
}

// gdListing is one `drive ls` line.
type gdListing struct {
	name  string
	size  int64
	mtime int64
}

func (l gdListing) String() string { return fmt.Sprintf("%s %d %d", l.name, l.size, l.mtime) }

func gdReadListing(ts *testscript.TestScript, file string) map[string]gdListing {
	out := map[string]gdListing{}
	for _, line := range strings.Split(strings.TrimSpace(ts.ReadFile(file)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			ts.Fatalf("%s: bad line %q", file, line)
		}
		size, err1 := strconv.ParseInt(f[1], 10, 64)
		mtime, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			ts.Fatalf("%s: bad line %q", file, line)
		}
		out[f[0]] = gdListing{f[0], size, mtime}
	}
	return out
}

// gdList lists a repository's objects through the API, with the static
// token.
func gdList(ts *testscript.TestScript, repo string) []gdListing {
	st := gdstate(ts)
	space, folder, err := gdrive.ParseLocation(repo)
	ts.Check(err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := gdrive.New(ctx, gdrive.Config{Space: space, Path: folder, Endpoint: st.emu.URL,
		TokenSource: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: gdAdminToken}), RetryBudget: time.Second})
	ts.Check(err)
	defer s.Close()
	var out []gdListing
	ts.Check(s.List(ctx, "", func(fi cloud.ObjectInfo) error {
		out = append(out, gdListing{fi.Name, fi.Size, fi.ModTime.UnixNano()})
		return nil
	}))
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func cmdDrive(ts *testscript.TestScript, neg bool, args []string) {
	st := gdstate(ts)
	out := ts.Stdout()
	if len(args) < 1 {
		ts.Fatalf("usage: drive SUBCOMMAND ...")
	}
	nargs := func(n int) {
		if len(args) != n+1 {
			ts.Fatalf("drive %s: want %d argument(s)", args[0], n)
		}
	}
	if neg && args[0] != "fired" {
		ts.Fatalf("drive %s does not support !", args[0])
	}
	switch args[0] {
	case "expire":
		nargs(0)
		st.emu.ExpireAccessTokens()
	case "revoke":
		nargs(0)
		st.emu.RevokeRefreshTokens()
	case "fault":
		if len(args) < 3 || len(args) > 6 {
			ts.Fatalf("usage: drive fault OP FAULT [AFTER [COUNT [RETRYAFTER]]]")
		}
		r := driveemu.Rule{Op: driveemu.Op(args[1]), Fault: driveemu.Fault(args[2])}
		if args[1] == "any" {
			r.Op = driveemu.OpAny
		}
		var err error
		if len(args) > 3 {
			r.After, err = strconv.Atoi(args[3])
			ts.Check(err)
		}
		if len(args) > 4 {
			r.Count, err = strconv.Atoi(args[4])
			ts.Check(err)
		}
		if len(args) > 5 {
			r.RetryAfter, err = time.ParseDuration(args[5])
			ts.Check(err)
		}
		st.emu.Inject(r)
	case "clear":
		nargs(0)
		st.emu.ClearFaults()
	case "fired":
		nargs(1)
		want, err := strconv.Atoi(args[1])
		ts.Check(err)
		got := st.emu.Fired()
		fmt.Fprintf(out, "fired %d\n", got)
		if (got == want) == neg {
			ts.Fatalf("the fault rules failed %d request(s), want %d", got, want)
		}
	case "cap":
		nargs(1)
		switch v := args[1]; {
		case v == "off":
			st.emu.SetUploadCap(0)
		case strings.HasPrefix(v, "+"):
			n, err := strconv.ParseInt(v[1:], 10, 64)
			ts.Check(err)
			st.emu.SetUploadCap(st.emu.UploadedToday() + n)
		default:
			n, err := strconv.ParseInt(v, 10, 64)
			ts.Check(err)
			st.emu.SetUploadCap(n)
		}
	case "mark":
		nargs(0)
		st.markBytes, st.markUploads = st.emu.UploadedToday(), st.emu.Calls(driveemu.OpUpload)
	case "ls":
		nargs(2)
		var b strings.Builder
		for _, l := range gdList(ts, args[1]) {
			b.WriteString(l.String() + "\n")
		}
		ts.Check(os.WriteFile(ts.MkAbs(args[2]), []byte(b.String()), 0o644))
	case "newpacks":
		nargs(3)
		old, cur := gdReadListing(ts, args[1]), gdReadListing(ts, args[2])
		want, err := strconv.Atoi(args[3])
		ts.Check(err)
		gdSamePacks(ts, old, cur)
		n := 0
		for name := range cur {
			if _, ok := old[name]; !ok && strings.HasPrefix(name, "data/") {
				n++
			}
		}
		fmt.Fprintf(out, "%d new pack(s)\n", n)
		if n < want {
			ts.Fatalf("%d new pack(s) in %s, want at least %d", n, args[2], want)
		}
	case "resumed":
		nargs(5)
		before, old := gdReadListing(ts, args[2]), gdReadListing(ts, args[3])
		cur := map[string]gdListing{}
		for _, l := range gdList(ts, args[1]) {
			cur[l.name] = l
		}
		gdSamePacks(ts, old, cur)
		var added, newPlain int64 = -1, -1
		for _, line := range strings.Split(ts.ReadFile(args[4]), "\n") {
			var m struct {
				Type  string `json:"message_type"`
				Added *int64 `json:"added_bytes"`
				New   *int64 `json:"new_bytes"`
			}
			if json.Unmarshal([]byte(line), &m) == nil && m.Type == "summary" && m.Added != nil && m.New != nil {
				added, newPlain = *m.Added, *m.New
			}
		}
		if added < 0 {
			ts.Fatalf("no backup summary with added_bytes and new_bytes in %s", args[4])
		}
		var capped int64
		for name, l := range old {
			if _, ok := before[name]; !ok && strings.HasPrefix(name, "data/") {
				capped += l.size
			}
		}
		var dirBytes int64
		ts.Check(filepath.WalkDir(ts.MkAbs(args[5]), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fi, err := d.Info()
			if err == nil {
				dirBytes += fi.Size()
			}
			return err
		}))
		var newBytes int64
		for name, l := range cur {
			if _, ok := old[name]; !ok && strings.HasPrefix(name, "data/") {
				newBytes += l.size
			}
		}
		sent := st.emu.UploadedToday() - st.markBytes
		fmt.Fprintf(out, "added_bytes %d, new packs %d bytes, uploaded %d bytes in %d request(s) since the mark\n",
			added, newBytes, sent, st.emu.Calls(driveemu.OpUpload)-st.markUploads)
		fmt.Fprintf(out, "new_bytes %d + packs stored by the interrupted run %d = %d; new files %d bytes\n",
			newPlain, capped, newPlain+capped, dirBytes)
		if capped == 0 {
			ts.Fatalf("the interrupted run stored no pack")
		}
		// Packs of incompressible data are their chunks plus a few dozen
		// bytes each; chunks sent again would add all of capped.
		if d := newPlain + capped - dirBytes; d < -dirBytes/100 || d > dirBytes/100 {
			ts.Fatalf("new_bytes %d and the %d bytes of packs stored before do not add up to the %d bytes of new files: chunks were sent again, or left out", newPlain, capped, dirBytes)
		}
		// added_bytes counts every object the run stored: its packs,
		// index and snapshot (the lock is gone again).
		var newStored int64
		for name, l := range cur {
			if _, ok := old[name]; !ok && !strings.HasPrefix(name, "locks/") {
				newStored += l.size
			}
		}
		if added != newStored {
			ts.Fatalf("added_bytes is %d, but the run stored %d bytes (%d in new packs)", added, newStored, newBytes)
		}
		// Besides the new packs only small objects go up: the lock, an
		// index and the snapshot (a few KiB here). A pack stored
		// before and sent again would also show in gdSamePacks, as a newer
		// file of its name.
		if sent < added || sent-added >= gdMetadataAllowance {
			ts.Fatalf("uploaded %d bytes for %d bytes of new packs: more than new packs and metadata (%d bytes) went up", sent, added, gdMetadataAllowance)
		}
	case "clientjson":
		nargs(1)
		b, err := json.MarshalIndent(map[string]any{"installed": map[string]any{
			"client_id": gdClientID, "client_secret": gdClientSecret, "project_id": "wabackup-test",
			"auth_uri": st.emu.URL + "/auth", "token_uri": st.emu.URL + "/token",
			"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs", "redirect_uris": []string{"http://localhost"},
		}}, "", "  ")
		ts.Check(err)
		ts.Check(os.WriteFile(ts.MkAbs(args[1]), b, 0o600))
	default:
		ts.Fatalf("unknown drive command %q", args[0])
	}
}

// gdMetadataAllowance bounds what a backup uploads besides its packs in
// these small tests.
const gdMetadataAllowance = 128 << 10

// gdSamePacks fails unless every data/ object of old is in cur with the
// same size and modification time: kept, and not uploaded again.
func gdSamePacks(ts *testscript.TestScript, old, cur map[string]gdListing) {
	for name, l := range old {
		if !strings.HasPrefix(name, "data/") {
			continue
		}
		c, ok := cur[name]
		if !ok {
			ts.Fatalf("pack %s is gone", name)
		}
		if c != l {
			ts.Fatalf("pack %s was replaced: %v, was %v", name, c, l)
		}
	}
}
