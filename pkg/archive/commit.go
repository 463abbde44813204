package archive

import (
	"fmt"
	"os"
	"sync"
)

// A committer gives restored files their real names only once their data
// is durable, in batches: restore workers hand it finished temporary
// files, and one goroutine makes everything handed over so far durable
// with a single syncfs(2) of the target's file system, then renames that
// batch into place. One file-system sync per batch costs far less than an
// fsync per file (each of which commits the journal and flushes the disk
// cache), and it runs while the workers write the next batch.
//
// Where syncfs is not available there is no committer: restore fsyncs
// each file before it is renamed, which gives the same guarantee: no file
// ever gets its real name before its contents are on disk.
//
// Its life: add for every file, then flush (every file renamed), sync
// once the caller is done (the renames durable) — an interrupted restore
// does this too, for the files finished before the interruption; stop,
// deferred, ends it whatever happened and removes the temporary files
// never renamed.
type committer struct {
	dir  *os.File // any file on the target's file system, for syncfs
	mu   sync.Mutex
	cond *sync.Cond
	// pending are finished files waiting for the next sync;
	// pendingBytes their total size.
	pending      []*pendingFile
	pendingBytes int64
	closing      bool
	err          error
	done         chan struct{}
}

// Batch limits: a sync starts once this much is pending, and a worker
// waits (memory stays bounded) while twice as much is.
const (
	commitBatchFiles = 256
	commitBatchBytes = 128 << 20
)

// newCommitter starts a committer for files below dir, or returns nil
// when the file system cannot be synced as a whole (the caller then
// fsyncs each file itself).
func newCommitter(dir string) *committer {
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	if syncFS(d) != nil {
		d.Close()
		return nil
	}
	c := &committer{dir: d, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.run()
	return c
}

// add hands over a finished file. It blocks while too much is pending,
// and returns the error that stopped the committer, if any.
func (c *committer) add(p *pendingFile) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && (len(c.pending) >= 2*commitBatchFiles || c.pendingBytes >= 2*commitBatchBytes) {
		c.cond.Wait()
	}
	if c.err != nil {
		return c.err
	}
	c.pending = append(c.pending, p)
	c.pendingBytes += p.size
	c.cond.Broadcast()
	return nil
}

func (c *committer) run() {
	defer close(c.done)
	for {
		c.mu.Lock()
		for c.err == nil && !c.closing && len(c.pending) < commitBatchFiles && c.pendingBytes < commitBatchBytes {
			c.cond.Wait()
		}
		if c.err != nil || (c.closing && len(c.pending) == 0) {
			c.mu.Unlock()
			return
		}
		batch := c.pending
		c.pending, c.pendingBytes = nil, 0
		c.cond.Broadcast()
		c.mu.Unlock()

		err := syncFS(c.dir)
		if err != nil {
			err = fmt.Errorf("syncing restored files: %w", err)
		}
		for i, p := range batch {
			if err == nil {
				err = p.place()
			}
			if err != nil {
				for _, left := range batch[i:] {
					left.discard()
				}
				break
			}
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
	}
}

// flush waits until every file handed over is synced and renamed, and
// stops taking files.
func (c *committer) flush() error {
	c.mu.Lock()
	c.closing = true
	c.cond.Broadcast()
	c.mu.Unlock()
	<-c.done
	return c.err
}

// sync makes the renames, and whatever the caller changed since flush
// (directory modes and times), durable.
func (c *committer) sync() error {
	if err := syncFS(c.dir); err != nil {
		return fmt.Errorf("syncing restored files: %w", err)
	}
	return nil
}

// stop ends the committer: a restore that failed renames nothing more,
// and the temporary files not renamed are removed.
func (c *committer) stop() {
	c.mu.Lock()
	if c.err == nil && !c.closing {
		c.err = errRestoreAborted
	}
	c.closing = true
	c.cond.Broadcast()
	c.mu.Unlock()
	<-c.done
	for _, p := range c.pending {
		p.discard()
	}
	c.pending = nil
	c.dir.Close()
}

var errRestoreAborted = fmt.Errorf("restore aborted")
