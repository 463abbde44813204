// Command gen builds a realistic WhatsApp-like dataset for testing
// wabackup: DIR/msgstore.db, an SQLite chat database in WAL mode shaped like
// WhatsApp's msgstore, filled with compressible chat text until it reaches
// --db-mb MiB, and DIR/Media/ in WhatsApp's folder layout holding
// --media-mb MiB of incompressible (seeded random) photos, videos, voice
// notes and documents that the database's message_media rows reference.
// The output is deterministic for a seed.
//
//	go run ./testdata/gen --out DIR [--db-mb 200] [--media-mb 800] [--seed 1]
//	go run ./testdata/gen --small --out testdata/sample
//
// --small writes the small committed sample instead: about 200 messages in
// a rollback-journal database and a handful of tiny media files.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"
)

func main() {
	var c config
	var dbMB, mediaMB int64
	flag.StringVar(&c.out, "out", "", "output `directory` (created; must not already hold a dataset)")
	flag.Int64Var(&dbMB, "db-mb", 200, "size of msgstore.db in MiB")
	flag.Int64Var(&mediaMB, "media-mb", 800, "total size of the media files in MiB")
	flag.Uint64Var(&c.seed, "seed", 1, "random seed")
	flag.BoolVar(&c.small, "small", false, "write the small committed sample (ignores --db-mb and --media-mb)")
	flag.Parse()
	if c.out == "" || flag.NArg() > 0 || dbMB < 0 || mediaMB < 0 {
		flag.Usage()
		os.Exit(2)
	}
	c.dbBytes, c.mediaBytes = dbMB<<20, mediaMB<<20

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	start := time.Now()
	st, err := generate(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: msgstore.db %.1f MiB (%d messages), %d media files %.1f MiB, in %v\n",
		c.out, float64(st.dbBytes)/(1<<20), st.messages, st.mediaFiles, float64(st.mediaBytes)/(1<<20),
		time.Since(start).Round(time.Millisecond))
}
