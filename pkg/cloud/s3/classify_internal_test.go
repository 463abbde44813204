package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/wabackup/wabackup/internal/testservers"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// TestClassify covers the mappings the real-server tests cannot provoke
// (a skewed clock, AWS's redirects, throttling codes).
func TestClassify(t *testing.T) {
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	urlErr := func(err error) error { return &url.Error{Op: "Put", URL: "http://h/b/k", Err: err} }
	for _, c := range []struct {
		err   error
		kind  error
		retry bool
		msg   string
	}{
		{minio.ErrorResponse{Code: "RequestTimeTooSkewed", StatusCode: 403, Message: "The difference between the request time and the server's time is too large."},
			ErrClockSkew, false, "clock skew: this machine's clock differs from the server's by more than 15 minutes"},
		{minio.ErrorResponse{Code: "AuthorizationHeaderMalformed", StatusCode: 400, Region: "eu-west-1",
			Message: "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'"},
			ErrWrongRegion, false, "bucket bkt is in region eu-west-1; use --s3-region eu-west-1"},
		{minio.ErrorResponse{Code: "PermanentRedirect", StatusCode: 301, Region: "ap-south-1"},
			ErrWrongRegion, false, "use --s3-region ap-south-1"},
		{minio.ErrorResponse{Code: "301 Moved Permanently", StatusCode: 301},
			ErrWrongRegion, false, "set the bucket's region with --s3-region"},
		{minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403, Message: "Access Denied"}, ErrAccessDenied, false, "access denied: AccessDenied: Access Denied"},
		{minio.ErrorResponse{Code: "InvalidAccessKeyId", StatusCode: 403}, ErrAccessDenied, false, "check AWS_ACCESS_KEY_ID"},
		{minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404}, cloud.ErrNoRepository, false, "bucket bkt does not exist"},
		{minio.ErrorResponse{Code: "NoSuchKey", StatusCode: 404}, cloud.ErrNotFound, false, "object not found"},
		{minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, nil, true, "SlowDown"},
		{minio.ErrorResponse{Code: "503 Service Unavailable", StatusCode: 503}, nil, true, "503"},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, nil, true, "InternalError"},
		{minio.ErrorResponse{Code: "TooManyRequests", StatusCode: 429}, nil, true, ""},
		{minio.ErrorResponse{Code: "BadDigest", StatusCode: 400}, nil, true, "BadDigest"},
		{minio.ErrorResponse{Code: "InvalidArgument", StatusCode: 400, Message: "bad"}, nil, false, "InvalidArgument: bad"},
		{fmt.Errorf("wrapped: %w", minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}), nil, true, "SlowDown"},

		{urlErr(opErr(os.NewSyscallError("connect", syscall.ECONNREFUSED))), ErrUnreachable, true, "cannot reach S3 server h:1: connection refused"},
		{urlErr(opErr(os.NewSyscallError("read", syscall.ECONNRESET))), ErrUnreachable, true, "connection reset by peer"},
		{urlErr(opErr(os.NewSyscallError("write", syscall.EPIPE))), ErrUnreachable, true, "broken pipe"},
		{urlErr(opErr(os.NewSyscallError("connect", syscall.ENETUNREACH))), ErrUnreachable, true, "network is unreachable"},
		{urlErr(&net.DNSError{Err: "no such host", Name: "h", IsNotFound: true}), ErrUnreachable, false, "cannot resolve h"},
		{urlErr(&net.DNSError{Err: "server misbehaving", Name: "h", IsTemporary: true}), ErrUnreachable, true, "cannot resolve h"},
		{urlErr(opErr(os.ErrDeadlineExceeded)), ErrUnreachable, true, "idle timeout"},
		{urlErr(io.ErrUnexpectedEOF), ErrUnreachable, true, "closed unexpectedly"},
		{urlErr(errors.New("Connection closed by foreign host http://h/b/k. Retry again.")), ErrUnreachable, true, "closed unexpectedly"},
		{urlErr(x509.UnknownAuthorityError{}), ErrTLS, false, "TLS: certificate not trusted; use --cacert FILE"},
		{urlErr(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "h"}), ErrTLS, false, "not valid for that name"},
		{urlErr(x509.CertificateInvalidError{Reason: x509.Expired}), ErrTLS, false, "invalid"},
		{urlErr(errors.New("http: server gave HTTP response to HTTPS client")), ErrTLS, false, "does not speak TLS"},

		{context.Canceled, nil, false, "context canceled"},
		{errors.New("something else"), nil, false, "something else"},
	} {
		f := classify(c.err, "h:1", "bkt", "us-east-1")
		if f.kind != c.kind || f.retry != c.retry || !strings.Contains(f.msg, c.msg) {
			t.Errorf("classify(%v) = %+v; want kind %v, retry %v, message containing %q", c.err, f, c.kind, c.retry, c.msg)
		}
		e := &opError{op: "put", name: "data/x", kind: f.kind, msg: f.msg, err: c.err}
		if c.kind != nil && !errors.Is(e, c.kind) {
			t.Errorf("%v does not match its sentinel", e)
		}
		if !errors.Is(e, c.err) && !errors.Is(e, errors.Unwrap(c.err)) {
			t.Errorf("%v does not wrap the original error", e)
		}
		if strings.ContainsAny(e.Error(), "\r\n") {
			t.Errorf("multi-line message: %q", e.Error())
		}
	}
}

// TestMultipartETag checks the ETag Put predicts for a multipart object
// (used to recognise a completion whose answer was lost) against the one
// the server gives.
func TestMultipartETag(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	st, err := New(context.Background(), Config{Endpoint: srv.Endpoint, Bucket: "etags", CreateBucket: true,
		PartSize: minPartSize, Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), (12<<20)/16+1000) // 3 parts: 5+5+2 MiB
	if err := st.Put(context.Background(), "obj", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	var sums [][16]byte
	for off := 0; off < len(data); off += minPartSize {
		sum := md5.Sum(data[off:min(off+minPartSize, len(data))])
		sums = append(sums, sum)
	}
	oi, err := st.client.StatObject(context.Background(), "etags", "obj", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := multipartETag(sums); oi.ETag != want {
		t.Errorf("server ETag %q, predicted %q", oi.ETag, want)
	}
}
