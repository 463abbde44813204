package keys

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// seqKey returns the key whose bytes are start, start+1, ..., start+31.
func seqKey(start byte) Key {
	var k Key
	for i := range k {
		k[i] = start + byte(i)
	}
	return k
}

func TestNewKey(t *testing.T) {
	a, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == (Key{}) {
		t.Fatalf("NewKey returned %x and %x", a, b)
	}
}

// hkdfSHA256 is RFC 5869 written out with HMAC, independent of crypto/hkdf.
func hkdfSHA256(ikm, salt []byte, info string, n int) []byte {
	if salt == nil {
		salt = make([]byte, sha256.Size)
	}
	m := hmac.New(sha256.New, salt)
	m.Write(ikm)
	prk := m.Sum(nil)
	var out, t []byte
	for i := byte(1); len(out) < n; i++ {
		m = hmac.New(sha256.New, prk)
		m.Write(t)
		m.Write([]byte(info))
		m.Write([]byte{i})
		t = m.Sum(nil)
		out = append(out, t...)
	}
	return out[:n]
}

func TestDerive(t *testing.T) {
	k := seqKey(0)

	// Known answer, computed independently with Python's hmac/hashlib and
	// cross-checked with pyca/cryptography's HKDF.
	const want = "2573f61b664550c24dc851fd3e2d13ce15bb204c680d172617b5e8094341451e"
	got := Derive(k, "chunk id")
	if hex.EncodeToString(got[:]) != want {
		t.Errorf("Derive(00..1f, %q) = %x, want %s", "chunk id", got, want)
	}

	labels := []string{"", "chunk id", "chunk id ", "encryption", "chunker", "Chunker"}
	seen := map[Key]string{}
	for _, label := range labels {
		d := Derive(k, label)
		if d != Derive(k, label) {
			t.Errorf("Derive(k, %q) is not deterministic", label)
		}
		if ref := hkdfSHA256(k[:], nil, "wabackup v1 "+label, KeySize); string(ref) != string(d[:]) {
			t.Errorf("Derive(k, %q) = %x, RFC 5869 by hand gives %x", label, d, ref)
		}
		if other, dup := seen[d]; dup {
			t.Errorf("labels %q and %q give the same key", label, other)
		}
		seen[d] = label
		if d == k {
			t.Errorf("Derive(k, %q) returned k itself", label)
		}
	}
	if Derive(k, "x") == Derive(seqKey(1), "x") {
		t.Error("different keys give the same subkey")
	}
}
