package keys

import (
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// NormalizePassword prepares a password the way RFC 8265's OpaqueString
// profile does (PRECIS, the profile for passwords): every non-ASCII space
// becomes U+0020, then the whole is put in Unicode Normalization Form C.
// So "é" typed as one code point (most keyboards) or as "e" plus a
// combining accent (some input methods, text copied from macOS file
// names) is the same password, and so is a no-break space for a space.
// The profile's disallowed characters are not refused: a password that
// worked before must keep working. Bytes that are not UTF-8 are left as
// they are.
func NormalizePassword(p []byte) []byte {
	if !utf8.Valid(p) {
		return p
	}
	out := make([]byte, 0, len(p))
	for _, r := range string(p) {
		if r > unicode.MaxASCII && unicode.Is(unicode.Zs, r) {
			r = ' '
		}
		out = utf8.AppendRune(out, r)
	}
	return norm.NFC.Bytes(out)
}
