package gather

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSampleData runs both halves of the package over the committed
// WhatsApp-like sample (testdata/sample, made by testdata/gen).
func TestSampleData(t *testing.T) {
	sample := filepath.Join("..", "..", "testdata", "sample")
	dst := filepath.Join(t.TempDir(), "msgstore.db")
	p, err := OpenDBPages(context.Background(), filepath.Join(sample, "msgstore.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(context.Background(), CheckFull); err != nil {
		t.Fatal(err)
	}
	img, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Pages(context.Background(), func(_ uint32, data []byte) error { _, err := img.Write(data); return err }); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	db := openRW(t, dst)
	defer db.Close()
	var messages, media int
	if err := db.QueryRow("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM message_media)").Scan(&messages, &media); err != nil {
		t.Fatal(err)
	}
	if messages < 100 || media == 0 {
		t.Errorf("snapshot of the sample has %d messages, %d media rows", messages, media)
	}

	files := map[string]int64{}
	err = Walk(context.Background(), filepath.Join(sample, "Media"), func(e Entry) error {
		if e.Type == File {
			files[e.Path] = e.Size
		}
		return nil
	}, func(p string, err error) { t.Errorf("warning %s: %v", p, err) })
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("SELECT file_path, file_size FROM message_media")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		var size int64
		if err := rows.Scan(&p, &size); err != nil {
			t.Fatal(err)
		}
		if got, ok := files[strings.TrimPrefix(p, "Media/")]; !ok || got != size {
			t.Errorf("%s (%d bytes) not found by Walk (got %d, %v)", p, size, got, ok)
		}
	}
}
