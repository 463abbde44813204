// Package gather collects the chat app's data into a consistent, readable
// form for a backup: the pages of one committed state of the live SQLite
// chat database, checked by SQLite on that same state (DBPages), and a
// deterministic listing of the media folder (Walk). It reads, never writes,
// the chat app's own files.
package gather
