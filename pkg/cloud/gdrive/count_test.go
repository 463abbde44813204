package gdrive

import (
	"net/http"
	"testing"

	"github.com/wabackup/wabackup/pkg/cloud"
)

func TestRequestKind(t *testing.T) {
	for _, tc := range []struct {
		method, url string
		want        cloud.Kind
	}{
		{"GET", "https://www.googleapis.com/drive/v3/files?alt=json&q=name+%3D+%27config%27&spaces=appDataFolder", cloud.KindList},
		{"GET", "http://127.0.0.1:8080/drive/v3/files/?pageToken=x", cloud.KindList},
		{"GET", "https://www.googleapis.com/drive/v3/files/1AbC?alt=media", cloud.KindGet},
		{"GET", "https://www.googleapis.com/drive/v3/files/1AbC?alt=json&fields=id", cloud.KindStat},
		{"GET", "https://www.googleapis.com/drive/v3/about?fields=user", cloud.KindStat},
		{"POST", "https://www.googleapis.com/drive/v3/files?alt=json", cloud.KindPut},
		{"POST", "https://www.googleapis.com/upload/drive/v3/files?uploadType=multipart", cloud.KindPut},
		{"POST", "https://www.googleapis.com/upload/drive/v3/files?uploadType=resumable", cloud.KindPut},
		{"PUT", "https://www.googleapis.com/upload/drive/v3/files?uploadType=resumable&upload_id=x", cloud.KindPut},
		{"PATCH", "https://www.googleapis.com/drive/v3/files/1AbC", cloud.KindPut},
		{"DELETE", "https://www.googleapis.com/drive/v3/files/1AbC", cloud.KindDelete},
	} {
		r, err := http.NewRequest(tc.method, tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := requestKind(r); got != tc.want {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.url, got, tc.want)
		}
	}
}
