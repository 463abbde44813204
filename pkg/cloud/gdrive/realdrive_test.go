package gdrive

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/cloudtest"
)

// TestRealGoogleDrive runs the conformance suite against the real Drive,
// in fresh folders of the appDataFolder that it deletes afterwards. It
// needs an OAuth client and a refresh token granting drive.appdata:
//
//	WABACKUP_TEST_GDRIVE_CLIENT_ID, WABACKUP_TEST_GDRIVE_CLIENT_SECRET,
//	WABACKUP_TEST_GDRIVE_REFRESH_TOKEN
func TestRealGoogleDrive(t *testing.T) {
	id, secret, refresh := os.Getenv("WABACKUP_TEST_GDRIVE_CLIENT_ID"), os.Getenv("WABACKUP_TEST_GDRIVE_CLIENT_SECRET"), os.Getenv("WABACKUP_TEST_GDRIVE_REFRESH_TOKEN")
	if id == "" || secret == "" || refresh == "" {
		t.Skip("set WABACKUP_TEST_GDRIVE_CLIENT_ID, WABACKUP_TEST_GDRIVE_CLIENT_SECRET and WABACKUP_TEST_GDRIVE_REFRESH_TOKEN to test against Google Drive")
	}
	conf := &oauth2.Config{ClientID: id, ClientSecret: secret, Scopes: []string{ScopeAppData},
		Endpoint: oauth2.Endpoint{AuthURL: GoogleAuthURL, TokenURL: GoogleTokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	ts := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: refresh})
	var rnd [6]byte
	rand.Read(rnd[:])
	base := "wabackup-test-" + hex.EncodeToString(rnd[:])
	n := 0
	cloudtest.Run(t, func(t *testing.T) cloud.Store {
		n++
		s, err := New(context.Background(), Config{Space: SpaceAppData, Path: fmt.Sprintf("%s/%d", base, n), TokenSource: ts, Create: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, cloudtest.Options{LargeSize: 20 << 20, ManyObjects: 1100})

	// remove everything the run made
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := New(ctx, Config{Space: SpaceAppData, Path: base, TokenSource: ts})
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	defer s.Close()
	for _, id := range s.dirs[""] {
		if err := s.svc.Files.Delete(id).Context(ctx).Do(); err != nil {
			t.Errorf("cleanup of %s: %v", base, err)
		}
	}
}
