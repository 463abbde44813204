package gdrive

import (
	"net/url"
	"testing"
)

func TestParseLocation(t *testing.T) {
	for _, c := range []struct {
		in, space, folder string
	}{
		{"gdrive://appdata/myrepo", SpaceAppData, "myrepo"},
		{"gdrive://appdata/myrepo/", SpaceAppData, "myrepo"},
		{"gdrive://folder/Backups/laptop", SpaceFolder, "Backups/laptop"},
		{"gdrive://folder/My%20Backups", SpaceFolder, "My Backups"},
		{"gdrive://folder/caf%C3%A9", SpaceFolder, "café"},
	} {
		space, folder, err := ParseLocation(c.in)
		if err != nil || space != c.space || folder != c.folder {
			t.Errorf("%q = %q %q %v", c.in, space, folder, err)
		}
	}
	for _, bad := range []string{
		"gdrive://appdata", "gdrive://appdata/", "gdrive://drive/x", "gdrive://folder//x", "gdrive://folder/a/../b",
		"gdrive://folder/./a", "gdrive://u@appdata/x", "gdrive://appdata:1/x", "gdrive://appdata/x?y=1", "gdrive://appdata/x#f",
		"gdrive:appdata/x", "s3://appdata/x", "gdrive://appdata/a%00b", "gdrive://folder/%2e%2e",
	} {
		if s, f, err := ParseLocation(bad); err == nil {
			t.Errorf("%q accepted as %q %q", bad, s, f)
		}
	}
	if l := Location(SpaceFolder, "My Backups/x"); l != "gdrive://folder/My%20Backups/x" {
		t.Errorf("Location = %q", l)
	}
}

func FuzzParseLocation(f *testing.F) {
	for _, s := range []string{"gdrive://appdata/r", "gdrive://folder/a/b/c", "gdrive://folder/%41", "gdrive://x/y", "gdrive://appdata//", "gdrive://folder/a?b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		space, folder, err := ParseLocation(s)
		if err != nil {
			return
		}
		if space != SpaceAppData && space != SpaceFolder {
			t.Fatalf("%q: space %q", s, space)
		}
		if _, err := splitPath(folder); err != nil {
			t.Fatalf("%q: accepted folder %q: %v", s, folder, err)
		}
		// the canonical form parses back to the same thing
		loc := Location(space, folder)
		s2, f2, err := ParseLocation(loc)
		if err != nil || s2 != space || f2 != folder {
			t.Fatalf("%q -> %q -> %q %q %v", s, loc, s2, f2, err)
		}
		if u, _ := url.Parse(loc); u.String() != loc {
			t.Fatalf("unstable %q", loc)
		}
	})
}
