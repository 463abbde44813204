package s3

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Query parameters of an S3 repository address. The CLI sets them from its
// --s3-* flags; users may also write them into the address.
const (
	ParamRegion       = "region"        // bucket region, e.g. eu-west-1 (default: discovered)
	ParamInsecure     = "insecure"      // 1: plain HTTP instead of HTTPS (s3:// form)
	ParamLookup       = "lookup"        // auto (default), path or dns (alias: virtual)
	ParamCACert       = "cacert"        // PEM file with extra trusted CA certificates
	ParamConnections  = "connections"   // requests in flight (default 4)
	ParamPartSize     = "part-size"     // multipart part size: bytes or with KiB/MiB/GiB (default 16MiB)
	ParamCreateBucket = "create-bucket" // 1: create the bucket if missing (init only)
	ParamRetryBudget  = "retry-budget"  // time one request may spend retrying, e.g. 2m (default)
	ParamIdleTimeout  = "idle-timeout"  // a connection silent this long is abandoned, e.g. 60s (default)
)

var knownParams = []string{ParamRegion, ParamInsecure, ParamLookup, ParamCACert, ParamConnections,
	ParamPartSize, ParamCreateBucket, ParamRetryBudget, ParamIdleTimeout}

// ParseURL parses an S3 repository address into a Config. cloud.Open
// handles "s3://…" and "s3:http(s)://…" itself (through the registered
// opener); the CLI calls ParseURL for every address starting with "s3:" so
// that restic's short form works too. Accepted forms:
//
//	s3://HOST[:PORT]/BUCKET[/PREFIX][?OPTIONS]         HTTPS (plain HTTP with insecure=1)
//	s3:https://HOST[:PORT]/BUCKET[/PREFIX][?OPTIONS]   HTTPS
//	s3:http://HOST[:PORT]/BUCKET[/PREFIX][?OPTIONS]    plain HTTP
//	s3:HOST[:PORT]/BUCKET[/PREFIX][?OPTIONS]           HTTPS (restic's short form)
//
// OPTIONS are the Param* query parameters. Credentials are never taken
// from the address (see New). Defaults are left as zero values; New fills
// them in.
func ParseURL(raw string) (Config, error) {
	bad := func(format string, a ...any) (Config, error) {
		return Config{}, fmt.Errorf("bad S3 address %q: %s", raw, fmt.Sprintf(format, a...))
	}
	var rest string
	secure := true
	explicitScheme := false
	switch {
	case strings.HasPrefix(raw, "s3://"):
		rest = strings.TrimPrefix(raw, "s3://")
	case strings.HasPrefix(raw, "s3:https://"):
		rest, explicitScheme = strings.TrimPrefix(raw, "s3:https://"), true
	case strings.HasPrefix(raw, "s3:http://"):
		rest, secure, explicitScheme = strings.TrimPrefix(raw, "s3:http://"), false, true
	case strings.HasPrefix(raw, "s3:") && !strings.Contains(raw, "://"):
		rest = strings.TrimPrefix(raw, "s3:")
	default:
		return bad("want s3://HOST/BUCKET[/PREFIX], s3:http://HOST:PORT/BUCKET[/PREFIX] or s3:https://…")
	}
	u, err := url.Parse("s3://" + rest)
	if err != nil {
		return bad("%v", unwrapURLError(err))
	}
	if u.Fragment != "" || strings.Contains(rest, "#") {
		return bad("a '#' is not allowed")
	}
	cfg, err := fromParts(u, secure, explicitScheme)
	if err != nil {
		return bad("%v", err)
	}
	return cfg, nil
}

// ConfigFromURL builds a Config from the URL cloud.ParseLocation made of
// an "s3://…" or "s3:http(s)://…" address (the latter arrives with the
// rest of the address in u.Opaque).
func ConfigFromURL(u *url.URL) (Config, error) {
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("not an S3 address: %s", u.Redacted())
	}
	if u.Opaque != "" {
		raw := "s3:" + u.Opaque
		if u.RawQuery != "" || u.ForceQuery {
			raw += "?" + u.RawQuery
		}
		return ParseURL(raw)
	}
	// Re-parse the canonical text: the fields of u alone would bypass the
	// checks ParseURL makes on the raw address.
	return ParseURL(u.String())
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func fromParts(u *url.URL, secure, explicitScheme bool) (Config, error) {
	if u.User != nil {
		return Config{}, errors.New("credentials in the address are not accepted; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
	}
	if u.Host == "" {
		return Config{}, errors.New("no host")
	}
	if err := checkHost(u.Host); err != nil {
		return Config{}, err
	}
	cfg := Config{Endpoint: u.Host, Secure: secure}
	p := strings.TrimPrefix(u.Path, "/")
	bucket, prefix, _ := strings.Cut(p, "/")
	if bucket == "" {
		return Config{}, errors.New("no bucket")
	}
	if err := s3utils.CheckValidBucketName(bucket); err != nil {
		return Config{}, fmt.Errorf("bucket name %q: %v", bucket, err)
	}
	cfg.Bucket = bucket
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix != "" {
		if err := checkPrefix(prefix); err != nil {
			return Config{}, err
		}
	}
	cfg.Prefix = prefix

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("options: %v", err)
	}
	for k, v := range q {
		if len(v) != 1 {
			return Config{}, fmt.Errorf("option %q given %d times", k, len(v))
		}
		val := v[0]
		switch k {
		case ParamRegion:
			if !validRegion(val) {
				return Config{}, fmt.Errorf("region %q: want letters, digits and '-'", val)
			}
			cfg.Region = val
		case ParamInsecure, "insecure-http":
			on, err := parseBool(val)
			if err != nil {
				return Config{}, fmt.Errorf("%s: %v", k, err)
			}
			if on && explicitScheme && secure {
				return Config{}, fmt.Errorf("%s=%s contradicts https://", k, val)
			}
			if on {
				cfg.Secure = false
			}
		case ParamLookup:
			switch val {
			case "auto", "path", "dns":
				cfg.Lookup = val
			case "virtual":
				cfg.Lookup = "dns"
			default:
				return Config{}, fmt.Errorf("lookup %q: want auto, path or dns", val)
			}
		case ParamCACert:
			if val == "" || strings.ContainsAny(val, "\x00\n\r") {
				return Config{}, fmt.Errorf("cacert: bad file name %q", val)
			}
			cfg.CACertFile = val
		case ParamConnections:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > maxConnections {
				return Config{}, fmt.Errorf("connections %q: want 1 to %d", val, maxConnections)
			}
			cfg.Connections = n
		case ParamPartSize:
			n, err := parseSize(val)
			if err != nil {
				return Config{}, fmt.Errorf("part-size: %v", err)
			}
			if n < minPartSize || n > maxPartSize {
				return Config{}, fmt.Errorf("part-size %s: want 5MiB to 5GiB", val)
			}
			cfg.PartSize = n
		case ParamCreateBucket:
			on, err := parseBool(val)
			if err != nil {
				return Config{}, fmt.Errorf("%s: %v", k, err)
			}
			cfg.CreateBucket = on
		case ParamRetryBudget, ParamIdleTimeout:
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 || d > 24*time.Hour {
				return Config{}, fmt.Errorf("%s %q: want a duration such as 30s or 2m", k, val)
			}
			if k == ParamRetryBudget {
				cfg.RetryBudget = d
			} else {
				cfg.IdleTimeout = d
			}
		default:
			return Config{}, fmt.Errorf("unknown option %q (known: %s)", k, strings.Join(knownParams, ", "))
		}
	}
	return cfg, nil
}

func checkHost(host string) error {
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		// no port
		h, port = host, ""
		if strings.HasPrefix(h, "[") || strings.Contains(h, ":") {
			return fmt.Errorf("bad host %q", host)
		}
	} else {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strings.HasPrefix(port, "0") || strings.HasPrefix(port, "+") {
			return fmt.Errorf("bad port %q", port)
		}
	}
	if h == "" {
		return errors.New("no host")
	}
	if ip := net.ParseIP(h); ip != nil {
		if strings.Contains(h, ":") && !strings.HasPrefix(host, "[") {
			return fmt.Errorf("bad host %q: write IPv6 addresses in brackets", host)
		}
		return nil
	}
	if len(h) > 253 {
		return fmt.Errorf("host name %q too long", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("bad host name %q", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad host name %q", h)
			}
		}
	}
	return nil
}

// checkPrefix accepts slash-separated segments of [A-Za-z0-9._~-], none
// empty or ".", and (like cloud.ValidName) no ".." anywhere.
func checkPrefix(prefix string) error {
	if strings.Contains(prefix, "..") {
		return fmt.Errorf("bad prefix %q: '..' is not allowed", prefix)
	}
	for _, seg := range strings.Split(prefix, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("bad prefix %q: empty, '.' or '..' path segment", prefix)
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '~' || c == '-') {
				return fmt.Errorf("bad prefix %q: only letters, digits and . _ ~ - are allowed", prefix)
			}
		}
	}
	if len(prefix) > 512 {
		return fmt.Errorf("prefix too long (%d bytes)", len(prefix))
	}
	return nil
}

func validRegion(r string) bool {
	if r == "" || len(r) > 64 {
		return false
	}
	for _, c := range r {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not 1 or 0", s)
}

// parseSize reads "16777216", "16MiB", "16M", "512KiB", "1GiB" (binary units).
func parseSize(s string) (uint64, error) {
	num := strings.TrimRight(s, "KMGiBkmgb")
	unit := strings.ToLower(s[len(num):])
	var mul uint64
	switch unit {
	case "", "b":
		mul = 1
	case "k", "kib", "kb":
		mul = 1 << 10
	case "m", "mib", "mb":
		mul = 1 << 20
	case "g", "gib", "gb":
		mul = 1 << 30
	default:
		return 0, fmt.Errorf("%q: unknown unit", s)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || num == "" || n > (1<<40)/mul {
		return 0, fmt.Errorf("%q: want a size such as 16MiB", s)
	}
	return n * mul, nil
}

func formatSize(n uint64) string {
	switch {
	case n%(1<<30) == 0:
		return strconv.FormatUint(n>>30, 10) + "GiB"
	case n%(1<<20) == 0:
		return strconv.FormatUint(n>>20, 10) + "MiB"
	case n%(1<<10) == 0:
		return strconv.FormatUint(n>>10, 10) + "KiB"
	}
	return strconv.FormatUint(n, 10)
}

// String renders the configuration as an address ParseURL reads back to
// the same Config (credentials are never part of it).
func (c Config) String() string {
	q := url.Values{}
	if c.Region != "" {
		q.Set(ParamRegion, c.Region)
	}
	if c.Lookup != "" {
		q.Set(ParamLookup, c.Lookup)
	}
	if c.CACertFile != "" {
		q.Set(ParamCACert, c.CACertFile)
	}
	if c.Connections != 0 {
		q.Set(ParamConnections, strconv.Itoa(c.Connections))
	}
	if c.PartSize != 0 {
		q.Set(ParamPartSize, formatSize(c.PartSize))
	}
	if c.CreateBucket {
		q.Set(ParamCreateBucket, "1")
	}
	if c.RetryBudget != 0 {
		q.Set(ParamRetryBudget, c.RetryBudget.String())
	}
	if c.IdleTimeout != 0 {
		q.Set(ParamIdleTimeout, c.IdleTimeout.String())
	}
	s := c.location()
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// location is the address without options: s3://HOST/BUCKET/PREFIX for
// HTTPS, s3:http://HOST/BUCKET/PREFIX for plain HTTP.
func (c Config) location() string {
	p := c.Bucket
	if c.Prefix != "" {
		p += "/" + c.Prefix
	}
	if c.Secure {
		return "s3://" + c.Endpoint + "/" + p
	}
	return "s3:http://" + c.Endpoint + "/" + p
}
