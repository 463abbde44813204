package opaque

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

var testSuites = []Suite{Ristretto255SHA512, P256SHA256}

// smallArgon2id keeps the tests fast while exercising the real KSF code.
var smallArgon2id = Argon2idKSF{Time: 1, MemoryKiB: 256, Threads: 2}

type testKSF struct {
	name string
	ksf  KSF
}

var testKSFs = []testKSF{{"identity", IdentityKSF{}}, {"argon2id-small", smallArgon2id}}

// wire sends a message through its encoding, as a network would.
func wire[T interface{ MarshalBinary() ([]byte, error) }](t *testing.T, m T, decode func([]byte) (T, error)) T {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := decode(b)
	if err != nil {
		t.Fatalf("decoding what we encoded: %v", err)
	}
	return out
}

type fixture struct {
	s       Suite
	client  *Client
	server  *Server
	credID  []byte
	record  *RegistrationRecord
	export  []byte
	ids     Identities
	context []byte
}

func newFixture(t *testing.T, s Suite, ksf KSF, ids Identities, password []byte) *fixture {
	t.Helper()
	keys, err := s.GenerateServerKeys()
	if err != nil {
		t.Fatal(err)
	}
	ctx := []byte("wabackup-opaque-test-v1")
	f := &fixture{s: s, credID: []byte("user-1234"), ids: ids, context: ctx}
	if f.client, err = s.NewClient(ksf, ids, ctx); err != nil {
		t.Fatal(err)
	}
	if f.server, err = s.NewServer(keys, ids.Server, ctx); err != nil {
		t.Fatal(err)
	}
	f.record, f.export = f.register(t, f.client, password)
	return f
}

func (f *fixture) register(t *testing.T, c *Client, password []byte) (*RegistrationRecord, []byte) {
	t.Helper()
	req, st, err := c.RegistrationRequest(password)
	if err != nil {
		t.Fatal(err)
	}
	req = wire(t, req, f.s.UnmarshalRegistrationRequest)
	resp, err := f.server.RegistrationResponse(req, f.credID)
	if err != nil {
		t.Fatal(err)
	}
	resp = wire(t, resp, f.s.UnmarshalRegistrationResponse)
	if !bytes.Equal(resp.ServerPublicKey(), f.server.PublicKey()) {
		t.Fatal("response carries the wrong server public key")
	}
	record, exportKey, err := c.FinalizeRegistration(st, resp)
	if err != nil {
		t.Fatal(err)
	}
	return wire(t, record, f.s.UnmarshalRegistrationRecord), exportKey
}

// login runs KE1 and KE2 and returns what the client and server hold then.
func (f *fixture) startLogin(t *testing.T, c *Client, password, credID []byte, record *RegistrationRecord) (*ClientLoginState, *KE2, *ServerLoginState) {
	t.Helper()
	ke1, cst, err := c.KE1(password)
	if err != nil {
		t.Fatal(err)
	}
	ke1 = wire(t, ke1, f.s.UnmarshalKE1)
	ke2, sst, err := f.server.KE2(ke1, credID, f.ids.Client, record)
	if err != nil {
		t.Fatal(err)
	}
	return cst, wire(t, ke2, f.s.UnmarshalKE2), sst
}

func TestRoundTrip(t *testing.T) {
	password := []byte("correct horse battery staple")
	for _, s := range testSuites {
		for _, k := range testKSFs {
			for _, ids := range []Identities{{}, {Client: []byte("alice@example.com"), Server: []byte("vault.example.com")}} {
				name := s.String() + "/" + k.name
				if ids.Client != nil {
					name += "/identities"
				}
				t.Run(name, func(t *testing.T) { testRoundTrip(t, s, k.ksf, ids, password) })
			}
		}
	}
}

func testRoundTrip(t *testing.T, s Suite, ksf KSF, ids Identities, password []byte) {
	f := newFixture(t, s, ksf, ids, password)
	if len(f.export) != s.p.nh {
		t.Fatalf("export_key is %d bytes", len(f.export))
	}

	// Two good logins: same export_key as at registration, fresh session keys.
	var sessions [][]byte
	for range 2 {
		cst, ke2, sst := f.startLogin(t, f.client, password, f.credID, f.record)
		ke3, clientKey, exportKey, err := f.client.KE3(cst, ke2)
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		ke3 = wire(t, ke3, s.UnmarshalKE3)
		serverKey, err := f.server.Finish(sst, ke3)
		if err != nil {
			t.Fatalf("Finish: %v", err)
		}
		if !bytes.Equal(clientKey, serverKey) || len(clientKey) != s.p.nh {
			t.Fatal("session keys differ")
		}
		if !bytes.Equal(exportKey, f.export) {
			t.Fatal("export_key differs from registration's")
		}
		sessions = append(sessions, clientKey)
		// States are single-use.
		if _, _, _, err := f.client.KE3(cst, ke2); err == nil {
			t.Fatal("client state reused")
		}
		if _, err := f.server.Finish(sst, ke3); err == nil {
			t.Fatal("server state reused")
		}
	}
	if bytes.Equal(sessions[0], sessions[1]) {
		t.Fatal("two logins gave the same session key")
	}

	// Wrong password: the client fails on KE2.
	cst, ke2, _ := f.startLogin(t, f.client, []byte("correct horse battery stapler"), f.credID, f.record)
	if _, _, ek, err := f.client.KE3(cst, ke2); !errors.Is(err, ErrAuthentication) || ek != nil {
		t.Fatalf("wrong password: got %v", err)
	}

	// Forged or altered KE3: the server rejects it.
	cst, ke2, sst := f.startLogin(t, f.client, password, f.credID, f.record)
	ke3, _, _, err := f.client.KE3(cst, ke2)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ke3.MarshalBinary()
	b[len(b)-1] ^= 1
	bad, err := s.UnmarshalKE3(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.server.Finish(sst, bad); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("altered KE3: got %v", err)
	}
	if _, err := f.server.Finish(sst, ke3); err == nil {
		t.Fatal("Finish accepted the genuine KE3 after a failed attempt on the same state")
	}
	cst, ke2, sst = f.startLogin(t, f.client, password, f.credID, f.record)
	_ = cst
	_ = ke2
	if _, err := f.server.Finish(sst, must[*KE3](t)(s.UnmarshalKE3(randomBytes(s.p.nh)))); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("forged KE3: got %v", err)
	}

	// Altered KE2, one byte in each field: the client rejects it, either
	// when decoding or with ErrAuthentication.
	p := s.p
	offsets := map[string]int{
		"evaluated_message":      0,
		"masking_nonce":          p.noe,
		"masked_response/pk":     p.noe + nn,
		"masked_response/nonce":  p.noe + nn + p.npk(),
		"masked_response/tag":    p.noe + nn + p.npk() + nn,
		"server_nonce":           p.credentialResponseSize(),
		"server_public_keyshare": p.credentialResponseSize() + nn + 1,
		"server_mac":             p.credentialResponseSize() + nn + p.npk(),
	}
	for field, off := range offsets {
		cst, ke2, _ := f.startLogin(t, f.client, password, f.credID, f.record)
		b, _ := ke2.MarshalBinary()
		b[off] ^= 0x04
		altered, err := s.UnmarshalKE2(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidMessage) {
				t.Errorf("%s: decode error %v does not wrap ErrInvalidMessage", field, err)
			}
			continue
		}
		if _, _, _, err := f.client.KE3(cst, altered); !errors.Is(err, ErrAuthentication) {
			t.Errorf("altered %s: got %v", field, err)
		}
	}

	// Unknown user: KE2 comes from the fake record, looks like a real one,
	// and the client fails.
	cst, fakeKE2, _ := f.startLogin(t, f.client, password, []byte("nobody"), nil)
	fb, _ := fakeKE2.MarshalBinary()
	if len(fb) != p.ke2Size() {
		t.Fatal("fake KE2 has the wrong size")
	}
	if _, _, _, err := f.client.KE3(cst, fakeKE2); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("unknown user: got %v", err)
	}

	// Mismatched context or identities: authentication fails.
	other := must[*Client](t)(s.NewClient(ksf, ids, []byte("another-app")))
	cst, ke2, _ = f.startLogin(t, other, password, f.credID, f.record)
	if _, _, _, err := other.KE3(cst, ke2); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("context mismatch: got %v", err)
	}
	other = must[*Client](t)(s.NewClient(ksf, Identities{Client: ids.Client, Server: []byte("evil.example")}, f.context))
	cst, ke2, _ = f.startLogin(t, other, password, f.credID, f.record)
	if _, _, _, err := other.KE3(cst, ke2); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("server identity mismatch: got %v", err)
	}
}

func TestExportKeyChangesWithReregistration(t *testing.T) {
	pw := []byte("hunter2")
	f := newFixture(t, Ristretto255SHA512, IdentityKSF{}, Identities{}, pw)
	rec2, export2 := f.register(t, f.client, pw)
	if bytes.Equal(export2, f.export) {
		t.Fatal("re-registration gave the same export_key (envelope nonce not fresh?)")
	}
	cst, ke2, _ := f.startLogin(t, f.client, pw, f.credID, rec2)
	if _, _, ek, err := f.client.KE3(cst, ke2); err != nil || !bytes.Equal(ek, export2) {
		t.Fatalf("login with the new record: %v", err)
	}
	// A client with another KSF cannot open the record.
	argon := must[*Client](t)(Ristretto255SHA512.NewClient(smallArgon2id, Identities{}, f.context))
	cst, ke2, _ = f.startLogin(t, argon, pw, f.credID, rec2)
	if _, _, _, err := argon.KE3(cst, ke2); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("KSF mismatch: got %v", err)
	}
}

func TestSuiteMismatch(t *testing.T) {
	pw := []byte("pw")
	r := newFixture(t, Ristretto255SHA512, IdentityKSF{}, Identities{}, pw)
	p := newFixture(t, P256SHA256, IdentityKSF{}, Identities{}, pw)
	ke1, _, err := p.client.KE1(pw)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.server.KE2(ke1, r.credID, nil, r.record); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("P-256 KE1 to a ristretto255 server: %v", err)
	}
	ke1, _, _ = r.client.KE1(pw)
	if _, _, err := r.server.KE2(ke1, r.credID, nil, p.record); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("P-256 record on a ristretto255 server: %v", err)
	}
	if _, _, err := r.server.KE2(&KE1{}, r.credID, nil, r.record); err == nil {
		t.Fatal("zero KE1 accepted")
	}
	if _, err := r.server.Finish(&ServerLoginState{}, &KE3{}); err == nil {
		t.Fatal("zero state accepted")
	}
	if _, err := (&KE2{}).MarshalBinary(); err == nil {
		t.Fatal("zero KE2 marshalled")
	}
}

func TestConstructorValidation(t *testing.T) {
	s := Ristretto255SHA512
	keys := must[ServerKeys](t)(s.GenerateServerKeys())
	other := must[ServerKeys](t)(s.GenerateServerKeys())
	for name, k := range map[string]ServerKeys{
		"short seed":     {OPRFSeed: keys.OPRFSeed[:32], PrivateKey: keys.PrivateKey, PublicKey: keys.PublicKey},
		"mismatched key": {OPRFSeed: keys.OPRFSeed, PrivateKey: keys.PrivateKey, PublicKey: other.PublicKey},
		"zero key":       {OPRFSeed: keys.OPRFSeed, PrivateKey: make([]byte, 32), PublicKey: keys.PublicKey},
	} {
		if _, err := s.NewServer(k, nil, nil); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := (Suite{}).NewServer(keys, nil, nil); err == nil {
		t.Error("zero Suite accepted")
	}
	if _, err := s.NewServer(keys, nil, make([]byte, 1<<16)); err == nil {
		t.Error("oversized context accepted")
	}
	for name, ksf := range map[string]KSF{
		"nil":          nil,
		"zero argon2":  Argon2idKSF{},
		"tiny memory":  Argon2idKSF{Time: 1, MemoryKiB: 8, Threads: 4},
		"nil *argon2":  (*Argon2idKSF)(nil),
		"zero threads": Argon2idKSF{Time: 1, MemoryKiB: 64},
	} {
		if _, err := s.NewClient(ksf, Identities{}, nil); err == nil {
			t.Errorf("KSF %s accepted", name)
		}
	}
	if _, err := s.NewClient(IdentityKSF{}, Identities{Client: make([]byte, 1<<16)}, nil); err == nil {
		t.Error("oversized identity accepted")
	}
	srv := must[*Server](t)(s.NewServer(keys, nil, nil))
	c := must[*Client](t)(s.NewClient(IdentityKSF{}, Identities{}, nil))
	req, _, _ := c.RegistrationRequest([]byte("pw"))
	if _, err := srv.RegistrationResponse(req, nil); err == nil {
		t.Error("empty credential identifier accepted")
	}
}

// The OPRF evaluation depends only on the credential identifier, so repeated
// KE2s for one unknown credential answer with the same evaluated element, as
// they do for a registered one.
func TestFakeRecordConsistent(t *testing.T) {
	pw := []byte("pw")
	f := newFixture(t, Ristretto255SHA512, IdentityKSF{}, Identities{}, pw)
	ke1, _, _ := f.client.KE1(pw)
	a, _, _ := f.server.KE2(ke1, []byte("ghost"), nil, nil)
	b, _, _ := f.server.KE2(ke1, []byte("ghost"), nil, nil)
	if !bytes.Equal(a.credentialResponse.evaluatedMessage, b.credentialResponse.evaluatedMessage) {
		t.Fatal("fake KE2 OPRF evaluation not deterministic")
	}
	if bytes.Equal(a.credentialResponse.maskedResponse, b.credentialResponse.maskedResponse) {
		t.Fatal("masked responses repeat")
	}
	rec := must[*RegistrationRecord](t)(Ristretto255SHA512.CreateFakeRecord())
	rb := marshal(t, rec)
	if !bytes.Equal(rb[len(rb)-Ristretto255SHA512.p.envelopeSize():], make([]byte, Ristretto255SHA512.p.envelopeSize())) {
		t.Fatal("fake record envelope is not all zero")
	}
	must[*RegistrationRecord](t)(Ristretto255SHA512.UnmarshalRegistrationRecord(rb))
}

func TestArgon2idKSF(t *testing.T) {
	// Output length follows the input (Nh), and the salt is the fixed 16
	// zero bytes: the function is deterministic.
	for _, n := range []int{32, 64} {
		in := bytes.Repeat([]byte{7}, n)
		a, b := smallArgon2id.Stretch(in), smallArgon2id.Stretch(in)
		if len(a) != n || !bytes.Equal(a, b) {
			t.Fatalf("Stretch(%d bytes) gave %d bytes or is not deterministic", n, len(a))
		}
	}
	if bytes.Equal(smallArgon2id.Stretch(make([]byte, 64)), (Argon2idKSF{Time: 2, MemoryKiB: 256, Threads: 2}).Stretch(make([]byte, 64))) {
		t.Fatal("parameters ignored")
	}
}

func TestDefaultArgon2idKSFCost(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB Argon2id in -short mode")
	}
	start := time.Now()
	out := DefaultArgon2idKSF.Stretch(make([]byte, 64))
	t.Logf("DefaultArgon2idKSF (t=%d, m=%d KiB, p=%d): %v for one Stretch on this machine",
		DefaultArgon2idKSF.Time, DefaultArgon2idKSF.MemoryKiB, DefaultArgon2idKSF.Threads, time.Since(start))
	if len(out) != 64 {
		t.Fatal("wrong output length")
	}
}
