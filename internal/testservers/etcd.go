//go:build unix

package testservers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
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
	// With EtcdOptions.TLS: the CA that signed the members' and the
	// client's certificates, and the client certificate and key that the
	// members require (--client-cert-auth).
	CAFile, CertFile, KeyFile string

	t       testing.TB
	tls     *tls.Config
	bin     string
	token   string
	initial string
	members []*etcdMember

	serverCert, serverKey string
}

type etcdMember struct {
	name, dir    string
	client, peer string // host:port
	metrics      string
	mu           sync.Mutex
	proc         *process
}

// EtcdOptions varies the cluster StartEtcd runs.
type EtcdOptions struct {
	// TLS serves clients over HTTPS and requires a client certificate
	// signed by a fresh CA (EtcdCluster.CAFile/CertFile/KeyFile).
	TLS bool
}

// Etcd starts an n-member etcd cluster (Debian's etcd-server) on loopback
// and waits until every member reports healthy. The members are killed
// when the test ends. If etcd is not installed the test is skipped, or
// fails when WABACKUP_REQUIRE_SERVERS=1.
func Etcd(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	return StartEtcd(t, n, EtcdOptions{})
}

// StartEtcd is Etcd with options.
func StartEtcd(t testing.TB, n int, opt EtcdOptions) *EtcdCluster {
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
	if opt.TLS {
		if c.tls, err = c.makePKI(t.TempDir()); err != nil {
			t.Fatalf("etcd: making certificates: %v", err)
		}
	}
	t.Cleanup(func() {
		for i := range c.members {
			c.Kill(i)
		}
	})
	for attempt := 1; ; attempt++ {
		c.members = nil
		var peers []string
		dir := filepath.Join(root, fmt.Sprint(attempt))
		for i := range n {
			m := &etcdMember{name: fmt.Sprintf("e%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("e%d", i+1))}
			for _, p := range []*string{&m.client, &m.peer, &m.metrics} {
				if *p, err = etcdPort(); err != nil {
					t.Fatal(err)
				}
			}
			peers = append(peers, m.name+"=http://"+m.peer)
			c.members = append(c.members, m)
		}
		c.initial = strings.Join(peers, ",")
		for i := range c.members {
			c.start(i, "new")
		}
		err := c.waitHealthy(30 * time.Second)
		if err == nil {
			return c
		}
		for i := range c.members {
			c.Kill(i)
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		// Another process took a port between our probe and etcd's bind.
	}
}

var (
	etcdPortsMu sync.Mutex
	etcdPorts   = map[int]bool{}
)

// etcdPort returns a free loopback address whose port lies below the
// kernel's ephemeral range (32768 and up on Linux), so that the outgoing
// connections of other tests cannot take it before etcd binds it, as they
// can with a port the kernel chose. A port is never handed out twice in
// one process: a killed member keeps its ports for its restart.
func etcdPort() (string, error) {
	etcdPortsMu.Lock()
	defer etcdPortsMu.Unlock()
	var lastErr error
	for range 200 {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		port := 20000 + (int(b[0])<<8|int(b[1]))%12000
		if etcdPorts[port] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			lastErr = err
			continue
		}
		l.Close()
		etcdPorts[port] = true
		return addr, nil
	}
	return "", fmt.Errorf("no free port for etcd: %v", lastErr)
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
	scheme, tlsArgs := "http://", []string(nil)
	if c.tls != nil {
		scheme = "https://"
		tlsArgs = []string{"--cert-file", c.serverCert, "--key-file", c.serverKey, "--trusted-ca-file", c.CAFile, "--client-cert-auth"}
	}
	cmd := exec.Command(c.bin, append([]string{
		"--name", m.name, "--data-dir", m.dir, "--logger=zap", "--log-level=error",
		"--listen-client-urls", scheme + m.client, "--advertise-client-urls", scheme + m.client,
		"--listen-peer-urls", "http://" + m.peer, "--initial-advertise-peer-urls", "http://" + m.peer,
		"--initial-cluster", c.initial, "--initial-cluster-token", c.token,
		"--initial-cluster-state", state, "--listen-metrics-urls", "http://" + m.metrics}, tlsArgs...)...)
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
	scheme := "http://"
	if c.tls != nil {
		scheme = "https://"
		tr := &http.Transport{TLSClientConfig: c.tls, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		client.Transport = tr
	}
	resp, err := client.Get(scheme + c.members[i].client + "/health")
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
	if err := c.waitHealthy(limit); err != nil {
		c.t.Fatal(err)
	}
}

func (c *EtcdCluster) waitHealthy(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for i, m := range c.members {
		for !c.Healthy(i) {
			m.mu.Lock()
			p := m.proc
			m.mu.Unlock()
			select {
			case <-p.exited:
				return fmt.Errorf("etcd member %s exited:\n%s", m.name, p.out.String())
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd member %s not healthy after %v:\n%s", m.name, limit, p.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// makePKI writes a CA, a server certificate for the loopback addresses and
// a client certificate into dir, and returns a client TLS configuration.
func (c *EtcdCluster) makePKI(dir string) (*tls.Config, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wabackup test etcd CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			DNSNames:     []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", err
		}
		certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			return "", "", err
		}
		return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	}
	c.CAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(c.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return nil, err
	}
	if c.serverCert, c.serverKey, err = issue("server", 2, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	if c.CertFile, c.KeyFile, err = issue("client", 3, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
