package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			}
			a.out.JSON(map[string]any{"message_type": "version", "version": v, "go": runtime.Version(), "format_version": archive.FormatVersion, "platform": runtime.GOOS + "/" + runtime.GOARCH})
			if !a.out.json {
				fmt.Fprintf(a.out.stdout, "wabackup %s (repository format %d) %s %s/%s\n", v, archive.FormatVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			}
			return nil
		},
	}
}

func (a *app) unlockCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "unlock",
		Short: "Remove stale locks (or all locks with --remove-all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withRepo(cmd.Context(), func(r *archive.Repository) error {
				n, err := r.RemoveLocks(cmd.Context(), all)
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "unlock", "removed": n})
				a.out.Printf("removed %d lock(s)\n", n)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&all, "remove-all", false, "remove every lock, not only stale ones")
	return cmd
}
