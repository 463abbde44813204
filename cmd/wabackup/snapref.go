package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/internal/settings"
	"github.com/wabackup/wabackup/pkg/archive"
)

// addHostFlag gives a command that takes a snapshot reference the --host
// that picks whose "latest" it means.
func (a *app) addHostFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&a.snapHost, "host", "", "latest means the newest snapshot of this host (default: this machine's, if the repository has any of it)")
}

// findSnapshot resolves a snapshot reference. An id names its snapshot.
// "latest" and "latest~N" count only the snapshots of one host — --host,
// else this machine if the repository holds any of it — and, where
// databases or a media folder are configured (config file or WABACKUP_DB
// / WABACKUP_MEDIA), of those sources: on a repository two machines
// share, latest is never the other machine's chat by surprise (README,
// "Snapshots"). Which one was chosen, and why, goes to stderr.
func (a *app) findSnapshot(ctx context.Context, r *archive.Repository, ref string) (*archive.Snapshot, error) {
	if !archive.IsLatestRef(ref) {
		return r.FindSnapshot(ctx, ref)
	}
	var all []*archive.Snapshot
	var host, why string
	dbs, media := a.configuredSources()
	snap, err := r.FindSnapshotWhere(ctx, ref, func(snaps []*archive.Snapshot) func(*archive.Snapshot) bool {
		all = snaps
		host = a.snapHost
		if host != "" {
			why = fmt.Sprintf("of host %q (--host)", host)
		} else if h, _ := os.Hostname(); h != "" && slices.ContainsFunc(all, func(s *archive.Snapshot) bool { return s.Host == h }) {
			host, why = h, fmt.Sprintf("of this host (%s)", h)
		}
		if len(dbs) > 0 || media != "" {
			why = strings.TrimSpace(why + " of the configured sources")
		}
		return func(s *archive.Snapshot) bool {
			return (host == "" || s.Host == host) &&
				(len(dbs) == 0 || slices.Equal(s.DBPaths(), dbs)) &&
				(media == "" || s.Media == media)
		}
	})
	if errors.Is(err, archive.ErrNoSnapshot) && len(all) > 0 {
		hosts := map[string]bool{}
		for _, s := range all {
			hosts[s.Host] = true
		}
		return nil, fmt.Errorf("no snapshot %q %s: the repository holds %d snapshot(s), of host(s) %s: give --host NAME, or a snapshot id (wabackup snapshots lists them)",
			ref, why, len(all), strings.Join(slices.Sorted(maps.Keys(hosts)), ", "))
	}
	if err != nil {
		return nil, err
	}
	if why == "" {
		why = "of any host: none is of this one"
	}
	if !a.out.quiet && !a.out.json {
		fmt.Fprintf(a.out.stderr, "%s is snapshot %s of %s (host %s): the newest %s\n", ref, snap.ID.Short(), snap.Time.Local().Format("2006-01-02 15:04"), snap.Host, why)
	}
	return snap, nil
}

// configuredSources are the databases (absolute, in path order) and the
// media folder the environment or the config file name for backups.
func (a *app) configuredSources() (dbs []string, media string) {
	get := func(name string) []string {
		v, ok := os.LookupEnv(settings.EnvName(name))
		if !ok {
			v, ok = a.settingsFile[name]
			v = strings.ReplaceAll(v, "\x00", ",")
		}
		if !ok {
			return nil
		}
		var out []string
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				if abs, err := filepath.Abs(settings.ExpandHome(p)); err == nil {
					p = abs
				}
				out = append(out, p)
			}
		}
		return out
	}
	dbs = get("db")
	slices.Sort(dbs)
	if m := get("media"); len(m) > 0 {
		media = m[0]
	}
	return dbs, media
}

// snapshotCommands take snapshot references ("latest", ids).
var snapshotCommands = []string{"restore", "ls", "find", "dump", "stats", "sql", "diff", "check", "repair"}

// addHostFlags gives each of snapshotCommands under root --host.
func (a *app) addHostFlags(root *cobra.Command) {
	for _, c := range root.Commands() {
		if slices.Contains(snapshotCommands, c.Name()) && c.Flags().Lookup("host") == nil {
			a.addHostFlag(c)
		}
	}
}

// inSnapshot turns a path (or a glob) written as the source path the
// snapshot shows — an absolute path under its media folder, or one of its
// databases — into the path it has inside the snapshot (Media/…,
// msgstore.db), so that `ls`, `dump`, `find` and `restore --include`
// take the paths `snapshots` prints (issue 26, item 9). Any other path is
// returned as it is.
func inSnapshot(s *archive.Snapshot, p string) string {
	if !strings.HasPrefix(p, "/") {
		return p
	}
	clean := strings.TrimRight(p, "/")
	for _, db := range s.DBPaths() {
		if clean == db {
			return filepath.Base(db)
		}
	}
	if m := s.Media; m != "" {
		if clean == m {
			return filepath.Base(m)
		}
		if rest, ok := strings.CutPrefix(clean, m+"/"); ok {
			return filepath.Base(m) + "/" + rest
		}
	}
	return p
}
