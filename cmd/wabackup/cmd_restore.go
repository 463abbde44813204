package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) restoreCommand() *cobra.Command {
	var opt archive.RestoreOptions
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "restore [ID|latest] --target DIR",
		Short: "Restore a snapshot",
		Long: `Restore a snapshot (default: the latest; if the newest holds no database, the
newest that holds one and the same media folder, with a note) below --target. Every chunk is
verified before it is written; files are written under a temporary name and
renamed, and existing files are never replaced unless --overwrite is given.

Running a restore again into the same target continues it: files already
there with the snapshot's size, time and content (checked against the
snapshot's chunk ids) are kept and not downloaded again. Files whose data is
damaged or missing in the repository are left out (never left under their
name) and every other file is restored; they are listed at the end, the
database first, and the exit code is 1.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if opt.Target == "" {
				return errors.New("give --target DIR")
			}
			ref := "latest"
			if len(args) == 1 {
				ref = args[0]
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				start := time.Now()
				var total archive.RestoreProgress
				// The summary comes once the lock is gone, so that its
				// store figures count the lock's removal too.
				var summary func()
				err := a.withLock(ctx, r, false, "restore", func() error {
					snap, err := a.findSnapshotWithDB(ctx, r, ref, "restoring")
					if err != nil {
						return err
					}
					for i, p := range opt.Include {
						opt.Include[i] = inSnapshot(snap, p)
					}
					for i, p := range opt.Exclude {
						opt.Exclude[i] = inSnapshot(snap, p)
					}
					if dryRun {
						w, wb, k, err := r.RestorePlan(ctx, snap, opt)
						if err != nil {
							return err
						}
						summary = func() {
							a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "restore_plan", "snapshot_id": snap.ID.String(), "files": w, "bytes": wb, "kept": k, "target": opt.Target}))
							a.out.Printf("would restore %d files, %s from snapshot %s to %s (%d already there would be kept)\n", w, humanBytes(wb), snap.ID.Short(), opt.Target, k)
							a.printStoreFigures()
						}
						return nil
					}
					// The totals: what this restore covers (after --include
					// and --exclude); no progress when they cannot be had.
					var bar *progressLine
					if a.out.drawsProgress() {
						if files, size, err := r.RestoreSize(ctx, snap, opt); err == nil && size > 0 {
							bar = a.out.progress("restore", files, size)
							opt.Progress = func(p archive.RestoreProgress) { bar.update(p.Files, files, p.Bytes) }
							defer bar.finish()
						}
					}
					total, err = r.Restore(ctx, snap, opt)
					var inc *archive.IncompleteError
					if err != nil && !errors.As(err, &inc) {
						return err
					}
					bar.finish()
					failed := []map[string]any{}
					if inc != nil {
						for _, f := range inc.Failed {
							what := ""
							if f.DB {
								what = " (the database)"
							}
							if !a.out.json {
								a.out.Warnf("not restored: %s%s: %v", f.Path, what, f.Err)
							}
							failed = append(failed, map[string]any{"path": f.Path, "database": f.DB, "error": f.Err.Error()})
						}
					}
					summary = func() {
						a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "summary", "snapshot_id": snap.ID.String(), "files": total.Files, "bytes": total.Bytes, "kept": total.Kept, "store_bytes": total.StoreBytes, "not_restored": failed, "target": opt.Target, "duration_seconds": time.Since(start).Seconds()}))
						kept := ""
						if total.Kept > 0 {
							kept = fmt.Sprintf(" (%d already there, kept)", total.Kept)
						}
						a.out.Printf("restored %d files%s, %s from snapshot %s to %s in %s\n", total.Files, kept, humanBytes(total.Bytes), snap.ID.Short(), opt.Target, time.Since(start).Round(time.Millisecond))
						a.printStoreFigures()
					}
					return err
				})
				if summary != nil {
					summary()
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opt.Target, "target", "t", "", "directory to restore into")
	f.StringArrayVar(&opt.Include, "include", nil, "restore only this path of the snapshot, or the paths matching this glob (*, ?, [...]), and what is below (repeatable)")
	f.StringArrayVar(&opt.Exclude, "exclude", nil, "leave out this path or glob; a glob without / matches names at any depth, e.g. '*.thumb' (repeatable)")
	f.BoolVar(&opt.Overwrite, "overwrite", false, "replace files that already exist")
	f.BoolVarP(&dryRun, "dry-run", "n", false, "only say what would be restored (nothing is written)")
	f.BoolVar(&opt.NoSync, "no-sync", false, "do not make restored files durable before they get their names (faster, like restic; a machine crash during the restore may then leave empty files)")
	return cmd
}

// findSnapshotWithDB finds the snapshot ref names; for "latest", if the
// newest holds no database (a media-only backup), the newest that holds
// one (and the same media folder) instead, with a note: the chat is what
// matters most.
func (a *app) findSnapshotWithDB(ctx context.Context, r *archive.Repository, ref, doing string) (*archive.Snapshot, error) {
	snap, err := a.findSnapshot(ctx, r, ref)
	if err != nil || ref != "latest" || snap.HasDB() {
		return snap, err
	}
	all, err := r.Snapshots(ctx)
	if err != nil {
		return snap, nil
	}
	for i := len(all) - 1; i >= 0; i-- {
		if s := all[i]; s.HasDB() && (snap.Media == "" || s.Media == snap.Media) {
			a.out.Warnf("the newest snapshot, %s, holds no database: %s %s (%s), the newest that holds %s", snap.ID.Short(), doing, s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04"), strings.Join(s.DBPaths(), ", "))
			return s, nil
		}
	}
	return snap, nil
}
