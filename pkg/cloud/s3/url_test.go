package s3_test

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		in   string
		want s3.Config
		err  string // substring of the error; "" = must succeed
	}{
		{in: "s3://s3.amazonaws.com/bucket", want: s3.Config{Endpoint: "s3.amazonaws.com", Secure: true, Bucket: "bucket"}},
		{in: "s3://minio.local:9000/backups/host1/", want: s3.Config{Endpoint: "minio.local:9000", Secure: true, Bucket: "backups", Prefix: "host1"}},
		{in: "s3://10.0.0.1:9000/bkt/a/b/c?insecure=1", want: s3.Config{Endpoint: "10.0.0.1:9000", Bucket: "bkt", Prefix: "a/b/c"}},
		{in: "s3:http://127.0.0.1:7070/bkt/repo", want: s3.Config{Endpoint: "127.0.0.1:7070", Bucket: "bkt", Prefix: "repo"}},
		{in: "s3:https://[::1]:7070/bkt", want: s3.Config{Endpoint: "[::1]:7070", Secure: true, Bucket: "bkt"}},
		{in: "s3:s3.eu-west-1.amazonaws.com/bkt/x", want: s3.Config{Endpoint: "s3.eu-west-1.amazonaws.com", Secure: true, Bucket: "bkt", Prefix: "x"}},
		{in: "s3://h/bkt?region=eu-west-1&lookup=path&cacert=%2Fetc%2Fca.pem&connections=8&part-size=32MiB&create-bucket=1&retry-budget=30s&idle-timeout=1m",
			want: s3.Config{Endpoint: "h", Secure: true, Bucket: "bkt", Region: "eu-west-1", Lookup: "path", CACertFile: "/etc/ca.pem",
				Connections: 8, PartSize: 32 << 20, CreateBucket: true, RetryBudget: 30 * time.Second, IdleTimeout: time.Minute}},
		{in: "s3://h/bkt?lookup=virtual&part-size=5242880", want: s3.Config{Endpoint: "h", Secure: true, Bucket: "bkt", Lookup: "dns", PartSize: 5 << 20}},
		{in: "s3://h/bkt?insecure=0", want: s3.Config{Endpoint: "h", Secure: true, Bucket: "bkt"}},

		{in: "s3://key:secret@h/bkt", err: "credentials in the address are not accepted"},
		{in: "s3://h", err: "no bucket"},
		{in: "s3://h/", err: "no bucket"},
		{in: "s3:///b", err: "no host"},
		{in: "s3://h:99999/bkt", err: "bad port"},
		{in: "s3://h/B_", err: "bucket name"},
		{in: "s3://h/bkt/../x", err: "bad prefix"},
		{in: "s3://h/bkt/a//c", err: "bad prefix"},
		{in: "s3://h/bkt?colour=red", err: `unknown option "colour"`},
		{in: "s3://h/bkt?region=a&region=b", err: "given 2 times"},
		{in: "s3://h/bkt?part-size=1MiB", err: "want 5MiB to 5GiB"},
		{in: "s3://h/bkt?connections=0", err: "connections"},
		{in: "s3://h/bkt?lookup=sideways", err: "lookup"},
		{in: "s3:https://h/bkt?insecure=1", err: "contradicts https"},
		{in: "s3://h/bkt#frag", err: "'#'"},
		{in: "http://h/b", err: "want s3://"},
		{in: "s3:ftp://h/b", err: "want s3://"},
	} {
		got, err := s3.ParseURL(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseURL(%q) = %+v, %v; want error containing %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseURL(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseURL(%q) =\n %+v, want\n %+v", c.in, got, c.want)
		}
		back, err := s3.ParseURL(got.String())
		if err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("round trip of %q via %q: %+v, %v", c.in, got.String(), back, err)
		}
	}
}

// TestConfigFromURL checks both forms cloud.ParseLocation hands the opener.
func TestConfigFromURL(t *testing.T) {
	for in, want := range map[string]s3.Config{
		"s3://h:1/bkt/p?region=r":         {Endpoint: "h:1", Secure: true, Bucket: "bkt", Prefix: "p", Region: "r"},
		"s3:http://h:1/bkt/p?lookup=path": {Endpoint: "h:1", Bucket: "bkt", Prefix: "p", Lookup: "path"},
		"s3:https://h/bkt":                {Endpoint: "h", Secure: true, Bucket: "bkt"},
	} {
		u, err := cloud.ParseLocation(in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s3.ConfigFromURL(u)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ConfigFromURL(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := s3.ConfigFromURL(&url.URL{Scheme: "file", Path: "/x"}); err == nil {
		t.Error("file URL accepted")
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"s3://s3.amazonaws.com/bucket", "s3://h:9000/bkt/p/q?insecure=1&region=x",
		"s3:http://127.0.0.1:7070/bkt/repo", "s3:https://[::1]:7070/bkt", "s3:host/b/p",
		"s3://h/bkt?part-size=16MiB&connections=3&retry-budget=1m30s&cacert=a%20b",
		"s3://u:p@h/bkt", "s3://h/bkt/../c", "s3://h/bkt?lookup=virtual", "s3://h/bkt?insecure-http=yes",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		cfg, err := s3.ParseURL(raw)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n") {
				t.Errorf("multi-line error for %q: %v", raw, err)
			}
			return
		}
		if cfg.Endpoint == "" || cfg.Bucket == "" {
			t.Fatalf("%q: accepted without endpoint or bucket: %+v", raw, cfg)
		}
		if strings.HasPrefix(cfg.Prefix, "/") || strings.HasSuffix(cfg.Prefix, "/") || strings.Contains(cfg.Prefix, "..") {
			t.Fatalf("%q: bad prefix %q accepted", raw, cfg.Prefix)
		}
		s := cfg.String()
		back, err := s3.ParseURL(s)
		if err != nil {
			t.Fatalf("%q → %+v → %q does not parse: %v", raw, cfg, s, err)
		}
		if !reflect.DeepEqual(back, cfg) {
			t.Fatalf("%q → %+v → %q → %+v", raw, cfg, s, back)
		}
		if back.String() != s {
			t.Fatalf("String not canonical: %q then %q", s, back.String())
		}
	})
}
