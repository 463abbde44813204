package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/keys"
)

func (a *app) keyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage the keys and passwords that open the repository"}
	var newPwFile, label string
	readNew := func() ([]byte, error) {
		if newPwFile != "" {
			return secret.FromFile(newPwFile)
		}
		if v := os.Getenv("WABACKUP_NEW_PASSWORD_FILE"); v != "" {
			return secret.FromFile(v)
		}
		p, err := secret.Prompt("New password: ", true)
		if errors.Is(err, secret.ErrNoSecret) {
			return nil, errors.New("no terminal to ask for the new password on: use --new-password-file")
		}
		return p, err
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List key slots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withRepo(cmd.Context(), func(r *archive.Repository) error {
				slots, err := r.Slots(cmd.Context())
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(a.out.stdout, 0, 2, 2, ' ', 0)
				if !a.out.json && !a.out.quiet {
					fmt.Fprintln(tw, " ID\tKIND\tEPOCH\tLABEL\tCREATED\tNOTE")
				}
				kr := r.Keyring()
				for _, s := range slots {
					cur := " "
					if s.ID == r.UnlockedWith() {
						cur = "*"
					}
					// A slot object the keyring does not list opens nothing:
					// removed or revoked (its object came back), or added
					// behind wabackup's back.
					listed, epoch, note := true, fmt.Sprint(r.Epoch()), ""
					if kr != nil {
						if _, listed = kr.Slot(s.ID); !listed {
							epoch, note = "-", "not in the keyring: opens nothing"
							if rm, ok := kr.RemovedSlot(s.ID); ok {
								note = fmt.Sprintf("%s on %s, yet its object is back: opens nothing", map[string]string{"removed": "removed", "rotated": "revoked by key rotate"}[rm.Why], rm.Time.Local().Format("2006-01-02"))
							}
						}
					}
					m := map[string]any{"message_type": "key", "id": s.ID, "kind": s.Kind, "label": s.Label, "created": s.Created, "current": cur == "*", "in_keyring": listed}
					if listed {
						m["epoch"] = r.Epoch()
					}
					a.out.JSON(m)
					if !a.out.json && !a.out.quiet {
						fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\n", cur, s.ID[:8], s.Kind, epoch, s.Label, s.Created.Local().Format("2006-01-02 15:04"), note)
					}
				}
				return tw.Flush()
			})
		},
	}
	var recovery bool
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a password (or, with --recovery, a new 64-digit key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withRepoLocked(cmd.Context(), "key add", func(r *archive.Repository) error {
				if label == "" {
					label = hostLabel()
				}
				if recovery {
					k, s, err := r.AddRecoveryKey(cmd.Context(), label)
					if err != nil {
						return err
					}
					f := keys.FormatRecoveryKey(k)
					a.out.JSON(map[string]any{"message_type": "key_added", "id": s.ID, "kind": s.Kind, "key": f})
					if !a.out.json {
						fmt.Fprintf(a.out.stdout, "added key %s. The new 64-digit key:\n\n    %s\n\nKeep it safe: it opens the repository.\n", s.ID[:8], f)
					}
					return nil
				}
				pw, err := readNew()
				if err != nil {
					return err
				}
				s, err := r.AddPassword(cmd.Context(), pw, nil, label)
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "key_added", "id": s.ID, "kind": s.Kind})
				a.out.Printf("added password %s\n", s.ID[:8])
				return nil
			})
		},
	}
	add.Flags().BoolVar(&recovery, "recovery", false, "add a new 64-digit key instead of a password")
	add.Flags().StringVar(&newPwFile, "new-password-file", "", "read the new password from this file")
	add.Flags().StringVar(&label, "label", "", "a note to tell slots apart (default: host name)")
	var force bool
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key slot (never the last one)",
		Long: `Remove the key slot whose id starts with ID (at least 4 hex digits, and
unambiguous). Removing the slot this command opened the repository with, or
the last 64-digit key, asks for confirmation on a terminal and needs --force
otherwise. The last slot is never removed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRepoLocked(cmd.Context(), "key remove", func(r *archive.Repository) error {
				target, slots, err := r.FindSlot(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				var risk []string
				if target.ID == r.UnlockedWith() {
					risk = append(risk, "it is the slot this command opened the repository with")
				}
				if target.Kind == keys.KindRecovery {
					others := 0
					for _, s := range slots {
						if s.Kind == keys.KindRecovery && s.ID != target.ID {
							others++
						}
					}
					if others == 0 {
						risk = append(risk, "it is the repository's last 64-digit key")
					}
				}
				if len(risk) > 0 && !force {
					why := strings.Join(risk, ", and ")
					if !secret.IsTerminal(os.Stdin) || a.out.json {
						return fmt.Errorf("refusing to remove key slot %s without --force: %s", target.ID[:8], why)
					}
					line, err := secret.AskLine(fmt.Sprintf("Key slot %s: %s. Type \"remove\" to remove it: ", target.ID[:8], why))
					if err != nil {
						return err
					}
					if strings.TrimSpace(line) != "remove" {
						return fmt.Errorf("not removed: key slot %s", target.ID[:8])
					}
				}
				s, err := r.RemoveSlot(cmd.Context(), target.ID)
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "key_removed", "id": s.ID, "kind": s.Kind})
				a.out.Printf("removed %s %s\n", s.Kind, s.ID[:8])
				return nil
			})
		},
	}
	remove.Flags().BoolVar(&force, "force", false, "remove without asking, even the slot in use or the last 64-digit key")
	var slotID string
	passwd := &cobra.Command{
		Use:   "passwd",
		Short: "Change the password",
		Long: `Change the password: adds a slot for the new password, then removes the old
password's slot (the one used to open the repository, or --id).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withRepoLocked(ctx, "key passwd", func(r *archive.Repository) error {
				slots, err := r.Slots(ctx)
				if err != nil {
					return err
				}
				old := slotID
				if old == "" {
					for _, s := range slots {
						if s.ID == r.UnlockedWith() && s.Kind == keys.KindPassword {
							old = s.ID
						}
					}
				}
				if old == "" {
					var pws []string
					for _, s := range slots {
						if s.Kind == keys.KindPassword {
							pws = append(pws, s.ID)
						}
					}
					if len(pws) != 1 {
						return fmt.Errorf("there are %d password slots: say which to replace with --id", len(pws))
					}
					old = pws[0]
				}
				pw, err := readNew()
				if err != nil {
					return err
				}
				s, err := r.AddPassword(ctx, pw, nil, hostLabel())
				if err != nil {
					return err
				}
				if _, err := r.RemoveSlot(ctx, old); err != nil {
					return fmt.Errorf("new password added (%s) but the old slot was not removed: %w", s.ID[:8], err)
				}
				a.out.JSON(map[string]any{"message_type": "password_changed", "id": s.ID, "removed": old})
				a.out.Printf("password changed (new slot %s, removed %s)\n", s.ID[:8], old[:min(8, len(old))])
				return nil
			})
		},
	}
	passwd.Flags().StringVar(&newPwFile, "new-password-file", "", "read the new password from this file")
	passwd.Flags().StringVar(&slotID, "id", "", "the password slot to replace")
	cmd.AddCommand(list, add, remove, passwd, a.keyRotateCommand(), a.keyEscrowCommand(), a.keyRecoverCommand(), a.keyVaultPasswdCommand(), a.keyVaultStatusCommand(), a.keyVaultDeleteCommand())
	return cmd
}
