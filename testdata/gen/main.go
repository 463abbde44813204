// Command gen builds a realistic WhatsApp-like dataset for testing
// wabackup: DIR/msgstore.db, an SQLite chat database in WAL mode shaped like
// WhatsApp's msgstore (five indexes on message, one over the random key_id;
// an FTS5 index of the text; per-recipient receipts), filled with
// compressible chat text until it reaches --db-mb MiB, and DIR/Media/ in
// WhatsApp's folder layout holding --media-mb MiB of incompressible (seeded
// random) photos, videos, voice notes and documents that the database's
// message_media rows reference, and DIR/wa.db, the contacts database beside
// it (WhatsApp's wa.db: wa_contacts for every person msgstore.db knows).
// The output is deterministic for a seed.
//
//	go run ./testdata/gen --out DIR [--db-mb 200] [--media-mb 800] [--seed 1]
//	go run ./testdata/gen --out DIR --day K [--seed 1]
//	go run ./testdata/gen --out DIR --many N [--seed 1]
//	go run ./testdata/gen --small --out testdata/sample
//
// --day K applies day of use K (1, 2, ...) to the dataset in DIR, made with
// the same --seed: 1,500 new messages in 30 chats in small transactions
// (with their full-text rows, receipts and some media), read-status updates
// of the 3,000 most recent messages, about 40 MiB of new media files, 10 old
// media files deleted, then a TRUNCATE checkpoint (the -wal is empty); in
// wa.db five contacts change their about text and one is added.
//
// --many N writes DIR/Media only: N small files (2–40 KiB) in a few hundred
// folders (stickers, thumbnails, voice notes, small text documents).
//
// --small writes the small committed sample instead: about 200 messages in
// a rollback-journal database (the older, smaller schema) and a handful of
// tiny media files.
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
	var day, many int
	flag.StringVar(&c.out, "out", "", "output `directory` (created; must not already hold a dataset)")
	flag.Int64Var(&dbMB, "db-mb", 200, "size of msgstore.db in MiB")
	flag.Int64Var(&mediaMB, "media-mb", 800, "total size of the media files in MiB")
	flag.Uint64Var(&c.seed, "seed", 1, "random seed")
	flag.BoolVar(&c.small, "small", false, "write the small committed sample (ignores --db-mb and --media-mb)")
	flag.IntVar(&day, "day", 0, "apply day of use `K` (1, 2, ...) to the dataset in --out")
	flag.IntVar(&many, "many", 0, "write only Media/ with `N` small files")
	flag.Parse()
	modes := 0
	for _, on := range []bool{c.small, day != 0, many != 0} {
		if on {
			modes++
		}
	}
	if c.out == "" || flag.NArg() > 0 || dbMB < 0 || mediaMB < 0 || day < 0 || many < 0 || modes > 1 {
		flag.Usage()
		os.Exit(2)
	}
	c.dbBytes, c.mediaBytes = dbMB<<20, mediaMB<<20

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	start := time.Now()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	switch {
	case day > 0:
		st, err := applyDay(ctx, c, day)
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s: day %d: added %d messages in %d chats, %d new media files (%d bytes); deleted %d old media files (%d bytes); msgstore.db %.1f MiB; in %v\n",
			c.out, day, st.messages, st.chats, st.mediaMessages, st.mediaBytes, st.deleted, st.deletedBytes,
			float64(st.dbBytes)/(1<<20), time.Since(start).Round(time.Millisecond))
	case many > 0:
		st, err := generateMany(ctx, c, many)
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s: %d media files in %d folders, %.1f MiB, in %v\n",
			c.out, st.files, st.dirs, float64(st.bytes)/(1<<20), time.Since(start).Round(time.Millisecond))
	default:
		st, err := generate(ctx, c)
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s: msgstore.db %.1f MiB (%d messages), %d media files %.1f MiB, in %v\n",
			c.out, float64(st.dbBytes)/(1<<20), st.messages, st.mediaFiles, float64(st.mediaBytes)/(1<<20),
			time.Since(start).Round(time.Millisecond))
	}
}
