package archive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// watchSync replaces syncFS for one test: each call records which
// temporary files existed when the sync started (those are the files it
// made durable); fail makes the calls fail.
type syncWatch struct {
	mu     sync.Mutex
	calls  int
	synced map[string]bool
	fail   error
	// handed counts the files handed to the committer; covered is the
	// largest count a sync started after.
	handed, covered int
}

func watchSync(t *testing.T) *syncWatch {
	w := &syncWatch{synced: map[string]bool{}}
	old := syncFS
	syncFS = func(f *os.File) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.calls++
		if w.fail != nil {
			return w.fail
		}
		w.covered = w.handed
		ents, err := os.ReadDir(f.Name())
		if err != nil {
			return err
		}
		for _, e := range ents {
			w.synced[e.Name()] = true
		}
		return nil
	}
	t.Cleanup(func() { syncFS = old })
	return w
}

// TestCommitterNamesOnlySyncedFiles: a file gets its real name only after
// a file-system sync that started after it was handed over, syncs are
// batched, and what was never synced never gets a name: for files under
// a temporary name and for anonymous ones.
func TestCommitterNamesOnlySyncedFiles(t *testing.T) {
	for _, anon := range []bool{false, true} {
		t.Run(map[bool]string{false: "named", true: "anonymous"}[anon], func(t *testing.T) { testCommitter(t, anon) })
	}
}

func testCommitter(t *testing.T, anon bool) {
	if anon && !anonFilesWork(t.TempDir()) {
		t.Skip("no anonymous files here")
	}
	for _, tc := range []struct {
		name      string
		files     int
		size      int64
		abort     bool
		syncErr   error
		wantNamed bool
		maxSyncs  int
	}{
		{name: "many small files, batched", files: 3*commitBatchFiles + 7, size: 10, wantNamed: true, maxSyncs: 8},
		{name: "few big files, batched by bytes", files: 9, size: commitBatchBytes / 2, wantNamed: true, maxSyncs: 8},
		{name: "aborted restore names nothing", files: 5, size: 10, abort: true},
		{name: "failed sync names nothing", files: 300, size: 10, syncErr: errors.New("EIO"), maxSyncs: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := watchSync(t)
			dir := t.TempDir()
			c := newCommitter(dir)
			if c == nil {
				t.Fatal("no committer on a Linux file system")
			}
			w.mu.Lock()
			w.fail = tc.syncErr
			w.mu.Unlock()
			var addErr error
			for i := 0; i < tc.files; i++ {
				dst := filepath.Join(dir, fmt.Sprint(i))
				var p *pendingFile
				if anon {
					f, err := openAnon(dir)
					if err != nil {
						t.Fatal(err)
					}
					p = &pendingFile{f: f, dst: dst, size: tc.size}
				} else {
					tmp := filepath.Join(dir, fmt.Sprintf(".wabackup-%d.tmp", i))
					if err := os.WriteFile(tmp, []byte("x"), 0o600); err != nil {
						t.Fatal(err)
					}
					p = &pendingFile{tmp: tmp, dst: dst, size: tc.size}
				}
				w.mu.Lock()
				w.handed++
				w.mu.Unlock()
				if err := c.add(p); err != nil {
					addErr = err
					p.discard()
					break
				}
			}
			var err error
			if !tc.abort {
				if err = c.flush(); err == nil {
					err = c.sync()
				}
			}
			c.stop()
			switch {
			case tc.syncErr != nil:
				if err == nil && addErr == nil {
					t.Fatal("sync failure not reported")
				}
			case err != nil || addErr != nil:
				t.Fatal(err, addErr)
			}
			named, temps := 0, 0
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if filepath.Ext(e.Name()) == ".tmp" {
					temps++
					continue
				}
				named++
				i, _ := strconv.Atoi(e.Name())
				if !anon && !w.synced[".wabackup-"+e.Name()+".tmp"] || i >= w.covered {
					t.Errorf("file %s got its name before a sync covered it", e.Name())
				}
			}
			if temps != 0 {
				t.Errorf("%d temporary files left behind", temps)
			}
			if tc.wantNamed && named != tc.files {
				t.Errorf("%d of %d files named", named, tc.files)
			}
			if !tc.wantNamed && named != 0 {
				t.Errorf("%d files named that were never synced", named)
			}
			if tc.maxSyncs > 0 && w.calls > tc.maxSyncs {
				t.Errorf("%d syncs for %d files, want at most %d", w.calls, tc.files, tc.maxSyncs)
			}
		})
	}
}
