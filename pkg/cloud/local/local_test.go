package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/cloudtest"
)

func TestConformance(t *testing.T) {
	cloudtest.Run(t, func(t *testing.T) cloud.Store {
		s, err := Open(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, cloudtest.Options{})
}

func TestOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Open(dir, false); !errors.Is(err, cloud.ErrNoRepository) {
		t.Fatalf("open missing dir: %v", err)
	}
	if _, err := cloud.Open(context.Background(), "file://"+dir, true); err != nil {
		t.Fatal(err)
	}
	if _, err := cloud.Open(context.Background(), dir, false); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "plainfile")
	os.WriteFile(f, nil, 0o600)
	if _, err := Open(f, false); err == nil {
		t.Fatal("opened a plain file as a store")
	}
	if _, err := cloud.Open(context.Background(), "file://otherhost/x", false); err == nil {
		t.Fatal("accepted a file URL with a remote host")
	}
	if _, err := cloud.Open(context.Background(), "ftp://x/y", false); err == nil {
		t.Fatal("accepted an unknown scheme")
	}
}
