//go:build unix

package gather

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type walked struct {
	entries  []Entry
	warnings map[string]error
}

func walkAll(t *testing.T, root string) walked {
	t.Helper()
	w := walked{warnings: map[string]error{}}
	err := Walk(context.Background(), root, func(e Entry) error {
		w.entries = append(w.entries, e)
		return nil
	}, func(p string, err error) {
		if _, dup := w.warnings[p]; dup {
			t.Errorf("two warnings for %q", p)
		}
		w.warnings[p] = err
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return w
}

func (w walked) paths() []string {
	var ps []string
	for _, e := range w.entries {
		ps = append(ps, e.Path)
	}
	return ps
}

func (w walked) get(p string) (Entry, bool) {
	for _, e := range w.entries {
		if e.Path == p {
			return e, true
		}
	}
	return Entry{}, false
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// buildTree makes a media-like tree with one of everything Walk handles.
func buildTree(t *testing.T) (root, outside string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "Media")
	outside = filepath.Join(base, "secret.txt")
	mustWrite(t, outside, "not for backup")

	mustWrite(t, filepath.Join(root, "WhatsApp Images", "IMG-20240101-WA0001.jpg"), "jpeg")
	mustWrite(t, filepath.Join(root, "WhatsApp Images", "Sent", "IMG-20240102-WA0002.jpg"), "jpeg sent")
	mustWrite(t, filepath.Join(root, "WhatsApp Images!", "x"), "sorts between a dir and its contents by bytes")
	mustWrite(t, filepath.Join(root, "WhatsApp Documents", "Überweisung 😀 日本.pdf"), "pdf")
	mustWrite(t, filepath.Join(root, "WhatsApp Voice Notes", "202401", "PTT-20240101-WA0001.opus"), "opus")
	mustWrite(t, filepath.Join(root, "empty.txt"), "")
	if err := os.MkdirAll(filepath.Join(root, "WhatsApp Video", "Empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "WhatsApp Documents", "Überweisung 😀 日本.pdf"), 0o600|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}

	// Symlinks inside the tree, relative and to a directory.
	mustSymlink(t, "../WhatsApp Images/IMG-20240101-WA0001.jpg", filepath.Join(root, "WhatsApp Documents", "link-in"))
	mustSymlink(t, "WhatsApp Video", filepath.Join(root, "link-dir"))
	mustSymlink(t, "dangling-but-inside", filepath.Join(root, "link-dangling"))
	mustSymlink(t, filepath.Join(root, "empty.txt"), filepath.Join(root, "link-abs-in"))
	// Symlinks leaving the tree.
	mustSymlink(t, "../secret.txt", filepath.Join(root, "link-out"))
	mustSymlink(t, "../../../secret.txt", filepath.Join(root, "WhatsApp Images", "Sent", "link-out-deep"))
	mustSymlink(t, outside, filepath.Join(root, "link-abs-out"))
	mustSymlink(t, "/", filepath.Join(root, "link-root"))
	// A fifo.
	if err := syscall.Mkfifo(filepath.Join(root, "WhatsApp Images", "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, outside
}

func TestWalk(t *testing.T) {
	root, _ := buildTree(t)
	w := walkAll(t, root)

	want := []string{
		"WhatsApp Documents",
		"WhatsApp Documents/link-in",
		"WhatsApp Documents/Überweisung 😀 日本.pdf",
		"WhatsApp Images",
		"WhatsApp Images/IMG-20240101-WA0001.jpg",
		"WhatsApp Images/Sent",
		"WhatsApp Images/Sent/IMG-20240102-WA0002.jpg",
		"WhatsApp Images!",
		"WhatsApp Images!/x",
		"WhatsApp Video",
		"WhatsApp Video/Empty",
		"WhatsApp Voice Notes",
		"WhatsApp Voice Notes/202401",
		"WhatsApp Voice Notes/202401/PTT-20240101-WA0001.opus",
		"empty.txt",
		"link-abs-in",
		"link-dangling",
		"link-dir",
	}
	if got := w.paths(); !slices.Equal(got, want) {
		t.Errorf("paths:\n got %q\nwant %q", got, want)
	}
	if !slices.IsSortedFunc(w.paths(), ComparePaths) {
		t.Errorf("paths not in ComparePaths order")
	}

	wantWarn := map[string]error{
		"WhatsApp Images/pipe":               ErrSpecialFile,
		"WhatsApp Images/Sent/link-out-deep": ErrSymlinkEscapes,
		"link-abs-out":                       ErrSymlinkEscapes,
		"link-out":                           ErrSymlinkEscapes,
		"link-root":                          ErrSymlinkEscapes,
	}
	for p, target := range wantWarn {
		if err := w.warnings[p]; !errors.Is(err, target) {
			t.Errorf("warning for %q = %v, want %v", p, err, target)
		}
	}
	for p, err := range w.warnings {
		if _, ok := wantWarn[p]; !ok {
			t.Errorf("unexpected warning for %q: %v", p, err)
		}
	}

	// Entry fields against Lstat.
	for _, e := range w.entries {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(e.Path)))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if e.Inode != st.Ino || e.Dev != st.Dev || e.Inode == 0 {
			t.Errorf("%s: inode/dev %d/%d, want %d/%d", e.Path, e.Inode, e.Dev, st.Ino, st.Dev)
		}
		if !e.ModTime.Equal(fi.ModTime()) {
			t.Errorf("%s: mtime %v, want %v", e.Path, e.ModTime, fi.ModTime())
		}
		if e.Mode != fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) {
			t.Errorf("%s: mode %v, want permission bits of %v", e.Path, e.Mode, fi.Mode())
		}
	}

	tests := []struct {
		path   string
		typ    EntryType
		size   int64
		target string
		mode   fs.FileMode // 0: depends on the umask, not checked
	}{
		{"WhatsApp Images/Sent/IMG-20240102-WA0002.jpg", File, 9, "", 0},
		{"WhatsApp Documents/Überweisung 😀 日本.pdf", File, 3, "", 0o600 | fs.ModeSetgid},
		{"empty.txt", File, 0, "", 0},
		{"WhatsApp Video/Empty", Dir, 0, "", 0},
		{"WhatsApp Documents/link-in", Symlink, 0, "../WhatsApp Images/IMG-20240101-WA0001.jpg", 0o777},
		{"link-dir", Symlink, 0, "WhatsApp Video", 0o777},
		{"link-dangling", Symlink, 0, "dangling-but-inside", 0o777},
		{"link-abs-in", Symlink, 0, filepath.Join(root, "empty.txt"), 0o777},
	}
	for _, tc := range tests {
		e, ok := w.get(tc.path)
		if !ok {
			t.Errorf("%s not reported", tc.path)
			continue
		}
		if e.Type != tc.typ || e.Size != tc.size || e.Target != tc.target || tc.mode != 0 && e.Mode != tc.mode {
			t.Errorf("%s: got %v size %d target %q mode %v; want %v size %d target %q mode %v",
				tc.path, e.Type, e.Size, e.Target, e.Mode, tc.typ, tc.size, tc.target, tc.mode)
		}
	}

	// Deterministic: a second walk gives the same entries.
	if again := walkAll(t, root); !slices.EqualFunc(w.entries, again.entries, func(a, b Entry) bool {
		return a.Path == b.Path && a.ModTime.Equal(b.ModTime) && a.Inode == b.Inode && a.Size == b.Size
	}) {
		t.Errorf("second walk differs")
	}
}

func TestWalkModTimeNanoseconds(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "f")
	mustWrite(t, p, "x")
	mt := time.Date(2024, 2, 29, 13, 14, 15, 123456789, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	w := walkAll(t, root)
	if len(w.entries) != 1 || !w.entries[0].ModTime.Equal(mt) {
		t.Fatalf("got %+v, want mtime %v", w.entries, mt)
	}
}

func TestWalkUnreadableDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads directories whatever their mode")
	}
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "a", "hidden.jpg"), "x")
	mustWrite(t, filepath.Join(root, "b.jpg"), "y")
	if err := os.Chmod(filepath.Join(root, "a"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "a"), 0o755) })
	w := walkAll(t, root)
	if got, want := w.paths(), []string{"a", "b.jpg"}; !slices.Equal(got, want) {
		t.Errorf("paths %q, want %q", got, want)
	}
	if err := w.warnings["a"]; !errors.Is(err, fs.ErrPermission) {
		t.Errorf("warning for a = %v, want permission denied", err)
	}
}

func TestWalkVanishing(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"a/1", "a/2", "b/1", "b/2", "c"} {
		mustWrite(t, filepath.Join(root, p), p)
	}
	// Remove parts of the tree while the walk is in flight: b (listed in
	// the root but not yet visited) and c.
	var got []string
	warnings := map[string]error{}
	err := Walk(context.Background(), root, func(e Entry) error {
		got = append(got, e.Path)
		if e.Path == "a/1" {
			if err := os.RemoveAll(filepath.Join(root, "b")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(root, "c")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(root, "a", "2")); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}, func(p string, err error) { warnings[p] = err })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "a/1"}; !slices.Equal(got, want) {
		t.Errorf("paths %q, want %q", got, want)
	}
	for _, p := range []string{"a/2", "b", "c"} {
		if !errors.Is(warnings[p], fs.ErrNotExist) {
			t.Errorf("warning for %s = %v, want not exist", p, warnings[p])
		}
	}
}

func TestWalkStops(t *testing.T) {
	root, _ := buildTree(t)
	stop := errors.New("stop")
	n := 0
	err := Walk(context.Background(), root, func(e Entry) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	}, nil)
	if err != stop || n != 3 {
		t.Errorf("Walk = %v after %d entries, want the callback's error after 3", err, n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	err = Walk(ctx, root, func(e Entry) error {
		n++
		cancel()
		return nil
	}, nil)
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Errorf("Walk = %v after %d entries, want context.Canceled after 1", err, n)
	}
}

func TestWalkRootErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	mustWrite(t, file, "x")
	tests := []struct {
		name, root string
		is         error
	}{
		{"missing", filepath.Join(dir, "nope"), fs.ErrNotExist},
		{"file", file, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Walk(context.Background(), tc.root, func(Entry) error {
				t.Error("callback called")
				return nil
			}, nil)
			if err == nil {
				t.Fatal("Walk succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.root) {
				t.Errorf("%q does not name the root", err)
			}
		})
	}
}

// TestWalkRootSymlink walks a root given as a symlink to a directory.
func TestWalkRootSymlink(t *testing.T) {
	base := t.TempDir()
	mustWrite(t, filepath.Join(base, "real", "x", "f"), "f")
	mustSymlink(t, "../f", filepath.Join(base, "real", "x", "up"))
	mustSymlink(t, "real", filepath.Join(base, "Media"))
	w := walkAll(t, filepath.Join(base, "Media"))
	if got, want := w.paths(), []string{"x", "x/f", "x/up"}; !slices.Equal(got, want) {
		t.Errorf("paths %q, want %q", got, want)
	}
}

func TestWalkManyEntries(t *testing.T) {
	root := t.TempDir()
	// More names than one ReadDir batch.
	const n = readDirBatch*2 + 7
	for i := range n {
		mustWrite(t, filepath.Join(root, "d", strings.Repeat("x", i%5)+string(rune('a'+i%26))+"-"+strconv.Itoa(i)), "")
	}
	w := walkAll(t, root)
	if len(w.entries) != n+1 {
		t.Fatalf("got %d entries, want %d", len(w.entries), n+1)
	}
	if !slices.IsSortedFunc(w.paths(), ComparePaths) {
		t.Errorf("not sorted")
	}
}

func TestComparePaths(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"a", "a", 0},
		{"a", "b", -1},
		{"a", "a/b", -1},
		{"a/b", "a!", -1}, // contents of a come before its sibling a!
		{"a!", "a/b", 1},
		{"a/b", "a/c", -1},
		{"a/z", "ab", -1},
		{"ab", "a/z", 1},
		{"Z", "a", -1},
		{"é", "z", 1},
		{"a/b/c", "a/b", 1},
		{"", "a", -1},
	}
	for _, tc := range tests {
		if got := ComparePaths(tc.a, tc.b); got != tc.want {
			t.Errorf("ComparePaths(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
