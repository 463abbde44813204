package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wabackup/wabackup/internal/secret"
	"github.com/wabackup/wabackup/internal/settings"
	"github.com/wabackup/wabackup/pkg/archive"
	"github.com/wabackup/wabackup/pkg/cloud"
	"github.com/wabackup/wabackup/pkg/cloud/gdrive"
	"github.com/wabackup/wabackup/pkg/cloud/s3"
	"github.com/wabackup/wabackup/pkg/keys"
)

// app holds the global options shared by every command.
type app struct {
	out *output

	repo            string
	configFile      string
	allowRollback   bool
	unlockedWith    archive.Credentials // what opened the repository (key rotate keeps that slot)
	keyFile         string
	passwordFile    string
	passwordCommand string
	retryLock       time.Duration
	retryBudget     time.Duration // --retry-budget: a run's time without a successful store request
	tempDir         string
	cacheDir        string
	noCache         bool
	cacheSize       string // --cache-size (metaCacheSize reads it)
	connections     int

	s3Region       string
	s3InsecureHTTP bool
	s3Lookup       string
	s3Connections  int
	s3CreateBucket bool
	caCert         string

	vaultURLs      []string // --vault, in order
	vaultFPs       []string // --vault-fingerprint, one per --vault
	vaultThreshold int      // --vault-threshold (init, key escrow)
	vaultURL       string   // the --vault when it is one
	vaultFP        string   // its --vault-fingerprint
	vaultCACert    string
	vaultName      string
	vaultUsed      string // the vault(s) the repository was opened through, for messages
	// thresholdOpened is set when the repository was opened through a
	// threshold slot's vaults.
	thresholdOpened *thresholdOpening
	onCommandLine   map[string]bool // the flags given on the command line (applySettings)
	settingsFile    settings.File   // the config file's settings (applySettings)
	snapHost        string          // --host of the commands that take a snapshot reference

	// counters count the requests of the stores openRepo opened, one
	// each, for the summaries.
	counters []*cloud.Counter
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{out: &output{stdout: stdout, stderr: stderr}}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "wabackup",
		Short: "End-to-end encrypted backups of a chat app's database and media",
		Long: `wabackup backs up a chat app's SQLite database and media folder into an
encrypted, deduplicated repository (a local directory, S3 or Google Drive)
and restores them on any machine with the 64-digit key or a password.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.applySettings(cmd); err != nil {
				return err
			}
			a.deriveVaultFlags()
			return nil
		},
	}
	root.SetOut(a.out.stdout)
	root.SetErr(a.out.stderr)
	pf := root.PersistentFlags()
	pf.StringVarP(&a.repo, "repo", "r", "", "repository: a path, file:///path, s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX], s3://HOST/BUCKET[/PREFIX], gdrive://appdata/NAME or gdrive://folder/PATH (env WABACKUP_REPO)")
	pf.StringVar(&a.configFile, "config", "", "config file (default $XDG_CONFIG_HOME/wabackup/config)")
	pf.BoolVar(&a.allowRollback, "allow-rollback", false, "accept a repository store that shows an older keyring or fewer snapshots than this machine has seen (after restoring the store from a backup)")
	pf.StringVar(&a.keyFile, "key-file", "", "read the 64-digit key from this file (env WABACKUP_KEY_FILE)")
	pf.StringVar(&a.passwordFile, "password-file", "", "read the password from this file (env WABACKUP_PASSWORD_FILE)")
	pf.StringVar(&a.passwordCommand, "password-command", "", "run this shell command to get the password (env WABACKUP_PASSWORD_COMMAND)")
	pf.DurationVar(&a.retryLock, "retry-lock", 0, "wait up to this long for a locked repository (e.g. 5m)")
	pf.DurationVar(&a.retryBudget, "retry-budget", cloud.DefaultRunBudget, "give up when no request to the store has succeeded for this long (a bad network; the next run resumes)")
	pf.StringVar(&a.tempDir, "temp-dir", "", "where packs are staged before upload (default: the system temp dir)")
	pf.StringVar(&a.cacheDir, "cache-dir", "", "local caches: the index and the snapshots' metadata (default $XDG_CACHE_HOME/wabackup; wabackup cache shows them)")
	pf.BoolVar(&a.noCache, "no-cache", false, "keep no cache between runs")
	pf.StringVar(&a.cacheSize, "cache-size", "", "disk space the metadata cache of a repository may take, e.g. 1GiB (default 256MiB)")
	pf.IntVar(&a.connections, "connections", 0, fmt.Sprintf("reads a restore, or a run with a cold metadata cache, sends to the store at once (default %d; S3 also keeps to --s3-connections)", archive.DefaultConnections))
	pf.StringVar(&a.s3Region, "s3-region", "", "S3 region (default: ask the server)")
	pf.BoolVar(&a.s3InsecureHTTP, "s3-insecure-http", false, "talk plain HTTP to the S3 server (local servers only)")
	pf.StringVar(&a.s3Lookup, "s3-lookup", "", "S3 addressing: auto, path or dns (virtual-host)")
	pf.IntVar(&a.s3Connections, "s3-connections", 0, "S3 requests in flight at once (default 4)")
	pf.BoolVar(&a.s3CreateBucket, "s3-create-bucket", false, "with init: create the S3 bucket if it is missing")
	pf.StringVar(&a.caCert, "cacert", "", "PEM file of extra CA certificates to trust (private S3 servers)")
	pf.StringArrayVar(&a.vaultURLs, "vault", nil, "key vault URL (https://…): escrow the key there (init, key escrow) or open the repository through it; repeat it to spread the key over several independent vaults (threshold escrow)")
	pf.IntVar(&a.vaultThreshold, "vault-threshold", 0, "with several --vault (init, key escrow): how many of the vaults give the key back (more than half of them; default: the smallest majority)")
	pf.StringVar(&a.vaultCACert, "vault-cacert", "", "PEM file of extra CA certificates to trust for the key vaults (it may hold several)")
	pf.StringVar(&a.vaultName, "vault-name", "", "name of the key in the vault (default \"default\")")
	pf.StringArrayVar(&a.vaultFPs, "vault-fingerprint", nil, "the key vault's public key fingerprint (64 hex digits, printed by wabackup-vault at start): talk to the vault only if it presents this key; one per --vault, in the same order")
	pf.BoolVar(&a.out.json, "json", false, "machine-readable output (one JSON object per line)")
	pf.BoolVarP(&a.out.quiet, "quiet", "q", false, "print nothing unless there is an error")

	root.AddCommand(
		a.initCommand(),
		a.backupCommand(),
		a.snapshotsCommand(),
		a.restoreCommand(),
		a.checkCommand(),
		a.forgetCommand(),
		a.pruneCommand(),
		a.repairCommand(),
		a.lsCommand(),
		a.findCommand(),
		a.dumpCommand(),
		a.statsCommand(),
		a.sqlCommand(),
		a.diffCommand(),
		a.generateCommand(),
		a.migrateCommand(),
		a.keyCommand(),
		a.unlockCommand(),
		a.cleanupCommand(),
		a.cacheCommand(),
		a.loginCommand(),
		a.logoutCommand(),
		a.versionCommand(),
		&cobra.Command{Use: "exit-codes", Short: "The exit codes wabackup uses", Long: exitCodesHelp},
	)
	// Execute adds these; added now, the completion group gets the rule
	// below too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var groups func(c *cobra.Command)
	groups = func(c *cobra.Command) {
		if !c.Runnable() && c.HasSubCommands() {
			c.RunE = a.needsCommand
		}
		for _, sub := range c.Commands() {
			groups(sub)
		}
	}
	groups(root)
	a.addHostFlags(root)
	refuseRepeatedFlags(root)
	return root
}

// needsCommand runs a command that only groups others (wabackup, key,
// repair, completion): an unknown subcommand is a usage error; none at all
// prints the help, or with --json (help is not JSON) is a usage error too.
func (a *app) needsCommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2 // cobra's default for the root
		}
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %q?)", s[0])
		}
		return errors.New(msg)
	}
	if !a.out.json {
		return cmd.Help()
	}
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return fmt.Errorf("%s needs a command: %s", cmd.CommandPath(), strings.Join(names, ", "))
}

// applySettings fills unset flags from WABACKUP_* variables and the
// config file.
func (a *app) applySettings(cmd *cobra.Command) error {
	path, required := a.configFile, true
	if path == "" {
		if v := os.Getenv("WABACKUP_CONFIG"); v != "" {
			path = v
		} else {
			path, required = settings.DefaultPath(), false
		}
	}
	file, lines, err := settings.LoadLines(path, required)
	if err != nil {
		return err
	}
	a.settingsFile = file
	// A setting no command knows is a typo: say so instead of ignoring it
	// (settings for other commands are fine).
	known, knownEnv := map[string]bool{}, map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if f.Annotations[settings.NotASetting] != nil {
					return // only the command line sets it
				}
				known[f.Name] = true
				knownEnv[settings.EnvName(f.Name)] = true
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd.Root())
	// A flag marked notASetting (init --password, a switch) is no
	// setting: "password =" in the config file is an error, not a quietly
	// unused secret, and WABACKUP_PASSWORD is the password itself.
	delete(known, "config")
	for _, e := range []string{"WABACKUP_CONFIG", "WABACKUP_KEY", "WABACKUP_PASSWORD", "WABACKUP_CPUPROFILE",
		"WABACKUP_GDRIVE_CLIENT_SECRET", "WABACKUP_GDRIVE_ENDPOINT", "WABACKUP_VAULT_PKCS11_PIN"} {
		knownEnv[e] = true
	}
	// Variables of the test suite and the vault server.
	ignored := []string{"WABACKUP_TEST_", "WABACKUP_CRASH_", "WABACKUP_VAULT_TEST_", "WABACKUP_REQUIRE_SERVERS", "WABACKUP_TAMPER_SEED", "WABACKUP_TREE_SEED"}
	if err := settings.CheckUnknown(path, file, lines, known, os.Environ(), knownEnv, ignored); err != nil {
		return err
	}
	fs := pflag.NewFlagSet("all", pflag.ContinueOnError)
	fs.AddFlagSet(cmd.Flags())
	fs.AddFlagSet(cmd.InheritedFlags())
	a.onCommandLine = map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { a.onCommandLine[f.Name] = f.Changed })
	return settings.Apply(fs, path, file, lines, map[string]bool{"config": true})
}

// Levels of a setting's source, highest first.
const (
	levelFlag   = 3
	levelEnv    = 2
	levelConfig = 1
)

// settingLevel is where flag's value came from: the command line, its
// WABACKUP_* variable, the config file, or nowhere (0, value "").
func (a *app) settingLevel(flag, value string) int {
	switch {
	case a.onCommandLine[flag]:
		return levelFlag
	case envLevel(settings.EnvName(flag)) > 0:
		return levelEnv
	case value != "":
		return levelConfig
	}
	return 0
}

// envLevel is levelEnv if the variable is set (and not empty).
func envLevel(name string) int {
	if os.Getenv(name) != "" {
		return levelEnv
	}
	return 0
}

// credentials gathers the key or password before any work is done, so a
// mistyped key fails at once.
func (a *app) credentials() (archive.Credentials, error) {
	var c archive.Credentials
	// The secret given at the highest level wins (README, "Settings,
	// secrets and cron"): a flag over a variable over the config file; at
	// one level, the key over the password. The other is not read: a wrong
	// explicit secret fails instead of something else opening.
	keyLevel := max(a.settingLevel("key-file", a.keyFile), envLevel("WABACKUP_KEY"))
	pwLevel := max(a.settingLevel("password-file", a.passwordFile), a.settingLevel("password-command", a.passwordCommand), envLevel("WABACKUP_PASSWORD"))
	keySrc := secret.Source{File: a.keyFile, Env: "WABACKUP_KEY"}
	if pwLevel > keyLevel {
		keySrc = secret.Source{}
	}
	if s, ok, err := keySrc.Read(); ok {
		if err != nil {
			return c, err
		}
		k, err := keys.ParseRecoveryKey(string(s))
		if err != nil {
			return c, fmt.Errorf("the 64-digit key: %w", err)
		}
		c.RecoveryKey = &k
		return c, nil
	}
	pwSrc := secret.Source{File: a.passwordFile, Command: a.passwordCommand, Env: "WABACKUP_PASSWORD"}
	switch pwLevel {
	case a.settingLevel("password-file", a.passwordFile):
		pwSrc = secret.Source{File: a.passwordFile}
	case a.settingLevel("password-command", a.passwordCommand):
		pwSrc = secret.Source{Command: a.passwordCommand}
	}
	if s, ok, err := pwSrc.Read(); ok {
		if err != nil {
			return c, err
		}
		c.Password = s
		return c, nil
	}
	in, err := promptSecret("Enter the 64-digit key or the password: ", false)
	if errors.Is(err, secret.ErrNoSecret) {
		return c, errors.New("no key or password given: use --key-file, --password-file, --password-command (or WABACKUP_KEY_FILE, WABACKUP_PASSWORD_FILE); there is no terminal to ask on")
	}
	if err != nil {
		return c, err
	}
	if k, err := keys.ParseRecoveryKey(string(in)); err == nil {
		c.RecoveryKey = &k
	} else if looksLikeKey(string(in)) {
		// A mistyped key is a key format error, never a password try.
		return c, fmt.Errorf("the 64-digit key typed: %w (it was not tried as a password)", err)
	}
	c.Password = in
	return c, nil
}

// promptSecret asks on the terminal (a variable for tests).
var promptSecret = secret.Prompt

// looksLikeKey reports input that is meant as a 64-digit key, typos and
// all: besides separators (spaces, tabs, dashes), 60 to 68 characters of
// which at most 3 are not hex digits (a letter typed for a digit, a digit
// dropped or doubled). No password the prompt would otherwise take looks
// like that by chance.
func looksLikeKey(s string) bool {
	hex, other := 0, 0
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f', r >= 'A' && r <= 'F':
			hex++
		case r == ' ' || r == '-' || r == '\t' || r == '\u2010' || r == '\u2013' || r == '\u2014':
		default:
			other++
		}
	}
	return hex+other >= 60 && hex+other <= 68 && other <= 3
}

// openStore opens the repository's store; create makes the container
// (directory, bucket with --s3-create-bucket, Drive folder) if missing.
func (a *app) openStore(ctx context.Context, create bool) (cloud.Store, error) {
	if a.repo == "" {
		return nil, errors.New("no repository given: use --repo or WABACKUP_REPO")
	}
	if a.retryBudget <= 0 {
		return nil, fmt.Errorf("--retry-budget %v: give a positive duration, e.g. 5m", a.retryBudget)
	}
	ctx = cloud.WithRunBudget(ctx, a.retryBudget)
	if strings.HasPrefix(a.repo, "s3:") {
		cfg, err := s3.ParseURL(a.repo)
		if err != nil {
			return nil, err
		}
		if a.s3Region != "" {
			cfg.Region = a.s3Region
		}
		if a.s3InsecureHTTP {
			cfg.Secure = false
		}
		if a.s3Lookup != "" {
			cfg.Lookup = a.s3Lookup
		}
		if a.s3Connections > 0 {
			cfg.Connections = a.s3Connections
		}
		if a.caCert != "" {
			cfg.CACertFile = a.caCert
		}
		cfg.CreateBucket = create && (cfg.CreateBucket || a.s3CreateBucket)
		return s3.New(ctx, cfg)
	}
	return cloud.Open(ctx, a.repo, create)
}

// cachePath is the index cache directory ("" for none).
func (a *app) cachePath() string {
	switch {
	case a.noCache:
		return ""
	case a.cacheDir != "":
		return a.cacheDir
	case os.Getenv("XDG_CACHE_HOME") != "":
		return filepath.Join(os.Getenv("XDG_CACHE_HOME"), "wabackup")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "wabackup")
	}
	return ""
}

// openRepo opens and unlocks the repository.
func (a *app) openRepo(ctx context.Context) (*archive.Repository, error) {
	if a.repo == "" {
		return nil, errors.New("no repository given: use --repo or WABACKUP_REPO")
	}
	var cred archive.Credentials
	var err error
	if !a.viaVault() {
		if cred, err = a.credentials(); err != nil {
			return nil, err
		}
	}
	// Count the store's requests for the summaries (from the opening
	// on: S3 and Drive count on the wire, other stores their calls).
	counter := &cloud.Counter{}
	a.counters = append(a.counters, counter)
	st, err := a.openStore(cloud.WithCounter(ctx, counter), false)
	if err != nil {
		return nil, err
	}
	st = cloud.Count(st, counter)
	r, err := archive.Open(ctx, st)
	if err != nil {
		return nil, err
	}
	if a.viaVault() {
		if cred, err = a.vaultCredentials(ctx, r); err != nil {
			r.Close()
			return nil, err
		}
	}
	if a.tempDir != "" {
		r.SetTempDir(a.tempDir)
	}
	r.SetCacheDir(a.cachePath())
	size, err := a.metaCacheSize()
	if err != nil {
		r.Close()
		return nil, err
	}
	r.SetMetaCacheSize(size)
	if a.connections < 0 {
		r.Close()
		return nil, fmt.Errorf("--connections %d: want 1 or more", a.connections)
	}
	r.SetConnections(a.connections)
	r.SetAllowRollback(a.allowRollback)
	if err := r.Unlock(ctx, cred); err != nil {
		if errors.Is(err, archive.ErrRetiredKey) {
			return nil, err // it says which slot and why
		}
		if errors.Is(err, keys.ErrWrongKey) {
			return nil, fmt.Errorf("%w for %s", keys.ErrWrongKey, st.Location())
		}
		return nil, err
	}
	a.unlockedWith = cred
	return r, nil
}

// withRepo opens and unlocks the repository, runs fn with it, and closes
// it.
func (a *app) withRepo(ctx context.Context, fn func(*archive.Repository) error) error {
	r, err := a.openRepo(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

// withRepoLocked is withRepo holding the exclusive lock (key changes:
// each writes the next keyring version).
func (a *app) withRepoLocked(ctx context.Context, op string, fn func(*archive.Repository) error) error {
	return a.withRepo(ctx, func(r *archive.Repository) error {
		return a.withLock(ctx, r, true, op, func() error { return fn(r) })
	})
}

// withLock runs fn holding a repository lock. A command that only reads
// (check, restore) goes on without one when the store takes no uploads
// (Google Drive's daily upload cap, a full account): a restore must not
// wait for tomorrow. Lock looks for an exclusive lock before it writes, so
// a running forget or prune still stops it.
func (a *app) withLock(ctx context.Context, r *archive.Repository, exclusive bool, op string, fn func() error) error {
	l, err := r.Lock(ctx, exclusive, op, a.retryLock)
	if err != nil {
		if exclusive || op == "backup" {
			return err
		}
		why := ""
		switch {
		case errors.Is(err, gdrive.ErrUploadCap):
			why = "Google Drive's daily upload limit is reached"
		case errors.Is(err, gdrive.ErrQuota):
			why = "the Google account's storage is full"
		default:
			return err
		}
		a.out.Warnf("no lock file could be written (%s); going on without one: do not run forget or prune until this %s ends", why, op)
		return fn()
	}
	defer l.Unlock()
	return fn()
}

// notASetting marks a command's flag as one only the command line sets:
// its name is also a setting's (check --db, a switch, beside backup's
// db = PATH), so neither a variable nor the config file may fill it.
func notASetting(cmd *cobra.Command, name string) {
	if err := cmd.Flags().SetAnnotation(name, settings.NotASetting, []string{"true"}); err != nil {
		panic(err)
	}
}
