package s3_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

func TestOpenErrors(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	ctx := context.Background()

	t.Run("WrongSecret", func(t *testing.T) {
		cfg := config(srv, "", freshBucket())
		cfg.CreateBucket = true
		open(t, cfg)
		cfg.CreateBucket = false
		cfg.Credentials = credentials.NewStaticV4(srv.AccessKey, "not-the-secret", "")
		_, err := s3.New(ctx, cfg)
		if !errors.Is(err, s3.ErrAccessDenied) {
			t.Fatalf("wrong secret: %v, want ErrAccessDenied", err)
		}
		t.Log(err)
		cfg.Credentials = credentials.NewStaticV4("nobody", "not-the-secret", "")
		if _, err = s3.New(ctx, cfg); !errors.Is(err, s3.ErrAccessDenied) {
			t.Fatalf("unknown key: %v, want ErrAccessDenied", err)
		}
		t.Log(err)
	})
	t.Run("MissingBucket", func(t *testing.T) {
		cfg := config(srv, "", freshBucket())
		_, err := s3.New(ctx, cfg)
		if !errors.Is(err, cloud.ErrNoRepository) || !strings.Contains(err.Error(), "--s3-create-bucket") {
			t.Fatalf("missing bucket: %v, want ErrNoRepository with a hint", err)
		}
		t.Log(err)
		if _, err := os.Stat(filepath.Join(srv.Root, cfg.Bucket)); err == nil {
			t.Fatal("bucket created without CreateBucket")
		}
	})
	t.Run("CreateBucket", func(t *testing.T) {
		cfg := config(srv, "", freshBucket())
		cfg.CreateBucket = true
		st := open(t, cfg)
		if fi, err := os.Stat(filepath.Join(srv.Root, cfg.Bucket)); err != nil || !fi.IsDir() {
			t.Fatalf("bucket not created: %v", err)
		}
		if err := st.Put(ctx, "config", strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
		// Opening again with CreateBucket finds the bucket and keeps it.
		open(t, cfg)
		if _, err := st.Stat(ctx, "config"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		cfg := config(srv, addr, "somebucket")
		cfg.RetryBudget = 2 * time.Second
		start := time.Now()
		_, err = s3.New(ctx, cfg)
		took := time.Since(start)
		if !errors.Is(err, s3.ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach S3 server "+addr) {
			t.Fatalf("unreachable: %v", err)
		}
		if took > cfg.RetryBudget+time.Second {
			t.Errorf("took %v with a %v budget", took, cfg.RetryBudget)
		}
		t.Logf("%v (after %v)", err, took.Round(time.Millisecond))
	})
	t.Run("UnknownHost", func(t *testing.T) {
		cfg := config(srv, "no-such-host.invalid:9000", "somebucket")
		start := time.Now()
		_, err := s3.New(ctx, cfg)
		if !errors.Is(err, s3.ErrUnreachable) || !strings.Contains(err.Error(), "cannot resolve") {
			t.Fatalf("unknown host: %v", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Errorf("DNS failure retried for %v", time.Since(start))
		}
		t.Log(err)
	})
	t.Run("NoCredentials", func(t *testing.T) {
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
			"AWS_SESSION_TOKEN", "AWS_PROFILE", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
		cfg := config(srv, "", "somebucket")
		cfg.Credentials = nil
		_, err := s3.New(ctx, cfg)
		if !errors.Is(err, s3.ErrNoCredentials) {
			t.Fatalf("no credentials: %v", err)
		}
		t.Log(err)
	})
}

// TestCredentialChain opens stores through cloud.Open (the registered
// opener, as the CLI will) with credentials from each standard source.
func TestCredentialChain(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	ctx := context.Background()
	bucket := freshBucket()
	clear := func() {
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
			"AWS_SESSION_TOKEN", "AWS_PROFILE", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	}
	addr := "s3:http://" + srv.Endpoint + "/" + bucket + "/repo?retry-budget=5s"

	clear()
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	if _, err := cloud.Open(ctx, addr, false); !errors.Is(err, cloud.ErrNoRepository) {
		t.Fatalf("open of a missing bucket: %v", err)
	}
	if _, err := cloud.Open(ctx, addr, true); !errors.Is(err, cloud.ErrNoRepository) {
		t.Fatalf("init without create-bucket: %v", err)
	}
	if _, err := cloud.Open(ctx, addr+"&create-bucket=1", false); !errors.Is(err, cloud.ErrNoRepository) {
		t.Fatalf("create-bucket outside init: %v", err)
	}
	st, err := cloud.Open(ctx, addr+"&create-bucket=1", true)
	if err != nil {
		t.Fatalf("env AWS_*: %v", err)
	}
	if want := "s3:http://" + srv.Endpoint + "/" + bucket + "/repo"; st.Location() != want {
		t.Errorf("Location() = %q, want %q", st.Location(), want)
	}
	if err := st.Put(ctx, "config", bytes.NewReader([]byte("c")), 1); err != nil {
		t.Fatal(err)
	}
	st.Close()

	check := func(what string) {
		t.Helper()
		st, err := cloud.Open(ctx, addr, false)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer st.Close()
		if _, err := st.Stat(ctx, "config"); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	clear()
	file := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(file, []byte("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[backup]\naws_access_key_id = "+
		srv.AccessKey+"\naws_secret_access_key = "+srv.SecretKey+"\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
	t.Setenv("AWS_PROFILE", "backup")
	check("shared credentials file, AWS_PROFILE")

	clear()
	t.Setenv("MINIO_ROOT_USER", srv.AccessKey)
	t.Setenv("MINIO_ROOT_PASSWORD", srv.SecretKey)
	check("MINIO_ROOT_USER")

	// The environment wins over the file.
	clear()
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file) // default profile: wrong keys
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	check("AWS_* over the shared file")
}

func TestTLS(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{TLS: true})
	ctx := context.Background()
	cfg := config(srv, "", freshBucket())
	cfg.CreateBucket = true
	cfg.CACertFile = ""
	_, err := s3.New(ctx, cfg)
	if !errors.Is(err, s3.ErrTLS) || !strings.Contains(err.Error(), "TLS: certificate not trusted; use --cacert FILE") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	t.Log(err)

	cfg.CACertFile = srv.CACertFile
	st := open(t, cfg)
	if err := st.Put(ctx, "keys/k", strings.NewReader("secret"), 6); err != nil {
		t.Fatal(err)
	}
	if want := "s3://" + srv.Endpoint + "/" + cfg.Bucket; st.Location() != want {
		t.Errorf("Location() = %q, want %q", st.Location(), want)
	}

	// HTTPS client, HTTP server.
	plain := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	pcfg := config(plain, "", freshBucket())
	pcfg.Secure = true
	if _, err := s3.New(ctx, pcfg); !errors.Is(err, s3.ErrTLS) {
		t.Fatalf("https to an http server: %v", err)
	} else {
		t.Log(err)
	}
}

func TestWrongRegion(t *testing.T) {
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{Region: "eu-central-1"})
	ctx := context.Background()
	cfg := config(srv, "", freshBucket())
	cfg.CreateBucket = true
	cfg.Region = "eu-central-1"
	open(t, cfg)
	cfg.CreateBucket = false
	cfg.Region = "us-west-2"
	_, err := s3.New(ctx, cfg)
	if !errors.Is(err, s3.ErrWrongRegion) {
		t.Fatalf("wrong region: %v", err)
	}
	t.Log(err)
}
