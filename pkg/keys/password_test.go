package keys

import (
	"bytes"
	"errors"
	"testing"
)

func TestNormalizePassword(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"correct horse", "correct horse"},
		{"caf\u0065\u0301", "caf\u00e9"},                           // e + combining acute → é
		{"caf\u00e9", "caf\u00e9"},                                 // already NFC
		{"pass\u00a0word", "pass word"},                            // no-break space
		{"pass\u3000word", "pass word"},                            // ideographic space
		{"\u212b", "\u00c5"},                                       // Ångström sign → Å (NFC)
		{"\uff21", "\uff21"},                                       // fullwidth A: NFC keeps it (not NFKC)
		{"tab\there", "tab\there"},                                 // controls are kept
		{"\xff\xfe not utf-8 \u00a0", "\xff\xfe not utf-8 \u00a0"}, // left alone
	} {
		if got := string(NormalizePassword([]byte(tc.in))); got != tc.want {
			t.Errorf("NormalizePassword(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestPasswordSlotNormalizes: a slot opens with the password however its
// accents and spaces were encoded, and a slot made before normalization
// (wrapping the raw bytes) still opens with those bytes.
func TestPasswordSlotNormalizes(t *testing.T) {
	master := seqKey(0x40)
	nfc, nfd := []byte("caf\u00e9 cr\u00e8me"), []byte("cafe\u0301 cre\u0300me")
	nbsp := []byte("caf\u00e9\u00a0cr\u00e8me")
	raw, err := newSlot(KindPassword, master, nfd, &fastArgon2, "before normalization", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		made  []byte // password given to NewPasswordSlot; nil: the raw slot
		typed []byte
		opens bool
	}{
		{"made NFC, typed NFD", nfc, nfd, true},
		{"made NFD, typed NFC", nfd, nfc, true},
		{"made NFC, no-break space typed", nfc, nbsp, true},
		{"old raw NFD slot, typed NFD", nil, nfd, true},
		{"other password", nfc, []byte("cafe creme"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := raw
			if tc.made != nil {
				if s, err = NewPasswordSlot(master, tc.made, fastArgon2, ""); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.Unwrap(bytes.Clone(tc.typed))
			switch {
			case tc.opens && (err != nil || got != master):
				t.Fatalf("Unwrap: %v", err)
			case !tc.opens && !errors.Is(err, ErrWrongKey):
				t.Fatalf("Unwrap with another password: %v, want ErrWrongKey", err)
			}
		})
	}
}
