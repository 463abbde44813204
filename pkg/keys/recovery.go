package keys

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// ErrMalformedKey is wrapped by every error ParseRecoveryKey returns.
var ErrMalformedKey = errors.New("malformed recovery key")

// recoveryDigits is the number of hex digits in a formatted recovery key.
const recoveryDigits = 2 * KeySize

// malformedKeyError carries a precise message and unwraps to
// ErrMalformedKey, so the message is not cluttered with the sentinel's text.
type malformedKeyError struct{ msg string }

func (e *malformedKeyError) Error() string { return e.msg }
func (e *malformedKeyError) Unwrap() error { return ErrMalformedKey }

// FormatRecoveryKey renders k as 64 lowercase hex digits in 16 groups of 4
// separated by single spaces, e.g. "0f3a 9b2c ... 7d41".
func FormatRecoveryKey(k Key) string {
	const hexDigits = "0123456789abcdef"
	var b strings.Builder
	b.Grow(recoveryDigits + recoveryDigits/4 - 1)
	for i, c := range k {
		if i > 0 && i%2 == 0 {
			b.WriteByte(' ')
		}
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0f])
	}
	return b.String()
}

// ParseRecoveryKey parses a recovery key as typed or pasted by a user. Hex
// digits may be in any case. Separators are ignored wherever they appear:
// white space (spaces, tabs, newlines and other Unicode spaces), dashes
// ('-' and the Unicode hyphens and dashes U+2010..U+2015, U+2212, U+FE58,
// U+FE63, U+FF0D) and the invisible characters U+00AD (soft hyphen),
// U+200B (zero-width space) and U+FEFF (byte order mark) that copy and
// paste tends to bring along.
//
// Any other character, or a number of hex digits other than 64, is
// rejected with an error wrapping ErrMalformedKey that names the offending
// character and its position (counted in characters from 1), or the number
// of digits found.
func ParseRecoveryKey(s string) (Key, error) {
	// First pass: validate and count, so nothing else happens on bad input.
	n, pos := 0, 0
	for _, r := range s {
		pos++
		switch {
		case hexValue(r) >= 0:
			n++
		case isRecoverySeparator(r):
		default:
			return Key{}, &malformedKeyError{fmt.Sprintf("recovery key: %q at position %d is not a hex digit", r, pos)}
		}
	}
	if n != recoveryDigits {
		return Key{}, &malformedKeyError{fmt.Sprintf("recovery key has %d hex digits, want %d", n, recoveryDigits)}
	}

	var k Key
	i := 0
	for _, r := range s {
		v := hexValue(r)
		if v < 0 {
			continue
		}
		if i%2 == 0 {
			k[i/2] = byte(v) << 4
		} else {
			k[i/2] |= byte(v)
		}
		i++
	}
	return k, nil
}

// hexValue returns the value of an ASCII hex digit in either case, or -1.
func hexValue(r rune) int {
	switch {
	case '0' <= r && r <= '9':
		return int(r - '0')
	case 'a' <= r && r <= 'f':
		return int(r-'a') + 10
	case 'A' <= r && r <= 'F':
		return int(r-'A') + 10
	}
	return -1
}

// isRecoverySeparator reports whether ParseRecoveryKey skips r.
func isRecoverySeparator(r rune) bool {
	switch r {
	case '-',
		'\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2015', // hyphen .. horizontal bar
		'\u2212', // minus sign
		'\uFE58', // small em dash
		'\uFE63', // small hyphen-minus
		'\uFF0D', // fullwidth hyphen-minus
		'\u00AD', // soft hyphen
		'\u200B', // zero-width space
		'\uFEFF': // byte order mark / zero-width no-break space
		return true
	}
	return unicode.IsSpace(r)
}
