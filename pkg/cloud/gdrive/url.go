package gdrive

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// EndpointEnv names the environment variable that points gdrive:// URLs
// at another Drive server (the emulator, cmd/wabackup-drive-emulator)
// instead of Google.
const EndpointEnv = "WABACKUP_GDRIVE_ENDPOINT"

func init() {
	cloud.Register("gdrive", func(ctx context.Context, u *url.URL, create bool) (cloud.Store, error) {
		space, p, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		scope := ScopeAppData
		if space == SpaceFolder {
			scope = ScopeFile
		}
		ts, err := CachedTokenSource(ctx, scope)
		if err != nil {
			return nil, err
		}
		return New(ctx, Config{Space: space, Path: p, Endpoint: os.Getenv(EndpointEnv), TokenSource: ts, Create: create})
	})
}

// ParseURL splits a gdrive:// repository address into its space
// (SpaceAppData or SpaceFolder) and folder path:
//
//	gdrive://appdata/NAME   a folder in the app's hidden appDataFolder
//	gdrive://folder/PATH    a folder in My Drive (PATH may have several elements)
func ParseURL(u *url.URL) (space, folder string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("bad Google Drive address %q: %s (want gdrive://appdata/NAME or gdrive://folder/PATH)", u.Redacted(), why)
	}
	if u.Scheme != "gdrive" {
		return bad("scheme is not gdrive")
	}
	if u.Opaque != "" {
		return bad("missing //")
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return bad("no user, port, query or fragment allowed")
	}
	switch u.Host {
	case SpaceAppData, SpaceFolder:
		space = u.Host
	default:
		return bad(fmt.Sprintf("unknown space %q", u.Host))
	}
	p := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if p == "" {
		return bad("no folder name")
	}
	if strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return bad("empty folder name")
	}
	comps, err := splitPath(p)
	if err != nil {
		return bad("folder names must be non-empty, not . or .., without control characters")
	}
	return space, strings.Join(comps, "/"), nil
}

// ParseLocation is ParseURL for a string.
func ParseLocation(s string) (space, folder string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("bad Google Drive address %q: %v", s, err)
	}
	return ParseURL(u)
}

// Location renders space and folder as a gdrive:// address.
func Location(space, folder string) string {
	return (&url.URL{Scheme: "gdrive", Host: space, Path: "/" + folder}).String()
}
