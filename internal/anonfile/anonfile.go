// Package anonfile makes files without a name (O_TMPFILE) and gives them
// one once they are complete, so that a process killed while writing
// leaves nothing behind. Where the system has no such files, Open fails
// with errors.ErrUnsupported and callers fall back to named temporaries.
package anonfile
