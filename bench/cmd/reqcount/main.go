// Command reqcount is a request-counting HTTP reverse proxy for the
// benchmarks (bench/wan.sh): it stands between a client (or toxiproxy) and
// an S3 server or the Google Drive emulator, forwards every request
// unchanged (the Host header included, so S3 signatures and the emulator's
// upload URLs stay valid), and counts requests by kind, body bytes each way
// and client connections. Both tools of a comparison go through the same
// counter, so their counts are comparable whatever each tool reports of
// itself.
//
//	reqcount --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT2 [--api s3|drive] [--trace FILE]
//
// Its own endpoints (no S3 bucket or Drive path starts with "_reqcount"):
//
//	GET  /_reqcount        the counts since the last reset, as JSON
//	POST /_reqcount/reset  set them to zero (and start a new trace section)
//	POST /_reqcount/mark?name=NAME   write "# NAME" into the trace
//
// A request is counted when it arrives, its bytes and status when its
// answer ends (unless a reset came in between: they are then nobody's). The counts: "list", "get" (object or file content, ranged or whole),
// "head" (object or file metadata), "put" (uploads, multipart parts and
// their initiation and completion, folder creation, metadata updates),
// "delete", "auth" (OAuth token requests), "other", "total",
// "bytes_up" (request bodies), "bytes_down" (response bodies),
// "connections" (client TCP connections accepted) and "errors" (answers
// with a status of 400 or more, a 404 or 416 included). Behind toxiproxy,
// "bytes_down" is what the server sent: toxiproxy buffers, so the tail of
// an open-ended range ("bytes=N-") that the client stops reading counts in
// full though it never crossed the shaped link.
//
// With --trace every request is a line: seconds since the reset, kind,
// method, path, Range header, status, body bytes up and down, and the time
// until the answer's last byte in milliseconds.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// kinds in the order they are reported.
var kinds = []string{"list", "get", "head", "put", "delete", "auth", "other"}

type counter struct {
	mu        sync.Mutex
	n         map[string]int64
	up, down  int64
	conns     int64
	errors    int64
	gen       int64 // which reset period requests belong to
	start     time.Time
	trace     *os.File
	traceLock sync.Mutex
}

func newCounter() *counter {
	return &counter{n: map[string]int64{}, start: time.Now()}
}

func (c *counter) reset() {
	c.mu.Lock()
	c.n = map[string]int64{}
	c.up, c.down, c.conns, c.errors = 0, 0, 0, 0
	c.gen++
	c.start = time.Now()
	c.mu.Unlock()
}

func (c *counter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int64{}
	var total int64
	for _, k := range kinds {
		out[k] = c.n[k]
		total += c.n[k]
	}
	out["total"] = total
	out["bytes_up"] = c.up
	out["bytes_down"] = c.down
	out["connections"] = c.conns
	out["errors"] = c.errors
	return out
}

func (c *counter) tracef(format string, args ...any) {
	if c.trace == nil {
		return
	}
	c.traceLock.Lock()
	fmt.Fprintf(c.trace, format, args...)
	c.traceLock.Unlock()
}

// classify names the kind of one request to an S3 server (path-style
// addressing, as both tools use against a host:port endpoint) or to the
// Drive v3 API.
func classify(api string, r *http.Request) string {
	q := r.URL.Query()
	p := strings.Trim(r.URL.Path, "/")
	if api == "drive" {
		switch {
		case p == "token" || p == "auth" || p == "revoke":
			return "auth"
		case r.Method == http.MethodDelete:
			return "delete"
		case strings.HasPrefix(p, "upload/"), r.Method == http.MethodPost, r.Method == http.MethodPatch, r.Method == http.MethodPut:
			return "put"
		case r.Method == http.MethodGet && p == "drive/v3/files":
			return "list"
		case r.Method == http.MethodGet && strings.HasPrefix(p, "drive/v3/files/") && q.Get("alt") == "media":
			return "get"
		case r.Method == http.MethodGet && strings.HasPrefix(p, "drive/v3/"):
			return "head"
		}
		return "other"
	}
	objectKey := strings.Contains(p, "/") // "bucket/key" rather than "bucket"
	switch r.Method {
	case http.MethodGet:
		if !objectKey || q.Has("list-type") || q.Has("uploads") || q.Has("uploadId") {
			return "list"
		}
		return "get"
	case http.MethodHead:
		return "head"
	case http.MethodPut:
		return "put"
	case http.MethodPost:
		if q.Has("delete") {
			return "delete"
		}
		return "put"
	case http.MethodDelete:
		return "delete"
	}
	return "other"
}

type countingReader struct {
	r io.ReadCloser
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	atomic.AddInt64(c.n, int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback only, for the benchmarks)")
	upstream := flag.String("upstream", "", "the server to forward to, e.g. http://127.0.0.1:7070")
	api := flag.String("api", "s3", "how requests are classified: s3 or drive")
	tracePath := flag.String("trace", "", "append a line per request to this file")
	flag.Parse()
	if *upstream == "" || (*api != "s3" && *api != "drive") || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	target, err := url.Parse(*upstream)
	if err != nil || target.Host == "" {
		log.Fatalf("reqcount: bad --upstream %q", *upstream)
	}
	c := newCounter()
	if *tracePath != "" {
		if c.trace, err = os.OpenFile(*tracePath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			log.Fatalf("reqcount: %v", err)
		}
	}

	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // signatures and Location headers name the address the client used
		},
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		FlushInterval: -1,
		ErrorLog:      log.New(os.Stderr, "reqcount: ", 0),
	}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/_reqcount" || strings.HasPrefix(p, "/_reqcount/") {
			switch {
			case p == "/_reqcount" && r.Method == http.MethodGet:
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(c.snapshot())
			case p == "/_reqcount/reset" && r.Method == http.MethodPost:
				c.reset()
				c.tracef("# reset\n")
				w.WriteHeader(http.StatusNoContent)
			case p == "/_reqcount/mark" && r.Method == http.MethodPost:
				c.tracef("# %s\n", r.URL.Query().Get("name"))
				w.WriteHeader(http.StatusNoContent)
			default:
				http.Error(w, "unknown reqcount endpoint", http.StatusNotFound)
			}
			return
		}
		kind := classify(*api, r)
		t0 := time.Now()
		// Counted on arrival, so that a count read right after a client
		// exits includes the responses toxiproxy is still draining.
		c.mu.Lock()
		c.n[kind]++
		gen := c.gen
		c.mu.Unlock()
		var up int64
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingReader{r: r.Body, n: &up}
		}
		cw := &countingWriter{ResponseWriter: w}
		proxy.ServeHTTP(cw, r)
		c.mu.Lock()
		if gen == c.gen { // not an answer of a run before the last reset
			c.up += atomic.LoadInt64(&up)
			c.down += cw.n
			if cw.status >= 400 {
				c.errors++
			}
		}
		since := t0.Sub(c.start).Seconds()
		c.mu.Unlock()
		path := r.URL.Path
		if r.URL.RawQuery != "" {
			path += "?" + r.URL.RawQuery
		}
		if len(path) > 1000 {
			path = path[:1000] + "…"
		}
		rng := r.Header.Get("Range")
		if rng == "" {
			rng = "-"
		}
		c.tracef("%.3f %s %s %s %s %d %d %d %.1f\n", since, kind, r.Method, path, rng, cw.status, atomic.LoadInt64(&up), cw.n, float64(time.Since(t0).Microseconds())/1000)
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "reqcount: cannot listen on %s: %v\n", *listen, err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				c.mu.Lock()
				c.conns++
				c.mu.Unlock()
			}
		},
	}
	fmt.Printf("http://%s\n", ln.Addr())
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Fatalf("reqcount: %v", err)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	if c.trace != nil {
		_ = c.trace.Close()
	}
}
