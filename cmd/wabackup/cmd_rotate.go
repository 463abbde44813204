package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/keys"
)

func (a *app) keyRotateCommand() *cobra.Command {
	var keyOut, label string
	var force bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Start a new key epoch: revoke every key and password but the one in use",
		Long: `Start a new key epoch: a new master key, under which everything written from
now on is encrypted. The key or password this command opened the repository
with is kept (re-made for the new epoch), a new 64-digit key is made and shown
once (or written to --key-out), and every other key slot stops opening the
repository — even if the store puts its object back. Snapshots made before
stay readable through the new keys. Nothing is re-uploaded: whoever held an
old key can still decrypt the data stored before the rotation (if they copied
it), but nothing written after it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if keyOut != "" && !force {
				if err := refuseExisting(keyOut); err != nil {
					return err
				}
			}
			if label == "" {
				label = hostLabel()
			}
			return a.withRepo(ctx, func(r *archive.Repository) error {
				return a.withLock(ctx, r, true, "key rotate", func() error {
					keep, err := a.keepOpeningSlot(r)
					if err != nil {
						return err
					}
					res, err := r.Rotate(ctx, archive.RotateOptions{Keep: keep, NewRecoveryKey: true, Label: label})
					if res == nil && err != nil {
						return err
					}
					formatted := keys.FormatRecoveryKey(*res.RecoveryKey)
					if keyOut != "" {
						if werr := writeKeyFile(keyOut, formatted, force); werr != nil {
							return fmt.Errorf("writing the new key to %s: %w (the rotation is done; the new 64-digit key is %s)", keyOut, werr, formatted)
						}
					}
					var kept, removed []string
					for _, s := range res.Kept {
						kept = append(kept, s.ID)
					}
					if len(res.Removed) == 0 {
						removed = []string{}
					}
					for _, s := range res.Removed {
						removed = append(removed, s.ID)
					}
					m := map[string]any{"message_type": "key_rotated", "epoch": res.Epoch, "kept": orEmpty(kept), "recovery_id": res.Recovery.ID, "removed": orEmpty(removed), "rewritten": false}
					if keyOut == "" {
						m["key"] = formatted
					}
					a.out.JSON(m)
					if !a.out.json {
						var b strings.Builder
						fmt.Fprintf(&b, "rotated to key epoch %d: from now on everything is written under a new master key.\n", res.Epoch)
						for i, s := range res.Kept {
							fmt.Fprintf(&b, "kept %s %s (the one in use; its slot is now %s)\n", s.Kind, res.KeptFrom[i].ID[:8], s.ID[:8])
						}
						for _, s := range res.Removed {
							fmt.Fprintf(&b, "revoked %s %s (%s)\n", s.Kind, s.ID[:8], s.Label)
						}
						if keyOut == "" {
							fmt.Fprintf(&b, "the new 64-digit key (%s), shown once:\n\n    %s\n\n", res.Recovery.ID[:8], formatted)
						} else {
							fmt.Fprintf(&b, "the new 64-digit key (%s) is in %s\n", res.Recovery.ID[:8], keyOut)
						}
						b.WriteString("Nothing was re-uploaded: data stored before the rotation stays encrypted under the old key.\n")
						fmt.Fprint(a.out.stdout, b.String())
					}
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&keyOut, "key-out", "", "write the new 64-digit key to this file (mode 0600) instead of showing it")
	cmd.Flags().BoolVar(&force, "force", false, "with --key-out: overwrite an existing file")
	cmd.Flags().StringVar(&label, "label", "", "a note for the new 64-digit key's slot (default: host name)")
	return cmd
}

// keepOpeningSlot is the slot this process opened the repository with and
// the secret that opened it, for a rotation to keep.
func (a *app) keepOpeningSlot(r *archive.Repository) ([]archive.KeepSlot, error) {
	id := r.UnlockedWith()
	c := a.unlockedWith
	var secret []byte
	switch r.UnlockedKind() {
	case keys.KindRecovery:
		if c.RecoveryKey != nil {
			secret = c.RecoveryKey[:]
		}
	case keys.KindPassword:
		secret = c.Password
	case keys.KindVault:
		if c.VaultSecret != nil {
			secret = c.VaultSecret[:]
		}
	}
	if secret == nil {
		return nil, fmt.Errorf("internal error: no secret for key slot %.8s", id)
	}
	return []archive.KeepSlot{{ID: id, Secret: secret}}, nil
}
