package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrLocked is returned when another process holds a conflicting lock.
var ErrLocked = errors.New("repository is locked")

// Lock timing (FORMAT.md §Locks).
const (
	lockRefresh  = 5 * time.Minute
	lockStaleAge = 30 * time.Minute
)

type lockInfo struct {
	Time      time.Time `json:"time"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Exclusive bool      `json:"exclusive"`
	Op        string    `json:"op"`
}

// Lock is a held repository lock. Release it with Unlock.
type Lock struct {
	r      *Repository
	name   string
	info   lockInfo
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	failed error
}

func (l lockInfo) String() string {
	kind := "shared"
	if l.Exclusive {
		kind = "exclusive"
	}
	return fmt.Sprintf("%s lock held by PID %d on %s since %s (%s)", kind, l.PID, l.Host, l.Time.Local().Format("2006-01-02 15:04:05"), l.Op)
}

func (l lockInfo) stale(host string) bool {
	if time.Since(l.Time) > lockStaleAge {
		return true
	}
	if l.Host == host && l.PID > 0 {
		if err := syscall.Kill(l.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	return false
}

// Lock takes a shared (backup, restore, check) or exclusive (prune,
// forget) lock, waiting up to retry for conflicting locks to go away.
// Stale locks (dead process on this host, or not refreshed for 30 min)
// are removed.
func (r *Repository) Lock(ctx context.Context, exclusive bool, op string, retry time.Duration) (*Lock, error) {
	host, _ := os.Hostname()
	deadline := time.Now().Add(retry)
	for {
		l := &Lock{r: r, name: "locks/" + NewRandomID().String(), info: lockInfo{Time: time.Now().UTC(), Host: host, PID: os.Getpid(), Exclusive: exclusive, Op: op}, stop: make(chan struct{})}
		conflict, err := r.lockConflict(ctx, l.info, "")
		if err == nil && conflict == nil {
			if err = l.write(ctx); err == nil {
				// Re-check: two processes may have written at once.
				conflict, err = r.lockConflict(ctx, l.info, l.name)
				if conflict != nil || err != nil {
					r.store.Delete(context.WithoutCancel(ctx), l.name)
				}
			}
		}
		if err != nil {
			return nil, err
		}
		if conflict == nil {
			l.wg.Add(1)
			go l.refresh()
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s (use --retry-lock DURATION to wait, or `wabackup unlock` if it is stale)", ErrLocked, conflict)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(2*time.Second, time.Until(deadline)+10*time.Millisecond)):
		}
	}
}

func (l *Lock) write(ctx context.Context) error {
	data, err := json.Marshal(l.info)
	if err != nil {
		return err
	}
	_, err = l.r.saveObject(ctx, l.name, false, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	return err
}

func (l *Lock) refresh() {
	defer l.wg.Done()
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.info.Time = time.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := l.write(ctx)
			cancel()
			if err != nil {
				l.mu.Lock()
				l.failed = err
				l.mu.Unlock()
			}
		}
	}
}

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	close(l.stop)
	l.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return l.r.store.Delete(ctx, l.name)
}

func (r *Repository) readLock(ctx context.Context, name string) (lockInfo, error) {
	var li lockInfo
	rc, err := r.openObject(ctx, name, false)
	if err != nil {
		return li, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return li, err
	}
	if err := json.Unmarshal(data, &li); err != nil {
		return li, fmt.Errorf("%s: %v: %w", name, err, ErrCorrupt)
	}
	return li, nil
}

// lockConflict returns a live lock that conflicts with mine, removing
// stale ones on the way.
func (r *Repository) lockConflict(ctx context.Context, mine lockInfo, self string) (*lockInfo, error) {
	objs, err := r.listNames(ctx, "locks/")
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if o.Name == self || !strings.HasPrefix(o.Name, "locks/") {
			continue
		}
		li, err := r.readLock(ctx, o.Name)
		if err != nil {
			if errors.Is(err, ErrCorrupt) || os.IsNotExist(err) {
				continue // vanished or unreadable locks do not block
			}
			continue
		}
		if li.stale(mine.Host) {
			r.store.Delete(ctx, o.Name)
			continue
		}
		if mine.Exclusive || li.Exclusive {
			return &li, nil
		}
	}
	return nil, nil
}

// RemoveLocks deletes locks: stale ones, or all with all=true.
func (r *Repository) RemoveLocks(ctx context.Context, all bool) (int, error) {
	host, _ := os.Hostname()
	objs, err := r.listNames(ctx, "locks/")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range objs {
		li, err := r.readLock(ctx, o.Name)
		if all || err != nil || li.stale(host) {
			if r.store.Delete(ctx, o.Name) == nil {
				n++
			}
		}
	}
	return n, nil
}
