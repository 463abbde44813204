// Package driveemu is an in-process emulator of the Google Drive v3 REST
// API subset that wabackup's gdrive store uses, faithful enough that the
// real google.golang.org/api/drive/v3 client cannot tell it from Drive, plus
// a stub of Google's OAuth 2.0 endpoints and fault injection for tests.
//
// It is an http.Handler: mount it on an httptest.Server (Start does that),
// point the client at it with option.WithEndpoint(URL+"/drive/v3/") and the
// client sends uploads to URL+"/upload/drive/v3/files" by itself.
//
// # What it implements
//
//   - files.create: metadata only (POST /drive/v3/files), and with content
//     via POST /upload/drive/v3/files?uploadType=multipart|media|resumable.
//   - files.update: metadata (PATCH /drive/v3/files/ID, addParents,
//     removeParents) and content (PATCH /upload/drive/v3/files/ID).
//   - Resumable sessions: the start request answers 200 with an absolute
//     Location session URI; chunks come by PUT or POST with Content-Range
//     "bytes a-b/TOTAL", "bytes a-b/*" or "bytes */TOTAL". A chunk is read
//     whole before it is committed, so a chunk is stored entirely or not at
//     all. "Resume incomplete" is 308 with a Range header, or — when the
//     request carries X-GUploader-No-308: yes, as the Go client always does
//     (internal/gensupport/resumable.go) — 200 with
//     X-HTTP-Status-Code-Override: 308. A re-sent chunk that overlaps bytes
//     already stored has the overlap skipped. A status query is an empty
//     request with "bytes */TOTAL" or "bytes */*". The file is created only
//     when the last byte arrives, so an abandoned session never shows.
//   - files.list with q (see ParseQuery), spaces (drive, appDataFolder),
//     pageSize (1..1000, default 100), pageToken, orderBy and fields.
//   - files.get (metadata) and alt=media with a single "bytes=a-b",
//     "bytes=a-" or "bytes=-n" Range (206 with Content-Range; 416 when
//     unsatisfiable, including any range of an empty file).
//   - files.delete (204; a folder takes its descendants with it), about.get
//     (storageQuota, user; fields is required as on Drive).
//   - The 'root' and 'appDataFolder' aliases, in paths, parents and q.
//   - size, version and quotaBytesUsed as JSON strings (the client's struct
//     tags demand it), RFC 3339 millisecond timestamps, md5Checksum,
//     sha1Checksum, sha256Checksum; default field sets as on Drive
//     (kind,id,name,mimeType) when fields is absent; fields validated
//     against the client's generated types (400 invalidParameter).
//   - Google's error JSON: {"error":{"code":…,"message":…,"errors":[{
//     "domain":…,"reason":…,"message":…}]}}.
//   - Authorization: Bearer on every API call (401 authError otherwise);
//     Options.Token is a static token with every scope, and /token issues
//     expiring ones. drive.appdata is needed for the appDataFolder space,
//     drive or drive.file for the rest.
//   - A stub OAuth server: GET /auth consents at once and redirects to the
//     loopback redirect_uri with code and state; POST /token does
//     authorization_code (with the PKCE S256/plain verifier check and the
//     redirect_uri check) and refresh_token (a revoked one answers 400
//     {"error":"invalid_grant","error_description":"Token has been expired
//     or revoked."}); POST /revoke revokes a refresh token (and the access
//     tokens minted from it) or an access token's grant.
//   - Faults (Rule, Inject, and the runtime knobs on Server): 403
//     userRateLimitExceeded and rateLimitExceeded, 429, 5xx, dropped
//     connections (the request is half read, or the download half written,
//     then the TCP connection is reset), the daily upload cap, the storage
//     quota, 401 on the next calls, expired access tokens and revoked
//     refresh tokens. The daily upload cap is answered exactly as observed
//     in the wild: 403 usageLimits/userRateLimitExceeded with the message
//     "User rate limit exceeded." (labbots/google-drive-upload#192; rclone's
//     --drive-stop-on-upload-limit keys on the same string), while an
//     ordinary rate limit carries "User Rate Limit Exceeded. Rate of
//     requests for user exceed configured project quota. …"
//     (tidyverse/googledrive#380).
//   - Admin endpoints for the standalone binary: POST /_emu/faults (a JSON
//     array of Rule), DELETE /_emu/faults, POST /_emu/expire-tokens,
//     POST /_emu/revoke-tokens, GET /_emu/stats.
//
// # Known differences from real Drive
//
//   - One user, one "My Drive", no shared drives, permissions, revisions,
//     trash listing semantics beyond the trashed flag, exports, shortcuts,
//     changes feed, push notifications or Docs types. Unknown endpoints
//     answer 404 in Google's error shape.
//   - Trashing a folder does not mark its descendants trashed (Drive does,
//     with explicitlyTrashed false); deleting one does remove them.
//   - drive.file is treated like drive: every file was created through the
//     API, so "files the app created" is all files. drive.readonly and the
//     other scopes are not modelled. The messages for scope failures
//     (403 insufficientScopes) are not verified against Drive.
//   - Session URIs are accepted without Authorization (as Google documents:
//     the upload_id is the credential); sessions live until Close, or until
//     ExpireUploadSessions (then 404, like an expired session), never a week.
//   - A chunk that starts beyond the bytes stored, or a non-final chunk that
//     is not a multiple of 256 KiB, is refused with 400. Drive's behaviour
//     there is undocumented (Drive may persist a partial chunk and report
//     it via Range; the Go client would not notice, so the emulator is
//     deliberately stricter). The final resumable and multipart responses
//     are 200 (Google documents "200 OK or 201 Created").
//   - name = 'x' is case-sensitive and name contains 'x' matches a prefix
//     of the name or of any word in it, case-insensitively — Drive's exact
//     tokenisation is unknown. fullText looks only at name and
//     description. Unsupported q fields are a 400 even where Drive accepts
//     them (visibility, shortcutDetails.targetId, memberCount, …).
//   - Without orderBy, files.list returns files in creation order;
//     pageTokens are keyset cursors, so a page never repeats or skips a
//     file that existed for the whole listing. Drive promises neither.
//     incompleteSearch is always false. Listing is immediately consistent.
//   - Timestamps are unique and strictly increasing (1 ms apart at least);
//     Drive's are not, so clients must not rely on ties being impossible.
//   - Multi-range requests are answered with the whole file (200).
//   - The daily upload cap counts bytes of completed uploads per UTC day and
//     refuses new uploads (multipart, media, or resumable start) once the
//     day's total reaches the cap; uploads in progress complete, as Google
//     documents. Drive's accounting window is not documented.
//   - The storage quota is checked when an upload starts and on every
//     chunk; Drive counts trashed files too, and so does the emulator.
//   - Access tokens are opaque random strings; there are no ID tokens, no
//     consent screen (DenyConsent simulates a refusal), no device flow, and
//     refresh tokens never rotate. /tokeninfo and userinfo are absent.
//   - State lives in memory. With Options.Dir it is also snapshotted to
//     DIR/state.json (metadata, refresh tokens) and DIR/blobs/ID (content)
//     shortly after every change and on Close, and reloaded by New; upload
//     sessions and access tokens are not persisted.
//   - There is no rate limiting unless a fault is injected. Fault rules are
//     applied before the token is checked, and Retry-After is sent only
//     when a rule asks for it (Drive rarely sends one).
//   - No ETags, conditional requests, gzip, batch requests, HTTP/2 or
//     X-Goog-Upload-* (GCS-style) headers; downloads carry X-Goog-Hash md5
//     only. about.get knows only user and storageQuota.
package driveemu

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Drive scopes understood by the emulator.
const (
	ScopeDrive   = "https://www.googleapis.com/auth/drive"
	ScopeFile    = "https://www.googleapis.com/auth/drive.file"
	ScopeAppData = "https://www.googleapis.com/auth/drive.appdata"
)

const (
	folderMime   = "application/vnd.google-apps.folder"
	emuUserEmail = "emulated.user@example.com"
	spaceDrive   = "drive"
	spaceAppData = "appDataFolder"
	chunkGranule = 256 << 10
)

// Options configures a Server. The zero value is usable: no static token
// (only tokens from /token), any OAuth client accepted, no limits.
type Options struct {
	// Token, if set, is accepted as a bearer token on every call, with every
	// scope, and never expires.
	Token string
	// ClientID and ClientSecret are what /token, /auth and /revoke accept;
	// empty accepts any client.
	ClientID, ClientSecret string
	// AccessTokenTTL is the lifetime of access tokens minted by /token
	// (default 1h, as Google's).
	AccessTokenTTL time.Duration
	// Dir, if set, persists the state there (see the package comment).
	Dir string
	// BaseURL is the absolute URL prefix used in Location headers. Empty
	// derives it from the request's Host.
	BaseURL string
	// UploadCap is the daily upload cap in bytes (Drive's is 750 GB); 0 is
	// no cap.
	UploadCap int64
	// StorageQuota is the account's storage limit in bytes; 0 is unlimited.
	StorageQuota int64
	// Faults are fault rules active from the start.
	Faults []Rule
	// DenyConsent makes /auth redirect with error=access_denied.
	DenyConsent bool
	// Logf, if set, logs every request.
	Logf func(format string, args ...any)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the emulator. Create it with New.
type Server struct {
	// URL is the base URL (scheme://host:port) once Start or Listen ran.
	URL string

	opts Options
	hs   *httptest.Server

	mu        sync.Mutex
	files     map[string]*file
	children  map[string]map[string]*file
	rootID    string
	appDataID string
	lastTime  time.Time
	sessions  map[string]*session
	upDay     string
	upToday   int64
	upCap     int64
	quota     int64
	rules     []*ruleState
	calls     map[Op]int
	dropped   map[Op]int

	codes  map[string]*authCode
	grants map[string]*grant     // by refresh token
	access map[string]*accessTok // by access token

	persist *persister
}

// New returns a Server. With Options.Dir it loads any saved state and
// panics if that state is unreadable (a test helper's convention).
func New(opts Options) *Server {
	if opts.AccessTokenTTL == 0 {
		opts.AccessTokenTTL = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:     opts,
		files:    map[string]*file{},
		children: map[string]map[string]*file{},
		sessions: map[string]*session{},
		calls:    map[Op]int{},
		dropped:  map[Op]int{},
		codes:    map[string]*authCode{},
		grants:   map[string]*grant{},
		access:   map[string]*accessTok{},
		upCap:    opts.UploadCap,
		quota:    opts.StorageQuota,
	}
	s.Inject(opts.Faults...)
	if opts.Dir != "" {
		p, err := newPersister(s, opts.Dir)
		if err != nil {
			panic(fmt.Sprintf("driveemu: %v", err))
		}
		s.persist = p
	}
	if s.rootID == "" {
		now := s.now()
		root := &file{ID: newID(), Name: "My Drive", MimeType: folderMime, Space: spaceDrive, Created: now, Modified: now, Version: 1}
		app := &file{ID: newID(), Name: "Application Data", MimeType: folderMime, Space: spaceAppData, Created: now, Modified: now, Version: 1}
		s.rootID, s.appDataID = root.ID, app.ID
		s.files[root.ID], s.files[app.ID] = root, app
	}
	return s
}

// Start serves s on a loopback httptest server that is closed when t
// ends, and returns s with URL set.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	s.hs = httptest.NewServer(s)
	s.URL = s.hs.URL
	t.Cleanup(func() { s.Close() })
	return s
}

// Listen serves s on addr (e.g. "127.0.0.1:0") in the background and sets
// URL. Close stops it.
func (s *Server) Listen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.hs = &httptest.Server{Listener: l, Config: &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}}
	s.hs.Start()
	s.URL = s.hs.URL
	return nil
}

// Close stops the listener started by Start or Listen and flushes the
// persisted state.
func (s *Server) Close() error {
	if s.hs != nil {
		s.hs.CloseClientConnections()
		s.hs.Close()
		s.hs = nil
	}
	if s.persist != nil {
		return s.persist.close()
	}
	return nil
}

// DriveEndpoint is the value for option.WithEndpoint.
func (s *Server) DriveEndpoint() string { return s.URL + "/drive/v3/" }

// Op names a class of request, for fault rules and statistics.
type Op string

// Request classes.
const (
	OpAny      Op = ""
	OpList     Op = "list"     // GET files
	OpGet      Op = "get"      // GET files/ID (metadata)
	OpDownload Op = "download" // GET files/ID?alt=media
	OpCreate   Op = "create"   // POST files (metadata only)
	OpUpload   Op = "upload"   // POST/PATCH upload/…: multipart, media, resumable start
	OpChunk    Op = "chunk"    // PUT/POST to a resumable session URI
	OpUpdate   Op = "update"   // PATCH files/ID
	OpDelete   Op = "delete"   // DELETE files/ID
	OpAbout    Op = "about"    // GET about
	OpToken    Op = "token"    // POST /token
	OpAuth     Op = "auth"     // GET /auth
	OpRevoke   Op = "revoke"   // POST /revoke
)

// Calls returns how many requests of class op (OpAny: all) reached the
// server, faulted or not.
func (s *Server) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == OpAny {
		n := 0
		for _, c := range s.calls {
			n += c
		}
		return n
	}
	return s.calls[op]
}

// Dropped returns how many connections of class op were cut by a drop
// fault.
func (s *Server) Dropped(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped[op]
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.logf("%s %s", r.Method, r.URL.RequestURI())
	r.Header.Del("X-Emu-Drop") // internal marker, never from clients
	path := r.URL.Path
	switch path {
	case "/token", "/o/oauth2/token":
		s.serveOp(w, r, OpToken, s.handleToken)
		return
	case "/auth", "/o/oauth2/auth", "/o/oauth2/v2/auth":
		s.serveOp(w, r, OpAuth, s.handleAuth)
		return
	case "/revoke", "/o/oauth2/revoke":
		s.serveOp(w, r, OpRevoke, s.handleRevoke)
		return
	}
	if strings.HasPrefix(path, "/_emu/") {
		s.handleAdmin(w, r)
		return
	}
	if rest, ok := strings.CutPrefix(path, "/upload/drive/v3/files"); ok {
		id := strings.TrimPrefix(rest, "/")
		if rest != "" && (rest[0] != '/' || id == "" || strings.Contains(id, "/")) {
			notFoundPath(w, r)
			return
		}
		if r.URL.Query().Get("upload_id") != "" {
			s.serveOp(w, r, OpChunk, func(w http.ResponseWriter, r *http.Request) { s.handleChunk(w, r) })
			return
		}
		s.serveAPI(w, r, OpUpload, func(w http.ResponseWriter, r *http.Request, a *authInfo) {
			s.handleUpload(w, r, a, id)
		})
		return
	}
	p := strings.TrimPrefix(path, "/drive/v3")
	switch {
	case p == "/files":
		switch r.Method {
		case http.MethodGet:
			s.serveAPI(w, r, OpList, s.handleList)
		case http.MethodPost:
			s.serveAPI(w, r, OpCreate, s.handleCreate)
		default:
			methodNotAllowed(w)
		}
	case strings.HasPrefix(p, "/files/") && !strings.Contains(p[len("/files/"):], "/") && len(p) > len("/files/"):
		id := p[len("/files/"):]
		switch r.Method {
		case http.MethodGet:
			if r.URL.Query().Get("alt") == "media" {
				s.serveAPI(w, r, OpDownload, func(w http.ResponseWriter, r *http.Request, a *authInfo) { s.handleDownload(w, r, a, id) })
			} else {
				s.serveAPI(w, r, OpGet, func(w http.ResponseWriter, r *http.Request, a *authInfo) { s.handleGet(w, r, a, id) })
			}
		case http.MethodPatch:
			s.serveAPI(w, r, OpUpdate, func(w http.ResponseWriter, r *http.Request, a *authInfo) { s.handleUpdate(w, r, a, id) })
		case http.MethodDelete:
			s.serveAPI(w, r, OpDelete, func(w http.ResponseWriter, r *http.Request, a *authInfo) { s.handleDelete(w, r, a, id) })
		default:
			methodNotAllowed(w)
		}
	case p == "/about" && r.Method == http.MethodGet:
		s.serveAPI(w, r, OpAbout, s.handleAbout)
	default:
		notFoundPath(w, r)
	}
}

// serveOp counts the call, applies any fault and runs h.
func (s *Server) serveOp(w http.ResponseWriter, r *http.Request, op Op, h http.HandlerFunc) {
	if s.fault(w, r, op) {
		return
	}
	h(w, r)
}

// serveAPI is serveOp plus the bearer-token check.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, op Op, h func(http.ResponseWriter, *http.Request, *authInfo)) {
	if s.fault(w, r, op) {
		return
	}
	a, e := s.authenticate(r)
	if e != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://accounts.google.com/", error="invalid_token"`)
		writeError(w, e)
		return
	}
	h(w, r, a)
}

// apiError is one Google JSON error.
type apiError struct {
	Code         int
	Message      string
	Domain       string
	Reason       string
	Location     string
	LocationType string
	ExtendedHelp string
	header       map[string]string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Code, e.Reason, e.Message) }

func writeError(w http.ResponseWriter, e *apiError) {
	item := map[string]any{"domain": e.Domain, "reason": e.Reason, "message": e.Message}
	if e.Location != "" {
		item["location"] = e.Location
		item["locationType"] = e.LocationType
	}
	if e.ExtendedHelp != "" {
		item["extendedHelp"] = e.ExtendedHelp
	}
	for k, v := range e.header {
		w.Header().Set(k, v)
	}
	writeJSON(w, e.Code, map[string]any{"error": map[string]any{
		"code":    e.Code,
		"message": e.Message,
		"errors":  []any{item},
	}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = 500, []byte(`{"error":{"code":500,"message":"emulator: encoding failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

func errNotFound(id string) *apiError {
	return &apiError{Code: 404, Domain: "global", Reason: "notFound", Message: "File not found: " + id + ".", Location: "fileId", LocationType: "parameter"}
}

func errInvalid(param, msg string) *apiError {
	if msg == "" {
		msg = "Invalid Value"
	}
	return &apiError{Code: 400, Domain: "global", Reason: "invalid", Message: msg, Location: param, LocationType: "parameter"}
}

func errBadRequest(msg string) *apiError {
	return &apiError{Code: 400, Domain: "global", Reason: "badRequest", Message: msg}
}

func errForbidden(reason, msg string) *apiError {
	return &apiError{Code: 403, Domain: "global", Reason: reason, Message: msg}
}

// The rate-limit, cap and quota answers, as seen from real Drive.
var (
	rateLimitMsg = "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota. " +
		"You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits accordingly. " +
		"You may monitor aggregate quota usage and adjust limits in the API Console: " +
		"https://console.developers.google.com/apis/api/drive.googleapis.com/quotas?project=000000000000"
	// UploadCapMessage is the message of the daily-upload-cap answer.
	UploadCapMessage = "User rate limit exceeded."
	// StorageQuotaMessage is the message of the storage-full answer.
	StorageQuotaMessage = "The user's Drive storage quota has been exceeded."
)

func errUserRateLimit() *apiError {
	return &apiError{Code: 403, Domain: "usageLimits", Reason: "userRateLimitExceeded", Message: rateLimitMsg,
		ExtendedHelp: "https://console.developers.google.com/apis/api/drive.googleapis.com/quotas?project=000000000000"}
}

func errUploadCap() *apiError {
	return &apiError{Code: 403, Domain: "usageLimits", Reason: "userRateLimitExceeded", Message: UploadCapMessage}
}

func errStorageQuota() *apiError {
	return &apiError{Code: 403, Domain: "usageLimits", Reason: "storageQuotaExceeded", Message: StorageQuotaMessage}
}

func notFoundPath(w http.ResponseWriter, r *http.Request) {
	writeError(w, &apiError{Code: 404, Domain: "global", Reason: "notFound", Message: "Not Found: " + r.URL.Path})
}

func methodNotAllowed(w http.ResponseWriter) {
	writeError(w, &apiError{Code: 405, Domain: "global", Reason: "httpMethodNotAllowed", Message: "Method Not Allowed"})
}

// newID returns a Drive-looking file ID (33 characters of base64url).
func newID() string {
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	var b [32]byte
	rand.Read(b[:])
	out := make([]byte, 33)
	out[0] = '1'
	for i := range b {
		out[i+1] = alpha[b[i]&63]
	}
	return string(out)
}

func randToken(prefix string) string {
	var b [24]byte
	rand.Read(b[:])
	return prefix + fmt.Sprintf("%x", b[:])
}

// now returns a strictly increasing, millisecond-truncated time. Callers
// hold s.mu (or are single-threaded in New).
func (s *Server) now() time.Time {
	t := s.opts.Now().UTC().Truncate(time.Millisecond)
	if !t.After(s.lastTime) {
		t = s.lastTime.Add(time.Millisecond)
	}
	s.lastTime = t
	return t
}

// baseURL is the absolute prefix for Location headers.
func (s *Server) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return strings.TrimSuffix(s.opts.BaseURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func drain(r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
}
