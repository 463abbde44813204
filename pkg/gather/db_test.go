package gather

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The test databases hold messages numbered 1..n (seq) and a counter row
// equal to n, always changed in the same transaction, so any
// transaction-consistent copy has seq exactly 1..counter.
const testSchema = `
CREATE TABLE message (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE INDEX message_body ON message(body);
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO counter VALUES (1, 0);
`

func openRW(t testing.TB, path string, pragmas ...string) *sql.DB {
	t.Helper()
	uri, err := sqliteURI(path, append([]string{"_pragma=busy_timeout(10000)"}, pragmas...)...)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", uri)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

func randBody(r *rand.Rand) string {
	const letters = "abcdefghijklmnopqrstuvwxyz      "
	b := make([]byte, 100+r.IntN(300))
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}

// appendMessages commits count transactions, each adding the next message
// and raising the counter to it; it returns the new counter.
func appendMessages(t testing.TB, db *sql.DB, r *rand.Rand, count int) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	for range count {
		n++
		if err := commitMessage(db, r, n); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func commitMessage(db *sql.DB, r *rand.Rand, n int) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.Exec("INSERT INTO message(seq, body) VALUES (?, ?)", n, randBody(r)); err != nil {
		return err
	}
	if n%7 == 0 {
		// Rewrite an older row too, so pages all over the file change.
		if _, err := tx.Exec("UPDATE message SET body = ? WHERE seq = ?", randBody(r), 1+r.IntN(n)); err != nil {
			return err
		}
	}
	if _, err := tx.Exec("UPDATE counter SET n = ?", n); err != nil {
		return err
	}
	return tx.Commit()
}

// bulkFill adds count messages in one transaction.
func bulkFill(t testing.TB, db *sql.DB, r *rand.Rand, count int) int {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	for range count {
		n++
		if _, err := tx.Exec("INSERT INTO message(seq, body) VALUES (?, ?)", n, randBody(r)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec("UPDATE counter SET n = ?", n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return n
}

// createDB makes a test database in the given journal mode with rows
// messages and returns the open handle.
func createDB(t testing.TB, path, journal string, rows int) *sql.DB {
	t.Helper()
	db := openRW(t, path, "_pragma=journal_mode("+journal+")", "_pragma=synchronous(NORMAL)")
	if _, err := db.Exec(testSchema); err != nil {
		t.Fatal(err)
	}
	if rows > 0 {
		bulkFill(t, db, rand.New(rand.NewPCG(1, 2)), rows)
	}
	return db
}

// dirState fingerprints every file in dir (name → sha256).
func dirState(t testing.TB, dir string) map[string]string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[de.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return m
}

// checkUntouched compares a source directory's fingerprints before and after
// a snapshot. The database and its -wal must be unchanged. Like any SQLite
// reader, the read-only snapshot connection may have had to create the
// -shm index and an empty -wal for a WAL database nobody had open.
func checkUntouched(t *testing.T, before, after map[string]string) {
	t.Helper()
	const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for name, sum := range after {
		if _, ok := before[name]; ok {
			continue
		}
		if strings.HasSuffix(name, "-shm") || strings.HasSuffix(name, "-wal") && sum == empty {
			delete(after, name)
		}
	}
	delete(before, "msgstore.db-shm")
	delete(after, "msgstore.db-shm")
	if !mapsEqual(before, after) {
		t.Errorf("source directory changed:\nbefore %v\nafter  %v", before, after)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// corruptMiddlePage overwrites one page in the middle of a closed database
// file with garbage and returns its page number.
func corruptMiddlePage(t *testing.T, path string) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 100)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	pageSize := int64(hdr[16])<<8 | int64(hdr[17])
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pages := fi.Size() / pageSize
	if pages < 10 {
		t.Fatalf("database has only %d pages", pages)
	}
	page := pages / 2
	garbage := make([]byte, pageSize)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range garbage {
		garbage[i] = byte(r.Uint32())
	}
	if _, err := f.WriteAt(garbage, (page-1)*pageSize); err != nil {
		t.Fatal(err)
	}
	return int(page)
}

// TestHelperWriter is the writer process of TestSnapshotLiveWriter: it
// commits numbered transactions until its stdin closes.
func TestHelperWriter(t *testing.T) {
	src := os.Getenv("GATHER_TEST_WRITER_DB")
	if src == "" {
		t.Skip("helper process for TestSnapshotLiveWriter")
	}
	db := openRW(t, src, "_pragma=synchronous(NORMAL)")
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() {
		var b [1]byte
		os.Stdin.Read(b[:])
		close(stop)
	}()
	fmt.Println("ready")
	r := rand.New(rand.NewPCG(11, 12))
	for {
		select {
		case <-stop:
			fmt.Printf("done %d\n", n)
			return
		default:
		}
		n++
		if err := commitMessage(db, r, n); err != nil {
			t.Fatalf("commit %d: %v", n, err)
		}
	}
}

// QueryDB leaves nothing beside the file it reads, even one in WAL mode
// (sql queries a rebuilt copy in the temporary directory).
func TestQueryDBLeavesNoFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "msgstore.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"PRAGMA journal_mode=WAL", "CREATE TABLE message (id INTEGER PRIMARY KEY, body TEXT)", "INSERT INTO message (body) VALUES ('a'), ('b')", "PRAGMA wal_checkpoint(TRUNCATE)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(path + suffix)
	}
	var n int64
	err = QueryDB(context.Background(), path, "SELECT count(*) FROM message", func([]string) error { return nil }, func(v []any) error {
		n = v[0].(int64)
		return nil
	})
	if err != nil || n != 2 {
		t.Fatalf("query: %v, %d rows", err, n)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("files beside the database after a query: %v", names)
	}
}
