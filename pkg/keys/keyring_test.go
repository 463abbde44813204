package keys

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func testKeyring() *Keyring {
	k := bytes.Repeat([]byte{7}, KeySize)
	return &Keyring{V: 1, Version: 3, Time: time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC), Epoch: 2,
		Content: &ContentKeys{ChunkID: k, Chunker: k, PageTag: k},
		Old:     []EpochKey{{Epoch: 1, Key: k, Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}},
		Retired: []RetiredEpoch{{Epoch: 0, Time: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}},
		Slots:   []SlotRef{{ID: strings.Repeat("ab", 16), SHA256: strings.Repeat("cd", 32)}},
		Removed: []RemovedSlot{{ID: strings.Repeat("ef", 16), Time: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), Why: "rotated"}},
	}
}

func TestKeyringRoundTrip(t *testing.T) {
	k := testKeyring()
	b, err := k.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseKeyring(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := got.Marshal()
	if !bytes.Equal(b, b2) {
		t.Fatalf("round trip:\n%s\n%s", b, b2)
	}
	if _, ok := got.Slot(strings.Repeat("ab", 16)); !ok {
		t.Error("listed slot not found")
	}
	if r, ok := got.RemovedSlot(strings.Repeat("ef", 16)); !ok || r.Why != "rotated" {
		t.Error("removed slot not found")
	}
}

// The decoder refuses every malformed keyring (FORMAT.md §2.4).
func TestParseKeyringRejects(t *testing.T) {
	good, _ := testKeyring().Marshal()
	g := string(good)
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "not a JSON object"},
		{"array", "[]", "not a JSON object"},
		{"trailing", g + "{}", "trailing"},
		{"unknown field", strings.Replace(g, `"v":1`, `"v":1,"x":2`, 1), "unknown field"},
		{"case", strings.Replace(g, `"version"`, `"Version"`, 1), "unknown field"},
		{"duplicate", strings.Replace(g, `"v":1`, `"v":1,"v":1`, 1), "duplicate"},
		{"nested duplicate", strings.Replace(g, `"epoch":1,`, `"epoch":1,"epoch":1,`, 1), "duplicate"},
		{"version 0", strings.Replace(g, `"version":3`, `"version":0`, 1), "version 0"},
		{"v 2", strings.Replace(g, `"v":1`, `"v":2`, 1), "unsupported"},
		{"no slots", strings.Replace(g, `"slots":[{"id":"`+strings.Repeat("ab", 16)+`","sha256":"`+strings.Repeat("cd", 32)+`"}]`, `"slots":[]`, 1), "no slots"},
		{"bad slot id", strings.Replace(g, strings.Repeat("ab", 16), "AB"+strings.Repeat("ab", 15), 1), "slot reference"},
		{"removed still listed", strings.Replace(g, strings.Repeat("ef", 16), strings.Repeat("ab", 16), 1), "still listed"},
		{"bad reason", strings.Replace(g, `"rotated"`, `"lost"`, 1), "reason"},
		{"old epoch not older", strings.Replace(g, `"epoch":1,`, `"epoch":2,`, 1), "not older"},
		{"short key", strings.Replace(g, `"key":"`, `"key":"AAAA`, 1), "bytes"},
		{"content in epoch 0", strings.Replace(strings.Replace(g, `"epoch":2`, `"epoch":0`, 1), `"old":[{"epoch":1`, `"old":[{"epoch":1`, 1), "content keys"},
		{"huge", `{"v":1,"label":"` + strings.Repeat("x", maxKeyringSize) + `"}`, "at most"},
	} {
		_, err := ParseKeyring([]byte(c.in))
		if !errors.Is(err, ErrBadKeyring) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func FuzzParseKeyring(f *testing.F) {
	good, _ := testKeyring().Marshal()
	f.Add(good)
	f.Add([]byte(`{"v":1,"version":1,"time":"2026-12-04T00:00:00Z","epoch":0,"slots":[{"id":"` + strings.Repeat("01", 16) + `","sha256":"` + strings.Repeat("02", 32) + `"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKeyring(data)
		if err != nil {
			if !errors.Is(err, ErrBadKeyring) {
				t.Fatalf("error does not wrap ErrBadKeyring: %v", err)
			}
			return
		}
		// What parses marshals, and parses again to the same.
		b, err := k.Marshal()
		if err != nil {
			t.Fatalf("parsed keyring does not marshal: %v", err)
		}
		k2, err := ParseKeyring(b)
		if err != nil {
			t.Fatalf("marshalled keyring does not parse: %v", err)
		}
		b2, _ := k2.Marshal()
		if !bytes.Equal(b, b2) {
			t.Fatalf("not stable:\n%s\n%s", b, b2)
		}
	})
}
