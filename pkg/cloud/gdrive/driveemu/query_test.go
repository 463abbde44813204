package driveemu

import (
	"testing"
	"time"
)

func TestParseQuery(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	f := &file{ID: "F", Name: "data-ab01", MimeType: "application/octet-stream", Parents: []string{"P"},
		Created: t0, Modified: t0, AppProperties: map[string]string{"k": "v"}}
	env := &evalEnv{alias: func(id string) string {
		if id == "root" {
			return "P"
		}
		return id
	}}
	for _, c := range []struct {
		q    string
		want bool
	}{
		{"name = 'data-ab01'", true},
		{"name = 'data-AB01'", false},
		{"name != 'x'", true},
		{"name contains 'data'", true},
		{"name contains 'AB0'", true}, // word prefix, case-insensitive
		{"name contains 'b01'", false},
		{"'P' in parents", true},
		{"'root' in parents", true},
		{"'Q' in parents", false},
		{"trashed = false", true},
		{"trashed=true", false},
		{"name = 'data-ab01' and 'P' in parents and trashed = false", true},
		{"name = 'x' or name = 'data-ab01'", true},
		{"not name = 'x'", true},
		{"NOT (name = 'data-ab01' OR trashed = true)", false},
		{"mimeType != 'application/vnd.google-apps.folder'", true},
		{"modifiedTime > '2024-01-01T00:00:00Z'", true},
		{"modifiedTime < '2024-01-01T00:00:00'", false},
		{"createdTime >= '2024-05-01T12:00:00.000Z'", true},
		{"appProperties has { key='k' and value='v' }", true},
		{"appProperties has { key='k' and value='w' }", false},
		{`name = 'it\'s'`, false},
		{"'me' in owners", true},
	} {
		q, err := ParseQuery(c.q)
		if err != nil {
			t.Errorf("%q: %v", c.q, err)
			continue
		}
		if got := q.match(f, env); got != c.want {
			t.Errorf("%q = %v, want %v", c.q, got, c.want)
		}
		q2, err := ParseQuery(q.String())
		if err != nil || q2.String() != q.String() {
			t.Errorf("%q: round trip %q: %v", c.q, q.String(), err)
		}
	}
	for _, bad := range []string{
		"", "name", "name =", "name = x", "name == 'x'", "size = '1'", "'x' in name", "trashed = 'false'",
		"name = 'x' and", "(name = 'x'", "name = 'x')", "name = 'unterminated", `name = 'x\`, "name contains",
		"modifiedTime > 'yesterday'", "fullText = 'x'", "trashed contains true", "a & b",
	} {
		if _, err := ParseQuery(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	q, _ := ParseQuery("name = 'x' and 'P' in parents")
	if p, ok := q.requiredParent(); !ok || p != "P" {
		t.Errorf("requiredParent = %q %v", p, ok)
	}
	q, _ = ParseQuery("name = 'x' or 'P' in parents")
	if _, ok := q.requiredParent(); ok {
		t.Error("or: requiredParent found")
	}
}

func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"name = 'x'", "'P' in parents and trashed = false", "not (name contains 'a' or starred = true)",
		`name = 'a\'b\\c'`, "appProperties has { key='k' and value='v' }", "modifiedTime > '2024-01-01T00:00:00Z'",
		"((((name = 'x'))))", "name = 'x' and", "",
	} {
		f.Add(s)
	}
	file := &file{ID: "F", Name: "n", Parents: []string{"P"}}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuery(s)
		if err != nil {
			return
		}
		q.match(file, &evalEnv{alias: func(id string) string { return id }})
		q.requiredParent()
		canon := q.String()
		q2, err := ParseQuery(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if q2.String() != canon {
			t.Fatalf("canonical form unstable: %q -> %q", canon, q2.String())
		}
	})
}

func TestFields(t *testing.T) {
	schemas()
	for _, c := range []struct {
		in string
		sc *schema
		ok bool
	}{
		{"files(id,name,size)", fileListSchema, true},
		{"nextPageToken, files(id, name, modifiedTime)", fileListSchema, true},
		{"files/id,files/name", fileListSchema, true},
		{"*", fileListSchema, true},
		{"files(*)", fileListSchema, true},
		{"files(owners(emailAddress))", fileListSchema, true},
		{"files(appProperties)", fileListSchema, true},
		{"files(nosuch)", fileListSchema, false},
		{"nosuch", fileListSchema, false},
		{"id,size,md5Checksum", fileSchema, true},
		{"size(x)", fileSchema, false},
		{"files(id", fileListSchema, false},
		{"", fileSchema, false},
	} {
		sel, err := parseFields(c.in)
		if err == nil {
			err = sel.validate(c.sc, "")
		}
		if (err == nil) != c.ok {
			t.Errorf("%q: err %v, want ok=%v", c.in, err, c.ok)
		}
	}
	sel, _ := parseFields("nextPageToken,files(id,name)")
	out := sel.apply(map[string]any{"kind": "k", "nextPageToken": "t", "files": []any{map[string]any{"id": "1", "name": "n", "size": "3"}}})
	m := out.(map[string]any)
	if _, ok := m["kind"]; ok || m["nextPageToken"] != "t" {
		t.Fatalf("apply: %v", m)
	}
	f0 := m["files"].([]any)[0].(map[string]any)
	if len(f0) != 2 || f0["id"] != "1" {
		t.Fatalf("apply files: %v", f0)
	}
}

func TestParseRangeAndContentRange(t *testing.T) {
	for _, c := range []struct {
		h          string
		size       int64
		s, e       int64
		ranged, ok bool
	}{
		{"", 10, 0, 0, false, true},
		{"bytes=0-4", 10, 0, 4, true, true},
		{"bytes=5-", 10, 5, 9, true, true},
		{"bytes=5-100", 10, 5, 9, true, true},
		{"bytes=-3", 10, 7, 9, true, true},
		{"bytes=10-", 10, 0, 0, true, false},
		{"bytes=0-0", 0, 0, 0, true, false},
		{"bytes=0-1,3-4", 10, 0, 0, false, true},
	} {
		s, e, r, ok := parseRange(c.h, c.size)
		if ok != c.ok || r != c.ranged || (ok && r && (s != c.s || e != c.e)) {
			t.Errorf("%q/%d = %d-%d %v %v", c.h, c.size, s, e, r, ok)
		}
	}
	for _, c := range []struct {
		h       string
		s, e, n int64
		ok      bool
	}{
		{"bytes 0-9/10", 0, 9, 10, true},
		{"bytes 0-9/*", 0, 9, -1, true},
		{"bytes */10", -1, -1, 10, true},
		{"bytes */*", -1, -1, -1, true},
		{"bytes 5-4/10", 0, 0, 0, false},
		{"bytes 0-10/10", 0, 0, 0, false},
		{"0-9/10", 0, 0, 0, false},
	} {
		s, e, n, err := parseContentRange(c.h)
		if (err == nil) != c.ok || (c.ok && (s != c.s || e != c.e || n != c.n)) {
			t.Errorf("%q = %d %d %d %v", c.h, s, e, n, err)
		}
	}
}
