package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/wabackup/wabackup/pkg/keys"
	"github.com/wabackup/wabackup/pkg/opaque"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/api"
	"github.com/wabackup/wabackup/pkg/vault/vaulttest"
	"github.com/wabackup/wabackup/pkg/vaultclient"
)

// Issue 23, section 4: the hostile-store suite for the vault's storage
// on bbolt (docs/VAULT.md, "Rollback", "The hostile-store suite"; the
// etcd variant is in pkg/vault/etcdstore).
//
// A vault (v1 and realm API) holds five users: alice and bob with records
// and a few wrong guesses counted, carol whose records guessing destroyed
// (a v1 tombstone, a NoGuesses realm record), dave who deleted his, and
// eve, an unknown credential whose v1 guesses are counted in a fake
// entry. Beside it, another vault on the same sealer. Every object the
// vault keeps in vault.db — values (server keys, realm id, records of
// every kind) and key table (id, root, epoch key id, buckets, groups) —
// is mutated as a writer of the file can without the HSM (a byte flipped
// in its header, its ciphertext or its tag, truncated, emptied, deleted,
// swapped with another user's or another vault's, put back from a copy
// taken before the guesses, copied under another user's key), the vault
// restarted on it, and then every user asks status, tries a wrong
// password and the right one, over v1 and the realm API. Each row's
// class:
//
//   - refuses to start: opening the store or the vault fails with one
//     line, and the current vault.db put back opens again (the refusal
//     destroyed nothing);
//   - refuses the users' requests: the users named get errors (500), no
//     KE2 from their record, no realm evaluation; every other user is
//     served as the true history says;
//   - serves: every user is served as the true history says;
//   - another vault: the vault starts with another key (a new, empty
//     vault; another vault's file), and clients pinned to this one refuse
//     it before asking anything.
//
// And in every row, whatever its class: no status shows more attempts
// left than the true history allows, each KE2 from a real record and each
// realm evaluation is a guess counted (the status after shows it), a
// destroyed record never opens, a record is never answered as a wrong
// password while the true history has it, and the other vault on the
// same sealer still opens.
//
// The file sealer runs every row (its epoch keys and records are files,
// so the world is put back between rows, HSM state included); SoftHSM2
// runs the rows marked hsm, each on a world of its own. Rows that other
// tests assert already are listed with that test and not run again:
// TestRollbackGivesNoGuesses (a v1 record, and every value at once, put
// back from before 4 wrong guesses; the whole older vault.db),
// TestDestroyedRecordGoneFromBackups (a destroyed record put back from
// before), TestRealmRollbackGivesNoGuesses (a realm record put back from
// before 4 wrong guesses), TestPreUpgradeCopyGivesNoGuesses (a vault.db
// from before the key table upgrade; the key table removed but its id,
// the values from before the upgrade).

type hostileClass string

const (
	classStart    hostileClass = "refuses to start"
	classRequests hostileClass = "refuses the users' requests"
	classServes   hostileClass = "serves, no guess back"
	classNewVault hostileClass = "starts as another vault: pinned clients refuse"
	classCovered  hostileClass = "covered by another test"
)

// The mutations of one stored object.
const (
	mutFlipHeader = "flip a header byte"
	mutFlipBody   = "flip a ciphertext byte"
	mutFlipTag    = "flip a tag byte"
	mutTruncate   = "truncate to half"
	mutEmpty      = "empty"
	mutDelete     = "delete"
	mutSwap       = "swap with another user's, slot's or vault's"
	mutReplay     = "put back the earlier copy"
	mutElsewhere  = "copy under another user's key"
)

var hostileMutations = []string{mutFlipHeader, mutFlipBody, mutFlipTag, mutTruncate, mutEmpty, mutDelete, mutSwap, mutReplay, mutElsewhere}

// objRef names a key of vault.db: a bucket ("vault": the values;
// "key-table": the key table) and a key in it; other: read from the other
// vault's file.
type objRef struct {
	bucket, key string
	other       bool
}

func valueKey(k []byte) objRef { return objRef{bucket: "vault", key: string(k)} }
func tableKey(k string) objRef { return objRef{bucket: "key-table", key: k} }
func tableBlob(n int) objRef {
	return tableKey(string(binary.BigEndian.AppendUint16([]byte("b/"), uint16(n))))
}
func (o objRef) ofOther() objRef { o.other = true; return o }

// tableBucket is the key table bucket of a storage key (docs/VAULT.md,
// "Rollback"); its group's blob is 1024 + bucket / 16.
func tableBucket(key []byte) int {
	h := sha256.Sum256(key)
	return int(binary.BigEndian.Uint16(h[:]) % 1024)
}

func groupOf(bucket int) int { return 1024 + bucket/16 }

// hostileKind is one kind of stored object, with the class of each
// mutation of it.
type hostileKind struct {
	name string
	at   func(w *hostileWorld) objRef
	// partner is the object of the same kind a swap exchanges it with:
	// another user's, another slot's, or (other) the other vault's, which
	// is copied in.
	partner func(w *hostileWorld) objRef
	// elsewhere is a key the value is copied to: one the key table has no
	// slot for (a user without that record).
	elsewhere func(w *hostileWorld) objRef
	// tamper is the class of a change that makes the object not open;
	// refused the users it refuses (swap: also partnerUsers).
	tamper       hostileClass
	refused      []string
	partnerUsers []string
	except       map[string]hostileClass
	covered      map[string]string
	skip         map[string]string // mutations that do not apply, and why
	notes        map[string]string // why a mutation has its class, where not plain
	hsm          []string          // mutations also run on SoftHSM2
	// replay, if set, is mutReplay for a kind with no current value
	replay func(t *testing.T, w *hostileWorld)
}

type hostileRow struct {
	kind, mutation string
	want           hostileClass
	refused        []string
	covered, why   string
	note           string
	hsm            bool
	mutate         func(t *testing.T, w *hostileWorld)
}

func boltKinds() []hostileKind {
	user := func(name string, v1 bool) func(w *hostileWorld) objRef {
		return func(w *hostileWorld) objRef {
			u := w.user(name)
			if v1 {
				return valueKey(u.v1Key)
			}
			return valueKey(u.realmKey)
		}
	}
	writtenOnce := map[string]string{mutReplay: "written once, at the first start: the earlier copy is the current one",
		mutElsewhere: "a value under a key the table has no slot for is not read"}
	const otherTable = "before the fix of issue 23 §4, the open destroyed every epoch key of the table the id names but the one it opened: the other vault's"
	return []hostileKind{
		{name: "server keys (vault/server-keys)", at: func(*hostileWorld) objRef { return valueKey([]byte("server-keys")) },
			partner: func(*hostileWorld) objRef { return valueKey([]byte("server-keys")).ofOther() }, elsewhere: user("dave", true),
			tamper: classStart, except: map[string]hostileClass{mutReplay: classServes, mutElsewhere: classServes}, notes: writtenOnce},
		{name: "realm id (vault/realm-id)", at: func(*hostileWorld) objRef { return valueKey([]byte("realm-id")) },
			partner: func(*hostileWorld) objRef { return valueKey([]byte("realm-id")).ofOther() }, elsewhere: user("dave", false),
			tamper: classStart, except: map[string]hostileClass{mutReplay: classServes, mutElsewhere: classServes}, notes: writtenOnce},
		{name: "v1 record (alice: 4 wrong guesses counted)", at: user("alice", true), partner: user("bob", true), elsewhere: user("dave", true),
			tamper: classRequests, refused: []string{"alice/v1"}, partnerUsers: []string{"bob/v1"},
			except:  map[string]hostileClass{mutElsewhere: classServes},
			covered: map[string]string{mutReplay: "TestRollbackGivesNoGuesses"}, hsm: []string{mutFlipTag}},
		{name: "v1 tombstone (carol: destroyed by 10 wrong guesses)", at: user("carol", true), partner: user("eve", true), elsewhere: user("dave", true),
			tamper: classRequests, refused: []string{"carol/v1"}, partnerUsers: []string{"eve/v1"},
			except:  map[string]hostileClass{mutElsewhere: classServes},
			covered: map[string]string{mutReplay: "TestDestroyedRecordGoneFromBackups"}},
		{name: "v1 fake entry (eve: unknown credential, 3 guesses counted)", at: user("eve", true), partner: user("carol", true), elsewhere: user("dave", true),
			tamper: classRequests, refused: []string{"eve/v1"}, partnerUsers: []string{"carol/v1"},
			except: map[string]hostileClass{mutElsewhere: classServes}},
		{name: "realm record (alice: 4 wrong guesses counted)", at: user("alice", false), partner: user("bob", false), elsewhere: user("dave", false),
			tamper: classRequests, refused: []string{"alice/realm"}, partnerUsers: []string{"bob/realm"},
			except:  map[string]hostileClass{mutElsewhere: classServes},
			covered: map[string]string{mutReplay: "TestRealmRollbackGivesNoGuesses"}, hsm: []string{mutSwap}},
		{name: "realm record (carol: NoGuesses)", at: user("carol", false), partner: user("alice", false), elsewhere: user("dave", false),
			tamper: classRequests, refused: []string{"carol/realm"}, partnerUsers: []string{"alice/realm"},
			except: map[string]hostileClass{mutElsewhere: classServes}},
		{name: "deleted records (dave's v1 entry and realm record, gone from the table)", at: user("dave", true),
			tamper: classServes, notes: map[string]string{mutReplay: "values under keys the table has no slot for are not read: dave stays deleted"},
			replay: func(t *testing.T, w *hostileWorld) {
				u := w.user("dave")
				w.update(t, func(tx *bolt.Tx) error {
					for _, key := range [][]byte{u.v1Key, u.realmKey} {
						if err := tx.Bucket([]byte("vault")).Put(key, w.s0["vault"][string(key)]); err != nil {
							return err
						}
					}
					return nil
				})
			},
			skip: map[string]string{
				mutFlipHeader: "no value", mutFlipBody: "no value", mutFlipTag: "no value", mutTruncate: "no value",
				mutEmpty: "no value", mutDelete: "no value", mutSwap: "no value", mutElsewhere: "no value"}},
		{name: "key table id (key-table/id)", at: func(*hostileWorld) objRef { return tableKey("id") },
			partner: func(*hostileWorld) objRef { return tableKey("id").ofOther() },
			tamper:  classStart, except: map[string]hostileClass{mutReplay: classServes},
			notes: map[string]string{mutSwap: otherTable + " (it no longer opened)", mutFlipHeader: "the root's epoch key is not of the table the id names (issue 23 §4 fix; the vault served before)",
				mutDelete: "the open writes a new id, then refuses: the root's epoch key is not of that table (issue 23 §4 fix; the vault served before)", mutReplay: "written once"},
			skip: map[string]string{mutElsewhere: "one per file"}, hsm: []string{mutSwap}},
		{name: "key table root (key-table/root)", at: func(*hostileWorld) objRef { return tableKey("root") },
			partner: func(*hostileWorld) objRef { return tableKey("root").ofOther() },
			tamper:  classStart, skip: map[string]string{mutElsewhere: "one per file"},
			notes: map[string]string{mutEmpty: "an empty root is no root; with the table's id kept and made, refused (issue 23 §4 fix; a new, empty vault started before)",
				mutDelete: "no root and the values there: taken for a copy from before the upgrade"}},
		{name: "root's epoch key id (key-table/epoch)", at: func(*hostileWorld) objRef { return tableKey("epoch") },
			partner: func(*hostileWorld) objRef { return tableKey("epoch").ofOther() },
			tamper:  classStart, except: map[string]hostileClass{mutDelete: classServes, mutEmpty: classServes},
			notes: map[string]string{mutDelete: "the table's epoch keys are tried: the current one opens the root", mutEmpty: "as deleted"},
			skip:  map[string]string{mutElsewhere: "one per file"}, hsm: []string{mutDelete}},
		{name: "key table bucket (alice's v1 record's)", at: func(w *hostileWorld) objRef { return tableBlob(tableBucket(w.user("alice").v1Key)) },
			partner: func(w *hostileWorld) objRef { return tableBlob(w.otherBucket) },
			tamper:  classStart, skip: map[string]string{mutElsewhere: "see the rows below"}},
		{name: "key table group (of that bucket)", at: func(w *hostileWorld) objRef { return tableBlob(groupOf(tableBucket(w.user("alice").v1Key))) },
			partner: func(w *hostileWorld) objRef { return tableBlob(w.otherGroup) },
			tamper:  classStart, skip: map[string]string{mutElsewhere: "see the rows below"}},
	}
}

func hostileRows() []hostileRow {
	var rows []hostileRow
	for _, k := range boltKinds() {
		for _, m := range hostileMutations {
			r := hostileRow{kind: k.name, mutation: m, want: k.tamper, refused: k.refused, covered: k.covered[m], why: k.skip[m], note: k.notes[m], hsm: slices.Contains(k.hsm, m)}
			if c, ok := k.except[m]; ok {
				r.want = c
			}
			if r.want != classRequests {
				r.refused = nil
			} else if m == mutSwap {
				r.refused = append(slices.Clone(r.refused), k.partnerUsers...)
			}
			if m == mutReplay && k.replay != nil {
				r.mutate = k.replay
			} else {
				r.mutate = func(t *testing.T, w *hostileWorld) { w.mutateObject(t, k, m) }
			}
			rows = append(rows, r)
		}
	}
	return append(rows, []hostileRow{
		{kind: "(nothing)", mutation: "(the current storage: the control)", want: classServes, mutate: func(*testing.T, *hostileWorld) {}},
		{kind: "key table: root, epoch key id, groups and buckets", mutation: "put back the earlier copy (the values current)", want: classStart,
			mutate: func(t *testing.T, w *hostileWorld) { w.replaceTable(t, w.s0, false) }},
		{kind: "key table: root, epoch key id, groups and buckets", mutation: "the other vault's (this one's id and values kept)", want: classStart, hsm: true,
			note:   "before the fix of issue 23 §4, the open destroyed this vault's current epoch key (its storage never opened again) and then refused",
			mutate: func(t *testing.T, w *hostileWorld) { w.replaceTable(t, w.other, false) }},
		{kind: "key table: id, root, epoch key id, groups and buckets", mutation: "the other vault's (this one's values kept)", want: classStart,
			mutate: func(t *testing.T, w *hostileWorld) { w.replaceTable(t, w.other, true) }},
		{kind: "key table bucket the table has no key for", mutation: "added (random bytes)", want: classServes,
			mutate: func(t *testing.T, w *hostileWorld) {
				w.update(t, func(tx *bolt.Tx) error {
					return tx.Bucket([]byte("key-table")).Put([]byte(tableBlob(w.emptyBucket).key), randomBytes(200))
				})
			}},
		{kind: "values bucket's sequence (the plain store's version floor)", mutation: "set to 0", want: classServes,
			mutate: func(t *testing.T, w *hostileWorld) {
				w.update(t, func(tx *bolt.Tx) error { return tx.Bucket([]byte("vault")).SetSequence(0) })
			}},
		{kind: "a bbolt bucket the vault does not use", mutation: "added", want: classServes,
			mutate: func(t *testing.T, w *hostileWorld) {
				w.update(t, func(tx *bolt.Tx) error {
					b, err := tx.CreateBucket([]byte("stray"))
					if err != nil {
						return err
					}
					return b.Put([]byte("k"), []byte("v"))
				})
			}},
		{kind: "key table root and every value", mutation: "deleted (the table's id kept)", want: classStart, hsm: true,
			note: "before the fix of issue 23 §4, a new, empty vault started under the same table id, silently (its next open destroyed the real table's epoch key)",
			mutate: func(t *testing.T, w *hostileWorld) {
				w.update(t, func(tx *bolt.Tx) error {
					if err := tx.DeleteBucket([]byte("vault")); err != nil {
						return err
					}
					if _, err := tx.CreateBucket([]byte("vault")); err != nil {
						return err
					}
					return tx.Bucket([]byte("key-table")).Delete([]byte("root"))
				})
			}},
		{kind: "whole vault.db", mutation: "emptied (a new file)", want: classNewVault,
			mutate: func(t *testing.T, w *hostileWorld) {
				if err := os.Remove(w.db); err != nil {
					t.Fatal(err)
				}
			}},
		{kind: "whole vault.db", mutation: "the other vault's, on the same sealer", want: classNewVault,
			note:   "it opens: two vaults on one sealing key can open each other's files; a client that pins nothing would be served the other vault's records with counters of their own (docs/VAULT.md, The hostile-store suite)",
			mutate: func(t *testing.T, w *hostileWorld) { copyFile(t, w.otherDB, w.db) }},
		{kind: "whole vault.db", mutation: "put back the earlier copy", want: classCovered, covered: "TestRollbackGivesNoGuesses"},
		{kind: "every value", mutation: "put back the earlier copies", want: classCovered, covered: "TestRollbackGivesNoGuesses"},
		{kind: "whole vault.db", mutation: "a copy from before the key table upgrade", want: classCovered, covered: "TestPreUpgradeCopyGivesNoGuesses"},
		{kind: "key table", mutation: "removed but its id, the values from before the upgrade", want: classCovered, covered: "TestPreUpgradeCopyGivesNoGuesses"},
	}...)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// hostileUser is one user of the world, with the storage keys of its v1
// entry and realm record.
type hostileUser struct {
	name            string
	cred            []byte
	pw              string // "": no registration (eve)
	secret, rsecret []byte
	v1Key, realmKey []byte
}

// userModel is a user's true history: what the vault must answer.
type userModel struct {
	v1Real    bool // a v1 record (else a fake entry, a tombstone or nothing)
	v1Left    int
	realm     string // api.RealmRegistered, RealmNoGuesses, RealmNotRegistered
	realmLeft int
}

type boltSnap map[string]map[string][]byte

type hostileWorld struct {
	dir, db, otherDB string
	sealer           ratchetSealer
	a                *testRealm
	fp               string
	rc               threshold.RealmConfig
	users            []*hostileUser
	model            map[string]userModel // after the guesses
	// s0: vault.db after the registrations (the earlier copy); s1: after
	// the guesses (the current one); other: the other vault's file.
	s0, s1, other boltSnap
	s1file        []byte
	s1epoch       map[string][]byte // the file sealer's epoch directory with s1 (nil: SoftHSM2)
	// buckets and groups used by the rows: another non-empty bucket and
	// group than alice's, and a bucket the table has no key for
	otherBucket, otherGroup, emptyBucket int
	// guessesBack counts the answers that gave a guess back
	guessesBack int
}

func (w *hostileWorld) user(name string) *hostileUser {
	for _, u := range w.users {
		if u.name == name {
			return u
		}
	}
	panic("no user " + name)
}

func readBolt(t *testing.T, path string) boltSnap {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	snap := boltSnap{}
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			m := map[string][]byte{}
			snap[string(name)] = m
			return b.ForEach(func(k, v []byte) error {
				if v != nil {
					m[string(k)] = bytes.Clone(v)
				}
				return nil
			})
		})
	}); err != nil {
		t.Fatal(err)
	}
	return snap
}

func (w *hostileWorld) update(t *testing.T, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(w.db, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func (w *hostileWorld) v1Client(t *testing.T) *vaultclient.Client {
	t.Helper()
	c, err := vaultclient.New(w.a.env.ts.URL, vaultclient.Options{HTTPClient: w.a.env.ts.Client(), KSF: opaque.IdentityKSF{}, PinFile: "-", Pin: w.fp})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// realmClient is a client of the one realm A, pinned to its key and id.
func (w *hostileWorld) realmClient(t *testing.T, u *hostileUser) (*threshold.Client, *vaulttest.Realm) {
	t.Helper()
	tr := w.a.transport(u.cred, nil)
	c, err := threshold.NewClient(threshold.Config{Threshold: 1, KDF: realmKDF, UserInfo: u.cred, Realms: []threshold.RealmConfig{w.rc}}, []threshold.Realm{tr})
	if err != nil {
		t.Fatal(err)
	}
	return c, tr
}

// start runs the vault (realm A) and pins its channel key.
func (w *hostileWorld) start(t *testing.T) {
	t.Helper()
	if err := w.a.start(t); err != nil {
		t.Fatal(err)
	}
	w.a.replicas[0].Key = w.rc.PublicKey
}

// buildHostileWorld makes the world in dir, sealed and anchored by sealer.
func buildHostileWorld(t *testing.T, dir string, sealer ratchetSealer, fileSealer bool) *hostileWorld {
	t.Helper()
	ctx := context.Background()
	w := &hostileWorld{dir: dir, db: filepath.Join(dir, "vault.db"), otherDB: filepath.Join(dir, "other.db"), sealer: sealer}

	// Another vault on the same sealer (a staging vault on the production
	// token, say), with a record.
	ost, err := vault.OpenRatchet(w.otherDB, sealer)
	if err != nil {
		t.Fatal(err)
	}
	oe := newEnvStore(t, vault.Config{MaxGuesses: realmGuesses, Sealer: sealer}, ost)
	if _, _, err := oe.client(t).Register(ctx, api.CredentialID("hostile-other", ""), []byte("pw"), secret32(t), 0); err != nil {
		t.Fatal(err)
	}
	oe.ts.Close()
	oe.srv.Close()
	ost.Close()
	w.other = readBolt(t, w.otherDB)

	w.a = startBoltRealm(t, "A", dir, sealer)
	w.fp = w.a.servers[0].Fingerprint()
	if w.rc, err = w.a.replicas[0].RealmConfig(ctx); err != nil {
		t.Fatal(err)
	}
	w.a.replicas[0].Key = w.rc.PublicKey
	for _, name := range []string{"alice", "bob", "carol", "dave", "eve"} {
		u := &hostileUser{name: name, cred: api.CredentialID("hostile-"+name, "")}
		u.v1Key, u.realmKey = w.a.servers[0].StorageKeyForTest(u.cred), w.a.servers[0].RealmKeyForTest(u.cred)
		w.users = append(w.users, u)
		if name == "eve" {
			continue
		}
		u.pw, u.secret, u.rsecret = "right "+name, secret32(t), secret32(t)
		if _, _, err := w.v1Client(t).Register(ctx, u.cred, []byte(u.pw), u.secret, 0); err != nil {
			t.Fatal(err)
		}
		rc, _ := w.realmClient(t, u)
		if err := rc.Register(ctx, []byte(u.pw), u.rsecret, realmGuesses); err != nil {
			t.Fatal(err)
		}
	}
	w.a.stop()
	w.s0 = readBolt(t, w.db)

	w.start(t)
	c := w.v1Client(t)
	wrong := func(u *hostileUser, v1, realm int) {
		for range v1 {
			if _, err := c.Recover(ctx, u.cred, []byte("wrong")); !errors.Is(err, keys.ErrWrongKey) {
				t.Fatalf("%s: v1 wrong guess: %v", u.name, err)
			}
		}
		rc, _ := w.realmClient(t, u)
		for k := range realm {
			if _, err := rc.Recover(ctx, []byte("wrong")); !errors.Is(err, threshold.ErrWrongPassword) && (k < realmGuesses || !errors.Is(err, threshold.ErrNoGuesses)) {
				t.Fatalf("%s: realm wrong guess %d: %v", u.name, k+1, err)
			}
		}
	}
	wrong(w.user("alice"), 4, 4)
	wrong(w.user("bob"), 2, 2)
	wrong(w.user("carol"), realmGuesses, realmGuesses+1) // the last recovery finds NoGuesses
	wrong(w.user("eve"), 3, 0)
	dave := w.user("dave")
	if err := c.Delete(ctx, dave.cred, []byte(dave.pw)); err != nil {
		t.Fatal(err)
	}
	rc, _ := w.realmClient(t, dave)
	if err := rc.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	w.a.stop()
	w.s1 = readBolt(t, w.db)
	if w.s1file, err = os.ReadFile(w.db); err != nil {
		t.Fatal(err)
	}
	if fileSealer {
		w.s1epoch = readDir(t, filepath.Join(dir, "epoch"))
	}
	w.model = map[string]userModel{
		"alice": {v1Real: true, v1Left: 6, realm: api.RealmRegistered, realmLeft: 6},
		"bob":   {v1Real: true, v1Left: 8, realm: api.RealmRegistered, realmLeft: 8},
		"carol": {v1Left: 0, realm: api.RealmNoGuesses},
		"dave":  {v1Left: realmGuesses, realm: api.RealmNotRegistered},
		"eve":   {v1Left: realmGuesses - 3, realm: api.RealmNotRegistered},
	}

	// Every object the rows mutate is where they look for it.
	vals, table := w.s1["vault"], w.s1["key-table"]
	for _, k := range []string{"server-keys", "realm-id", string(w.user("alice").v1Key), string(w.user("bob").v1Key), string(w.user("carol").v1Key),
		string(w.user("eve").v1Key), string(w.user("alice").realmKey), string(w.user("bob").realmKey), string(w.user("carol").realmKey)} {
		if vals[k] == nil {
			t.Fatalf("no value %x in vault.db", k)
		}
	}
	for _, u := range []*hostileUser{dave, w.user("eve")} {
		if vals[string(u.realmKey)] != nil {
			t.Fatalf("%s has a realm record", u.name)
		}
	}
	if vals[string(dave.v1Key)] != nil || w.s0["vault"][string(dave.v1Key)] == nil || w.s0["vault"][string(dave.realmKey)] == nil {
		t.Fatal("dave's records are not as the rows need")
	}
	ab := tableBucket(w.user("alice").v1Key)
	if table[tableBlob(ab).key] == nil || bytes.Equal(table[tableBlob(ab).key], w.s0["key-table"][tableBlob(ab).key]) {
		t.Fatal("alice's bucket is not in the table, or did not change since the earlier copy")
	}
	w.otherBucket, w.otherGroup, w.emptyBucket = -1, -1, -1
	for n := range 1024 + 64 {
		switch b := table[tableBlob(n).key]; {
		case b == nil && n < 1024 && w.emptyBucket < 0:
			w.emptyBucket = n
		case b != nil && n < 1024 && n != ab && w.otherBucket < 0:
			w.otherBucket = n
		case b != nil && n >= 1024 && n != groupOf(ab) && w.otherGroup < 0:
			w.otherGroup = n
		}
	}
	if w.otherBucket < 0 || w.otherGroup < 0 || w.emptyBucket < 0 {
		t.Fatalf("buckets for the rows: %d %d %d", w.otherBucket, w.otherGroup, w.emptyBucket)
	}
	return w
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, de := range des {
		if m[de.Name()], err = os.ReadFile(filepath.Join(dir, de.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// reset puts the world back as it was after the guesses: vault.db, and
// the file sealer's epoch keys and records (the HSM's state).
func (w *hostileWorld) reset(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(w.db, w.s1file, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(w.dir, "epoch")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range w.s1epoch {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// mutateObject applies mutation m to kind k's object in vault.db.
func (w *hostileWorld) mutateObject(t *testing.T, k hostileKind, m string) {
	t.Helper()
	o := k.at(w)
	w.update(t, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(o.bucket))
		v := bytes.Clone(b.Get([]byte(o.key)))
		if v == nil {
			return fmt.Errorf("no %s/%x to mutate", o.bucket, o.key)
		}
		put := func(v []byte) error { return b.Put([]byte(o.key), v) }
		switch m {
		case mutFlipHeader:
			v[0] ^= 0x01
			return put(v)
		case mutFlipBody:
			v[len(v)/2] ^= 0x01
			return put(v)
		case mutFlipTag:
			v[len(v)-1] ^= 0x01
			return put(v)
		case mutTruncate:
			return put(v[:len(v)/2])
		case mutEmpty:
			return put([]byte{})
		case mutDelete:
			return b.Delete([]byte(o.key))
		case mutSwap:
			p := k.partner(w)
			if p.other {
				pv := w.other[p.bucket][p.key]
				if pv == nil {
					return fmt.Errorf("the other vault has no %s/%x", p.bucket, p.key)
				}
				return put(pv)
			}
			pb := tx.Bucket([]byte(p.bucket))
			pv := bytes.Clone(pb.Get([]byte(p.key)))
			if pv == nil {
				return fmt.Errorf("no %s/%x to swap with", p.bucket, p.key)
			}
			if err := pb.Put([]byte(p.key), v); err != nil {
				return err
			}
			return put(pv)
		case mutReplay:
			if old := w.s0[o.bucket][o.key]; old != nil {
				return put(old)
			}
			return b.Delete([]byte(o.key)) // the earlier copy had none
		case mutElsewhere:
			e := k.elsewhere(w)
			return tx.Bucket([]byte(e.bucket)).Put([]byte(e.key), v)
		}
		return fmt.Errorf("mutation %q", m)
	})
}

// replaceTable puts snap's key table (root, epoch key id, groups and
// buckets; and its id if withID) in place of vault.db's.
func (w *hostileWorld) replaceTable(t *testing.T, snap boltSnap, withID bool) {
	t.Helper()
	w.update(t, func(tx *bolt.Tx) error {
		id := bytes.Clone(tx.Bucket([]byte("key-table")).Get([]byte("id")))
		if err := tx.DeleteBucket([]byte("key-table")); err != nil {
			return err
		}
		kt, err := tx.CreateBucket([]byte("key-table"))
		if err != nil {
			return err
		}
		for k, v := range snap["key-table"] {
			if err := kt.Put([]byte(k), v); err != nil {
				return err
			}
		}
		if withID {
			return nil
		}
		return kt.Put([]byte("id"), id)
	})
}

// probe opens the store and the vault as a start does, and closes them.
func (w *hostileWorld) probe(t *testing.T) error {
	st, err := vault.OpenRatchet(w.db, w.sealer)
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := vault.New(vault.Config{Store: st, Sealer: w.sealer, MaxGuesses: realmGuesses, Logf: t.Logf})
	if err != nil {
		return err
	}
	srv.Close()
	return nil
}

// otherOpens checks that the other vault on the sealer still opens.
func (w *hostileWorld) otherOpens() error {
	st, err := vault.OpenRatchet(w.otherDB, w.sealer)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, ver, err := st.Get([]byte("server-keys")); err != nil || ver == 0 {
		return fmt.Errorf("its server keys: version %d, %v", ver, err)
	}
	return nil
}

type hostileOutcome struct {
	class   hostileClass
	refused []string
	detail  string
}

// exercise starts the vault on the (mutated) storage and has every user
// ask status, try a wrong password and the right one, over v1 and the
// realm API; it checks each answer against the true history and returns
// the class it saw.
func (w *hostileWorld) exercise(t *testing.T) hostileOutcome {
	t.Helper()
	if err := w.probe(t); err != nil {
		msg := err.Error()
		if strings.Contains(msg, "\n") || msg == "" {
			t.Errorf("refused to start with %q: not one line", msg)
		}
		w.wantCurrentOpens(t, "after the refusal")
		return hostileOutcome{class: classStart, detail: msg}
	}
	w.start(t)
	defer w.a.stop()
	out := hostileOutcome{class: classServes}
	if fp := w.a.servers[0].Fingerprint(); fp != w.fp {
		out.class, out.detail = classNewVault, "fingerprint "+fp
	}
	model := map[string]userModel{}
	for name, m := range w.model {
		model[name] = m
	}
	for _, u := range w.users {
		m := model[u.name]
		if w.v1Ops(t, u, &m) {
			out.refused = append(out.refused, u.name+"/v1")
		}
		if w.realmOps(t, u, &m) {
			out.refused = append(out.refused, u.name+"/realm")
		}
		model[u.name] = m
	}
	// Nobody's requests moved another user's counters.
	for _, u := range w.users {
		m := model[u.name]
		if !slices.Contains(out.refused, u.name+"/v1") {
			w.v1Status(t, u, &m, w.v1Client(t), "at the end")
		}
		if !slices.Contains(out.refused, u.name+"/realm") {
			tr := w.a.transport(u.cred, nil)
			w.realmStatus(t, u, &m, tr, "at the end")
		}
	}
	if out.class == classServes && len(out.refused) > 0 {
		out.class = classRequests
	}
	if out.class == classNewVault && len(out.refused) != 2*len(w.users) {
		t.Errorf("another vault: only %v refused, the pinned clients should refuse every request", out.refused)
	}
	return out
}

// wantCurrentOpens puts the current vault.db back (the HSM as it is) and
// checks that the vault opens on it.
func (w *hostileWorld) wantCurrentOpens(t *testing.T, when string) {
	t.Helper()
	if err := os.WriteFile(w.db, w.s1file, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.probe(t); err != nil {
		t.Errorf("%s, the current vault.db put back does not open: %v", when, err)
	}
}

func (w *hostileWorld) v1Status(t *testing.T, u *hostileUser, m *userModel, c *vaultclient.Client, when string) (served bool) {
	t.Helper()
	left, _, err := c.Status(context.Background(), u.cred)
	if err != nil {
		return false
	}
	if left > m.v1Left {
		w.guessesBack++
		t.Errorf("%s v1 %s: status %d attempts left, the true history %d: a guess came back", u.name, when, left, m.v1Left)
	} else if left != m.v1Left {
		t.Errorf("%s v1 %s: status %d attempts left, the true history %d", u.name, when, left, m.v1Left)
	}
	return true
}

// v1Ops runs status, a wrong password, status, the right password,
// status for u over v1; refused reports that every request was refused.
func (w *hostileWorld) v1Ops(t *testing.T, u *hostileUser, m *userModel) (refused bool) {
	t.Helper()
	ctx := context.Background()
	c := w.v1Client(t)
	served, refusedN := 0, 0
	status := func(when string) {
		if w.v1Status(t, u, m, c, when) {
			served++
		} else {
			refusedN++
		}
	}
	login := func(pw string, right bool) {
		before := w.a.env.counted.Load()
		got, err := c.Recover(ctx, u.cred, []byte(pw))
		ke2 := w.a.env.counted.Load() - before
		var wp *vaultclient.WrongPasswordError
		switch {
		case err == nil:
			served++
			if !right || !m.v1Real || !bytes.Equal(got, u.secret) {
				w.guessesBack++
				t.Errorf("%s v1: password %q released a secret (the true history: record %v)", u.name, pw, m.v1Real)
			}
			if ke2 != 1 {
				t.Errorf("%s v1: a login with %d KE2s counted", u.name, ke2)
			}
			m.v1Left = realmGuesses
		case errors.As(err, &wp):
			served++
			if m.v1Real {
				if right {
					t.Errorf("%s v1: the right password answered as a wrong one: the record is lost and not reported as an error", u.name)
				}
				if ke2 != 1 {
					t.Errorf("%s v1: a wrong password got %d counted KE2s from the record, want 1", u.name, ke2)
				}
				m.v1Left--
				if m.v1Left == 0 {
					m.v1Real = false
				}
			} else {
				if ke2 != 0 {
					w.guessesBack++
					t.Errorf("%s v1: %d KE2s from a real record the true history does not have", u.name, ke2)
				}
				m.v1Left = max(0, m.v1Left-1)
			}
			if wp.AttemptsLeft > m.v1Left {
				w.guessesBack++
				t.Errorf("%s v1: %d attempts left after a wrong password, the true history %d", u.name, wp.AttemptsLeft, m.v1Left)
			}
		default:
			refusedN++
			if ke2 != 0 {
				t.Errorf("%s v1: refused (%v) after %d KE2s from the record", u.name, err, ke2)
			}
		}
	}
	status("before")
	login("wrong "+u.name, false)
	status("after a wrong password")
	if u.pw != "" {
		login(u.pw, true)
		status("after the right password")
	}
	if served > 0 && refusedN > 0 {
		t.Errorf("%s v1: %d requests refused, %d served", u.name, refusedN, served)
	}
	return refusedN > 0
}

func (w *hostileWorld) realmStatus(t *testing.T, u *hostileUser, m *userModel, tr *vaulttest.Realm, when string) (served bool) {
	t.Helper()
	st, err := tr.Status(context.Background(), 0)
	if err != nil {
		return false
	}
	left := 0
	if m.realm == api.RealmRegistered {
		left = m.realmLeft
	}
	if st.State != m.realm || st.GuessesLeft != left {
		if st.GuessesLeft > left || st.State == api.RealmRegistered && m.realm != api.RealmRegistered {
			w.guessesBack++
		}
		t.Errorf("realm %s %s: status %s with %d left, the true history %s with %d", u.name, when, st.State, st.GuessesLeft, m.realm, left)
	}
	return true
}

// realmOps is v1Ops over the realm API.
func (w *hostileWorld) realmOps(t *testing.T, u *hostileUser, m *userModel) (refused bool) {
	t.Helper()
	ctx := context.Background()
	c, tr := w.realmClient(t, u)
	served, refusedN := 0, 0
	status := func(when string) {
		if w.realmStatus(t, u, m, tr, when) {
			served++
		} else {
			refusedN++
		}
	}
	recover := func(pw string, right bool) {
		before := w.a.evaluated()
		rec, err := c.Recover(ctx, []byte(pw))
		evals := w.a.evaluated() - before
		var we *threshold.WrongPasswordError
		switch {
		case err == nil:
			served++
			if !right || m.realm != api.RealmRegistered || !bytes.Equal(rec.Secret, u.rsecret) {
				w.guessesBack++
				t.Errorf("realm %s: password %q recovered a secret (the true history: %s)", u.name, pw, m.realm)
			}
			if evals != 1 {
				t.Errorf("realm %s: a recovery with %d evaluations", u.name, evals)
			}
			m.realmLeft = realmGuesses
		case errors.As(err, &we):
			served++
			if m.realm != api.RealmRegistered || right {
				t.Errorf("realm %s: %q answered as a wrong password (the true history: %s): a record lost and not reported as an error", u.name, pw, m.realm)
			}
			if evals != 1 {
				t.Errorf("realm %s: a wrong password got %d evaluations, want 1", u.name, evals)
			}
			m.realmLeft--
			if we.GuessesLeft > m.realmLeft {
				w.guessesBack++
				t.Errorf("realm %s: %d guesses left after a wrong password, the true history %d", u.name, we.GuessesLeft, m.realmLeft)
			}
		case errors.Is(err, threshold.ErrNoGuesses), errors.Is(err, threshold.ErrNotRegistered):
			served++
			if want := map[bool]string{true: api.RealmNoGuesses, false: api.RealmNotRegistered}[errors.Is(err, threshold.ErrNoGuesses)]; m.realm != want {
				t.Errorf("realm %s: %v, the true history %s", u.name, err, m.realm)
			}
			if evals != 0 {
				w.guessesBack++
				t.Errorf("realm %s: %d evaluations for a record the true history does not have", u.name, evals)
			}
		default:
			refusedN++
			if evals != 0 {
				t.Errorf("realm %s: refused (%v) after %d evaluations", u.name, err, evals)
			}
		}
	}
	status("before")
	if u.pw == "" { // eve: no realm record; one recovery
		recover("wrong "+u.name, false)
	} else {
		recover("wrong "+u.name, false)
		status("after a wrong password")
		recover(u.pw, true)
		status("after the right password")
	}
	if served > 0 && refusedN > 0 {
		t.Errorf("realm %s: %d requests refused, %d served", u.name, refusedN, served)
	}
	return refusedN > 0
}

// runHostileRow runs one row on w and checks its class.
func runHostileRow(t *testing.T, w *hostileWorld, r hostileRow) hostileOutcome {
	t.Helper()
	r.mutate(t, w)
	out := w.exercise(t)
	if out.class != r.want || out.class != classNewVault && !slices.Equal(sortedCopy(out.refused), sortedCopy(r.refused)) {
		t.Errorf("%s, %s: %s %v (%s), want %s %v", r.kind, r.mutation, out.class, out.refused, out.detail, r.want, r.refused)
	}
	if err := w.otherOpens(); err != nil {
		t.Errorf("%s, %s: the other vault on the same sealer no longer opens: %v", r.kind, r.mutation, err)
	}
	t.Logf("%s, %s: %s %v %s", r.kind, r.mutation, out.class, out.refused, out.detail)
	if r.note != "" {
		t.Logf("  (%s)", r.note)
	}
	return out
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestHostileStorage(t *testing.T) {
	rows := hostileRows()
	counts := map[hostileClass]int{}
	listed, hsmRows := 0, 0
	guessesBack := 0
	t.Run("filekey", func(t *testing.T) {
		dir := t.TempDir()
		w := buildHostileWorld(t, dir, fileRatchet(t, dir), true)
		for _, r := range rows {
			name := r.kind + "/" + r.mutation
			if r.covered != "" {
				counts[classCovered]++
				listed++
				t.Logf("%s: covered by %s", name, r.covered)
				continue
			}
			if r.why != "" {
				continue
			}
			listed++
			t.Run(name, func(t *testing.T) {
				w.reset(t)
				counts[runHostileRow(t, w, r).class]++
			})
		}
		guessesBack += w.guessesBack
	})
	t.Run("softhsm", func(t *testing.T) {
		for _, r := range rows {
			if !r.hsm {
				continue
			}
			hsmRows++
			t.Run(r.kind+"/"+r.mutation, func(t *testing.T) {
				dir := t.TempDir()
				w := buildHostileWorld(t, dir, hsmRatchet(t), false)
				runHostileRow(t, w, r)
				guessesBack += w.guessesBack
			})
		}
	})
	var parts []string
	for _, c := range []hostileClass{classStart, classRequests, classServes, classNewVault, classCovered} {
		parts = append(parts, fmt.Sprintf("%d %s", counts[c], c))
	}
	t.Logf("hostile storage (bbolt): %d rows with the file sealer: %s; %d of them again with SoftHSM2; guesses given back: %d", listed, strings.Join(parts, ", "), hsmRows, guessesBack)
}
