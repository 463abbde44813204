package s3

import (
	"net/http"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
)

func TestRequestKind(t *testing.T) {
	kind := requestKind("chat")
	for _, tc := range []struct {
		method, url string
		want        cloud.Kind
	}{
		{"GET", "http://s3.local:9000/chat?list-type=2&prefix=repo%2Fsnapshots%2F", cloud.KindList},
		{"GET", "http://s3.local:9000/chat/?list-type=2", cloud.KindList},
		{"GET", "https://chat.s3.amazonaws.com/?list-type=2", cloud.KindList},
		{"GET", "http://s3.local:9000/chat?uploads=&prefix=repo%2F", cloud.KindList},
		{"GET", "http://s3.local:9000/chat/repo/data/ab/ab01?uploadId=7", cloud.KindList},
		{"GET", "http://s3.local:9000/chat?location=", cloud.KindStat},
		{"GET", "http://s3.local:9000/chat/repo/data/ab/ab01", cloud.KindGet},
		{"GET", "https://chat.s3.amazonaws.com/repo/config", cloud.KindGet},
		{"GET", "http://s3.local:9000/chat/config", cloud.KindGet},
		{"GET", "https://chat.s3.amazonaws.com/chat", cloud.KindGet}, // an object named like the bucket
		{"HEAD", "http://s3.local:9000/chat/repo/keys/3f2a", cloud.KindStat},
		{"HEAD", "http://s3.local:9000/chat", cloud.KindStat},
		{"PUT", "http://s3.local:9000/chat/repo/data/ab/ab01", cloud.KindPut},
		{"PUT", "http://s3.local:9000/chat/repo/data/ab/ab01?partNumber=2&uploadId=7", cloud.KindPut},
		{"PUT", "http://s3.local:9000/chat", cloud.KindPut},
		{"POST", "http://s3.local:9000/chat/repo/data/ab/ab01?uploads=", cloud.KindPut},
		{"POST", "http://s3.local:9000/chat/repo/data/ab/ab01?uploadId=7", cloud.KindPut},
		{"POST", "http://s3.local:9000/chat?delete=", cloud.KindDelete},
		{"DELETE", "http://s3.local:9000/chat/repo/locks/1", cloud.KindDelete},
		{"DELETE", "http://s3.local:9000/chat/repo/data/ab/ab01?uploadId=7", cloud.KindDelete},
	} {
		r, err := http.NewRequest(tc.method, tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := kind(r); got != tc.want {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.url, got, tc.want)
		}
	}
}
