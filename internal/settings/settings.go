// Package settings layers the CLI's settings: command-line flags win over
// WABACKUP_* environment variables, which win over the config file
// ($XDG_CONFIG_HOME/wabackup/config). The config file is lines of
// `name = value` using the long flag names; `#` starts a comment.
package settings

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// File is a parsed config file.
type File map[string]string

const maxFile = 1 << 20

// Parse reads a config file. Unknown names are kept (the caller decides
// whether they apply); malformed lines are errors naming the line.
func Parse(r io.Reader) (File, error) {
	f := File{}
	sc := bufio.NewScanner(io.LimitReader(r, maxFile))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	ln := 0
	for sc.Scan() {
		ln++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want name = value", ln)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "" || strings.ContainsAny(k, " \t\"'") {
			return nil, fmt.Errorf("line %d: bad setting name %q", ln, k)
		}
		if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
			v = v[1 : len(v)-1]
		}
		if _, dup := f[k]; dup {
			return nil, fmt.Errorf("line %d: %s is set twice", ln, k)
		}
		f[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// ConfigDir is the wabackup directory under $XDG_CONFIG_HOME (or ~/.config).
func ConfigDir() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "wabackup")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "wabackup-config")
	}
	return filepath.Join(home, ".config", "wabackup")
}

// DefaultPath is the config file read when --config is not given.
func DefaultPath() string { return filepath.Join(ConfigDir(), "config") }

// Load reads the config file at path. A missing file is an empty config
// unless required.
func Load(path string, required bool) (File, error) {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer fh.Close()
	f, err := Parse(fh)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return f, nil
}

// EnvName is the environment variable for a flag: WABACKUP_ + upper snake.
func EnvName(flag string) string {
	return "WABACKUP_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply fills every flag of fs that was not given on the command line from
// the environment, then from the config file. Flags listed in skip are
// left alone (secrets that must not come from the config file, say).
func Apply(fs *pflag.FlagSet, file File, skip map[string]bool) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed || skip[fl.Name] {
			return
		}
		v, ok := os.LookupEnv(EnvName(fl.Name))
		src := "environment variable " + EnvName(fl.Name)
		if !ok {
			v, ok = file[fl.Name]
			src = "config file setting " + fl.Name
		}
		if !ok {
			return
		}
		if fl.Value.Type() == "stringSlice" || fl.Value.Type() == "stringArray" {
			for _, part := range strings.Split(v, ",") {
				if e := fl.Value.Set(strings.TrimSpace(part)); e != nil {
					err = fmt.Errorf("%s: %v", src, e)
					return
				}
			}
			return
		}
		if e := fl.Value.Set(v); e != nil {
			err = fmt.Errorf("%s: %v", src, e)
		}
	})
	return err
}
