package driveemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/oauth2"
	drive "google.golang.org/api/drive/v3"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/wabackup/wabackup/pkg/cloud/gdrive/driveemu"
)

const token = "test-token"

// recorder keeps the raw responses the real client saw.
type recorder struct {
	base http.RoundTripper
	log  []exchange
}

type exchange struct {
	method, url string
	reqHeader   http.Header
	status      int
	header      http.Header
	body        []byte
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	var body []byte
	if req.URL.Query().Get("alt") != "media" {
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.log = append(r.log, exchange{req.Method, req.URL.String(), req.Header.Clone(), resp.StatusCode, resp.Header.Clone(), body})
	return resp, nil
}

func (r *recorder) last(match func(exchange) bool) *exchange {
	for i := len(r.log) - 1; i >= 0; i-- {
		if match(r.log[i]) {
			return &r.log[i]
		}
	}
	return nil
}

func newClient(t *testing.T, s *driveemu.Server) (*drive.Service, *recorder) {
	t.Helper()
	rec := &recorder{base: http.DefaultTransport}
	hc := &http.Client{Transport: &oauth2.Transport{Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token}), Base: rec}}
	svc, err := drive.NewService(context.Background(), option.WithHTTPClient(hc), option.WithEndpoint(s.DriveEndpoint()))
	if err != nil {
		t.Fatal(err)
	}
	return svc, rec
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestRealClientFidelity(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{Token: token})
	svc, rec := newClient(t, s)
	ctx := context.Background()

	folder, err := svc.Files.Create(&drive.File{Name: "repo", MimeType: "application/vnd.google-apps.folder", Parents: []string{"appDataFolder"}}).
		Fields("id,name,mimeType,parents").Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	if folder.Id == "" || len(folder.Parents) != 1 || folder.Parents[0] == "appDataFolder" {
		t.Fatalf("folder = %+v (parents must be the real ID, not the alias)", folder)
	}

	// multipart: data ends within the first chunk
	small := pattern(1000)
	f1, err := svc.Files.Create(&drive.File{Name: "small", Parents: []string{folder.Id}}).
		Media(bytes.NewReader(small), googleapi.ContentType("application/octet-stream"), googleapi.ChunkSize(256<<10)).
		Fields("id,name,size,md5Checksum,modifiedTime").Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	if f1.Size != 1000 {
		t.Fatalf("size = %d", f1.Size)
	}
	ex := rec.last(func(e exchange) bool { return strings.Contains(e.url, "uploadType=multipart") })
	if ex == nil || ex.status != 200 || !bytes.Contains(ex.body, []byte(`"size":"1000"`)) {
		t.Fatalf("multipart exchange: %+v", ex)
	}

	// resumable: 3 chunks, the last one short
	big := pattern(2*(256<<10) + 12345)
	f2, err := svc.Files.Create(&drive.File{Name: "big", Parents: []string{folder.Id}}).
		Media(bytes.NewReader(big), googleapi.ContentType("application/octet-stream"), googleapi.ChunkSize(256<<10)).
		Fields("id,size").Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	if f2.Size != int64(len(big)) {
		t.Fatalf("size = %d", f2.Size)
	}
	start := rec.last(func(e exchange) bool {
		return strings.Contains(e.url, "uploadType=resumable") && !strings.Contains(e.url, "upload_id")
	})
	if start == nil {
		t.Fatal("no resumable start seen")
	}
	loc, err := url.Parse(start.header.Get("Location"))
	if err != nil || !loc.IsAbs() || loc.Host == "" {
		t.Fatalf("Location %q is not absolute", start.header.Get("Location"))
	}
	var chunks []exchange
	for _, e := range rec.log {
		if strings.Contains(e.url, "upload_id=") {
			chunks = append(chunks, e)
		}
	}
	if len(chunks) != 3 {
		t.Fatalf("%d chunk requests, want 3", len(chunks))
	}
	if chunks[0].method != "POST" || chunks[0].reqHeader.Get("Content-Range") != "bytes 0-262143/*" ||
		chunks[0].status != 200 || chunks[0].header.Get("X-Http-Status-Code-Override") != "308" ||
		chunks[0].header.Get("Range") != "bytes=0-262143" {
		t.Fatalf("first chunk: %+v", chunks[0])
	}
	if cr := chunks[2].reqHeader.Get("Content-Range"); cr != fmt.Sprintf("bytes 524288-%d/%d", len(big)-1, len(big)) {
		t.Fatalf("last chunk Content-Range %q", cr)
	}

	// exactly N chunks: the client ends with an empty "bytes */TOTAL"
	exact := pattern(2 * (256 << 10))
	if _, err := svc.Files.Create(&drive.File{Name: "exact", Parents: []string{folder.Id}}).
		Media(bytes.NewReader(exact), googleapi.ContentType("application/octet-stream"), googleapi.ChunkSize(256<<10)).
		Context(ctx).Do(); err != nil {
		t.Fatal(err)
	}
	if e := rec.last(func(e exchange) bool { return strings.Contains(e.url, "upload_id=") }); e.reqHeader.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(exact)) {
		t.Fatalf("final request Content-Range %q", e.reqHeader.Get("Content-Range"))
	}

	// list with q, pages of 2, fields
	for i := 0; i < 5; i++ {
		if _, err := svc.Files.Create(&drive.File{Name: fmt.Sprintf("n%d", i), Parents: []string{folder.Id}}).
			Media(strings.NewReader("x"), googleapi.ContentType("application/octet-stream")).Context(ctx).Do(); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	pages := 0
	err = svc.Files.List().Spaces("appDataFolder").Q(fmt.Sprintf("'%s' in parents and trashed = false", folder.Id)).
		PageSize(2).Fields("nextPageToken, files(id,name,size,modifiedTime)").Pages(ctx, func(l *drive.FileList) error {
		pages++
		for _, f := range l.Files {
			names = append(names, f.Name)
			if f.ModifiedTime == "" {
				t.Errorf("%s: no modifiedTime", f.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 8 || pages != 4 {
		t.Fatalf("listed %v in %d pages", names, pages)
	}
	// name query
	l, err := svc.Files.List().Spaces("appDataFolder").Q(fmt.Sprintf("name = 'big' and '%s' in parents", folder.Id)).Fields("files(id,size)").Do()
	if err != nil || len(l.Files) != 1 || l.Files[0].Id != f2.Id || l.Files[0].Size != int64(len(big)) {
		t.Fatalf("name query: %+v %v", l, err)
	}
	// appdata files are not in the drive space
	l, err = svc.Files.List().Q("name = 'big'").Do()
	if err != nil || len(l.Files) != 0 {
		t.Fatalf("drive space list: %+v %v", l, err)
	}
	// default fields: no size
	l, err = svc.Files.List().Spaces("appDataFolder").Q("name = 'big'").Do()
	if err != nil || len(l.Files) != 1 || l.Files[0].Size != 0 || l.Files[0].Kind != "drive#file" {
		t.Fatalf("default fields: %+v %v", l.Files, err)
	}

	// get media with Range
	call := svc.Files.Get(f2.Id)
	call.Header().Set("Range", "bytes=1000-1999")
	resp, err := call.Context(ctx).Download()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || !bytes.Equal(got, big[1000:2000]) || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-1999/%d", len(big)) {
		t.Fatalf("range get: %d %q %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(got))
	}
	resp, err = svc.Files.Get(f1.Id).Context(ctx).Download()
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, small) {
		t.Fatal("full get differs")
	}
	call = svc.Files.Get(f1.Id)
	call.Header().Set("Range", "bytes=5000-")
	if _, err := call.Download(); !isCode(err, 416) {
		t.Fatalf("unsatisfiable range: %v", err)
	}

	// metadata get and update
	g, err := svc.Files.Get(f1.Id).Fields("id,name,size,parents,spaces,version").Do()
	if err != nil || g.Size != 1000 || g.Spaces[0] != "appDataFolder" || g.Version != 1 {
		t.Fatalf("get: %+v %v", g, err)
	}
	u, err := svc.Files.Update(f1.Id, &drive.File{Name: "renamed", AppProperties: map[string]string{"k": "v"}}).Fields("name,version,appProperties").Do()
	if err != nil || u.Name != "renamed" || u.Version != 2 || u.AppProperties["k"] != "v" {
		t.Fatalf("update: %+v %v", u, err)
	}
	// content updates, single-request and resumable
	for _, content := range [][]byte{pattern(10), pattern(600 << 10)} {
		u, err := svc.Files.Update(f1.Id, &drive.File{}).Media(bytes.NewReader(content), googleapi.ChunkSize(256<<10)).Fields("id,size,md5Checksum").Do()
		if err != nil || u.Id != f1.Id || u.Size != int64(len(content)) {
			t.Fatalf("content update: %+v %v", u, err)
		}
		resp, err := svc.Files.Get(f1.Id).Download()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(got, content) {
			t.Fatal("updated content differs")
		}
	}
	if e := rec.last(func(e exchange) bool { return e.method == "PATCH" && strings.Contains(e.url, "/upload/") }); e == nil || !strings.Contains(e.header.Get("Location"), "/upload/drive/v3/files/"+f1.Id+"?") {
		t.Fatalf("resumable update start: %+v", e)
	}
	l, err = svc.Files.List().Spaces("appDataFolder").Q("appProperties has { key='k' and value='v' }").Do()
	if err != nil || len(l.Files) != 1 {
		t.Fatalf("appProperties query: %+v %v", l, err)
	}

	// delete, then 404 in Google's shape
	if err := svc.Files.Delete(f1.Id).Do(); err != nil {
		t.Fatal(err)
	}
	if e := rec.last(func(e exchange) bool { return e.method == "DELETE" }); e.status != 204 {
		t.Fatalf("delete status %d", e.status)
	}
	_, err = svc.Files.Get(f1.Id).Do()
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) || gerr.Code != 404 || len(gerr.Errors) != 1 || gerr.Errors[0].Reason != "notFound" {
		t.Fatalf("get deleted: %v", err)
	}

	// bad fields and bad q are 400s
	if _, err := svc.Files.List().Fields("files(nosuchfield)").Do(); !isCode(err, 400) {
		t.Fatalf("bad fields: %v", err)
	}
	if _, err := svc.Files.List().Q("name = ").Do(); !isCode(err, 400) {
		t.Fatalf("bad q: %v", err)
	}
	if _, err := svc.Files.List().PageSize(1001).Do(); !isCode(err, 400) {
		t.Fatalf("pageSize 1001: %v", err)
	}
	// a folder delete takes its content
	if err := svc.Files.Delete(folder.Id).Do(); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Files.Get(f2.Id).Do(); !isCode(err, 404) {
		t.Fatalf("child of deleted folder: %v", err)
	}
}

func isCode(err error, code int) bool {
	var gerr *googleapi.Error
	return errors.As(err, &gerr) && gerr.Code == code
}

func TestAuthRequired(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{Token: token})
	for _, tok := range []string{"", "wrong"} {
		req, _ := http.NewRequest("GET", s.DriveEndpoint()+"files", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Error struct {
				Code   int
				Errors []struct{ Reason string }
			}
		}
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 401 || body.Error.Code != 401 || len(body.Error.Errors) != 1 {
			t.Fatalf("token %q: %d %+v", tok, resp.StatusCode, body)
		}
	}
}

func TestScopes(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{})
	appOnly, _ := s.MintToken(driveemu.ScopeAppData)
	fileOnly, _ := s.MintToken(driveemu.ScopeFile)
	mk := func(tok string) *drive.Service {
		hc := &http.Client{Transport: &oauth2.Transport{Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok})}}
		svc, err := drive.NewService(context.Background(), option.WithHTTPClient(hc), option.WithEndpoint(s.DriveEndpoint()))
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	app, fil := mk(appOnly), mk(fileOnly)
	if _, err := app.Files.Create(&drive.File{Name: "a", Parents: []string{"appDataFolder"}}).Do(); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Files.List().Do(); !isCode(err, 403) {
		t.Fatalf("appdata token listing drive: %v", err)
	}
	if _, err := fil.Files.Create(&drive.File{Name: "a", Parents: []string{"appDataFolder"}}).Do(); !isCode(err, 403) && !isCode(err, 404) {
		t.Fatalf("drive.file token writing appdata: %v", err)
	}
	if _, err := fil.Files.Create(&drive.File{Name: "visible"}).Do(); err != nil {
		t.Fatal(err)
	}
}

func TestResumableSessionEdgeCases(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{Token: token})
	do := func(method, u string, body []byte, hdr map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := do("POST", s.URL+"/upload/drive/v3/files?uploadType=resumable", []byte(`{"name":"r","parents":["appDataFolder"]}`),
		map[string]string{"Content-Type": "application/json", "X-Upload-Content-Type": "application/octet-stream"})
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 200 || !strings.HasPrefix(loc, s.URL+"/upload/drive/v3/files?") {
		t.Fatalf("start: %d %q", resp.StatusCode, loc)
	}
	chunk := pattern(256 << 10)
	total := fmt.Sprint(len(chunk) + 10)
	// without X-GUploader-No-308: a real 308 with Range
	resp = do("PUT", loc, chunk, map[string]string{"Content-Range": "bytes 0-262143/" + total})
	if resp.StatusCode != 308 || resp.Header.Get("Range") != "bytes=0-262143" {
		t.Fatalf("chunk: %d %q", resp.StatusCode, resp.Header.Get("Range"))
	}
	// the same chunk again (a retry after a lost answer) is harmless
	resp = do("PUT", loc, chunk, map[string]string{"Content-Range": "bytes 0-262143/" + total})
	if resp.StatusCode != 308 || resp.Header.Get("Range") != "bytes=0-262143" {
		t.Fatalf("repeat chunk: %d %q", resp.StatusCode, resp.Header.Get("Range"))
	}
	// status query
	resp = do("PUT", loc, nil, map[string]string{"Content-Range": "bytes */" + total})
	if resp.StatusCode != 308 || resp.Header.Get("Range") != "bytes=0-262143" {
		t.Fatalf("status query: %d", resp.StatusCode)
	}
	// a gap is refused
	resp = do("PUT", loc, []byte("0123456789"), map[string]string{"Content-Range": "bytes 262150-262159/262160"})
	if resp.StatusCode != 400 {
		t.Fatalf("gap: %d", resp.StatusCode)
	}
	// nothing visible before the end
	svc, _ := newClient(t, s)
	if l, err := svc.Files.List().Spaces("appDataFolder").Do(); err != nil || len(l.Files) != 0 {
		t.Fatalf("incomplete upload visible: %+v %v", l, err)
	}
	resp = do("PUT", loc, []byte("0123456789"), map[string]string{"Content-Range": "bytes 262144-262153/" + total})
	if resp.StatusCode != 200 {
		t.Fatalf("final: %d", resp.StatusCode)
	}
	if l, err := svc.Files.List().Spaces("appDataFolder").Fields("files(size)").Do(); err != nil || len(l.Files) != 1 || l.Files[0].Size != 262154 {
		t.Fatalf("after upload: %+v %v", l, err)
	}
	s.ExpireUploadSessions()
	if resp = do("PUT", loc, nil, map[string]string{"Content-Range": "bytes */*"}); resp.StatusCode != 404 {
		t.Fatalf("expired session: %d", resp.StatusCode)
	}
}

func TestFaultsAndLimits(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{Token: token})
	svc, _ := newClient(t, s)
	s.FailNext(driveemu.OpList, driveemu.FaultRateLimit, 1)
	_, err := svc.Files.List().Do()
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) || gerr.Code != 403 || gerr.Errors[0].Reason != "userRateLimitExceeded" || gerr.Errors[0].Message == driveemu.UploadCapMessage {
		t.Fatalf("rate limit: %v", err)
	}
	if _, err := svc.Files.List().Do(); err != nil {
		t.Fatalf("after the burst: %v", err)
	}
	s.Inject(driveemu.Rule{Op: driveemu.OpList, Fault: driveemu.FaultTooManyRequests, After: 1, Count: 1})
	if _, err := svc.Files.List().Do(); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Files.List().Do(); !isCode(err, 429) {
		t.Fatalf("429: %v", err)
	}
	s.SetUploadCap(10)
	if _, err := svc.Files.Create(&drive.File{Name: "a"}).Media(strings.NewReader("0123456789")).Do(); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Files.Create(&drive.File{Name: "b"}).Media(strings.NewReader("x")).Do()
	if !errors.As(err, &gerr) || gerr.Code != 403 || gerr.Errors[0].Message != "User rate limit exceeded." {
		t.Fatalf("upload cap: %v", err)
	}
	s.SetUploadCap(0)
	s.SetStorageQuota(15)
	_, err = svc.Files.Create(&drive.File{Name: "c"}).Media(strings.NewReader("0123456789")).Do()
	if !errors.As(err, &gerr) || gerr.Code != 403 || gerr.Errors[0].Reason != "storageQuotaExceeded" {
		t.Fatalf("quota: %v", err)
	}
}

func TestDownloadDrop(t *testing.T) {
	s := driveemu.Start(t, driveemu.Options{Token: token})
	svc, _ := newClient(t, s)
	data := pattern(100000)
	f, err := svc.Files.Create(&drive.File{Name: "d"}).Media(bytes.NewReader(data)).Do()
	if err != nil {
		t.Fatal(err)
	}
	s.FailNext(driveemu.OpDownload, driveemu.FaultDrop, 1)
	resp, err := svc.Files.Get(f.Id).Download()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("dropped download: %d bytes, err %v", len(got), err)
	}
	if s.Dropped(driveemu.OpDownload) != 1 {
		t.Fatal("drop not counted")
	}
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	s := driveemu.New(driveemu.Options{Token: token, Dir: dir})
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	svc, _ := newClient(t, s)
	data := pattern(300 << 10)
	f, err := svc.Files.Create(&drive.File{Name: "kept", Parents: []string{"appDataFolder"}}).
		Media(bytes.NewReader(data), googleapi.ChunkSize(256<<10)).Fields("id,modifiedTime").Do()
	if err != nil {
		t.Fatal(err)
	}
	gone, err := svc.Files.Create(&drive.File{Name: "gone"}).Media(strings.NewReader("x")).Do()
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Files.Delete(gone.Id).Do(); err != nil {
		t.Fatal(err)
	}
	_, refresh := s.MintToken(driveemu.ScopeAppData)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := driveemu.New(driveemu.Options{Token: token, Dir: dir})
	if err := s2.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	svc2, _ := newClient(t, s2)
	l, err := svc2.Files.List().Spaces("appDataFolder,drive").Q("trashed = false").Fields("files(id,name,modifiedTime)").Do()
	if err != nil || len(l.Files) != 1 || l.Files[0].Id != f.Id || l.Files[0].ModifiedTime != f.ModifiedTime {
		t.Fatalf("after restart: %+v %v", l, err)
	}
	resp, err := svc2.Files.Get(f.Id).Download()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("content lost")
	}
	// consents survive a restart too
	resp, err = http.PostForm(s2.URL+"/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {"any"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("refresh after restart: %d", resp.StatusCode)
	}
}
