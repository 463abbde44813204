package archive

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wabackup/wabackup/pkg/keys"
)

// A hostile repository holding many costly password slots cannot make an
// open run Argon2id without bound: the open stops at keys.Argon2Budget
// (issue 11, point 4). The slots here cost 16 passes × 8 MiB each, so 32
// of them spend the budget.
func TestPasswordSlotsArgon2Budget(t *testing.T) {
	ctx := context.Background()
	tr := newTestRepo(t)
	costly := &keys.Argon2Params{Time: 16, MemoryKiB: 8 * 1024, Threads: 1}
	per := uint64(costly.Time) * uint64(costly.MemoryKiB)
	fits := int(keys.Argon2Budget / per)
	for i := range fits + 8 {
		if _, err := tr.AddPassword(ctx, []byte(fmt.Sprintf("hostile %d", i)), costly, "hostile"); err != nil {
			t.Fatal(err)
		}
	}
	r := tr.reopen(t)
	r2, err := Open(ctx, r.store)
	if err != nil {
		t.Fatal(err)
	}
	err = r2.Unlock(ctx, Credentials{Password: []byte("nobody's password")})
	if !errors.Is(err, keys.ErrWrongKey) || !strings.Contains(err.Error(), "Argon2id work one open may do") {
		t.Fatalf("open of a repository with %d costly slots: %v", fits+9, err)
	}
	// The slots tried: those that fit in the budget (the repository's own
	// slot, at the test's cheap parameters, may come first).
	if !strings.Contains(err.Error(), fmt.Sprintf("of the repository's %d password slots", fits+9)) {
		t.Fatalf("message: %v", err)
	}
	var tried int
	if _, err := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "stopped after trying"):], "stopped after trying %d", &tried); err != nil {
		t.Fatal(err)
	}
	if tried > fits+1 {
		t.Fatalf("tried %d slots, more than the %d the budget allows", tried, fits+1)
	}
	// The 64-digit key still opens it.
	if err := r2.Unlock(ctx, Credentials{RecoveryKey: &tr.recovery}); err != nil {
		t.Fatal(err)
	}
}
