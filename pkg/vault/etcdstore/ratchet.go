package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wabackup/wabackup/pkg/vault"
)

// OpenRatchet connects to the cluster and opens the vault.RatchetStore
// kept under the prefix: the store the vault uses on etcd. Every instance
// that shares the prefix must reach the same epoch keys through r: one
// HSM cluster whose members replicate the token's keys (docs/VAULT.md,
// "Across sites"). Values of a prefix written by the plain Store are
// taken over.
func OpenRatchet(cfg Config, r vault.Ratchet) (*vault.RatchetStore, error) {
	s, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	st, err := vault.NewRatchetStore(&table{s: s}, r)
	if err != nil {
		s.Close()
		return nil, err
	}
	return st, nil
}

// table is a RatchetStore's storage under PREFIX/ratchet/: "id" (the table
// id), "root" (uint8(len(epoch id)) || epoch id || sealed root), "b/NNNN"
// (the sealed buckets, NNNN the bucket's number in four decimal digits)
// and "v/KEY" (the sealed values). The root's revision is its etcd mod
// revision; a commit is one transaction that compares it.
type table struct {
	s       *Store
	commits atomic.Int64
	compact atomic.Bool
}

// tableWrites keeps a commit within etcd's default --max-txn-ops (128):
// at most 30 values, 30 legacy values dropped, 30 buckets, 30 groups, the
// root and the write marker.
const tableWrites = 30

// compactEvery is how many commits of this instance go between two
// compactions of the cluster's history (each commit writes a 32 KiB root).
const compactEvery = 1000

func (t *table) key(k string) string { return t.s.prefix + "ratchet/" + k }

func bucketKey(n int) string { return fmt.Sprintf("b/%04d", n) }

func (t *table) Init(newID []byte) (id []byte, err error) {
	k := t.key("id")
	err = t.s.do("transaction", func(ctx context.Context, _ bool) error {
		resp, err := t.s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, string(newID))).
			Else(clientv3.OpGet(k)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			id = newID
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 {
			return errors.New("etcdstore: the key table id vanished")
		}
		id = kvs[0].Value
		return nil
	})
	return id, err
}

// rootOps reads the root and the buckets written after revision since
// (every bucket if 0): the buckets' mod revisions tell.
func (t *table) rootOps(since uint64) []clientv3.Op {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if since > 0 {
		opts = append(opts, clientv3.WithMinModRev(int64(since)+1))
	}
	return []clientv3.Op{clientv3.OpGet(t.key("root")), clientv3.OpGet(t.key("b/"), opts...)}
}

// parseRoot reads what rootOps returned; ok false if the root is malformed.
func (t *table) parseRoot(root, buckets *etcdserverpb.RangeResponse, since uint64) (*vault.RatchetRoot, bool) {
	r := &vault.RatchetRoot{Since: since, Buckets: map[int][]byte{}}
	if len(root.Kvs) == 1 {
		v := root.Kvs[0].Value
		if len(v) < 1 || len(v) < 1+int(v[0]) {
			return nil, false
		}
		r.Epoch, r.Sealed, r.Rev = v[1:1+int(v[0])], v[1+int(v[0]):], uint64(root.Kvs[0].ModRevision)
	}
	pfx := t.key("b/")
	for _, kv := range buckets.Kvs {
		n, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), pfx))
		if err == nil && n >= 0 {
			r.Buckets[n] = kv.Value
		}
	}
	return r, true
}

var errMalformedRoot = fmt.Errorf("%w: malformed key table root in etcd", vault.ErrRolledBack)

func (t *table) Root(since uint64) (*vault.RatchetRoot, error) {
	var r *vault.RatchetRoot
	ok := true
	err := t.s.do("get", func(ctx context.Context, _ bool) error {
		resp, err := t.s.cli.Txn(ctx).Then(t.rootOps(since)...).Commit()
		if err != nil {
			return err
		}
		r, ok = t.parseRoot(resp.Responses[0].GetResponseRange(), resp.Responses[1].GetResponseRange(), since)
		return nil
	})
	if err == nil && !ok {
		return nil, errMalformedRoot
	}
	return r, err
}

// Value is one transaction: if the root's mod revision is rev, the value;
// else the value, the root and the buckets written since rev.
func (t *table) Value(key []byte, rev uint64) (sealed []byte, fresh *vault.RatchetRoot, err error) {
	ok := true
	vk := t.key("v/") + string(key)
	err = t.s.do("get", func(ctx context.Context, _ bool) error {
		resp, err := t.s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(t.key("root")), "=", int64(rev))).
			Then(clientv3.OpGet(vk)).
			Else(append([]clientv3.Op{clientv3.OpGet(vk)}, t.rootOps(rev)...)...).
			Commit()
		if err != nil {
			return err
		}
		sealed, fresh = nil, nil
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			sealed = kvs[0].Value
		}
		if !resp.Succeeded {
			fresh, ok = t.parseRoot(resp.Responses[1].GetResponseRange(), resp.Responses[2].GetResponseRange(), rev)
		}
		return nil
	})
	if err == nil && !ok {
		return nil, nil, errMalformedRoot
	}
	return sealed, fresh, err
}

// Legacy returns the values the plain Store kept under PREFIX/ (outside
// PREFIX/ratchet/ and its write markers PREFIX/_txn/); the floor is the
// cluster's revision (the plain Store's versions are mod revisions).
func (t *table) Legacy(n int) (map[string][]byte, uint64, error) {
	p := t.s.prefix
	ranges := [][2]string{{p, p + "_txn/"}, {p + "_txn0", p + "ratchet/"}, {p + "ratchet0", clientv3.GetPrefixRangeEnd(p)}}
	m := map[string][]byte{}
	var floor uint64
	err := t.s.do("get", func(ctx context.Context, _ bool) error {
		clear(m)
		for _, r := range ranges {
			opts := []clientv3.OpOption{clientv3.WithRange(r[1])}
			if n > 0 {
				opts = append(opts, clientv3.WithLimit(int64(n-len(m))))
			}
			resp, err := t.s.cli.Get(ctx, r[0], opts...)
			if err != nil {
				return err
			}
			floor = uint64(resp.Header.Revision)
			for _, kv := range resp.Kvs {
				m[strings.TrimPrefix(string(kv.Key), p)] = kv.Value
			}
			if n > 0 && len(m) >= n {
				break
			}
		}
		return nil
	})
	return m, floor, err
}

// Commit is one transaction "if the root's mod revision is rev then write
// everything" (Store.markedTxn: a retry after an unknown outcome finds out
// whether it landed); if the root moved, the answer carries the new one.
func (t *table) Commit(c *vault.RatchetCommit, rev uint64) (uint64, *vault.RatchetRoot, error) {
	if len(c.Epoch) > 255 {
		return 0, nil, errors.New("etcdstore: epoch key id too long")
	}
	rootKey := t.key("root")
	var ops []clientv3.Op
	for _, p := range c.Puts {
		ops = append(ops, clientv3.OpPut(t.key("v/")+string(p.Key), string(p.Sealed)))
	}
	for _, k := range c.Dels {
		ops = append(ops, clientv3.OpDelete(t.key("v/")+string(k)))
	}
	for _, k := range c.DropLegacy {
		ops = append(ops, clientv3.OpDelete(t.s.prefix+string(k)))
	}
	for n, b := range c.Buckets {
		ops = append(ops, clientv3.OpPut(t.key(bucketKey(n)), string(b)))
	}
	root := append([]byte{byte(len(c.Epoch))}, c.Epoch...)
	ops = append(ops, clientv3.OpPut(rootKey, string(append(root, c.Root...))))
	ver, orElse, err := t.s.markedTxn(clientv3.Compare(clientv3.ModRevision(rootKey), "=", int64(rev)), ops, t.rootOps(rev))
	if errors.Is(err, vault.ErrConflict) {
		fresh, _ := t.parseRoot(orElse[0].GetResponseRange(), orElse[1].GetResponseRange(), rev)
		return 0, fresh, vault.ErrStale
	}
	if err == nil && t.commits.Add(1)%compactEvery == 0 && t.compact.CompareAndSwap(false, true) {
		go func() {
			defer t.compact.Store(false)
			_ = t.s.Compact()
		}()
	}
	return ver, nil, err
}

// Watch implements vault.RatchetWatcher: one etcd watch over the buckets,
// the groups and the root (the keys from "b/" to "root"); the events of a
// commit share its revision, the root's last.
func (t *table) Watch(stop <-chan struct{}, from uint64, apply func(*vault.RatchetRoot)) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer cancel()
	go func() {
		select {
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	rootKey := t.key("root")
	wch := t.s.cli.Watch(ctx, t.key("b/"), clientv3.WithRange(rootKey+"\x00"), clientv3.WithRev(int64(from)+1))
	since := from
	buckets := map[int][]byte{}
	pfx := t.key("b/")
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			k := string(ev.Kv.Key)
			if k == rootKey {
				v := ev.Kv.Value
				if len(v) < 1 || len(v) < 1+int(v[0]) {
					return errMalformedRoot
				}
				r := &vault.RatchetRoot{Epoch: v[1 : 1+int(v[0])], Sealed: v[1+int(v[0]):], Rev: uint64(ev.Kv.ModRevision), Since: since, Buckets: buckets}
				apply(r)
				since, buckets = r.Rev, map[int][]byte{}
				continue
			}
			if n, err := strconv.Atoi(strings.TrimPrefix(k, pfx)); err == nil && strings.HasPrefix(k, pfx) {
				buckets[n] = ev.Kv.Value
			}
		}
	}
	return ctx.Err()
}

// Compact implements vault.Compactor.
func (t *table) Compact() error { return t.s.Compact() }

func (t *table) MaxWrites() int { return tableWrites }
func (t *table) Shared() bool   { return true }
func (t *table) Where() string  { return fmt.Sprintf("etcd prefix %q", t.s.prefix) }
func (t *table) Close() error   { return t.s.Close() }
