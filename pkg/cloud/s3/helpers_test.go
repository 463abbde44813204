package s3_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/wabackup/wabackup/internal/testservers"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

var bucketSeq atomic.Int64

// freshBucket returns a bucket name not used before in this test binary.
func freshBucket() string {
	return fmt.Sprintf("wab-%d-%d", time.Now().UnixNano()%1e6, bucketSeq.Add(1))
}

// config addresses bucket on srv (through endpoint, if not empty) with the
// server's root credentials and test-sized timeouts.
func config(srv *testservers.Server, endpoint, bucket string) s3.Config {
	if endpoint == "" {
		endpoint = srv.Endpoint
	}
	return s3.Config{
		Endpoint:    endpoint,
		Secure:      srv.Secure,
		CACertFile:  srv.CACertFile,
		Bucket:      bucket,
		RetryBudget: 5 * time.Second,
		IdleTimeout: 5 * time.Second,
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
	}
}

// open is New that fails the test on error and closes the store at the end.
func open(t testing.TB, cfg s3.Config) *s3.Store {
	t.Helper()
	st, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// rawClient talks to srv directly, to look behind the store's back.
func rawClient(t testing.TB, srv *testservers.Server) minio.Core {
	t.Helper()
	c, err := minio.NewCore(srv.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		Secure: false,
	})
	if err != nil {
		t.Fatal(err)
	}
	return *c
}

// freshStore starts a versitygw server of its own and opens a store on a
// new bucket there.
func freshStore(t testing.TB) *s3.Store {
	t.Helper()
	srv := testservers.StartVersityGW(t, testservers.VersityGWOptions{})
	cfg := config(srv, "", freshBucket())
	cfg.CreateBucket = true
	return open(t, cfg)
}
