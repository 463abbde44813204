package cloud

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// DefaultRunBudget is how long a run may go without any request to its
// store succeeding before the store gives up (README, "Bad networks").
const DefaultRunBudget = 5 * time.Minute

type runBudgetKey struct{}

// WithRunBudget returns a context that gives d as the run-wide retry
// budget to the stores Open opens with it (0: DefaultRunBudget).
func WithRunBudget(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, runBudgetKey{}, d)
}

// RunBudget is the run-wide retry budget ctx carries, or
// DefaultRunBudget.
func RunBudget(ctx context.Context) time.Duration {
	if d, ok := ctx.Value(runBudgetKey{}).(time.Duration); ok && d > 0 {
		return d
	}
	return DefaultRunBudget
}

// Progress is a store's run-wide retry budget: every request that
// succeeds (or moves bytes) marks progress, and a request that fails is
// retried only while the time since the last progress, anywhere in the
// store, plus the wait before the next attempt stays within the budget. So
// requests that fail one after another on a bad network end the run after
// about the budget, however many of them there are, while a run that keeps
// moving (a flaky link that lets some requests through) goes on. Each
// request keeps its own, shorter budget too. Safe for concurrent use.
type Progress struct {
	budget time.Duration
	last   atomic.Int64 // UnixNano of the last progress
}

// NewProgress starts a budget of d (0: DefaultRunBudget) now.
func NewProgress(d time.Duration) *Progress {
	if d <= 0 {
		d = DefaultRunBudget
	}
	p := &Progress{budget: d}
	p.Done()
	return p
}

// Done marks progress.
func (p *Progress) Done() { p.last.Store(time.Now().UnixNano()) }

// Exhausted reports whether waiting wait more would take the run past
// its budget without progress, and how long it has gone without.
func (p *Progress) Exhausted(wait time.Duration) (time.Duration, bool) {
	since := time.Since(time.Unix(0, p.last.Load()))
	return since, since+wait > p.budget
}

// GaveUp is the note a store adds to its last error when the run's budget
// ran out.
func (p *Progress) GaveUp(since time.Duration) string {
	return fmt.Sprintf("no request to the store succeeded for %v, the run's retry budget (--retry-budget)", since.Round(time.Second))
}
