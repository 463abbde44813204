package keys

import (
	"errors"
	"strings"
	"testing"
)

func TestFormatRecoveryKey(t *testing.T) {
	got := FormatRecoveryKey(seqKey(0xf0))
	const want = "f0f1 f2f3 f4f5 f6f7 f8f9 fafb fcfd feff 0001 0203 0405 0607 0809 0a0b 0c0d 0e0f"
	if got != want {
		t.Fatalf("FormatRecoveryKey = %q, want %q", got, want)
	}
}

func TestRecoveryKeyRoundTrip(t *testing.T) {
	for i := 0; i < 100; i++ {
		k, err := NewKey()
		if err != nil {
			t.Fatal(err)
		}
		s := FormatRecoveryKey(k)
		if len(s) != 79 || strings.Count(s, " ") != 15 || s != strings.ToLower(s) {
			t.Fatalf("FormatRecoveryKey = %q: want 16 lowercase groups of 4", s)
		}
		for _, g := range strings.Split(s, " ") {
			if len(g) != 4 {
				t.Fatalf("FormatRecoveryKey = %q: group %q", s, g)
			}
		}
		back, err := ParseRecoveryKey(s)
		if err != nil {
			t.Fatalf("ParseRecoveryKey(%q): %v", s, err)
		}
		if back != k {
			t.Fatalf("round trip of %x gave %x", k, back)
		}
	}
}

func TestParseRecoveryKeyAccepts(t *testing.T) {
	k := seqKey(0xa0)
	canon := FormatRecoveryKey(k) // "a0a1 a2a3 ... bebf"
	bare := strings.ReplaceAll(canon, " ", "")
	tests := []struct {
		name, in string
	}{
		{"canonical", canon},
		{"uppercase", strings.ToUpper(canon)},
		{"no separators", bare},
		{"mixed case", "A0a1A2a3" + bare[8:]},
		{"dashes", strings.ReplaceAll(canon, " ", "-")},
		{"double separators", strings.ReplaceAll(canon, " ", " - ")},
		{"newlines", strings.ReplaceAll(canon, " ", "\n")},
		{"crlf and tabs", strings.ReplaceAll(canon, " ", "\r\n\t")},
		{"surrounding space", "  \n" + canon + "\n"},
		{"odd grouping", bare[:3] + " " + bare[3:17] + "-" + bare[17:]},
		{"en dash", strings.ReplaceAll(canon, " ", "\u2013")},
		{"em dash", strings.ReplaceAll(canon, " ", "\u2014")},
		{"hyphen", strings.ReplaceAll(canon, " ", "\u2010")},
		{"minus sign", strings.ReplaceAll(canon, " ", "\u2212")},
		{"fullwidth hyphen-minus", strings.ReplaceAll(canon, " ", "\uff0d")},
		{"no-break space", strings.ReplaceAll(canon, " ", "\u00a0")},
		{"zero-width space", strings.ReplaceAll(canon, " ", "\u200b")},
		{"byte order mark", "\ufeff" + canon},
		{"soft hyphen", strings.ReplaceAll(canon, " ", "\u00ad")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRecoveryKey(tt.in)
			if err != nil {
				t.Fatalf("ParseRecoveryKey(%q): %v", tt.in, err)
			}
			if got != k {
				t.Fatalf("ParseRecoveryKey(%q) = %x, want %x", tt.in, got, k)
			}
		})
	}
}

func TestParseRecoveryKeyRejects(t *testing.T) {
	canon := FormatRecoveryKey(seqKey(0xa0))
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "recovery key has 0 hex digits, want 64"},
		{"only separators", " - \n", "recovery key has 0 hex digits, want 64"},
		{"63 digits", canon[:len(canon)-1], "recovery key has 63 hex digits, want 64"},
		{"65 digits", canon + "0", "recovery key has 65 hex digits, want 64"},
		{"128 digits", canon + canon, "recovery key has 128 hex digits, want 64"},
		{"g", canon[:16] + "g" + canon[17:], "recovery key: 'g' at position 17 is not a hex digit"},
		{"G first", "G" + canon[1:], "recovery key: 'G' at position 1 is not a hex digit"},
		{"letter o for zero", canon[:5] + "o" + canon[6:], "recovery key: 'o' at position 6 is not a hex digit"},
		{"unicode letter", "é" + canon[1:], "recovery key: 'é' at position 1 is not a hex digit"},
		// Positions count characters, not bytes.
		{"after unicode space", "\u00a0\u00a0" + canon[:3] + "ß", "recovery key: 'ß' at position 6 is not a hex digit"},
		{"fullwidth digit", "\uff10" + canon[1:], "recovery key: '０' at position 1 is not a hex digit"},
		{"underscore", strings.Replace(canon, " ", "_", 1), "recovery key: '_' at position 5 is not a hex digit"},
		{"plus", canon + "+", "recovery key: '+' at position 80 is not a hex digit"},
		{"nul", canon[:78] + "\x00", `recovery key: '\x00' at position 79 is not a hex digit`},
		{"invalid utf-8", "\xff" + canon, `recovery key: '�' at position 1 is not a hex digit`},
		// A bad character is reported even when the length is also wrong.
		{"bad char and short", "abc!", "recovery key: '!' at position 4 is not a hex digit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseRecoveryKey(tt.in)
			if err == nil {
				t.Fatalf("ParseRecoveryKey(%q) = %x, want error", tt.in, k)
			}
			if !errors.Is(err, ErrMalformedKey) {
				t.Errorf("error %v does not wrap ErrMalformedKey", err)
			}
			if err.Error() != tt.want {
				t.Errorf("error %q, want %q", err, tt.want)
			}
			if k != (Key{}) {
				t.Errorf("non-zero key %x returned with error", k)
			}
		})
	}
}

func FuzzParseRecoveryKey(f *testing.F) {
	canon := FormatRecoveryKey(seqKey(0xa0))
	for _, s := range []string{
		"",
		canon,
		strings.ToUpper(canon),
		strings.ReplaceAll(canon, " ", ""),
		strings.ReplaceAll(canon, " ", "-"),
		strings.ReplaceAll(canon, " ", "\u2014\n"),
		canon[:len(canon)-1],
		canon + "0",
		canon[:16] + "g" + canon[17:],
		"é" + canon,
		"\xff\xfe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseRecoveryKey(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("error %v does not wrap ErrMalformedKey", err)
			}
			return
		}
		formatted := FormatRecoveryKey(k)
		back, err := ParseRecoveryKey(formatted)
		if err != nil {
			t.Fatalf("ParseRecoveryKey(FormatRecoveryKey(%x) = %q): %v", k, formatted, err)
		}
		if back != k {
			t.Fatalf("round trip of %x gave %x", k, back)
		}
	})
}
