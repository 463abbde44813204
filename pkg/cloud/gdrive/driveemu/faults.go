package driveemu

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Fault is what an injected failure looks like on the wire.
type Fault string

// Faults.
const (
	// FaultRateLimit is 403 usageLimits/userRateLimitExceeded "User Rate
	// Limit Exceeded. …" — the per-user quota answer.
	FaultRateLimit Fault = "rateLimit"
	// FaultProjectRateLimit is 403 usageLimits/rateLimitExceeded.
	FaultProjectRateLimit Fault = "projectRateLimit"
	// FaultTooManyRequests is 429 usageLimits/rateLimitExceeded.
	FaultTooManyRequests Fault = "429"
	// FaultServerError is 500 global/backendError.
	FaultServerError Fault = "500"
	// FaultBadGateway is 502 global/backendError.
	FaultBadGateway Fault = "502"
	// FaultUnavailable is 503 global/backendError.
	FaultUnavailable Fault = "503"
	// FaultDrop cuts the TCP connection (RST) after reading half of the
	// request body — or, for downloads, after sending half of the
	// response body. Nothing of a cut request is stored.
	FaultDrop Fault = "drop"
	// FaultUploadCap is the daily upload cap answer: 403
	// usageLimits/userRateLimitExceeded "User rate limit exceeded.".
	FaultUploadCap Fault = "uploadCap"
	// FaultStorageQuota is 403 usageLimits/storageQuotaExceeded.
	FaultStorageQuota Fault = "storageQuota"
	// FaultUnauthorized is 401 global/authError "Invalid Credentials".
	FaultUnauthorized Fault = "401"
)

// Rule injects a fault into matching requests: the first After matching
// requests pass, the next Count fail (Count <= 0: all following ones).
type Rule struct {
	Op    Op    `json:"op"`
	Fault Fault `json:"fault"`
	After int   `json:"after"`
	Count int   `json:"count"`
	// RetryAfter, if positive, is sent as a Retry-After header (seconds,
	// rounded up).
	RetryAfter time.Duration `json:"retryAfter"`
}

type ruleState struct {
	Rule
	seen, fired int
}

// Inject adds fault rules.
func (s *Server) Inject(rules ...Rule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rules {
		s.rules = append(s.rules, &ruleState{Rule: r})
	}
}

// ClearFaults removes every fault rule.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.rules = nil
	s.mu.Unlock()
}

// FailNext makes the next k requests of class op fail with f.
func (s *Server) FailNext(op Op, f Fault, k int) {
	s.Inject(Rule{Op: op, Fault: f, Count: k})
}

// Fired returns how many requests were failed by rules so far.
func (s *Server) Fired() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.rules {
		n += r.fired
	}
	return n
}

// fault counts the request and, if a rule fires, answers it and reports
// true.
func (s *Server) fault(w http.ResponseWriter, r *http.Request, op Op) bool {
	s.mu.Lock()
	s.calls[op]++
	var hit *ruleState
	for _, rs := range s.rules {
		if rs.Op != OpAny && rs.Op != op {
			continue
		}
		if rs.Count > 0 && rs.fired >= rs.Count {
			continue
		}
		rs.seen++
		if rs.seen <= rs.After {
			continue
		}
		if hit == nil { // one fault per request; the first matching rule wins
			rs.fired++
			hit = rs
		}
	}
	if hit != nil && hit.Fault == FaultDrop && op != OpDownload {
		s.dropped[op]++
	}
	s.mu.Unlock()
	if hit == nil {
		return false
	}
	if hit.Fault == FaultDrop {
		if op == OpDownload {
			// handled when the body is written
			r.Header.Set("X-Emu-Drop", "1")
			return false
		}
		dropConn(w, r)
		return true
	}
	drain(r)
	e := faultError(hit.Fault)
	if hit.RetryAfter > 0 {
		e.header = map[string]string{"Retry-After": strconv.Itoa(int((hit.RetryAfter + time.Second - 1) / time.Second))}
	}
	if op == OpToken || op == OpRevoke || op == OpAuth {
		// the OAuth server speaks RFC 6749, not the API error shape
		if e.Code >= 500 {
			http.Error(w, "temporarily unavailable", e.Code)
		} else {
			writeJSON(w, e.Code, map[string]string{"error": "temporarily_unavailable", "error_description": e.Message})
		}
		return true
	}
	writeError(w, e)
	return true
}

func faultError(f Fault) *apiError {
	switch f {
	case FaultRateLimit:
		return errUserRateLimit()
	case FaultProjectRateLimit:
		return &apiError{Code: 403, Domain: "usageLimits", Reason: "rateLimitExceeded", Message: "Rate Limit Exceeded"}
	case FaultTooManyRequests:
		return &apiError{Code: 429, Domain: "usageLimits", Reason: "rateLimitExceeded", Message: "Rate Limit Exceeded"}
	case FaultServerError:
		return &apiError{Code: 500, Domain: "global", Reason: "backendError", Message: "Backend Error"}
	case FaultBadGateway:
		return &apiError{Code: 502, Domain: "global", Reason: "backendError", Message: "Bad Gateway"}
	case FaultUnavailable:
		return &apiError{Code: 503, Domain: "global", Reason: "backendError", Message: "Service Unavailable"}
	case FaultUploadCap:
		return errUploadCap()
	case FaultStorageQuota:
		return errStorageQuota()
	case FaultUnauthorized:
		return errInvalidCredentials()
	}
	return &apiError{Code: 500, Domain: "global", Reason: "internalError", Message: fmt.Sprintf("unknown fault %q", f)}
}

// dropConn reads half of the request body and resets the connection.
func dropConn(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > 0 {
		io.CopyN(io.Discard, r.Body, r.ContentLength/2)
	} else {
		io.CopyN(io.Discard, r.Body, 64<<10)
	}
	resetConn(w)
}

func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST instead of FIN
	}
	conn.Close()
}

// dropDownload implements FaultDrop for alt=media: half the body, then a
// reset.
func (s *Server) dropDownload(w http.ResponseWriter, r *http.Request, body []byte, code int) bool {
	if r.Header.Get("X-Emu-Drop") == "" {
		return false
	}
	s.mu.Lock()
	s.dropped[OpDownload]++
	s.mu.Unlock()
	w.WriteHeader(code)
	io.Copy(w, bytes.NewReader(body[:len(body)/2]))
	http.NewResponseController(w).Flush()
	resetConn(w)
	return true
}
