package archive

import (
	"sync"
	"sync/atomic"
)

// Key epochs (FORMAT.md §2.4). A repository's objects are written under
// the keys of its current epoch (r.keys); those written before a key
// rotation are under an older epoch's keys, which the keyring holds
// (r.old) until rotate --rewrite re-encrypts them. A reader tries the
// current epoch first: an object opens under exactly one epoch's key (AES-
// GCM authentication fails under any other).
type epochState struct {
	old        []*keySet    // older epochs still readable, newest first
	packEpochs sync.Map     // pack ID -> *keySet it opened under (older epochs only)
	oldObjects atomic.Int64 // STREAM objects read that were under an older epoch
}

// readKeys returns the keys of every readable epoch, the current first.
func (r *Repository) readKeys() []*keySet {
	return append([]*keySet{r.keys}, r.epochs.old...)
}

// packKeys returns the epochs to try a pack's blobs with: the one it last
// opened under first.
func (r *Repository) packKeys(id ID) []*keySet {
	if len(r.epochs.old) == 0 {
		return []*keySet{r.keys}
	}
	if k, ok := r.epochs.packEpochs.Load(id); ok {
		ks := []*keySet{k.(*keySet)}
		for _, o := range r.readKeys() {
			if o != k {
				ks = append(ks, o)
			}
		}
		return ks
	}
	return r.readKeys()
}

// notePackEpoch remembers the epoch a pack opened under.
func (r *Repository) notePackEpoch(id ID, k *keySet) {
	if k != r.keys {
		r.epochs.packEpochs.Store(id, k)
	}
}

// parseTrailer decrypts a pack's trailer under whichever epoch wrote it.
func (r *Repository) parseTrailer(id ID, sealed []byte, size int64) ([]blobEntry, error) {
	var first error
	for _, k := range r.packKeys(id) {
		entries, err := k.parseTrailer(id, sealed, size)
		if err == nil {
			r.notePackEpoch(id, k)
			return entries, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}
