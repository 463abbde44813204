// Package s3 is the cloud.Store backend for S3-compatible object storage
// (AWS S3, MinIO, Ceph RGW, versitygw, …), built on minio-go. It registers
// the "s3" scheme; see ParseURL for the address forms and Config for the
// options.
//
// Objects live under PREFIX/ in the bucket, named PREFIX + "/" + name.
//
// Credentials come the way every S3 tool takes them, never from the
// address or the command line: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
// (/ AWS_SESSION_TOKEN), then the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE),
// then MINIO_ROOT_USER / MINIO_ROOT_PASSWORD or MINIO_ACCESS_KEY /
// MINIO_SECRET_KEY. EC2/ECS instance roles are not consulted.
//
// Integrity: every PutObject and UploadPart carries Content-MD5, computed
// from the part's bytes before they are sent, so the server rejects a body
// damaged in transit (BadDigest) and the request is retried. MD5 was
// chosen over x-amz-checksum-crc32c because every S3 implementation
// verifies it (versitygw does, in its checksum middleware), while the
// newer checksum headers are ignored or rejected by some servers; servers
// compute it anyway for the ETag. Content-MD5 is one of the signed
// headers, so the payload itself is not hashed a second time for the
// signature: requests say UNSIGNED-PAYLOAD, over HTTPS and plain HTTP
// alike. (A body swapped on the wire would need an MD5 second preimage;
// and what is stored is authenticated by the repository format anyway.)
// minio-go's aws-chunked streaming signature is not used: for an empty
// object it sent bytes versitygw took for a second, malformed request.
//
// Memory: a reader that is also an io.ReaderAt and io.Seeker (the staged
// pack files are *os.File) is sent in place, a section at a time, and
// costs no buffer. Any other reader is buffered a part at a time,
// min(size, PartSize) bytes (from a pool for sizes near PartSize). Parts
// of one object are sent one after another; concurrency comes from
// several Puts in flight.
//
// Retries: minio-go's own retry is switched off (MaxRetries 1); each
// request is retried here, from the buffered data, with exponential
// backoff and jitter (250 ms doubling to 20 s) on 5xx, 429/SlowDown,
// BadDigest, connection refusals/resets and timeouts, until the next
// attempt would start later than RetryBudget after the first one. The
// budget is per request (per part for multipart uploads), so a long
// upload survives intermittent faults but a dead server fails each
// request after about RetryBudget. A connection on which nothing moves
// for IdleTimeout is abandoned (and the request retried). A read from
// Get's reader that fails midway reopens the object at the current
// offset, pinned to the same ETag.
//
// A failed or cancelled multipart Put aborts its upload (with a fresh,
// short-lived context); if even that fails, CleanupIncomplete removes the
// leftovers later.
package s3

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/wabackup/wabackup/pkg/cloud"
)

func init() {
	cloud.Register("s3", func(ctx context.Context, u *url.URL, create bool) (cloud.Store, error) {
		cfg, err := ConfigFromURL(u)
		if err != nil {
			return nil, err
		}
		// Creating a bucket is only for init, and only when asked for.
		cfg.CreateBucket = cfg.CreateBucket && create
		return New(ctx, cfg)
	})
}

// Defaults and limits.
const (
	DefaultConnections = 4
	DefaultPartSize    = 16 << 20
	DefaultRetryBudget = 2 * time.Minute
	DefaultIdleTimeout = 60 * time.Second

	minPartSize    = 5 << 20 // S3's minimum for all parts but the last
	maxPartSize    = 5 << 30
	maxParts       = 10000
	maxConnections = 256

	retryBase = 250 * time.Millisecond
	retryCap  = 20 * time.Second
)

// Config describes an S3 store. ParseURL makes one from an address; New
// fills in defaults for zero fields.
type Config struct {
	Endpoint string // host[:port]
	Secure   bool   // HTTPS
	Bucket   string
	Prefix   string // without leading or trailing slash; "" for the bucket root
	Region   string // "" asks the server (GetBucketLocation, once per bucket)
	Lookup   string // "auto" (default: path style except for AWS and GCS), "path", "dns"

	CACertFile   string // PEM certificates trusted in addition to the system's
	Connections  int    // requests in flight at once (default 4); a Get holds one until its answer's headers arrive, List none
	PartSize     uint64 // multipart part size and single-PUT limit (default 16 MiB, 5 MiB–5 GiB)
	CreateBucket bool   // create the bucket in Open if it is missing

	RetryBudget time.Duration // per request (default 2 min)
	IdleTimeout time.Duration // per connection silence (default 60 s)
	// RunBudget is how long the whole store may go without any request
	// succeeding before a failing request is no longer retried (default:
	// the context's cloud.RunBudget at New, 5 min).
	RunBudget time.Duration

	// Credentials overrides the standard chain (see the package comment).
	// It is for programs embedding the store; the CLI leaves it nil.
	Credentials *credentials.Credentials
}

func (c Config) withDefaults() Config {
	if c.Lookup == "" {
		c.Lookup = "auto"
	}
	if c.Connections == 0 {
		c.Connections = DefaultConnections
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.RetryBudget == 0 {
		c.RetryBudget = DefaultRetryBudget
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	return c
}

func (c Config) validate() error {
	if err := checkHost(c.Endpoint); err != nil {
		return err
	}
	if err := s3utils.CheckValidBucketName(c.Bucket); err != nil {
		return fmt.Errorf("bucket name %q: %v", c.Bucket, err)
	}
	if c.Prefix != "" {
		if err := checkPrefix(c.Prefix); err != nil {
			return err
		}
	}
	if c.Region != "" && !validRegion(c.Region) {
		return fmt.Errorf("bad region %q", c.Region)
	}
	switch c.Lookup {
	case "auto", "path", "dns":
	default:
		return fmt.Errorf("lookup %q: want auto, path or dns", c.Lookup)
	}
	if c.Connections < 1 || c.Connections > maxConnections {
		return fmt.Errorf("connections %d: want 1 to %d", c.Connections, maxConnections)
	}
	if c.PartSize < minPartSize || c.PartSize > maxPartSize {
		return fmt.Errorf("part size %d: want 5 MiB to 5 GiB", c.PartSize)
	}
	if c.RetryBudget < 0 || c.IdleTimeout < 0 || c.RunBudget < 0 {
		return errors.New("negative retry budget or idle timeout")
	}
	return nil
}

// StandardCredentials is the credential chain New uses when
// Config.Credentials is nil.
func StandardCredentials() *credentials.Credentials {
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.EnvMinio{},
	})
}

// Store is an S3 bucket (or a prefix in one) as a cloud.Store.
type Store struct {
	cfg       Config
	client    *minio.Client
	core      minio.Core
	transport *http.Transport
	keyPrefix string // cfg.Prefix + "/" or ""
	slots     chan struct{}
	progress  *cloud.Progress // the run-wide retry budget
	bufs      sync.Pool       // *[]byte of cfg.PartSize
}

// New connects to the bucket cfg names, checking that it exists (or
// creating it, with cfg.CreateBucket). A missing bucket is an error
// wrapping cloud.ErrNoRepository.
func New(ctx context.Context, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if cfg.RunBudget == 0 {
		cfg.RunBudget = cloud.RunBudget(ctx)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("s3: %v", err)
	}
	creds := cfg.Credentials
	if creds == nil {
		creds = StandardCredentials()
	}
	if v, err := creds.GetWithContext(nil); err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		msg := "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials"
		if err != nil {
			msg += " (" + err.Error() + ")"
		}
		return nil, &opError{op: "open", kind: ErrNoCredentials, msg: "no S3 credentials: " + msg, err: err}
	}
	tr, err := newTransport(cfg)
	if err != nil {
		return nil, fmt.Errorf("s3: %v", err)
	}
	lookup := map[string]minio.BucketLookupType{"auto": minio.BucketLookupAuto, "path": minio.BucketLookupPath, "dns": minio.BucketLookupDNS}[cfg.Lookup]
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       cfg.Secure,
		Transport:    cloud.CountingTransport(ctx, tr, requestKind(cfg.Bucket)),
		Region:       cfg.Region,
		BucketLookup: lookup,
		MaxRetries:   1, // we retry ourselves, see the package comment
	})
	if err != nil {
		return nil, fmt.Errorf("s3: %v", err)
	}
	client.SetAppInfo("wabackup", "1")
	s := &Store{
		cfg:       cfg,
		client:    client,
		core:      minio.Core{Client: client},
		transport: tr,
		slots:     make(chan struct{}, cfg.Connections),
		progress:  cloud.NewProgress(cfg.RunBudget),
	}
	if cfg.Prefix != "" {
		s.keyPrefix = cfg.Prefix + "/"
	}
	if err := s.checkBucket(ctx); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return s, nil
}

// checkBucket is Open's probe: a one-key listing under the prefix, which
// needs only the permission List needs anyway (s3:ListBucket) and, unlike
// HEAD, gets an error body to report. It retries for at most 10 s (less
// with a smaller RetryBudget), so a mistyped address fails fast.
func (s *Store) checkBucket(ctx context.Context) error {
	budget := min(s.cfg.RetryBudget, 10*time.Second)
	exists := true
	err := s.retry(ctx, "open", "", budget, func(ctx context.Context) error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for oi := range s.client.ListObjectsIter(lctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.keyPrefix, MaxKeys: 1}) {
			if s3Code(oi.Err) == "NoSuchBucket" {
				exists = false
				return nil
			}
			return oi.Err
		}
		return nil
	})
	if err != nil {
		return err
	}
	if exists {
		return nil
	}
	if !s.cfg.CreateBucket {
		return &opError{op: "open", kind: cloud.ErrNoRepository,
			msg: fmt.Sprintf("bucket %s does not exist (use --s3-create-bucket with init)", s.cfg.Bucket)}
	}
	return s.retry(ctx, "create bucket", s.cfg.Bucket, s.cfg.RetryBudget, func(ctx context.Context) error {
		err := s.client.MakeBucket(ctx, s.cfg.Bucket, minio.MakeBucketOptions{Region: s.cfg.Region})
		if s3Code(err) == "BucketAlreadyOwnedByYou" {
			return nil
		}
		return err
	})
}

// newTransport is minio-go's default transport with our TLS roots and a
// dialer whose connections time out when idle for cfg.IdleTimeout.
func newTransport(cfg Config) (*http.Transport, error) {
	dialer := &net.Dialer{Timeout: min(cfg.IdleTimeout, 30*time.Second), KeepAlive: 30 * time.Second}
	idle := cfg.IdleTimeout
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &idleConn{Conn: c, timeout: idle}, nil
		},
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   max(2*cfg.Connections, 8),
		IdleConnTimeout:       min(idle/2, 90*time.Second),
		TLSHandshakeTimeout:   min(idle, 30*time.Second),
		ExpectContinueTimeout: 10 * time.Second,
		DisableCompression:    true,
	}
	if cfg.Secure {
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if cfg.CACertFile != "" {
			pem, err := os.ReadFile(cfg.CACertFile)
			if err != nil {
				return nil, fmt.Errorf("CA certificate: %v", err)
			}
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA certificate: no PEM certificate in %s", cfg.CACertFile)
			}
		}
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	}
	return tr, nil
}

// idleConn moves its deadline forward on every read and write, so only a
// connection on which nothing happens for timeout fails.
type idleConn struct {
	net.Conn
	timeout time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

// Location implements cloud.Store: s3://HOST/BUCKET/PREFIX, or
// s3:http://… for plain HTTP.
func (s *Store) Location() string { return s.cfg.location() }

// Config returns the store's configuration with defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Close implements cloud.Store.
func (s *Store) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}

func (s *Store) key(name string) (string, error) {
	if !cloud.ValidName(name) {
		return "", fmt.Errorf("s3: invalid object name %q", name)
	}
	return s.keyPrefix + name, nil
}

// retry runs fn, holding one of the Connections slots per attempt, until
// it succeeds, fails for good, or the next attempt would start more than
// budget after the first. Errors come back as *opError.
func (s *Store) retry(ctx context.Context, op, name string, budget time.Duration, fn func(context.Context) error) error {
	start := time.Now()
	delay := retryBase
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return &opError{op: op, name: name, msg: err.Error(), err: err}
		}
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return &opError{op: op, name: name, msg: ctx.Err().Error(), err: ctx.Err()}
		}
		err := fn(ctx)
		<-s.slots
		if err == nil {
			s.progress.Done()
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return &opError{op: op, name: name, msg: cerr.Error(), err: cerr}
		}
		f := classify(err, s.cfg.Endpoint, s.cfg.Bucket, s.cfg.Region)
		sleep := delay/2 + randDuration(delay/2)
		delay = min(2*delay, retryCap)
		elapsed := time.Since(start)
		since, stalled := s.progress.Exhausted(sleep)
		if !f.retry || elapsed+sleep > budget || stalled {
			msg := f.msg
			switch {
			case f.retry && stalled:
				msg += fmt.Sprintf(" (gave up after %d attempts: %s)", attempt, s.progress.GaveUp(since))
			case attempt > 1:
				msg += fmt.Sprintf(" (gave up after %d attempts in %v)", attempt, elapsed.Round(100*time.Millisecond))
			}
			return &opError{op: op, name: name, kind: f.kind, msg: msg, err: err}
		}
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &opError{op: op, name: name, msg: ctx.Err().Error(), err: ctx.Err()}
		}
	}
}

// Stat implements cloud.Store.
func (s *Store) Stat(ctx context.Context, name string) (cloud.ObjectInfo, error) {
	key, err := s.key(name)
	if err != nil {
		return cloud.ObjectInfo{}, err
	}
	var oi minio.ObjectInfo
	err = s.retry(ctx, "stat", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		var err error
		oi, err = s.client.StatObject(ctx, s.cfg.Bucket, key, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return cloud.ObjectInfo{}, err
	}
	return cloud.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Delete implements cloud.Store. S3 deletes missing keys without
// complaint, so a Stat comes first to report ErrNotFound.
func (s *Store) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if _, err := s.Stat(ctx, name); err != nil {
		return err
	}
	return s.retry(ctx, "delete", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		return s.client.RemoveObject(ctx, s.cfg.Bucket, key, minio.RemoveObjectOptions{})
	})
}

// List implements cloud.Store. A listing that fails midway resumes after
// the last key seen. List requests do not take Connections slots, since
// fn may itself call the store.
func (s *Store) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	full := s.keyPrefix + prefix
	after := ""
	start := time.Now() // of the current retry sequence
	delay := retryBase
	for attempt := 1; ; attempt++ {
		lctx, cancel := context.WithCancel(ctx)
		var lerr, ferr error
		progress := false
		for oi := range s.client.ListObjectsIter(lctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: full, Recursive: true, StartAfter: after}) {
			if oi.Err != nil {
				lerr = oi.Err
				break
			}
			after, progress = oi.Key, true
			name := strings.TrimPrefix(oi.Key, s.keyPrefix)
			if !strings.HasPrefix(oi.Key, s.keyPrefix) || strings.HasSuffix(name, "/") || name == "" {
				continue // directory markers and strays
			}
			if ferr = fn(cloud.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}); ferr != nil {
				break
			}
		}
		cancel()
		if ferr != nil {
			return ferr
		}
		if lerr == nil {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return &opError{op: "list", name: prefix, msg: err.Error(), err: err}
		}
		if progress {
			start, delay, attempt = time.Now(), retryBase, 1
		}
		f := classify(lerr, s.cfg.Endpoint, s.cfg.Bucket, s.cfg.Region)
		sleep := delay/2 + randDuration(delay/2)
		delay = min(2*delay, retryCap)
		if elapsed := time.Since(start); !f.retry || elapsed+sleep > s.cfg.RetryBudget {
			msg := f.msg
			if attempt > 1 {
				msg += fmt.Sprintf(" (gave up after %d attempts in %v)", attempt, elapsed.Round(100*time.Millisecond))
			}
			return &opError{op: "list", name: prefix, kind: f.kind, msg: msg, err: lerr}
		}
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &opError{op: "list", name: prefix, msg: ctx.Err().Error(), err: ctx.Err()}
		}
	}
}

// CleanupIncomplete aborts the multipart uploads under the store's prefix
// that were started more than olderThan ago (by the server's clock), and
// returns how many it aborted. Uploads of Puts still running must be
// younger than olderThan, so pass hours, not seconds, while backups may be
// running.
func (s *Store) CleanupIncomplete(ctx context.Context, olderThan time.Duration) (int, error) {
	keyMarker, idMarker := "", ""
	n := 0
	for {
		var res minio.ListMultipartUploadsResult
		err := s.retry(ctx, "list incomplete uploads", "", s.cfg.RetryBudget, func(ctx context.Context) error {
			var err error
			res, err = s.core.ListMultipartUploads(ctx, s.cfg.Bucket, s.keyPrefix, keyMarker, idMarker, "", 1000)
			return err
		})
		if err != nil {
			return n, err
		}
		for _, u := range res.Uploads {
			if !strings.HasPrefix(u.Key, s.keyPrefix) || time.Since(u.Initiated) < olderThan {
				continue
			}
			err := s.retry(ctx, "abort upload of", strings.TrimPrefix(u.Key, s.keyPrefix), s.cfg.RetryBudget, func(ctx context.Context) error {
				err := s.core.AbortMultipartUpload(ctx, s.cfg.Bucket, u.Key, u.UploadID)
				if s3Code(err) == "NoSuchUpload" {
					return nil
				}
				return err
			})
			if err != nil {
				return n, err
			}
			n++
		}
		if !res.IsTruncated || res.NextKeyMarker == "" && res.NextUploadIDMarker == "" ||
			res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker {
			return n, nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}

// multipartETag is the ETag S3 gives an object assembled from parts with
// these MD5s.
func multipartETag(sums [][16]byte) string {
	h := md5.New()
	for _, s := range sums {
		h.Write(s[:])
	}
	return fmt.Sprintf("%s-%d", hex.EncodeToString(h.Sum(nil)), len(sums))
}
