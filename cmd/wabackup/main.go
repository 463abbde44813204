// Command wabackup makes end-to-end encrypted backups of a chat app's
// database and media folder, and restores them. Each command is a thin
// layer over pkg/archive; this file holds the exit codes and the error
// reporting every command shares.
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/keys"

	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	_ "github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

// Exit codes (README "Exit codes", `wabackup help exit-codes`).
const (
	exitOK          = 0
	exitFatal       = 1
	exitPartial     = 3
	exitNoRepo      = 10
	exitLocked      = 11
	exitWrongKey    = 12
	exitAccess      = 14
	exitStoreFull   = 15
	exitInterrupted = 130
)

const exitCodesHelp = `Exit codes:
  0    success
  1    fatal error (bad input, I/O error, damaged repository, failed check of
       the repository or the chat database, a restore that left out files
       whose data is damaged (it lists them), a version-1 repository that needs
       'wabackup migrate' before a backup, a store that cannot be reached
       within the retry budget, a store that shows an older state than this
       machine has seen (--allow-rollback accepts it)…)
  3    backup finished but the snapshot is partial: some files could not be read
  10   the repository does not exist
  11   the repository is locked by another process
  12   wrong or malformed key or password, a key slot that was removed or
       revoked by key rotate, or a wrong key-vault password (the message says
       how many attempts are left before the vault destroys the key)
  14   the store refused us: access denied, no credentials, not logged in to
       Google Drive, wrong S3 region, clock skew
  15   the store (or a local disk: no space left, quota exceeded) is full, or
       Google Drive's daily upload cap was reached; what was stored is kept
       and the next run goes on from there
  130  interrupted (Ctrl-C / SIGTERM); nothing half-written is referenced

With --json, a failure also prints {"message_type":"exit_error","code":N,"message":"…"}
on standard output.`

// partialError reports a snapshot that was saved but is incomplete.
type partialError struct{ msg string }

func (e *partialError) Error() string { return e.msg }

func exitCode(err error, interrupted bool) int {
	var pe *partialError
	switch {
	case err == nil:
		return exitOK
	case interrupted || errors.Is(err, context.Canceled) || errors.Is(err, secret.ErrInterrupted):
		return exitInterrupted
	case errors.As(err, &pe):
		return exitPartial
	case errors.Is(err, cloud.ErrNoRepository):
		return exitNoRepo
	case errors.Is(err, archive.ErrLocked):
		return exitLocked
	case errors.Is(err, keys.ErrWrongKey), errors.Is(err, keys.ErrMalformedKey):
		return exitWrongKey
	case errors.Is(err, s3.ErrAccessDenied), errors.Is(err, s3.ErrNoCredentials), errors.Is(err, s3.ErrWrongRegion),
		errors.Is(err, s3.ErrClockSkew), errors.Is(err, gdrive.ErrNotLoggedIn):
		return exitAccess
	case errors.Is(err, gdrive.ErrUploadCap), errors.Is(err, gdrive.ErrQuota), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return exitStoreFull
	}
	return exitFatal
}

// oneLine makes an error message fit on one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// memoryLimit is the soft limit for the Go heap: the pipelines keep well
// under it, and it stops garbage from doubling the footprint (the peak
// RSS target is 64 MB). GOMEMLIMIT overrides it.
const memoryLimit = 32 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	// WABACKUP_CPUPROFILE=FILE writes a CPU profile of the run (for
	// `go tool pprof`; docs/BENCHMARKS.md).
	if p := os.Getenv("WABACKUP_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			code := run(os.Args[1:], os.Stdout, os.Stderr)
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(code)
		}
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the process the default way
	}()
	app := newApp(stdout, stderr)
	root := app.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	interrupted := ctx.Err() != nil && err != nil
	code := exitCode(err, interrupted)
	if err != nil {
		msg := err.Error()
		if code == exitInterrupted {
			msg = "interrupted"
		}
		// A flag error stops parsing before a later --json is read.
		for _, a := range args {
			if a == "--" {
				break
			}
			if a == "--json" || a == "--json=true" {
				app.out.json = true
			}
		}
		app.out.fail(code, oneLine(msg))
	}
	return code
}
