// Package settings layers the CLI's settings: command-line flags win over
// WABACKUP_* environment variables, which win over the config file
// ($XDG_CONFIG_HOME/wabackup/config). The config file is lines of
// `name = value` using the long flag names; `#` at the start of a line, or
// after white space outside quotes, starts a comment; a value may be
// quoted ('…' or "…"); a value starting with `~/` is under the home
// directory; a switch takes yes, no, true, false, on or off, and a
// duration Go's form (90s, 1h30m) or a number and a unit (10 minutes).
package settings

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// File is a parsed config file. A setting given on several lines has its
// values joined by NUL bytes.
type File map[string]string

const maxFile = 1 << 20

// Lines says on which line of the config file each setting is.
type Lines map[string]int

// Parse reads a config file. Unknown names are kept (the caller decides
// whether they apply: CheckUnknown); malformed lines are errors naming the
// line.
func Parse(r io.Reader) (File, error) {
	f, _, err := parse(r)
	return f, err
}

func parse(r io.Reader) (File, Lines, error) {
	f, lines := File{}, Lines{}
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
			return nil, nil, fmt.Errorf("line %d: want name = value", ln)
		}
		k = strings.TrimSpace(k)
		if k == "" || strings.ContainsAny(k, " \t\"'") {
			return nil, nil, fmt.Errorf("line %d: bad setting name %q", ln, k)
		}
		v, err := value(v)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %s: %v", ln, k, err)
		}
		if strings.ContainsRune(v, 0) {
			return nil, nil, fmt.Errorf("line %d: a NUL byte in the value", ln)
		}
		if old, dup := f[k]; dup {
			// A list setting (db, tag, exclude) may repeat; Apply
			// refuses a repeated one that is not a list.
			f[k] = old + "\x00" + v
			continue
		}
		f[k] = v
		lines[k] = ln
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	return f, lines, nil
}

// value reads the part of a line after "=": a quoted value ends at its
// closing quote, after which only a comment may follow; an unquoted one
// ends before a "#" that follows white space (a comment).
func value(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v != "" && (v[0] == '"' || v[0] == '\'') {
		end := strings.IndexByte(v[1:], v[0])
		if end < 0 {
			return "", fmt.Errorf("the quote %c is not closed", v[0])
		}
		rest := strings.TrimSpace(v[end+2:])
		if rest != "" && rest[0] != '#' {
			return "", fmt.Errorf("%q after the closing quote (a comment starts with #)", rest)
		}
		return v[1 : end+1], nil
	}
	if v != "" && v[0] == '#' {
		return "", nil
	}
	for i := 1; i < len(v); i++ {
		if v[i] == '#' && (v[i-1] == ' ' || v[i-1] == '\t') {
			return strings.TrimSpace(v[:i]), nil
		}
	}
	return v, nil
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
	f, _, err := LoadLines(path, required)
	return f, err
}

// LoadLines is Load that also says where each setting is.
func LoadLines(path string, required bool) (File, Lines, error) {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return File{}, Lines{}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("config file: %w", err)
	}
	defer fh.Close()
	f, lines, err := parse(fh)
	if err != nil {
		return nil, nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return f, lines, nil
}

// CheckUnknown reports the first setting no command knows: a config file
// name not in known (flag names), or a WABACKUP_* variable in environ not
// in knownEnv and not under one of ignoredEnvPrefixes. The error names the
// line or the variable and the closest known name.
func CheckUnknown(path string, file File, lines Lines, known map[string]bool, environ []string, knownEnv map[string]bool, ignoredEnvPrefixes []string) error {
	var names []string
	for k := range file {
		names = append(names, k)
	}
	sortByLine(names, lines)
	for _, k := range names {
		if !known[k] {
			return fmt.Errorf("config file %s line %d: unknown setting %q%s", path, lines[k], k, suggest(k, known))
		}
	}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "WABACKUP_") || knownEnv[name] {
			continue
		}
		ignored := false
		for _, p := range ignoredEnvPrefixes {
			if strings.HasPrefix(name, p) {
				ignored = true
			}
		}
		if !ignored {
			return fmt.Errorf("environment variable %s: unknown setting%s", name, suggest(name, knownEnv))
		}
	}
	return nil
}

func sortByLine(names []string, lines Lines) {
	for i := 1; i < len(names); i++ {
		for j := i; j > 0 && lines[names[j]] < lines[names[j-1]]; j-- {
			names[j], names[j-1] = names[j-1], names[j]
		}
	}
}

// suggest returns " (did you mean X?)" for the known name closest to s, if
// it is within two edits.
func suggest(s string, known map[string]bool) string {
	best, bestD := "", 3
	for k := range known {
		if d := editDistance(strings.ToLower(s), strings.ToLower(k)); d < bestD || d == bestD && k < best {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance, transpositions counting one.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range rb {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			c := 1
			if ra[i-1] == rb[j-1] {
				c = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+c)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// EnvName is the environment variable for a flag: WABACKUP_ + upper snake.
func EnvName(flag string) string {
	return "WABACKUP_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// NotASetting is the pflag annotation of a flag that only the command line
// sets, never a variable or the config file: a command's own flag that has
// the name of a setting (check --db, a switch, beside backup's --db PATH).
const NotASetting = "wabackup/not-a-setting"

// Apply fills every flag of fs that was not given on the command line from
// the environment, then from the config file at path (file, with the line
// of each setting in lines). Flags listed in skip are left alone (secrets
// that must not come from the config file, say). Switches and durations
// take the forms the package comment lists, from either source; `~/` is
// expanded in the config file's values (a shell expands it in variables).
// Every error names the variable, or the file and line, and the forms
// accepted.
func Apply(fs *pflag.FlagSet, path string, file File, lines Lines, skip map[string]bool) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed || skip[fl.Name] || fl.Annotations[NotASetting] != nil {
			return
		}
		v, ok := os.LookupEnv(EnvName(fl.Name))
		src, inFile := "environment variable "+EnvName(fl.Name), false
		if !ok {
			v, ok = file[fl.Name]
			src, inFile = fmt.Sprintf("config file %s line %d: %s", path, lines[fl.Name], fl.Name), true
		}
		if !ok {
			return
		}
		set := func(v string) bool {
			if inFile {
				v = ExpandHome(v)
			}
			v, e := normalize(fl.Value.Type(), v)
			if e == nil {
				e = fl.Value.Set(v)
			}
			if e != nil {
				err = fmt.Errorf("%s: %v", src, e)
			}
			return e == nil
		}
		if fl.Value.Type() == "stringSlice" || fl.Value.Type() == "stringArray" {
			for _, line := range strings.Split(v, "\x00") {
				for _, part := range strings.Split(line, ",") {
					if !set(strings.TrimSpace(part)) {
						return
					}
				}
			}
			return
		}
		if strings.ContainsRune(v, 0) {
			err = fmt.Errorf("%s is set on more than one line (only lists such as db, tag and exclude may repeat)", src)
			return
		}
		set(v)
	})
	return err
}

// ExpandHome puts the home directory in place of a leading "~/" (or a
// lone "~").
func ExpandHome(v string) string {
	if v != "~" && !strings.HasPrefix(v, "~/") {
		return v
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return v
	}
	return filepath.Join(home, v[1:])
}

// normalize turns the forms users write for a switch or a duration into
// the ones pflag reads, or says which forms are accepted.
func normalize(typ, v string) (string, error) {
	switch typ {
	case "bool":
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "yes", "true", "on", "1":
			return "true", nil
		case "no", "false", "off", "0":
			return "false", nil
		}
		return "", fmt.Errorf("%q is not a switch value: want yes, no, true, false, on or off", v)
	case "duration":
		d, err := ParseDuration(v)
		if err != nil {
			return "", err
		}
		return d.String(), nil
	}
	return v, nil
}

// durationUnits are the words ParseDuration accepts after a number.
var durationUnits = map[string]time.Duration{
	"ms": time.Millisecond, "millisecond": time.Millisecond, "milliseconds": time.Millisecond,
	"s": time.Second, "sec": time.Second, "secs": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
}

// ParseDuration reads Go's duration form (90s, 1h30m) or a number and a
// unit word (10 minutes, 1.5 hours, 2 days).
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	num, unit, ok := strings.Cut(v, " ")
	if ok {
		if n, err := strconv.ParseFloat(num, 64); err == nil && n >= 0 {
			if u, known := durationUnits[strings.ToLower(strings.TrimSpace(unit))]; known {
				return time.Duration(n * float64(u)), nil
			}
		}
	}
	return 0, fmt.Errorf("%q is not a duration: want Go's form (90s, 10m, 1h30m) or a number and a unit (10 minutes, 2 hours, 1 day)", v)
}
