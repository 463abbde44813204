package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/keys"
)

// newPassword reads a new password: from --password-file,
// --password-command or WABACKUP_PASSWORD if given, else by prompting
// twice when prompt is set.
func (a *app) newPassword(prompt bool) ([]byte, error) {
	src := secret.Source{File: a.passwordFile, Command: a.passwordCommand, Env: "WABACKUP_PASSWORD"}
	if s, ok, err := src.Read(); ok {
		return s, err
	}
	if !prompt {
		return nil, nil
	}
	p, err := secret.Prompt("New password: ", true)
	if err == secret.ErrNoSecret {
		return nil, fmt.Errorf("no terminal to ask for the password on: use --password-file or --password-command")
	}
	return p, err
}

func hostLabel() string {
	h, _ := os.Hostname()
	return h
}

func (a *app) initCommand() *cobra.Command {
	var password, force bool
	var parity int
	var keyOut string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a repository and print its 64-digit key",
		Long: `Create a repository and print its 64-digit key, once. With --password (or a
password file or command) the repository can also be opened with a password.
With --vault URL the password instead protects a copy of the key escrowed in
that key vault (wabackup-vault), which allows only a few wrong guesses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := a.newPassword(password)
			if err != nil {
				return err
			}
			var vaultPw []byte
			if a.viaVault() {
				// The password protects the vault's copy only: a password
				// slot in the repository would allow offline guessing.
				if vaultPw, err = a.vaultPassword(true, ""); err != nil {
					return err
				}
				pw = nil
			}
			if keyOut != "" && !force {
				// Before anything is created: the file may be another
				// repository's only key.
				if err := refuseExisting(keyOut); err != nil {
					return err
				}
			}
			st, err := a.openStore(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer st.Close()
			r, rk, err := archive.Init(cmd.Context(), st, archive.InitOptions{Password: pw, Label: hostLabel(), Parity: parity})
			if err != nil {
				return err
			}
			if vaultPw != nil {
				if _, err := a.escrow(cmd.Context(), r, vaultPw); err != nil {
					return fmt.Errorf("the repository was created but the key was not escrowed (%w); its 64-digit key is %s", err, keys.FormatRecoveryKey(rk))
				}
			}
			formatted := keys.FormatRecoveryKey(rk)
			if keyOut != "" {
				if err := writeKeyFile(keyOut, formatted, force); err != nil {
					return fmt.Errorf("writing the key to %s: %w (the repository was created; its 64-digit key is %s)", keyOut, err, formatted)
				}
			}
			cfg := r.Config()
			a.out.JSON(map[string]any{"message_type": "init", "repository": st.Location(), "id": cfg.ID, "key": formatted, "password": pw != nil})
			if a.out.json {
				return nil
			}
			if a.out.quiet && keyOut != "" {
				return nil
			}
			// The key is shown even with --quiet unless it went to a file:
			// losing it would lose the backups.
			fmt.Fprintf(a.out.stdout, "created repository %s (id %s)\n\n", st.Location(), cfg.ID[:8])
			fmt.Fprintf(a.out.stdout, "Your 64-digit key:\n\n    %s\n\n", formatted)
			fmt.Fprintln(a.out.stdout, "Keep it safe: it is the way back in if you lose the password or this machine. Nobody can recover it for you.")
			return nil
		},
	}
	cmd.Flags().BoolVar(&password, "password", false, "also protect the key with a password (asked for twice)")
	notASetting(cmd, "password") // WABACKUP_PASSWORD is the password itself, never this switch
	cmd.Flags().BoolVar(&force, "force", false, "with --key-out: overwrite an existing file")
	cmd.Flags().IntVar(&parity, "parity", 0, "keep N % of Reed–Solomon parity for every pack (1 to 10; 0: none), so check --read-data --repair can rebuild a pack with a few damaged or missing bytes")
	cmd.Flags().StringVar(&keyOut, "key-out", "", "also write the 64-digit key to this file (mode 0600)")
	return cmd
}

// writeKeyFile writes the 64-digit key to path with mode 0600 and makes it
// durable; it refuses to replace an existing file unless force.
// refuseExisting fails if a --key-out file exists: it may hold another
// repository's only key.
func refuseExisting(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s exists: refusing to overwrite it (it may be another repository's key); choose another --key-out, or add --force", path)
	}
	return nil
}

func writeKeyFile(path, key string, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
