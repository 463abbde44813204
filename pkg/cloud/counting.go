package cloud

import (
	"context"
	"io"
	"net/http"
	"os"
	"sync/atomic"
)

// Request counting (issue 24, point 4: request counts as figures).
//
// A Counter counts the requests a store makes, by kind, and the bytes it
// moves, so that a command's summary can say how many round trips it cost
// and tests can assert the figure. The count is taken where it is exact
// for each backend:
//
//   - S3 and Google Drive count on the wire. A store opened with a context
//     from WithCounter wraps its HTTP transport in CountingTransport, below
//     its own retries, so every HTTP request it sends is one request:
//     each attempt of a retried request, each page of a paged listing
//     (S3's ListObjectsV2 returns 1000 keys a page, Drive's files.list as
//     many), the requests made while the store opens (S3's probe of the
//     bucket and its region lookup, Drive's lookup of the repository
//     folder), and on Drive the name lookups that Get, Stat, Put and
//     Delete make before the request that does the work (a Drive file is
//     addressed by ID, so reading an object by name is a files.list and
//     then a download). Drive's OAuth token refreshes go to the token
//     endpoint through a client of their own and are not counted (at most
//     one an hour).
//   - Any other store, the local directory among them, is counted by Count,
//     a wrapper that counts its calls: one request per List, Get, Stat,
//     Put, PutFile, Delete and OpenReaderAt. ReadAt on a reader that
//     OpenReaderAt opened is a pread on an open file, not a request: its
//     bytes are counted, its calls are not (OpenReaderAt itself counts as
//     the get that opened the object). A local List is one request
//     however many directories it reads.
//
// The kinds:
//
//	list    S3: GET on the bucket (ListObjectsV2, ListMultipartUploads),
//	        GET ?uploadId (ListParts). Drive: GET files (files.list),
//	        including the name lookups described above. Local: List.
//	get     S3: GET of an object (a whole or ranged read). Drive: GET
//	        files/ID?alt=media (a download). Local: Get, OpenReaderAt.
//	stat    a request for metadata, not data. S3: HEAD of an object or the
//	        bucket, GET ?location (the region lookup). Drive: GET files/ID
//	        without alt=media, GET about. Local: Stat. (S3's Delete makes a
//	        HEAD before its DELETE, to report a missing object.)
//	put     S3: PUT of an object, UploadPart, PUT of a bucket, POST of a
//	        multipart upload (initiate, complete). Drive: POST files
//	        (folders), every upload request (multipart, resumable start and
//	        each chunk), PATCH. Local: Put, PutFile.
//	delete  S3: DELETE (an object, an abandoned multipart upload), POST
//	        ?delete. Drive: DELETE files/ID. Local: Delete.
//
// Bytes up are the bytes of request bodies as the HTTP transport reads
// them to send (each attempt's), bytes down those of response bodies as
// the client reads them; headers are not counted. A response the client
// closes early (a restore's stream over a pack it leaves) counts what was
// read, not what the server meant to send. For a store counted by Count,
// bytes up are what Put read from its reader and the size of each file
// PutFile stored, bytes down what was read from Get's readers and through
// ReadAt.
//
// A Counter is safe for concurrent use, and meant for one store: Count
// tells from it whether that store's backend counts on the wire.
type Counter struct {
	n     [numKinds]atomic.Int64
	up    atomic.Int64
	down  atomic.Int64
	wired atomic.Bool // a CountingTransport counts into it
}

// Kind is a kind of store request.
type Kind int

// The kinds of request (see Counter).
const (
	KindList Kind = iota
	KindGet
	KindStat
	KindPut
	KindDelete
	numKinds
)

var kindNames = [numKinds]string{"list", "get", "stat", "put", "delete"}

// String is the kind's name in summaries: list, get, stat, put or delete.
func (k Kind) String() string {
	if k < 0 || k >= numKinds {
		return "unknown"
	}
	return kindNames[k]
}

// Kinds lists the kinds in the order summaries show them.
func Kinds() []Kind { return []Kind{KindList, KindGet, KindStat, KindPut, KindDelete} }

// Counts is what a Counter has counted.
type Counts struct {
	Requests  [numKinds]int64 // by Kind
	BytesUp   int64
	BytesDown int64
}

// Total is the number of requests of every kind.
func (c Counts) Total() int64 {
	var n int64
	for _, v := range c.Requests {
		n += v
	}
	return n
}

// Of is the number of requests of kind k.
func (c Counts) Of(k Kind) int64 { return c.Requests[k] }

// Add returns the sum of c and d.
func (c Counts) Add(d Counts) Counts {
	for i := range c.Requests {
		c.Requests[i] += d.Requests[i]
	}
	c.BytesUp += d.BytesUp
	c.BytesDown += d.BytesDown
	return c
}

// Sub returns c minus d: what was counted between two Counts of the
// same Counter.
func (c Counts) Sub(d Counts) Counts {
	for i := range c.Requests {
		c.Requests[i] -= d.Requests[i]
	}
	c.BytesUp -= d.BytesUp
	c.BytesDown -= d.BytesDown
	return c
}

// Counts returns what c has counted so far.
func (c *Counter) Counts() Counts {
	var out Counts
	for i := range c.n {
		out.Requests[i] = c.n[i].Load()
	}
	out.BytesUp = c.up.Load()
	out.BytesDown = c.down.Load()
	return out
}

// Wired reports whether an HTTP transport counts into c (the store was
// opened with WithCounter by a backend that counts on the wire).
func (c *Counter) Wired() bool { return c.wired.Load() }

func (c *Counter) add(k Kind) {
	if k >= 0 && k < numKinds {
		c.n[k].Add(1)
	}
}

type counterKey struct{}

// WithCounter returns a context that hands c to the backend Open (or a
// backend's New) opens a store with: S3 and Google Drive then count their
// HTTP requests into c, from the first request of the opening on. A
// context carries it because Opener, shared by every backend, takes no
// options, and because the opening's own requests must be counted too.
func WithCounter(ctx context.Context, c *Counter) context.Context {
	return context.WithValue(ctx, counterKey{}, c)
}

// CountingTransport returns base wrapped to count every request it sends
// into the Counter ctx carries (WithCounter), of the kind kind says, and
// the bytes of its request and response bodies; base itself when ctx
// carries none. Backends call it when they build their HTTP client, below
// their retries, so that each attempt is counted.
func CountingTransport(ctx context.Context, base http.RoundTripper, kind func(*http.Request) Kind) http.RoundTripper {
	c, _ := ctx.Value(counterKey{}).(*Counter)
	if c == nil {
		return base
	}
	c.wired.Store(true)
	return &countingTransport{base: base, c: c, kind: kind}
}

type countingTransport struct {
	base http.RoundTripper
	c    *Counter
	kind func(*http.Request) Kind
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.c.add(t.kind(req))
	if req.Body != nil && req.Body != http.NoBody {
		// A RoundTripper must not change the request it is given: send a
		// copy whose body counts what the transport reads of it.
		r := req.Clone(req.Context())
		r.Body = &countingBody{rc: req.Body, n: &t.c.up}
		if req.GetBody != nil {
			r.GetBody = func() (io.ReadCloser, error) {
				b, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				return &countingBody{rc: b, n: &t.c.up}, nil
			}
		}
		req = r
	}
	resp, err := t.base.RoundTrip(req)
	if resp != nil && resp.Body != nil && resp.Body != http.NoBody {
		resp.Body = &countingBody{rc: resp.Body, n: &t.c.down}
	}
	return resp, err
}

// CloseIdleConnections passes the call on to base, if it has the method
// (http.Client.CloseIdleConnections looks for it on its transport).
func (t *countingTransport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// countingBody adds the bytes read through it to n.
type countingBody struct {
	rc io.ReadCloser
	n  *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// Count returns s counted into c. When s's backend counts its HTTP
// requests into c already (it was opened with WithCounter(ctx, c)), that
// is s itself; otherwise a wrapper that counts s's calls (see Counter)
// and keeps the optional interfaces s implements (FileStore,
// ReaderAtStore, ConnectionLimited). Unwrap gives s back.
func Count(s Store, c *Counter) Store {
	if c.Wired() {
		return s
	}
	w := &countingStore{s: s, c: c}
	fs, isFS := s.(FileStore)
	ra, isRA := s.(ReaderAtStore)
	cl, isCL := s.(ConnectionLimited)
	f := countingFileStore{fs: fs, c: c}
	r := countingReaderAtStore{ra: ra, c: c}
	switch {
	case isFS && isRA && isCL:
		return &struct {
			*countingStore
			countingFileStore
			countingReaderAtStore
			ConnectionLimited
		}{w, f, r, cl}
	case isFS && isRA:
		return &struct {
			*countingStore
			countingFileStore
			countingReaderAtStore
		}{w, f, r}
	case isFS && isCL:
		return &struct {
			*countingStore
			countingFileStore
			ConnectionLimited
		}{w, f, cl}
	case isRA && isCL:
		return &struct {
			*countingStore
			countingReaderAtStore
			ConnectionLimited
		}{w, r, cl}
	case isFS:
		return &struct {
			*countingStore
			countingFileStore
		}{w, f}
	case isRA:
		return &struct {
			*countingStore
			countingReaderAtStore
		}{w, r}
	case isCL:
		return &struct {
			*countingStore
			ConnectionLimited
		}{w, cl}
	}
	return w
}

// Unwrap returns the store a wrapper such as Count's wraps (repeatedly),
// or s itself: for type switches on a backend's own methods (S3's
// CleanupIncomplete, the local store's CleanupStaging).
func Unwrap(s Store) Store {
	for {
		u, ok := s.(interface{ Unwrap() Store })
		if !ok {
			return s
		}
		s = u.Unwrap()
	}
}

type countingStore struct {
	s Store
	c *Counter
}

func (w *countingStore) Unwrap() Store { return w.s }

func (w *countingStore) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	w.c.add(KindPut)
	return w.s.Put(ctx, name, &countingReader{r: r, n: &w.c.up}, size)
}

func (w *countingStore) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	w.c.add(KindGet)
	rc, err := w.s.Get(ctx, name, offset, length)
	if err != nil {
		return nil, err
	}
	return &countingBody{rc: rc, n: &w.c.down}, nil
}

func (w *countingStore) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	w.c.add(KindStat)
	return w.s.Stat(ctx, name)
}

func (w *countingStore) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	w.c.add(KindList)
	return w.s.List(ctx, prefix, fn)
}

func (w *countingStore) Delete(ctx context.Context, name string) error {
	w.c.add(KindDelete)
	return w.s.Delete(ctx, name)
}

func (w *countingStore) Location() string { return w.s.Location() }

func (w *countingStore) Close() error { return w.s.Close() }

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}

type countingFileStore struct {
	fs FileStore
	c  *Counter
}

func (f countingFileStore) StagingDir() string { return f.fs.StagingDir() }

func (f countingFileStore) PutFile(ctx context.Context, name string, file *os.File, size int64) error {
	f.c.add(KindPut)
	err := f.fs.PutFile(ctx, name, file, size)
	if err == nil {
		f.c.up.Add(size)
	}
	return err
}

type countingReaderAtStore struct {
	ra ReaderAtStore
	c  *Counter
}

func (r countingReaderAtStore) OpenReaderAt(ctx context.Context, name string) (ReaderAtCloser, error) {
	r.c.add(KindGet)
	rac, err := r.ra.OpenReaderAt(ctx, name)
	if err != nil {
		return nil, err
	}
	return &countingReaderAt{rac: rac, n: &r.c.down}, nil
}

type countingReaderAt struct {
	rac ReaderAtCloser
	n   *atomic.Int64
}

func (r *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.rac.ReadAt(p, off)
	r.n.Add(int64(n))
	return n, err
}

func (r *countingReaderAt) Close() error { return r.rac.Close() }
