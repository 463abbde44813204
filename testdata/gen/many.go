package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The kinds of small file only --many writes.
const (
	sticker mediaKind = iota + nomedia + 1
	thumb
	chatExport // a .txt chat export: compressible
	jsonDoc    // a small .json document: compressible
)

// manyKinds are the small files of a media folder, with their share of the
// files and size range (all within manyMin..manyMax): stickers in one big
// folder, thumbnails in monthly folders, voice notes in weekly folders, a
// few small text documents.
var manyKinds = []struct {
	kind     mediaKind
	share    float64
	min, max int64
}{
	{sticker, 0.25, 8 << 10, manyMax},
	{thumb, 0.35, manyMin, 16 << 10},
	{voice, 0.28, 4 << 10, manyMax},
	{chatExport, 0.07, manyMin, 24 << 10},
	{jsonDoc, 0.05, manyMin, 24 << 10},
}

const manyMin, manyMax = 2 << 10, 40 << 10

// manyStats summarises generateMany.
type manyStats struct {
	files, dirs int
	bytes       int64
}

// generateMany writes c.out/Media only: n small files (2–40 KiB,
// log-uniform within each kind's range) in a few hundred folders,
// deterministic for c.seed.
func generateMany(ctx context.Context, c config, n int) (manyStats, error) {
	var st manyStats
	mediaDir := filepath.Join(c.out, "Media")
	if _, err := os.Lstat(mediaDir); err == nil {
		return st, fmt.Errorf("%s already exists", mediaDir)
	}
	if err := os.MkdirAll(mediaDir, 0o755); err != nil {
		return st, err
	}
	files := planMany(rand.New(rand.NewPCG(c.seed, 0x6d616e79)), n)
	if err := writeMedia(ctx, mediaDir, files); err != nil {
		return st, err
	}
	dirs := map[string]bool{}
	for _, f := range files {
		st.files++
		st.bytes += f.size
		dirs[filepath.Dir(f.rel)] = true
	}
	st.dirs = len(dirs)
	return st, nil
}

// planMany draws n files' kinds, sizes, times and names.
func planMany(r *rand.Rand, n int) []*mediaFile {
	start := time.Date(2019, 6, 1, 0, 0, 0, 0, time.UTC)
	span := int64(time.Date(2024, 11, 30, 0, 0, 0, 0, time.UTC).Sub(start))
	files := make([]*mediaFile, n)
	for i := range files {
		u := r.Float64()
		k := 0
		for ; k < len(manyKinds)-1 && u >= manyKinds[k].share; k++ {
			u -= manyKinds[k].share
		}
		mk := manyKinds[k]
		size := int64(float64(mk.min) * math.Pow(float64(mk.max)/float64(mk.min), r.Float64()))
		f := &mediaFile{
			kind: mk.kind, size: min(max(size, manyMin), manyMax),
			when:   start.Add(time.Duration(r.Int64N(span))).Truncate(time.Second),
			fromMe: r.IntN(10) < 3,
			seed:   r.Uint64(),
		}
		if mk.kind == chatExport || mk.kind == jsonDoc {
			f.docName = docNames[r.IntN(len(docNames))]
		}
		files[i] = f
	}
	slices.SortStableFunc(files, func(a, b *mediaFile) int { return a.when.Compare(b.when) })
	counters := map[string]int{}
	used := map[string]bool{}
	for _, f := range files {
		day := f.when.Format("20060102")
		var dir, name string
		switch f.kind {
		case sticker:
			dir, name = "WhatsApp Stickers", fmt.Sprintf("STK-%s-WA%04d.webp", day, counters["STK"+day])
			counters["STK"+day]++
		case thumb:
			dir = "WhatsApp Images/.Thumbs/" + f.when.Format("200601")
			name = fmt.Sprintf("IMG-%s-WA%04d.jpg", day, counters["IMG"+day])
			counters["IMG"+day]++
		case voice:
			y, w := f.when.ISOWeek()
			dir = fmt.Sprintf("WhatsApp Voice Notes/%04d%02d", y, w)
			name = fmt.Sprintf("PTT-%s-WA%04d.opus", day, counters["PTT"+day])
			counters["PTT"+day]++
		default:
			dir = "WhatsApp Documents"
			if f.fromMe {
				dir += "/Sent"
			}
			base, ext := "WhatsApp Chat - "+f.docName, ".txt"
			if f.kind == jsonDoc {
				base, ext = f.docName+" "+f.when.Format("2006-01-02"), ".json"
			}
			name = base + ext
			for i := 1; used[dir+"/"+name]; i++ {
				name = fmt.Sprintf("%s (%d)%s", base, i, ext)
			}
		}
		f.rel = dir + "/" + name
		used[f.rel] = true
	}
	return files
}

// textContent makes the exact size bytes of a compressible document of
// kind chatExport (WhatsApp's export format) or jsonDoc, from seed.
func textContent(kind mediaKind, seed uint64, size int64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x74657874))
	g := &dbGen{r: r, words: rand.NewZipf(r, 1.1, 2, uint64(len(vocabulary)-1))}
	names := []string{"Anna", "Jonas", "Mum", "Dad", "Lea", "Tom", "Mia", "+49 151 2345678"}
	ts := time.Date(2019, 6, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(5 * 365 * 24 * time.Hour))))
	var b bytes.Buffer
	b.Grow(int(size) + 256)
	if kind == jsonDoc {
		b.WriteString("{\"messages\": [\n")
	}
	for i := 0; int64(b.Len()) < size; i++ {
		ts = ts.Add(time.Duration(r.ExpFloat64() * float64(10*time.Minute)))
		who := names[r.IntN(len(names))]
		if kind == jsonDoc {
			fmt.Fprintf(&b, "  {\"id\": %d, \"timestamp\": %d, \"from\": %s, \"text\": %s},\n",
				i+1, ts.Unix(), strconv.Quote(who), strconv.Quote(g.sentence()))
		} else {
			fmt.Fprintf(&b, "%s - %s: %s\n", ts.Format("02/01/2006, 15:04"), who, g.sentence())
		}
	}
	out := b.Bytes()[:size]
	// End on a whole character.
	cut := len(out)
	for cut > 0 && cut < b.Len() && !utf8.RuneStart(b.Bytes()[cut]) {
		cut--
	}
	for i := cut; i < len(out); i++ {
		out[i] = '\n'
	}
	return out
}
