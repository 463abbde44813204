package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/escrow"
	"github.com/wabackup/wabackup/pkg/keys"
)

func (a *app) keyRotateCommand() *cobra.Command {
	var keyOut, label string
	var force, rewrite, dryRun bool
	var keepIDs, keepFiles []string
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
it), but nothing written after it. --keep ID keeps another password slot
too: its password is asked for (or read from the --keep-password-file given
in the same position).

With --rewrite, every stored object is then re-encrypted under the new key
(streamed, one pack at a time) and the old key is destroyed: it opens
nothing at all. An interrupted --rewrite is finished by running
key rotate --rewrite again (it does not rotate a second time, and skips
what is done).`,
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
					if kr := r.Keyring(); rewrite && kr != nil && kr.Rewrite {
						a.out.Printf("finishing the interrupted rewrite into key epoch %d (no new rotation)\n", r.Epoch())
						return a.rewrite(ctx, r, nil)
					}
					keep, err := a.keepOpeningSlot(ctx, r)
					if err != nil {
						return err
					}
					more, err := a.keepMore(ctx, r, keepIDs, keepFiles)
					if err != nil {
						return err
					}
					keep = append(keep, more...)
					if err := a.confirmRevocations(ctx, r, keep, force, dryRun); err != nil || dryRun {
						return err
					}
					res, err := r.Rotate(ctx, archive.RotateOptions{Keep: keep, NewRecoveryKey: true, Label: label, Rewrite: rewrite})
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
					if !rewrite {
						a.out.JSON(m)
					}
					if !a.out.json {
						var b strings.Builder
						fmt.Fprintf(&b, "rotated to key epoch %d: from now on everything is written under a new master key.\n", res.Epoch)
						for i, s := range res.Kept {
							what := ""
							if i == 0 {
								what = "the one in use; "
							}
							fmt.Fprintf(&b, "kept %s %s (%sits slot is now %s)\n", s.Kind, res.KeptFrom[i].ID[:8], what, s.ID[:8])
						}
						for _, s := range res.Removed {
							fmt.Fprintf(&b, "revoked %s %s (%s)\n", s.Kind, s.ID[:8], s.Label)
						}
						for _, s := range res.Removed {
							if set, err := escrow.ParseRealmSet(s); err == nil && escrow.IsThresholdSlot(s) {
								fmt.Fprintf(&b, "the key escrowed in %s no longer opens the repository: escrow the new key with wabackup key escrow %s --vault-threshold %d (or rotate through the vaults, with --vault, to keep it)\n", set.Describe(), set.Flags(), set.Threshold)
							} else if s.Kind == keys.KindVault && !escrow.IsThresholdSlot(s) {
								fmt.Fprintf(&b, "the key escrowed in vault %s no longer opens the repository: escrow the new key with wabackup key escrow --vault %s (or rotate through the vault, with --vault, to keep it)\n", s.Extra[vaultExtraURL], s.Extra[vaultExtraURL])
							}
						}
						if keyOut == "" {
							fmt.Fprintf(&b, "the new 64-digit key (%s), shown once:\n\n    %s\n\n", res.Recovery.ID[:8], formatted)
						} else {
							fmt.Fprintf(&b, "the new 64-digit key (%s) is in %s\n", res.Recovery.ID[:8], keyOut)
						}
						if !rewrite {
							b.WriteString("Nothing was re-uploaded: data stored before the rotation stays encrypted under the old key (--rewrite re-encrypts it).\n")
						}
						fmt.Fprint(a.out.stdout, b.String())
					}
					if err != nil || !rewrite {
						return err
					}
					return a.rewrite(ctx, r, m)
				})
			})
		},
	}
	cmd.Flags().StringArrayVar(&keepIDs, "keep", nil, "also keep this password slot (at least 4 hex digits of its id; repeatable): its password is asked for")
	cmd.Flags().StringArrayVar(&keepFiles, "keep-password-file", nil, "the password of the --keep slot in the same position, from this file (repeatable)")
	notASetting(cmd, "keep")
	notASetting(cmd, "keep-password-file")
	cmd.Flags().BoolVar(&rewrite, "rewrite", false, "then re-encrypt all stored data under the new key and destroy the old one")
	cmd.Flags().StringVar(&keyOut, "key-out", "", "write the new 64-digit key to this file (mode 0600) instead of showing it")
	cmd.Flags().BoolVar(&force, "force", false, "revoke the other key slots without asking (needed without a terminal), and with --key-out overwrite an existing file")
	cmd.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "only say which slots would be kept and which revoked")
	cmd.Flags().StringVar(&label, "label", "", "a note for the new 64-digit key's slot (default: host name)")
	return cmd
}

// keepOpeningSlot is the slot this process opened the repository with and
// the secret that opened it, for a rotation to keep.
func (a *app) keepOpeningSlot(ctx context.Context, r *archive.Repository) ([]archive.KeepSlot, error) {
	id := r.UnlockedWith()
	secret := a.unlockedWith.SecretFor(r.UnlockedKind())
	if secret == nil {
		return nil, fmt.Errorf("internal error: no secret for key slot %.8s", id)
	}
	// A threshold slot of the earlier form is registered again and kept
	// in the checked form.
	extra, err := a.renewThreshold(ctx, id, secret)
	if err != nil {
		return nil, err
	}
	return []archive.KeepSlot{{ID: id, Secret: secret, Extra: extra}}, nil
}

// rewrite runs Rewrite with a progress bar and reports it; m, if not nil,
// is the key_rotated message to complete.
func (a *app) rewrite(ctx context.Context, r *archive.Repository, m map[string]any) error {
	start := time.Now()
	var bar *progressbar.ProgressBar
	res, err := r.Rewrite(ctx, func(p archive.RewriteProgress) {
		if bar == nil {
			bar = a.out.progressCount("rewrite: packs", "packs", int64(p.TotalPacks))
		}
		if bar != nil {
			bar.Set(p.Packs)
		}
	})
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return fmt.Errorf("re-encrypting under key epoch %d: %w (run wabackup key rotate --rewrite again to go on; what is done is kept)", r.Epoch(), err)
	}
	if m == nil {
		m = map[string]any{"message_type": "key_rotated", "epoch": r.Epoch(), "kept": []string{}, "removed": []string{}}
	}
	m["rewritten"] = true
	m["packs_rewritten"], m["packs_skipped"] = res.Packs, res.PacksSkipped
	m["objects_rewritten"], m["objects_skipped"] = res.Objects, res.ObjectsSkipped
	m["retired_epochs"] = res.Retired
	if res.Retired == nil {
		m["retired_epochs"] = []uint32{}
	}
	m["duration_seconds"] = time.Since(start).Seconds()
	a.out.JSON(m)
	a.out.Printf("re-encrypted %d pack(s) (%s) and %d object(s) under key epoch %d (%d pack(s) and %d object(s) were already) in %s; the old key was destroyed: it opens nothing\n",
		res.Packs, humanBytes(res.Bytes), res.Objects, r.Epoch(), res.PacksSkipped, res.ObjectsSkipped, time.Since(start).Round(time.Millisecond))
	if res.Damaged > 0 {
		a.out.Warnf("%d object(s) in damaged/ (set aside by repair) are left as they were, under the old key: remove them when you no longer need them", res.Damaged)
	}
	return nil
}

// confirmRevocations says which key slots a rotation keeping keep would
// revoke, and asks on a terminal before they are; without a terminal it
// needs force. With dryRun it only says what would happen.
func (a *app) confirmRevocations(ctx context.Context, r *archive.Repository, keep []archive.KeepSlot, force, dryRun bool) error {
	slots, err := r.Slots(ctx)
	if err != nil {
		return err
	}
	kept := map[string]bool{}
	for _, k := range keep {
		kept[k.ID] = true
	}
	kr := r.Keyring()
	var revoked, keptL []string
	for _, s := range slots {
		if kr != nil {
			if _, listed := kr.Slot(s.ID); !listed {
				continue // opens nothing already
			}
		}
		d := fmt.Sprintf("%s %s", s.Kind, s.ID[:8])
		if s.Label != "" {
			d += fmt.Sprintf(" (%s)", s.Label)
		}
		if kept[s.ID] {
			keptL = append(keptL, d)
		} else {
			revoked = append(revoked, d)
		}
	}
	if dryRun {
		a.out.JSON(map[string]any{"message_type": "key_rotate_plan", "keep": orEmpty(keptL), "revoke": orEmpty(revoked), "new_recovery_key": true})
		a.out.Printf("key rotate would keep %s, revoke %s, and make a new 64-digit key (nothing was changed)\n",
			listOrNone(keptL), listOrNone(revoked))
		return nil
	}
	if len(revoked) == 0 || force {
		return nil
	}
	what := fmt.Sprintf("key rotate would revoke %d key slot(s): %s", len(revoked), strings.Join(revoked, ", "))
	if a.out.json {
		return fmt.Errorf("%s: give --force, or --keep the password slots to keep (-n shows what would happen)", what)
	}
	line, err := secret.AskLine(what + ". Type \"rotate\" to go on: ")
	if errors.Is(err, secret.ErrNoSecret) {
		return fmt.Errorf("%s, and there is no terminal to ask on: give --force, or --keep the password slots to keep (-n shows what would happen)", what)
	}
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "rotate" {
		return errors.New("not rotated: nothing was changed")
	}
	return nil
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "nothing"
	}
	return strings.Join(l, ", ")
}

// keepMore are the --keep password slots with their passwords, from
// --keep-password-file in the same position or asked for.
func (a *app) keepMore(ctx context.Context, r *archive.Repository, ids, files []string) ([]archive.KeepSlot, error) {
	if len(files) > len(ids) {
		return nil, fmt.Errorf("%d --keep-password-file for %d --keep", len(files), len(ids))
	}
	var out []archive.KeepSlot
	for i, ref := range ids {
		s, _, err := r.FindSlot(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("--keep %s: %w", ref, err)
		}
		if s.ID == r.UnlockedWith() {
			continue // kept anyway
		}
		if s.Kind != keys.KindPassword {
			return nil, fmt.Errorf("--keep %s: a %s slot cannot be kept (a new 64-digit key replaces the old ones; escrow again for a vault)", ref, s.Kind)
		}
		var pw []byte
		if i < len(files) {
			pw, err = secret.FromFile(files[i])
		} else {
			pw, err = promptSecret(fmt.Sprintf("Password of key slot %s (%s): ", s.ID[:8], s.Label), false)
			if errors.Is(err, secret.ErrNoSecret) {
				err = fmt.Errorf("--keep %s: no terminal to ask for its password on: give --keep-password-file", ref)
			}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, archive.KeepSlot{ID: s.ID, Secret: pw})
	}
	return out, nil
}
