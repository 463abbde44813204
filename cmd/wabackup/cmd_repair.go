package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) repairCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Repair a damaged repository",
		Long: `Repair what check reports. 'repair index' rebuilds the index from the packs;
'repair snapshots' makes copies of damaged snapshots without the files whose
data is lost. Backups heal what they can by themselves: a chunk whose pack
is missing is sent again from the source.`,
	}
	var dryRun bool
	index := &cobra.Command{
		Use:   "index",
		Short: "Rebuild the index from the packs",
		Long: `Rebuild the index from the packs themselves (each pack's trailer lists its
chunks) and replace every index object. A pack whose trailer does not open
is salvaged: the chunks the old index located in it that still read intact
are copied into a new pack, and the damaged pack is moved to damaged/ in the
store. Takes an exclusive lock; an interruption leaves a complete index.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				return a.withLock(ctx, r, true, "repair", func() error {
					res, err := r.RepairIndex(ctx, dryRun)
					if err != nil {
						return err
					}
					a.out.JSON(map[string]any{"message_type": "repair_index", "dry_run": dryRun, "packs": res.Packs, "chunks": res.Chunks,
						"index_objects_replaced": res.Replaced, "damaged_packs": orEmpty(res.Damaged), "salvaged_chunks": res.Salvaged, "lost_chunks": res.Lost})
					verb := "rebuilt"
					if dryRun {
						verb = "would rebuild"
					}
					a.out.Printf("%s the index from %d packs (%d chunks), replacing %d index object(s)\n", verb, res.Packs, res.Chunks, res.Replaced)
					for _, d := range res.Damaged {
						a.out.Warnf("%s: its trailer does not open: moved to damaged/", d)
					}
					if len(res.Damaged) > 0 {
						a.out.Printf("damaged packs: %d; chunks salvaged from them: %d; chunks lost: %d (check lists the files that needed them)\n", len(res.Damaged), res.Salvaged, res.Lost)
					}
					return nil
				})
			})
		},
	}
	index.Flags().BoolVar(&dryRun, "dry-run", false, "only say what would be done")
	var all bool
	snaps := &cobra.Command{
		Use:   "snapshots [ID|latest ...] [--all]",
		Short: "Make copies of damaged snapshots without the files whose data is lost",
		Long: `For each snapshot given (or every one with --all) that references data no
longer stored, write a new snapshot without the files (and database) that
need it, marked as repaired from the original. The originals are kept until
you forget them; check reports their damage as warnings that point at the
repaired copy. Run it when backups cannot heal the loss (the source no longer
has the data). Takes an exclusive lock.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if all == (len(args) > 0) {
				return errors.New("give snapshot ids (or latest), or --all")
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				return a.withLock(ctx, r, true, "repair", func() error {
					var list []*archive.Snapshot
					if all {
						var err error
						if list, err = r.Snapshots(ctx); err != nil {
							return err
						}
					}
					for _, ref := range args {
						s, err := a.findSnapshot(ctx, r, ref)
						if err != nil {
							return err
						}
						list = append(list, s)
					}
					reps, err := r.RepairSnapshots(ctx, list, dryRun)
					if err != nil {
						return err
					}
					made := 0
					for _, rep := range reps {
						m := map[string]any{"message_type": "repair_snapshot", "snapshot_id": rep.From.ID.String(), "dropped": orEmpty(rep.Dropped), "dry_run": dryRun}
						switch {
						case len(rep.Dropped) == 0:
							a.out.Printf("snapshot %s: nothing lost\n", rep.From.ID.Short())
						case rep.New != nil:
							made++
							m["repaired_id"] = rep.New.ID.String()
							a.out.Printf("snapshot %s: repaired as %s, without %d file(s) whose data is lost\n", rep.From.ID.Short(), rep.New.ID.Short(), len(rep.Dropped))
						default:
							a.out.Printf("snapshot %s: would be repaired without %d file(s) whose data is lost\n", rep.From.ID.Short(), len(rep.Dropped))
						}
						for _, p := range rep.Dropped {
							if !a.out.json {
								a.out.Printf("    %s\n", p)
							}
						}
						a.out.JSON(m)
					}
					if made > 0 {
						a.out.Printf("the original snapshots are kept: forget them when you no longer want them\n")
					}
					return nil
				})
			})
		},
	}
	snaps.Flags().BoolVar(&all, "all", false, "every snapshot")
	snaps.Flags().BoolVar(&dryRun, "dry-run", false, "only say what would be done")
	cmd.AddCommand(index, snaps)
	return cmd
}
