package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

func (a *app) backupCommand() *cobra.Command {
	var opt archive.BackupOptions
	var excludeFile string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up the chat database and media folder",
		Long: `Back up the chat database and the media folder. The database is read page
by page inside one read transaction (a consistent state, while the app keeps
writing), and only the pages that changed since the last snapshot are stored;
that same state is checked on every run, split over the cores (--db-check
auto): with the quick check (every table's and index's b-tree: quick_check),
or, on the first run and whenever the last full check is older than
--db-full-check-every, with the full check (integrity_check of the whole file
and the FTS indexes' own check). snapshots shows what each run checked.
Files unchanged since the last snapshot (same size, mtime and inode) are not
read again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if opt.DBCheck != "auto" && opt.DBCheck != "full" && opt.DBCheck != "quick" {
				return fmt.Errorf("--db-check %q: want auto, full or quick", opt.DBCheck)
			}
			if opt.DBFullCheckEvery <= 0 {
				return fmt.Errorf("--db-full-check-every %s: want a positive duration such as 168h", opt.DBFullCheckEvery)
			}
			if len(opt.DBs) == 0 && opt.Media == "" {
				return fmt.Errorf("nothing to back up: give --db and/or --media (or set them in the config file)")
			}
			if excludeFile != "" {
				pats, err := readPatterns(excludeFile)
				if err != nil {
					return err
				}
				opt.Exclude = append(opt.Exclude, pats...)
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var warnings []string
				opt.Warn = func(path string, err error) {
					msg := err.Error()
					if path != "" {
						msg = path + ": " + msg
					}
					warnings = append(warnings, msg)
					a.out.Warnf("%s", msg)
				}
				// The totals: what the last snapshot of the same sources held
				// (the walk does not know them before it ends).
				total, totalFiles := int64(-1), int64(-1)
				if snaps, err := r.Snapshots(ctx); err == nil {
					host := opt.Host
					if host == "" {
						host, _ = os.Hostname()
					}
					for i := len(snaps) - 1; i >= 0; i-- {
						if s := snaps[i]; s.SourceKey() == opt.SourceKey(host) && s.Stats.Bytes > 0 {
							total, totalFiles = s.Stats.Bytes, s.Stats.Files
							break
						}
					}
				}
				bar := a.out.progress("backup", totalFiles, total)
				if bar != nil {
					opt.Progress = func(p archive.BackupProgress) {
						if total > 0 {
							bar.update(p.Files, totalFiles, p.Bytes)
						} else {
							bar.update(p.Files, -1, p.Bytes)
						}
					}
				}
				start := time.Now()
				var snap *archive.Snapshot
				err := a.withLock(ctx, r, false, "backup", func() error {
					var err error
					snap, err = r.Backup(ctx, opt)
					return err
				})
				bar.finish()
				if err != nil {
					return err
				}
				s := snap.Stats
				if opt.DryRun {
					a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "backup_plan", "dry_run": true, "partial": snap.Partial,
						"files": s.Files, "dirs": s.Dirs, "bytes": s.Bytes, "unchanged_files": s.Unchanged, "read_bytes": s.ReadBytes,
						"new_chunks": s.NewChunks, "new_bytes": s.NewBytes, "added_bytes": s.AddedBytes, "excluded": s.Excluded,
						"warnings": snap.Warnings, "dbs": dbsJSON(snap), "duration_seconds": time.Since(start).Seconds()}))
					a.out.Printf("dry run, nothing stored: would save %d files, %s (%d unchanged); read %s, would add %s to the repository (%d new chunks, %s before compression)\n",
						s.Files, humanBytes(s.Bytes), s.Unchanged, humanBytes(s.ReadBytes), humanBytes(s.AddedBytes), s.NewChunks, humanBytes(s.NewBytes))
				} else {
					a.cleanupAbandoned(ctx, r)
					a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "summary", "snapshot_id": snap.ID.String(), "partial": snap.Partial,
						"files": s.Files, "dirs": s.Dirs, "bytes": s.Bytes, "unchanged_files": s.Unchanged, "read_bytes": s.ReadBytes,
						"new_chunks": s.NewChunks, "new_bytes": s.NewBytes, "added_bytes": s.AddedBytes, "resent_chunks": s.Resent, "resent_bytes": s.ResentBytes, "excluded": s.Excluded,
						"warnings": snap.Warnings, "db_check": snap.DBCheck, "dbs": dbsJSON(snap),
						"duration_seconds": time.Since(start).Seconds()}))
					a.out.Printf("snapshot %s saved: %d files, %s (%d unchanged); read %s, added %s to the repository in %s\n",
						snap.ID.Short(), s.Files, humanBytes(s.Bytes), s.Unchanged, humanBytes(s.ReadBytes), humanBytes(s.AddedBytes),
						time.Since(start).Round(time.Millisecond))
				}
				if s.Resent > 0 && !opt.DryRun {
					a.out.Printf("healed: sent %d chunk(s), %s, again from the source (their packs were missing or truncated in the store)\n", s.Resent, humanBytes(s.ResentBytes))
				}
				a.printStoreFigures()
				if snap.Partial {
					first := ""
					if len(warnings) > 0 {
						first = " (first: " + warnings[0] + ")"
					}
					if opt.DryRun {
						return &partialError{fmt.Sprintf("dry run: the snapshot would be partial: %d file(s) could not be read%s", len(warnings), first)}
					}
					return &partialError{fmt.Sprintf("snapshot %s is partial: %d file(s) could not be read%s", snap.ID.Short(), len(warnings), first)}
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&opt.DBs, "db", nil, "a chat database (SQLite file); repeatable: msgstore.db, wa.db, …")
	f.StringVar(&opt.Media, "media", "", "the media folder")
	f.StringVar(&opt.DBCheck, "db-check", "auto", "verify the database: auto (the quick check every run, without the FTS indexes; the full check, FTS indexes included, when the last one is older than --db-full-check-every), full (the full check every run) or quick (the quick check only)")
	f.DurationVar(&opt.DBFullCheckEvery, "db-full-check-every", archive.DefaultFullCheckEvery, "with --db-check auto: how old the last full check (FTS indexes included) may be")
	f.StringVar(&opt.Host, "host", "", "host name to record (default: this machine's)")
	f.StringSliceVar(&opt.Tags, "tag", nil, "tag the snapshot (repeatable)")
	f.BoolVarP(&opt.DryRun, "dry-run", "n", false, "read and count everything, store nothing: say what the backup would add")
	f.StringArrayVar(&opt.Exclude, "exclude", nil, "leave out media matching this pattern: a path in the snapshot or a glob over it (Media/.thumbnails), or, without /, a glob over names at any depth ('*.tmp') (repeatable)")
	f.StringVar(&excludeFile, "exclude-file", "", "read --exclude patterns from this file, one a line (# comments)")
	return cmd
}

// readPatterns reads one pattern a line, skipping blank lines and
// # comments.
func readPatterns(file string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--exclude-file: %w", err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, nil
}

// cleanupAbandoned removes what interrupted backups left in the store and
// nothing a running backup still uses: S3 multipart uploads and a local
// repository's named staging files older than a day (best effort: a
// failure is a warning).
func (a *app) cleanupAbandoned(ctx context.Context, r *archive.Repository) {
	switch s := cloud.Unwrap(r.Store()).(type) {
	case *s3.Store:
		if _, err := s.CleanupIncomplete(ctx, 24*time.Hour); err != nil {
			a.out.Warnf("aborting abandoned uploads: %v", err)
		}
	case *local.Store:
		if _, _, err := s.CleanupStaging(24 * time.Hour); err != nil {
			a.out.Warnf("removing abandoned staged files: %v", err)
		}
	}
}
