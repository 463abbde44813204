// Package cloud defines the object store a wabackup repository lives in: a
// flat namespace of immutable, named objects that can be written from a
// stream of known size, read whole or by byte range, listed by prefix,
// inspected and deleted. Every backend (local directory, S3, Google Drive)
// implements Store and passes the shared conformance suite in cloudtest.
package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) by Get, Stat and Delete when the named
// object does not exist. Test with errors.Is.
var ErrNotFound = errors.New("object not found")

// ErrNoRepository is returned by Open when the location holds no store at
// all (a missing directory or bucket).
var ErrNoRepository = errors.New("repository does not exist")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Store is the whole interface the repository needs from a backend.
//
// Names are slash-separated, made of [a-z0-9/._-], and never start with a
// slash. Implementations must be safe for concurrent use.
type Store interface {
	// Put stores exactly size bytes read from r under name. The object
	// becomes visible to Get/List/Stat only once it is complete and
	// durable: a failed or cancelled Put never leaves a partial object
	// under name. Put over an existing name replaces it atomically.
	Put(ctx context.Context, name string, r io.Reader, size int64) error

	// Get returns a reader for length bytes of the object starting at
	// offset. length < 0 means to the end of the object. Reading past the
	// end of the object yields fewer bytes, never an error at open.
	Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's size and modification time.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for every object whose name starts with prefix, in no
	// particular order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object. Deleting a missing object returns an error
	// wrapping ErrNotFound.
	Delete(ctx context.Context, name string) error

	// Location is the canonical, credential-free address of the store, for
	// messages and lock files.
	Location() string

	// Close releases resources (connections, temp files).
	Close() error
}

// FileStore is implemented by stores that can take a finished local file
// without copying it (the local directory store moves it into place).
// Callers stage files in StagingDir and hand them over with PutFile; the
// file is consumed (moved or removed) whatever the outcome.
type FileStore interface {
	StagingDir() string
	PutFile(ctx context.Context, name string, f *os.File, size int64) error
}

// ReaderAtStore is implemented by stores whose objects are local files: a
// reader of many small ranges of one object (a restore of many small
// files) opens it once with OpenReaderAt instead of once per Get. The
// caller closes it.
type ReaderAtStore interface {
	OpenReaderAt(ctx context.Context, name string) (ReaderAtCloser, error)
}

// ReaderAtCloser reads ranges of an object.
type ReaderAtCloser interface {
	io.ReaderAt
	io.Closer
}

// ConnectionLimited is implemented by stores whose requests share a fixed
// number of connections, each held from the request until its response
// body is closed. A caller that keeps responses open (a reader streaming
// several parts of an object) must keep fewer than Connections of them,
// or its other requests wait for ever.
type ConnectionLimited interface {
	Connections() int
}

// Opener creates a Store for a parsed location. create asks the backend to
// create the container (directory, bucket, folder) if it is missing;
// otherwise a missing container yields ErrNoRepository.
type Opener func(ctx context.Context, loc *url.URL, create bool) (Store, error)

var openers = map[string]Opener{}

// Register makes a backend available under a URL scheme ("file", "s3",
// "gdrive"). It is meant to be called from a backend's init function.
func Register(scheme string, open Opener) { openers[scheme] = open }

// ParseLocation turns a user-supplied repository address into a URL. A bare
// path (absolute or relative) becomes a file:// URL.
func ParseLocation(dest string) (*url.URL, error) {
	if dest == "" {
		return nil, errors.New("no repository given (use --repo or WABACKUP_REPOSITORY)")
	}
	if i := strings.Index(dest, "://"); i > 0 {
		u, err := url.Parse(dest)
		if err != nil {
			return nil, fmt.Errorf("bad repository address %q: %v", dest, err)
		}
		return u, nil
	}
	return &url.URL{Scheme: "file", Path: dest}, nil
}

// Open opens the store at dest (see ParseLocation).
func Open(ctx context.Context, dest string, create bool) (Store, error) {
	u, err := ParseLocation(dest)
	if err != nil {
		return nil, err
	}
	open, ok := openers[u.Scheme]
	if !ok {
		return nil, fmt.Errorf("unsupported repository scheme %q in %q (supported: %s)", u.Scheme, dest, schemes())
	}
	return open(ctx, u, create)
}

func schemes() string {
	var s []string
	for k := range openers {
		s = append(s, k+"://")
	}
	return strings.Join(s, ", ")
}

// ValidName reports whether name is acceptable as an object name.
func ValidName(name string) bool {
	if name == "" || name[0] == '/' || strings.Contains(name, "..") || strings.HasSuffix(name, "/") {
		return false
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '/', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ContextReader returns a reader of r that stops with ctx's error once ctx
// is done, so a Put reading the caller's data ends promptly on
// cancellation.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return &ctxReader{ctx: ctx, r: r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
