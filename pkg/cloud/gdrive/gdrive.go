// Package gdrive is the cloud.Store backend for Google Drive: it keeps a
// repository's objects as files in one Drive folder tree, either hidden in
// the app's appDataFolder (gdrive://appdata/NAME, scope drive.appdata) or
// visible in My Drive (gdrive://folder/PATH, scope drive.file), through the
// official google.golang.org/api/drive/v3 client.
//
// # Layout
//
// An object name's directories become Drive folders, created on demand and
// remembered by ID; its last element is the file name. So "data/ab/ab01"
// is the file "ab01" in folder "data/ab" of the repository folder, and a
// downloaded copy of the folder is a valid file:// repository. The
// alternative, flat files named "data/ab/ab01" in one folder, makes every
// List a scan of the whole repository (Drive's q has no "starts with"; name
// contains only matches word prefixes), 1000 files per request — 100+
// requests to list the 10 snapshot files of a 100k-object repository — and
// piles everything into a single folder, while Drive enforces at most
// 500,000 items per folder (Lykos153/git-annex-remote-googledrive#52).
// With folders, List("snapshots/") and Stat/Get name lookups touch one
// small folder; List("data/") walks its subfolders, several at a time.
//
// # Drive's quirks and how they are handled
//
//   - Names are not unique in a folder. Put uploads a new file and then
//     deletes the older files of that name (never newer ones, so two
//     concurrent Puts leave exactly one winner); Get, Stat and List use the
//     newest file of a name (greatest modifiedTime, then ID) and report
//     each name once. Folders duplicated by concurrent clients are merged:
//     all of them are searched, the oldest receives new files.
//   - Put is a resumable upload with ChunkSize chunks (the generated client
//     sends data that fits one chunk as a single multipart request). Drive
//     creates the file only when the last byte arrives, so a failed or
//     cancelled Put leaves nothing visible. The content's MD5 is checked
//     against Drive's md5Checksum.
//   - Every HTTP request goes through a retrying transport (see transport):
//     403 rate limits, 429, 5xx and connection errors are retried with
//     truncated exponential backoff and jitter, honouring Retry-After,
//     within RetryBudget. A Get's body that breaks mid-stream is resumed
//     from the byte where it broke.
//   - The daily upload cap (750 GB/user/day, answered as 403
//     userRateLimitExceeded "User rate limit exceeded.") stops a Put at once
//     with ErrUploadCap, and a full account with ErrQuota; neither is
//     retried.
//   - Tokens come from a TokenSource; the one Login saves (see auth.go)
//     refreshes itself, rewrites the token cache, and turns a revoked
//     consent into ErrNotLoggedIn.
package gdrive

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	drive "google.golang.org/api/drive/v3"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// ErrUploadCap is returned (wrapped) by Put when Google Drive refuses new
// uploads because the account reached its daily upload cap.
var ErrUploadCap = errors.New("daily upload limit of Google Drive reached (750 GB per user per day): the rest of the backup has to wait until tomorrow")

// ErrQuota is returned (wrapped) when the Google account's storage is full.
var ErrQuota = errors.New("the Google account's storage is full: free some space or buy more storage, then run the backup again")

// Spaces.
const (
	SpaceAppData = "appdata" // the hidden appDataFolder
	SpaceFolder  = "folder"  // a folder in My Drive
)

const (
	folderMime   = "application/vnd.google-apps.folder"
	objectMime   = "application/octet-stream"
	chunkGranule = 256 << 10
	listPageSize = 1000
	fileFields   = "id,name,size,modifiedTime,createdTime,md5Checksum"
)

// Config configures New.
type Config struct {
	// Space is SpaceAppData or SpaceFolder.
	Space string
	// Path is the repository folder: a folder path under appDataFolder or
	// under My Drive, "/"-separated.
	Path string
	// Endpoint is the base URL of the Drive server ("http://127.0.0.1:PORT"
	// for the emulator); empty is Google.
	Endpoint string
	// TokenSource authorises the requests.
	TokenSource oauth2.TokenSource
	// ChunkSize is the resumable-upload chunk size, rounded up to a
	// multiple of 256 KiB (default 8 MiB). Objects that fit in one chunk go
	// up in a single request.
	ChunkSize int
	// RetryBudget bounds the time spent retrying one request (default 2m).
	RetryBudget time.Duration
	// Connections is the number of concurrent connections to Drive
	// (default 8).
	Connections int
	// Create makes the repository folder if it is missing; otherwise a
	// missing folder is cloud.ErrNoRepository.
	Create bool

	// minBackoff is the first retry wait (default 1s); tests shorten it.
	minBackoff time.Duration
}

// Store is a Google Drive cloud.Store.
type Store struct {
	cfg    Config
	svc    *drive.Service
	hc     *http.Client
	spaces string
	loc    string

	mkMu sync.Mutex // serialises folder creation
	mu   sync.Mutex
	dirs map[string][]string // repository-relative dir path ("" is the root) → folder IDs, canonical first
}

// New opens (or with cfg.Create, creates) the repository folder.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.TokenSource == nil {
		return nil, errors.New("gdrive: no TokenSource")
	}
	var base string
	var spaces string
	switch cfg.Space {
	case SpaceAppData:
		base, spaces = "appDataFolder", "appDataFolder"
	case SpaceFolder:
		base, spaces = "root", "drive"
	default:
		return nil, fmt.Errorf("gdrive: unknown space %q (want %q or %q)", cfg.Space, SpaceAppData, SpaceFolder)
	}
	comps, err := splitPath(cfg.Path)
	if err != nil {
		return nil, err
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = 8 << 20
	}
	cfg.ChunkSize = (cfg.ChunkSize + chunkGranule - 1) / chunkGranule * chunkGranule
	if cfg.RetryBudget <= 0 {
		cfg.RetryBudget = 2 * time.Minute
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 8
	}
	if cfg.minBackoff <= 0 {
		cfg.minBackoff = time.Second
	}
	ht := http.DefaultTransport.(*http.Transport).Clone()
	ht.MaxConnsPerHost = cfg.Connections
	ht.MaxIdleConnsPerHost = cfg.Connections
	// HTTP/1.1 only, so Connections means connections (rclone disables
	// HTTP/2 for Drive by default too, rclone#3631).
	ht.ForceAttemptHTTP2 = false
	ht.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	ht.ResponseHeaderTimeout = 5 * time.Minute
	hc := &http.Client{Transport: &transport{
		base: cloud.CountingTransport(ctx, ht, requestKind), ts: cfg.TokenSource, budget: cfg.RetryBudget,
		minWait: cfg.minBackoff, maxWait: 32 * cfg.minBackoff,
		progress: cloud.NewProgress(cloud.RunBudget(ctx)),
	}}
	opts := []option.ClientOption{option.WithHTTPClient(hc)}
	if cfg.Endpoint != "" {
		ep := strings.TrimSuffix(cfg.Endpoint, "/")
		if !strings.HasSuffix(ep, "/drive/v3") {
			ep += "/drive/v3"
		}
		opts = append(opts, option.WithEndpoint(ep+"/"))
	}
	svc, err := drive.NewService(ctx, opts...)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, svc: svc, hc: hc, spaces: spaces, dirs: map[string][]string{},
		loc: Location(cfg.Space, strings.Join(comps, "/"))}

	// resolve (or make) the repository folder
	ids := []string{base}
	for i, c := range comps {
		found, err := s.findFolders(ctx, ids, c)
		if err != nil {
			return nil, s.mapErr("open", s.loc, err)
		}
		if len(found) == 0 {
			if !cfg.Create {
				return nil, fmt.Errorf("%s: %w", s.loc, cloud.ErrNoRepository)
			}
			id, err := s.mkFolder(ctx, ids[0], c)
			if err != nil {
				return nil, s.mapErr("create", strings.Join(comps[:i+1], "/"), err)
			}
			found = []string{id}
		}
		ids = found
	}
	s.dirs[""] = ids
	return s, nil
}

func splitPath(p string) ([]string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil, errors.New("gdrive: empty repository folder name")
	}
	comps := strings.Split(p, "/")
	for _, c := range comps {
		if c == "" || c == "." || c == ".." {
			return nil, fmt.Errorf("gdrive: bad repository folder %q", p)
		}
		for _, r := range c {
			if r < 0x20 || r == 0x7f {
				return nil, fmt.Errorf("gdrive: bad repository folder %q", p)
			}
		}
	}
	return comps, nil
}

// Location implements cloud.Store.
func (s *Store) Location() string { return s.loc }

// Connections implements cloud.ConnectionLimited: the HTTP transport opens
// at most this many connections to Drive.
func (s *Store) Connections() int { return s.cfg.Connections }

// Close implements cloud.Store.
func (s *Store) Close() error {
	s.hc.CloseIdleConnections()
	return nil
}

// quoteQ quotes a string for a Drive query.
func quoteQ(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, `'`, `\'`) + "'"
}

func inParents(ids []string) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = quoteQ(id) + " in parents"
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "(" + strings.Join(parts, " or ") + ")"
}

// list runs a files.list query to the end.
func (s *Store) list(ctx context.Context, q string, each func(*drive.File) error) error {
	call := s.svc.Files.List().Spaces(s.spaces).Q(q).PageSize(listPageSize).
		Fields(googleapi.Field("nextPageToken,incompleteSearch,files(" + fileFields + ",mimeType)")).Context(ctx)
	return call.Pages(ctx, func(l *drive.FileList) error {
		for _, f := range l.Files {
			if err := each(f); err != nil {
				return err
			}
		}
		return nil
	})
}

// findFolders returns the folders named name in any of parents, oldest
// first.
func (s *Store) findFolders(ctx context.Context, parents []string, name string) ([]string, error) {
	var found []*drive.File
	err := s.list(ctx, "name = "+quoteQ(name)+" and "+inParents(parents)+" and mimeType = '"+folderMime+"' and trashed = false",
		func(f *drive.File) error {
			if f.Name == name && f.MimeType == folderMime {
				found = append(found, f)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	sort.Slice(found, func(i, j int) bool {
		if found[i].CreatedTime != found[j].CreatedTime {
			return ts(found[i].CreatedTime).Before(ts(found[j].CreatedTime))
		}
		return found[i].Id < found[j].Id
	})
	ids := make([]string, len(found))
	for i, f := range found {
		ids[i] = f.Id
	}
	return ids, nil
}

func (s *Store) mkFolder(ctx context.Context, parent, name string) (string, error) {
	f, err := s.svc.Files.Create(&drive.File{Name: name, MimeType: folderMime, Parents: []string{parent}}).
		Fields("id").Context(ctx).Do()
	if err != nil {
		return "", err
	}
	return f.Id, nil
}

// dir returns the folder IDs of a repository directory, creating it if
// create is set; nil means it does not exist.
func (s *Store) dir(ctx context.Context, p string, create bool) ([]string, error) {
	s.mu.Lock()
	ids := s.dirs[p]
	s.mu.Unlock()
	if ids != nil {
		return ids, nil
	}
	parentPath, name := "", p
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		parentPath, name = p[:i], p[i+1:]
	}
	parent, err := s.dir(ctx, parentPath, create)
	if err != nil || parent == nil {
		return nil, err
	}
	if create {
		// One creator at a time, so concurrent Puts into a new
		// directory make one folder, not several.
		s.mkMu.Lock()
		defer s.mkMu.Unlock()
		s.mu.Lock()
		ids = s.dirs[p]
		s.mu.Unlock()
		if ids != nil {
			return ids, nil
		}
	}
	ids, err = s.findFolders(ctx, parent, name)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		if !create {
			return nil, nil
		}
		id, err := s.mkFolder(ctx, parent[0], name)
		if err != nil {
			return nil, err
		}
		ids = []string{id}
	}
	s.mu.Lock()
	s.dirs[p] = ids
	s.mu.Unlock()
	return ids, nil
}

func (s *Store) forgetDir(p string) {
	s.mu.Lock()
	for k := range s.dirs {
		if k != "" && (k == p || strings.HasPrefix(k, p+"/")) {
			delete(s.dirs, k)
		}
	}
	s.mu.Unlock()
}

func splitName(name string) (dir, base string, err error) {
	if !cloud.ValidName(name) {
		return "", "", fmt.Errorf("invalid object name %q", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." {
			return "", "", fmt.Errorf("invalid object name %q", name)
		}
	}
	dir, base = path.Split(name)
	return strings.TrimSuffix(dir, "/"), base, nil
}

func ts(v string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, v)
	return t
}

// newer reports whether a is newer than b: later modifiedTime, then the
// greater ID, so every client ranks duplicates the same way.
func newer(a, b *drive.File) bool {
	ta, tb := ts(a.ModifiedTime), ts(b.ModifiedTime)
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return a.Id > b.Id
}

// versions returns the files named base in the folders ids, newest first.
func (s *Store) versions(ctx context.Context, ids []string, base string) ([]*drive.File, error) {
	var out []*drive.File
	err := s.list(ctx, "name = "+quoteQ(base)+" and "+inParents(ids)+" and mimeType != '"+folderMime+"' and trashed = false",
		func(f *drive.File) error {
			if f.Name == base && f.MimeType != folderMime { // Drive's name match may be looser
				out = append(out, f)
			}
			return nil
		})
	sort.Slice(out, func(i, j int) bool { return newer(out[i], out[j]) })
	return out, err
}

// lookup finds the current (newest) file of an object.
func (s *Store) lookup(ctx context.Context, op, name string) (*drive.File, error) {
	dir, base, err := splitName(name)
	if err != nil {
		return nil, err
	}
	ids, err := s.dir(ctx, dir, false)
	if err != nil {
		return nil, s.mapErr(op, name, err)
	}
	if ids == nil {
		return nil, fmt.Errorf("%s %s: %w", op, name, cloud.ErrNotFound)
	}
	vs, err := s.versions(ctx, ids, base)
	if err != nil {
		return nil, s.mapErr(op, name, err)
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("%s %s: %w", op, name, cloud.ErrNotFound)
	}
	return vs[0], nil
}

// mapErr turns client errors into the package's and cloud's sentinels.
func (s *Store) mapErr(op, name string, err error) error {
	if errors.Is(err, ErrNotLoggedIn) {
		return ErrNotLoggedIn
	}
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) {
		return fmt.Errorf("gdrive %s %s: %w", op, name, err)
	}
	reason, msg := "", gerr.Message
	if len(gerr.Errors) > 0 {
		reason, msg = gerr.Errors[0].Reason, gerr.Errors[0].Message
	}
	switch {
	case gerr.Code == 404:
		return fmt.Errorf("%s %s: %w", op, name, cloud.ErrNotFound)
	case reason == "storageQuotaExceeded" || reason == "quotaExceeded":
		return fmt.Errorf("%s %s: %w", op, name, ErrQuota)
	case op == "put" && reason == "userRateLimitExceeded" && isCapMessage(msg, gerr.Message):
		return fmt.Errorf("%s %s: %w", op, name, ErrUploadCap)
	case gerr.Code == 401:
		return fmt.Errorf("%w (Drive refused the access token: %s)", ErrNotLoggedIn, gerr.Message)
	case reason == "insufficientScopes" || reason == "insufficientPermissions" || reason == "appNotAuthorizedToFile":
		return fmt.Errorf("gdrive %s %s: the saved Google login does not allow this (%s) — run wabackup login gdrive again", op, name, gerr.Message)
	}
	return fmt.Errorf("gdrive %s %s: %w", op, name, err)
}

// exactReader passes on exactly size bytes of r and fails if r has fewer
// or more, or ctx ends; it hashes what it passes.
type exactReader struct {
	ctx  context.Context
	r    io.Reader
	size int64
	left int64
	h    hash.Hash
	err  error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if err := e.ctx.Err(); err != nil {
		e.err = err
		return 0, err
	}
	if e.left == 0 {
		var one [1]byte
		for i := 0; i < 100; i++ {
			n, err := e.r.Read(one[:])
			if n > 0 {
				e.err = fmt.Errorf("the data is longer than the %d bytes announced", e.size)
				return 0, e.err
			}
			if err == io.EOF {
				return 0, io.EOF
			}
			if err != nil {
				e.err = err
				return 0, err
			}
		}
		e.err = io.ErrNoProgress
		return 0, e.err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	e.h.Write(p[:n])
	if err == io.EOF {
		if e.left > 0 {
			e.err = fmt.Errorf("the data ended after %d of the %d bytes announced: %w", e.size-e.left, e.size, io.ErrUnexpectedEOF)
			return n, e.err
		}
		err = nil // checked for trailing data on the next call
	}
	if err != nil {
		e.err = err
	}
	return n, err
}

// Put implements cloud.Store.
func (s *Store) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	dir, base, err := splitName(name)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("put %s: negative size", name)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ids, err := s.dir(ctx, dir, true)
	if err != nil {
		return s.mapErr("put", name, err)
	}
	er := &exactReader{ctx: ctx, r: r, size: size, left: size, h: md5.New()}
	f, err := s.svc.Files.Create(&drive.File{Name: base, Parents: []string{ids[0]}, MimeType: objectMime}).
		Media(er, googleapi.ContentType(objectMime), googleapi.ChunkSize(s.cfg.ChunkSize), googleapi.ChunkRetryDeadline(s.cfg.RetryBudget)).
		Fields(fileFields).Context(ctx).Do()
	if err != nil {
		if er.err != nil && !errors.Is(er.err, io.EOF) {
			if cerr := ctx.Err(); cerr != nil {
				return fmt.Errorf("put %s: %w", name, cerr)
			}
			return fmt.Errorf("put %s: %w", name, er.err)
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("put %s: %w", name, cerr)
		}
		var gerr *googleapi.Error
		if errors.As(err, &gerr) && gerr.Code == 404 {
			s.forgetDir(dir) // the folder vanished under us; look it up again next time
		}
		return s.mapErr("put", name, err)
	}
	sum := hex.EncodeToString(er.h.Sum(nil))
	if f.Size != size || (f.Md5Checksum != "" && f.Md5Checksum != sum) {
		// should never happen; do not leave a wrong object behind
		_ = s.svc.Files.Delete(f.Id).Context(context.WithoutCancel(ctx)).Do()
		return fmt.Errorf("put %s: Drive stored %d bytes with MD5 %s, sent %d bytes with MD5 %s", name, f.Size, f.Md5Checksum, size, sum)
	}
	// Overwrite: drop the older files of that name. Failures are harmless
	// (readers pick the newest) and the next Put of the name retries.
	if vs, err := s.versions(ctx, ids, base); err == nil {
		for _, v := range vs {
			if v.Id != f.Id && newer(f, v) {
				_ = s.svc.Files.Delete(v.Id).Context(ctx).Do()
			}
		}
	}
	return nil
}

// Get implements cloud.Store.
func (s *Store) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		f, err := s.lookup(ctx, "get", name)
		if err != nil {
			return nil, err
		}
		end := f.Size
		if length >= 0 && offset+length < end {
			end = offset + length
		}
		if offset >= end {
			return io.NopCloser(strings.NewReader("")), nil
		}
		rr := &rangeReader{s: s, ctx: ctx, id: f.Id, size: f.Size, pos: offset, end: end}
		if err := rr.open(); err != nil {
			if errors.Is(err, cloud.ErrNotFound) && attempt == 0 {
				continue // replaced between lookup and download
			}
			return nil, s.mapErr("get", name, err)
		}
		return rr, nil
	}
}

// rangeReader reads bytes [pos, end) of a file and reopens the download
// where it broke if the connection fails, within the retry budget.
type rangeReader struct {
	s        *Store
	ctx      context.Context
	id       string
	size     int64
	pos, end int64
	body     io.ReadCloser
	deadline time.Time
	retries  int
}

func (r *rangeReader) open() error {
	call := r.s.svc.Files.Get(r.id).Context(r.ctx)
	if r.pos > 0 || r.end < r.size {
		call.Header().Set("Range", fmt.Sprintf("bytes=%d-%d", r.pos, r.end-1))
	}
	resp, err := call.Download()
	if err != nil {
		var gerr *googleapi.Error
		if errors.As(err, &gerr) && gerr.Code == 404 {
			return fmt.Errorf("%w: %v", cloud.ErrNotFound, err)
		}
		return err
	}
	body := resp.Body
	if resp.StatusCode == http.StatusOK && r.pos > 0 {
		// the server ignored Range: skip to pos
		if _, err := io.CopyN(io.Discard, body, r.pos); err != nil {
			body.Close()
			return err
		}
	}
	r.body = &struct {
		io.Reader
		io.Closer
	}{io.LimitReader(body, r.end-r.pos), body}
	return nil
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for {
		if r.pos >= r.end {
			return 0, io.EOF
		}
		if r.body == nil {
			if err := r.open(); err != nil {
				return 0, err
			}
		}
		n, err := r.body.Read(p)
		r.pos += int64(n)
		if err == nil || (err == io.EOF && r.pos >= r.end) {
			return n, err
		}
		// the stream broke (an error or a premature end): reopen from pos
		// on the next Read, within the budget
		r.body.Close()
		r.body = nil
		if n > 0 {
			return n, nil
		}
		if r.ctx.Err() != nil {
			return 0, r.ctx.Err()
		}
		if r.deadline.IsZero() {
			r.deadline = time.Now().Add(r.s.cfg.RetryBudget)
		}
		wait := r.s.cfg.minBackoff << min(r.retries, 5)
		r.retries++
		if !sleepWithin(r.ctx, r.deadline, wait) {
			return 0, fmt.Errorf("get: download broke at byte %d: %w", r.pos, err)
		}
	}
}

func (r *rangeReader) Close() error {
	if r.body != nil {
		err := r.body.Close()
		r.body = nil
		return err
	}
	return nil
}

// Stat implements cloud.Store.
func (s *Store) Stat(ctx context.Context, name string) (cloud.ObjectInfo, error) {
	f, err := s.lookup(ctx, "stat", name)
	if err != nil {
		return cloud.ObjectInfo{}, err
	}
	return cloud.ObjectInfo{Name: name, Size: f.Size, ModTime: ts(f.ModifiedTime)}, nil
}

// Delete implements cloud.Store. It removes every file of the name.
func (s *Store) Delete(ctx context.Context, name string) error {
	dir, base, err := splitName(name)
	if err != nil {
		return err
	}
	ids, err := s.dir(ctx, dir, false)
	if err != nil {
		return s.mapErr("delete", name, err)
	}
	if ids == nil {
		return fmt.Errorf("delete %s: %w", name, cloud.ErrNotFound)
	}
	vs, err := s.versions(ctx, ids, base)
	if err != nil {
		return s.mapErr("delete", name, err)
	}
	deleted := 0
	for _, v := range vs {
		err := s.svc.Files.Delete(v.Id).Context(ctx).Do()
		var gerr *googleapi.Error
		if errors.As(err, &gerr) && gerr.Code == 404 {
			continue // someone else deleted it
		}
		if err != nil {
			return s.mapErr("delete", name, err)
		}
		deleted++
	}
	if deleted == 0 {
		return fmt.Errorf("delete %s: %w", name, cloud.ErrNotFound)
	}
	return nil
}

// List implements cloud.Store. It lists the folder that holds prefix and,
// for prefixes that reach into subfolders, walks them concurrently (up to
// Connections at once); fn is never called concurrently.
func (s *Store) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	ids, err := s.dir(ctx, start, false)
	if err != nil {
		return s.mapErr("list", prefix, err)
	}
	if ids == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, s.cfg.Connections)
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	var visit func(dir string, ids []string)
	visit = func(dir string, ids []string) {
		defer wg.Done()
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			fail(ctx.Err())
			return
		}
		files := map[string]*drive.File{}
		folders := map[string][]*drive.File{}
		err := s.list(ctx, inParents(ids)+" and trashed = false", func(f *drive.File) error {
			if f.MimeType == folderMime {
				folders[f.Name] = append(folders[f.Name], f)
			} else if cur, ok := files[f.Name]; !ok || newer(f, cur) {
				files[f.Name] = f
			}
			return nil
		})
		<-sem
		if err != nil {
			fail(s.mapErr("list", prefix, err))
			return
		}
		full := func(n string) string {
			if dir == "" {
				return n
			}
			return dir + "/" + n
		}
		names := make([]string, 0, len(files))
		for n := range files {
			if strings.HasPrefix(full(n), prefix) && !strings.Contains(n, "/") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		mu.Lock()
		for _, n := range names {
			if firstErr != nil {
				break
			}
			f := files[n]
			if err := fn(cloud.ObjectInfo{Name: full(n), Size: f.Size, ModTime: ts(f.ModifiedTime)}); err != nil {
				firstErr = err
				cancel()
			}
		}
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			return
		}
		for n, fs := range folders {
			sub := full(n)
			if strings.Contains(n, "/") || !(strings.HasPrefix(sub+"/", prefix) || strings.HasPrefix(prefix, sub+"/")) {
				continue
			}
			sort.Slice(fs, func(i, j int) bool {
				if fs[i].CreatedTime != fs[j].CreatedTime {
					return ts(fs[i].CreatedTime).Before(ts(fs[j].CreatedTime))
				}
				return fs[i].Id < fs[j].Id
			})
			subIDs := make([]string, len(fs))
			for i, f := range fs {
				subIDs[i] = f.Id
			}
			s.mu.Lock()
			if s.dirs[sub] == nil {
				s.dirs[sub] = subIDs
			}
			s.mu.Unlock()
			wg.Add(1)
			go visit(sub, subIDs)
		}
	}
	wg.Add(1)
	go visit(start, ids)
	wg.Wait()
	return firstErr
}

var _ cloud.Store = (*Store)(nil)
