package vault

import (
	"github.com/wabackup/wabackup/pkg/opaque"
	bolt "go.etcd.io/bbolt"
)

// CountRecordsForTest counts the entries that hold an OPAQUE record.
func (s *Server) CountRecordsForTest() int {
	var keys [][]byte
	bs := s.cfg.Store.(*BoltStore)
	_ = bs.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketName).ForEach(func(k, _ []byte) error {
			if string(k) != string(serverKeysKey) {
				keys = append(keys, append([]byte(nil), k...))
			}
			return nil
		})
	})
	n := 0
	for _, k := range keys {
		if e, _, err := s.getEntry(k); err == nil && e.real() {
			n++
		}
	}
	return n
}

// KeysForTest returns the unsealed server keys.
func (s *Server) KeysForTest() opaque.ServerKeys {
	k, err := loadKeys(s.cfg.Store, s.cfg.Sealer)
	if err != nil {
		panic(err)
	}
	return opaque.ServerKeys{OPRFSeed: k.OPRFSeed, PrivateKey: k.Private, PublicKey: k.Public}
}

// RecordForTest returns the stored OPAQUE record of credID.
func (s *Server) RecordForTest(credID []byte) []byte {
	r, _, err := s.getEntry(s.storageKey(credID))
	if err != nil || !r.real() {
		panic("no record")
	}
	return r.Record
}

// SetFailCommitForTest makes the store's commits fail while f returns true.
func (s *RatchetStore) SetFailCommitForTest(f func() bool) { s.failCommit = f }

// TableIDForTest returns the prefix of the store's epoch key ids.
func (s *RatchetStore) TableIDForTest() []byte { return s.tableID }

// RealmKeyForTest returns the storage key of credID's realm record.
func (s *Server) RealmKeyForTest(credID []byte) []byte { return s.realmKey(credID) }
