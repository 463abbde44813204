package driveemu

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	drive "google.golang.org/api/drive/v3"
)

// Partial responses: the fields parameter ("nextPageToken, files(id,name)",
// "files/size", "*"). A selection is validated against the JSON names of
// the real client's generated types, so a typo that real Drive rejects
// with 400 invalidParameter is rejected here too.

// selection maps a JSON key to its sub-selection; a nil sub-selection
// means the whole value. The key "*" selects every key.
type selection map[string]selection

func parseFields(s string) (selection, error) {
	p := &fieldParser{s: s}
	sel, err := p.list(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(p.s) {
		return nil, fmt.Errorf("unexpected %q", p.s[p.i:])
	}
	return sel, nil
}

type fieldParser struct {
	s string
	i int
}

func (p *fieldParser) skip() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *fieldParser) list(depth int) (selection, error) {
	if depth > 20 {
		return nil, errors.New("selection nested too deeply")
	}
	sel := selection{}
	for {
		p.skip()
		if err := p.item(sel, depth); err != nil {
			return nil, err
		}
		p.skip()
		if p.i < len(p.s) && p.s[p.i] == ',' {
			p.i++
			continue
		}
		return sel, nil
	}
}

// item parses a/b/c(sub) into sel.
func (p *fieldParser) item(sel selection, depth int) error {
	var path []string
	for {
		start := p.i
		for p.i < len(p.s) && (isFieldChar(p.s[p.i]) || p.s[p.i] == '*') {
			p.i++
		}
		if start == p.i {
			return fmt.Errorf("expected a field name at %d", p.i)
		}
		path = append(path, p.s[start:p.i])
		if p.i < len(p.s) && p.s[p.i] == '/' {
			p.i++
			continue
		}
		break
	}
	var sub selection
	p.skip()
	if p.i < len(p.s) && p.s[p.i] == '(' {
		p.i++
		var err error
		sub, err = p.list(depth + 1)
		if err != nil {
			return err
		}
		p.skip()
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			return errors.New("missing )")
		}
		p.i++
	}
	// build nested selection for a/b/c
	cur := sel
	for i, k := range path {
		last := i == len(path)-1
		existing, seen := cur[k]
		if last {
			if seen && existing == nil {
				return nil // already whole
			}
			if sub == nil {
				cur[k] = nil
			} else if seen {
				for kk, vv := range sub {
					existing[kk] = vv
				}
			} else {
				cur[k] = sub
			}
			return nil
		}
		if seen && existing == nil {
			return nil
		}
		if !seen {
			existing = selection{}
			cur[k] = existing
		}
		cur = existing
	}
	return nil
}

func isFieldChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// schema is the tree of valid JSON keys below a type.
type schema struct {
	leaf     bool
	anyKeys  bool // maps: any key is valid
	children map[string]*schema
}

var (
	schemaOnce     sync.Once
	fileSchema     *schema
	fileListSchema *schema
	aboutSchema    *schema
)

func schemas() {
	schemaOnce.Do(func() {
		fileSchema = schemaOf(reflect.TypeFor[drive.File](), 0)
		fileListSchema = schemaOf(reflect.TypeFor[drive.FileList](), 0)
		aboutSchema = schemaOf(reflect.TypeFor[drive.About](), 0)
	})
}

func schemaOf(t reflect.Type, depth int) *schema {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Map:
		return &schema{anyKeys: true}
	case reflect.Struct:
		if depth > 6 {
			return &schema{anyKeys: true}
		}
		s := &schema{children: map[string]*schema{}}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, _, _ := strings.Cut(tag, ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			s.children[name] = schemaOf(f.Type, depth+1)
		}
		return s
	}
	return &schema{leaf: true}
}

func (sel selection) validate(sc *schema, prefix string) error {
	for k, sub := range sel {
		if k == "*" {
			if sub != nil {
				return fieldError(prefix + "*")
			}
			continue
		}
		if sc.anyKeys {
			continue
		}
		if sc.leaf {
			return fieldError(prefix + k)
		}
		c, ok := sc.children[k]
		if !ok {
			return fieldError(prefix + k)
		}
		if sub != nil {
			if c.leaf {
				return fieldError(prefix + k)
			}
			if err := sub.validate(c, prefix+k+"/"); err != nil {
				return err
			}
		}
	}
	return nil
}

// fieldError is an invalid selection; its text is Drive's message.
type fieldError string

func (e fieldError) Error() string { return "Invalid field selection " + string(e) }

// apply filters a decoded JSON value by sel.
func (sel selection) apply(v any) any {
	if sel == nil {
		return v
	}
	switch v := v.(type) {
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = sel.apply(e)
		}
		return out
	case map[string]any:
		if sub, ok := sel["*"]; ok && sub == nil && len(sel) == 1 {
			return v
		}
		out := map[string]any{}
		for k, val := range v {
			if sub, ok := sel[k]; ok {
				out[k] = sub.apply(val)
			} else if _, star := sel["*"]; star {
				out[k] = val
			}
		}
		return out
	}
	return v
}
