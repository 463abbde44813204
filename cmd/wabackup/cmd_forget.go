package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

func (a *app) forgetCommand() *cobra.Command {
	var p archive.Policy
	var prune, dryRun bool
	cmd := &cobra.Command{
		Use:   "forget",
		Short: "Remove snapshots by a keep policy (and --prune unused data)",
		Long: `Remove snapshots by a keep policy. The policy applies to each group of
snapshots of the same host, database and media folder separately (each group
is listed with its decisions), so a media-only backup never pushes out the
backups of the chat. --dry-run only says what would be removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var summary func() // prune's, once the lock is gone
				err := a.withLock(ctx, r, true, "forget", func() error {
					ds, err := r.Forget(ctx, p, dryRun)
					if err != nil {
						return err
					}
					removed := 0
					lastGroup := ""
					for _, d := range ds {
						action := "keep"
						if !d.Keep {
							action = "remove"
							removed++
						}
						// The policy applies to each group of snapshots of the
						// same host, database and media folder: say which.
						s := d.Snapshot
						if g := s.SourceKey(); g != lastGroup {
							lastGroup = g
							a.out.Printf("snapshots of host %s, database %s, media %s:\n", s.Host, orDash(strings.Join(s.DBPaths(), ", ")), orDash(s.Media))
						}
						a.out.JSON(map[string]any{"message_type": "forget", "snapshot_id": s.ID.String(), "time": s.Time, "keep": d.Keep, "reasons": orEmpty(d.Reasons),
							"group": map[string]any{"host": s.Host, "db": s.DB, "dbs": orEmpty(s.DBPaths()), "media": s.Media}})
						a.out.Printf("%-6s %s  %s  %s\n", action, d.Snapshot.ID.Short(), d.Snapshot.Time.Local().Format("2006-01-02 15:04:05"), strings.Join(d.Reasons, ","))
					}
					verb := "removed"
					if dryRun {
						verb = "would remove"
					}
					a.out.Printf("%s %d of %d snapshot(s)\n", verb, removed, len(ds))
					if prune {
						summary, err = a.doPrune(ctx, r, dryRun)
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
	f.IntVar(&p.Last, "keep-last", 0, "keep the N most recent snapshots")
	f.IntVar(&p.Hourly, "keep-hourly", 0, "keep the last snapshot of each of the N last hours")
	f.IntVar(&p.Daily, "keep-daily", 0, "keep the last snapshot of each of the N last days")
	f.IntVar(&p.Weekly, "keep-weekly", 0, "keep the last snapshot of each of the N last weeks")
	f.IntVar(&p.Monthly, "keep-monthly", 0, "keep the last snapshot of each of the N last months")
	f.IntVar(&p.Yearly, "keep-yearly", 0, "keep the last snapshot of each of the N last years")
	f.BoolVar(&prune, "prune", false, "then remove data no snapshot uses")
	f.BoolVarP(&dryRun, "dry-run", "n", false, "only say what would be done")
	return cmd
}

// doPrune prunes, under the caller's exclusive lock, and returns the
// function that prints its summary: the caller calls it once the lock is
// gone, so that the store figures count the lock's removal too.
func (a *app) doPrune(ctx context.Context, r *archive.Repository, dryRun bool) (func(), error) {
	res, err := r.Prune(ctx, dryRun)
	if err != nil {
		return nil, err
	}
	aborted := 0
	if s, ok := cloud.Unwrap(r.Store()).(*s3.Store); ok && !dryRun {
		// Under the exclusive lock no backup is uploading: every
		// incomplete multipart upload is abandoned.
		if aborted, err = s.CleanupIncomplete(ctx, 0); err != nil {
			a.out.Warnf("aborting incomplete uploads: %v", err)
		}
	}
	return func() {
		a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "prune", "dry_run": dryRun, "nothing": res.Nothing, "packs_deleted": res.PacksDeleted, "packs_repacked": res.PacksRepacked, "packs_kept": res.PacksKept, "trees_deleted": res.TreesDeleted, "bytes_freed": res.BytesFreed}))
		verb := "freed"
		if dryRun {
			verb = "would free"
		}
		if res.Nothing {
			a.out.Printf("prune: nothing to prune: every pack is in use (%d kept); the store was not changed\n", res.PacksKept)
		} else {
			a.out.Printf("prune: %s %s (%d pack(s) deleted, %d repacked, %d kept)\n", verb, humanBytes(res.BytesFreed), res.PacksDeleted, res.PacksRepacked, res.PacksKept)
		}
		if aborted > 0 {
			a.out.Printf("aborted %d incomplete upload(s)\n", aborted)
		}
		a.printStoreFigures()
	}, nil
}

func (a *app) pruneCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove data that no snapshot uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var summary func()
				err := a.withLock(ctx, r, true, "prune", func() error {
					var err error
					summary, err = a.doPrune(ctx, r, dryRun)
					return err
				})
				if summary != nil {
					summary()
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "only say what would be done")
	return cmd
}
