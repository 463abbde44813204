package driveemu

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// authInfo is what a bearer token grants.
type authInfo struct {
	scopes map[string]bool
}

type authCode struct {
	clientID, redirectURI string
	challenge, method     string
	scopes                []string
	expires               time.Time
}

// grant is one user consent, identified by its refresh token.
type grant struct {
	RefreshToken string    `json:"refreshToken"`
	ClientID     string    `json:"clientID"`
	Scopes       []string  `json:"scopes"`
	Revoked      bool      `json:"revoked"`
	Created      time.Time `json:"created"`
}

type accessTok struct {
	grant   *grant
	scopes  []string
	expires time.Time
	revoked bool
}

func scopeSet(scopes []string) map[string]bool {
	m := map[string]bool{}
	for _, s := range scopes {
		m[s] = true
	}
	return m
}

var allScopes = scopeSet([]string{ScopeDrive, ScopeFile, ScopeAppData})

func errInvalidCredentials() *apiError {
	return &apiError{Code: 401, Domain: "global", Reason: "authError", Message: "Invalid Credentials", Location: "Authorization", LocationType: "header"}
}

// authenticate checks the bearer token of an API call.
func (s *Server) authenticate(r *http.Request) (*authInfo, *apiError) {
	tok := ""
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		tok = strings.TrimSpace(h[7:])
	} else if t := r.URL.Query().Get("access_token"); t != "" {
		tok = t
	}
	if tok == "" {
		return nil, &apiError{Code: 401, Domain: "global", Reason: "required", Message: "Login Required.", Location: "Authorization", LocationType: "header"}
	}
	if s.opts.Token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) == 1 {
		return &authInfo{scopes: allScopes}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[tok]
	if at == nil || at.revoked || !s.opts.Now().Before(at.expires) || (at.grant != nil && at.grant.Revoked) {
		return nil, errInvalidCredentials()
	}
	return &authInfo{scopes: scopeSet(at.scopes)}, nil
}

// mint issues an access token for g. Callers hold s.mu.
func (s *Server) mint(g *grant) (string, time.Duration) {
	tok := randToken("ya29.emu-")
	s.access[tok] = &accessTok{grant: g, scopes: g.Scopes, expires: s.opts.Now().Add(s.opts.AccessTokenTTL)}
	return tok, s.opts.AccessTokenTTL
}

// MintToken creates a consent for scopes (as if the user had logged in)
// and returns a fresh access token and its refresh token.
func (s *Server) MintToken(scopes ...string) (access, refresh string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := &grant{RefreshToken: randToken("1//emu-"), ClientID: s.opts.ClientID, Scopes: scopes, Created: s.opts.Now()}
	s.grants[g.RefreshToken] = g
	access, _ = s.mint(g)
	s.dirty()
	return access, g.RefreshToken
}

// ExpireAccessTokens makes every access token minted so far invalid (the
// clients still believe them valid: the next call gets 401).
func (s *Server) ExpireAccessTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	past := s.opts.Now().Add(-time.Second)
	for _, at := range s.access {
		at.expires = past
	}
}

// RevokeRefreshTokens revokes every consent, as a user removing the app's
// access in their Google account would.
func (s *Server) RevokeRefreshTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.grants {
		g.Revoked = true
	}
	s.dirty()
}

// TokensIssued counts access tokens minted by /token and MintToken.
func (s *Server) TokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.access)
}

func isLoopback(u *url.URL) bool {
	if u.Scheme != "http" {
		return false
	}
	switch u.Hostname() {
	case "127.0.0.1", "::1", "localhost":
		return true
	}
	return false
}

func (s *Server) handleAuth(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	clientID := q.Get("client_id")
	if clientID == "" || (s.opts.ClientID != "" && clientID != s.opts.ClientID) {
		http.Error(w, "Error 401: invalid_client\nThe OAuth client was not found.", http.StatusUnauthorized)
		return
	}
	ru, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || !isLoopback(ru) {
		http.Error(w, "Error 400: redirect_uri_mismatch\nThe redirect URI must be a loopback address (http://127.0.0.1:PORT/) for a desktop client.", http.StatusBadRequest)
		return
	}
	state := q.Get("state")
	fail := func(code, desc string) {
		v := ru.Query()
		v.Set("error", code)
		if desc != "" {
			v.Set("error_description", desc)
		}
		if state != "" {
			v.Set("state", state)
		}
		ru.RawQuery = v.Encode()
		http.Redirect(w, r, ru.String(), http.StatusFound)
	}
	if q.Get("response_type") != "code" {
		fail("unsupported_response_type", "")
		return
	}
	scopes := strings.Fields(q.Get("scope"))
	if len(scopes) == 0 {
		fail("invalid_request", "Missing required parameter: scope")
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	if challenge != "" && method == "" {
		method = "plain"
	}
	if challenge != "" && method != "S256" && method != "plain" {
		fail("invalid_request", "Invalid code_challenge_method")
		return
	}
	if s.opts.DenyConsent {
		fail("access_denied", "")
		return
	}
	code := randToken("4/emu-")
	s.mu.Lock()
	s.codes[code] = &authCode{clientID: clientID, redirectURI: ru.String(), challenge: challenge, method: method, scopes: scopes, expires: s.opts.Now().Add(10 * time.Minute)}
	s.mu.Unlock()
	v := ru.Query()
	v.Set("code", code)
	v.Set("scope", strings.Join(scopes, " "))
	if state != "" {
		v.Set("state", state)
	}
	ru.RawQuery = v.Encode()
	http.Redirect(w, r, ru.String(), http.StatusFound)
}

func oauthError(w http.ResponseWriter, code int, errCode, desc string) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, code, map[string]string{"error": errCode, "error_description": desc})
}

func (s *Server) clientCreds(r *http.Request) (id, secret string) {
	if u, p, ok := r.BasicAuth(); ok {
		// RFC 6749 2.3.1: form-urlencoded inside Basic
		if du, err := url.QueryUnescape(u); err == nil {
			u = du
		}
		if dp, err := url.QueryUnescape(p); err == nil {
			p = dp
		}
		return u, p
	}
	return r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		oauthError(w, 405, "invalid_request", "Method Not Allowed")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, 400, "invalid_request", "Malformed request body")
		return
	}
	clientID, secret := s.clientCreds(r)
	if clientID == "" || (s.opts.ClientID != "" && clientID != s.opts.ClientID) {
		oauthError(w, 401, "invalid_client", "The OAuth client was not found.")
		return
	}
	if s.opts.ClientSecret != "" && secret != s.opts.ClientSecret {
		oauthError(w, 401, "invalid_client", "Unauthorized")
		return
	}
	f := r.PostForm
	s.mu.Lock()
	defer s.mu.Unlock()
	switch gt := f.Get("grant_type"); gt {
	case "authorization_code":
		code := f.Get("code")
		c := s.codes[code]
		delete(s.codes, code) // single use
		if c == nil || s.opts.Now().After(c.expires) || c.clientID != clientID {
			oauthError(w, 400, "invalid_grant", "Malformed auth code.")
			return
		}
		if f.Get("redirect_uri") != c.redirectURI {
			oauthError(w, 400, "redirect_uri_mismatch", "Bad Request")
			return
		}
		if c.challenge != "" {
			v := f.Get("code_verifier")
			if v == "" {
				oauthError(w, 400, "invalid_grant", "Missing code verifier.")
				return
			}
			got := v
			if c.method == "S256" {
				sum := sha256.Sum256([]byte(v))
				got = base64.RawURLEncoding.EncodeToString(sum[:])
			}
			if subtle.ConstantTimeCompare([]byte(got), []byte(c.challenge)) != 1 {
				oauthError(w, 400, "invalid_grant", "Invalid code verifier.")
				return
			}
		}
		g := &grant{RefreshToken: randToken("1//emu-"), ClientID: clientID, Scopes: c.scopes, Created: s.opts.Now()}
		s.grants[g.RefreshToken] = g
		s.dirty()
		at, ttl := s.mint(g)
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, 200, map[string]any{
			"access_token":  at,
			"expires_in":    int(ttl / time.Second),
			"refresh_token": g.RefreshToken,
			"scope":         strings.Join(c.scopes, " "),
			"token_type":    "Bearer",
		})
	case "refresh_token":
		g := s.grants[f.Get("refresh_token")]
		if g == nil || g.Revoked {
			oauthError(w, 400, "invalid_grant", "Token has been expired or revoked.")
			return
		}
		if g.ClientID != "" && g.ClientID != clientID {
			oauthError(w, 401, "unauthorized_client", "Unauthorized")
			return
		}
		at, ttl := s.mint(g)
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, 200, map[string]any{
			"access_token": at,
			"expires_in":   int(ttl / time.Second),
			"scope":        strings.Join(g.Scopes, " "),
			"token_type":   "Bearer",
		})
	default:
		oauthError(w, 400, "unsupported_grant_type", "Invalid grant_type: "+gt)
	}
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		oauthError(w, 405, "invalid_request", "Method Not Allowed")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, 400, "invalid_request", "Malformed request body")
		return
	}
	tok := r.Form.Get("token")
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.grants[tok]; g != nil && !g.Revoked {
		g.Revoked = true
		s.dirty()
	} else if at := s.access[tok]; at != nil && !at.revoked && (at.grant == nil || !at.grant.Revoked) {
		at.revoked = true
		if at.grant != nil {
			at.grant.Revoked = true // revoking an access token revokes the whole grant
			s.dirty()
		}
	} else {
		oauthError(w, 400, "invalid_token", "Token expired or revoked")
		return
	}
	writeJSON(w, 200, map[string]any{})
}

// handleAdmin serves the /_emu/ control endpoints.
func (s *Server) handleAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_emu/faults":
		switch r.Method {
		case http.MethodPost:
			var rules []Rule
			if err := json.NewDecoder(r.Body).Decode(&rules); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			s.Inject(rules...)
		case http.MethodDelete:
			s.ClearFaults()
		default:
			methodNotAllowed(w)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "/_emu/expire-tokens":
		s.ExpireAccessTokens()
		w.WriteHeader(http.StatusNoContent)
	case "/_emu/revoke-tokens":
		s.RevokeRefreshTokens()
		w.WriteHeader(http.StatusNoContent)
	case "/_emu/mint":
		scopes := strings.Fields(r.URL.Query().Get("scope"))
		if len(scopes) == 0 {
			scopes = []string{ScopeDrive, ScopeFile, ScopeAppData}
		}
		a, rt := s.MintToken(scopes...)
		writeJSON(w, 200, map[string]string{"access_token": a, "refresh_token": rt})
	case "/_emu/stats":
		s.mu.Lock()
		calls := map[Op]int{}
		for k, v := range s.calls {
			calls[k] = v
		}
		dropped := map[Op]int{}
		for k, v := range s.dropped {
			dropped[k] = v
		}
		s.rollDay()
		st := map[string]any{"calls": calls, "dropped": dropped, "files": len(s.files) - 2, "uploadedToday": s.upToday, "usage": s.usage()}
		s.mu.Unlock()
		writeJSON(w, 200, st)
	default:
		notFoundPath(w, r)
	}
}
