package s3

import (
	"net/http"
	"strings"

	"github.com/wabackup/wabackup/pkg/cloud"
)

// requestKind returns the classifier of bucket's HTTP requests for
// cloud.CountingTransport (the kinds are described on cloud.Counter):
// HEAD is a stat; GET is a list on the bucket itself (ListObjectsV2,
// ListMultipartUploads) or of an upload's parts (?uploadId), a stat for
// the region lookup (?location), and a get of an object otherwise; PUT and
// POST are puts, but for POST ?delete (a multi-object delete); DELETE is a
// delete.
func requestKind(bucket string) func(*http.Request) cloud.Kind {
	return func(r *http.Request) cloud.Kind {
		q := r.URL.Query()
		switch r.Method {
		case http.MethodHead:
			return cloud.KindStat
		case http.MethodGet:
			switch {
			case q.Has("location"):
				return cloud.KindStat
			case objectKey(r, bucket) == "" || q.Has("uploadId"):
				return cloud.KindList
			}
			return cloud.KindGet
		case http.MethodDelete:
			return cloud.KindDelete
		case http.MethodPost:
			if q.Has("delete") {
				return cloud.KindDelete
			}
		}
		return cloud.KindPut
	}
}

// objectKey is the object key r addresses in bucket, "" for the bucket
// itself, with virtual-host (BUCKET.HOST/KEY) and path-style
// (HOST/BUCKET/KEY) addressing alike.
func objectKey(r *http.Request, bucket string) string {
	p := strings.TrimPrefix(r.URL.Path, "/")
	if strings.HasPrefix(r.URL.Hostname(), bucket+".") {
		return p
	}
	rest, ok := strings.CutPrefix(p, bucket)
	if !ok {
		return p
	}
	return strings.TrimPrefix(rest, "/")
}
