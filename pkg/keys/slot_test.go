package keys

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fastArgon2 keeps password-slot tests quick; DefaultArgon2 has its own test.
var fastArgon2 = Argon2Params{Time: 1, MemoryKiB: 8 * 1024, Threads: 2}

var testPassword = []byte("correct horse battery staple")

// slotCase is one slot of each kind, with the secret that opens it.
type slotCase struct {
	name   string
	slot   *Slot
	secret []byte
}

func newSlots(t testing.TB, master Key) []slotCase {
	t.Helper()
	recovery, vault := seqKey(0x80), seqKey(0x90)
	rs, err := NewRecoverySlot(master, recovery, "printed copy")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := NewPasswordSlot(master, testPassword, fastArgon2, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	vs, err := NewVaultSlot(master, vault, "", map[string]string{"url": "https://vault.example/v1/k", "pin": "sha256:abcd"})
	if err != nil {
		t.Fatal(err)
	}
	return []slotCase{
		{"recovery", rs, recovery[:]},
		{"password", ps, testPassword},
		{"vault", vs, vault[:]},
	}
}

// cloneSlot deep-copies s, so tests can tamper with the copy.
func cloneSlot(s *Slot) *Slot {
	c := *s
	if s.KDF != nil {
		p := *s.KDF
		c.KDF = &p
	}
	c.Salt = bytes.Clone(s.Salt)
	c.Nonce = bytes.Clone(s.Nonce)
	c.Wrapped = bytes.Clone(s.Wrapped)
	if s.Extra != nil {
		c.Extra = map[string]string{}
		for k, v := range s.Extra {
			c.Extra[k] = v
		}
	}
	return &c
}

// slotsEqual compares slots field by field, with Created compared as an
// instant plus its UTC offset (which is what survives JSON).
func slotsEqual(a, b *Slot) bool {
	_, oa := a.Created.Zone()
	_, ob := b.Created.Zone()
	if !a.Created.Equal(b.Created) || oa != ob {
		return false
	}
	a2, b2 := *a, *b
	a2.Created, b2.Created = time.Time{}, time.Time{}
	a2.extraAuthentic, b2.extraAuthentic = false, false // state of the last Unwrap, not content
	return reflect.DeepEqual(a2, b2)
}

func TestSlotRoundTrip(t *testing.T) {
	master := seqKey(0x40)
	for _, c := range newSlots(t, master) {
		t.Run(c.name, func(t *testing.T) {
			s := c.slot
			if s.Version != 1 || string(s.Kind) != c.name || len(s.ID) != 32 ||
				len(s.Salt) != 32 || len(s.Nonce) != 12 || len(s.Wrapped) != 48 {
				t.Fatalf("unexpected slot %+v", s)
			}
			if (s.KDF != nil) != (s.Kind == KindPassword) {
				t.Fatalf("KDF = %v for a %s slot", s.KDF, s.Kind)
			}
			if time.Since(s.Created) > time.Minute || s.Created.Location() != time.UTC {
				t.Errorf("Created = %v", s.Created)
			}
			got, err := s.Unwrap(c.secret)
			if err != nil {
				t.Fatalf("Unwrap: %v", err)
			}
			if got != master {
				t.Fatalf("Unwrap = %x, want %x", got, master)
			}

			data, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := ParseSlot(data)
			if err != nil {
				t.Fatalf("ParseSlot(%s): %v", data, err)
			}
			if !slotsEqual(parsed, s) {
				t.Fatalf("ParseSlot(Marshal(s)) = %+v, want %+v", parsed, s)
			}
			got, err = parsed.Unwrap(c.secret)
			if err != nil || got != master {
				t.Fatalf("Unwrap of parsed slot = %x, %v", got, err)
			}
		})
	}
}

func TestSlotJSONFieldNames(t *testing.T) {
	ps, err := NewPasswordSlot(seqKey(0x40), testPassword, fastArgon2, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	ps.Extra = map[string]string{"k": "v"}
	data, err := ps.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	want := []string{"argon2id", "created", "extra", "id", "kind", "label", "nonce", "salt", "v", "wrapped"}
	if !equalSets(keys, want) {
		t.Errorf("top-level fields %v, want %v", keys, want)
	}
	if got := string(m["argon2id"]); got != `{"t":1,"m":8192,"p":2}` {
		t.Errorf("argon2id = %s", got)
	}
}

func equalSets(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[string]bool{}
	for _, s := range a {
		set[s] = true
	}
	for _, s := range b {
		if !set[s] {
			return false
		}
	}
	return true
}

func TestSlotFreshRandomness(t *testing.T) {
	master, recovery := seqKey(0x40), seqKey(0x80)
	a, err := NewRecoverySlot(master, recovery, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRecoverySlot(master, recovery, "")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID == b.ID || bytes.Equal(a.Salt, b.Salt) || bytes.Equal(a.Nonce, b.Nonce) || bytes.Equal(a.Wrapped, b.Wrapped) {
		t.Fatalf("two slots share random values:\n%+v\n%+v", a, b)
	}
}

// TestSlotKnownAnswers pins the wrapping construction (key derivation and
// AAD layout) with ciphertexts computed independently with Python's
// hmac module and pyca/cryptography's AESGCM and Argon2id.
func TestSlotKnownAnswers(t *testing.T) {
	master, secret := seqKey(0x40), seqKey(0x80)
	id := seqKey(0xc0)
	salt := seqKey(0xe0)
	nonce := seqKey(0x10)
	tests := []struct {
		kind    SlotKind
		kdf     *Argon2Params
		secret  []byte
		wrapped string
	}{
		{KindRecovery, nil, secret[:], "fe9ab94c70689119f5addac636851ae66fa397d8e5986926d5d783de8b02937e6c5253e1a74a79ca3c01d3f9ce37886d"},
		{KindVault, nil, secret[:], "fe9ab94c70689119f5addac636851ae66fa397d8e5986926d5d783de8b02937e7cdd8dc35148fb9dd8058bf368b837be"},
		{KindPassword, &Argon2Params{Time: 1, MemoryKiB: 8 * 1024, Threads: 2}, testPassword, "cb95a7c935279223d1494eb17dcc9b7ac9b0429c1de1803ec207696c74d035853ecbdece53dd30521dc9e25c07a89ce8"},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			wrapped, _ := hex.DecodeString(tt.wrapped)
			s := &Slot{
				Version: 1,
				ID:      hex.EncodeToString(id[:16]),
				Kind:    tt.kind,
				Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
				KDF:     tt.kdf,
				Salt:    salt[:],
				Nonce:   nonce[:12],
				Wrapped: wrapped,
			}
			got, err := s.Unwrap(tt.secret)
			if err != nil {
				t.Fatalf("Unwrap: %v", err)
			}
			if got != master {
				t.Fatalf("Unwrap = %x, want %x", got, master)
			}
		})
	}
}

func TestSlotWrongSecret(t *testing.T) {
	master := seqKey(0x40)
	slots := newSlots(t, master)
	other := seqKey(0x81)
	tests := []struct {
		name   string
		slot   int
		secret []byte
	}{
		{"recovery: other key", 0, other[:]},
		{"recovery: vault secret", 0, slots[2].secret},
		{"recovery: master key", 0, master[:]},
		{"recovery: short", 0, slots[0].secret[:31]},
		{"recovery: formatted text", 0, []byte(FormatRecoveryKey(seqKey(0x80)))},
		{"recovery: nil", 0, nil},
		{"password: other", 1, []byte("correct horse battery stapler")},
		{"password: case", 1, []byte("Correct horse battery staple")},
		{"password: prefix", 1, testPassword[:len(testPassword)-1]},
		{"password: empty", 1, nil},
		{"password: recovery key", 1, slots[0].secret},
		{"vault: other", 2, other[:]},
		{"vault: recovery key", 2, slots[0].secret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := slots[tt.slot].slot.Unwrap(tt.secret)
			if !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Unwrap = %x, %v; want ErrWrongKey", got, err)
			}
			if got != (Key{}) {
				t.Fatalf("Unwrap returned %x with an error", got)
			}
		})
	}
}

func TestSlotTampering(t *testing.T) {
	master := seqKey(0x40)
	slots := newSlots(t, master)
	rec, pw, vault := slots[0], slots[1], slots[2]
	tests := []struct {
		name   string
		base   slotCase
		tamper func(*Slot)
		want   error // ErrWrongKey for tampering only crypto can detect
	}{
		{"wrapped first byte", rec, func(s *Slot) { s.Wrapped[0] ^= 1 }, ErrWrongKey},
		{"wrapped tag byte", pw, func(s *Slot) { s.Wrapped[47] ^= 0x80 }, ErrWrongKey},
		{"wrapped truncated", vault, func(s *Slot) { s.Wrapped = s.Wrapped[:47] }, ErrBadSlot},
		{"nonce", rec, func(s *Slot) { s.Nonce[11] ^= 1 }, ErrWrongKey},
		{"nonce", pw, func(s *Slot) { s.Nonce[0] ^= 1 }, ErrWrongKey},
		{"salt", rec, func(s *Slot) { s.Salt[5] ^= 1 }, ErrWrongKey},
		{"salt", pw, func(s *Slot) { s.Salt[31] ^= 1 }, ErrWrongKey},
		{"salt", vault, func(s *Slot) { s.Salt[0] ^= 1 }, ErrWrongKey},
		{"id", rec, func(s *Slot) { s.ID = flipHex(s.ID, 0) }, ErrWrongKey},
		{"id", pw, func(s *Slot) { s.ID = flipHex(s.ID, 31) }, ErrWrongKey},
		{"id", vault, func(s *Slot) { s.ID = flipHex(s.ID, 7) }, ErrWrongKey},
		{"id uppercase", rec, func(s *Slot) { s.ID = strings.ToUpper(s.ID) }, ErrBadSlot},
		{"kind recovery to vault", rec, func(s *Slot) { s.Kind = KindVault }, ErrWrongKey},
		{"kind vault to recovery", vault, func(s *Slot) { s.Kind = KindRecovery }, ErrWrongKey},
		{"kind recovery to password", rec, func(s *Slot) { s.Kind = KindPassword; s.KDF = &fastArgon2 }, ErrWrongKey},
		{"kind password to recovery", pw, func(s *Slot) { s.Kind = KindRecovery; s.KDF = nil }, ErrWrongKey},
		{"kind unknown", rec, func(s *Slot) { s.Kind = "Recovery" }, ErrBadSlot},
		{"argon2 time", pw, func(s *Slot) { s.KDF.Time++ }, ErrWrongKey},
		{"argon2 memory", pw, func(s *Slot) { s.KDF.MemoryKiB += 8 }, ErrWrongKey},
		// Argon2 rounds memory down to a multiple of 4*p blocks; the AAD
		// still catches a change the KDF itself would not.
		{"argon2 memory rounding", pw, func(s *Slot) { s.KDF.MemoryKiB++ }, ErrWrongKey},
		{"argon2 threads", pw, func(s *Slot) { s.KDF.Threads = 1 }, ErrWrongKey},
		{"argon2 removed", pw, func(s *Slot) { s.KDF = nil }, ErrBadSlot},
		{"argon2 added", rec, func(s *Slot) { s.KDF = &fastArgon2 }, ErrBadSlot},
		{"version", rec, func(s *Slot) { s.Version = 2 }, ErrBadSlot},
	}
	for _, tt := range tests {
		t.Run(tt.base.name+" "+tt.name, func(t *testing.T) {
			s := cloneSlot(tt.base.slot)
			tt.tamper(s)
			got, err := s.Unwrap(tt.base.secret)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Unwrap = %x, %v; want %v", got, err, tt.want)
			}
			// The untouched original still opens.
			if m, err := tt.base.slot.Unwrap(tt.base.secret); err != nil || m != master {
				t.Fatalf("original slot broken: %x, %v", m, err)
			}
		})
	}
}

// flipHex changes the hex digit at i to a different lowercase hex digit.
func flipHex(s string, i int) string {
	b := []byte(s)
	if b[i] == '0' {
		b[i] = '1'
	} else {
		b[i] = '0'
	}
	return string(b)
}

// TestSlotInformationalFieldsNotAuthenticated documents that label, creation
// time and extra fields are outside the AAD: changing them does not stop
// the slot from opening.
func TestSlotInformationalFieldsNotAuthenticated(t *testing.T) {
	master := seqKey(0x40)
	c := newSlots(t, master)[2]
	s := cloneSlot(c.slot)
	s.Label = "renamed"
	s.Created = s.Created.Add(-time.Hour)
	if m, err := s.Unwrap(c.secret); err != nil || m != master || !s.ExtraAuthentic() {
		t.Fatalf("Unwrap = %x, %v (extra authentic %v)", m, err, s.ExtraAuthentic())
	}
}

// A vault slot's extra fields (the vault's address, fingerprint and name)
// are bound: a slot whose extra was changed, added to or emptied does not
// open. A vault slot sealed before the binding (under the header alone)
// still opens, and says its extra is not authentic.
func TestVaultSlotExtraAuthenticated(t *testing.T) {
	master := seqKey(0x40)
	c := newSlots(t, master)[2]
	if c.slot.Kind != KindVault || len(c.slot.Extra) == 0 {
		t.Fatal("slot 2 is not a vault slot with extra fields")
	}
	for name, change := range map[string]func(s *Slot){
		"changed": func(s *Slot) { s.Extra["url"] = "https://elsewhere.example/" },
		"added":   func(s *Slot) { s.Extra["vault_fingerprint"] = "00" },
		"removed": func(s *Slot) { s.Extra = nil },
	} {
		s := cloneSlot(c.slot)
		change(s)
		if _, err := s.Unwrap(c.secret); !errors.Is(err, ErrWrongKey) {
			t.Errorf("%s extra: Unwrap %v, want ErrWrongKey", name, err)
		}
	}
	legacy := cloneSlot(c.slot)
	aead, err := legacy.aead(c.secret)
	if err != nil {
		t.Fatal(err)
	}
	legacy.Wrapped = aead.Seal(nil, legacy.Nonce, master[:], legacy.aad())
	legacy.Extra["url"] = "https://changed.example/"
	if m, err := legacy.Unwrap(c.secret); err != nil || m != master || legacy.ExtraAuthentic() {
		t.Fatalf("legacy vault slot: %x, %v, authentic %v", m, err, legacy.ExtraAuthentic())
	}
}

// TestSlotJSONBitFlips flips every bit of the encoded recovery and vault
// slots: each result must fail to parse, fail to open, or differ only in
// unauthenticated fields (or not at all, e.g. in base64 padding bits).
func TestSlotJSONBitFlips(t *testing.T) {
	master := seqKey(0x40)
	for _, c := range newSlots(t, master) {
		if c.slot.Kind == KindPassword {
			continue // an Argon2 run per flip is too slow
		}
		data, err := c.slot.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		opened := 0
		for i := range data {
			for bit := 0; bit < 8; bit++ {
				d := bytes.Clone(data)
				d[i] ^= 1 << bit
				s, err := ParseSlot(d)
				if err != nil {
					if !errors.Is(err, ErrBadSlot) {
						t.Fatalf("ParseSlot error %v does not wrap ErrBadSlot", err)
					}
					continue
				}
				m, err := s.Unwrap(c.secret)
				if err != nil {
					if !errors.Is(err, ErrWrongKey) {
						t.Fatalf("flip at %d: Unwrap error %v", i, err)
					}
					continue
				}
				opened++
				if m != master || s.ID != c.slot.ID || s.Kind != c.slot.Kind || s.KDF != nil ||
					!bytes.Equal(s.Salt, c.slot.Salt) || !bytes.Equal(s.Nonce, c.slot.Nonce) ||
					!bytes.Equal(s.Wrapped, c.slot.Wrapped) {
					t.Fatalf("flip of bit %d at %d (%q) opened with authenticated fields changed: %s", bit, i, data[i], d)
				}
			}
		}
		if opened == 0 {
			t.Errorf("%s: no flip opened; expected some in the label or date", c.name)
		}
	}
}

// validSlotJSON returns the JSON of a fresh password slot as a generic map.
func validSlotJSON(t *testing.T, kind SlotKind) map[string]any {
	t.Helper()
	master := seqKey(0x40)
	var s *Slot
	var err error
	switch kind {
	case KindPassword:
		s, err = NewPasswordSlot(master, testPassword, fastArgon2, "laptop")
	case KindRecovery:
		s, err = NewRecoverySlot(master, seqKey(0x80), "paper")
	}
	if err != nil {
		t.Fatal(err)
	}
	data, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseSlotRejects(t *testing.T) {
	b64 := func(n int) string { return strings.Repeat("A", (n+2)/3*4-((3-n%3)%3)) + strings.Repeat("=", (3-n%3)%3) }
	mapCases := []struct {
		name   string
		kind   SlotKind
		mutate func(m map[string]any)
	}{
		{"unknown field", KindRecovery, func(m map[string]any) { m["x"] = 1 }},
		{"field name case", KindRecovery, func(m map[string]any) { m["V"] = m["v"]; delete(m, "v") }},
		{"field name case in argon2id", KindPassword, func(m map[string]any) {
			m["argon2id"] = map[string]any{"T": 1, "m": 8192, "p": 2}
		}},
		{"unknown argon2id field", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["x"] = 0 }},
		{"version 2", KindRecovery, func(m map[string]any) { m["v"] = 2 }},
		{"version 0", KindRecovery, func(m map[string]any) { m["v"] = 0 }},
		{"version missing", KindRecovery, func(m map[string]any) { delete(m, "v") }},
		{"version string", KindRecovery, func(m map[string]any) { m["v"] = "1" }},
		{"version float", KindRecovery, func(m map[string]any) { m["v"] = 1.5 }},
		{"kind unknown", KindRecovery, func(m map[string]any) { m["kind"] = "fido2" }},
		{"kind case", KindRecovery, func(m map[string]any) { m["kind"] = "Recovery" }},
		{"kind missing", KindRecovery, func(m map[string]any) { delete(m, "kind") }},
		{"id missing", KindRecovery, func(m map[string]any) { delete(m, "id") }},
		{"id short", KindRecovery, func(m map[string]any) { m["id"] = m["id"].(string)[:30] }},
		{"id uppercase", KindRecovery, func(m map[string]any) { m["id"] = strings.ToUpper(m["id"].(string)) }},
		{"id not hex", KindRecovery, func(m map[string]any) { m["id"] = strings.Repeat("z", 32) }},
		{"salt missing", KindRecovery, func(m map[string]any) { delete(m, "salt") }},
		{"salt null", KindRecovery, func(m map[string]any) { m["salt"] = nil }},
		{"salt 31 bytes", KindRecovery, func(m map[string]any) { m["salt"] = b64(31) }},
		{"salt 33 bytes", KindRecovery, func(m map[string]any) { m["salt"] = b64(33) }},
		{"salt not base64", KindRecovery, func(m map[string]any) { m["salt"] = "!!!!" }},
		{"nonce missing", KindRecovery, func(m map[string]any) { delete(m, "nonce") }},
		{"nonce 16 bytes", KindRecovery, func(m map[string]any) { m["nonce"] = b64(16) }},
		{"wrapped missing", KindRecovery, func(m map[string]any) { delete(m, "wrapped") }},
		{"wrapped 32 bytes", KindRecovery, func(m map[string]any) { m["wrapped"] = b64(32) }},
		{"created missing", KindRecovery, func(m map[string]any) { delete(m, "created") }},
		{"created not a time", KindRecovery, func(m map[string]any) { m["created"] = "yesterday" }},
		{"created year 0", KindRecovery, func(m map[string]any) { m["created"] = "0000-01-01T00:00:00Z" }},
		{"argon2id on recovery slot", KindRecovery, func(m map[string]any) { m["argon2id"] = map[string]any{"t": 1, "m": 8192, "p": 1} }},
		{"argon2id missing", KindPassword, func(m map[string]any) { delete(m, "argon2id") }},
		{"argon2id null", KindPassword, func(m map[string]any) { m["argon2id"] = nil }},
		{"argon2id time 0", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["t"] = 0 }},
		{"argon2id time 17", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["t"] = 17 }},
		{"argon2id time huge", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["t"] = 4294967295 }},
		{"argon2id time overflow", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["t"] = 4294967296 }},
		{"argon2id memory 0", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["m"] = 0 }},
		{"argon2id memory below 8p", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["m"] = 15 }},
		{"argon2id memory 256MiB+1", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["m"] = 256*1024 + 1 }},
		{"argon2id memory 4TiB", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["m"] = 4294967295 }},
		{"argon2id threads 0", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["p"] = 0 }},
		{"argon2id threads 17", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["p"] = 17 }},
		{"argon2id threads 256", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["p"] = 256 }},
		{"argon2id negative", KindPassword, func(m map[string]any) { m["argon2id"].(map[string]any)["t"] = -1 }},
		{"argon2id not an object", KindPassword, func(m map[string]any) { m["argon2id"] = []any{1, 8192, 2} }},
		{"label control character", KindRecovery, func(m map[string]any) { m["label"] = "evil\x1b[2J" }},
		{"label newline", KindRecovery, func(m map[string]any) { m["label"] = "two\nlines" }},
		{"label too long", KindRecovery, func(m map[string]any) { m["label"] = strings.Repeat("x", 257) }},
		{"label not a string", KindRecovery, func(m map[string]any) { m["label"] = 7 }},
		{"extra not strings", KindRecovery, func(m map[string]any) { m["extra"] = map[string]any{"a": 1} }},
		{"extra empty name", KindRecovery, func(m map[string]any) { m["extra"] = map[string]any{"": "x"} }},
		{"extra control character", KindRecovery, func(m map[string]any) { m["extra"] = map[string]any{"url": "x\x07"} }},
	}
	for _, tt := range mapCases {
		t.Run(tt.name, func(t *testing.T) {
			m := validSlotJSON(t, tt.kind)
			tt.mutate(m)
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			expectBadSlot(t, data)
		})
	}

	valid, err := json.Marshal(validSlotJSON(t, KindRecovery))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSlot(valid); err != nil {
		t.Fatalf("ParseSlot of the valid base: %v", err)
	}
	rawCases := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"whitespace", " \n"},
		{"null", "null"},
		{"array", "[" + string(valid) + "]"},
		{"string", `"slot"`},
		{"truncated", string(valid[:len(valid)-1])},
		{"trailing object", string(valid) + "{}"},
		{"trailing garbage", string(valid) + "x"},
		{"trailing brace", string(valid) + "}"},
		{"two slots", string(valid) + "\n" + string(valid)},
		{"duplicate field", strings.Replace(string(valid), `{"created":`, `{"kind":"vault","created":`, 1)},
		{"duplicate field same value", strings.Replace(string(valid), `{"created":`, `{"v":1,"created":`, 1)},
		{"duplicate extra field", strings.Replace(string(valid), `{"created":`, `{"extra":{"a":"1","a":"2"},"created":`, 1)},
		{"oversized", string(valid[:len(valid)-1]) + `,"label":"` + strings.Repeat(" ", 70000) + `"}`},
	}
	for _, tt := range rawCases {
		t.Run(tt.name, func(t *testing.T) { expectBadSlot(t, []byte(tt.data)) })
	}
}

func expectBadSlot(t *testing.T, data []byte) {
	t.Helper()
	s, err := ParseSlot(data)
	if err == nil {
		t.Fatalf("ParseSlot(%.300s) = %+v, want error", data, s)
	}
	if !errors.Is(err, ErrBadSlot) {
		t.Fatalf("error %v does not wrap ErrBadSlot", err)
	}
	if s != nil {
		t.Fatalf("non-nil slot returned with error %v", err)
	}
	t.Log(err)
}

func TestParseSlotAccepts(t *testing.T) {
	cases := []struct {
		name   string
		kind   SlotKind
		mutate func(m map[string]any)
	}{
		{"no label", KindRecovery, func(m map[string]any) { delete(m, "label") }},
		{"null label", KindRecovery, func(m map[string]any) { m["label"] = nil }},
		{"unicode label", KindRecovery, func(m map[string]any) { m["label"] = "Jürgen's Laptop 💻" }},
		{"empty extra", KindRecovery, func(m map[string]any) { m["extra"] = map[string]any{} }},
		{"null extra", KindRecovery, func(m map[string]any) { m["extra"] = nil }},
		{"null argon2id on recovery slot", KindRecovery, func(m map[string]any) { m["argon2id"] = nil }},
		{"created with offset", KindRecovery, func(m map[string]any) { m["created"] = "2025-06-01T12:00:00.5+02:00" }},
		{"max argon2id", KindPassword, func(m map[string]any) {
			m["argon2id"] = map[string]any{"t": 16, "m": 256 * 1024, "p": 16}
		}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			m := validSlotJSON(t, tt.kind)
			tt.mutate(m)
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			s, err := ParseSlot(data)
			if err != nil {
				t.Fatalf("ParseSlot(%s): %v", data, err)
			}
			if s.Extra != nil {
				t.Errorf("Extra = %#v, want nil", s.Extra)
			}
		})
	}
	// Insignificant white space is fine.
	m := validSlotJSON(t, KindPassword)
	data, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSlot(append(append([]byte("\n "), data...), "\n\n"...)); err != nil {
		t.Fatalf("ParseSlot of indented JSON: %v", err)
	}
}

// TestUnwrapCapsBeforeArgon2 makes sure hostile parameters are refused
// before Argon2 would allocate or spin.
func TestUnwrapCapsBeforeArgon2(t *testing.T) {
	c := newSlots(t, seqKey(0x40))[1]
	for _, p := range []Argon2Params{
		{Time: 1, MemoryKiB: 1 << 31, Threads: 1},        // 2 TiB
		{Time: 1, MemoryKiB: 256*1024 + 8, Threads: 1},   // just over the cap
		{Time: 1 << 30, MemoryKiB: 8 * 1024, Threads: 1}, // minutes of work
		{Time: 1, MemoryKiB: 8 * 1024, Threads: 255},
		{Time: 0, MemoryKiB: 8 * 1024, Threads: 1}, // would panic in argon2
		{Time: 1, MemoryKiB: 8 * 1024, Threads: 0}, // would panic in argon2
	} {
		s := cloneSlot(c.slot)
		s.KDF = &p
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, err := s.Unwrap(c.secret)
		elapsed := time.Since(start)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrBadSlot) {
			t.Errorf("%+v: Unwrap error %v, want ErrBadSlot", p, err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
			t.Errorf("%+v: Unwrap allocated %d bytes before failing", p, alloc)
		}
		if elapsed > time.Second {
			t.Errorf("%+v: Unwrap took %v before failing", p, elapsed)
		}
		if _, err := s.Marshal(); !errors.Is(err, ErrBadSlot) {
			t.Errorf("%+v: Marshal error %v, want ErrBadSlot", p, err)
		}
		if _, err := NewPasswordSlot(seqKey(0x40), testPassword, p, ""); !errors.Is(err, ErrBadSlot) {
			t.Errorf("%+v: NewPasswordSlot error %v, want ErrBadSlot", p, err)
		}
	}
}

func TestNewSlotRejects(t *testing.T) {
	master, zero := seqKey(0x40), Key{}
	if _, err := NewRecoverySlot(zero, seqKey(0x80), ""); err == nil {
		t.Error("NewRecoverySlot accepted a zero master key")
	}
	if _, err := NewRecoverySlot(master, zero, ""); err == nil {
		t.Error("NewRecoverySlot accepted a zero recovery key")
	}
	if _, err := NewVaultSlot(master, zero, "", nil); err == nil {
		t.Error("NewVaultSlot accepted a zero secret")
	}
	if _, err := NewPasswordSlot(master, nil, fastArgon2, ""); err == nil {
		t.Error("NewPasswordSlot accepted an empty password")
	}
	if _, err := NewRecoverySlot(master, seqKey(0x80), "bad\tlabel"); !errors.Is(err, ErrBadSlot) {
		t.Errorf("NewRecoverySlot with a control character in the label: %v", err)
	}
	if _, err := NewVaultSlot(master, seqKey(0x80), "", map[string]string{"url": "\xff"}); !errors.Is(err, ErrBadSlot) {
		t.Errorf("NewVaultSlot with invalid UTF-8 in extra: %v", err)
	}
	var s *Slot
	if _, err := s.Marshal(); !errors.Is(err, ErrBadSlot) {
		t.Errorf("Marshal of a nil slot: %v", err)
	}
	if _, err := (&Slot{}).Unwrap(nil); !errors.Is(err, ErrBadSlot) {
		t.Errorf("Unwrap of an empty slot: %v", err)
	}
}

func TestNewVaultSlotCopiesExtra(t *testing.T) {
	extra := map[string]string{"url": "https://vault.example/"}
	s, err := NewVaultSlot(seqKey(0x40), seqKey(0x90), "", extra)
	if err != nil {
		t.Fatal(err)
	}
	extra["url"] = "changed"
	if s.Extra["url"] != "https://vault.example/" {
		t.Fatalf("slot shares the caller's map: %v", s.Extra)
	}
}

func TestDefaultArgon2(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Argon2id with 64 MiB")
	}
	if err := DefaultArgon2.Check(); err != nil {
		t.Fatal(err)
	}
	master := seqKey(0x40)
	start := time.Now()
	s, err := NewPasswordSlot(master, testPassword, DefaultArgon2, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NewPasswordSlot with DefaultArgon2 took %v", time.Since(start))
	if *s.KDF != DefaultArgon2 {
		t.Fatalf("KDF = %+v", s.KDF)
	}
	data, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseSlot(data)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := parsed.Unwrap(testPassword); err != nil || m != master {
		t.Fatalf("Unwrap = %x, %v", m, err)
	}
}

func BenchmarkUnwrapDefaultArgon2(b *testing.B) {
	s, err := NewPasswordSlot(seqKey(0x40), testPassword, DefaultArgon2, "")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Unwrap(testPassword); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrapRecovery(b *testing.B) {
	k := seqKey(0x80)
	s, err := NewRecoverySlot(seqKey(0x40), k, "")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Unwrap(k[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseSlot(f *testing.F) {
	master := seqKey(0x40)
	for _, c := range newSlots(f, master) {
		data, err := c.slot.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/2])
		f.Add(bytes.Replace(data, []byte(`"v":1`), []byte(`"v":1,"v":2`), 1))
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"v":1,"id":"00000000000000000000000000000000","kind":"recovery","created":"2025-01-02T03:04:05+01:00",` +
		`"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","nonce":"AAAAAAAAAAAAAAAA",` +
		`"wrapped":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","extra":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSlot(data)
		if err != nil {
			if !errors.Is(err, ErrBadSlot) {
				t.Fatalf("error %v does not wrap ErrBadSlot", err)
			}
			if s != nil {
				t.Fatal("non-nil slot with an error")
			}
			return
		}
		enc, err := s.Marshal()
		if err != nil {
			t.Fatalf("Marshal of parsed slot %+v: %v", s, err)
		}
		s2, err := ParseSlot(enc)
		if err != nil {
			t.Fatalf("ParseSlot(Marshal(s)) = %v for %s", err, enc)
		}
		if !slotsEqual(s, s2) {
			t.Fatalf("round trip changed the slot:\n%+v\n%+v", s, s2)
		}
		enc2, err := s2.Marshal()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("Marshal not stable: %s vs %s (%v)", enc, enc2, err)
		}
	})
}
