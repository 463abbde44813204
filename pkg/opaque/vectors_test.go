package opaque

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/cloudflare/circl/group"
)

const vectorsPath = "../../testdata/opaque-3dh-vectors.json"

// vector is one entry of the RFC 9807 Appendix C test vectors.
type vector struct {
	Config        map[string]string `json:"config"`
	Inputs        map[string]string `json:"inputs"`
	Intermediates map[string]string `json:"intermediates"`
	Outputs       map[string]string `json:"outputs"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	var vs []vector
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatalf("parsing vectors: %v", err)
	}
	return vs
}

// suiteFor maps a vector's configuration to a suite, or explains why it
// cannot run.
func suiteFor(cfg map[string]string) (Suite, string) {
	if cfg["Name"] != "3DH" {
		return Suite{}, "AKE " + cfg["Name"] + " is not 3DH"
	}
	if cfg["KSF"] != "Identity" {
		return Suite{}, "KSF " + cfg["KSF"] + " is not Identity"
	}
	var s Suite
	switch {
	case cfg["OPRF"] == "ristretto255-SHA512" && cfg["Group"] == "ristretto255":
		s = Ristretto255SHA512
	case cfg["OPRF"] == "P256-SHA256" && cfg["Group"] == "P256_XMD:SHA-256_SSWU_RO_":
		s = P256SHA256
	case cfg["OPRF"] == "ristretto255-SHA512" && cfg["Group"] == "curve25519":
		s = testRistretto255X25519
	default:
		return Suite{}, fmt.Sprintf("unsupported configuration OPRF=%s Group=%s", cfg["OPRF"], cfg["Group"])
	}
	wantHash := map[string]string{"ristretto255-SHA512": "SHA512", "P256-SHA256": "SHA256"}[cfg["OPRF"]]
	if cfg["Hash"] != wantHash || cfg["KDF"] != "HKDF-"+wantHash || cfg["MAC"] != "HMAC-"+wantHash {
		return Suite{}, "hash/KDF/MAC do not match the suite"
	}
	return s, ""
}

type vectorReader struct {
	t *testing.T
	v vector
}

func (r vectorReader) get(m map[string]string, name string) []byte {
	r.t.Helper()
	h, ok := m[name]
	if !ok {
		r.t.Fatalf("vector has no %q", name)
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		r.t.Fatalf("%s: %v", name, err)
	}
	return b
}

func (r vectorReader) in(name string) []byte { return r.get(r.v.Inputs, name) }

// opt returns an optional input, or nil when absent.
func (r vectorReader) opt(name string) []byte {
	if _, ok := r.v.Inputs[name]; !ok {
		return nil
	}
	return r.in(name)
}

// eq compares got with the vector's value name among intermediates or outputs.
func (r vectorReader) eq(name string, got []byte) {
	r.t.Helper()
	m := r.v.Outputs
	if _, ok := m[name]; !ok {
		m = r.v.Intermediates
	}
	want := r.get(m, name)
	if !bytes.Equal(got, want) {
		r.t.Errorf("%s mismatch\n got %x\nwant %x", name, got, want)
	}
}

func marshal(t *testing.T, m interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	return b
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// checkSizes holds the suite's lengths to the vector's configuration.
func checkSizes(t *testing.T, s Suite, cfg map[string]string) {
	t.Helper()
	want := map[string]int{"Nh": s.p.nh, "Nm": s.p.nh, "Nx": s.p.nh, "Nok": s.p.nok, "Npk": s.p.npk(), "Nsk": s.p.ake.nsk()}
	for k, v := range want {
		n, err := strconv.Atoi(cfg[k])
		if err != nil || n != v {
			t.Errorf("config %s = %q, suite has %d", k, cfg[k], v)
		}
	}
}

func TestVectors(t *testing.T) {
	vs := loadVectors(t)
	var ran, real, fake int
	var skipped []string
	for i, v := range vs {
		name := fmt.Sprintf("%d/%s/%s/fake=%s", i+1, v.Config["OPRF"], v.Config["Group"], v.Config["Fake"])
		s, why := suiteFor(v.Config)
		if why != "" {
			skipped = append(skipped, fmt.Sprintf("vector %s: %s", name, why))
			continue
		}
		ok := t.Run(name, func(t *testing.T) {
			checkSizes(t, s, v.Config)
			r := vectorReader{t, v}
			switch v.Config["Fake"] {
			case "False":
				runRealVector(t, s, r)
			case "True":
				runFakeVector(t, s, r)
			default:
				t.Fatalf("bad Fake flag %q", v.Config["Fake"])
			}
		})
		if ok {
			ran++
			if v.Config["Fake"] == "True" {
				fake++
			} else {
				real++
			}
		}
	}
	t.Logf("RFC 9807 vectors: %d of %d passed (%d real, %d fake), %d skipped", ran, len(vs), real, fake, len(skipped))
	t.Logf("(the curve25519 vectors run against a test-only X25519 AKE group over crypto/ecdh; the package offers only ristretto255 and P-256)")
	for _, s := range skipped {
		t.Logf("skipped %s", s)
	}
	if ran == 0 {
		t.Fatal("no vector ran")
	}
}

func runRealVector(t *testing.T, s Suite, r vectorReader) {
	ctx := r.get(r.v.Config, "Context")
	ids := Identities{Client: r.opt("client_identity"), Server: r.opt("server_identity")}
	password := r.in("password")
	credID := r.in("credential_identifier")

	client := must[*Client](t)(s.NewClient(IdentityKSF{}, ids, ctx))
	server := must[*Server](t)(s.NewServer(ServerKeys{
		OPRFSeed:   r.in("oprf_seed"),
		PrivateKey: r.in("server_private_key"),
		PublicKey:  r.in("server_public_key"),
	}, ids.Server, ctx))

	// Registration (§5.2).
	blind := must[group.Scalar](t)(s.p.parseScalar(r.in("blind_registration")))
	req, regState, err := client.createRegistrationRequest(password, blind)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("registration_request", marshal(t, req))
	req = must[*RegistrationRequest](t)(s.UnmarshalRegistrationRequest(marshal(t, req)))

	var trReg trace
	resp, err := server.createRegistrationResponse(req, credID, &trReg)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("oprf_key", trReg.oprfKey)
	r.eq("registration_response", marshal(t, resp))
	resp = must[*RegistrationResponse](t)(s.UnmarshalRegistrationResponse(marshal(t, resp)))

	record, exportKey, err := client.finalizeRegistration(regState, resp, r.in("envelope_nonce"), &trReg)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("randomized_password", trReg.randomizedPassword)
	r.eq("masking_key", trReg.maskingKey)
	r.eq("auth_key", trReg.authKey)
	r.eq("client_public_key", trReg.clientPublicKey)
	r.eq("envelope", trReg.envelope)
	r.eq("registration_upload", marshal(t, record))
	r.eq("export_key", exportKey)
	record = must[*RegistrationRecord](t)(s.UnmarshalRegistrationRecord(marshal(t, record)))

	// Login (§6.2).
	blind = must[group.Scalar](t)(s.p.parseScalar(r.in("blind_login")))
	ke1, loginState, err := client.generateKE1(password, blind, r.in("client_nonce"), r.in("client_keyshare_seed"))
	if err != nil {
		t.Fatal(err)
	}
	r.eq("KE1", marshal(t, ke1))
	ke1 = must[*KE1](t)(s.UnmarshalKE1(marshal(t, ke1)))

	var trServer trace
	ke2, serverState, err := server.generateKE2(ke1, credID, ids.Client, record,
		r.in("masking_nonce"), r.in("server_nonce"), r.in("server_keyshare_seed"), &trServer)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("KE2", marshal(t, ke2))
	r.eq("oprf_key", trServer.oprfKey)
	r.eq("handshake_secret", trServer.handshakeSecret)
	r.eq("server_mac_key", trServer.serverMACKey)
	r.eq("client_mac_key", trServer.clientMACKey)
	ke2 = must[*KE2](t)(s.UnmarshalKE2(marshal(t, ke2)))

	var trClient trace
	ke3, sessionKey, loginExportKey, err := client.generateKE3(loginState, ke2, &trClient)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("KE3", marshal(t, ke3))
	r.eq("session_key", sessionKey)
	r.eq("export_key", loginExportKey)
	r.eq("randomized_password", trClient.randomizedPassword)
	r.eq("masking_key", trClient.maskingKey)
	r.eq("auth_key", trClient.authKey)
	r.eq("handshake_secret", trClient.handshakeSecret)
	r.eq("server_mac_key", trClient.serverMACKey)
	r.eq("client_mac_key", trClient.clientMACKey)
	ke3 = must[*KE3](t)(s.UnmarshalKE3(marshal(t, ke3)))

	serverSessionKey, err := server.Finish(serverState, ke3)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("session_key", serverSessionKey)
}

func runFakeVector(t *testing.T, s Suite, r vectorReader) {
	ctx := r.get(r.v.Config, "Context")
	server := must[*Server](t)(s.NewServer(ServerKeys{
		OPRFSeed:   r.in("oprf_seed"),
		PrivateKey: r.in("server_private_key"),
		PublicKey:  r.in("server_public_key"),
	}, r.opt("server_identity"), ctx))

	// The vector's client key pair and its KE1 key share are consistent.
	sk := must[any](t)(s.p.ake.parsePrivateKey(r.in("client_private_key")))
	if got := s.p.ake.publicKey(sk); !bytes.Equal(got, r.in("client_public_key")) {
		t.Errorf("client_public_key does not match client_private_key: %x", got)
	}
	ke1 := must[*KE1](t)(s.UnmarshalKE1(r.in("KE1")))
	_, share, err := s.p.ake.deriveKeyPair(r.in("client_keyshare_seed"))
	if err != nil || !bytes.Equal(share, ke1.clientPublicKeyshare) {
		t.Errorf("KE1 key share does not come from client_keyshare_seed")
	}

	// The fake record of §6.3.2.2: the given public and masking keys and an
	// all-zero envelope.
	fake := must[*RegistrationRecord](t)(s.UnmarshalRegistrationRecord(concat(
		r.in("client_public_key"), r.in("masking_key"), make([]byte, s.p.envelopeSize()))))
	ke2, _, err := server.generateKE2(ke1, r.in("credential_identifier"), r.opt("client_identity"), fake,
		r.in("masking_nonce"), r.in("server_nonce"), r.in("server_keyshare_seed"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.eq("KE2", marshal(t, ke2))
	must[*KE2](t)(s.UnmarshalKE2(marshal(t, ke2)))
}
