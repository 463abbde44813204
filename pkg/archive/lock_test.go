package archive

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

func writeLock(t *testing.T, r *Repository, li lockInfo) {
	t.Helper()
	data, _ := json.Marshal(li)
	if _, err := r.saveObject(context.Background(), "locks/"+NewRandomID().String(), false, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func TestLocks(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	host, _ := os.Hostname()

	// Shared locks coexist; an exclusive one waits for them.
	l1, err := tr.Lock(ctx, false, "backup", 0)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := tr.Lock(ctx, false, "restore", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Lock(ctx, true, "prune", 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive lock over shared ones: %v", err)
	}
	l1.Unlock()
	l2.Unlock()
	lx, err := tr.Lock(ctx, true, "prune", 0)
	if err != nil {
		t.Fatal(err)
	}
	// --retry-lock: a waiter gets the lock once it is released.
	go func() {
		time.Sleep(500 * time.Millisecond)
		lx.Unlock()
	}()
	start := time.Now()
	l3, err := tr.Lock(ctx, false, "backup", 10*time.Second)
	if err != nil {
		t.Fatalf("waiting for the lock: %v", err)
	}
	if time.Since(start) < 400*time.Millisecond {
		t.Fatal("got a shared lock while an exclusive one was held")
	}
	l3.Unlock()

	// Stale: same host and a dead process, or not refreshed for 30 min.
	dead := exec.Command("true")
	dead.Run()
	writeLock(t, tr.Repository, lockInfo{Time: time.Now().UTC(), Host: host, PID: dead.Process.Pid, Exclusive: true, Op: "prune"})
	writeLock(t, tr.Repository, lockInfo{Time: time.Now().Add(-time.Hour).UTC(), Host: "elsewhere", PID: 1, Exclusive: true, Op: "prune"})
	l4, err := tr.Lock(ctx, true, "prune", 0)
	if err != nil {
		t.Fatalf("stale locks were not cleared: %v", err)
	}
	l4.Unlock()
	// A live lock on another host is not stale.
	writeLock(t, tr.Repository, lockInfo{Time: time.Now().UTC(), Host: "elsewhere", PID: 1, Exclusive: true, Op: "prune"})
	if _, err := tr.Lock(ctx, false, "backup", 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("live foreign lock ignored: %v", err)
	}
	if n, err := tr.RemoveLocks(ctx, true); err != nil || n != 1 {
		t.Fatalf("unlock --remove-all removed %d (%v)", n, err)
	}
}
