package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/cloud"
)

// output is the one place that writes to the user, so --json and --quiet
// hold for every command.
type output struct {
	json   bool
	quiet  bool
	stdout io.Writer
	stderr io.Writer
}

// Printf writes human output (not with --json or --quiet).
func (o *output) Printf(format string, a ...any) {
	if o.json || o.quiet {
		return
	}
	fmt.Fprintf(o.stdout, format, a...)
}

// Warnf writes a warning to stderr (not with --quiet; with --json as an
// object on stdout).
func (o *output) Warnf(format string, a ...any) {
	msg := oneLine(fmt.Sprintf(format, a...))
	switch {
	case o.quiet:
	case o.json:
		o.JSON(map[string]any{"message_type": "warning", "message": msg})
	default:
		fmt.Fprintln(o.stderr, "warning: "+msg)
	}
}

// JSON writes one JSON document on a line (only with --json).
func (o *output) JSON(v any) {
	if !o.json {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(o.stdout, string(b))
}

// orEmpty is l, or [] for nil: a JSON list is never null.
func orEmpty(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// fail reports the error that ends the command.
func (o *output) fail(code int, msg string) {
	if o.json {
		o.JSON(map[string]any{"message_type": "exit_error", "code": code, "message": msg})
		return
	}
	fmt.Fprintln(o.stderr, "wabackup: "+msg)
}

// drawsProgress reports whether progress is drawn: stderr is a terminal
// and output is for humans.
func (o *output) drawsProgress() bool {
	return !o.json && !o.quiet && secret.IsTerminal(os.Stderr)
}

// progress returns the progress line of a backup or restore on stderr
// when drawsProgress, otherwise nil: files done of totalFiles and a bar of
// bytes done of totalBytes (either total -1: not known). Its rate (and
// the ETA from it) is the library's rolling one: the mean of the last ten
// rates each measured over at least half a second between updates, so a
// sliding window of the last five seconds or more, not the average since
// the start.
func (o *output) progress(verb string, totalFiles, totalBytes int64) *progressLine {
	if !o.drawsProgress() {
		return nil
	}
	return newProgressLine(os.Stderr, verb, totalFiles, totalBytes)
}

func newProgressLine(w io.Writer, verb string, totalFiles, totalBytes int64) *progressLine {
	return &progressLine{verb: verb, total: totalBytes, bar: started(progressbar.NewOptions64(totalBytes,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(filesDone(verb, 0, totalFiles)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true), // as the summaries (MiB)
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	))}
}

// progressLine is a progress bar whose description (the file counts) and
// bytes change together. The library renders on each of Describe and
// Set64 and would throttle the second of the pair, showing the new file
// count with the old bytes; here the pair is drawn at most every 100 ms,
// both rendered.
type progressLine struct {
	mu           sync.Mutex
	bar          *progressbar.ProgressBar
	verb         string
	total        int64 // the bar's bytes, -1 not known
	files, bytes int64 // the highest counts given (restore workers report at once)
	next         time.Time
}

// update shows files done of totalFiles (-1: not known) and bytes done;
// the totals grow to the counts when these pass them.
func (l *progressLine) update(files, totalFiles, bytes int64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files, l.bytes = max(l.files, files), max(l.bytes, bytes)
	if totalFiles >= 0 {
		totalFiles = max(totalFiles, l.files)
	}
	if l.total > 0 && l.bytes > l.total {
		l.total = l.bytes
		l.bar.ChangeMax64(l.total)
	}
	now := time.Now()
	if now.Before(l.next) {
		return
	}
	l.next = now.Add(100 * time.Millisecond)
	l.bar.Describe(filesDone(l.verb, l.files, totalFiles))
	_ = l.bar.Set64(l.bytes)
}

// finish clears the line.
func (l *progressLine) finish() {
	if l != nil {
		_ = l.bar.Finish()
	}
}

// started draws the empty bar at once, which starts its clock now: left
// to the first update, the clock would start then, and the first rate
// shown would be that update's bytes over no time at all (hundreds of
// GiB/s).
func started(b *progressbar.ProgressBar) *progressbar.ProgressBar {
	_ = b.RenderBlank()
	return b
}

// progressCount is progress for things that are not bytes: unit names
// them in the rate ("packs" → "3 packs/s").
func (o *output) progressCount(desc, unit string, total int64) *progressbar.ProgressBar {
	if !o.drawsProgress() {
		return nil
	}
	return started(progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	))
}

// filesDone is a progress bar's description: "backup: files 1,234/5,678",
// or without the total when it is not known (total < 0).
func filesDone(verb string, done, total int64) string {
	if total < 0 {
		return verb + ": files " + groupDigits(done)
	}
	return verb + ": files " + groupDigits(done) + "/" + groupDigits(total)
}

// groupDigits writes n with thousands separators: 1234567 → "1,234,567".
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// storeCounts is what the stores this command opened were asked so far
// (cloud.Counter says what each kind counts, per backend).
func (a *app) storeCounts() cloud.Counts {
	var c cloud.Counts
	for _, n := range a.counters {
		c = c.Add(n.Counts())
	}
	return c
}

// withStoreFigures adds the store's request and byte counts to a summary
// message: "requests" ({"list": N, "get": N, "stat": N, "put": N,
// "delete": N, "total": N}), "bytes_up" and "bytes_down" (docs/JSON.md).
func (a *app) withStoreFigures(m map[string]any) map[string]any {
	c := a.storeCounts()
	req := map[string]any{"total": c.Total()}
	for _, k := range cloud.Kinds() {
		req[k.String()] = c.Of(k)
	}
	m["requests"] = req
	m["bytes_up"] = c.BytesUp
	m["bytes_down"] = c.BytesDown
	return m
}

// printStoreFigures prints the summary's line of store figures:
// "store: 22 requests (3 list, 12 get, 7 put), 1.20 MiB up, 40.00 KiB down"
// (kinds without a request left out).
func (a *app) printStoreFigures() {
	a.out.Printf("%s\n", storeLine(a.storeCounts()))
}

func storeLine(c cloud.Counts) string {
	var kinds []string
	for _, k := range cloud.Kinds() {
		if n := c.Of(k); n > 0 {
			kinds = append(kinds, fmt.Sprintf("%d %s", n, k))
		}
	}
	by := ""
	if len(kinds) > 0 {
		by = " (" + strings.Join(kinds, ", ") + ")"
	}
	plural := "s"
	if c.Total() == 1 {
		plural = ""
	}
	return fmt.Sprintf("store: %d request%s%s, %s up, %s down", c.Total(), plural, by, humanBytes(c.BytesUp), humanBytes(c.BytesDown))
}
