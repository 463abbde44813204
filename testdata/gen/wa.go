package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// waSchema follows WhatsApp's wa.db, the second database of the app: the
// address book (one row per known jid, with names and the about text), and
// the app's small settings tables.
const waSchema = `
CREATE TABLE wa_contacts (
	_id INTEGER PRIMARY KEY AUTOINCREMENT,
	jid TEXT NOT NULL, is_whatsapp_user BOOLEAN NOT NULL,
	status TEXT, status_timestamp INTEGER, number TEXT,
	raw_contact_id INTEGER, display_name TEXT, phone_type INTEGER, phone_label TEXT,
	unseen_msg_count INTEGER, photo_ts INTEGER, thumb_ts INTEGER, photo_id_timestamp INTEGER,
	given_name TEXT, family_name TEXT, wa_name TEXT, sort_name TEXT, nickname TEXT,
	company TEXT, title TEXT, status_autodownload_disabled INTEGER, keep_timestamp INTEGER,
	is_spam_reported INTEGER, is_sidelist_synced BOOLEAN DEFAULT 0, is_business_synced BOOLEAN DEFAULT 0,
	disappearing_mode_duration INTEGER, disappearing_mode_timestamp LONG, history_sync_initial_phash TEXT);
CREATE INDEX wa_contacts_jid_index ON wa_contacts (jid);
CREATE INDEX wa_contacts_sort_index ON wa_contacts (sort_name);
CREATE TABLE wa_vnames (_id INTEGER PRIMARY KEY AUTOINCREMENT, jid TEXT UNIQUE, serial INTEGER, issuer TEXT,
	expires INTEGER, verified_name TEXT, industry TEXT, city TEXT, country TEXT, verified_level INTEGER, identity_unconfirmed_since INTEGER);
CREATE TABLE wa_props (_id INTEGER PRIMARY KEY AUTOINCREMENT, prop_name TEXT UNIQUE, prop_value TEXT);
`

var givenNames = []string{"Anna", "Ben", "Clara", "David", "Elif", "Finn", "Greta", "Hannes", "Ida", "Jonas", "Kemal", "Lena", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sami", "Tina", "Uwe"}
var familyNames = []string{"Becker", "Demir", "Fischer", "Hoffmann", "Kaya", "Klein", "Koch", "Meyer", "Müller", "Nowak", "Richter", "Schmidt", "Schulz", "Wagner", "Weber", "Wolf"}
var abouts = []string{"Hey there! I am using WhatsApp.", "Available", "Busy", "At work", "Battery about to die", "In a meeting", "Urgent calls only", "Sleeping", "🌍✈️", "Can't talk, WhatsApp only"}

type person struct{ jid, number string }

// waPeople reads the people msgstore.db knows (its jid table) from db.
func waPeople(ctx context.Context, db *sql.DB) ([]person, error) {
	rows, err := db.QueryContext(ctx, `SELECT raw_string, user FROM jid WHERE server = 's.whatsapp.net' ORDER BY _id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var people []person
	for rows.Next() {
		var p person
		if err := rows.Scan(&p.jid, &p.number); err != nil {
			return nil, err
		}
		people = append(people, p)
	}
	return people, rows.Err()
}

// writeWA writes DIR/wa.db beside msgstore.db: a contact for each of
// people, in the same journal mode.
func writeWA(ctx context.Context, dir string, seed uint64, journal string, people []person) error {
	path := filepath.Join(dir, "wa.db")
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	db, err := openDB(path, waSchema)
	if err != nil {
		return err
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(seed, 0x77612e6462))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ins, err := tx.Prepare(`INSERT INTO wa_contacts(jid, is_whatsapp_user, status, status_timestamp, number, raw_contact_id,
		display_name, phone_type, given_name, family_name, wa_name, sort_name, unseen_msg_count, photo_ts, thumb_ts)
		VALUES (?, 1, ?, ?, ?, ?, ?, 2, ?, ?, ?, ?, 0, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	ts := int64(1_700_000_000_000)
	for i, p := range people {
		given, family := givenNames[r.IntN(len(givenNames))], familyNames[r.IntN(len(familyNames))]
		name := given + " " + family
		if _, err := ins.Exec(p.jid, abouts[r.IntN(len(abouts))], ts-r.Int64N(400*86400_000), "+"+p.number, 1000+i,
			name, given, family, given, strings.ToLower(name), ts-r.Int64N(90*86400_000), ts-r.Int64N(90*86400_000)); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{{"user_settings_version", "7"}, {"contacts_sync_ts", strconv.FormatInt(ts, 10)}, {"privacy_last_seen", "contacts"}} {
		if _, err := tx.Exec(`INSERT INTO wa_props(prop_name, prop_value) VALUES (?, ?)`, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode=" + journal).Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, journal) {
		return fmt.Errorf("wa.db: cannot set journal_mode %s (got %s)", journal, mode)
	}
	return db.Close()
}

// waDay applies a day of use to wa.db, when there is one: a few contacts
// change their about text, one new contact is added.
func waDay(ctx context.Context, dir string, seed uint64, day int) error {
	path := filepath.Join(dir, "wa.db")
	if _, err := os.Stat(path); err != nil {
		return nil // a dataset made before wa.db existed
	}
	uri, err := sqliteURI(path, "mode=rw", "_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	r := rand.New(rand.NewPCG(seed, 0x77612e6461<<8|uint64(day)))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRow(`SELECT count(*) FROM wa_contacts`).Scan(&n); err != nil {
		return err
	}
	ts := int64(1_700_000_000_000) + int64(day)*86400_000
	for i := 0; i < 5 && n > 0; i++ {
		if _, err := tx.Exec(`UPDATE wa_contacts SET status = ?, status_timestamp = ? WHERE _id = ?`,
			abouts[r.IntN(len(abouts))], ts, 1+r.IntN(n)); err != nil {
			return err
		}
	}
	given, family := givenNames[r.IntN(len(givenNames))], familyNames[r.IntN(len(familyNames))]
	number := "49" + strconv.Itoa(160_0000_0000+day*1000+r.IntN(1000))
	if _, err := tx.Exec(`INSERT INTO wa_contacts(jid, is_whatsapp_user, status, status_timestamp, number, display_name, given_name, family_name, sort_name)
		VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?)`, number+"@s.whatsapp.net", abouts[r.IntN(len(abouts))], ts, "+"+number,
		given+" "+family, given, family, strings.ToLower(given+" "+family)); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return err
	}
	return db.Close()
}
