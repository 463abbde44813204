package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func (a *app) generateCommand() *cobra.Command {
	var manDir, completion string
	cmd := &cobra.Command{
		Use:   "generate --man DIR | --completion bash|zsh|fish",
		Short: "Write man pages or a shell completion script",
		Long: `Write a man page for every command into DIR (wabackup.1, wabackup-backup.1, …),
or print a completion script for bash, zsh or fish:

    wabackup generate --man /usr/local/share/man/man1
    wabackup generate --completion bash > /etc/bash_completion.d/wabackup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			switch {
			case manDir != "" && completion == "":
				if err := os.MkdirAll(manDir, 0o755); err != nil {
					return err
				}
				hdr := &doc.GenManHeader{Title: "WABACKUP", Section: "1", Source: "wabackup"}
				if err := doc.GenManTree(root, hdr, manDir); err != nil {
					return err
				}
				a.out.JSON(map[string]any{"message_type": "generate", "man": manDir})
				a.out.Printf("man pages written to %s\n", manDir)
				return nil
			case completion != "" && manDir == "":
				switch completion {
				case "bash":
					return root.GenBashCompletionV2(a.out.stdout, true)
				case "zsh":
					return root.GenZshCompletion(a.out.stdout)
				case "fish":
					return root.GenFishCompletion(a.out.stdout, true)
				}
				return fmt.Errorf("--completion %q: want bash, zsh or fish", completion)
			}
			return fmt.Errorf("give --man DIR or --completion bash|zsh|fish")
		},
	}
	cmd.Flags().StringVar(&manDir, "man", "", "write man pages into this directory")
	cmd.Flags().StringVar(&completion, "completion", "", "print the completion script for this shell: bash, zsh or fish")
	return cmd
}
