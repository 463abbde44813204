package threshold

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// The fuzz targets: one per decoder. Each is seeded with real encodings of
// its message in every status (collectMessages), each also truncated by a
// byte, extended by one and with one byte flipped. Whatever the input, the
// decoder must not panic, must reject with an error wrapping
// ErrInvalidMessage, and what it accepts must re-encode to the same bytes;
// then the accepted message is pushed one step further:
//
//   - a request is handled by a realm holding a registration: it is either
//     refused (ErrInvalidRequest) or answered with a response that decodes,
//     and leaves a record that decodes;
//   - a response replaces realm 1's answer in a full recovery over three
//     realms: whatever realm 1 says, the client recovers the right secret
//     through the other two;
//   - a record is run through every realm operation, with the same
//     guarantees as a request.

type fuzzFixture struct {
	e       *testEnv
	secret  []byte
	record  []byte            // realm 1's record after registration
	reg     *Register2Request // another valid registration for realm 1
	blinded [elementSize]byte
}

func fuzzDecoder(f *testing.F, name string, then func(t *testing.T, fx *fuzzFixture, m marshaler)) {
	d := decoders[name]
	seeds := collectMessages(f)[name]
	if len(seeds) == 0 {
		f.Fatalf("no seeds for %s", name)
	}
	for _, b := range seeds {
		f.Add(b)
		f.Add(b[:len(b)-1])
		f.Add(append(bytes.Clone(b), 0))
		flipped := bytes.Clone(b)
		flipped[len(b)/2] ^= 0x40
		f.Add(flipped)
	}
	e := newEnv(f, 3, 2)
	fx := &fuzzFixture{e: e, secret: e.register(f, "pw"), blinded: randomElementBytes()}
	fx.record = bytes.Clone(e.realms[0].st.data)
	reqs, err := e.client.prepareRegistration([]byte("other"), randomSecret(f), testGuesses)
	if err != nil {
		f.Fatal(err)
	}
	fx.reg = reqs[0]

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := d(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("rejection does not wrap ErrInvalidMessage: %v", err)
			}
			return
		}
		re, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(re, data) {
			t.Fatalf("accepted %x but re-encodes to %x (%v)", data, re, err)
		}
		if then != nil {
			then(t, fx, m)
		}
	})
}

// serve runs handle on a copy of record (realm 1's registration if nil)
// and checks that it refuses with ErrInvalidRequest or answers with a
// response that decodes, leaving a record that decodes.
func (fx *fuzzFixture) serve(t *testing.T, record []byte, handle func(context.Context, *RealmServer, RecordStore) (marshaler, error)) {
	t.Helper()
	if record == nil {
		record = fx.record
	}
	st := &memStore{data: bytes.Clone(record)}
	resp, err := handle(context.Background(), fx.e.realms[0].srv, st)
	if err != nil {
		if !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("realm error does not wrap ErrInvalidRequest: %v", err)
		}
		return
	}
	b, err := resp.MarshalBinary()
	if err != nil {
		t.Fatalf("the realm's %T does not encode: %v", resp, err)
	}
	if _, err := decoders[typeName(resp)](b); err != nil {
		t.Fatalf("the realm's %T does not decode: %v", resp, err)
	}
	if _, err := UnmarshalRealmRecord(st.data); err != nil {
		t.Fatalf("the realm stored a record that does not decode: %v", err)
	}
}

// recoverWith makes realm 1 answer with what set decides and checks that
// the client still recovers the right secret.
func (fx *fuzzFixture) recoverWith(t *testing.T, set func(r *testRealm)) {
	t.Helper()
	r := fx.e.realms[0]
	r.st.data = bytes.Clone(fx.record)
	set(r)
	defer func() { r.onRecover1, r.onRecover2, r.onRecover3 = nil, nil, nil }()
	rec, err := fx.e.recover("pw")
	if err != nil {
		t.Fatalf("recovery with realm 1 answering the fuzzed message: %v", err)
	}
	if !bytes.Equal(rec.Secret, fx.secret) {
		t.Fatalf("recovered %x, want %x", rec.Secret, fx.secret)
	}
}

func asMarshaler[T marshaler](r T, err error) (marshaler, error) { return r, err }

func FuzzUnmarshalRegister1Request(f *testing.F) {
	fuzzDecoder(f, "Register1Request", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Register1(ctx, st, m.(*Register1Request)))
		})
	})
}

func FuzzUnmarshalRegister1Response(f *testing.F) {
	fuzzDecoder(f, "Register1Response", nil)
}

func FuzzUnmarshalRegister2Request(f *testing.F) {
	fuzzDecoder(f, "Register2Request", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Register2(ctx, st, m.(*Register2Request)))
		})
	})
}

func FuzzUnmarshalRegister2Response(f *testing.F) {
	fuzzDecoder(f, "Register2Response", nil)
}

func FuzzUnmarshalRecover1Request(f *testing.F) {
	fuzzDecoder(f, "Recover1Request", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Recover1(ctx, st, m.(*Recover1Request)))
		})
	})
}

func FuzzUnmarshalRecover1Response(f *testing.F) {
	fuzzDecoder(f, "Recover1Response", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.recoverWith(t, func(r *testRealm) {
			r.onRecover1 = func(resp *Recover1Response) { *resp = *m.(*Recover1Response) }
		})
	})
}

func FuzzUnmarshalRecover2Request(f *testing.F) {
	fuzzDecoder(f, "Recover2Request", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Recover2(ctx, st, m.(*Recover2Request)))
		})
	})
}

func FuzzUnmarshalRecover2Response(f *testing.F) {
	fuzzDecoder(f, "Recover2Response", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.recoverWith(t, func(r *testRealm) {
			r.onRecover2 = func(_ *Recover2Request, resp *Recover2Response) { *resp = *m.(*Recover2Response) }
		})
	})
}

func FuzzUnmarshalRecover3Request(f *testing.F) {
	fuzzDecoder(f, "Recover3Request", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Recover3(ctx, st, m.(*Recover3Request)))
		})
	})
}

func FuzzUnmarshalRecover3Response(f *testing.F) {
	fuzzDecoder(f, "Recover3Response", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.recoverWith(t, func(r *testRealm) {
			r.onRecover3 = func(resp *Recover3Response) { *resp = *m.(*Recover3Response) }
		})
	})
}

func FuzzUnmarshalDeleteRequest(f *testing.F) {
	fuzzDecoder(f, "DeleteRequest", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		fx.serve(t, nil, func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
			return asMarshaler(s.Delete(ctx, st, m.(*DeleteRequest)))
		})
	})
}

func FuzzUnmarshalDeleteResponse(f *testing.F) {
	fuzzDecoder(f, "DeleteResponse", nil)
}

func FuzzUnmarshalRealmRecord(f *testing.F) {
	fuzzDecoder(f, "RealmRecord", func(t *testing.T, fx *fuzzFixture, m marshaler) {
		rec, data := m.(*RealmRecord), func() []byte { b, _ := m.MarshalBinary(); return b }()
		v := rec.reg.version
		for _, op := range []func(context.Context, *RealmServer, RecordStore) (marshaler, error){
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Recover1(ctx, st, &Recover1Request{}))
			},
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Recover2(ctx, st, &Recover2Request{Version: v, BlindedAccessKey: fx.blinded}))
			},
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Recover3(ctx, st, &Recover3Request{Version: v, UnlockKeyTag: rec.reg.unlockKeyTag}))
			},
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Recover3(ctx, st, &Recover3Request{Version: v}))
			},
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Register2(ctx, st, fx.reg))
			},
			func(ctx context.Context, s *RealmServer, st RecordStore) (marshaler, error) {
				return asMarshaler(s.Delete(ctx, st, &DeleteRequest{}))
			},
		} {
			fx.serve(t, data, op)
		}
	})
}
