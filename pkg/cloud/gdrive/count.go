package gdrive

import (
	"net/http"
	"strings"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// requestKind classifies Drive's HTTP requests for
// cloud.CountingTransport (the kinds are described on cloud.Counter): a
// GET with alt=media is a get (a download), a GET of the files collection
// a list (files.list: every name lookup and listing page), any other GET
// or HEAD a stat (files.get of metadata, about); DELETE is a delete, and
// POST, PUT and PATCH (folder creation, uploads and their chunks, updates)
// are puts.
func requestKind(r *http.Request) cloud.Kind {
	switch r.Method {
	case http.MethodGet:
		switch {
		case r.URL.Query().Get("alt") == "media":
			return cloud.KindGet
		case strings.HasSuffix(strings.TrimSuffix(r.URL.Path, "/"), "/files"):
			return cloud.KindList
		}
		return cloud.KindStat
	case http.MethodHead:
		return cloud.KindStat
	case http.MethodDelete:
		return cloud.KindDelete
	}
	return cloud.KindPut
}
