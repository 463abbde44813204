package testservers

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy between a client and a server that injects faults
// on command: connection resets after a number of bytes, a network stall,
// "503 SlowDown" answers to HTTP requests, answers lost after the server
// acted, and a server that is gone. It
// forwards bytes unchanged otherwise (TLS included, except that SlowDown
// needs plain HTTP to see requests).
//
// Knobs apply to connections already open as well as to new ones, so a
// client's pooled keep-alive connections are not exempt.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu         sync.Mutex
	conns      map[*proxyConn]struct{}
	closed     bool
	down       bool
	gen        uint64 // bumped by ResetAfterBytes: restarts per-conn counts
	resetAfter int64
	resetsLeft int
	failMatch  string
	fails      int
	failStatus int
	failCode   string
	dropMatch  string
	drops      int
	stallUntil time.Time
	stats      ProxyStats
	wg         sync.WaitGroup
}

// ProxyStats counts what a Proxy has done.
type ProxyStats struct {
	Conns   int // connections accepted
	Resets  int // connections reset by ResetAfterBytes
	Failed  int // requests answered by SlowDown or FailRequests
	Refused int // connections reset because the proxy was Down
	Dropped int // responses dropped by DropResponse
}

// FaultProxy starts a proxy on a free loopback port that forwards to
// target (host:port). It stops when the test ends.
func FaultProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy: %v", err)
	}
	p := &Proxy{t: t, ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port, to give the client instead of target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// ResetAfterBytes arms resets: counting bytes forwarded (both directions)
// from now on, each connection that reaches n bytes is reset (TCP RST to
// both ends), until k connections have been reset.
func (p *Proxy) ResetAfterBytes(n int64, k int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.resetAfter, p.resetsLeft = n, k
}

// Stall freezes all forwarding, in both directions and on every
// connection, for d from now: the network goes silent without closing
// anything.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallUntil = time.Now().Add(d)
}

// SlowDown makes the proxy answer the next k HTTP requests itself with
// "503 SlowDown" in S3's XML error format instead of forwarding them. The
// request body is read and discarded first; the connection is closed after
// the answer.
func (p *Proxy) SlowDown(k int) { p.FailRequests("", k, 503, "SlowDown") }

// FailRequests is SlowDown for any answer: the next k requests whose
// request line contains match (all requests if match is "") get an S3
// error with this HTTP status and error code, from the proxy.
func (p *Proxy) FailRequests(match string, k, status int, code string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failMatch, p.fails, p.failStatus, p.failCode = match, k, status, code
}

// DropResponse makes the next k HTTP requests whose request line (e.g.
// "POST /bucket/key?uploadId=… HTTP/1.1") contains match reach the server
// in full, and then resets the connection instead of passing on the
// answer: the server has acted, the client cannot know it.
func (p *Proxy) DropResponse(match string, k int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropMatch, p.drops = match, k
}

func (p *Proxy) takeDrop(head []byte) bool {
	line, _, _ := bytes.Cut(head, []byte("\n"))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drops <= 0 || !bytes.Contains(line, []byte(p.dropMatch)) {
		return false
	}
	p.drops--
	p.stats.Dropped++
	return true
}

// Down makes the server unreachable: open connections are reset and new
// ones are accepted and reset at once, until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	p.down = true
	conns := p.snapshot()
	p.mu.Unlock()
	for _, c := range conns {
		c.reset()
	}
}

// Up ends Down.
func (p *Proxy) Up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// Stats reports what the proxy has done so far.
func (p *Proxy) Stats() ProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Close stops the proxy and resets every open connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := p.snapshot()
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.reset()
	}
	p.wg.Wait()
}

func (p *Proxy) snapshot() []*proxyConn {
	var out []*proxyConn
	for c := range p.conns {
		out = append(out, c)
	}
	return out
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.stats.Conns++
		if p.down || p.closed {
			p.stats.Refused++
			p.mu.Unlock()
			rst(cc)
			continue
		}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(cc)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		rst(client)
		return
	}
	c := &proxyConn{p: p, client: client, server: server}
	p.mu.Lock()
	if p.closed || p.down {
		p.mu.Unlock()
		c.reset()
		return
	}
	p.conns[c] = struct{}{}
	c.gen = p.gen
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()

	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && c.dropResponse.Load() {
				c.reset()
				break
			}
			if n > 0 {
				if werr := c.forward(client, buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		c.close()
	}()
	c.requests()
	c.close()
	<-done
}

// proxyConn is one client connection and its server connection.
type proxyConn struct {
	p              *Proxy
	client, server net.Conn
	gen            uint64 // guarded by p.mu
	count          int64  // bytes since gen changed, guarded by p.mu
	closeOnce      sync.Once
	dropResponse   atomic.Bool // reset instead of relaying the next answer
}

// requests forwards the client's HTTP requests one by one, so that each
// request head can be answered with SlowDown. A body with an unknown
// length (chunked) or anything that is not HTTP is passed through raw.
func (c *proxyConn) requests() {
	br := bufio.NewReaderSize(c.client, 64<<10)
	if b, err := br.Peek(1); err == nil && b[0] == 0x16 {
		c.raw(br) // a TLS handshake: requests are not visible
		return
	}
	for {
		head, err := readHead(br)
		if err != nil {
			if len(head) > 0 && !errors.Is(err, io.EOF) {
				// Not HTTP as we know it: forward what we have and the rest raw.
				if c.forward(c.server, head) == nil {
					c.raw(br)
				}
			}
			return
		}
		length, known := bodyLength(head)
		// A request picked for DropResponse is forwarded, whatever
		// FailRequests says.
		if c.p.takeDrop(head) {
			c.dropResponse.Store(true)
		} else if answer := c.p.takeFail(head); answer != nil {
			if known {
				_, _ = io.CopyN(io.Discard, br, length)
			}
			_, _ = c.client.Write(answer)
			return // close both ends: the client must not reuse this conn
		}
		if err := c.forward(c.server, head); err != nil {
			return
		}
		if !known {
			c.raw(br)
			return
		}
		buf := make([]byte, 32<<10)
		for length > 0 {
			n, err := br.Read(buf[:min(int64(len(buf)), length)])
			if n > 0 {
				if werr := c.forward(c.server, buf[:n]); werr != nil {
					return
				}
				length -= int64(n)
			}
			if err != nil {
				return
			}
		}
	}
}

func (c *proxyConn) raw(r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := c.forward(c.server, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// takeFail returns the canned answer for this request, if it is to fail.
func (p *Proxy) takeFail(head []byte) []byte {
	line, _, _ := bytes.Cut(head, []byte("\n"))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fails <= 0 || !bytes.Contains(line, []byte(p.failMatch)) {
		return nil
	}
	p.fails--
	p.stats.Failed++
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>Injected by the fault proxy.</Message><RequestId>faultproxy</RequestId></Error>`, p.failCode)
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nConnection: close\r\n"+
		"Content-Length: %d\r\n\r\n%s", p.failStatus, http.StatusText(p.failStatus), len(body), body)
}

// forward writes b to dst, honouring Stall and ResetAfterBytes.
func (c *proxyConn) forward(dst net.Conn, b []byte) error {
	for len(b) > 0 {
		if err := c.waitStall(); err != nil {
			return err
		}
		n, reset := c.account(int64(len(b)))
		if n > 0 {
			if _, err := dst.Write(b[:n]); err != nil {
				return err
			}
			b = b[n:]
		}
		if reset {
			c.reset()
			return errReset
		}
	}
	return nil
}

var errReset = errors.New("connection reset by fault proxy")

// account reserves up to want bytes of forwarding; it returns how many may
// be written and whether the connection must be reset after them.
func (c *proxyConn) account(want int64) (int64, bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.gen != p.gen {
		c.gen, c.count = p.gen, 0
	}
	if p.resetsLeft <= 0 {
		c.count += want
		return want, false
	}
	left := p.resetAfter - c.count
	if left > want {
		c.count += want
		return want, false
	}
	if left < 0 {
		left = 0
	}
	p.resetsLeft--
	p.stats.Resets++
	c.count += left
	return left, true
}

func (c *proxyConn) waitStall() error {
	for {
		c.p.mu.Lock()
		d := time.Until(c.p.stallUntil)
		closed := c.p.closed
		c.p.mu.Unlock()
		if closed {
			return net.ErrClosed
		}
		if d <= 0 {
			return nil
		}
		time.Sleep(min(d, 20*time.Millisecond))
	}
}

func (c *proxyConn) close() {
	c.closeOnce.Do(func() {
		c.client.Close()
		c.server.Close()
	})
}

func (c *proxyConn) reset() {
	c.closeOnce.Do(func() {
		rst(c.client)
		rst(c.server)
	})
}

// rst closes a TCP connection with a reset instead of an orderly FIN.
func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// readHead reads an HTTP message head up to and including the blank line.
func readHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) && len(head) < 1<<20 {
				continue
			}
			return head, err
		}
		if len(head) > 1<<20 {
			return head, errors.New("request head too large")
		}
		if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			if len(head) == len(line) {
				head = head[:0] // stray blank line between requests
				continue
			}
			return head, nil
		}
	}
}

// bodyLength returns the request body's length from its head; known is
// false for chunked bodies.
func bodyLength(head []byte) (n int64, known bool) {
	lines := strings.Split(string(head), "\n")
	n = 0
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimRight(l, "\r"), ":")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "transfer-encoding":
			if !strings.EqualFold(strings.TrimSpace(v), "identity") {
				return 0, false
			}
		case "content-length":
			x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || x < 0 {
				return 0, false
			}
			n = x
		}
	}
	return n, true
}

// String describes the proxy for test logs.
func (p *Proxy) String() string {
	s := p.Stats()
	return fmt.Sprintf("fault proxy %s→%s (%d conns, %d resets, %d failed requests, %d dropped answers, %d refused)",
		p.Addr(), p.target, s.Conns, s.Resets, s.Failed, s.Dropped, s.Refused)
}
