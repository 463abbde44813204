package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/gather"
)

// tempDirOrDefault is --temp-dir, or the system's.
func (a *app) tempDirOrDefault() string {
	if a.tempDir != "" {
		return a.tempDir
	}
	return os.TempDir()
}

// nodeKind names a node's type for people and JSON.
func nodeKind(n *archive.Node) string {
	switch n.Type {
	case archive.TypeDir:
		return "dir"
	case archive.TypeSymlink:
		return "symlink"
	case archive.TypeDB:
		return "database"
	}
	return "file"
}

func nodeJSON(snap *archive.Snapshot, n *archive.Node) map[string]any {
	m := map[string]any{"message_type": "node", "snapshot_id": snap.ID.String(), "path": n.Path, "type": nodeKind(n),
		"mode": fmt.Sprintf("%04o", n.Mode), "size": n.Size, "mtime": n.ModTime().UTC().Format(time.RFC3339Nano)}
	if n.Target != "" {
		m["target"] = n.Target
	}
	return m
}

func modeString(n *archive.Node) string {
	m := n.FileMode()
	switch n.Type {
	case archive.TypeDir:
		m |= fs.ModeDir
	case archive.TypeSymlink:
		m |= fs.ModeSymlink
	}
	return m.String()
}

func (a *app) lsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ls SNAPSHOT [PATH]",
		Short: "List what a snapshot holds (below PATH)",
		Long: `List the files, directories and databases of a snapshot (an id prefix or
latest), below PATH if given: mode, size, modification time and path, as ls -l
does. --json prints one object per entry.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				snap, err := a.findSnapshot(ctx, r, args[0])
				if err != nil {
					return err
				}
				dir := ""
				if len(args) == 2 {
					dir = strings.Trim(inSnapshot(snap, args[1]), "/")
				}
				found := dir == ""
				err = r.Walk(ctx, snap, func(n *archive.Node) error {
					if dir != "" && n.Path != dir && !strings.HasPrefix(n.Path, dir+"/") {
						return nil
					}
					found = true
					if a.out.json {
						a.out.JSON(nodeJSON(snap, n))
						return nil
					}
					name := n.Path
					if n.Type == archive.TypeSymlink {
						name += " -> " + n.Target
					}
					if n.Type == archive.TypeDB {
						name += "  (database)"
					}
					fmt.Fprintf(a.out.stdout, "%s %12d %s %s\n", modeString(n), n.Size, n.ModTime().Format("2006-01-02 15:04:05"), name)
					return nil
				})
				if err != nil {
					return err
				}
				if !found {
					return fmt.Errorf("%q is not in snapshot %s", dir, snap.ID.Short())
				}
				return nil
			})
		},
	}
}

func (a *app) findCommand() *cobra.Command {
	var snapRefs []string
	cmd := &cobra.Command{
		Use:   "find PATTERN",
		Short: "Find files in the snapshots by name",
		Long: `Find the files, directories and databases whose name matches PATTERN (a glob:
*, ?, [...]) in every snapshot, or in those given with --snapshot. A pattern
with a / is matched against the whole path instead of the name.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pat := args[0]
			if _, err := path.Match(pat, ""); err != nil {
				return fmt.Errorf("pattern %q: %v", pat, err)
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var snaps []*archive.Snapshot
				if len(snapRefs) == 0 {
					var err error
					if snaps, err = r.Snapshots(ctx); err != nil {
						return err
					}
				}
				for _, ref := range snapRefs {
					s, err := a.findSnapshot(ctx, r, ref)
					if err != nil {
						return err
					}
					snaps = append(snaps, s)
				}
				matches := 0
				for _, s := range snaps {
					pat := inSnapshot(s, pat)
					err := r.Walk(ctx, s, func(n *archive.Node) error {
						subject := path.Base(n.Path)
						if strings.Contains(pat, "/") {
							subject = n.Path
						}
						if ok, _ := path.Match(pat, subject); !ok {
							return nil
						}
						matches++
						if a.out.json {
							a.out.JSON(nodeJSON(s, n))
						} else {
							fmt.Fprintf(a.out.stdout, "%s  %s  %10s  %s\n", s.ID.Short(), n.ModTime().Format("2006-01-02 15:04"), humanBytes(n.Size), n.Path)
						}
						return nil
					})
					if err != nil {
						return fmt.Errorf("snapshot %s: %w", s.ID.Short(), err)
					}
				}
				a.out.JSON(map[string]any{"message_type": "find_summary", "matches": matches, "snapshots": len(snaps)})
				if !a.out.json {
					fmt.Fprintf(a.out.stderr, "%d match(es) in %d snapshot(s)\n", matches, len(snaps))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringSliceVar(&snapRefs, "snapshot", nil, "look only in this snapshot (repeatable)")
	return cmd
}

func (a *app) dumpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "dump SNAPSHOT PATH",
		Short: "Write a file, database or folder of a snapshot to standard output",
		Long: `Write what a snapshot holds at PATH to standard output without restoring it: a
file's contents, the chat database reassembled page by page, or a directory
(PATH / for everything) as a tar stream. Every chunk is verified first.

    wabackup dump latest msgstore.db > msgstore.db
    wabackup dump latest 'Media/WhatsApp Voice Notes' | tar tv`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				snap, err := a.findSnapshot(ctx, r, args[0])
				if err != nil {
					return err
				}
				return r.Dump(ctx, snap, inSnapshot(snap, args[1]), a.out.stdout)
			})
		},
	}
}

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats [SNAPSHOT...]",
		Short: "How much the snapshots hold, and how much that takes in the repository",
		Long: `Count, over the given snapshots (default: all), as restic's restore-size and
raw-data modes do:

  files          files and databases, once per snapshot
  restore size   what restoring every one of them would write
  raw data       the distinct data they reference, uncompressed: each
                 distinct file chunk, each distinct database page (stored
                 once, however many snapshots and files hold it)
  stored         the size in the repository of the chunks and page groups
                 they reference (compressed and encrypted; a page group
                 counts whole, with the pages later nights replaced)
  deduplication  restore size / raw data, never below 1.00x: how many times
                 each byte of raw data is restored`,
		Example: `  wabackup stats
  wabackup stats latest          # one snapshot: 1.00x unless it holds the same data twice
  wabackup stats --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				var snaps []*archive.Snapshot
				if len(args) == 0 {
					var err error
					if snaps, err = r.Snapshots(ctx); err != nil {
						return err
					}
				}
				for _, ref := range args {
					s, err := a.findSnapshot(ctx, r, ref)
					if err != nil {
						return err
					}
					snaps = append(snaps, s)
				}
				st, err := r.Stats(ctx, snaps)
				if err != nil {
					return err
				}
				ratio := 0.0
				if st.RawSize > 0 {
					ratio = float64(st.RestoreSize) / float64(st.RawSize)
				}
				a.out.JSON(map[string]any{"message_type": "stats", "snapshots": st.Snapshots, "files": st.Files, "restore_size": st.RestoreSize,
					"chunks": st.Chunks, "raw_size": st.RawSize, "stored_size": st.StoredSize, "dedup_ratio": ratio})
				a.out.Printf("snapshots:     %d\nfiles:         %d\nrestore size:  %s\nraw data:      %s in %d chunks (stored: %s)\ndeduplication: %.2fx\n",
					st.Snapshots, st.Files, humanBytes(st.RestoreSize), humanBytes(st.RawSize), st.Chunks, humanBytes(st.StoredSize), ratio)
				return nil
			})
		},
	}
}

func (a *app) sqlCommand() *cobra.Command {
	var dbName string
	cmd := &cobra.Command{
		Use:   "sql SNAPSHOT QUERY",
		Short: "Run a read-only SQL query on a snapshot's chat database",
		Long: `Run one SQL query on the chat database a snapshot holds, without restoring it:
the database is rebuilt (every page verified) into a temporary file, opened
read-only, and removed afterwards. Prints a table, or with --json one
{"message_type":"row", column: value, …} object per row.

    wabackup sql latest "SELECT count(*) FROM message"
    wabackup sql 3f2a81c0 "SELECT text_data FROM message WHERE text_data LIKE '%passport%'"
    wabackup sql latest --db wa.db "SELECT count(*) FROM wa_contacts"

A snapshot of several databases is queried on its first (in path order)
unless --db names another.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				snap, err := a.findSnapshotWithDB(ctx, r, args[0], "querying")
				if err != nil {
					return err
				}
				path, done, err := r.StoredDBNamed(ctx, snap, dbName, a.tempDirOrDefault())
				if err != nil {
					return err
				}
				defer done()
				var names []string
				tw := tabwriter.NewWriter(a.out.stdout, 0, 2, 2, ' ', 0)
				rowsN := 0
				err = gather.QueryDB(ctx, path, args[1], func(cols []string) error {
					names = cols
					if !a.out.json {
						fmt.Fprintln(tw, strings.Join(cols, "\t"))
					}
					return nil
				}, func(vals []any) error {
					rowsN++
					if a.out.json {
						m := map[string]any{"message_type": "row"}
						for i, v := range vals {
							if b, ok := v.([]byte); ok {
								v = string(b)
							}
							m[names[i]] = v
						}
						a.out.JSON(m)
						return nil
					}
					cells := make([]string, len(vals))
					for i, v := range vals {
						switch x := v.(type) {
						case nil:
							cells[i] = "NULL"
						case []byte:
							cells[i] = string(x)
						default:
							cells[i] = fmt.Sprint(x)
						}
						cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
					}
					fmt.Fprintln(tw, strings.Join(cells, "\t"))
					return nil
				})
				tw.Flush()
				if err != nil {
					return err
				}
				if !a.out.json {
					fmt.Fprintf(a.out.stderr, "%d row(s) from snapshot %s\n", rowsN, snap.ID.Short())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&dbName, "db", "", "the database to query, by its name (wa.db) or source path, when the snapshot holds several")
	notASetting(cmd, "db")
	return cmd
}

func (a *app) diffCommand() *cobra.Command {
	var noRows bool
	cmd := &cobra.Command{
		Use:   "diff SNAPSHOT1 SNAPSHOT2",
		Short: "What changed between two snapshots",
		Long: `List what was added (+), removed (-) and changed (M) from SNAPSHOT1 to
SNAPSHOT2; for the chat database, how many pages changed and, per table, the
rows before and after and the rows added and removed. Counting rows rebuilds
both versions of the database into temporary files (in --temp-dir; removed
afterwards); --no-rows skips it. Rows are matched by rowid; for a table
without rowids, or a virtual one such as the full-text index, added and
removed are the net change of the count (marked ~). --json prints one
{"message_type":"change", …} object per path, then a summary.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				s1, err := a.findSnapshot(ctx, r, args[0])
				if err != nil {
					return err
				}
				s2, err := a.findSnapshot(ctx, r, args[1])
				if err != nil {
					return err
				}
				counts := map[string]int{}
				err = r.Diff(ctx, s1, s2, func(c archive.Change) error {
					counts[c.Kind]++
					var tables []archive.TableRows
					if !noRows && (isDB(c.Old) || isDB(c.New)) {
						var err error
						if tables, err = r.DiffRows(ctx, dbOrNil(c.Old), dbOrNil(c.New), a.tempDirOrDefault()); err != nil {
							return fmt.Errorf("%s: counting rows: %w", c.Path, err)
						}
					}
					if a.out.json {
						m := map[string]any{"message_type": "change", "path": c.Path, "change": c.Kind}
						if c.New != nil {
							m["type"], m["size"] = nodeKind(c.New), c.New.Size
						} else {
							m["type"], m["size"] = nodeKind(c.Old), c.Old.Size
						}
						if c.PagesChanged > 0 {
							m["pages_changed"] = c.PagesChanged
						}
						if tables != nil {
							m["tables"] = tablesJSON(tables)
						}
						a.out.JSON(m)
						return nil
					}
					mark := map[string]string{"added": "+", "removed": "-", "changed": "M"}[c.Kind]
					extra := ""
					if c.PagesChanged > 0 {
						extra = fmt.Sprintf("  (%d pages changed)", c.PagesChanged)
					}
					fmt.Fprintf(a.out.stdout, "%s  %s%s\n", mark, c.Path, extra)
					printTableRows(a.out.stdout, tables)
					return nil
				})
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "diff_summary", "added": counts["added"], "removed": counts["removed"], "changed": counts["changed"]})
				if !a.out.json {
					fmt.Fprintf(a.out.stderr, "%s → %s: %d added, %d removed, %d changed\n", s1.ID.Short(), s2.ID.Short(), counts["added"], counts["removed"], counts["changed"])
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&noRows, "no-rows", false, "do not count the database's rows per table (which rebuilds both versions)")
	return cmd
}

func isDB(n *archive.Node) bool { return n != nil && n.Type == archive.TypeDB }

// dbOrNil is n if it is a database (the other side of a change may be a
// file of the same name).
func dbOrNil(n *archive.Node) *archive.Node {
	if isDB(n) {
		return n
	}
	return nil
}

func tablesJSON(tables []archive.TableRows) []map[string]any {
	out := []map[string]any{}
	for _, t := range tables {
		m := map[string]any{"table": t.Name, "before": t.Before, "after": t.After, "added": t.Added, "removed": t.Removed, "by_rowid": t.ByRowid}
		if t.Module != "" {
			m["module"] = t.Module
		}
		out = append(out, m)
	}
	return out
}

// printTableRows prints diff's table of rows per table under the
// database's line: names left, counts right-aligned, and ~ before the
// net counts of the tables not matched by rowid.
func printTableRows(w io.Writer, tables []archive.TableRows) {
	if len(tables) == 0 {
		return
	}
	rows := [][]string{{"TABLE", "BEFORE", "AFTER", "ADDED", "REMOVED"}}
	for _, t := range tables {
		name := t.Name
		if t.Module != "" {
			name += " (" + t.Module + ")"
		}
		net := "~"
		if t.ByRowid {
			net = ""
		}
		rows = append(rows, []string{name, strconv.FormatInt(t.Before, 10), strconv.FormatInt(t.After, 10),
			net + strconv.FormatInt(t.Added, 10), net + strconv.FormatInt(t.Removed, 10)})
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		fmt.Fprintf(w, "     %s%s", r[0], strings.Repeat(" ", width[0]-utf8.RuneCountInString(r[0])))
		for i, c := range r[1:] {
			fmt.Fprintf(w, "  %*s", width[i+1], c)
		}
		fmt.Fprintln(w)
	}
}
