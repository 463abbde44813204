package vault

import (
	"github.com/wabackup/wabackup/pkg/opaque"
	bolt "go.etcd.io/bbolt"
)

// CountRecordsForTest counts credential records (every key but the
// server keys).
func (s *Server) CountRecordsForTest() int {
	n := 0
	bs := s.cfg.Store.(*BoltStore)
	_ = bs.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketName).ForEach(func(k, _ []byte) error {
			if string(k) != string(serverKeysKey) && string(k) != string(padKey) {
				n++
			}
			return nil
		})
	})
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
	r, _, err := s.getRecord(s.storageKey(credID))
	if err != nil || r == nil {
		panic("no record")
	}
	return r.Record
}
