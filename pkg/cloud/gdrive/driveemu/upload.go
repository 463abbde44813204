package driveemu

import (
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// session is one resumable upload.
type session struct {
	id        string
	target    string // file ID for an update, "" for a create
	meta      *fileMeta
	add, rem  string
	fields    string
	mediaType string
	total     int64 // -1 while unknown
	buf       []byte
	auth      *authInfo
	created   time.Time
	done      *file // the created/updated file once complete
}

const maxUpload = 1 << 31 // per request, a sanity bound for an in-memory emulator

func (s *Server) rollDay() {
	d := s.opts.Now().UTC().Format("2006-01-02")
	if d != s.upDay {
		s.upDay, s.upToday = d, 0
	}
}

func (s *Server) capReached() bool {
	s.rollDay()
	return s.upCap > 0 && s.upToday >= s.upCap
}

func (s *Server) countUpload(n int64) {
	s.rollDay()
	s.upToday += n
}

// SetUploadCap changes the daily upload cap (0: none).
func (s *Server) SetUploadCap(bytes int64) {
	s.mu.Lock()
	s.upCap = bytes
	s.mu.Unlock()
}

// UploadedToday is the number of bytes uploaded today (UTC).
func (s *Server) UploadedToday() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rollDay()
	return s.upToday
}

// SetStorageQuota changes the storage limit (0: unlimited).
func (s *Server) SetStorageQuota(bytes int64) {
	s.mu.Lock()
	s.quota = bytes
	s.mu.Unlock()
}

// ExpireUploadSessions forgets every resumable session; their URIs answer
// 404 from now on, as expired sessions do.
func (s *Server) ExpireUploadSessions() {
	s.mu.Lock()
	s.sessions = map[string]*session{}
	s.mu.Unlock()
}

// OpenSessions counts resumable sessions that have not completed.
func (s *Server) OpenSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		if ss.done == nil {
			n++
		}
	}
	return n
}

func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	if (id == "" && r.Method != http.MethodPost) || (id != "" && r.Method != http.MethodPatch && r.Method != http.MethodPut) {
		drain(r)
		methodNotAllowed(w)
		return
	}
	ut := r.URL.Query().Get("uploadType")
	switch ut {
	case "multipart", "media", "resumable":
	default:
		drain(r)
		writeError(w, errInvalid("uploadType", "Invalid Value"))
		return
	}
	s.mu.Lock()
	capped := s.capReached()
	s.mu.Unlock()
	if capped {
		drain(r)
		writeError(w, errUploadCap())
		return
	}
	switch ut {
	case "resumable":
		s.startSession(w, r, a, id)
	case "media":
		content, err := readBody(r, maxUpload)
		if err != nil {
			return // the client went away: nothing is stored
		}
		s.finishSimple(w, r, a, id, &fileMeta{}, content, r.Header.Get("Content-Type"))
	case "multipart":
		meta, content, mediaType, e := readMultipart(r)
		if e != nil {
			if e.Code != 0 {
				writeError(w, e)
			}
			return
		}
		m, e := parseMeta(meta, id == "")
		if e != nil {
			writeError(w, e)
			return
		}
		s.finishSimple(w, r, a, id, m, content, mediaType)
	}
}

// readMultipart splits a multipart/related body into its metadata and
// media parts. An apiError with Code 0 means the connection failed.
func readMultipart(r *http.Request) (meta, content []byte, mediaType string, e *apiError) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		drain(r)
		return nil, nil, "", &apiError{Code: 400, Domain: "global", Reason: "badContent", Message: "Media type '" + r.Header.Get("Content-Type") + "' is not supported. Valid media types: [*/*]"}
	}
	mr := multipart.NewReader(http.MaxBytesReader(nil, r.Body, maxUpload), params["boundary"])
	p, err := mr.NextPart()
	if err != nil {
		return nil, nil, "", multipartErr(err)
	}
	meta, err = io.ReadAll(p)
	if err != nil {
		return nil, nil, "", multipartErr(err)
	}
	p, err = mr.NextPart()
	if err != nil {
		return nil, nil, "", multipartErr(err)
	}
	mediaType = p.Header.Get("Content-Type")
	content, err = io.ReadAll(p)
	if err != nil {
		return nil, nil, "", multipartErr(err)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		if err == nil {
			return nil, nil, "", errBadRequest("Multipart upload must have exactly two parts.")
		}
		return nil, nil, "", multipartErr(err)
	}
	if content == nil {
		content = []byte{}
	}
	return meta, content, mediaType, nil
}

func multipartErr(err error) *apiError {
	if err == io.ErrUnexpectedEOF || strings.Contains(err.Error(), "connection") {
		return &apiError{}
	}
	return errBadRequest("Malformed multipart body.")
}

// finishSimple stores a single-request (multipart or media) upload.
func (s *Server) finishSimple(w http.ResponseWriter, r *http.Request, a *authInfo, id string, m *fileMeta, content []byte, mediaType string) {
	s.mu.Lock()
	var f *file
	var e *apiError
	if id == "" {
		f, e = s.newFile(a, m, content, mediaType)
		if e == nil {
			s.insert(f)
		}
	} else {
		f, e = s.updateMeta(a, id, m, r.URL.Query().Get("addParents"), r.URL.Query().Get("removeParents"), content, true)
	}
	if e == nil {
		s.countUpload(int64(len(content)))
	}
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	s.writeFile(w, r, 200, f)
}

func (s *Server) startSession(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	body, err := readBody(r, 1<<20)
	if err != nil {
		return
	}
	m, e := parseMeta(body, id == "")
	if e != nil {
		writeError(w, e)
		return
	}
	total := int64(-1)
	if v := r.Header.Get("X-Upload-Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, errInvalid("X-Upload-Content-Length", "Invalid Value"))
			return
		}
		total = n
	}
	mediaType := r.Header.Get("X-Upload-Content-Type")
	q := r.URL.Query()
	s.mu.Lock()
	// validate now, as Drive does, so a bad parent fails before any data
	if id == "" {
		_, e = s.newFile(a, m, nil, mediaType)
	} else {
		var f *file
		f, e = s.lookup(a, id)
		if e == nil && f.isFolder() {
			e = errBadRequest("Folders cannot have content.")
		}
	}
	if e == nil && s.quota > 0 {
		if u := s.usage(); u >= s.quota || (total >= 0 && u+total > s.quota) {
			e = errStorageQuota()
		}
	}
	var ss *session
	if e == nil {
		ss = &session{id: randToken("ABPt"), target: id, meta: m, add: q.Get("addParents"), rem: q.Get("removeParents"),
			fields: q.Get("fields"), mediaType: mediaType, total: total, auth: a, created: s.opts.Now()}
		s.sessions[ss.id] = ss
	}
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	loc := s.baseURL(r) + "/upload/drive/v3/files"
	if id != "" {
		loc += "/" + id
	}
	loc += "?uploadType=resumable&upload_id=" + ss.id
	h := w.Header()
	h.Set("Location", loc)
	h.Set("X-GUploader-UploadID", ss.id)
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// parseContentRange parses "bytes a-b/N", "bytes a-b/*", "bytes */N" and
// "bytes */*". start is -1 for the */ forms, total -1 for /*.
func parseContentRange(h string) (start, end, total int64, err error) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", h)
	}
	rng, tot, ok := strings.Cut(spec, "/")
	if !ok {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", h)
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total < 0 {
			return 0, 0, 0, fmt.Errorf("bad Content-Range total %q", tot)
		}
	}
	if rng == "*" {
		return -1, -1, total, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", h)
	}
	if start, err = strconv.ParseInt(a, 10, 64); err != nil || start < 0 {
		return 0, 0, 0, fmt.Errorf("bad Content-Range start %q", a)
	}
	if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
		return 0, 0, 0, fmt.Errorf("bad Content-Range end %q", b)
	}
	if total >= 0 && end >= total {
		return 0, 0, 0, fmt.Errorf("Content-Range end %d beyond total %d", end, total)
	}
	return start, end, total, nil
}

func (s *Server) handleChunk(w http.ResponseWriter, r *http.Request) {
	sid := r.URL.Query().Get("upload_id")
	s.mu.Lock()
	ss := s.sessions[sid]
	s.mu.Unlock()
	if ss == nil {
		drain(r)
		writeError(w, &apiError{Code: 404, Domain: "global", Reason: "notFound", Message: "Upload session not found or expired: " + sid})
		return
	}
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		drain(r)
		methodNotAllowed(w)
		return
	}
	cr := r.Header.Get("Content-Range")
	var start, end, total int64
	if cr != "" {
		var err error
		start, end, total, err = parseContentRange(cr)
		if err != nil {
			drain(r)
			writeError(w, errBadRequest("Failed to parse Content-Range header."))
			return
		}
	}
	// Read the whole chunk before touching the session: a chunk is
	// committed entirely or not at all.
	body, err := readBody(r, maxUpload)
	if err != nil {
		return // connection lost mid-chunk; nothing stored
	}
	n := int64(len(body))
	if cr == "" { // the whole file in one request
		start, end, total = 0, n-1, n
		if n == 0 {
			start, end = -1, -1
		}
	}
	if start < 0 && n != 0 || start >= 0 && end-start+1 != n {
		writeError(w, errBadRequest(fmt.Sprintf("Content-Range %q does not match the %d bytes sent.", cr, n)))
		return
	}

	s.mu.Lock()
	if s.sessions[sid] == nil {
		s.mu.Unlock()
		writeError(w, &apiError{Code: 404, Domain: "global", Reason: "notFound", Message: "Upload session not found or expired: " + sid})
		return
	}
	if ss.done != nil {
		f := ss.done
		s.mu.Unlock()
		s.writeFileFields(w, 200, f, ss.fields)
		return
	}
	if total >= 0 {
		if ss.total >= 0 && ss.total != total {
			s.mu.Unlock()
			writeError(w, errBadRequest(fmt.Sprintf("The upload total %d differs from the %d announced earlier.", total, ss.total)))
			return
		}
		ss.total = total
	}
	recv := int64(len(ss.buf))
	if n > 0 {
		if start > recv {
			s.mu.Unlock()
			writeError(w, errBadRequest(fmt.Sprintf("Invalid request. According to the Content-Range header, the upload offset is %d byte(s), which exceeds already uploaded size of %d byte(s).", start, recv)))
			return
		}
		final := total >= 0 && end+1 == total
		if !final && n%chunkGranule != 0 {
			s.mu.Unlock()
			writeError(w, errBadRequest(fmt.Sprintf("Invalid request. The number of bytes uploaded is required to be a multiple of %d, except for the final request. The received request contained %d bytes.", chunkGranule, n)))
			return
		}
		data := body
		if skip := recv - start; skip > 0 {
			if skip >= n {
				data = nil
			} else {
				data = data[skip:]
			}
		}
		if s.quota > 0 && s.usage()+int64(len(data)) > s.quota {
			s.mu.Unlock()
			writeError(w, errStorageQuota())
			return
		}
		ss.buf = append(ss.buf, data...)
		recv = int64(len(ss.buf))
	}
	if ss.total >= 0 && recv > ss.total {
		s.mu.Unlock()
		writeError(w, errBadRequest("More bytes were sent than the upload total."))
		return
	}
	if ss.total >= 0 && recv == ss.total {
		buf := ss.buf
		ss.buf = nil
		var f *file
		var e *apiError
		if ss.target == "" {
			f, e = s.newFile(ss.auth, ss.meta, buf, ss.mediaType)
			if e == nil {
				s.insert(f)
			}
		} else {
			f, e = s.updateMeta(ss.auth, ss.target, ss.meta, ss.add, ss.rem, buf, true)
		}
		if e != nil {
			ss.buf = buf
			s.mu.Unlock()
			writeError(w, e)
			return
		}
		ss.done = f
		s.countUpload(int64(len(buf)))
		s.mu.Unlock()
		s.writeFileFields(w, 200, f, ss.fields)
		return
	}
	s.mu.Unlock()
	h := w.Header()
	if recv > 0 {
		h.Set("Range", fmt.Sprintf("bytes=0-%d", recv-1))
	}
	h.Set("X-GUploader-UploadID", sid)
	h.Set("Content-Length", "0")
	if strings.EqualFold(r.Header.Get("X-GUploader-No-308"), "yes") {
		h.Set("X-HTTP-Status-Code-Override", "308")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusPermanentRedirect)
}

func (s *Server) writeFileFields(w http.ResponseWriter, code int, f *file, fields string) {
	schemas()
	out, e := render(s.toAPI(f), fields, defaultFileFields, fileSchema)
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, code, out)
}
