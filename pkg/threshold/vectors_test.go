package threshold

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"slices"
	"testing"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

func loadJSON(tb testing.TB, path string, v any) {
	tb.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
}

// rfc9497Suite is one suite of testdata/rfc9497-ristretto255-sha512.json:
// the ristretto255-SHA512 test vectors of RFC 9497 Appendix A.1.1 (mode 0,
// OPRF) and A.1.2 (mode 1, VOPRF), batch size 1, as circl's oprf test data
// carries them.
type rfc9497Suite struct {
	Mode    uint8    `json:"mode"`
	Seed    hexBytes `json:"seed"`
	KeyInfo hexBytes `json:"keyInfo"`
	SkSm    hexBytes `json:"skSm"`
	PkSm    hexBytes `json:"pkSm"`
	Vectors []struct {
		Input             hexBytes
		Blind             hexBytes
		BlindedElement    hexBytes
		EvaluationElement hexBytes
		Output            hexBytes
		Proof             *struct {
			Proof hexBytes `json:"proof"`
			R     hexBytes `json:"r"`
		}
	}
}

func mustScalar(tb testing.TB, b []byte) group.Scalar {
	tb.Helper()
	s, err := parseScalar(b, false)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func mustElement(tb testing.TB, b []byte) group.Element {
	tb.Helper()
	e, err := parseElement(b)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func eq(tb testing.TB, what string, got, want []byte) {
	tb.Helper()
	if !bytes.Equal(got, want) {
		tb.Errorf("%s:\n got %x\nwant %x", what, got, want)
	}
}

// TestRFC9497Vectors holds the package's OPRF pieces to RFC 9497's
// ristretto255-SHA512 vectors. Mode 0 (OPRF): the client's blinding and
// finalization, a realm's BlindEvaluate, the registration's unoblivious
// evaluation, and the T-OPRF itself: the root key shared 2 of 3 and 3 of 5,
// every threshold subset of evaluations combined gives the RFC's evaluation
// element and output. Mode 1 (VOPRF): a realm's proof, with the RFC's proof
// randomness, is the RFC's proof byte for byte, and verifies.
func TestRFC9497Vectors(t *testing.T) {
	var suites []rfc9497Suite
	loadJSON(t, "testdata/rfc9497-ristretto255-sha512.json", &suites)
	ran := map[uint8]int{}
	for _, s := range suites {
		key, err := oprf.DeriveKey(oprfSuite, s.Mode, s.Seed, s.KeyInfo)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := key.MarshalBinary()
		eq(t, "skSm", kb, s.SkSm)
		k := mustScalar(t, s.SkSm)
		for _, v := range s.Vectors {
			b := mustElement(t, v.BlindedElement)
			z, err := evaluate(k, b)
			if err != nil {
				t.Fatal(err)
			}
			zb := elementBytes(z)
			eq(t, "EvaluationElement", zb[:], v.EvaluationElement)

			switch s.Mode {
			case oprf.BaseMode:
				fin, req, err := oprf.NewClient(oprfSuite).DeterministicBlind([][]byte{v.Input}, []oprf.Blind{mustScalar(t, v.Blind)})
				if err != nil {
					t.Fatal(err)
				}
				bb := elementBytes(req.Elements[0])
				eq(t, "BlindedElement", bb[:], v.BlindedElement)
				out, err := oprf.NewClient(oprfSuite).Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{z}})
				if err != nil {
					t.Fatal(err)
				}
				eq(t, "Output (Finalize)", out[0], v.Output)
				full, err := oprf.NewServer(oprfSuite, key).FullEvaluate(v.Input)
				if err != nil {
					t.Fatal(err)
				}
				eq(t, "Output (unoblivious evaluation)", full, v.Output)
				for _, tn := range [][2]int{{2, 3}, {3, 5}} {
					checkTOPRF(t, k, tn[0], tn[1], b, v.EvaluationElement, fin, v.Output)
				}
				ran[s.Mode]++
			case oprf.VerifiableMode:
				pk := mustElement(t, s.PkSm)
				pkb := elementBytes(g.NewElement().MulGen(k))
				eq(t, "pkSm", pkb[:], s.PkSm)
				proof, err := prove(k, pk, b, z, mustScalar(t, v.Proof.R))
				if err != nil {
					t.Fatal(err)
				}
				eq(t, "Proof", proof[:], v.Proof.Proof)
				if !verifyProof(pk, b, z, &proof) {
					t.Error("the RFC's proof does not verify")
				}
				bad := proof
				bad[0] ^= 1
				if verifyProof(pk, b, z, &bad) {
					t.Error("an altered proof verifies")
				}
				if verifyProof(g.NewElement().MulGen(mustScalar(t, v.Blind)), b, z, &proof) {
					t.Error("the proof verifies for another public key")
				}
				ran[s.Mode]++
			}
		}
	}
	if ran[oprf.BaseMode] != 2 || ran[oprf.VerifiableMode] != 2 {
		t.Fatalf("ran %v vectors, want 2 of mode 0 and 2 of mode 1", ran)
	}
}

// checkTOPRF shares k t of n and checks that every t-subset of the shares'
// evaluations of b combines to the evaluation under k and finalizes to out.
func checkTOPRF(t *testing.T, k group.Scalar, th, n int, b group.Element, want []byte, fin *oprf.FinalizeData, out []byte) {
	t.Helper()
	shares := shamir(k, th, n)
	zs := make([]group.Element, n)
	for i, s := range shares {
		var err error
		if zs[i], err = evaluate(s.Value, b); err != nil {
			t.Fatal(err)
		}
	}
	for _, subset := range subsets(n, th) {
		var sub []group.Element
		for _, i := range subset {
			sub = append(sub, zs[i-1])
		}
		z := combine(subset, sub)
		zb := elementBytes(z)
		eq(t, "combined EvaluationElement", zb[:], want)
		got, err := oprf.NewClient(oprfSuite).Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{z}})
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "T-OPRF Output", got[0], out)
	}
	// Fewer than a threshold combine to something else.
	z := combine([]int{1}, zs[:1])
	if zb := elementBytes(z); bytes.Equal(zb[:], want) {
		t.Error("one share alone gives the evaluation")
	}
}

// subsets returns every k-subset of 1..n, in increasing order.
func subsets(n, k int) [][]int {
	var out [][]int
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == k {
			out = append(out, slices.Clone(cur))
			return
		}
		for i := start; i <= n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(1, nil)
	return out
}

// juiceboxVector is one entry of testdata/juicebox-oprf-vectors.json (the
// vectors of the Juicebox SDK's OPRF crate).
type juiceboxVector struct {
	Name   string
	Inputs struct {
		Input              hexBytes `json:"input"`
		PrivateKeySeed     hexBytes `json:"private_key_seed"`
		BlindingFactorSeed hexBytes `json:"blinding_factor_seed"`
		BetaTSeed          hexBytes `json:"beta_t_seed"`
	}
	Outputs struct {
		PrivateKey     hexBytes `json:"private_key"`
		PublicKey      hexBytes `json:"public_key"`
		BlindingFactor hexBytes `json:"blinding_factor"`
		BlindedInput   hexBytes `json:"blinded_input"`
		BlindedOutput  hexBytes `json:"blinded_output"`
		ProofC         hexBytes `json:"proof_c"`
		ProofBetaZ     hexBytes `json:"proof_beta_z"`
		Output         hexBytes `json:"output"`
	}
}

// wideScalar reduces 64 little-endian bytes modulo the group order
// (curve25519-dalek's Scalar::from_bytes_mod_order_wide, which its
// Scalar::random and Scalar::from_hash use).
func wideScalar(b []byte) group.Scalar {
	be := slices.Clone(b)
	slices.Reverse(be)
	return g.NewScalar().SetBigInt(new(big.Int).SetBytes(be))
}

// TestJuiceboxVectors checks the package's group arithmetic against the
// Juicebox OPRF vectors. The package uses RFC 9497's OPRF instead of
// Juicebox's, which differs in three places: hash-to-group (Juicebox maps
// SHA-512(input) with dalek's from_uniform_bytes, RFC 9497 uses
// hash_to_curve with a domain separation tag), the output hash, and the
// proof's Fiat-Shamir transcript (docs/THRESHOLD.md). So this test takes the
// blinded input from the vector (circl does not expose from_uniform_bytes)
// and, to check the vector's last outputs, recomputes Juicebox's output hash
// and challenge hash here, with SHA-512; the package itself never uses them.
// Everything else is the package's: scalars from 64 random bytes, public
// keys, BlindEvaluate, unblinding, and the Chaum-Pedersen response
// beta_z = beta_t + c*k (RFC 9497 computes s = r - c*k: the same proof with
// the sign of c flipped).
func TestJuiceboxVectors(t *testing.T) {
	var vs []juiceboxVector
	loadJSON(t, "testdata/juicebox-oprf-vectors.json", &vs)
	if len(vs) != 10 {
		t.Fatalf("%d vectors, want 10", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			in, out := v.Inputs, v.Outputs
			k := wideScalar(in.PrivateKeySeed)
			kb := scalarBytes(k)
			eq(t, "private_key", kb[:], out.PrivateKey)
			pk := g.NewElement().MulGen(k)
			pkb := elementBytes(pk)
			eq(t, "public_key", pkb[:], out.PublicKey)
			bf := wideScalar(in.BlindingFactorSeed)
			bfb := scalarBytes(bf)
			eq(t, "blinding_factor", bfb[:], out.BlindingFactor)

			b := mustElement(t, out.BlindedInput)
			z, err := evaluate(k, b)
			if err != nil {
				t.Fatal(err)
			}
			zb := elementBytes(z)
			eq(t, "blinded_output", zb[:], out.BlindedOutput)

			unblinded := elementBytes(g.NewElement().Mul(z, g.NewScalar().Inv(bf)))
			h := sha512.New()
			h.Write([]byte("Juicebox_OPRF_2023_1;"))
			h.Write(in.Input)
			h.Write(unblinded[:])
			eq(t, "output", h.Sum(nil), out.Output)

			betaT := wideScalar(in.BetaTSeed)
			c := mustScalar(t, out.ProofC)
			betaZ := scalarBytes(g.NewScalar().Add(betaT, g.NewScalar().Mul(c, k)))
			eq(t, "proof_beta_z", betaZ[:], out.ProofBetaZ)
			vt := elementBytes(g.NewElement().MulGen(betaT))
			wt := elementBytes(g.NewElement().Mul(b, betaT))
			h = sha512.New()
			h.Write([]byte("Juicebox_DLEQ_2023_1;"))
			for _, x := range [][]byte{out.BlindedInput, pkb[:], zb[:], vt[:], wt[:]} {
				h.Write(x)
			}
			cb := scalarBytes(wideScalar(h.Sum(nil)))
			eq(t, "proof_c", cb[:], out.ProofC)
		})
	}
}
