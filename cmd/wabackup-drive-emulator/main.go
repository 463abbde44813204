// Command wabackup-drive-emulator serves the Google Drive v3 emulator
// (pkg/cloud/gdrive/driveemu) for manual and end-to-end testing:
//
//	wabackup-drive-emulator --listen 127.0.0.1:8089 --token secret [--dir DIR]
//
// It prints its base URL on the first line of standard output. Point
// wabackup at it with WABACKUP_GDRIVE_ENDPOINT=URL; OAuth clients use
// URL/auth, URL/token and URL/revoke. Without --dir the state lives in
// memory and is lost on exit; with --dir it is saved there and reloaded.
// Faults can be injected at start (--fault op:fault[:after[:count]]) or at
// run time by POSTing a JSON array of rules to URL/_emu/faults (see
// driveemu.Rule); GET URL/_emu/stats shows call counts.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
)

type faultFlags []driveemu.Rule

func (f *faultFlags) String() string {
	b, _ := json.Marshal(*f)
	return string(b)
}

func (f *faultFlags) Set(v string) error {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 4 {
		return fmt.Errorf("want op:fault[:after[:count]], got %q", v)
	}
	r := driveemu.Rule{Op: driveemu.Op(parts[0]), Fault: driveemu.Fault(parts[1])}
	if r.Op == "any" {
		r.Op = driveemu.OpAny
	}
	var err error
	if len(parts) > 2 {
		if r.After, err = strconv.Atoi(parts[2]); err != nil {
			return err
		}
	}
	if len(parts) > 3 {
		if r.Count, err = strconv.Atoi(parts[3]); err != nil {
			return err
		}
	}
	*f = append(*f, r)
	return nil
}

func main() {
	var (
		listen   = flag.String("listen", "127.0.0.1:0", "address to listen on")
		dir      = flag.String("dir", "", "directory to persist the state in (default: memory only)")
		token    = flag.String("token", "", "static bearer token accepted with every scope (default: only tokens from /token)")
		clientID = flag.String("client-id", "", "OAuth client ID /auth and /token accept (default: any)")
		secret   = flag.String("client-secret", "", "OAuth client secret /token requires (default: any)")
		ttl      = flag.Duration("access-token-ttl", time.Hour, "lifetime of access tokens minted by /token")
		upCap    = flag.Int64("upload-cap", 0, "daily upload cap in bytes (0: none; Drive's is 750 GB)")
		quota    = flag.Int64("storage-quota", 0, "storage quota in bytes (0: unlimited)")
		verbose  = flag.Bool("v", false, "log every request")
		faults   faultFlags
	)
	flag.Var(&faults, "fault", "inject a fault: op:fault[:after[:count]], e.g. chunk:drop:3:1 or any:rateLimit:0:5 (repeatable)")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	opts := driveemu.Options{
		Token: *token, ClientID: *clientID, ClientSecret: *secret, AccessTokenTTL: *ttl,
		Dir: *dir, UploadCap: *upCap, StorageQuota: *quota, Faults: faults,
	}
	if *verbose {
		opts.Logf = log.Printf
	}
	s := driveemu.New(opts)
	if err := s.Listen(*listen); err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.URL)
	log.Printf("Drive v3 emulator at %s (drive endpoint %s; export %s=%s)", s.URL, s.DriveEndpoint(), "WABACKUP_GDRIVE_ENDPOINT", s.URL)
	if *dir == "" {
		log.Printf("state is in memory only and is lost on exit")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	if err := s.Close(); err != nil {
		log.Fatalf("saving state: %v", err)
	}
}
