package gdrive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// transport authorises every request and retries the ones Drive asks us
// to retry. The generated client retries only resumable-upload chunks (on
// 5xx, 429, 408 and some connection errors, never on 403 rate limits), and
// sends every other call exactly once, so this is where create, list, get,
// delete and the chunks' 403s get their second chance.
//
// Retried: connection errors, 408, 429, every 5xx, and 403 with reason
// rateLimitExceeded or userRateLimitExceeded — except the daily upload cap
// (userRateLimitExceeded with the message "User rate limit exceeded." on an
// upload request), which no amount of waiting within a backup fixes.
// Backoff is truncated exponential with jitter, as Google's limits page
// prescribes (1 s + random ms, 2 s + …, capped at maxWait), at least as
// long as a Retry-After header asks, and only within budget per request.
// A 401 makes the token source drop the access token and the request is
// sent once more with a fresh one. Requests whose body cannot be replayed
// (no GetBody, and not a small body of known length, which is buffered)
// are sent once.
type transport struct {
	base    http.RoundTripper
	ts      oauth2.TokenSource
	budget  time.Duration
	minWait time.Duration
	maxWait time.Duration
	// progress is the run-wide retry budget (cloud.Progress): a request is
	// not retried once the store has gone that long without a success.
	progress *cloud.Progress
}

// maxReplayBody is the largest request body without GetBody that
// RoundTrip buffers so that it can send it again (metadata JSON is far
// smaller).
const maxReplayBody = 1 << 20

// invalidator is implemented by token sources that can be told an access
// token was refused.
type invalidator interface{ invalidate(accessToken string) }

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	getBody := req.GetBody
	if getBody == nil && req.Body != nil && req.Body != http.NoBody && req.ContentLength > 0 && req.ContentLength <= maxReplayBody {
		// The generated client sets GetBody to nil on calls without media
		// (files.create of a folder, files.update), although their JSON
		// body is a buffer: keep a copy so they can be sent again.
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	replayable := req.Body == nil || req.Body == http.NoBody || getBody != nil
	buffered := getBody != nil && req.GetBody == nil
	upload := strings.Contains(req.URL.Path, "/upload/")
	deadline := time.Now().Add(t.budget)
	authRetried := false
	sends := 0
	closeBody := func() {
		if sends == 0 && req.Body != nil && !buffered {
			req.Body.Close()
		}
	}
	for attempt := 0; ; attempt++ {
		tok, err := t.ts.Token()
		if err != nil {
			if !retryableErr(err) || !replayable || !sleepWithin(ctx, deadline, t.backoff(attempt)) {
				closeBody()
				return nil, err
			}
			continue
		}
		r := req.Clone(ctx)
		if (sends > 0 || buffered) && getBody != nil {
			if r.Body, err = getBody(); err != nil {
				return nil, err
			}
		}
		sends++
		tok.SetAuthHeader(r)
		resp, err := t.base.RoundTrip(r)
		if err == nil && (resp.StatusCode < 400 || resp.StatusCode == http.StatusNotFound) {
			t.progress.Done() // the service did what was asked (or said there is no such file)
		}
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil || !retryableErr(err) || !replayable {
				return nil, err
			}
		case resp.StatusCode == http.StatusUnauthorized && !authRetried && replayable:
			inv, ok := t.ts.(invalidator)
			if !ok {
				return resp, nil
			}
			authRetried = true
			discard(resp)
			inv.invalidate(tok.AccessToken)
			attempt-- // not a failure: no backoff
			continue
		default:
			var retry bool
			retry, resp = classify(resp, upload)
			if !retry || !replayable {
				return resp, nil
			}
			wait = retryAfter(resp.Header)
		}
		d := t.backoff(attempt)
		if wait > d {
			d = wait
		}
		since, stalled := t.progress.Exhausted(d)
		if stalled && err != nil {
			return nil, fmt.Errorf("%w (%s)", err, t.progress.GaveUp(since))
		}
		if time.Now().Add(d).After(deadline) || stalled {
			return resp, err // out of budget: the caller sees the last answer
		}
		if resp != nil {
			discard(resp)
		}
		if !sleepWithin(ctx, deadline, d) {
			return nil, ctx.Err()
		}
	}
}

func (t *transport) backoff(attempt int) time.Duration {
	d := t.maxWait
	if attempt < 30 && t.minWait<<attempt < t.maxWait {
		d = t.minWait << attempt
	}
	return d + rand.N(t.minWait) // jitter: up to one base interval
}

// sleepWithin sleeps d unless that passes the deadline or ctx ends first.
func sleepWithin(ctx context.Context, deadline time.Time, d time.Duration) bool {
	if ctx.Err() != nil || time.Now().Add(d).After(deadline) {
		return false
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

// retryableErr reports whether a transport (or token refresh) error is
// worth retrying: network trouble, not a refusal.
func retryableErr(err error) bool {
	if errors.Is(err, ErrNotLoggedIn) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.Response != nil && (re.Response.StatusCode >= 500 || re.Response.StatusCode == 429)
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "server closed") || strings.Contains(err.Error(), "connection reset")
}

// apiErrorBody is Google's JSON error shape.
type apiErrorBody struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Errors  []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"errors"`
	} `json:"error"`
}

// uploadCapMessage is how Drive words the daily upload cap
// (labbots/google-drive-upload#192; rclone's --drive-stop-on-upload-limit
// matches the same string). An ordinary rate limit says "User Rate Limit
// Exceeded. Rate of requests for user exceed configured project quota…".
const uploadCapMessage = "User rate limit exceeded."

// classify decides whether resp is worth retrying. For 403s it reads the
// body and puts it back.
func classify(resp *http.Response, upload bool) (bool, *http.Response) {
	switch c := resp.StatusCode; {
	case c == 408 || c == 429 || c >= 500:
		return true, resp
	case c != 403:
		return false, resp
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var e apiErrorBody
	if json.Unmarshal(body, &e) != nil || len(e.Error.Errors) == 0 {
		return false, resp
	}
	reason, msg := e.Error.Errors[0].Reason, e.Error.Errors[0].Message
	switch reason {
	case "rateLimitExceeded":
		return true, resp
	case "userRateLimitExceeded":
		return !(upload && isCapMessage(msg, e.Error.Message)), resp
	}
	return false, resp
}

func isCapMessage(msgs ...string) bool {
	for _, m := range msgs {
		if strings.TrimSpace(m) == uploadCapMessage {
			return true
		}
	}
	return false
}

// retryAfter parses a Retry-After header (seconds or an HTTP date).
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
