//go:build unix

package testservers

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestVersityGW(t *testing.T) {
	var pid int
	t.Run("run", func(t *testing.T) {
		srv := StartVersityGW(t, VersityGWOptions{})
		pid = srv.PID
		resp, err := http.Get("http://" + srv.Endpoint + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("anonymous GET / = %s, want 403", resp.Status)
		}
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("server process: %v", err)
		}
	})
	// The cleanup of the subtest has stopped the gateway.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("versitygw (pid %d) still there after its test ended: %v", pid, err)
	}
}

func TestVersityGWTLS(t *testing.T) {
	srv := StartVersityGW(t, VersityGWOptions{TLS: true, Region: "eu-central-1"})
	if !srv.Secure || srv.CACertFile == "" || srv.Region != "eu-central-1" {
		t.Fatalf("server %+v", srv)
	}
	if _, err := http.Get("https://" + srv.Endpoint + "/"); err == nil {
		t.Fatal("self-signed certificate trusted by default")
	}
}

// echo is an HTTP server that counts requests and returns the body's length.
func echo(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Write([]byte(strings.Repeat("x", len(b))))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestFaultProxy(t *testing.T) {
	srv, hits := echo(t)
	p := FaultProxy(t, strings.TrimPrefix(srv.URL, "http://"))
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	url := "http://" + p.Addr() + "/bucket/key"
	do := func(body []byte) (int, int, error) {
		resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, len(b), err
	}
	body := bytes.Repeat([]byte("a"), 1<<20)

	if code, n, err := do(body); err != nil || code != 200 || n != len(body) {
		t.Fatalf("plain request: %d, %d, %v", code, n, err)
	}

	p.SlowDown(2)
	for i := range 2 {
		resp, err := client.Post(url, "", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("SlowDown %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !bytes.Contains(b, []byte("<Code>SlowDown</Code>")) {
			t.Fatalf("SlowDown %d: %s %s", i, resp.Status, b)
		}
	}
	before := hits.Load()
	if code, _, err := do(body); err != nil || code != 200 || hits.Load() != before+1 {
		t.Fatalf("after SlowDown: %d, %v", code, err)
	}

	p.ResetAfterBytes(100<<10, 1) // applies to the pooled connection too
	if _, _, err := do(body); err == nil {
		t.Fatal("request survived ResetAfterBytes")
	}
	if code, _, err := do(body); err != nil || code != 200 {
		t.Fatalf("after the reset: %d, %v", code, err)
	}

	p.Stall(300 * time.Millisecond)
	start := time.Now()
	if code, _, err := do(nil); err != nil || code != 200 {
		t.Fatalf("stalled request: %d, %v", code, err)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("stalled request took only %v", took)
	}

	before = hits.Load()
	p.DropResponse("POST /bucket/key", 1)
	if _, _, err := do([]byte("x")); err == nil {
		t.Fatal("dropped answer arrived")
	}
	if hits.Load() != before+1 {
		t.Fatal("request with a dropped answer did not reach the server")
	}

	p.Down()
	if _, _, err := do(nil); err == nil {
		t.Fatal("request went through a Down proxy")
	}
	p.Up()
	if code, _, err := do(nil); err != nil || code != 200 {
		t.Fatalf("after Up: %d, %v", code, err)
	}
	s := p.Stats()
	if s.Failed != 2 || s.Resets != 1 || s.Dropped != 1 || s.Refused < 1 {
		t.Errorf("stats %+v", s)
	}
	t.Log(p)
}
