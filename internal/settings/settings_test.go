package settings

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want map[string]string
		err  string
	}{
		{"", map[string]string{}, ""},
		{"# comment\nrepo = /backups/chat\n\nmedia=\"/home/me/Media dir\"\n", map[string]string{"repo": "/backups/chat", "media": "/home/me/Media dir"}, ""},
		{"db = 'x'", map[string]string{"db": "x"}, ""},
		{"novalue", nil, "line 1"},
		{"a = 1\na = 2", map[string]string{"a": "1\x002"}, ""},
		{"bad name = 1", nil, "bad setting name"},
	} {
		got, err := Parse(strings.NewReader(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("%q: got %v", c.in, got)
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%q: %s = %q, want %q", c.in, k, got[k], v)
			}
		}
	}
}

// A list setting may repeat in the config file; any other may not.
func TestApplyRepeated(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	dbs := fs.StringArray("db", nil, "")
	fs.Bool("switch", false, "")
	fs.SetAnnotation("switch", NotASetting, []string{"true"})
	file, err := Parse(strings.NewReader("db = /a/msgstore.db\ndb = /a/wa.db\nswitch = /not/a/bool\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs, "cfg", file, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(*dbs) != 2 || (*dbs)[0] != "/a/msgstore.db" || (*dbs)[1] != "/a/wa.db" {
		t.Fatalf("db = %q", *dbs)
	}
	fs = pflag.NewFlagSet("y", pflag.ContinueOnError)
	fs.String("repo", "", "")
	file, _ = Parse(strings.NewReader("repo = /a\nrepo = /b\n"))
	if err := Apply(fs, "cfg", file, nil, nil); err == nil || !strings.Contains(err.Error(), "more than one line") {
		t.Fatalf("a repeated repo: %v", err)
	}
}

func TestApplyPrecedence(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	repo := fs.String("repo", "", "")
	db := fs.String("db", "", "")
	media := fs.String("media", "", "")
	secret := fs.String("password-file", "", "")
	if err := fs.Parse([]string{"--repo", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WABACKUP_REPO", "/from/env")
	t.Setenv("WABACKUP_DB", "/from/env.db")
	file := File{"repo": "/from/file", "db": "/from/file.db", "media": "/from/file/media", "password-file": "/x"}
	if err := Apply(fs, "cfg", file, nil, map[string]bool{"password-file": true}); err != nil {
		t.Fatal(err)
	}
	if *repo != "/from/flag" || *db != "/from/env.db" || *media != "/from/file/media" || *secret != "" {
		t.Fatalf("repo=%q db=%q media=%q secret=%q", *repo, *db, *media, *secret)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("repo = /x\n# c\nmedia = \"a b\"\n")
	f.Add("=\n")
	f.Add("a=b=c")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		for k := range got {
			if k == "" || strings.ContainsAny(k, " \t") {
				t.Fatalf("accepted bad name %q", k)
			}
		}
	})
}

func TestCheckUnknown(t *testing.T) {
	known := map[string]bool{"repo": true, "media": true, "db": true, "key-file": true}
	knownEnv := map[string]bool{"WABACKUP_REPO": true, "WABACKUP_MEDIA": true}
	f, lines, err := parse(strings.NewReader("repo = r\n\n# c\nmeida = m\ndb = x\nzzzz = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = CheckUnknown("cfg", f, lines, known, nil, knownEnv, nil)
	if err == nil || err.Error() != `config file cfg line 4: unknown setting "meida" (did you mean "media"?)` {
		t.Fatalf("got %v", err)
	}
	delete(f, "meida")
	if err := CheckUnknown("cfg", f, lines, known, nil, knownEnv, nil); err == nil || !strings.Contains(err.Error(), `line 6: unknown setting "zzzz"`) || strings.Contains(err.Error(), "did you mean") {
		t.Fatalf("got %v", err)
	}
	delete(f, "zzzz")
	env := []string{"HOME=/h", "WABACKUP_REPO=r", "WABACKUP_TEST_X=1", "WABACKUP_MEDAI=m"}
	if err := CheckUnknown("cfg", f, lines, known, env, knownEnv, []string{"WABACKUP_TEST_"}); err == nil || !strings.Contains(err.Error(), `WABACKUP_MEDAI: unknown setting (did you mean "WABACKUP_MEDIA"?)`) {
		t.Fatalf("got %v", err)
	}
	if err := CheckUnknown("cfg", f, lines, known, env[:3], knownEnv, []string{"WABACKUP_TEST_"}); err != nil {
		t.Fatal(err)
	}
}

// TestConfigFileForms is issue 26, item 8: the forms users write in a
// config file — a comment after a value, ~/, yes/no for a switch, "10
// minutes" — are honoured, and every refusal names the file, the line and
// the forms accepted.
func TestConfigFileForms(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	tests := []struct {
		name, file string
		want       map[string]string // flag → its value after Apply
		err        string            // in the error, if any
	}{
		{"comment after a value", "exclude = *.tmp  # thumbnails\n", map[string]string{"exclude": "[*.tmp]"}, ""},
		{"comment after a quoted value", "repo = \"/a #b\" # the NAS\n", map[string]string{"repo": "/a #b"}, ""},
		{"a # inside a word stays", "tag = night#1\n", map[string]string{"tag": "[night#1]"}, ""},
		{"home directory", "repo = ~/backups/chat\n", map[string]string{"repo": home + "/backups/chat"}, ""},
		{"home directory in a list", "exclude = ~/Media/.thumbnails, *.tmp\n", map[string]string{"exclude": "[" + home + "/Media/.thumbnails,*.tmp]"}, ""},
		{"yes", "quiet = yes\n", map[string]string{"quiet": "true"}, ""},
		{"Off", "quiet = Off\n", map[string]string{"quiet": "false"}, ""},
		{"a switch that is not one", "quiet = maybe\n", nil, `config file cfg line 1: quiet: "maybe" is not a switch value: want yes, no, true, false, on or off`},
		{"Go duration", "retry-lock = 1h30m\n", map[string]string{"retry-lock": "1h30m0s"}, ""},
		{"10 minutes", "retry-lock = 10 minutes\n", map[string]string{"retry-lock": "10m0s"}, ""},
		{"1 day", "retry-lock = 1 day\n", map[string]string{"retry-lock": "24h0m0s"}, ""},
		{"a duration that is not one", "\n\nretry-lock = 10 fortnights\n", nil, `config file cfg line 3: retry-lock: "10 fortnights" is not a duration: want Go's form (90s, 10m, 1h30m) or a number and a unit (10 minutes, 2 hours, 1 day)`},
		{"unclosed quote", "repo = \"/a\n", nil, "line 1: repo: the quote \" is not closed"},
		{"junk after a quote", "repo = \"/a\" b\n", nil, "after the closing quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			fs.String("repo", "", "")
			fs.StringArray("exclude", nil, "")
			fs.StringArray("tag", nil, "")
			fs.Bool("quiet", false, "")
			fs.Duration("retry-lock", 0, "")
			file, lines, err := parse(strings.NewReader(tt.file))
			if err == nil {
				err = Apply(fs, "cfg", file, lines, nil)
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tt.want {
				if got := fs.Lookup(k).Value.String(); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}
