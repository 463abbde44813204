package testservers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// ToxiproxyVersion is the toxiproxy scripts/test.sh installs
// (go install github.com/Shopify/toxiproxy/v2/cmd/server@…, copied to
// toxiproxy-server).
const ToxiproxyVersion = "v2.12.0"

// Toxiproxy is a running toxiproxy server with one proxy, listening on
// 127.0.0.1, in front of an upstream address. Toxics (latency, bandwidth,
// timeout, reset_peer, limit_data, slicer) apply per connection, to new and
// open connections alike.
type Toxiproxy struct {
	t    testing.TB
	api  string // http://127.0.0.1:PORT
	addr string // the proxy's listen address
	name string
}

var (
	toxiOnce sync.Once
	toxiBin  string
)

// toxiproxyBinary finds toxiproxy-server in PATH or $(go env GOPATH)/bin.
func toxiproxyBinary() string {
	toxiOnce.Do(func() { toxiBin = goBinary("toxiproxy-server") })
	return toxiBin
}

// StartToxiproxy starts a toxiproxy server and a proxy to upstream
// (host:port). It is stopped when the test ends. Without the binary the
// test is skipped, or fails when WABACKUP_REQUIRE_SERVERS=1.
func StartToxiproxy(t testing.TB, upstream string) *Toxiproxy {
	t.Helper()
	bin := toxiproxyBinary()
	if bin == "" {
		msg := "toxiproxy-server not installed: run scripts/test.sh"
		if os.Getenv(RequireServersEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	apiAddr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	listen, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(apiAddr, ":")
	p, err := startProcess(t, bin, []string{"-host", host, "-port", port}, &Server{})
	if err != nil {
		t.Fatal(err)
	}
	x := &Toxiproxy{t: t, api: "http://" + apiAddr, addr: listen, name: "store"}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(x.api + "/version")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			t.Fatalf("toxiproxy did not answer on %s: %v\n%s", apiAddr, err, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	x.call(http.MethodPost, "/proxies", map[string]any{"name": x.name, "listen": listen, "upstream": upstream, "enabled": true})
	return x
}

// Addr is the proxy's address (host:port) for clients.
func (x *Toxiproxy) Addr() string { return x.addr }

// Toxic adds a toxic named name of kind typ ("latency", "bandwidth",
// "timeout", "reset_peer", "limit_data", "slicer") on stream ("upstream":
// client to server, "downstream": server to client), applied to a
// fraction toxicity of the connections, with attributes attrs.
func (x *Toxiproxy) Toxic(name, typ, stream string, toxicity float64, attrs map[string]any) {
	x.t.Helper()
	x.call(http.MethodPost, "/proxies/"+x.name+"/toxics", map[string]any{
		"name": name, "type": typ, "stream": stream, "toxicity": toxicity, "attributes": attrs})
}

// Clear removes every toxic.
func (x *Toxiproxy) Clear() {
	x.t.Helper()
	var toxics []struct{ Name string }
	x.get("/proxies/"+x.name+"/toxics", &toxics)
	for _, tx := range toxics {
		x.call(http.MethodDelete, "/proxies/"+x.name+"/toxics/"+tx.Name, nil)
	}
}

func (x *Toxiproxy) get(path string, out any) {
	x.t.Helper()
	resp, err := http.Get(x.api + path)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		x.t.Fatalf("toxiproxy GET %s: %v", path, err)
	}
}

func (x *Toxiproxy) call(method, path string, body any) {
	x.t.Helper()
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, x.api+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var msg bytes.Buffer
		msg.ReadFrom(resp.Body)
		x.t.Fatalf("toxiproxy %s %s: %d %s", method, path, resp.StatusCode, msg.String())
	}
}

func (x *Toxiproxy) String() string { return fmt.Sprintf("toxiproxy %s → %s", x.addr, x.api) }
