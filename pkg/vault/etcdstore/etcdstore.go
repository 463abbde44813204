// Package etcdstore is a vault.Store kept in an etcd cluster, so that
// several stateless vault instances (one per site) share one record store
// replicated by Raft. A value's version is the etcd mod revision of its
// key: cluster-wide, increasing, never reused (not even after a delete).
// Every read is linearizable (etcd's default) and every write is one
// transaction that compares the key's mod revision and is acknowledged
// only once a majority has committed it. A request that cannot reach a
// quorum within the request timeout fails with vault.ErrUnavailable.
package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/wabackup/wabackup/pkg/vault"
)

// Config configures Open.
type Config struct {
	// Endpoints are the members' client addresses (host:port or URLs).
	Endpoints []string
	// Prefix is prepended (with a "/") to every key; several vaults may
	// share a cluster under distinct prefixes.
	Prefix string
	// TLS, if set, is used to reach the members (client certificates for
	// etcd's --client-cert-auth go in it).
	TLS *tls.Config
	// RequestTimeout bounds every read and transaction (default 3 s).
	RequestTimeout time.Duration
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
	// Logger is the etcd client's logger (default: none).
	Logger *zap.Logger
}

// Store implements vault.Store on etcd.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
}

// Open connects to the cluster. It does not wait for a quorum: a cluster
// that has none makes every call fail with vault.ErrUnavailable until it
// has one again.
func Open(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no endpoints")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 3 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %w", err)
	}
	return &Store{cli: cli, prefix: strings.TrimSuffix(cfg.Prefix, "/") + "/", timeout: cfg.RequestTimeout}, nil
}

// Client returns the etcd client (tests, tools).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Key returns the etcd key that holds key.
func (s *Store) Key(key []byte) string { return s.prefix + string(key) }

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// unavailable wraps an etcd error: whatever it is (no leader, deadline,
// connection refused), the vault must not go on as if it had been
// written, so it is vault.ErrUnavailable.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: etcd %s: %v", vault.ErrUnavailable, op, err)
}

// Get implements vault.Store with a linearizable read.
func (s *Store) Get(key []byte) ([]byte, uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	resp, err := s.cli.Get(ctx, s.Key(key))
	if err != nil {
		return nil, 0, unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	kv := resp.Kvs[0]
	val := kv.Value
	if val == nil {
		val = []byte{}
	}
	return val, uint64(kv.ModRevision), nil
}

// CompareAndSwap implements vault.Store: one transaction "if the key's mod
// revision is old (0: absent) then put". The new version is the
// revision of that transaction.
func (s *Store) CompareAndSwap(key []byte, old uint64, val []byte) (uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	k := s.Key(key)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", int64(old))).
		Then(clientv3.OpPut(k, string(val))).
		Commit()
	if err != nil {
		return 0, unavailable("transaction", err)
	}
	if !resp.Succeeded {
		return 0, vault.ErrConflict
	}
	return uint64(resp.Header.Revision), nil
}

// Delete implements vault.Store: one transaction "if the key's mod
// revision is old then delete".
func (s *Store) Delete(key []byte, old uint64) error {
	if old == 0 {
		return vault.ErrConflict
	}
	ctx, cancel := s.ctx()
	defer cancel()
	k := s.Key(key)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", int64(old))).
		Then(clientv3.OpDelete(k)).
		Commit()
	if err != nil {
		return unavailable("transaction", err)
	}
	if !resp.Succeeded {
		return vault.ErrConflict
	}
	return nil
}

// Close implements vault.Store.
func (s *Store) Close() error { return s.cli.Close() }

// ParseURL parses a store URL etcd://HOST1:2379,HOST2:2379,HOST3:2379/PREFIX
// into endpoints and a prefix. The scheme etcds:// (or certificates given
// to TLSConfig) makes the endpoints https.
func ParseURL(raw string) (endpoints []string, prefix string, secure bool, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", false, err
	}
	switch u.Scheme {
	case "etcd":
	case "etcds":
		secure = true
	default:
		return nil, "", false, fmt.Errorf("etcdstore: store URL %q: want etcd://HOST:PORT,.../PREFIX", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, "", false, fmt.Errorf("etcdstore: store URL %q: no user, query or fragment allowed", raw)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			return nil, "", false, fmt.Errorf("etcdstore: store URL %q: empty host", raw)
		}
		if !strings.Contains(h, ":") {
			h += ":2379"
		}
		endpoints = append(endpoints, h)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix == "" {
		return nil, "", false, fmt.Errorf("etcdstore: store URL %q: give a key prefix, e.g. etcd://HOST:2379/wabackup-vault", raw)
	}
	return endpoints, prefix, secure, nil
}

// TLSConfig builds the client TLS configuration from PEM files: a CA
// bundle to verify the members (empty: the system roots) and an optional
// client certificate and key.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdstore: no certificate in %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("etcdstore: give both a client certificate and its key")
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
