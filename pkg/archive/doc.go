// Package archive is the wabackup repository: it turns gathered files into
// encrypted, deduplicated packs, indexes and snapshots in a cloud.Store, and
// back. The flow is gather → chunk → compress → encrypt → pack → store, and
// restore runs it backwards. docs/FORMAT.md is the specification this
// package implements; every constant here is named there.
package archive
