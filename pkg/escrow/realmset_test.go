package escrow

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/threshold"
)

func testSet() *RealmSet {
	s := &RealmSet{Name: "default", Threshold: 2, KDF: threshold.DefaultKDF, UserInfo: []byte("cred"), Form: threshold.Form2}
	for i, c := range []byte{'a', 'b', 'c'} {
		var id threshold.RealmID
		id[0] = byte(i + 1)
		s.Realms = append(s.Realms, Realm{URL: "https://v" + string(c) + ".example:8443", Fingerprint: strings.Repeat(string(c), 64), ID: id})
	}
	return s
}

func TestRealmSetRoundTrip(t *testing.T) {
	want := testSet()
	got, err := ParseRealmSet(&keys.Slot{ID: "0123456789abcdef", Kind: keys.KindVault, Extra: want.Extra()})
	if err != nil {
		t.Fatal(err)
	}
	if got.Describe() != want.Describe() || !got.SameRealms(want) || got.KDF != want.KDF || string(got.UserInfo) != "cred" || got.Form != threshold.Form2 || got.Name != "default" {
		t.Fatalf("got %+v", got)
	}
	for i := range want.Realms {
		if got.Realms[i] != want.Realms[i] {
			t.Fatalf("realm %d: %+v, want %+v", i+1, got.Realms[i], want.Realms[i])
		}
	}
	if got.Flags() != "--vault https://va.example:8443 --vault https://vb.example:8443 --vault https://vc.example:8443" {
		t.Fatal(got.Flags())
	}
}

// TestParseRealmSetRejects changes each field of a threshold slot's extra
// data as a hostile store could and checks that ParseRealmSet refuses every
// spelling but the canonical one with a MalformedSlotError naming the
// field, before anything is asked of a vault. (A form field that is absent
// is the earlier form, not an error: TestParseRealmSetForm.)
func TestParseRealmSetRejects(t *testing.T) {
	tests := []struct {
		name, field, value string // value "-": the field removed
		want               string
	}{
		{"realms missing", ExtraRealms, "-", ExtraRealms},
		{"realms zero", ExtraRealms, "0", ExtraRealms},
		{"realms ten", ExtraRealms, "10", ExtraRealms},
		{"realms padded", ExtraRealms, "03", ExtraRealms},
		{"realms more than listed", ExtraRealms, "4", "vault 4"},
		{"realms fewer than listed", ExtraRealms, "2", "unknown field"},
		{"threshold missing", ExtraThreshold, "-", ExtraThreshold},
		{"threshold not a number", ExtraThreshold, "two", ExtraThreshold},
		{"threshold signed", ExtraThreshold, "+2", ExtraThreshold},
		{"threshold 1 of 3", ExtraThreshold, "1", "more than half"},
		{"threshold 4 of 3", ExtraThreshold, "4", "out of range"},
		{"argon2id missing", ExtraArgon2id, "-", ExtraArgon2id},
		{"argon2id reordered", ExtraArgon2id, "m=65536,t=3,p=4", ExtraArgon2id},
		{"argon2id padded", ExtraArgon2id, "t=03,m=65536,p=4", "canonical"},
		{"argon2id huge memory", ExtraArgon2id, "t=3,m=4194304,p=4", "memory"},
		{"argon2id no passes", ExtraArgon2id, "t=0,m=65536,p=4", "time"},
		{"user info missing", ExtraUserInfo, "-", ExtraUserInfo},
		{"form 1 spelled out", ExtraForm, "1", ExtraForm},
		{"form 3", ExtraForm, "3", ExtraForm},
		{"url http", RealmKey(2, "url"), "http://vb.example", "vault 2: URL"},
		{"url missing", RealmKey(1, "url"), "-", "vault 1: URL"},
		{"fingerprint upper case", RealmKey(3, "fingerprint"), strings.Repeat("C", 64), "vault 3: fingerprint"},
		{"fingerprint short", RealmKey(3, "fingerprint"), strings.Repeat("c", 63), "vault 3: fingerprint"},
		{"fingerprint missing", RealmKey(1, "fingerprint"), "-", "vault 1: fingerprint"},
		{"id short", RealmKey(1, "id"), "0102", "vault 1: realm id"},
		{"id written again as it was", RealmKey(2, "id"), "02000000000000000000000000000000", ""}, // canonical: accepted
		{"id upper-case hex", RealmKey(2, "id"), "0A000000000000000000000000000000", "vault 2: realm id"},
		{"id zero", RealmKey(2, "id"), "00000000000000000000000000000000", "zero id"},
		{"id twice", RealmKey(2, "id"), "01000000000000000000000000000000", "appears twice"},
		{"unknown field", "vault_realm_4_url", "https://vd.example", "unknown field"},
		{"unknown field beside", "vault_note", "x", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex := maps.Clone(testSet().Extra())
			if tt.value == "-" {
				delete(ex, tt.field)
			} else {
				ex[tt.field] = tt.value
			}
			_, err := ParseRealmSet(&keys.Slot{ID: "0123456789abcdef", Kind: keys.KindVault, Extra: ex})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused a canonical value: %v", err)
				}
				return
			}
			var me *MalformedSlotError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "vault slot 01234567 is malformed") {
				t.Fatalf("ParseRealmSet = %v, want a MalformedSlotError mentioning %q", err, tt.want)
			}
		})
	}
}

// TestParseRealmSetForm: the earlier form's slots (no form field) parse as
// Form1, IsThresholdSlot and SlotName read the fields they need.
func TestParseRealmSetForm(t *testing.T) {
	ex := testSet().Extra()
	delete(ex, ExtraForm)
	s := &keys.Slot{ID: "0123456789abcdef", Kind: keys.KindVault, Extra: ex}
	set, err := ParseRealmSet(s)
	if err != nil || set.Form != threshold.Form1 {
		t.Fatalf("form %v, %v", set, err)
	}
	if !IsThresholdSlot(s) || IsThresholdSlot(&keys.Slot{Kind: keys.KindVault, Extra: map[string]string{"vault_url": "https://x"}}) {
		t.Fatal("IsThresholdSlot")
	}
	if SlotName(&keys.Slot{}) != "default" || SlotName(s) != "default" {
		t.Fatal("SlotName")
	}
}
