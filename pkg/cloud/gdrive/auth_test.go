package gdrive

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
)

const (
	testClientID     = "123-emu.apps.googleusercontent.com"
	testClientSecret = "GOCSPX-emu-secret"
)

func startOAuthEmu(t *testing.T) *driveemu.Server {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	return driveemu.Start(t, driveemu.Options{ClientID: testClientID, ClientSecret: testClientSecret})
}

func loginOpts(emu *driveemu.Server, out io.Writer) LoginOptions {
	return LoginOptions{
		ClientID: testClientID, ClientSecret: testClientSecret,
		AuthURL: emu.URL + "/auth", TokenURL: emu.URL + "/token",
		Out: out,
	}
}

// browser follows the consent redirect to the loopback listener, as a
// browser would.
func browser(t *testing.T) func(string) error {
	return func(u string) error {
		resp, err := http.Get(u)
		if err != nil {
			t.Errorf("browser: %v", err)
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "logged in") {
			t.Errorf("loopback page: %d %s", resp.StatusCode, body)
		}
		return nil
	}
}

func readCache(t *testing.T) *tokenCache {
	t.Helper()
	p, err := TokenPath()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("token cache mode %v", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(p)
	var c tokenCache
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestTokenPath(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", "/x/cfg")
	if p, _ := TokenPath(); p != "/x/cfg/wabackup/gdrive-token.json" {
		t.Fatal(p)
	}
	t.Setenv("XDG_CONFIG_HOME", "relative")
	t.Setenv("HOME", "/home/u")
	if p, _ := TokenPath(); p != "/home/u/.config/wabackup/gdrive-token.json" {
		t.Fatal(p)
	}
}

func TestLoginLoopback(t *testing.T) {
	emu := startOAuthEmu(t)
	var out strings.Builder
	o := loginOpts(emu, &out)
	opened := ""
	o.OpenBrowser = func(u string) error {
		opened = u
		return browser(t)(u)
	}
	if err := Login(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	au, err := url.Parse(opened)
	if err != nil {
		t.Fatal(err)
	}
	q := au.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("access_type") != "offline" ||
		q.Get("prompt") != "consent" || !strings.HasPrefix(q.Get("redirect_uri"), "http://127.0.0.1:") || q.Get("state") == "" {
		t.Fatalf("consent URL %s", opened)
	}
	c := readCache(t)
	if c.Token.RefreshToken == "" || c.Token.AccessToken == "" || c.ClientID != testClientID || c.RevokeURL != emu.URL+"/revoke" {
		t.Fatalf("cache %+v", c)
	}
	if strings.Join(c.Scopes, " ") != ScopeAppData+" "+ScopeFile {
		t.Fatalf("scopes %v", c.Scopes)
	}
	// the saved login opens a store through the URL scheme
	t.Setenv(EndpointEnv, emu.URL)
	st, err := cloud.Open(context.Background(), "gdrive://appdata/after-login", true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Put(context.Background(), "config", strings.NewReader("hi"), 2); err != nil {
		t.Fatal(err)
	}
	st2, err := cloud.Open(context.Background(), "gdrive://folder/Backups/w", true)
	if err != nil {
		t.Fatal(err)
	}
	st2.Close()
}

func TestLoginPKCEEnforced(t *testing.T) {
	emu := startOAuthEmu(t)
	// a code obtained with a challenge cannot be exchanged without the verifier
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	conf := &oauth2.Config{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURL: "http://127.0.0.1:9/",
		Endpoint: oauth2.Endpoint{AuthURL: emu.URL + "/auth", TokenURL: emu.URL + "/token", AuthStyle: oauth2.AuthStyleInParams}, Scopes: []string{ScopeAppData}}
	v := oauth2.GenerateVerifier()
	codeFor := func() string {
		resp, err := noRedirect.Get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(v)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		return loc.Query().Get("code")
	}
	_, err := conf.Exchange(context.Background(), codeFor())
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("exchange without verifier: %v", err)
	}
	if _, err := conf.Exchange(context.Background(), codeFor(), oauth2.VerifierOption(oauth2.GenerateVerifier())); !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("exchange with a wrong verifier: %v", err)
	}
	code := codeFor()
	if _, err := conf.Exchange(context.Background(), code, oauth2.VerifierOption(v)); err != nil {
		t.Fatal(err)
	}
	if _, err := conf.Exchange(context.Background(), code, oauth2.VerifierOption(v)); err == nil {
		t.Fatal("a code was accepted twice")
	}
}

// syncBuffer is an io.Writer safe to read while Login writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var urlRE = regexp.MustCompile(`https?://\S+/auth\?\S+`)

// consentRedirect waits for Login to print the consent URL, "approves" it
// and returns the address the browser would be sent to.
func consentRedirect(t *testing.T, out *syncBuffer) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := urlRE.FindString(out.String()); m != "" {
			noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noRedirect.Get(m)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.Header.Get("Location")
		}
		if time.Now().After(deadline) {
			t.Fatalf("no consent URL printed: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLoginNoBrowserPaste(t *testing.T) {
	for _, mode := range []string{"url", "code", "wrong-state"} {
		t.Run(mode, func(t *testing.T) {
			emu := startOAuthEmu(t)
			out := &syncBuffer{}
			pr, pw := io.Pipe()
			o := loginOpts(emu, out)
			o.NoBrowser, o.In = true, pr
			o.OpenBrowser = func(string) error { t.Error("browser opened in no-browser mode"); return nil }
			done := make(chan error, 1)
			go func() { done <- Login(context.Background(), o) }()
			redirect := consentRedirect(t, out)
			u, _ := url.Parse(redirect)
			var paste string
			switch mode {
			case "url":
				paste = redirect
			case "code":
				paste = u.Query().Get("code")
			case "wrong-state":
				q := u.Query()
				q.Set("state", "forged")
				u.RawQuery = q.Encode()
				paste = u.String()
			}
			w := bufio.NewWriter(pw)
			w.WriteString("\n" + paste + "\n")
			w.Flush()
			err := <-done
			pw.Close()
			if mode == "wrong-state" {
				if err == nil || !strings.Contains(err.Error(), "state") {
					t.Fatalf("forged state: %v", err)
				}
				if p, _ := TokenPath(); fileExists(p) {
					t.Fatal("token saved despite the forged state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c := readCache(t); c.Token.RefreshToken == "" {
				t.Fatal("no refresh token saved")
			}
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestLoginDenied(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	emu := driveemu.Start(t, driveemu.Options{DenyConsent: true})
	o := loginOpts(emu, io.Discard)
	o.OpenBrowser = func(u string) error {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		return nil
	}
	if err := Login(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Fatalf("denied consent: %v", err)
	}
}

func login(t *testing.T, emu *driveemu.Server) {
	t.Helper()
	o := loginOpts(emu, io.Discard)
	o.OpenBrowser = browser(t)
	if err := Login(context.Background(), o); err != nil {
		t.Fatal(err)
	}
}

func TestExpiredTokenIsRefreshedAndSaved(t *testing.T) {
	emu := startOAuthEmu(t)
	login(t, emu)
	first := readCache(t)

	// 1. the cache says the token expired: refreshed before use
	first.Token.Expiry = time.Now().Add(-time.Hour)
	p, _ := TokenPath()
	if err := saveCache(p, first); err != nil {
		t.Fatal(err)
	}
	ts, err := CachedTokenSource(context.Background(), ScopeAppData)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	second := readCache(t)
	if tok.AccessToken == first.Token.AccessToken || second.Token.AccessToken != tok.AccessToken ||
		second.Token.RefreshToken != first.Token.RefreshToken || !second.Token.Expiry.After(time.Now()) {
		t.Fatalf("refresh not saved: %+v", second.Token)
	}

	// 2. Drive refuses a token the client still believes valid: 401,
	// refresh, retry, save
	s := openStore(t, Config{Space: SpaceAppData, Path: "r", Endpoint: emu.URL, TokenSource: ts, Create: true, minBackoff: time.Millisecond})
	emu.ExpireAccessTokens()
	issued := emu.TokensIssued()
	if err := s.Put(context.Background(), "config", strings.NewReader("x"), 1); err != nil {
		t.Fatalf("put after server-side expiry: %v", err)
	}
	if emu.TokensIssued() != issued+1 {
		t.Fatalf("%d tokens minted, want 1", emu.TokensIssued()-issued)
	}
	if third := readCache(t); third.Token.AccessToken == second.Token.AccessToken {
		t.Fatal("refreshed token not saved")
	}
}

func TestRevokedRefreshToken(t *testing.T) {
	emu := startOAuthEmu(t)
	login(t, emu)
	t.Setenv(EndpointEnv, emu.URL)
	ctx := context.Background()
	st, err := cloud.Open(ctx, "gdrive://appdata/rev", true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	emu.RevokeRefreshTokens() // the user removed the app's access
	t0 := time.Now()
	err = st.List(ctx, "", func(cloud.ObjectInfo) error { return nil })
	if !errors.Is(err, ErrNotLoggedIn) || err.Error() != "not logged in to Google Drive — run wabackup login gdrive" {
		t.Fatalf("list after revocation: %v", err)
	}
	_, err = cloud.Open(ctx, "gdrive://appdata/rev", false)
	if !errors.Is(err, ErrNotLoggedIn) || err.Error() != ErrNotLoggedIn.Error() {
		t.Fatalf("open after revocation: %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("took %v to notice", d)
	}
}

func TestNotLoggedIn(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	_, err := cloud.Open(context.Background(), "gdrive://appdata/x", true)
	if !errors.Is(err, ErrNotLoggedIn) || err.Error() != ErrNotLoggedIn.Error() {
		t.Fatalf("open without login: %v", err)
	}
	if err := Logout(context.Background()); err != nil {
		t.Fatalf("logout without login: %v", err)
	}
}

func TestScopeMissing(t *testing.T) {
	emu := startOAuthEmu(t)
	o := loginOpts(emu, io.Discard)
	o.OpenBrowser = browser(t)
	o.Scopes = []string{ScopeAppData}
	if err := Login(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EndpointEnv, emu.URL)
	if _, err := cloud.Open(context.Background(), "gdrive://folder/x", true); !errors.Is(err, ErrNotLoggedIn) || !strings.Contains(err.Error(), "drive.file") {
		t.Fatalf("folder repo with an appdata-only login: %v", err)
	}
}

func TestLogout(t *testing.T) {
	emu := startOAuthEmu(t)
	login(t, emu)
	c := readCache(t)
	if err := Logout(context.Background()); err != nil {
		t.Fatal(err)
	}
	p, _ := TokenPath()
	if fileExists(p) {
		t.Fatal("token cache still there")
	}
	// the refresh token is dead at the server
	conf := c.config()
	_, err := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: c.Token.RefreshToken}).Token()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("refresh after logout: %v", err)
	}
	// revocation failing still removes the local copy, and says so
	login(t, emu)
	c = readCache(t)
	c.RevokeURL = emu.URL + "/nowhere"
	saveCache(p, c)
	if err := Logout(context.Background()); err == nil || !strings.Contains(err.Error(), "revoking") {
		t.Fatalf("logout with a failing revoke: %v", err)
	}
	if fileExists(p) {
		t.Fatal("token cache still there")
	}
}

func TestClientJSONFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "client_secret.json")
	os.WriteFile(p, []byte(`{"installed":{"client_id":"cid","client_secret":"sec","auth_uri":"https://a/auth","token_uri":"https://a/token","redirect_uris":["http://localhost"]}}`), 0o600)
	c, err := (&LoginOptions{ClientJSONFile: p}).cache()
	if err != nil || c.ClientID != "cid" || c.ClientSecret != "sec" || c.AuthURL != "https://a/auth" || c.TokenURL != "https://a/token" || c.RevokeURL != GoogleRevokeURL {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := (&LoginOptions{}).cache(); err == nil {
		t.Fatal("no client accepted")
	}
}
