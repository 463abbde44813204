package archive

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wabackup/wabackup/pkg/gather"
)

func messageRows(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM message").Scan(&n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// Several databases (WhatsApp's msgstore.db and wa.db) in one snapshot:
// each pinned, checked and stored, the snapshot records them all, restore
// puts each back, and an unchanged one is reused while the other is read
// again (issue 13, point 3).
func TestSeveralDatabases(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	msg, wa := filepath.Join(src, "msgstore.db"), filepath.Join(src, "wa.db")
	makeDB(t, msg, 3000)
	makeDB(t, wa, 200)
	media := filepath.Join(src, "Media")
	os.MkdirAll(filepath.Join(media, "Images"), 0o755)
	os.WriteFile(filepath.Join(media, "Images", "IMG-1.jpg"), []byte("jpeg"), 0o644)

	// The order on the command line does not matter: wa.db given first.
	s1, err := tr.Backup(ctx, BackupOptions{DB: wa, DBs: []string{msg}, Media: media})
	if err != nil {
		t.Fatal(err)
	}
	dbs := s1.Databases()
	if len(dbs) != 2 || dbs[0].Path != msg || dbs[1].Path != wa {
		t.Fatalf("snapshot databases: %+v", dbs)
	}
	for _, d := range dbs {
		if d.Stamp == nil || d.Check != "full" || d.FullCheck == nil {
			t.Errorf("%s: stamp %v check %q full check %v", d.Name(), d.Stamp, d.Check, d.FullCheck)
		}
	}
	// Stored as a reader of one database sees it: the first in the DB
	// fields, the rest in more_dbs.
	if s1.DB != msg || len(s1.MoreDBs) != 1 || s1.MoreDBs[0].Path != wa {
		t.Fatalf("DB %q, more_dbs %+v", s1.DB, s1.MoreDBs)
	}
	stored, err := tr.FindSnapshot(ctx, s1.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if got := stored.DBPaths(); len(got) != 2 || got[0] != msg || got[1] != wa {
		t.Fatalf("stored snapshot's databases: %v", got)
	}

	out := t.TempDir()
	if _, err := tr.Restore(ctx, s1, RestoreOptions{Target: out}); err != nil {
		t.Fatal(err)
	}
	if n := messageRows(t, filepath.Join(out, "msgstore.db")); n != 3000 {
		t.Errorf("restored msgstore.db: %d rows, want 3000", n)
	}
	if n := messageRows(t, filepath.Join(out, "wa.db")); n != 200 {
		t.Errorf("restored wa.db: %d rows, want 200", n)
	}
	if _, err := os.Stat(filepath.Join(out, "Media", "Images", "IMG-1.jpg")); err != nil {
		t.Error(err)
	}
	// Each stored database checks on its own, by name or by path.
	for _, name := range []string{"msgstore.db", wa} {
		if err := tr.CheckStoredDB(ctx, s1, name, t.TempDir()); err != nil {
			t.Errorf("check %s: %v", name, err)
		}
	}
	if err := tr.CheckStoredDB(ctx, s1, "contacts.db", t.TempDir()); err == nil || !strings.Contains(err.Error(), "msgstore.db, wa.db") {
		t.Errorf("check of a database the snapshot does not hold: %v", err)
	}

	// Only wa.db changes: msgstore.db is reused (not read, not checked),
	// wa.db is read; the parent is the snapshot of the same set.
	makeDB(t, wa, 5)
	s2, err := tr.Backup(ctx, BackupOptions{DB: msg, DBs: []string{wa}, Media: media, DBCheck: "quick"})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Parent != s1.ID.String() {
		t.Fatalf("parent %q, want %s", s2.Parent, s1.ID)
	}
	d2 := s2.Databases()
	if d2[0].Check != "full" || !d2[0].FullCheck.Equal(*dbs[0].FullCheck) {
		t.Errorf("unchanged msgstore.db: check %q full %v, want the parent's", d2[0].Check, d2[0].FullCheck)
	}
	if d2[1].Check != "quick" || !d2[1].FullCheck.Equal(*dbs[1].FullCheck) {
		t.Errorf("changed wa.db: check %q full %v", d2[1].Check, d2[1].FullCheck)
	}
	waSize := fileSize(t, wa)
	if s2.Stats.ReadBytes != waSize || s2.Stats.Unchanged != 2 {
		t.Errorf("second backup read %d bytes (wa.db is %d), %d unchanged (want msgstore.db and the image)", s2.Stats.ReadBytes, waSize, s2.Stats.Unchanged)
	}
	out2 := t.TempDir()
	if _, err := tr.Restore(ctx, s2, RestoreOptions{Target: out2}); err != nil {
		t.Fatal(err)
	}
	if n := messageRows(t, filepath.Join(out2, "wa.db")); n != 205 {
		t.Errorf("restored wa.db: %d rows, want 205", n)
	}
	if n := messageRows(t, filepath.Join(out2, "msgstore.db")); n != 3000 {
		t.Errorf("restored msgstore.db: %d rows, want 3000", n)
	}

	// A backup of msgstore.db alone is another series: not a child of
	// the two-database snapshots, and forget groups it apart.
	s3, err := tr.Backup(ctx, BackupOptions{DB: msg, Media: media})
	if err != nil {
		t.Fatal(err)
	}
	if s3.Parent != "" || len(s3.MoreDBs) != 0 {
		t.Errorf("single-database backup: parent %q more_dbs %v", s3.Parent, s3.MoreDBs)
	}
	ds := ApplyPolicy([]*Snapshot{s1, s2, s3}, Policy{Last: 1})
	kept := 0
	for _, d := range ds {
		if d.Keep {
			kept++
		}
	}
	if kept != 2 {
		t.Errorf("keep-last 1 kept %d snapshots, want one per series (2)", kept)
	}

	// A single-database snapshot is stored exactly as before (no new
	// field), so older readers read it.
	raw, _ := json.Marshal(s3)
	if strings.Contains(string(raw), "more_dbs") {
		t.Errorf("single-database snapshot has more_dbs: %s", raw)
	}
}

// A corrupt second database fails the backup: no snapshot claims it.
func TestSeveralDatabasesOneCorrupt(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	src := t.TempDir()
	msg, wa := filepath.Join(src, "msgstore.db"), filepath.Join(src, "wa.db")
	makeDB(t, msg, 500)
	makeDB(t, wa, 20000)
	corruptMiddlePage(t, wa)
	_, err := tr.Backup(ctx, BackupOptions{DB: msg, DBs: []string{wa}})
	if !errors.Is(err, gather.ErrCorruptDB) || !strings.Contains(err.Error(), "wa.db") {
		t.Fatalf("backup with a corrupt wa.db: %v", err)
	}
	snaps, err := tr.Snapshots(ctx)
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after the failed backup: %d (%v)", len(snaps), err)
	}
}

// Two sources of one name cannot share the tree's top level.
func TestSeveralDatabasesNameClash(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	a, b := filepath.Join(t.TempDir(), "msgstore.db"), filepath.Join(t.TempDir(), "msgstore.db")
	makeDB(t, a, 10)
	makeDB(t, b, 10)
	if _, err := tr.Backup(ctx, BackupOptions{DB: a, DBs: []string{b}}); err == nil || !strings.Contains(err.Error(), "same name") {
		t.Errorf("two msgstore.db: %v", err)
	}
	if _, err := tr.Backup(ctx, BackupOptions{DB: a, DBs: []string{a}}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("one database given twice: %v", err)
	}
}

// The snapshot decoder refuses more_dbs that make no sense.
func TestParseSnapshotMoreDBs(t *testing.T) {
	root := strings.Repeat("ab", 32)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for _, c := range []struct {
		name, json, err string
	}{
		{"two", `{"v":2,"time":"` + now + `","host":"h","db":"/a/msgstore.db","more_dbs":[{"path":"/a/wa.db","check":"quick"}],"root":["` + root + `"],"stats":{}}`, ""},
		{"no first", `{"v":2,"time":"` + now + `","host":"h","more_dbs":[{"path":"/a/wa.db"}],"root":["` + root + `"],"stats":{}}`, "without a first"},
		{"same name", `{"v":2,"time":"` + now + `","host":"h","db":"/a/wa.db","more_dbs":[{"path":"/b/wa.db"}],"root":["` + root + `"],"stats":{}}`, "two databases"},
		{"bad check", `{"v":2,"time":"` + now + `","host":"h","db":"/a/m.db","more_dbs":[{"path":"/a/wa.db","check":"fast"}],"root":["` + root + `"],"stats":{}}`, "db_check"},
		{"no path", `{"v":2,"time":"` + now + `","host":"h","db":"/a/m.db","more_dbs":[{"check":"quick"}],"root":["` + root + `"],"stats":{}}`, "without a path"},
		{"unknown field", `{"v":2,"time":"` + now + `","host":"h","db":"/a/m.db","more_dbs":[{"path":"/a/wa.db","x":1}],"root":["` + root + `"],"stats":{}}`, "unknown field"},
	} {
		s, err := parseSnapshot([]byte(c.json))
		if c.err == "" {
			if err != nil || len(s.Databases()) != 2 {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.err)
		}
	}
}

// latest~N names the Nth snapshot before the newest.
func TestFindSnapshotLatestBack(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	media := t.TempDir()
	var ids []ID
	for i := 0; i < 3; i++ {
		os.WriteFile(filepath.Join(media, "f"), []byte{byte(i)}, 0o644)
		s, err := tr.Backup(ctx, BackupOptions{Media: media})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	for ref, want := range map[string]ID{"latest": ids[2], "latest~0": ids[2], "latest~1": ids[1], "latest~2": ids[0]} {
		s, err := tr.FindSnapshot(ctx, ref)
		if err != nil || s.ID != want {
			t.Errorf("%s: %v %v, want %s", ref, s, err, want.Short())
		}
	}
	if _, err := tr.FindSnapshot(ctx, "latest~3"); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("latest~3 of 3: %v", err)
	}
	for _, bad := range []string{"latest~", "latest~-1", "latest~x", "latest~01"} {
		if _, err := tr.FindSnapshot(ctx, bad); err == nil || !strings.Contains(err.Error(), "want latest~N") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
