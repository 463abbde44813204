package api

import (
	"bytes"
	"testing"
)

func TestRealmAnswer(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
	}{{200, `{"message":"AQ=="}`}, {503, `{"code":"unavailable"}`}, {400, ""}} {
		st, b, err := UnmarshalRealmAnswer(MarshalRealmAnswer(c.status, []byte(c.body)))
		if err != nil || st != c.status || string(b) != c.body {
			t.Errorf("%d %q: %d %q %v", c.status, c.body, st, b, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {0, 0}, {0x02, 0x58}, {0xff, 0xff, '{'}} {
		if _, _, err := UnmarshalRealmAnswer(bad); err == nil {
			t.Errorf("%x accepted", bad)
		}
	}
	if !bytes.HasSuffix(RealmPrologue(PathRealmRecover3), []byte("\x00/v2/recover3")) {
		t.Error(RealmPrologue(PathRealmRecover3))
	}
}

// FuzzUnmarshalRealmAnswer: any payload is refused or read back exactly.
func FuzzUnmarshalRealmAnswer(f *testing.F) {
	f.Add(MarshalRealmAnswer(200, []byte(`{}`)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, body, err := UnmarshalRealmAnswer(b)
		if err != nil {
			return
		}
		if !bytes.Equal(MarshalRealmAnswer(st, body), b) {
			t.Fatalf("%x does not round-trip", b)
		}
	})
}
