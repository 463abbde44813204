package main

import (
	"fmt"
	"github.com/wabackup/wabackup/pkg/archive"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func (a *app) snapshotsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				snaps, err := r.Snapshots(ctx)
				if err != nil {
					return err
				}
				if a.out.json {
					list := make([]map[string]any, 0, len(snaps))
					for _, s := range snaps {
						list = append(list, map[string]any{"id": s.ID.String(), "time": s.Time, "host": s.Host, "db": s.DB, "media": s.Media,
							"tags": s.Tags, "partial": s.Partial, "parent": s.Parent, "files": s.Stats.Files, "bytes": s.Stats.Bytes,
							"db_check": s.DBCheck, "db_full_check": s.DBFullCheck, "format_version": s.Version})
					}
					a.out.JSON(list)
					return nil
				}
				tw := tabwriter.NewWriter(a.out.stdout, 0, 2, 2, ' ', 0)
				if !a.out.quiet {
					fmt.Fprintln(tw, "ID\tTIME\tHOST\tFILES\tSIZE\tDB CHECK\tNOTE")
				}
				for _, s := range snaps {
					note := ""
					if s.Partial {
						note = "partial"
					}
					if !a.out.quiet {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"), s.Host, s.Stats.Files, humanBytes(s.Stats.Bytes), dbCheckNote(s), note)
					}
				}
				tw.Flush()
				a.out.Printf("%d snapshot(s)\n", len(snaps))
				return nil
			})
		},
	}
}

// dbCheckNote says how a snapshot's database was checked: "full", or
// "quick (full 2d ago)" with the age of the last full check.
func dbCheckNote(s *archive.Snapshot) string {
	switch {
	case s.DBCheck == "":
		return "-"
	case s.DBCheck == "full" || s.DBFullCheck == nil:
		return s.DBCheck
	}
	age := s.Time.Sub(*s.DBFullCheck)
	switch {
	case age < time.Hour:
		return "quick (full <1h before)"
	case age < 48*time.Hour:
		return fmt.Sprintf("quick (full %dh before)", int(age.Hours()))
	}
	return fmt.Sprintf("quick (full %dd before)", int(age.Hours()/24))
}
