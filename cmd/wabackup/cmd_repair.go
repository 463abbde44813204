package main

import (
	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) repairCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Repair a damaged repository",
		Long: `Repair what check reports. 'repair index' rebuilds the index from the packs.
Backups heal what they can by themselves: a chunk whose pack is missing is
sent again from the source.`,
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
						"index_objects_replaced": res.Replaced, "damaged_packs": res.Damaged, "salvaged_chunks": res.Salvaged, "lost_chunks": res.Lost})
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
	cmd.AddCommand(index)
	return cmd
}
