package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/escrow"
	"github.com/wabackup/wabackup/pkg/threshold"
)

// parseSubset accepts "10%" or "n/t" (restic's forms) and returns the
// fraction of packs to read.
func parseSubset(s string) (float64, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return 0, fmt.Errorf("--read-data-subset %q: want a percentage in (0, 100]", s)
		}
		return v / 100, nil
	}
	if n, t, ok := strings.Cut(s, "/"); ok {
		a, err1 := strconv.Atoi(n)
		b, err2 := strconv.Atoi(t)
		if err1 != nil || err2 != nil || a < 1 || b < 1 || a > b {
			return 0, fmt.Errorf("--read-data-subset %q: want n/t with 1 <= n <= t", s)
		}
		return 1 / float64(b), nil
	}
	return 0, fmt.Errorf("--read-data-subset %q: want a percentage like 10%% or n/t", s)
}

func (a *app) checkCommand() *cobra.Command {
	var readData, checkDB, repair bool
	var subset string
	cmd := &cobra.Command{
		Use:   "check [--db [ID|latest]]",
		Short: "Verify the repository",
		Long: `Verify the repository's structure: every index and snapshot decrypts and every
chunk a snapshot needs is stored. --read-data downloads and authenticates
every chunk; --read-data-subset 10% a random tenth of the packs. With
--repair, a damaged or truncated pack of a repository made with --parity is
rebuilt from its parity in place (within the parity's budget: FORMAT.md §5.1).

--db rebuilds the chat database of a snapshot (default: the latest) into a
temporary file and runs SQLite's full integrity_check on it, without the
source.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if checkDB {
				ref := "latest"
				if len(args) == 1 {
					ref = args[0]
				}
				return a.checkStoredDB(ctx, ref)
			}
			if len(args) > 0 {
				return fmt.Errorf("check takes no snapshot unless --db is given")
			}
			opt := archive.CheckOptions{ReadData: readData, Repair: repair}
			if repair && !readData && subset == "" {
				return errors.New("--repair needs --read-data (a pack's damage is found by reading it)")
			}
			if subset != "" {
				f, err := parseSubset(subset)
				if err != nil {
					return err
				}
				opt.ReadData, opt.Subset = true, f
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var res *archive.CheckResult
				err := a.withLock(ctx, r, false, "check", func() error {
					var err error
					// The bar starts with the reading of packs, its
					// total known, so its clock and rate are the reading's.
					var bar *progressbar.ProgressBar
					if a.out.drawsProgress() {
						opt.Progress = func(done, total int) {
							if bar == nil && total > 0 {
								bar = a.out.progressCount("check: packs", "packs", int64(total))
							}
							if bar != nil {
								_ = bar.Set(done)
							}
						}
						defer func() {
							if bar != nil {
								_ = bar.Finish()
							}
						}()
					}
					res, err = r.Check(ctx, opt)
					return err
				})
				if res == nil {
					return err
				}
				res.Warnings = append(res.Warnings, earlierFormSlots(ctx, r)...)
				for _, w := range res.Warnings {
					a.out.Warnf("%s", w)
				}
				for _, e := range res.Errors {
					if a.out.json {
						a.out.JSON(map[string]any{"message_type": "error", "message": e})
					} else {
						fmt.Fprintln(a.out.stderr, "error: "+oneLine(e))
					}
				}
				a.out.JSON(a.withStoreFigures(map[string]any{"message_type": "summary", "snapshots": res.Snapshots, "packs": res.Packs, "packs_read": res.PacksRead, "chunks": res.Chunks, "errors": len(res.Errors), "warnings": len(res.Warnings)}))
				if err != nil {
					return fmt.Errorf("check found %d error(s); first: %s", len(res.Errors), res.Errors[0])
				}
				a.out.Printf("no errors: %d snapshots, %d packs (%d read), %d chunks\n", res.Snapshots, res.Packs, res.PacksRead, res.Chunks)
				a.printStoreFigures()
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&readData, "read-data", false, "download and verify every chunk")
	cmd.Flags().BoolVar(&repair, "repair", false, "with --read-data: rebuild damaged packs from their parity (repositories made with --parity)")
	cmd.Flags().BoolVar(&checkDB, "db", false, "run the full integrity_check on a snapshot's stored databases")
	notASetting(cmd, "db") // backup's db = PATH in the config file is not this switch
	cmd.Flags().StringVar(&subset, "read-data-subset", "", "verify a random subset of the packs: a percentage (10%) or n/t")
	return cmd
}

// checkStoredDB runs the full integrity check on the database a snapshot
// holds.
func (a *app) checkStoredDB(ctx context.Context, ref string) error {
	return a.withRepo(ctx, func(r *archive.Repository) error {
		var summary map[string]any
		err := a.withLock(ctx, r, false, "check", func() error {
			snap, err := a.findSnapshot(ctx, r, ref)
			if err != nil {
				return err
			}
			dir := a.tempDir
			if dir == "" {
				dir = os.TempDir()
			}
			start := time.Now()
			dbs := snap.Databases()
			if len(dbs) == 0 {
				return fmt.Errorf("snapshot %s holds no database: %w", snap.ID.Short(), archive.ErrNoSnapshot)
			}
			for _, d := range dbs {
				if err := r.CheckStoredDB(ctx, snap, d.Name(), dir); err != nil {
					return err
				}
				a.out.Printf("database %s of snapshot %s passed integrity_check\n", d.Path, snap.ID.Short())
			}
			summary = map[string]any{"message_type": "summary", "snapshot_id": snap.ID.String(), "db": snap.DB, "dbs": orEmpty(snap.DBPaths()), "integrity_check": "ok", "duration_seconds": time.Since(start).Seconds()}
			return nil
		})
		if err != nil {
			return err
		}
		// after the lock's removal, which the store figures count
		a.out.JSON(a.withStoreFigures(summary))
		a.printStoreFigures()
		return nil
	})
}

// earlierFormSlots are check's warnings about threshold vault slots of the
// earlier form: their realm set is not checked before the vaults are sent
// their unlock tags (docs/THRESHOLD.md §4a), so key rotate should register
// them again.
func earlierFormSlots(ctx context.Context, r *archive.Repository) []string {
	slots, err := r.Slots(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range slots {
		if !escrow.IsThresholdSlot(s) {
			continue
		}
		if set, err := escrow.ParseRealmSet(s); err == nil && set.Form == threshold.Form1 {
			out = append(out, fmt.Sprintf("vault slot %.8s (%s) was written by an earlier version: its vaults are not checked before they are sent their unlock tags, so whoever can write the repository could collect them; run wabackup key rotate %s to register the key again in the checked form", s.ID, set.Describe(), set.Flags()))
		}
	}
	return out
}
