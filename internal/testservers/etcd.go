//go:build unix

package testservers

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EtcdCluster is a running etcd cluster of members on loopback ports, each
// with its own data directory. Members can be killed and started again
// (with the same data directory) to test failures.
type EtcdCluster struct {
	t       testing.TB
	bin     string
	token   string
	initial string
	members []*etcdMember
}

type etcdMember struct {
	name, dir    string
	client, peer string // host:port
	metrics      string
	mu           sync.Mutex
	proc         *process
}

// Etcd starts an n-member etcd cluster (Debian's etcd-server) on loopback
// and waits until every member reports healthy. The members are killed
// when the test ends. If etcd is not installed the test is skipped, or
// fails when WABACKUP_REQUIRE_SERVERS=1.
func Etcd(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		msg := "etcd not installed: run scripts/test.sh or apt-get install etcd-server"
		if os.Getenv(RequireServersEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	c := &EtcdCluster{t: t, bin: bin, token: "wabackup-test-" + randHex(6)}
	root := t.TempDir()
	var peers []string
	for i := range n {
		m := &etcdMember{name: fmt.Sprintf("e%d", i+1), dir: filepath.Join(root, fmt.Sprintf("e%d", i+1))}
		for _, p := range []*string{&m.client, &m.peer, &m.metrics} {
			if *p, err = freePort(); err != nil {
				t.Fatal(err)
			}
		}
		peers = append(peers, m.name+"=http://"+m.peer)
		c.members = append(c.members, m)
	}
	c.initial = strings.Join(peers, ",")
	t.Cleanup(func() {
		for i := range c.members {
			c.Kill(i)
		}
	})
	for i := range c.members {
		c.start(i, "new")
	}
	c.WaitHealthy(30 * time.Second)
	return c
}

// Endpoints returns the members' client addresses (host:port).
func (c *EtcdCluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client)
	}
	return eps
}

// Endpoint returns member i's client address.
func (c *EtcdCluster) Endpoint(i int) string { return c.members[i].client }

func (c *EtcdCluster) start(i int, state string) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		select {
		case <-m.proc.exited:
		default:
			c.t.Fatalf("etcd member %s is running", m.name)
		}
	}
	cmd := exec.Command(c.bin,
		"--name", m.name, "--data-dir", m.dir, "--logger=zap", "--log-level=error",
		"--listen-client-urls", "http://"+m.client, "--advertise-client-urls", "http://"+m.client,
		"--listen-peer-urls", "http://"+m.peer, "--initial-advertise-peer-urls", "http://"+m.peer,
		"--initial-cluster", c.initial, "--initial-cluster-token", c.token,
		"--initial-cluster-state", state, "--listen-metrics-urls", "http://"+m.metrics)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD") { // keep the caller's etcd configuration out
			env = append(env, kv)
		}
	}
	cmd.Env = env
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("etcd: %v", err)
	}
	p := &process{cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	m.proc = p
	t := c.t
	t.Cleanup(func() {
		if t.Failed() && out.Len() > 0 {
			t.Logf("etcd %s output:\n%s", m.name, out.String())
		}
	})
}

// Kill kills member i (SIGKILL to its process group) and waits until it
// is gone. Killing a stopped member does nothing.
func (c *EtcdCluster) Kill(i int) {
	m := c.members[i]
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// Restart starts the killed member i again with its data directory, so it
// rejoins the cluster and catches up. It does not wait for it to be
// healthy.
func (c *EtcdCluster) Restart(i int) {
	c.t.Helper()
	c.start(i, "existing")
}

// Healthy reports whether member i answers /health with a leader.
func (c *EtcdCluster) Healthy(i int) bool {
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + c.members[i].client + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(string(b), `"health":"true"`)
}

// WaitHealthy waits until every running member is healthy.
func (c *EtcdCluster) WaitHealthy(limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for i, m := range c.members {
		for !c.Healthy(i) {
			m.mu.Lock()
			p := m.proc
			m.mu.Unlock()
			select {
			case <-p.exited:
				c.t.Fatalf("etcd member %s exited:\n%s", m.name, p.out.String())
			default:
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("etcd member %s not healthy after %v:\n%s", m.name, limit, p.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
