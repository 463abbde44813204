package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/wabackup/wabackup/internal/secret"
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

// progress returns a byte progress bar on stderr when drawsProgress;
// otherwise nil.
func (o *output) progress(desc string, total int64) *progressbar.ProgressBar {
	if !o.drawsProgress() {
		return nil
	}
	return started(progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true), // as the summaries (MiB)
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	))
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
