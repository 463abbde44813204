// Package vaultclient talks to a wabackup key vault (cmd/wabackup-vault):
// it escrows a repository's vault secret under a password with OPAQUE
// (RFC 9807), recovers it, changes the password, deletes it and asks how
// many attempts are left. It is pure Go (no cgo).
//
// The secret never reaches the vault in the clear: it is encrypted with
// AES-256-GCM under HKDF(export_key, "wabackup vault escrow v1") first.
// The vault's public key is pinned on first use, by fingerprint (SHA-256
// hex of its AKE public key), in a local file and, by the caller, in the
// repository's vault slot.
//
// A password change and a delete are authorised by the token of a login,
// which the vault seals under the login's OPAQUE session key; the client
// sends it, and the change's messages, only inside the realm channel (a
// Noise NK handshake to the pinned key, docs/VAULT.md), so a man in the
// middle with a certificate the client trusts never reads a token and
// cannot answer in the vault's name.
package vaultclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/wabackup/wabackup/internal/atomicfile"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// Options configure a Client.
type Options struct {
	// CACertFile is a PEM file of extra CA certificates to trust.
	CACertFile string
	// HTTPClient replaces the default client (CACertFile is then ignored).
	HTTPClient *http.Client
	// KSF is the key stretching function (default opaque.DefaultArgon2idKSF).
	KSF opaque.KSF
	// PinFile is the local pin store (default
	// $XDG_CONFIG_HOME/wabackup/vaults.json); "-" disables it.
	PinFile string
	// PinSource names where Pin comes from, for errors (default "the
	// repository's vault slot").
	PinSource string
	// Pin, if set, is the fingerprint the vault must have (e.g. the one
	// recorded in the repository's vault slot).
	Pin string
}

// Client is a vault client for one vault URL.
type Client struct {
	conn
	op *opaque.Client

	mu   sync.Mutex
	info *api.Info
}

// conn is what the clients of both API versions share for one vault: its
// URL, the HTTPS client (TLS 1.3, the extra CA certificates) and the
// pins.
type conn struct {
	url  string
	hc   *http.Client
	opts Options
}

// WrongPasswordError is returned when the vault does not accept the
// password. It matches keys.ErrWrongKey with errors.Is.
type WrongPasswordError struct{ AttemptsLeft int }

func (e *WrongPasswordError) Error() string {
	if e.AttemptsLeft < 0 {
		return "wrong password"
	}
	if e.AttemptsLeft == 0 {
		return "wrong password — no attempts left: the key is destroyed (or was never escrowed in this vault)"
	}
	return fmt.Sprintf("wrong password — %d attempts left before the key is destroyed", e.AttemptsLeft)
}

// Unwrap makes the error match keys.ErrWrongKey.
func (e *WrongPasswordError) Unwrap() error { return keys.ErrWrongKey }

// PinMismatchError reports a vault whose key is not the pinned one.
type PinMismatchError struct{ URL, Pinned, Got, Where string }

func (e *PinMismatchError) Error() string {
	return fmt.Sprintf("vault %s presents public key fingerprint %s but %s pins %s: refusing to talk to it (if the vault's key really changed, remove the pin)", e.URL, e.Got, e.Where, e.Pinned)
}

// ErrExists is returned by Register when the credential is already
// registered.
var ErrExists = errors.New("vault: a secret is already escrowed under this name: recover it, or change its password")

// New returns a client for the vault at url (https://host:port).
func New(url string, opt Options) (*Client, error) {
	if opt.KSF == nil {
		opt.KSF = opaque.DefaultArgon2idKSF
	}
	cn, err := newConn(url, opt)
	if err != nil {
		return nil, err
	}
	op, err := api.Suite.NewClient(opt.KSF, opaque.Identities{}, api.Context)
	if err != nil {
		return nil, err
	}
	return &Client{conn: *cn, op: op}, nil
}

// newConn checks url (https only) and makes the HTTPS client opt asks for.
func newConn(url string, opt Options) (*conn, error) {
	if !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("vault URL %q: only https:// is allowed", url)
	}
	hc := opt.HTTPClient
	if hc == nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS13}
		if opt.CACertFile != "" {
			pem, err := os.ReadFile(opt.CACertFile)
			if err != nil {
				return nil, err
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no PEM certificates", opt.CACertFile)
			}
			tc.RootCAs = pool
		}
		hc = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
	}
	if opt.PinFile == "" {
		opt.PinFile = DefaultPinFile()
	}
	return &conn{url: strings.TrimRight(url, "/"), hc: hc, opts: opt}, nil
}

// DefaultPinFile is $XDG_CONFIG_HOME/wabackup/vaults.json.
func DefaultPinFile() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "-"
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "wabackup", "vaults.json")
}

// URL returns the vault's base URL.
func (c *conn) URL() string { return c.url }

func (c *conn) call(ctx context.Context, path string, in, out any) error {
	var body []byte
	method := http.MethodGet
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, method = b, http.MethodPost
	}
	status, data, _, err := c.roundTrip(ctx, method, path, "application/json", body)
	if err != nil {
		return err
	}
	return c.answer(status, data, out)
}

// roundTrip sends one request and returns the answer's status, body (at
// most 1 MiB) and content type.
func (c *conn) roundTrip(ctx context.Context, method, path, ctype string, body []byte) (int, []byte, string, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, rd)
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, "", fmt.Errorf("vault %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, "", fmt.Errorf("vault %s: %w", c.url, err)
	}
	return resp.StatusCode, data, resp.Header.Get("Content-Type"), nil
}

// channelCall sends in (JSON) to path inside the realm channel
// (api.RealmChannelType) to the vault whose pinned key is pub (with the
// fingerprint fp): the first message of a Noise NK handshake, which only
// that key's holder can read, and reads the answer, which only that key's
// holder can have written, into out. An answer outside the channel is
// only an error: a rate limit or an unavailable vault is reported as
// such, and nothing else is believed (a *ChannelError).
func (c *conn) channelCall(ctx context.Context, pub []byte, fp, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	msg, hs, err := noise.WriteRequest(noise.Ristretto255, pub, api.RealmPrologue(path), b, rand.Reader)
	if err != nil {
		return &ChannelError{URL: c.url, Fingerprint: fp, Err: err}
	}
	status, data, ctype, err := c.roundTrip(ctx, http.MethodPost, path, api.RealmChannelType, msg)
	if err != nil {
		return err
	}
	if status != http.StatusOK || ctype != api.RealmChannelType {
		err := c.answer(status, data, nil)
		var ae *APIError
		if status/100 == 2 || !errors.As(err, &ae) {
			return &ChannelError{URL: c.url, Fingerprint: fp, Err: fmt.Errorf("an answer outside the realm channel (%d, %q)", status, ctype)}
		}
		return err
	}
	pt, err := hs.ReadResponse(data)
	if err != nil {
		return &ChannelError{URL: c.url, Fingerprint: fp, Err: err}
	}
	status, body, err := api.UnmarshalRealmAnswer(pt)
	if err != nil {
		return fmt.Errorf("vault %s: %w", c.url, err)
	}
	return c.answer(status, body, out)
}

// answer decodes an answer: a 2xx body into out, anything else as the
// vault's error.
func (c *conn) answer(status int, data []byte, out any) error {
	if status/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) != nil || e.Code == "" {
			return fmt.Errorf("vault %s: %d %s", c.url, status, http.StatusText(status))
		}
		switch e.Code {
		case api.CodeWrongPassword:
			left := 0
			if e.AttemptsLeft != nil {
				left = *e.AttemptsLeft
			}
			return &WrongPasswordError{AttemptsLeft: left}
		case api.CodeExists:
			return ErrExists
		}
		return &APIError{Status: status, Code: e.Code, Message: e.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("vault %s: malformed answer: %w", c.url, err)
	}
	return nil
}

// APIError is an error answer of the vault other than a wrong password.
type APIError struct {
	Status  int
	Code    string // one of the api.Code* constants
	Message string
	URL     string // the vault's, when known (a Realm's errors carry it)
}

func (e *APIError) Error() string {
	if e.URL != "" {
		return fmt.Sprintf("vault %s: %s (%s)", e.URL, e.Message, e.Code)
	}
	return fmt.Sprintf("vault: %s (%s)", e.Message, e.Code)
}

// Info fetches the vault's description and checks its key against the
// pins (the Pin option and the local pin file), then records it in the
// pin file.
func (c *Client) Info(ctx context.Context) (*api.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.info != nil {
		return c.info, nil
	}
	var in api.Info
	if err := c.call(ctx, api.PathInfo, nil, &in); err != nil {
		return nil, err
	}
	if in.Suite != api.Suite.String() {
		return nil, fmt.Errorf("vault %s uses suite %q, this client %q", c.url, in.Suite, api.Suite)
	}
	fp := api.Fingerprint(in.PublicKey)
	if err := c.checkPins(fp); err != nil {
		return nil, err
	}
	in.Fingerprint = fp
	c.info = &in
	return c.info, nil
}

// checkPins checks the fingerprint fp the vault presents against the Pin
// option and the local pin file, and records it in the pin file.
func (c *conn) checkPins(fp string) error {
	if c.opts.Pin != "" && c.opts.Pin != fp {
		where := c.opts.PinSource
		if where == "" {
			where = "the repository's vault slot"
		}
		return &PinMismatchError{URL: c.url, Pinned: c.opts.Pin, Got: fp, Where: where}
	}
	return c.checkPinFile(fp)
}

var pinMu sync.Mutex

func (c *conn) checkPinFile(fp string) error {
	if c.opts.PinFile == "-" {
		return nil
	}
	pinMu.Lock()
	defer pinMu.Unlock()
	pins := map[string]string{}
	data, err := os.ReadFile(c.opts.PinFile)
	if err == nil {
		if err := json.Unmarshal(data, &pins); err != nil {
			return fmt.Errorf("%s: %w", c.opts.PinFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if old, ok := pins[c.url]; ok {
		if old != fp {
			return &PinMismatchError{URL: c.url, Pinned: old, Got: fp, Where: c.opts.PinFile}
		}
		return nil
	}
	pins[c.url] = fp
	data, _ = json.MarshalIndent(pins, "", "  ")
	return atomicfile.Write(c.opts.PinFile, append(data, '\n'), 0o600)
}

func escrowAAD(credID []byte) []byte { return append([]byte("wabackup vault escrow v1/"), credID...) }

// inChannel sends in to path inside the realm channel to this client's
// vault (after Info, whose key the pins checked).
func (c *Client) inChannel(ctx context.Context, path string, in, out any) error {
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	return c.channelCall(ctx, info.PublicKey, info.Fingerprint, path, in, out)
}

// register runs an OPAQUE registration; with a token it replaces the
// record (password change), both messages inside the realm channel.
func (c *Client) register(ctx context.Context, credID, tok, password, secret []byte, guesses int) (int, error) {
	password = keys.NormalizePassword(password)
	info, err := c.Info(ctx)
	if err != nil {
		return 0, err
	}
	req, st, err := c.op.RegistrationRequest(password)
	if err != nil {
		return 0, err
	}
	rb, _ := req.MarshalBinary()
	var sr api.RegisterStartReply
	if tok == nil {
		err = c.call(ctx, api.PathRegisterStart, api.RegisterStart{CredentialID: credID, Request: rb}, &sr)
	} else {
		err = c.inChannel(ctx, api.PathChangeStart, api.RegisterStart{Token: tok, Request: rb}, &sr)
	}
	if err != nil {
		return 0, err
	}
	resp, err := api.Suite.UnmarshalRegistrationResponse(sr.Response)
	if err != nil {
		return 0, fmt.Errorf("vault %s: %w", c.url, err)
	}
	if got := api.Fingerprint(resp.ServerPublicKey()); got != info.Fingerprint {
		return 0, &PinMismatchError{URL: c.url, Pinned: info.Fingerprint, Got: got, Where: "the vault's own /v1/info"}
	}
	rec, exportKey, err := c.op.FinalizeRegistration(st, resp)
	if err != nil {
		return 0, err
	}
	blob, err := api.Seal(exportKey, api.EscrowLabel, secret, escrowAAD(credID))
	if err != nil {
		return 0, err
	}
	recb, _ := rec.MarshalBinary()
	var fr api.RegisterFinishReply
	if tok == nil {
		err = c.call(ctx, api.PathRegisterFinish, api.RegisterFinish{CredentialID: credID, Record: recb, Blob: blob, Guesses: guesses, State: sr.State}, &fr)
	} else {
		// The sealed state names the record and its generation: the
		// token is not sent again.
		err = c.inChannel(ctx, api.PathChangeFinish, api.RegisterFinish{Record: recb, Blob: blob, Guesses: guesses, State: sr.State}, &fr)
	}
	if err != nil {
		return 0, err
	}
	return fr.Guesses, nil
}

// Register escrows secret under password for credID (see
// api.CredentialID), allowing guesses wrong attempts (0: the vault's
// default). It returns the vault's fingerprint and the limit granted.
func (c *Client) Register(ctx context.Context, credID, password, secret []byte, guesses int) (fingerprint string, limit int, err error) {
	limit, err = c.register(ctx, credID, nil, password, secret, guesses)
	if err != nil {
		return "", 0, err
	}
	return c.info.Fingerprint, limit, nil
}

// login runs an OPAQUE login and returns the escrowed secret and, if
// wantToken, the token for a change or a delete, opened with the session
// key.
func (c *Client) login(ctx context.Context, credID, password []byte, wantToken bool) (secret, tok []byte, err error) {
	password = keys.NormalizePassword(password)
	if _, err := c.Info(ctx); err != nil {
		return nil, nil, err
	}
	ke1, st, err := c.op.KE1(password)
	if err != nil {
		return nil, nil, err
	}
	b, _ := ke1.MarshalBinary()
	var lr api.LoginStartReply
	if err := c.call(ctx, api.PathLoginStart, api.LoginStart{CredentialID: credID, KE1: b}, &lr); err != nil {
		return nil, nil, err
	}
	ke2, err := api.Suite.UnmarshalKE2(lr.KE2)
	if err != nil {
		return nil, nil, fmt.Errorf("vault %s: %w", c.url, err)
	}
	ke3, sessionKey, exportKey, err := c.op.KE3(st, ke2)
	if err != nil {
		// Wrong password (or no such record): tell the vault at once, so it
		// answers how many attempts are left.
		ferr := c.call(ctx, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID}, nil)
		var wp *WrongPasswordError
		if errors.As(ferr, &wp) {
			return nil, nil, wp
		}
		return nil, nil, &WrongPasswordError{AttemptsLeft: -1}
	}
	k3, _ := ke3.MarshalBinary()
	var fr api.LoginFinishReply
	if err := c.call(ctx, api.PathLoginFinish, api.LoginFinish{LoginID: lr.LoginID, KE3: k3}, &fr); err != nil {
		return nil, nil, err
	}
	blob, err := api.Open(sessionKey, api.ReleaseLabel, fr.Blob, lr.LoginID)
	if err != nil {
		return nil, nil, fmt.Errorf("vault %s: the released blob does not decrypt under the session key", c.url)
	}
	secret, err = api.Open(exportKey, api.EscrowLabel, blob, escrowAAD(credID))
	if err != nil {
		return nil, nil, errors.New("vault: the escrowed secret does not decrypt under this password's export key (was it escrowed by another client?)")
	}
	if !wantToken {
		return secret, nil, nil
	}
	if tok, err = api.Open(sessionKey, api.TokenLabel, fr.Token, lr.LoginID); err != nil {
		return nil, nil, fmt.Errorf("vault %s: the login's token is not sealed under the session key: the vault is older than this client, which changes a password or deletes only with a vault that takes the token inside the realm channel (docs/VAULT.md, API)", c.url)
	}
	return secret, tok, nil
}

// Recover logs in with password and returns the escrowed secret. A wrong
// password gives a *WrongPasswordError.
func (c *Client) Recover(ctx context.Context, credID, password []byte) ([]byte, error) {
	secret, _, err := c.login(ctx, credID, password, false)
	return secret, err
}

// ChangePassword re-registers the same secret under newPassword, after a
// login with oldPassword; the guess counter starts afresh.
func (c *Client) ChangePassword(ctx context.Context, credID, oldPassword, newPassword []byte) error {
	secret, tok, err := c.login(ctx, credID, oldPassword, true)
	if err != nil {
		return err
	}
	_, err = c.register(ctx, credID, tok, newPassword, secret, 0)
	return err
}

// Delete destroys the escrowed secret after a login with password; the
// token travels inside the realm channel.
func (c *Client) Delete(ctx context.Context, credID, password []byte) error {
	_, tok, err := c.login(ctx, credID, password, true)
	if err != nil {
		return err
	}
	return c.inChannel(ctx, api.PathDelete, api.Delete{Token: tok}, nil)
}

// Status returns how many attempts are left and the limit. For an unknown
// credential the vault answers as if it existed.
func (c *Client) Status(ctx context.Context, credID []byte) (left, limit int, err error) {
	if _, err := c.Info(ctx); err != nil {
		return 0, 0, err
	}
	var sr api.StatusReply
	if err := c.call(ctx, api.PathStatus, api.Status{CredentialID: credID}, &sr); err != nil {
		return 0, 0, err
	}
	return sr.AttemptsLeft, sr.Limit, nil
}
