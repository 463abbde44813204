//go:build unix

package testservers

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
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

// VersityGWVersion is the versitygw release the tests are written against.
const VersityGWVersion = "v1.8.0"

// RequireServersEnv, set to 1, turns a missing server binary from a skip
// into a test failure (CI sets it so that tests cannot silently vanish).
const RequireServersEnv = "WABACKUP_REQUIRE_SERVERS"

// VersityGWOptions varies the gateway StartVersityGW runs.
type VersityGWOptions struct {
	// TLS serves HTTPS with a fresh self-signed certificate for 127.0.0.1
	// and localhost; Server.CACertFile holds it.
	TLS bool
	// Region is the gateway's region (versitygw's default is us-east-1).
	Region string
}

// Server is a running versitygw gateway.
type Server struct {
	Endpoint   string // host:port on the loopback interface
	AccessKey  string // root user
	SecretKey  string
	Region     string
	Secure     bool   // HTTPS
	CACertFile string // PEM file with the certificate (TLS only)
	Root       string // the posix backend's directory: one subdirectory per bucket
	PID        int    // the gateway process (also its process group)
}

// VersityGW starts a versitygw S3 gateway with a fresh, empty root on a free
// loopback port and returns where it listens and its root credentials. The
// gateway is stopped when the test ends. If versitygw is not installed the
// test is skipped, or fails when WABACKUP_REQUIRE_SERVERS=1.
func VersityGW(t testing.TB) (endpoint, accessKey, secretKey string) {
	t.Helper()
	s := StartVersityGW(t, VersityGWOptions{})
	return s.Endpoint, s.AccessKey, s.SecretKey
}

var (
	findOnce sync.Once
	foundBin string
)

// versityGWBinary finds versitygw in PATH or in $(go env GOPATH)/bin.
func versityGWBinary() string {
	findOnce.Do(func() { foundBin = goBinary("versitygw") })
	return foundBin
}

// goBinary finds a program that go install put in place: in PATH, or in
// $(go env GOPATH)/bin; "" if neither has it.
func goBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var gopaths []string
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		gopaths = filepath.SplitList(strings.TrimSpace(string(out)))
	} else if gp := os.Getenv("GOPATH"); gp != "" {
		gopaths = filepath.SplitList(gp)
	} else if home, err := os.UserHomeDir(); err == nil {
		gopaths = []string{filepath.Join(home, "go")}
	}
	for _, gp := range gopaths {
		p := filepath.Join(gp, "bin", name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// StartVersityGW is VersityGW with options and the full description of the
// running server.
func StartVersityGW(t testing.TB, opt VersityGWOptions) *Server {
	t.Helper()
	bin := versityGWBinary()
	if bin == "" {
		msg := "versitygw not installed: run scripts/test.sh or go install github.com/versity/versitygw/cmd/versitygw@" + VersityGWVersion
		if os.Getenv(RequireServersEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{
		AccessKey: "wabackup" + randHex(6),
		SecretKey: randHex(20),
		Region:    opt.Region,
		Secure:    opt.TLS,
		Root:      t.TempDir(),
	}
	if s.Region == "" {
		s.Region = "us-east-1"
	}
	args := []string{"--quiet", "--keep-alive", "--region", s.Region}
	var roots *x509.CertPool
	if opt.TLS {
		dir := t.TempDir()
		certFile, keyFile, pool, err := selfSignedCert(dir)
		if err != nil {
			t.Fatalf("versitygw: making a TLS certificate: %v", err)
		}
		s.CACertFile, roots = certFile, pool
		args = append(args, "--cert", certFile, "--key", keyFile)
	}
	backend := []string{"posix"}
	if !hasXattrs(s.Root) {
		backend = append(backend, "--sidecar", t.TempDir())
	}
	backend = append(backend, s.Root)

	var lastOut string
	for attempt := 0; attempt < 5; attempt++ {
		addr, err := freePort()
		if err != nil {
			t.Fatalf("versitygw: finding a free port: %v", err)
		}
		p, err := startProcess(t, bin, append(append([]string{"--port", addr}, args...), backend...), s)
		if err != nil {
			t.Fatalf("versitygw: %v", err)
		}
		err = p.waitReady(addr, opt.TLS, roots, 20*time.Second)
		if err == nil {
			s.Endpoint, s.PID = addr, p.cmd.Process.Pid
			return s
		}
		lastOut = p.out.String()
		p.stop()
		if !errors.Is(err, errExited) || !strings.Contains(lastOut, "address already in use") {
			t.Fatalf("versitygw did not start: %v\n%s", err, lastOut)
		}
		// Another process took the port between our probe and the bind.
	}
	t.Fatalf("versitygw: could not bind a free port:\n%s", lastOut)
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

type process struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	once   sync.Once
}

var errExited = errors.New("server exited")

func startProcess(t testing.TB, bin string, args []string, s *Server) (*process, error) {
	cmd := exec.Command(bin, args...)
	var env []string
	for _, kv := range os.Environ() {
		// Keep the caller's versitygw configuration out of the test server.
		if strings.HasPrefix(kv, "VGW_") || strings.HasPrefix(kv, "ROOT_") {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() && out.Len() > 0 {
			t.Logf("versitygw output:\n%s", out.String())
		}
	})
	return p, nil
}

// stop sends SIGTERM to the server's process group, waits up to 10 s for
// it to exit and then kills the group.
func (p *process) stop() {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		select {
		case <-p.exited:
			_ = syscall.Kill(-pgid, syscall.SIGKILL) // stragglers, if any
			return
		default:
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.exited
		}
	})
}

// waitReady polls until the server answers HTTP(S) on addr.
func (p *process) waitReady(addr string, secure bool, roots *x509.CertPool, limit time.Duration) error {
	scheme := "http"
	tr := &http.Transport{DisableKeepAlives: true}
	if secure {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.Now().Add(limit)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("%w before answering", errExited)
		default:
		}
		resp, err := client.Get(scheme + "://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 without credentials) will do
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s after %v: %v", addr, limit, lastErr)
}

// selfSignedCert writes a self-signed certificate for the loopback
// addresses (acting as its own CA) and its key into dir.
func selfSignedCert(dir string) (certFile, keyFile string, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wabackup test server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool, nil
}

// syncBuffer collects a server's output, keeping the last 64 KiB.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.buf.Len() > 64<<10 {
		b.buf.Next(b.buf.Len() - 64<<10)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}
