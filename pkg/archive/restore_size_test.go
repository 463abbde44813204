package archive

import (
	"context"
	"sync"
	"testing"
)

// RestoreSize gives the totals a restore's progress counts towards, with
// and without --include/--exclude: the files the restore ends with.
func TestRestoreSizeIsWhatRestoreCounts(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 12)
	r := fx.tr.reopen(t)
	for _, opt := range []RestoreOptions{
		{},
		{Exclude: []string{"d1"}},
		{Include: []string{"Media/d2"}},
		{Include: []string{"Media/d0", "Media/d1/*-04.jpg"}, Exclude: []string{"photo-00.jpg"}},
	} {
		files, size, err := r.RestoreSize(ctx, fx.snap, opt)
		if err != nil {
			t.Fatal(err)
		}
		opt.Target = t.TempDir()
		var mu sync.Mutex
		var last RestoreProgress
		opt.Progress = func(p RestoreProgress) {
			mu.Lock()
			defer mu.Unlock()
			if p.Files > last.Files {
				last = p
			}
		}
		total, err := r.Restore(ctx, fx.snap, opt)
		if err != nil {
			t.Fatal(err)
		}
		if files != total.Files || size != total.Bytes || last.Files != files || last.Bytes != size {
			t.Errorf("include %q exclude %q: RestoreSize %d files, %d bytes; the restore %d, %d; its last progress %d, %d",
				opt.Include, opt.Exclude, files, size, total.Files, total.Bytes, last.Files, last.Bytes)
		}
		if len(opt.Include)+len(opt.Exclude) > 0 && files >= fx.snap.Stats.Files {
			t.Errorf("include %q exclude %q: %d files of %d", opt.Include, opt.Exclude, files, fx.snap.Stats.Files)
		}
	}
}
