package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) snapshotsCommand() *cobra.Command {
	var tags []string
	var host string
	var latest int
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots",
		Long: `List the snapshots, oldest first: id, time, host, what they hold (database and
media folder), size, how the database was checked, tags. DB CHECK says
"full", or "quick (full 2d before)" with the age of the last full check, and
names the virtual tables (FTS indexes) that night's check skipped: the quick
check leaves their own integrity check to the full one (FORMAT.md §7.5).
--tag (repeatable: all of them), --host and --latest N select. --json prints
one object, {"message_type":"snapshots","snapshots":[…]}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				all, err := r.Snapshots(ctx)
				if err != nil {
					return err
				}
				var snaps []*archive.Snapshot
				for _, s := range all {
					if host != "" && s.Host != host || !hasTags(s, tags) {
						continue
					}
					snaps = append(snaps, s)
				}
				if latest > 0 && len(snaps) > latest {
					snaps = snaps[len(snaps)-latest:]
				}
				if a.out.json {
					list := make([]map[string]any, 0, len(snaps))
					for _, s := range snaps {
						m := map[string]any{"id": s.ID.String(), "time": s.Time, "host": s.Host, "db": s.DB, "dbs": dbsJSON(s), "media": s.Media,
							"tags": orEmpty(s.Tags), "partial": s.Partial, "parent": s.Parent, "files": s.Stats.Files, "bytes": s.Stats.Bytes,
							"db_check": s.DBCheck, "db_full_check": s.DBFullCheck, "format_version": s.Version}
						if len(s.DBUnchecked) > 0 {
							m["db_unchecked"] = s.DBUnchecked
						}
						if s.RepairedFrom != "" {
							m["repaired_from"], m["dropped"] = s.RepairedFrom, s.Dropped
						}
						list = append(list, m)
					}
					a.out.JSON(map[string]any{"message_type": "snapshots", "snapshots": list})
					return nil
				}
				tw := tabwriter.NewWriter(a.out.stdout, 0, 2, 2, ' ', 0)
				if !a.out.quiet {
					fmt.Fprintln(tw, "ID\tTIME\tHOST\tDATABASE\tMEDIA\tFILES\tSIZE\tDB CHECK\tTAGS\tNOTE")
				}
				for _, s := range snaps {
					var notes []string
					if s.Partial {
						notes = append(notes, "partial")
					}
					if s.RepairedFrom != "" {
						notes = append(notes, fmt.Sprintf("repaired from %.8s (%d left out)", s.RepairedFrom, s.Dropped))
					}
					if !a.out.quiet {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"), s.Host,
							orDash(strings.Join(s.DBPaths(), ", ")), orDash(s.Media), s.Stats.Files, humanBytes(s.Stats.Bytes), dbCheckNote(s), orDash(strings.Join(s.Tags, ",")), strings.Join(notes, "; "))
					}
				}
				tw.Flush()
				a.out.Printf("%d snapshot(s)\n", len(snaps))
				return nil
			})
		},
	}
	cmd.Flags().StringSliceVar(&tags, "tag", nil, "only snapshots with this tag (repeatable: all of them)")
	cmd.Flags().StringVar(&host, "host", "", "only snapshots of this host")
	cmd.Flags().IntVar(&latest, "latest", 0, "only the last N snapshots (after the other selections)")
	return cmd
}

func hasTags(s *archive.Snapshot, want []string) bool {
	for _, w := range want {
		found := false
		for _, t := range s.Tags {
			if t == w {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// dbsJSON lists a snapshot's databases for --json ([] for none), with the
// virtual tables their check skipped (db_unchecked) if there are any.
func dbsJSON(s *archive.Snapshot) []map[string]any {
	out := []map[string]any{}
	for _, d := range s.Databases() {
		m := map[string]any{"path": d.Path, "name": d.Name(), "db_check": d.Check, "db_full_check": d.FullCheck}
		if len(d.Unchecked) > 0 {
			m["db_unchecked"] = d.Unchecked
		}
		out = append(out, m)
	}
	return out
}

// dbCheckNote says how a snapshot's databases were checked: "full", or
// "quick (full 2d before)" with the age of the last full check, and the
// virtual tables the check skipped ("quick (full 2d before; skipped
// message_ftsv2)"); for several databases, one note each, separated by
// commas.
func dbCheckNote(s *archive.Snapshot) string {
	dbs := s.Databases()
	if len(dbs) == 0 {
		return "-"
	}
	var notes []string
	for _, d := range dbs {
		notes = append(notes, dbCheckNoteOne(s.Time, d))
	}
	return strings.Join(notes, ", ")
}

func dbCheckNoteOne(at time.Time, d archive.SnapshotDB) string {
	if d.Check == "" {
		return "-"
	}
	var notes []string
	if d.Check != "full" && d.FullCheck != nil {
		switch age := at.Sub(*d.FullCheck); {
		case age < time.Hour:
			notes = append(notes, "full <1h before")
		case age < 48*time.Hour:
			notes = append(notes, fmt.Sprintf("full %dh before", int(age.Hours())))
		default:
			notes = append(notes, fmt.Sprintf("full %dd before", int(age.Hours()/24)))
		}
	}
	if len(d.Unchecked) > 0 {
		notes = append(notes, "skipped "+strings.Join(d.Unchecked, " "))
	}
	if len(notes) == 0 {
		return d.Check
	}
	return d.Check + " (" + strings.Join(notes, "; ") + ")"
}
