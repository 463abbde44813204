// Package vaulttest helps tests run the key vault for real: a private
// SoftHSM2 token, and the wabackup-vault binary built and started on a
// free port with a development certificate. Everything is bound to the
// calling test and removed by its cleanup.
package vaulttest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// SoftHSMModule is Debian's SoftHSM2 PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// HSM is a private SoftHSM2 token.
type HSM struct {
	Conf   string // value for SOFTHSM2_CONF
	Module string
	Token  string
	PIN    string
}

// Env returns the environment entries a process needs to use the token.
func (h *HSM) Env() []string { return []string{"SOFTHSM2_CONF=" + h.Conf} }

// requireServers says whether a missing server fails instead of skipping.
func requireServers() bool { return os.Getenv("WABACKUP_REQUIRE_SERVERS") == "1" }

// SoftHSM initialises a fresh token in a temporary directory, and sets
// SOFTHSM2_CONF for the test. It skips (or fails with
// WABACKUP_REQUIRE_SERVERS=1) if SoftHSM2 is not installed.
func SoftHSM(t testing.TB) *HSM {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err == nil {
		_, err = os.Stat(SoftHSMModule)
	}
	if err != nil {
		if requireServers() {
			t.Fatalf("SoftHSM2 is required: %v", err)
		}
		t.Skipf("SoftHSM2 not installed: %v", err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &HSM{Conf: conf, Module: SoftHSMModule, Token: "wabackup-test-" + randHex(4), PIN: randHex(8)}
	cmd := exec.Command(util, "--init-token", "--free", "--label", h.Token, "--so-pin", randHex(8), "--pin", h.PIN)
	cmd.Env = append(os.Environ(), h.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	return h
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// Binary builds cmd/wabackup-vault once per test process. The binary goes
// to one fixed place per checkout under the temporary directory (built
// aside and renamed in, so concurrent test processes do not collide), so
// test runs do not leave a binary each behind.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = fmt.Errorf("go list -m: %v", err)
			return
		}
		sum := sha256.Sum256(bytes.TrimSpace(root))
		dir := filepath.Join(os.TempDir(), "wabackup-vault-test-"+hex.EncodeToString(sum[:6]))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			buildErr = err
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf("build-%d", os.Getpid()))
		out, err := exec.Command("go", "build", "-o", tmp, "github.com/wabackup/wabackup/cmd/wabackup-vault").CombinedOutput()
		if err != nil {
			os.Remove(tmp)
			buildErr = fmt.Errorf("go build wabackup-vault: %v\n%s", err, out)
			return
		}
		buildBin = filepath.Join(dir, "wabackup-vault")
		buildErr = os.Rename(tmp, buildBin)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// Vault is a running wabackup-vault process.
type Vault struct {
	URL    string
	CACert string // the development certificate to trust
	Dir    string
	cmd    *exec.Cmd
	out    *lines
	exited chan struct{}
	once   sync.Once
}

// Options for Start.
type Options struct {
	Dir  string   // data directory (default: a temporary one)
	HSM  *HSM     // nil: the development file sealer
	Args []string // extra flags
	Env  []string // extra environment
}

// Start runs the vault and waits until it listens.
func Start(t testing.TB, opt Options) *Vault {
	t.Helper()
	bin := Binary(t)
	if opt.Dir == "" {
		opt.Dir = t.TempDir()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args := []string{"--listen", addr, "--data", opt.Dir, "--dev-tls", filepath.Join(opt.Dir, "tls"), "--rate", "0"}
	env := os.Environ()
	if opt.HSM != nil {
		args = append(args, "--pkcs11-module", opt.HSM.Module, "--pkcs11-token", opt.HSM.Token)
		env = append(env, opt.HSM.Env()...)
		env = append(env, "WABACKUP_VAULT_PKCS11_PIN="+opt.HSM.PIN)
	} else {
		args = append(args, "--dev-file-sealer")
	}
	args = append(args, opt.Args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(env, opt.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	v := &Vault{URL: "https://" + addr, CACert: filepath.Join(opt.Dir, "tls", "cert.pem"), Dir: opt.Dir, cmd: cmd, out: newLines(), exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			v.out.add(sc.Text())
		}
		_ = cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		v.Stop()
		if t.Failed() {
			t.Logf("wabackup-vault output:\n%s", v.out.String())
		}
	})
	if err := v.WaitFor("listening on", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return v
}

// WaitFor waits until the vault's log has a line containing s.
func (v *Vault) WaitFor(s string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		if v.out.contains(s) {
			return nil
		}
		select {
		case <-v.exited:
			if v.out.contains(s) {
				return nil
			}
			return fmt.Errorf("wabackup-vault exited before logging %q:\n%s", s, v.out.String())
		case <-ctx.Done():
			return fmt.Errorf("wabackup-vault did not log %q in %s:\n%s", s, limit, v.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Output returns what the vault logged.
func (v *Vault) Output() string { return v.out.String() }

// Kill sends SIGKILL and waits for the process to be gone.
func (v *Vault) Kill() {
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	<-v.exited
}

// Stop ends the vault with SIGTERM (SIGKILL after 10 s).
func (v *Vault) Stop() {
	v.once.Do(func() {
		select {
		case <-v.exited:
			return
		default:
		}
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-v.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
			<-v.exited
		}
	})
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func newLines() *lines { return &lines{} }

func (l *lines) add(s string) {
	l.mu.Lock()
	l.l = append(l.l, s)
	l.mu.Unlock()
}

func (l *lines) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.l {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.l, "\n")
}
