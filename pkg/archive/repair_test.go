package archive

import (
	"context"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Acceptance 3 of issue 12 (first half): repair index after every index
// object was deleted rebuilds the index from the packs; check --read-data
// is clean and nothing is lost.
func TestRepairIndexAfterAllIndexObjectsDeleted(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 12)
	r := fx.tr.reopen(t)
	objs, err := r.listNames(ctx, "index/")
	if err != nil || len(objs) == 0 {
		t.Fatal(err, len(objs))
	}
	for _, o := range objs {
		tamperDelete(t, fx.tr.dir, o.Name)
	}
	res, err := fx.tr.reopen(t).RepairIndex(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Packs == 0 || len(res.Damaged) != 0 || res.Lost != 0 {
		t.Fatalf("repair index: %+v", res)
	}
	cres, err := fx.tr.reopen(t).Check(ctx, CheckOptions{ReadData: true})
	if err != nil || len(cres.Warnings) != 0 {
		t.Fatalf("check --read-data after repair index: %v, errors %q, warnings %q", err, cres.Errors, cres.Warnings)
	}
	target := t.TempDir()
	if _, err := fx.tr.reopen(t).Restore(ctx, fx.snap, RestoreOptions{Target: target}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, fx.digest, treeDigest(t, filepath.Join(target, "Media")))
}

// A pack whose trailer no longer opens (truncated) is salvaged by repair
// index: the chunks before the cut are copied into a new pack, the pack
// is moved to damaged/, and only the files that needed the lost chunks
// fail to restore.
func TestRepairIndexSalvagesDamagedPack(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	packs := fx.packs(t)
	var ids []ID
	for id := range packs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	victim := packs[ids[0]]
	cut := int64(victim[len(victim)/2].Offset) + 10
	tamperTruncate(t, fx.tr.dir, packName(ids[0]), func(int64) int64 { return cut })
	lost := map[ID]bool{}
	kept := 0
	for _, e := range victim {
		if int64(e.Offset)+int64(e.Length) > cut {
			lost[e.ID] = true
		} else {
			kept++
		}
	}
	res, err := fx.tr.reopen(t).RepairIndex(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Damaged) != 1 || res.Salvaged != kept || res.Lost != len(lost) {
		t.Fatalf("repair index: %+v, want 1 damaged pack, %d salvaged, %d lost", res, kept, len(lost))
	}
	if _, err := fx.tr.reopen(t).store.Stat(ctx, "damaged/"+ids[0].String()); err != nil {
		t.Fatalf("the damaged pack was not moved aside: %v", err)
	}
	target := t.TempDir()
	_, err = fx.tr.reopen(t).Restore(ctx, fx.snap, RestoreOptions{Target: target})
	var inc *IncompleteError
	if !errors.As(err, &inc) {
		t.Fatalf("restore: %v", err)
	}
	var got []string
	for _, f := range inc.Failed {
		got = append(got, f.Path)
	}
	if want := fx.filesNeeding(lost); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("not restored %v, want %v", got, want)
	}
}

// Acceptance 3 of issue 12 (second half): a pack lost and the source
// gone, repair snapshots makes a copy of the snapshot without the files
// that needed it; the copy restores everything else, and check passes
// (the original's damage is a warning pointing at the copy).
func TestRepairSnapshots(t *testing.T) {
	ctx := context.Background()
	fx := newDamageFixture(t, 24)
	packs := fx.packs(t)
	var victim ID
	for id := range packs {
		victim = id
		break
	}
	tamperDelete(t, fx.tr.dir, packName(victim))
	lost := map[ID]bool{}
	for _, e := range packs[victim] {
		lost[e.ID] = true
	}
	want := fx.filesNeeding(lost)
	if _, err := fx.tr.reopen(t).Check(ctx, CheckOptions{}); !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("check before the repair: %v", err)
	}
	reps, err := fx.tr.reopen(t).RepairSnapshots(ctx, []*Snapshot{fx.snap}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 1 || reps[0].New == nil || strings.Join(reps[0].Dropped, ",") != strings.Join(want, ",") {
		t.Fatalf("repair snapshots: %+v, want %v dropped", reps, want)
	}
	ns := reps[0].New
	if ns.RepairedFrom != fx.snap.ID.String() || ns.Dropped != len(want) {
		t.Fatalf("repaired snapshot header: %+v", ns)
	}
	res, err := fx.tr.reopen(t).Check(ctx, CheckOptions{ReadData: true})
	if err != nil {
		t.Fatalf("check after repair snapshots: %v %q", err, res.Errors)
	}
	target := t.TempDir()
	stored, err := fx.tr.reopen(t).LoadSnapshot(ctx, ns.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.tr.reopen(t).Restore(ctx, stored, RestoreOptions{Target: target}); err != nil {
		t.Fatalf("restore of the repaired snapshot: %v", err)
	}
	restored := treeDigest(t, filepath.Join(target, "Media"))
	drop := map[string]bool{}
	for _, p := range want {
		drop[strings.TrimPrefix(p, "Media/")] = true
	}
	for rel, d := range fx.digest {
		if strings.HasPrefix(d, "d") {
			continue
		}
		if drop[rel] {
			if _, ok := restored[rel]; ok {
				t.Errorf("%s was dropped but restored", rel)
			}
		} else if restored[rel] != d {
			t.Errorf("%s: restored %q, want %q", rel, restored[rel], d)
		}
	}
	// A second repair finds nothing to do in the copy.
	reps, err = fx.tr.reopen(t).RepairSnapshots(ctx, []*Snapshot{stored}, false)
	if err != nil || reps[0].New != nil {
		t.Fatalf("repairing the repaired copy: %v %+v", err, reps)
	}
}
