package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) restoreCommand() *cobra.Command {
	var opt archive.RestoreOptions
	cmd := &cobra.Command{
		Use:   "restore [ID|latest] --target DIR",
		Short: "Restore a snapshot",
		Long: `Restore a snapshot (default: the latest) below --target. Every chunk is
verified before it is written; files are written under a temporary name and
renamed, and existing files are never replaced unless --overwrite is given.`,
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
				return a.withLock(ctx, r, false, "restore", func() error {
					snap, err := r.FindSnapshot(ctx, ref)
					if err != nil {
						return err
					}
					bar := a.out.progress("restore", snap.Stats.Bytes)
					if bar != nil {
						opt.Progress = func(p archive.RestoreProgress) { bar.Set64(p.Bytes) }
						defer bar.Finish()
					}
					total, err = r.Restore(ctx, snap, opt)
					if err == nil {
						a.out.JSON(map[string]any{"message_type": "summary", "snapshot_id": snap.ID.String(), "files": total.Files, "bytes": total.Bytes, "target": opt.Target, "duration_seconds": time.Since(start).Seconds()})
						a.out.Printf("restored %d files, %s from snapshot %s to %s in %s\n", total.Files, humanBytes(total.Bytes), snap.ID.Short(), opt.Target, time.Since(start).Round(time.Millisecond))
					}
					return err
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opt.Target, "target", "t", "", "directory to restore into")
	f.StringSliceVar(&opt.Include, "include", nil, "restore only this path of the snapshot (repeatable)")
	f.BoolVar(&opt.Overwrite, "overwrite", false, "replace files that already exist")
	f.BoolVar(&opt.NoSync, "no-sync", false, "do not make restored files durable before they get their names (faster, like restic; a machine crash during the restore may then leave empty files)")
	return cmd
}
