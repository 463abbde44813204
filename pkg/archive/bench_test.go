package archive

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchData writes size bytes as files of 1–8 MiB: three quarters
// incompressible media, one quarter compressible text, like a chat backup.
func benchData(b *testing.B, size int64) string {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "Media")
	os.MkdirAll(dir, 0o755)
	var seed [32]byte
	rng := rand.NewChaCha8(seed)
	words := []byte("hello see you tomorrow ok 👍 lol the photo from yesterday is great ")
	var written int64
	for i := 0; written < size; i++ {
		n := int64(1<<20 + rng.Uint64()%(7<<20))
		data := make([]byte, n)
		name := fmt.Sprintf("IMG-%04d.jpg", i)
		if i%4 == 3 {
			name = fmt.Sprintf("chat-%04d.txt", i)
			for j := range data {
				data[j] = words[(j*7+j/13)%len(words)]
			}
		} else {
			rng.Read(data)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
		written += n
	}
	b.SetBytes(written)
	return dir
}

// BenchmarkBackup measures a first backup into a local repository
// (durable: every pack is fsynced).
func BenchmarkBackup(b *testing.B) {
	src := benchData(b, 256<<20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tr := newTestRepo(b)
		b.StartTimer()
		if _, err := tr.Backup(context.Background(), BackupOptions{Media: src}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackupUnchanged measures a no-change re-run: one stat walk.
func BenchmarkBackupUnchanged(b *testing.B) {
	src := benchData(b, 256<<20)
	tr := newTestRepo(b)
	if _, err := tr.Backup(context.Background(), BackupOptions{Media: src}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tr.Backup(context.Background(), BackupOptions{Media: src}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestore measures restoring the whole snapshot (fsync per file).
func BenchmarkRestore(b *testing.B) {
	src := benchData(b, 256<<20)
	tr := newTestRepo(b)
	snap, err := tr.Backup(context.Background(), BackupOptions{Media: src})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := b.TempDir()
		if _, err := tr.Restore(context.Background(), snap, RestoreOptions{Target: out}); err != nil {
			b.Fatal(err)
		}
	}
}
