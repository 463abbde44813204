package main

import (
	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
)

func (a *app) migrateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Upgrade the repository to the current format",
		Long: `Upgrade a repository to the current format (version 3: a keyring that
authenticates the key slots and makes key rotation possible; version 2 brought
page-level database backups and content-addressed directory trees). Only the
small config object is rewritten and the keyring written (it lists the key
slots there are now): nothing is re-uploaded, and every existing snapshot
stays readable. Older wabackup releases cannot read the repository afterwards.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepo(ctx, func(r *archive.Repository) error {
				from := r.Config().Version
				var changed bool
				err := a.withLock(ctx, r, true, "migrate", func() error {
					var err error
					changed, err = r.Migrate(ctx)
					return err
				})
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "migrate", "from_version": from, "to_version": r.Config().Version, "changed": changed})
				if changed {
					a.out.Printf("upgraded the repository from format version %d to %d (nothing was re-uploaded)\n", from, r.Config().Version)
				} else {
					a.out.Printf("the repository already has format version %d\n", r.Config().Version)
				}
				return nil
			})
		},
	}
}
