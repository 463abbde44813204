// Package gather collects the chat app's data into a consistent, readable
// form for a backup: a transaction-consistent snapshot of the live SQLite
// chat database (SnapshotDB) and a deterministic listing of the media folder
// (Walk). It reads, never writes, the chat app's own files.
package gather
