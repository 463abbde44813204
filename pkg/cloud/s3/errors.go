package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// Sentinel errors, for errors.Is, so the CLI can pick exit codes and
// hints. Errors returned by a Store wrap at most one of them (or
// cloud.ErrNotFound / cloud.ErrNoRepository) together with the underlying
// error, and print as one line.
var (
	// ErrAccessDenied: the credentials are wrong or lack permission
	// (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, 403).
	ErrAccessDenied = errors.New("access denied")
	// ErrWrongRegion: the bucket lives in another region than the one
	// requests were signed for (AuthorizationHeaderMalformed,
	// PermanentRedirect, 301).
	ErrWrongRegion = errors.New("wrong region")
	// ErrClockSkew: the server rejected the request time
	// (RequestTimeTooSkewed).
	ErrClockSkew = errors.New("clock skew")
	// ErrTLS: the TLS connection could not be established (untrusted or
	// mismatched certificate, or a server that does not speak TLS).
	ErrTLS = errors.New("TLS failure")
	// ErrUnreachable: no connection to the server (refused, reset, DNS
	// failure, timeout) even after retrying.
	ErrUnreachable = errors.New("S3 server unreachable")
	// ErrNoCredentials: none of the credential sources had a key.
	ErrNoCredentials = errors.New("no S3 credentials")
)

// opError is every error a Store returns for a failed request.
type opError struct {
	op, name string
	kind     error // a sentinel, or nil
	msg      string
	err      error // the underlying error, or nil
}

func (e *opError) Error() string {
	s := "s3 " + e.op
	if e.name != "" {
		s += " " + e.name
	}
	return oneLine(s + ": " + e.msg)
}

func (e *opError) Unwrap() []error {
	var out []error
	if e.kind != nil {
		out = append(out, e.kind)
	}
	if e.err != nil {
		out = append(out, e.err)
	}
	return out
}

func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n\t") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

// failure is what classify makes of an error.
type failure struct {
	kind  error // sentinel or nil
	msg   string
	retry bool // transient: worth another attempt
}

// S3 error codes worth retrying: throttling, server trouble, and damage in
// transit (we still hold the data, so BadDigest is the network's fault).
var retryableCodes = map[string]bool{
	"InternalError": true, "ServiceUnavailable": true, "SlowDown": true, "SlowDownRead": true,
	"SlowDownWrite": true, "Throttling": true, "ThrottlingException": true,
	"RequestLimitExceeded": true, "RequestThrottled": true, "TooManyRequests": true,
	"RequestTimeout": true, "RequestError": true, "BadDigest": true, "IncompleteBody": true,
	"XAmzContentSHA256Mismatch": true, "OperationAborted": true,
}

var accessDeniedCodes = map[string]bool{
	"AccessDenied": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"AllAccessDisabled": true, "AccountProblem": true, "InvalidToken": true,
	"ExpiredToken": true, "InvalidSecurity": true, "NotSignedUp": true,
	"XAdminUserNotFound": true, // versitygw: unknown access key
}

// expectingRegion finds the region in AWS's (and versitygw's) message
// "… the region 'us-east-1' is wrong; expecting 'eu-west-1'".
var expectingRegion = regexp.MustCompile(`expecting '([A-Za-z0-9_-]+)'`)

// classify maps an error from minio-go or the network to a sentinel, a
// one-line message and whether retrying may help. host and region are for
// the messages.
func classify(err error, host, bucket, region string) failure {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return failure{msg: err.Error()}
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return classifyResponse(er, host, bucket, region)
	}
	unreachable := func(what string, retry bool) failure {
		return failure{kind: ErrUnreachable, msg: fmt.Sprintf("cannot reach S3 server %s: %s", host, what), retry: retry}
	}

	// TLS: never retried, the next attempt would meet the same certificate.
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostErr x509.HostnameError
	var verr *tls.CertificateVerificationError
	var rhe tls.RecordHeaderError
	switch {
	case errors.As(err, &hostErr):
		return failure{kind: ErrTLS, msg: fmt.Sprintf("TLS: the certificate of %s is not valid for that name: %v", host, hostErr)}
	case errors.As(err, &unknownCA), errors.As(err, &verr):
		return failure{kind: ErrTLS, msg: "TLS: certificate not trusted; use --cacert FILE"}
	case errors.As(err, &invalid):
		return failure{kind: ErrTLS, msg: fmt.Sprintf("TLS: certificate of %s is invalid (%v); use --cacert FILE if it is self-signed", host, invalid)}
	case errors.As(err, &rhe), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return failure{kind: ErrTLS, msg: fmt.Sprintf("TLS: %s does not speak TLS; use an s3:http://%s/… address", host, host)}
	}

	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return unreachable(fmt.Sprintf("cannot resolve %s: %s", dnsErr.Name, dnsErr.Err), dnsErr.IsTemporary || dnsErr.IsTimeout)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return unreachable("connection refused", true)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED):
		return unreachable("connection reset by peer", true)
	case errors.Is(err, syscall.EPIPE):
		return unreachable("connection closed by the server (broken pipe)", true)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ETIMEDOUT):
		return unreachable(errors.Unwrap(err).Error(), true)
	case errors.Is(err, net.ErrClosed):
		return unreachable("connection closed unexpectedly", true)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return unreachable("no data for too long (idle timeout)", true)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		strings.Contains(err.Error(), "Connection closed by foreign host"),
		strings.Contains(err.Error(), "server closed idle connection"):
		return unreachable("connection closed unexpectedly", true)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return unreachable("timed out", true)
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return unreachable(oe.Err.Error(), true)
	}
	return failure{msg: err.Error()}
}

func classifyResponse(er minio.ErrorResponse, host, bucket, region string) failure {
	code := er.Code
	msg := er.Message
	if msg == "" {
		msg = code
	} else if code != "" && !strings.Contains(er.Message, code) {
		msg = code + ": " + msg
	}
	switch {
	case code == "NoSuchKey" || code == "NotFound" && er.Key != "":
		return failure{kind: cloud.ErrNotFound, msg: "object not found"}
	case code == "NoSuchBucket":
		return failure{kind: cloud.ErrNoRepository, msg: fmt.Sprintf("bucket %s does not exist", bucket)}
	case code == "RequestTimeTooSkewed":
		return failure{kind: ErrClockSkew, msg: "clock skew: this machine's clock differs from the server's by more than 15 minutes"}
	case code == "AuthorizationHeaderMalformed" || code == "PermanentRedirect" || code == "InvalidRegion" ||
		code == "IllegalLocationConstraintException" || er.StatusCode == http.StatusMovedPermanently:
		if er.Region == "" {
			if m := expectingRegion.FindStringSubmatch(er.Message); m != nil {
				er.Region = m[1]
			}
		}
		m := "wrong region"
		if region != "" {
			m += " " + region
		}
		if er.Region != "" && er.Region != region {
			m += fmt.Sprintf(": bucket %s is in region %s; use --s3-region %s", bucket, er.Region, er.Region)
		} else {
			m += fmt.Sprintf(" for bucket %s (%s); set the bucket's region with --s3-region", bucket, msg)
		}
		return failure{kind: ErrWrongRegion, msg: m}
	case accessDeniedCodes[code] || er.StatusCode == http.StatusForbidden:
		hint := ""
		switch code {
		case "InvalidAccessKeyId", "SignatureDoesNotMatch":
			hint = " (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
		case "ExpiredToken":
			hint = " (the session token has expired)"
		}
		return failure{kind: ErrAccessDenied, msg: "access denied: " + msg + hint}
	case retryableCodes[code] || er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests ||
		er.StatusCode == http.StatusRequestTimeout:
		return failure{msg: fmt.Sprintf("server %s: %s", host, msg), retry: true}
	}
	return failure{msg: msg}
}

// s3Code returns the S3 error code in err, if any.
func s3Code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}
