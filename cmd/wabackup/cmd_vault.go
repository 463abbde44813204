package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/escrow"
	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// Keys of a vault slot's extra data (stored in the clear in the slot).
const (
	vaultExtraURL         = "vault_url"
	vaultExtraFingerprint = "vault_fingerprint"
)

// vaultClient returns a client for --vault, pinned to --vault-fingerprint
// if given, else to slotPin (what the repository's vault slot records).
// A slot that names another fingerprint than --vault-fingerprint is an
// error: its key was escrowed in another vault, or it was altered.
func (a *app) vaultClient(slotPin string) (*vaultclient.Client, error) {
	opt := vaultclient.Options{CACertFile: a.vaultCACert, Pin: slotPin}
	if a.vaultFP != "" {
		fp, err := escrow.ParseFingerprint(a.vaultFP)
		if err != nil {
			return nil, err
		}
		if slotPin != "" && slotPin != fp {
			return nil, fmt.Errorf("the repository's vault slot for %s records vault fingerprint %s, not %s (--vault-fingerprint): the slot belongs to another vault or was altered", a.vaultURL, slotPin, fp)
		}
		opt.Pin, opt.PinSource = fp, "--vault-fingerprint"
	}
	return vaultclient.New(a.vaultURL, opt)
}

// noVaultSlotError: the repository has no vault slot for --vault.
type noVaultSlotError struct{ msg string }

func (e *noVaultSlotError) Error() string { return e.msg }

// vaultPassword reads the vault password: --password-file,
// --password-command, WABACKUP_PASSWORD or a prompt (twice if confirm).
func (a *app) vaultPassword(confirm bool, file string) ([]byte, error) {
	src := secret.Source{File: a.passwordFile, Command: a.passwordCommand, Env: "WABACKUP_PASSWORD"}
	if file != "" {
		src = secret.Source{File: file}
	}
	if s, ok, err := src.Read(); ok {
		if err == nil && len(s) == 0 {
			err = errors.New("the vault password is empty")
		}
		return s, err
	}
	p, err := promptSecret("Vault password: ", confirm)
	if errors.Is(err, secret.ErrNoSecret) {
		return nil, errors.New("no terminal to ask for the vault password on: use --password-file or --password-command")
	}
	if err == nil && looksLikeKey(string(p)) {
		// Never a vault guess: a 64-digit key opens the repository
		// itself, and a mistyped one is a format error.
		if _, kerr := keys.ParseRecoveryKey(string(p)); kerr != nil {
			return nil, fmt.Errorf("the 64-digit key typed: %w (it was not sent to the vault as a password)", kerr)
		}
		return nil, fmt.Errorf("%w: that is a 64-digit key, not the vault password (it was not sent to the vault): open the repository with it without --vault, or with --key-file", keys.ErrMalformedKey)
	}
	return p, err
}

// escrow makes a fresh vault secret, escrows it in the vault under pw and
// adds a vault slot for it to the unlocked repository.
func (a *app) escrow(ctx context.Context, r *archive.Repository, pw []byte) (*keys.Slot, error) {
	urls, fps, err := a.vaultSetFlags()
	if err != nil {
		return nil, err
	}
	if len(urls) > 1 {
		return a.escrowThreshold(ctx, r, pw, urls, fps)
	}
	if a.vaultThreshold > 1 {
		return nil, fmt.Errorf("--vault-threshold %d with one --vault: give as many --vault as the key is to be spread over", a.vaultThreshold)
	}
	var sec keys.Key
	if _, err := rand.Read(sec[:]); err != nil {
		return nil, err
	}
	c, err := a.vaultClient("")
	if err != nil {
		return nil, err
	}
	name := a.vaultName
	if name == "" {
		name = api.DefaultName
	}
	fp, limit, err := c.Register(ctx, api.CredentialID(r.Config().ID, name), pw, sec[:], 0)
	if err != nil {
		return nil, err
	}
	s, err := r.AddVaultSlot(ctx, sec, "vault "+c.URL(), map[string]string{
		vaultExtraURL: c.URL(), vaultExtraFingerprint: fp, escrow.ExtraName: name,
	})
	if err != nil {
		return nil, fmt.Errorf("the key was escrowed in the vault but the repository's vault slot was not written: %w", err)
	}
	a.out.JSON(map[string]any{"message_type": "vault_escrowed", "id": s.ID, "vault": c.URL(), "fingerprint": fp, "name": name, "guesses": limit})
	a.out.Printf("escrowed the key in vault %s (fingerprint %s, %d wrong guesses allowed)\n", c.URL(), fp, limit)
	return s, nil
}

// vaultCredentials recovers the repository's vault secret from --vault
// with the password. The repository's vault slot for this vault supplies
// the pinned fingerprint and the credential name.
func (a *app) vaultCredentials(ctx context.Context, r *archive.Repository) (archive.Credentials, error) {
	var cred archive.Credentials
	slots, err := r.Slots(ctx)
	if err != nil {
		return cred, err
	}
	chosen, rc, err := a.chooseVaultSlot(ctx, r.Config().ID, slots)
	if err != nil {
		return cred, err
	}
	if rc != nil {
		return a.thresholdCredentials(ctx, rc)
	}
	name := escrow.SlotName(chosen)
	c, err := a.vaultClient(chosen.Extra[vaultExtraFingerprint])
	if err != nil {
		return cred, err
	}
	if _, err := c.Info(ctx); err != nil {
		return cred, err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return cred, err
	}
	sec, err := c.Recover(ctx, api.CredentialID(r.Config().ID, name), pw)
	if err != nil {
		return cred, err
	}
	if len(sec) != keys.KeySize {
		return cred, fmt.Errorf("the vault returned a %d-byte secret, want %d", len(sec), keys.KeySize)
	}
	var k keys.Key
	copy(k[:], sec)
	// The slot that named the vault must open with what it gave back, its
	// fields bound (or another vault slot must: a newer escrow under the
	// same name); otherwise what the slot says was altered.
	var opens *keys.Slot
	for _, s := range slots {
		if s.Kind == keys.KindVault && !escrow.IsThresholdSlot(s) {
			if _, err := s.Unwrap(k[:]); err == nil && (opens == nil || s.ExtraAuthentic()) {
				opens = s
			}
		}
	}
	switch {
	case opens == nil:
		return cred, &escrow.UntrustedSlotError{SlotID: chosen.ID, Vaults: "vault " + c.URL()}
	case !opens.ExtraAuthentic():
		a.out.Warnf("vault slot %.8s was written before its vault's address and fingerprint were bound to it, so anyone who can write the repository could have changed them: run wabackup key rotate --vault %s to write it anew", opens.ID, c.URL())
	}
	cred.VaultSecret = &k
	a.vaultUsed = "vault " + c.URL()
	return cred, nil
}

func (a *app) keyEscrowCommand() *cobra.Command {
	var newPwFile string
	cmd := &cobra.Command{
		Use:   "escrow --vault URL",
		Short: "Escrow the key in a key vault under a password",
		Long: `Escrow a fresh secret that opens the repository in the key vault at --vault,
protected by a password with OPAQUE: the vault never learns the password,
allows a limited number of wrong guesses and then destroys the secret.
The new password comes from --new-password-file or is asked for twice.

With several --vault the secret is spread over all of them instead
(threshold escrow, docs/VAULT.md): any --vault-threshold of them (default:
the smallest majority) give it back, fewer learn nothing that tests the
password, and each counts wrong guesses on its own. Every vault must
answer; --vault-fingerprint, if given, once per --vault in the same order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, _, err := a.vaultSetFlags(); err != nil {
				return err
			}
			ctx := cmd.Context()
			var r *archive.Repository
			// Open with the key or password, not the vault.
			if err := a.withoutVault(func() (err error) {
				r, err = a.openRepo(ctx)
				return err
			}); err != nil {
				return err
			}
			defer r.Close()
			pw, err := a.vaultPassword(true, newPwFile)
			if err != nil {
				return err
			}
			return a.withLock(ctx, r, true, "key escrow", func() error {
				_, err := a.escrow(ctx, r, pw)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&newPwFile, "new-password-file", "", "read the vault password from this file")
	return cmd
}

func (a *app) keyRecoverCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recover --vault URL",
		Short: "Open the repository with the key vault and print a new 64-digit key",
		Long: `Recover the repository's secret from the key vault at --vault with the
password (a new machine needs only the repository, the vault and the
password), then add and print a new 64-digit key. For a key escrowed
across several vaults, one of their addresses is enough: the repository's
vault slot names the others, and any threshold of them will do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !a.viaVault() {
				return errors.New("give --vault URL")
			}
			ctx := cmd.Context()
			return a.withRepoLocked(ctx, "key recover", func(r *archive.Repository) error {
				k, s, err := r.AddRecoveryKey(ctx, hostLabel())
				if err != nil {
					return err
				}
				f := keys.FormatRecoveryKey(k)
				a.out.JSON(map[string]any{"message_type": "key_added", "id": s.ID, "kind": s.Kind, "key": f})
				if !a.out.json {
					fmt.Fprintf(a.out.stdout, "recovered through %s. A new 64-digit key (slot %s):\n\n    %s\n\nKeep it safe: it opens the repository.\n", a.vaultUsed, s.ID[:8], f)
				}
				return nil
			})
		},
	}
	return cmd
}

// vaultSlot picks the repository's vault slot that --vault (and
// --vault-name) name: the one recording this URL or else the one
// recording the fingerprint of the vault at this URL (the same vault may
// be reached under another address; --vault-fingerprint, if given, must
// match what the vault presents). Of several for the same vault and name
// it takes the newest. It fails (with a *noVaultSlotError) if no slot
// fits, or if the vault's slots name several keys and --vault-name does
// not pick one.
func (a *app) vaultSlot(ctx context.Context, slots []*keys.Slot) (*keys.Slot, error) {
	var byURL, vaultSlots []*keys.Slot
	for _, s := range slots {
		if s.Kind != keys.KindVault || escrow.IsThresholdSlot(s) || (a.vaultName != "" && escrow.SlotName(s) != a.vaultName) {
			continue
		}
		vaultSlots = append(vaultSlots, s)
		if strings.TrimRight(s.Extra[vaultExtraURL], "/") == strings.TrimRight(a.vaultURL, "/") {
			byURL = append(byURL, s)
		}
	}
	if len(vaultSlots) == 0 {
		return nil, &noVaultSlotError{"the repository has no vault key slot, so it does not open through a vault (the key was never escrowed, or was deleted with key vault-delete): use the 64-digit key or a password, or escrow the key with wabackup key escrow --vault URL"}
	}
	if len(byURL) == 0 {
		// Another address of a vault a slot names? Only the vault's own
		// key says so.
		c, err := a.vaultClient("")
		if err != nil {
			return nil, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		for _, s := range vaultSlots {
			if s.Extra[vaultExtraFingerprint] == info.Fingerprint {
				byURL = append(byURL, s)
			}
		}
	}
	if len(byURL) == 0 {
		var l []string
		for _, s := range vaultSlots {
			l = append(l, fmt.Sprintf("%s (fingerprint %.16s…)", s.Extra[vaultExtraURL], s.Extra[vaultExtraFingerprint]))
		}
		return nil, &noVaultSlotError{fmt.Sprintf("the repository has no vault key slot for %s, so it does not open through that vault (the key was never escrowed there, or was deleted with key vault-delete); its vault slots are for %s", a.vaultURL, strings.Join(l, ", "))}
	}
	chosen, names := byURL[0], map[string]bool{}
	for _, s := range byURL {
		names[escrow.SlotName(s)] = true
		if s.Created.After(chosen.Created) {
			chosen = s
		}
	}
	if len(names) > 1 {
		var l []string
		for n := range names {
			l = append(l, n)
		}
		slices.Sort(l)
		return nil, fmt.Errorf("the repository has keys escrowed in %s under several names (%s): pick one with --vault-name", a.vaultURL, strings.Join(l, ", "))
	}
	return chosen, nil
}

// vaultTarget is what --vault names for a repository, found without
// unlocking it.
type vaultTarget struct {
	repo   *archive.Repository // opened, not unlocked; the caller closes it
	slots  []*keys.Slot        // all its key slots
	slot   *keys.Slot          // its vault slot for --vault
	name   string              // the key's name in the vault
	client *vaultclient.Client // pinned to the slot's fingerprint (a single vault)
	credID []byte
	rt     *realmTarget // the slot's vaults (threshold escrow; client is then nil)
}

// openVaultTarget opens the repository, without unlocking it, and finds
// its vault slot for --vault, the credential and the pin.
func (a *app) openVaultTarget(ctx context.Context) (_ *vaultTarget, err error) {
	if _, _, err := a.vaultSetFlags(); err != nil {
		return nil, err
	}
	st, err := a.openStore(ctx, false)
	if err != nil {
		return nil, err
	}
	r, err := archive.Open(ctx, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	t := &vaultTarget{repo: r}
	if t.slots, err = r.Slots(ctx); err != nil {
		return nil, err
	}
	var rc *realmChoice
	if t.slot, rc, err = a.chooseVaultSlot(ctx, r.Config().ID, t.slots); err != nil {
		return nil, err
	}
	if rc != nil {
		t.name = rc.set.Name
		t.credID = rc.set.UserInfo
		t.rt, err = a.newRealmTarget(rc)
		return t, err
	}
	if t.client, err = a.vaultClient(t.slot.Extra[vaultExtraFingerprint]); err != nil {
		return nil, err
	}
	t.name = escrow.SlotName(t.slot)
	t.credID = api.CredentialID(r.Config().ID, t.name)
	return t, nil
}

// withVaultTarget runs fn with what --vault names for the repository,
// which it closes afterwards.
func (a *app) withVaultTarget(ctx context.Context, fn func(t *vaultTarget) error) error {
	t, err := a.openVaultTarget(ctx)
	if err != nil {
		return err
	}
	defer t.repo.Close()
	return fn(t)
}

func (a *app) keyVaultStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "vault-status --vault URL",
		Short: "Show how many wrong vault passwords are left (at each vault)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withVaultTarget(cmd.Context(), func(t *vaultTarget) error {
				if t.rt != nil {
					return a.thresholdStatus(cmd.Context(), t.rt)
				}
				c := t.client
				left, limit, err := c.Status(cmd.Context(), t.credID)
				if err != nil {
					return err
				}
				info, err := c.Info(cmd.Context())
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "vault_status", "vault": c.URL(), "fingerprint": info.Fingerprint, "attempts_left": left, "limit": limit})
				a.out.Printf("vault %s (fingerprint %s): %d of %d attempts left\n", c.URL(), info.Fingerprint, left, limit)
				return nil
			})
		},
	}
}

func (a *app) keyVaultPasswdCommand() *cobra.Command {
	var newPwFile string
	cmd := &cobra.Command{
		Use:   "vault-passwd --vault URL",
		Short: "Change the vault password",
		Long: `Change the password that protects the key escrowed in --vault: log in with
the current password (--password-file, --password-command or a prompt), then
register the same secret under the new one (--new-password-file or asked
twice). The attempt counter starts afresh. For a key escrowed across
several vaults, the password changes at all of them (every one must
answer).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withVaultTarget(ctx, func(t *vaultTarget) error {
				if t.rt != nil {
					return a.thresholdPasswd(ctx, t.rt, newPwFile)
				}
				c := t.client
				if _, err := c.Info(ctx); err != nil {
					return err
				}
				old, err := a.vaultPassword(false, "")
				if err != nil {
					return err
				}
				pw, err := a.vaultPassword(true, newPwFile)
				if err != nil {
					return err
				}
				if err := c.ChangePassword(ctx, t.credID, old, pw); err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "vault_password_changed", "vault": c.URL()})
				a.out.Printf("vault password changed at %s\n", c.URL())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&newPwFile, "new-password-file", "", "read the new vault password from this file")
	return cmd
}

func (a *app) keyVaultDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "vault-delete --vault URL",
		Short: "Delete the key escrowed in the vault, and the repository's vault slot",
		Long: `Delete the key escrowed in --vault for this repository: log in with the vault
password (--password-file, --password-command or a prompt) and have the
vault destroy the record for good, then remove the repository's vault slot
for it, so the repository no longer opens through that vault. The 64-digit
key and the other slots still open it. Refused when that vault slot is the
repository's only key slot: get a 64-digit key first with
wabackup key recover --vault URL. For a key escrowed across several
vaults, it is deleted at all of them.

When the repository has no vault slot for --vault any more (it was
removed with key remove), the key escrowed under --vault-name (default
"default") is deleted all the same; give --vault-fingerprint to be sure of
the vault.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			err := a.withVaultTarget(ctx, func(t *vaultTarget) error {
				if t.rt != nil {
					return a.thresholdDelete(ctx, t)
				}
				c := t.client
				info, err := c.Info(ctx)
				if err != nil {
					return err
				}
				// Every vault slot of this credential (this vault's key, this
				// name: the same record, under any address) dies with it.
				doomed, others := []*keys.Slot{t.slot}, 0
				for _, s := range t.slots {
					switch {
					case s.ID == t.slot.ID:
					case s.Kind == keys.KindVault && s.Extra[vaultExtraFingerprint] == info.Fingerprint && escrow.SlotName(s) == t.name:
						doomed = append(doomed, s)
					default:
						others++
					}
				}
				if others == 0 {
					return fmt.Errorf("refusing to delete the key escrowed in vault %s: its vault slot is the repository's only key slot, so nothing would open the repository any more; get a 64-digit key first with wabackup key recover --vault %s", c.URL(), c.URL())
				}
				pw, err := a.vaultPassword(false, "")
				if err != nil {
					return err
				}
				if err := c.Delete(ctx, t.credID, pw); err != nil {
					return err
				}
				removed := []string{}
				remove := func(fn func() error) error { return fn() }
				if t.repo.Unlocked() {
					remove = func(fn func() error) error { return a.withLock(ctx, t.repo, true, "key vault-delete", fn) }
				}
				// The repository is not unlocked here (only the vault's
				// password was given): the slot objects go, and the keyring
				// cannot be updated. A slot it still lists cannot open
				// anything again: the vault destroyed its secret.
				if len(doomed) > 0 {
					err = remove(func() error {
						for _, s := range doomed {
							if _, err := t.repo.RemoveSlot(ctx, s.ID); err != nil {
								return fmt.Errorf("the key was deleted from vault %s, but the repository's vault slot %s was not removed (remove it with wabackup key remove %s): %w", c.URL(), s.ID[:8], s.ID[:8], err)
							}
							removed = append(removed, s.ID)
						}
						return nil
					})
				}
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "vault_deleted", "vault": c.URL(), "name": t.name, "removed": removed})
				a.out.Printf("deleted the key escrowed in vault %s and removed the repository's vault slot %s: the repository no longer opens through this vault (the 64-digit key and its other slots still open it)\n", c.URL(), strings.Join(shortIDs(removed), ", "))
				return nil
			})
			var nv *noVaultSlotError
			if errors.As(err, &nv) && len(a.vaultURLs) == 1 {
				return a.deleteRecordWithoutSlot(ctx)
			}
			return err
		},
	}
}

// deleteRecordWithoutSlot deletes the key escrowed in --vault for the
// repository when the repository has no vault slot for it: nothing in the
// repository depends on it, and the vault would otherwise keep it.
func (a *app) deleteRecordWithoutSlot(ctx context.Context) error {
	st, err := a.openStore(ctx, false)
	if err != nil {
		return err
	}
	r, err := archive.Open(ctx, st)
	if err != nil {
		st.Close()
		return err
	}
	defer r.Close()
	name := a.vaultName
	if name == "" {
		name = api.DefaultName
	}
	c, err := a.vaultClient("")
	if err != nil {
		return err
	}
	if _, err := c.Info(ctx); err != nil {
		return err
	}
	pw, err := a.vaultPassword(false, "")
	if err != nil {
		return err
	}
	if err := c.Delete(ctx, api.CredentialID(r.Config().ID, name), pw); err != nil {
		return err
	}
	a.out.JSON(map[string]any{"message_type": "vault_deleted", "vault": c.URL(), "name": name, "removed": []string{}})
	a.out.Printf("deleted the key escrowed in vault %s under the name %q (the repository had no vault slot for it)\n", c.URL(), name)
	return nil
}

func shortIDs(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id[:min(8, len(id))]
	}
	return out
}
