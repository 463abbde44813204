package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	"github.com/wabackup/wabackup/pkg/cloud/local"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
)

func (a *app) cleanupCommand() *cobra.Command {
	var olderThan time.Duration
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what interrupted backups left in the store",
		Long: `Remove what interrupted backups left behind: on S3, the multipart uploads
they abandoned under the repository's prefix (prune does this too, under its
exclusive lock); in a local repository, staged files in its .tmp directory
(backups write anonymous files where the file system has them, so a killed
backup leaves none there; older versions and other systems did). Google
Drive drops abandoned uploads by itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.openStore(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer st.Close()
			switch s := st.(type) {
			case *s3.Store:
				n, err := s.CleanupIncomplete(cmd.Context(), olderThan)
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "cleanup", "aborted_uploads": n})
				a.out.Printf("aborted %d incomplete upload(s)\n", n)
			case *local.Store:
				n, b, err := s.CleanupStaging(olderThan)
				if err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "cleanup", "removed_files": n, "removed_bytes": b})
				a.out.Printf("removed %d staged file(s), %s\n", n, humanBytes(b))
			default:
				a.out.JSON(map[string]any{"message_type": "cleanup"})
				a.out.Printf("nothing to clean up in %s: the store drops abandoned uploads by itself\n", st.Location())
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&olderThan, "older-than", 24*time.Hour, "only what was started longer ago than this (a running backup's is younger)")
	return cmd
}

func (a *app) loginCommand() *cobra.Command {
	var opt gdrive.LoginOptions
	cmd := &cobra.Command{
		Use:   "login gdrive",
		Short: "Log in to Google Drive (OAuth, with your own client id)",
		Long: `Log in to Google Drive with an OAuth client of your own (a "Desktop app"
client from the Google Cloud console; see docs/GDRIVE.md). Opens the browser on a
loopback redirect with PKCE; --no-browser prints the URL and reads the
address you were redirected to. The token is kept in
$XDG_CONFIG_HOME/wabackup/gdrive-token.json (mode 0600).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "gdrive" {
				return fmt.Errorf("unknown service %q: only gdrive needs a login", args[0])
			}
			if opt.ClientSecret == "" {
				opt.ClientSecret = os.Getenv("WABACKUP_GDRIVE_CLIENT_SECRET")
			}
			if opt.ClientID == "" && opt.ClientJSONFile == "" {
				return errors.New("give your OAuth client: --client-json FILE, or --client-id with WABACKUP_GDRIVE_CLIENT_SECRET")
			}
			opt.Out = a.out.stderr
			if err := gdrive.Login(cmd.Context(), opt); err != nil {
				return err
			}
			a.out.JSON(map[string]any{"message_type": "login", "service": "gdrive"})
			a.out.Printf("logged in to Google Drive\n")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opt.ClientID, "client-id", "", "OAuth client id")
	f.StringVar(&opt.ClientJSONFile, "client-json", "", "the client_secret_….json file of your OAuth client")
	f.BoolVar(&opt.NoBrowser, "no-browser", false, "print the URL instead of opening a browser")
	f.StringVar(&opt.AuthURL, "auth-url", "", "OAuth authorization endpoint (testing)")
	f.StringVar(&opt.TokenURL, "token-url", "", "OAuth token endpoint (testing)")
	f.MarkHidden("auth-url")
	f.MarkHidden("token-url")
	return cmd
}

func (a *app) logoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logout gdrive",
		Short: "Revoke and forget the Google Drive login",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "gdrive" {
				return fmt.Errorf("unknown service %q", args[0])
			}
			if err := gdrive.Logout(cmd.Context()); err != nil {
				return err
			}
			a.out.JSON(map[string]any{"message_type": "logout", "service": "gdrive"})
			a.out.Printf("logged out of Google Drive\n")
			return nil
		},
	}
}
