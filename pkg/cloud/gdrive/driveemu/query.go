package driveemu

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
)

// This file implements the subset of the Drive v3 search-query language
// (the files.list q parameter) that the emulator understands:
//
//	query   = or
//	or      = and { "or" and }
//	and     = not { "and" not }
//	not     = "not" not | "(" or ")" | term
//	term    = field op value                     name = 'x', trashed = false
//	        | value "in" collection              'ID' in parents
//	        | props "has" "{" "key" "=" string "and" "value" "=" string "}"
//
// Keywords are case-insensitive, field names are not. Strings are single
// quoted with \' and \\ escapes. Anything else is a parse error, which the
// server answers with 400 invalid/q like Drive does.

// Query is a parsed q expression.
type Query struct{ root node }

type node interface {
	eval(f *file, env *evalEnv) bool
	str(b *strings.Builder)
}

type evalEnv struct {
	// alias maps 'root' and 'appDataFolder' to real folder IDs.
	alias func(id string) string
}

type andNode struct{ l, r node }
type orNode struct{ l, r node }
type notNode struct{ x node }

// cmpNode is field op value.
type cmpNode struct {
	field string
	op    string
	val   value
}

// inNode is 'value' in collection.
type inNode struct {
	val   string
	field string
}

// hasNode is properties has { key='k' and value='v' }.
type hasNode struct {
	field    string
	key, val string
}

type value struct {
	isBool bool
	b      bool
	s      string
}

func (v value) String() string {
	if v.isBool {
		if v.b {
			return "true"
		}
		return "false"
	}
	return quote(v.s)
}

func quote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `\'`)
	return "'" + s + "'"
}

// field kinds
const (
	kString = iota
	kTime
	kBool
)

var cmpFields = map[string]int{
	"name":           kString,
	"fullText":       kString,
	"mimeType":       kString,
	"modifiedTime":   kTime,
	"createdTime":    kTime,
	"viewedByMeTime": kTime,
	"trashed":        kBool,
	"starred":        kBool,
	"sharedWithMe":   kBool,
}

var inFields = map[string]bool{"parents": true, "owners": true, "writers": true, "readers": true}

var hasFields = map[string]bool{"properties": true, "appProperties": true}

func opsFor(field string) []string {
	switch field {
	case "name", "mimeType":
		return []string{"=", "!=", "contains"}
	case "fullText":
		return []string{"contains"}
	case "trashed", "starred", "sharedWithMe":
		return []string{"=", "!="}
	default: // times
		return []string{"=", "!=", "<", "<=", ">", ">="}
	}
}

// ParseQuery parses a Drive files.list q expression.
func ParseQuery(q string) (*Query, error) {
	toks, err := lex(q)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	if len(toks) == 0 {
		return nil, errors.New("empty query")
	}
	n, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.toks[p.pos].text)
	}
	return &Query{root: n}, nil
}

// String renders the query in canonical form (fully parenthesised
// boolean operators); ParseQuery(q.String()) yields an equal query.
func (q *Query) String() string {
	var b strings.Builder
	q.root.str(&b)
	return b.String()
}

// Match reports whether f satisfies the query.
func (q *Query) match(f *file, env *evalEnv) bool { return q.root.eval(f, env) }

// requiredParent returns the parent ID that every match must have, if the
// query is a conjunction containing 'ID' in parents (used to avoid a full
// scan).
func (q *Query) requiredParent() (string, bool) {
	var walk func(n node) (string, bool)
	walk = func(n node) (string, bool) {
		switch n := n.(type) {
		case *inNode:
			if n.field == "parents" {
				return n.val, true
			}
		case *andNode:
			if id, ok := walk(n.l); ok {
				return id, true
			}
			return walk(n.r)
		}
		return "", false
	}
	return walk(q.root)
}

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tOp
	tLParen
	tRParen
	tLBrace
	tRBrace
)

type token struct {
	kind tokKind
	text string
}

func lex(s string) ([]token, error) {
	var out []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(':
			out = append(out, token{tLParen, "("})
			i++
		case c == ')':
			out = append(out, token{tRParen, ")"})
			i++
		case c == '{':
			out = append(out, token{tLBrace, "{"})
			i++
		case c == '}':
			out = append(out, token{tRBrace, "}"})
			i++
		case c == '=':
			out = append(out, token{tOp, "="})
			i++
		case c == '!':
			if i+1 < len(s) && s[i+1] == '=' {
				out = append(out, token{tOp, "!="})
				i += 2
			} else {
				return nil, fmt.Errorf("unexpected '!' at %d", i)
			}
		case c == '<' || c == '>':
			if i+1 < len(s) && s[i+1] == '=' {
				out = append(out, token{tOp, s[i : i+2]})
				i += 2
			} else {
				out = append(out, token{tOp, s[i : i+1]})
				i++
			}
		case c == '\'':
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				if s[i] == '\\' {
					if i+1 >= len(s) {
						return nil, errors.New("dangling escape")
					}
					b.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '\'' {
					closed = true
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, errors.New("unterminated string")
			}
			out = append(out, token{tString, b.String()})
		case c < 0x80 && (unicode.IsLetter(rune(c)) || c == '_'):
			j := i
			for j < len(s) && s[j] < 0x80 && (unicode.IsLetter(rune(s[j])) || unicode.IsDigit(rune(s[j])) || s[j] == '_' || s[j] == '.') {
				j++
			}
			out = append(out, token{tIdent, s[i:j]})
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q at %d", c, i)
		}
	}
	return out, nil
}

type parser struct {
	toks []token
	pos  int
}

const maxDepth = 100

func (p *parser) peek() token {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return token{kind: tEOF}
}

func (p *parser) next() token {
	t := p.peek()
	if p.pos < len(p.toks) {
		p.pos++
	}
	return t
}

func (p *parser) keyword(kw string) bool {
	t := p.peek()
	if t.kind == tIdent && strings.EqualFold(t.text, kw) {
		p.pos++
		return true
	}
	return false
}

func (p *parser) or(depth int) (node, error) {
	l, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.keyword("or") {
		r, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		l = &orNode{l, r}
	}
	return l, nil
}

func (p *parser) and(depth int) (node, error) {
	l, err := p.not(depth)
	if err != nil {
		return nil, err
	}
	for p.keyword("and") {
		r, err := p.not(depth)
		if err != nil {
			return nil, err
		}
		l = &andNode{l, r}
	}
	return l, nil
}

func (p *parser) not(depth int) (node, error) {
	if depth > maxDepth {
		return nil, errors.New("query nested too deeply")
	}
	if p.keyword("not") {
		x, err := p.not(depth + 1)
		if err != nil {
			return nil, err
		}
		return &notNode{x}, nil
	}
	if p.peek().kind == tLParen {
		p.next()
		x, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next().kind != tRParen {
			return nil, errors.New("missing )")
		}
		return x, nil
	}
	return p.term()
}

func (p *parser) term() (node, error) {
	t := p.next()
	switch t.kind {
	case tString:
		// 'value' in collection
		if !p.keyword("in") {
			return nil, fmt.Errorf("expected 'in' after %s", quote(t.text))
		}
		f := p.next()
		if f.kind != tIdent || !inFields[f.text] {
			return nil, fmt.Errorf("invalid collection %q for 'in'", f.text)
		}
		return &inNode{val: t.text, field: f.text}, nil
	case tIdent:
		field := t.text
		if hasFields[field] {
			return p.has(field)
		}
		kind, ok := cmpFields[field]
		if !ok {
			return nil, fmt.Errorf("invalid field %q", field)
		}
		op := p.next()
		opText := op.text
		if op.kind == tIdent && strings.EqualFold(op.text, "contains") {
			opText = "contains"
		} else if op.kind != tOp {
			return nil, fmt.Errorf("expected operator after %s", field)
		}
		allowed := false
		for _, o := range opsFor(field) {
			if o == opText {
				allowed = true
			}
		}
		if !allowed {
			return nil, fmt.Errorf("operator %s not allowed for %s", opText, field)
		}
		v := p.next()
		switch kind {
		case kBool:
			if v.kind != tIdent || !(strings.EqualFold(v.text, "true") || strings.EqualFold(v.text, "false")) {
				return nil, fmt.Errorf("%s needs true or false", field)
			}
			return &cmpNode{field: field, op: opText, val: value{isBool: true, b: strings.EqualFold(v.text, "true")}}, nil
		case kTime:
			if v.kind != tString {
				return nil, fmt.Errorf("%s needs a quoted RFC 3339 time", field)
			}
			if _, err := parseTime(v.text); err != nil {
				return nil, fmt.Errorf("invalid time %q", v.text)
			}
			return &cmpNode{field: field, op: opText, val: value{s: v.text}}, nil
		default:
			if v.kind != tString {
				return nil, fmt.Errorf("%s needs a quoted string", field)
			}
			return &cmpNode{field: field, op: opText, val: value{s: v.text}}, nil
		}
	}
	return nil, fmt.Errorf("unexpected %q", t.text)
}

func (p *parser) has(field string) (node, error) {
	if !p.keyword("has") {
		return nil, fmt.Errorf("expected 'has' after %s", field)
	}
	if p.next().kind != tLBrace {
		return nil, errors.New("expected {")
	}
	var key, val string
	if !p.keyword("key") || p.next().text != "=" {
		return nil, errors.New("expected key =")
	}
	k := p.next()
	if k.kind != tString {
		return nil, errors.New("key needs a quoted string")
	}
	key = k.text
	if !p.keyword("and") || !p.keyword("value") || p.next().text != "=" {
		return nil, errors.New("expected and value =")
	}
	v := p.next()
	if v.kind != tString {
		return nil, errors.New("value needs a quoted string")
	}
	val = v.text
	if p.next().kind != tRBrace {
		return nil, errors.New("expected }")
	}
	return &hasNode{field: field, key: key, val: val}, nil
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("bad time")
}

func (n *andNode) eval(f *file, e *evalEnv) bool { return n.l.eval(f, e) && n.r.eval(f, e) }
func (n *orNode) eval(f *file, e *evalEnv) bool  { return n.l.eval(f, e) || n.r.eval(f, e) }
func (n *notNode) eval(f *file, e *evalEnv) bool { return !n.x.eval(f, e) }

func (n *andNode) str(b *strings.Builder) { bin(b, n.l, "and", n.r) }
func (n *orNode) str(b *strings.Builder)  { bin(b, n.l, "or", n.r) }
func (n *notNode) str(b *strings.Builder) {
	b.WriteString("not (")
	n.x.str(b)
	b.WriteString(")")
}

func bin(b *strings.Builder, l node, op string, r node) {
	b.WriteString("(")
	l.str(b)
	b.WriteString(" " + op + " ")
	r.str(b)
	b.WriteString(")")
}

func (n *cmpNode) str(b *strings.Builder) {
	b.WriteString(n.field + " " + n.op + " " + n.val.String())
}
func (n *inNode) str(b *strings.Builder) { b.WriteString(quote(n.val) + " in " + n.field) }
func (n *hasNode) str(b *strings.Builder) {
	b.WriteString(n.field + " has { key=" + quote(n.key) + " and value=" + quote(n.val) + " }")
}

func (n *cmpNode) eval(f *file, _ *evalEnv) bool {
	switch n.field {
	case "name":
		return cmpString(n.op, f.Name, n.val.s)
	case "fullText":
		return containsPrefix(f.Name, n.val.s) || containsPrefix(f.Description, n.val.s)
	case "mimeType":
		if n.op == "contains" {
			return strings.Contains(strings.ToLower(f.MimeType), strings.ToLower(n.val.s))
		}
		return cmpString(n.op, f.MimeType, n.val.s)
	case "trashed":
		return cmpBool(n.op, f.Trashed, n.val.b)
	case "starred":
		return cmpBool(n.op, f.Starred, n.val.b)
	case "sharedWithMe":
		return cmpBool(n.op, false, n.val.b)
	case "modifiedTime", "createdTime", "viewedByMeTime":
		t, _ := parseTime(n.val.s)
		ft := f.Modified
		if n.field == "createdTime" {
			ft = f.Created
		}
		c := ft.Compare(t)
		switch n.op {
		case "=":
			return c == 0
		case "!=":
			return c != 0
		case "<":
			return c < 0
		case "<=":
			return c <= 0
		case ">":
			return c > 0
		case ">=":
			return c >= 0
		}
	}
	return false
}

func cmpString(op, a, b string) bool {
	switch op {
	case "=":
		return a == b
	case "!=":
		return a != b
	case "contains":
		return containsPrefix(a, b)
	}
	return false
}

// containsPrefix mimics Drive's name contains: "prefix matching only for a
// name term" — the value must start the name or one of its words,
// case-insensitively.
func containsPrefix(name, v string) bool {
	name, v = strings.ToLower(name), strings.ToLower(v)
	if strings.HasPrefix(name, v) {
		return true
	}
	for i := 1; i < len(name); i++ {
		prev := rune(name[i-1])
		if !unicode.IsLetter(prev) && !unicode.IsDigit(prev) && strings.HasPrefix(name[i:], v) {
			return true
		}
	}
	return false
}

func cmpBool(op string, a, b bool) bool {
	if op == "=" {
		return a == b
	}
	return a != b
}

func (n *inNode) eval(f *file, e *evalEnv) bool {
	switch n.field {
	case "parents":
		id := n.val
		if e != nil && e.alias != nil {
			id = e.alias(id)
		}
		for _, p := range f.Parents {
			if p == id {
				return true
			}
		}
		return false
	case "owners", "writers":
		return n.val == "me" || n.val == emuUserEmail
	case "readers":
		return n.val == "me" || n.val == emuUserEmail || n.val == "anyone"
	}
	return false
}

func (n *hasNode) eval(f *file, _ *evalEnv) bool {
	m := f.Properties
	if n.field == "appProperties" {
		m = f.AppProperties
	}
	v, ok := m[n.key]
	return ok && v == n.val
}
