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
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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

	mu     sync.Mutex
	lease  clientv3.LeaseID // for the write markers; 0: none yet
	stopKA context.CancelFunc
}

// markerTTL is how long a write marker outlives its transaction: far
// longer than any retry of it.
const markerTTL = 60

// leaseID returns the lease the write markers hang on, granting one (and
// keeping it alive) if there is none.
func (s *Store) leaseID(ctx context.Context) (clientv3.LeaseID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease != 0 {
		return s.lease, nil
	}
	g, err := s.cli.Grant(ctx, markerTTL)
	if err != nil {
		return 0, err
	}
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := s.cli.KeepAlive(kctx, g.ID)
	if err != nil {
		cancel()
		return 0, err
	}
	s.lease, s.stopKA = g.ID, cancel
	go func(id clientv3.LeaseID) {
		for range ch {
		}
		// The lease lapsed (or Close): the next write grants a new one.
		s.mu.Lock()
		if s.lease == id {
			s.lease = 0
		}
		s.mu.Unlock()
	}(g.ID)
	return g.ID, nil
}

// dropLease forgets a lease etcd no longer knows.
func (s *Store) dropLease(id clientv3.LeaseID) {
	s.mu.Lock()
	if s.lease == id {
		s.lease = 0
		if s.stopKA != nil {
			s.stopKA()
		}
	}
	s.mu.Unlock()
}

// newMarker names a write marker: a key written in the same transaction
// as a compare-and-swap or delete, so that a retry after an unknown
// outcome can tell whether that transaction committed, even if the value
// was overwritten by someone else in between.
func (s *Store) newMarker() string {
	var b [16]byte
	rand.Read(b[:])
	return s.prefix + "_txn/" + hex.EncodeToString(b[:])
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

// unavailable wraps an etcd error: whatever it is (no leader, deadline,
// connection refused), the vault must not go on as if it had been
// written, so it is vault.ErrUnavailable.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: etcd %s: %v", vault.ErrUnavailable, op, err)
}

// do runs op with a per-attempt timeout of a third of the request
// timeout, again after every error until the request timeout is spent (a
// request sent to a member that just died, or during a leader election,
// fails or hangs while another member could answer). op is told whether
// an earlier attempt failed with an unknown outcome.
func (s *Store) do(name string, op func(ctx context.Context, retry bool) error) error {
	deadline := time.Now().Add(s.timeout)
	per := max(s.timeout/3, 500*time.Millisecond)
	retry := false
	for {
		ctx, cancel := context.WithDeadline(context.Background(), earlier(deadline, time.Now().Add(per)))
		err := op(ctx, retry)
		cancel()
		if err == nil || errors.Is(err, vault.ErrConflict) {
			return err
		}
		if time.Until(deadline) < 50*time.Millisecond {
			return unavailable(name, err)
		}
		retry = true
		time.Sleep(50 * time.Millisecond)
	}
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Get implements vault.Store with a linearizable read.
func (s *Store) Get(key []byte) (val []byte, version uint64, err error) {
	err = s.do("get", func(ctx context.Context, _ bool) error {
		resp, err := s.cli.Get(ctx, s.Key(key))
		if err != nil {
			return err
		}
		val, version = nil, 0
		if len(resp.Kvs) > 0 {
			kv := resp.Kvs[0]
			val, version = kv.Value, uint64(kv.ModRevision)
			if val == nil {
				val = []byte{}
			}
		}
		return nil
	})
	return val, version, err
}

// CompareAndSwap implements vault.Store: one transaction "if the key's mod
// revision is old (0: absent) then put". The new version is the revision
// of that transaction.
//
// A transaction that fails without an answer (its member died, the leader
// changed) may or may not have been committed, and may still commit later.
// It is sent again, with the same write marker: both compare on the same
// revision, so at most one of them commits, and the marker (written in the
// same transaction, expiring after a minute) exists if and only if one
// did. So a caller's read-modify-write is neither lost nor applied twice,
// even when another instance has overwritten the value in between.
func (s *Store) CompareAndSwap(key []byte, old uint64, val []byte) (uint64, error) {
	k := s.Key(key)
	ver, _, err := s.markedTxn(clientv3.Compare(clientv3.ModRevision(k), "=", int64(old)), []clientv3.Op{clientv3.OpPut(k, string(val))}, nil)
	return ver, err
}

// Delete implements vault.Store: one transaction "if the key's mod
// revision is old then delete", with a write marker as in CompareAndSwap.
func (s *Store) Delete(key []byte, old uint64) error {
	if old == 0 {
		return vault.ErrConflict
	}
	k := s.Key(key)
	_, _, err := s.markedTxn(clientv3.Compare(clientv3.ModRevision(k), "=", int64(old)), []clientv3.Op{clientv3.OpDelete(k)}, nil)
	return err
}

// markedTxn runs, under do, the transaction "if cmp then ops and a new
// write marker, else read the marker and orElse". A retry after an
// unknown outcome carries the same marker, so it finds out whether an
// earlier attempt committed. It returns the revision of the transaction
// that committed, or vault.ErrConflict with the answers to orElse.
func (s *Store) markedTxn(cmp clientv3.Cmp, ops, orElse []clientv3.Op) (rev uint64, orElseResp []*etcdserverpb.ResponseOp, err error) {
	marker := s.newMarker()
	err = s.do("transaction", func(ctx context.Context, retry bool) error {
		lease, err := s.leaseID(ctx)
		if err != nil {
			return err
		}
		resp, err := s.cli.Txn(ctx).
			If(cmp).
			Then(append(ops[:len(ops):len(ops)], clientv3.OpPut(marker, "", clientv3.WithLease(lease)))...).
			Else(append([]clientv3.Op{clientv3.OpGet(marker, clientv3.WithKeysOnly())}, orElse...)...).
			Commit()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.dropLease(lease)
			}
			return err
		}
		if loseReply != nil && loseReply() {
			return errReplyLost
		}
		if resp.Succeeded {
			rev = uint64(resp.Header.Revision)
			return nil
		}
		if retry {
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
				rev = uint64(kvs[0].CreateRevision) // our earlier attempt committed
				return nil
			}
		}
		orElseResp = resp.Responses[1:]
		return vault.ErrConflict
	})
	return rev, orElseResp, err
}

// Compact implements vault.Compactor: it compacts the cluster's history up
// to its current revision and has every member free the space
// (WithCompactPhysical waits until they have), so a destroyed or deleted
// record cannot be read back through an older revision. Compaction is
// cluster-wide: other users of the cluster lose their history too.
func (s *Store) Compact() error {
	return s.do("compact", func(ctx context.Context, _ bool) error {
		resp, err := s.cli.Get(ctx, s.prefix+"server-keys", clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		_, err = s.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil // someone compacted at least as far
		}
		return err
	})
}

// loseReply, set by tests, makes a transaction's answer look lost after
// etcd executed it when it returns true: the unknown-outcome case.
var loseReply func() bool

var errReplyLost = errors.New("etcdstore test: reply lost")

// Close implements vault.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.stopKA != nil {
		s.stopKA()
	}
	s.mu.Unlock()
	return s.cli.Close()
}

// ParseURL parses a store URL etcd://HOST1:2379,HOST2:2379,HOST3:2379/PREFIX
// into endpoints and a prefix. The scheme etcds:// (or certificates given
// to TLSConfig) makes the endpoints https.
func ParseURL(raw string) (endpoints []string, prefix string, secure bool, err error) {
	bad := func(why string) error {
		return fmt.Errorf("etcdstore: store URL %q: %s (want etcd://HOST:PORT,HOST:PORT,.../PREFIX)", raw, why)
	}
	rest, ok := strings.CutPrefix(raw, "etcd://")
	if !ok {
		if rest, ok = strings.CutPrefix(raw, "etcds://"); !ok {
			return nil, "", false, bad("scheme must be etcd:// or etcds://")
		}
		secure = true
	}
	hosts, path, _ := strings.Cut(rest, "/")
	if strings.ContainsAny(rest, "@?#") {
		return nil, "", false, bad("no user, query or fragment allowed")
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			return nil, "", false, bad("empty host")
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "2379")
		}
		endpoints = append(endpoints, h)
	}
	prefix = strings.Trim(path, "/")
	if prefix == "" {
		return nil, "", false, bad("give a key prefix, e.g. /wabackup-vault")
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
