package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/keys"
)

var testArgon = &keys.Argon2Params{Time: 1, MemoryKiB: 8 * 1024, Threads: 1}

type testRepo struct {
	*Repository
	dir      string
	recovery keys.Key
}

func newTestRepo(t testing.TB) *testRepo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	st, err := local.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	r, rk, err := Init(context.Background(), st, InitOptions{Password: []byte("correct horse"), Argon2: testArgon})
	if err != nil {
		t.Fatal(err)
	}
	r.SetTempDir(t.TempDir())
	return &testRepo{Repository: r, dir: dir, recovery: rk}
}

// reopen opens the repository afresh, as a new process would.
func (tr *testRepo) reopen(t testing.TB) *Repository {
	t.Helper()
	st, err := local.Open(tr.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Unlock(context.Background(), Credentials{RecoveryKey: &tr.recovery}); err != nil {
		t.Fatal(err)
	}
	r.SetTempDir(t.TempDir())
	return r
}

// treeDigest describes a directory tree: path, type, mode, mtime, content hash.
func treeDigest(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v", fi.Mode())
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d %x mtime=%d", len(data), sha256.Sum256(data), fi.ModTime().UnixNano())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case fi.IsDir():
			desc += fmt.Sprintf(" mtime=%d", fi.ModTime().UnixNano())
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t testing.TB, want, got map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: restored %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: restored but not in the source", k)
		}
	}
}

// randomTree writes a random media tree: empty files, large files, many
// small files, deep paths, unicode names.
func randomTree(t testing.TB, root string, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	names := []string{"photo", "Привет", "日本語", "émoji 😀", "a b", "x", "voice-note", "dup"}
	var cc [32]byte
	cc[0] = byte(seed)
	stream := rand.NewChaCha8(cc)
	write := func(p string, size int, compressible bool) {
		data := make([]byte, size)
		if compressible {
			for i := range data {
				data[i] = "hello chat "[i%11]
			}
		} else {
			stream.Read(data)
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o640); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1700000000+rng.Int64N(1e7), rng.Int64N(1e9))
		os.Chtimes(p, mt, mt)
	}
	os.MkdirAll(root, 0o755)
	write(filepath.Join(root, "empty"), 0, false)
	write(filepath.Join(root, "big.mp4"), 9<<20+rng.IntN(1<<20), false)
	write(filepath.Join(root, "big.log"), 5<<20, true)
	deep := root
	for i := 0; i < 12; i++ {
		deep = filepath.Join(deep, names[rng.IntN(len(names))]+fmt.Sprint(i))
	}
	write(filepath.Join(deep, "deep.txt"), 100, true)
	for i := 0; i < 150; i++ {
		dir := filepath.Join(root, names[rng.IntN(len(names))])
		write(filepath.Join(dir, fmt.Sprintf("%s-%d.bin", names[rng.IntN(len(names))], i)), rng.IntN(20000), rng.IntN(2) == 0)
	}
	os.Symlink("big.mp4", filepath.Join(root, "link-inside"))
	os.MkdirAll(filepath.Join(root, "emptydir"), 0o711)
	os.Chmod(filepath.Join(root, "empty"), 0o600)
}

func TestRoundTripRandomTrees(t *testing.T) {
	// Three fixed trees and one new each run (its seed is logged, and
	// WABACKUP_TREE_SEED replays it).
	seeds := []uint64{1, 2, 3, uint64(time.Now().UnixNano())}
	if s, err := strconv.ParseUint(os.Getenv("WABACKUP_TREE_SEED"), 10, 64); err == nil {
		seeds = []uint64{s}
	}
	for _, seed := range seeds {
		t.Logf("tree seed %d", seed)
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			ctx := context.Background()
			tr := newTestRepo(t)
			src := filepath.Join(t.TempDir(), "Media")
			randomTree(t, src, seed)
			want := treeDigest(t, src)
			snap, err := tr.Backup(ctx, BackupOptions{Media: src})
			if err != nil {
				t.Fatal(err)
			}
			if snap.Partial {
				t.Fatal("snapshot partial")
			}
			r2 := tr.reopen(t)
			s2, err := r2.FindSnapshot(ctx, "latest")
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			if _, err := r2.Restore(ctx, s2, RestoreOptions{Target: out}); err != nil {
				t.Fatal(err)
			}
			compareTrees(t, want, treeDigest(t, filepath.Join(out, "Media")))
			res, err := r2.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatalf("check: %v %v", err, res.Errors)
			}
		})
	}
}

func TestIncrementalAndDedup(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := filepath.Join(t.TempDir(), "Media")
	randomTree(t, src, 7)
	s1, err := tr.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	r2 := tr.reopen(t)
	s2, err := r2.Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is stored but the snapshot header (which the summary counts).
	if s2.Stats.ReadBytes != 0 || s2.Stats.NewChunks != 0 || s2.Stats.AddedBytes == 0 || s2.Stats.AddedBytes > 4096 || s2.Parent != s1.ID.String() {
		t.Fatalf("no-change re-run read %d bytes, added %d, parent %q", s2.Stats.ReadBytes, s2.Stats.AddedBytes, s2.Parent)
	}
	// Change the middle of a big file: only its changed chunks are sent.
	big := filepath.Join(src, "big.mp4")
	f, _ := os.OpenFile(big, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte{0xAB}, 1000), 5<<20)
	f.Close()
	s3, err := tr.reopen(t).Backup(ctx, BackupOptions{Media: src})
	if err != nil {
		t.Fatal(err)
	}
	if s3.Stats.NewBytes == 0 || s3.Stats.NewBytes > 2*DefaultMaxChunk {
		t.Fatalf("changing 1000 bytes sent %d new bytes", s3.Stats.NewBytes)
	}
	if s3.Stats.ReadBytes != fileSize(t, big) {
		t.Fatalf("re-read %d bytes, want only the changed file", s3.Stats.ReadBytes)
	}
}

func fileSize(t testing.TB, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestWrongKeyAndPassword(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	st, _ := local.Open(tr.dir, false)
	r, err := Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	bad := tr.recovery
	bad[0] ^= 1
	if err := r.Unlock(ctx, Credentials{RecoveryKey: &bad}); err != ErrWrongKey && !strings.Contains(fmt.Sprint(err), "wrong") {
		t.Fatalf("wrong recovery key: %v", err)
	}
	if err := r.Unlock(ctx, Credentials{Password: []byte("nope")}); err == nil {
		t.Fatal("wrong password accepted")
	}
	if err := r.Unlock(ctx, Credentials{Password: []byte("correct horse")}); err != nil {
		t.Fatal(err)
	}
}
