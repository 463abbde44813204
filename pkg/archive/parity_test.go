package archive

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud/local"
)

func parityFixtureFile(t *testing.T, size int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "pack"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return f, data
}

func fileBytes(t *testing.T, f *os.File) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The parity budget, as FORMAT.md §5.1 states it: any damage touching at
// most N shards of each group (N = percent) is rebuilt, a contiguous
// stretch of N·G shards (a truncated end) included; more is refused.
func TestParityBudget(t *testing.T) {
	const size = 5<<20 + 12345 // 321 shards, 4 groups of ≤ 100
	for _, percent := range []int{1, 3} {
		f, want := parityFixtureFile(t, size)
		obj, err := encodeParity(f, size, percent)
		if err != nil {
			t.Fatal(err)
		}
		p, err := decodeParity(obj)
		if err != nil {
			t.Fatal(err)
		}
		if got, max := len(obj), size*(percent+1)/100+64<<10; got > max {
			t.Fatalf("%d%%: parity object of %d bytes, more than %d", percent, got, max)
		}
		l := p.l
		// Scattered: percent flips in each group, in different shards.
		rng := rand.New(rand.NewPCG(uint64(percent), 1))
		for g := 0; g < l.groups; g++ {
			m := l.members(g)
			for k := 0; k < percent; k++ {
				j := m[k*len(m)/percent]
				off := int64(j)*parityShard + int64(rng.IntN(parityShard))
				off = min(off, size-1)
				b := []byte{0}
				f.ReadAt(b, off)
				b[0] ^= 0x5a
				f.WriteAt(b, off)
			}
		}
		n, err := repairWithParity(f, p)
		if err != nil || n != l.groups*percent || !bytes.Equal(fileBytes(t, f), want) {
			t.Fatalf("%d%%: scattered damage: rebuilt %d, %v, identical %v", percent, n, err, bytes.Equal(fileBytes(t, f), want))
		}
		// A truncated end: the last percent·G shards.
		cut := int64(l.shards-percent*l.groups) * parityShard
		if err := f.Truncate(cut); err != nil {
			t.Fatal(err)
		}
		if n, err := repairWithParity(f, p); err != nil || !bytes.Equal(fileBytes(t, f), want) {
			t.Fatalf("%d%%: truncated end: rebuilt %d, %v", percent, n, err)
		}
		// One shard more than the budget in a group: refused, not guessed.
		m := l.members(0)
		for k := 0; k <= percent; k++ {
			off := int64(m[k]) * parityShard
			f.WriteAt([]byte{0xff, 0xfe}, off)
		}
		if _, err := repairWithParity(f, p); !errors.Is(err, ErrBeyondParity) {
			t.Fatalf("%d%%: damage beyond the budget: %v", percent, err)
		}
	}
}

// Acceptance 6 of issue 12: with parity on, bytes flipped within the
// budget in random packs (and a pack's end cut off) are repaired by check
// --read-data --repair, and the restore is byte-identical.
func TestParityRepairsPacks(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	st, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	r, rk, err := Init(ctx, st, InitOptions{Parity: 2})
	if err != nil {
		t.Fatal(err)
	}
	r.SetTempDir(t.TempDir())
	r.cfg.PackSize = 1 << 20
	tr := &testRepo{Repository: r, dir: dir, recovery: rk}
	src := filepath.Join(t.TempDir(), "Media")
	randomTree(t, src, 21)
	snap, err := tr.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	stored, _, err := r.listPacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One pack (the biggest) gets its end cut off (1 %), others two
	// flipped bytes each: each within the 2 % budget.
	var victim ID
	var vsize int64
	for id, size := range stored {
		if size > vsize {
			victim, vsize = id, size
		}
	}
	rng := rand.New(rand.NewPCG(9, 9))
	damaged := 0
	for id, size := range stored {
		if _, err := st.Stat(ctx, parityName(id)); err != nil {
			t.Fatalf("%s has no parity object: %v", packName(id), err)
		}
		if id == victim || rng.IntN(2) == 0 || size < 64<<10 {
			continue
		}
		// Within the budget: two flipped bytes, far apart (one shard each
		// of different groups, or two of one group: 2 % allows 2).
		for k := 0; k < 2; k++ {
			tamperFlip(t, dir, packName(id), rng.Int64N(size), 1<<rng.IntN(8))
		}
		damaged++
	}
	tamperTruncate(t, dir, packName(victim), func(n int64) int64 { return n - n/100 })
	if damaged == 0 {
		t.Fatal("no pack damaged")
	}
	if _, err := tr.reopen(t).Check(ctx, CheckOptions{ReadData: true}); !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("check --read-data of the damaged repository: %v", err)
	}
	res, err := tr.reopen(t).Check(ctx, CheckOptions{ReadData: true, Repair: true})
	if err != nil {
		t.Fatalf("check --read-data --repair: %v %q", err, res.Errors)
	}
	if len(res.Repaired) < damaged {
		t.Fatalf("repaired %d packs, damaged %d (+1 truncated)", len(res.Repaired), damaged)
	}
	if res, err := tr.reopen(t).Check(ctx, CheckOptions{ReadData: true}); err != nil || len(res.Warnings) != 0 {
		t.Fatalf("check --read-data after the repair: %v %q %q", err, res.Errors, res.Warnings)
	}
	target := t.TempDir()
	if _, err := tr.reopen(t).Restore(ctx, snap, RestoreOptions{Target: target}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, treeDigest(t, src), treeDigest(t, filepath.Join(target, "Media")))
}

func FuzzDecodeParity(f *testing.F) {
	file, _ := os.CreateTemp(f.TempDir(), "p")
	file.Write(bytes.Repeat([]byte{1, 2, 3}, 50000))
	obj, _ := encodeParity(file, 150000, 1)
	file.Close()
	f.Add(obj)
	f.Add([]byte("WPR1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeParity(b)
		if err != nil {
			return
		}
		if len(p.dataSums) != p.l.shards || len(p.parity) != p.l.groups*p.l.parity*parityShard {
			t.Fatal("inconsistent parity object accepted")
		}
	})
}
