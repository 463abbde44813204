package vault

// StorageKeyForTest returns the storage key of credID's v1 entry (the
// hostile-store suite mutates it in the storage).
func (s *Server) StorageKeyForTest(credID []byte) []byte { return s.storageKey(credID) }
