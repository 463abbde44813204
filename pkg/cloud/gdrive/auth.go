package gdrive

// OAuth 2.0 for an installed app: the loopback-redirect flow with PKCE
// (Google blocked the copy-paste "OOB" flow in 2023; the no-browser mode
// below still uses a loopback redirect and lets the user paste the address
// the browser was sent to), and a token cache that survives refreshes.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/internal/atomicfile"
)

// ErrNotLoggedIn means there is no usable Google login: no saved token, or
// one Google no longer honours (revoked, expired consent).
var ErrNotLoggedIn = errors.New("not logged in to Google Drive — run wabackup login gdrive")

// OAuth scopes.
const (
	ScopeAppData = "https://www.googleapis.com/auth/drive.appdata"
	ScopeFile    = "https://www.googleapis.com/auth/drive.file"
)

// Google's OAuth endpoints.
const (
	GoogleAuthURL   = "https://accounts.google.com/o/oauth2/auth"
	GoogleTokenURL  = "https://oauth2.googleapis.com/token"
	GoogleRevokeURL = "https://oauth2.googleapis.com/revoke"
)

// LoginOptions configures Login.
type LoginOptions struct {
	// ClientID and ClientSecret identify the OAuth client (a "Desktop app"
	// client in the Google Cloud console). Alternatively ClientJSONFile
	// names the client_secret_….json file the console offers.
	ClientID, ClientSecret string
	ClientJSONFile         string
	// Scopes to ask for; default drive.appdata and drive.file, which cover
	// both gdrive://appdata and gdrive://folder repositories.
	Scopes []string
	// NoBrowser prints the consent URL instead of opening a browser and
	// reads the address the browser was redirected to (or just the code)
	// from In — for machines without a browser.
	NoBrowser bool
	// AuthURL, TokenURL and RevokeURL override Google's endpoints (tests,
	// the emulator). RevokeURL defaults to TokenURL with /token replaced by
	// /revoke when TokenURL is overridden.
	AuthURL, TokenURL, RevokeURL string
	// Out receives instructions (default os.Stderr); In is read in
	// NoBrowser mode (default os.Stdin).
	Out io.Writer
	In  io.Reader
	// OpenBrowser opens a URL (default: xdg-open, open or rundll32).
	OpenBrowser func(url string) error
}

// tokenCache is the saved login.
type tokenCache struct {
	ClientID     string        `json:"client_id"`
	ClientSecret string        `json:"client_secret,omitempty"`
	AuthURL      string        `json:"auth_url"`
	TokenURL     string        `json:"token_url"`
	RevokeURL    string        `json:"revoke_url"`
	Scopes       []string      `json:"scopes"`
	Token        *oauth2.Token `json:"token"`
}

// TokenPath is where the login is saved:
// $XDG_CONFIG_HOME/wabackup/gdrive-token.json, or
// ~/.config/wabackup/gdrive-token.json.
func TokenPath() (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" || !filepath.IsAbs(dir) { // the XDG spec says to ignore relative paths
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cannot find the configuration directory: %w", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "wabackup", "gdrive-token.json"), nil
}

func loadCache() (*tokenCache, string, error) {
	path, err := TokenPath()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, ErrNotLoggedIn
	}
	if err != nil {
		return nil, path, err
	}
	var c tokenCache
	if err := json.Unmarshal(b, &c); err != nil || c.Token == nil || c.TokenURL == "" {
		return nil, path, fmt.Errorf("%w (the saved login in %s is unreadable)", ErrNotLoggedIn, path)
	}
	return &c, path, nil
}

// saveCache writes the cache atomically, readable only by the user.
func saveCache(path string, c *tokenCache) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

func (c *tokenCache) config() *oauth2.Config {
	return &oauth2.Config{
		ClientID:     c.ClientID,
		ClientSecret: c.ClientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: c.AuthURL, TokenURL: c.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
		Scopes:       c.Scopes,
	}
}

// CachedTokenSource returns a TokenSource for the saved login. It fails
// with ErrNotLoggedIn when there is none or when it lacks one of scopes.
// The source refreshes the access token when it expires or Drive refuses
// it, saves the refreshed token, and returns ErrNotLoggedIn once Google
// says the consent was revoked (invalid_grant).
func CachedTokenSource(ctx context.Context, scopes ...string) (oauth2.TokenSource, error) {
	c, path, err := loadCache()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, s := range c.Scopes {
		have[s] = true
	}
	for _, s := range scopes {
		if !have[s] && !(s == ScopeAppData && have["https://www.googleapis.com/auth/drive.appfolder"]) {
			return nil, fmt.Errorf("%w (the saved login does not grant %s)", ErrNotLoggedIn, s)
		}
	}
	return &cacheSource{path: path, c: c, conf: c.config(), ctx: refreshContext(ctx)}, nil
}

// refreshContext carries the caller's oauth2.HTTPClient (tests) but not
// its cancellation: the source outlives the call that made it.
func refreshContext(ctx context.Context) context.Context {
	if hc, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok {
		return context.WithValue(context.Background(), oauth2.HTTPClient, hc)
	}
	return context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Timeout: time.Minute})
}

type cacheSource struct {
	mu   sync.Mutex
	path string
	c    *tokenCache
	conf *oauth2.Config
	ctx  context.Context
}

func (s *cacheSource) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c.Token.Valid() {
		t := *s.c.Token
		return &t, nil
	}
	if s.c.Token.RefreshToken == "" {
		return nil, ErrNotLoggedIn
	}
	nt, err := s.conf.TokenSource(s.ctx, &oauth2.Token{RefreshToken: s.c.Token.RefreshToken}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && (re.ErrorCode == "invalid_grant" || re.ErrorCode == "unauthorized_client" || re.ErrorCode == "invalid_client") {
			return nil, ErrNotLoggedIn
		}
		return nil, fmt.Errorf("refreshing the Google Drive access token: %w", err)
	}
	if nt.RefreshToken == "" {
		nt.RefreshToken = s.c.Token.RefreshToken
	}
	s.c.Token = nt
	// A failed save costs a refresh next run, not this one.
	_ = saveCache(s.path, s.c)
	t := *nt
	return &t, nil
}

// invalidate drops the access token if it is the one Drive refused.
func (s *cacheSource) invalidate(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c.Token.AccessToken == accessToken {
		s.c.Token.Expiry = time.Unix(1, 0)
	}
}

// clientFile is the JSON the Google Cloud console hands out.
type clientFile struct {
	Installed *clientSection `json:"installed"`
	Web       *clientSection `json:"web"`
}

type clientSection struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	AuthURI      string `json:"auth_uri"`
	TokenURI     string `json:"token_uri"`
}

func (o *LoginOptions) cache() (*tokenCache, error) {
	c := &tokenCache{ClientID: o.ClientID, ClientSecret: o.ClientSecret, AuthURL: GoogleAuthURL, TokenURL: GoogleTokenURL, RevokeURL: GoogleRevokeURL, Scopes: o.Scopes}
	if o.ClientJSONFile != "" {
		b, err := os.ReadFile(o.ClientJSONFile)
		if err != nil {
			return nil, err
		}
		var cf clientFile
		if err := json.Unmarshal(b, &cf); err != nil {
			return nil, fmt.Errorf("%s: %v", o.ClientJSONFile, err)
		}
		sec := cf.Installed
		if sec == nil {
			sec = cf.Web
		}
		if sec == nil || sec.ClientID == "" {
			return nil, fmt.Errorf("%s: no \"installed\" client in it (create a Desktop app OAuth client)", o.ClientJSONFile)
		}
		c.ClientID, c.ClientSecret = sec.ClientID, sec.ClientSecret
		if sec.AuthURI != "" {
			c.AuthURL = sec.AuthURI
		}
		if sec.TokenURI != "" {
			c.TokenURL = sec.TokenURI
		}
	}
	if c.ClientID == "" {
		return nil, errors.New("no OAuth client ID given")
	}
	if o.AuthURL != "" {
		c.AuthURL = o.AuthURL
	}
	if o.TokenURL != "" {
		c.TokenURL = o.TokenURL
		if o.RevokeURL == "" {
			c.RevokeURL = strings.TrimSuffix(o.TokenURL, "/token") + "/revoke"
		}
	}
	if o.RevokeURL != "" {
		c.RevokeURL = o.RevokeURL
	}
	if len(c.Scopes) == 0 {
		c.Scopes = []string{ScopeAppData, ScopeFile}
	}
	return c, nil
}

type loginResult struct {
	code string
	err  error
}

// Login runs the OAuth consent in a browser, exchanges the code (with the
// PKCE verifier) for tokens, and saves them in TokenPath.
func Login(ctx context.Context, o LoginOptions) error {
	c, err := o.cache()
	if err != nil {
		return err
	}
	out := o.Out
	if out == nil {
		out = os.Stderr
	}
	in := o.In
	if in == nil {
		in = os.Stdin
	}
	open := o.OpenBrowser
	if open == nil {
		open = openBrowser
	}
	path, err := TokenPath()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("cannot listen for the login redirect: %w", err)
	}
	defer ln.Close()
	conf := c.config()
	conf.RedirectURL = fmt.Sprintf("http://127.0.0.1:%d/", ln.Addr().(*net.TCPAddr).Port)
	verifier := oauth2.GenerateVerifier()
	state := randomState()
	authURL := conf.AuthCodeURL(state, oauth2.AccessTypeOffline, oauth2.ApprovalForce, oauth2.S256ChallengeOption(verifier))

	results := make(chan loginResult, 2)
	srv := &http.Server{Handler: redirectHandler(state, results), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	if o.NoBrowser {
		fmt.Fprintf(out, "Open this address in a browser (on any machine) and allow access:\n\n  %s\n\n"+
			"The browser then goes to %s…, which may fail to load on another machine. "+
			"Copy that whole address from the browser's address bar and paste it here:\n> ", authURL, conf.RedirectURL)
		go readPasted(in, state, results)
	} else {
		fmt.Fprintf(out, "Opening a browser to log in to Google Drive. If none opens, visit:\n\n  %s\n\n", authURL)
		if err := open(authURL); err != nil {
			fmt.Fprintf(out, "(could not start a browser: %v)\n", err)
		}
	}
	var res loginResult
	select {
	case res = <-results:
	case <-ctx.Done():
		return ctx.Err()
	}
	if res.err != nil {
		return res.err
	}
	tok, err := conf.Exchange(ctx, res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return fmt.Errorf("exchanging the authorization code: %w", err)
	}
	if tok.RefreshToken == "" {
		return errors.New("no refresh token came back from Google; remove wabackup's access at https://myaccount.google.com/permissions and log in again")
	}
	if granted, ok := tok.Extra("scope").(string); ok && granted != "" {
		c.Scopes = strings.Fields(granted)
	}
	c.Token = tok
	if err := saveCache(path, c); err != nil {
		return fmt.Errorf("saving the login: %w", err)
	}
	fmt.Fprintf(out, "\nLogged in to Google Drive; the token is saved in %s\n", path)
	return nil
}

func randomState() string {
	var b [18]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// redirectHandler receives the browser's redirect on the loopback
// listener.
func redirectHandler(state string, results chan<- loginResult) http.Handler {
	var once sync.Once
	send := func(r loginResult) { once.Do(func() { results <- r }) }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		code, err := codeFromQuery(r.URL.Query(), state)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "<!doctype html><title>wabackup</title><p>Login failed: %s</p>", html.EscapeString(err.Error()))
			send(loginResult{err: err})
			return
		}
		fmt.Fprint(w, "<!doctype html><title>wabackup</title><p>wabackup is logged in to Google Drive. You can close this tab.</p>")
		send(loginResult{code: code})
	})
}

func codeFromQuery(q url.Values, state string) (string, error) {
	if e := q.Get("error"); e != "" {
		if e == "access_denied" {
			return "", errors.New("access to Google Drive was not granted")
		}
		return "", fmt.Errorf("the login was refused by Google: %s %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return "", errors.New("the login answer does not match this login attempt (state mismatch); start again")
	}
	code := q.Get("code")
	if code == "" {
		return "", errors.New("the login answer carries no code")
	}
	return code, nil
}

// readPasted reads the redirect address (or a bare code) from in.
func readPasted(in io.Reader, state string, results chan<- loginResult) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "http://") || strings.HasPrefix(line, "https://") {
			u, err := url.Parse(line)
			if err != nil {
				results <- loginResult{err: fmt.Errorf("cannot read the pasted address: %v", err)}
				return
			}
			code, err := codeFromQuery(u.Query(), state)
			results <- loginResult{code: code, err: err}
			return
		}
		results <- loginResult{code: line}
		return
	}
	err := sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	results <- loginResult{err: fmt.Errorf("no login answer was pasted: %w", err)}
}

func openBrowser(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// Logout revokes the saved login at Google and deletes it. Without a saved
// login it does nothing. If revoking fails the local copy is deleted anyway
// and the error says so.
func Logout(ctx context.Context) error {
	c, path, err := loadCache()
	if errors.Is(err, ErrNotLoggedIn) && path != "" {
		if _, statErr := os.Stat(path); errors.Is(statErr, fs.ErrNotExist) {
			return nil
		}
	}
	var revokeErr error
	if err == nil {
		revokeErr = revoke(ctx, c)
	}
	if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		return rmErr
	}
	if revokeErr != nil {
		return fmt.Errorf("deleted the saved login, but revoking it at Google failed (remove access at https://myaccount.google.com/permissions): %w", revokeErr)
	}
	return nil
}

func revoke(ctx context.Context, c *tokenCache) error {
	tok := c.Token.RefreshToken
	if tok == "" {
		tok = c.Token.AccessToken
	}
	if tok == "" || c.RevokeURL == "" {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.RevokeURL, strings.NewReader(url.Values{"token": {tok}}.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hc := http.DefaultClient
	if h, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok {
		hc = h
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error == "invalid_token" {
		return nil // already revoked
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}
