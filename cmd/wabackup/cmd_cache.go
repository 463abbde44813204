package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

// defaultCacheMaxAge is how long a repository's cache may go unused
// before cache --cleanup removes it (restic's default too).
const defaultCacheMaxAge = 30

func (a *app) cacheCommand() *cobra.Command {
	var cleanup bool
	var maxAge int
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Show the local caches, or clean them up",
		Long: `Show the local caches in the cache directory (--cache-dir, default
$XDG_CACHE_HOME/wabackup): for each repository, by its id, when a run last
used it, the index cache's size and the metadata cache's entries and size.
The metadata cache keeps the blobs that describe snapshots (directory
pieces, page maps), encrypted as the store holds them and checked on every
read, so a nightly backup reads none of its parent's description from the
store; it is kept within --cache-size (default 256 MiB per repository),
the least recently used entries going first.

With --cleanup: remove the caches of repositories not used for --max-age
days (default 30), and bring every other metadata cache within
--cache-size. Nothing needs the repository or a key: deleting a cache
only costs the next run the reads that fill it again. The rollback marks
beside the caches (highwater-*.json) are kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := a.cachePath()
			if dir == "" {
				return errors.New("no cache directory: --no-cache is given, or neither --cache-dir, $XDG_CACHE_HOME nor a home directory is set")
			}
			if maxAge < 0 {
				return fmt.Errorf("--max-age %d: want a number of days, 0 or more", maxAge)
			}
			limit, err := a.metaCacheSize()
			if err != nil {
				return err
			}
			caches, err := archive.ListCaches(dir)
			if err != nil {
				return err
			}
			old := func(c archive.CacheInfo) bool {
				return time.Since(c.LastUsed) > time.Duration(maxAge)*24*time.Hour
			}
			removed := []string{}
			var removedBytes int64
			var kept []archive.CacheInfo
			for _, c := range caches {
				if cleanup && old(c) {
					if err := archive.RemoveCache(dir, c.ID); err != nil {
						return err
					}
					removed = append(removed, c.ID)
					removedBytes += c.Bytes
					continue
				}
				if cleanup {
					n, after, err := archive.TrimMetaCache(dir, c.ID, limit)
					if err != nil {
						return err
					}
					if n > 0 {
						removedBytes += c.MetaBytes - after
						c.Bytes -= c.MetaBytes - after
						c.MetaBytes, c.MetaEntries = after, c.MetaEntries-n
					}
				}
				kept = append(kept, c)
			}
			repos := []map[string]any{}
			for _, c := range kept {
				repos = append(repos, map[string]any{"id": c.ID, "path": c.Path, "last_used": c.LastUsed.UTC().Format(time.RFC3339),
					"old": old(c), "bytes": c.Bytes, "index_bytes": c.IndexBytes, "meta_bytes": c.MetaBytes, "meta_entries": c.MetaEntries})
			}
			a.out.JSON(map[string]any{"message_type": "cache", "dir": dir, "cache_size": limit, "max_age_days": maxAge,
				"repositories": repos, "removed": removed, "removed_bytes": removedBytes})
			if a.out.json || a.out.quiet {
				return nil
			}
			a.out.Printf("cache directory %s (metadata cache at most %s per repository)\n", dir, humanBytes(limit))
			if len(kept) == 0 {
				a.out.Printf("no repository caches\n")
			} else {
				a.out.Printf("%-32s  %-10s  %6s  %10s  %10s  %8s  %10s\n", "REPOSITORY", "LAST USED", "AGE", "INDEX", "METADATA", "ENTRIES", "TOTAL")
			}
			nOld := 0
			for _, c := range kept {
				age := fmt.Sprintf("%dd", int(time.Since(c.LastUsed).Hours()/24))
				if old(c) {
					age += "*"
					nOld++
				}
				a.out.Printf("%-32s  %-10s  %6s  %10s  %10s  %8d  %10s\n", c.ID, c.LastUsed.Local().Format("2006-01-02"), age,
					humanBytes(c.IndexBytes), humanBytes(c.MetaBytes), c.MetaEntries, humanBytes(c.Bytes))
			}
			if cleanup {
				a.out.Printf("removed %d cache(s) unused for more than %d days; %s freed\n", len(removed), maxAge, humanBytes(removedBytes))
			} else if nOld > 0 {
				a.out.Printf("* unused for more than %d days: wabackup cache --cleanup removes them\n", maxAge)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "remove the caches of repositories unused for --max-age days and bring the others within --cache-size")
	cmd.Flags().IntVar(&maxAge, "max-age", defaultCacheMaxAge, "with --cleanup: remove caches unused for more than this many days (0: every cache)")
	return cmd
}

// metaCacheSize is --cache-size in bytes (0 if not given).
func (a *app) metaCacheSize() (int64, error) {
	if a.cacheSize == "" {
		return archive.DefaultMetaCacheSize, nil
	}
	n, err := parseByteSize(a.cacheSize)
	if err != nil || n < 1<<20 {
		return 0, fmt.Errorf("--cache-size %q: want a size of 1 MiB or more, such as 256MiB or 2GiB", a.cacheSize)
	}
	return n, nil
}

// parseByteSize reads a size: a number of bytes, or a number with a unit
// (K, M, G, T, with or without "iB"/"B"; powers of 1024).
func parseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KB": 10, "KIB": 10, "M": 20, "MB": 20, "MIB": 20, "G": 30, "GB": 30, "GIB": 30, "T": 40, "TB": 40, "TIB": 40}
	sh, ok := shift[unit]
	if !ok || n > (1<<63-1)>>sh {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n << sh, nil
}
