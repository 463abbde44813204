package main

import (
	"net/http/httptest"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct{ api, method, target, want string }{
		{"s3", "GET", "/bucket?list-type=2&prefix=index/", "list"},
		{"s3", "GET", "/bucket/", "list"},
		{"s3", "GET", "/bucket?location=", "list"},
		{"s3", "GET", "/bucket/data/ab/abcd", "get"},
		{"s3", "GET", "/bucket/data/ab/abcd?uploadId=x", "list"},
		{"s3", "HEAD", "/bucket/config", "head"},
		{"s3", "HEAD", "/bucket", "head"},
		{"s3", "PUT", "/bucket/data/ab/abcd", "put"},
		{"s3", "PUT", "/bucket/data/ab/abcd?partNumber=1&uploadId=x", "put"},
		{"s3", "POST", "/bucket/data/ab/abcd?uploads=", "put"},
		{"s3", "POST", "/bucket?delete=", "delete"},
		{"s3", "DELETE", "/bucket/locks/x", "delete"},
		{"drive", "GET", "/drive/v3/files?q=x", "list"},
		{"drive", "GET", "/drive/v3/files/ID?alt=media", "get"},
		{"drive", "GET", "/drive/v3/files/ID?fields=size", "head"},
		{"drive", "GET", "/drive/v3/about?fields=user", "head"},
		{"drive", "POST", "/upload/drive/v3/files?uploadType=resumable", "put"},
		{"drive", "PUT", "/upload/drive/v3/files?uploadType=resumable&upload_id=x", "put"},
		{"drive", "POST", "/drive/v3/files", "put"},
		{"drive", "PATCH", "/drive/v3/files/ID", "put"},
		{"drive", "DELETE", "/drive/v3/files/ID", "delete"},
		{"drive", "POST", "/token", "auth"},
	} {
		r := httptest.NewRequest(c.method, c.target, nil)
		if got := classify(c.api, r); got != c.want {
			t.Errorf("%s %s %s: %s, want %s", c.api, c.method, c.target, got, c.want)
		}
	}
}
