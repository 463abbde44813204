package driveemu

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	drive "google.golang.org/api/drive/v3"
)

// file is one Drive file or folder.
type file struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	MimeType      string            `json:"mimeType"`
	Parents       []string          `json:"parents,omitempty"`
	Space         string            `json:"space"`
	Size          int64             `json:"size"`
	Created       time.Time         `json:"created"`
	Modified      time.Time         `json:"modified"`
	Trashed       bool              `json:"trashed,omitempty"`
	Explicit      bool              `json:"explicitlyTrashed,omitempty"`
	Starred       bool              `json:"starred,omitempty"`
	Description   string            `json:"description,omitempty"`
	AppProperties map[string]string `json:"appProperties,omitempty"`
	Properties    map[string]string `json:"properties,omitempty"`
	Version       int64             `json:"version"`
	MD5           string            `json:"md5,omitempty"`
	SHA1          string            `json:"sha1,omitempty"`
	SHA256        string            `json:"sha256,omitempty"`
	Original      string            `json:"originalFilename,omitempty"`

	content []byte // immutable once stored; replaced, never modified
}

func (f *file) isFolder() bool { return f.MimeType == folderMime }

func (f *file) setContent(b []byte) {
	f.content = b
	f.Size = int64(len(b))
	m := md5.Sum(b)
	s1 := sha1.Sum(b)
	s2 := sha256.Sum256(b)
	f.MD5, f.SHA1, f.SHA256 = hex.EncodeToString(m[:]), hex.EncodeToString(s1[:]), hex.EncodeToString(s2[:])
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

// toAPI renders f as the client's type, which gives the exact JSON
// encoding (size as a string, omitted empties).
func (s *Server) toAPI(f *file) *drive.File {
	d := &drive.File{
		Kind:         "drive#file",
		Id:           f.ID,
		Name:         f.Name,
		MimeType:     f.MimeType,
		Parents:      f.Parents,
		CreatedTime:  f.Created.UTC().Format(rfc3339Milli),
		ModifiedTime: f.Modified.UTC().Format(rfc3339Milli),
		Trashed:      f.Trashed,
		Starred:      f.Starred,
		Spaces:       []string{f.Space},
		Version:      f.Version,
		Description:  f.Description,
		OwnedByMe:    true,
		ViewedByMe:   true,
		Owners:       []*drive.User{{Kind: "drive#user", DisplayName: "Emulated User", EmailAddress: emuUserEmail, Me: true, PermissionId: "00000000000000000000"}},
		WebViewLink:  "https://drive.google.com/file/d/" + f.ID + "/view?usp=drivesdk",
		IconLink:     "https://drive-thirdparty.googleusercontent.com/16/type/" + f.MimeType,
		ForceSendFields: []string{
			"Trashed", "Starred", "ExplicitlyTrashed", "OwnedByMe", "ViewedByMe", "Shared",
		},
		ExplicitlyTrashed: f.Explicit,
		AppProperties:     f.AppProperties,
		Properties:        f.Properties,
	}
	if f.isFolder() {
		d.WebViewLink = "https://drive.google.com/drive/folders/" + f.ID
	} else {
		d.Size = f.Size
		d.QuotaBytesUsed = f.Size
		d.Md5Checksum = f.MD5
		d.Sha1Checksum = f.SHA1
		d.Sha256Checksum = f.SHA256
		d.HeadRevisionId = "0B" + f.ID[1:12] + strconv.FormatInt(f.Version, 10)
		d.OriginalFilename = f.Original
		if ext := path.Ext(f.Name); ext != "" {
			d.FileExtension = ext[1:]
			d.FullFileExtension = strings.TrimPrefix(f.Name[strings.Index(f.Name, "."):], ".")
		}
		d.WebContentLink = "https://drive.google.com/uc?id=" + f.ID + "&export=download"
		d.ForceSendFields = append(d.ForceSendFields, "Size", "QuotaBytesUsed")
	}
	return d
}

// defaults for absent fields parameters, as on Drive v3.
const (
	defaultFileFields = "kind,id,name,mimeType"
	defaultListFields = "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)"
)

// render encodes v (a *drive.File, *drive.FileList, …) through the fields
// selection.
func render(v any, fields, def string, sc *schema) (any, *apiError) {
	if fields == "" {
		fields = def
	}
	sel, err := parseFields(fields)
	if err == nil {
		err = sel.validate(sc, "")
	}
	if err != nil {
		msg := fieldError(fields).Error()
		if fe, ok := err.(fieldError); ok {
			msg = fe.Error()
		}
		return nil, &apiError{Code: 400, Domain: "global", Reason: "invalidParameter", Message: msg, Location: "fields", LocationType: "parameter"}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, &apiError{Code: 500, Domain: "global", Reason: "internalError", Message: err.Error()}
	}
	var m any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, &apiError{Code: 500, Domain: "global", Reason: "internalError", Message: err.Error()}
	}
	return sel.apply(m), nil
}

func (s *Server) writeFile(w http.ResponseWriter, r *http.Request, code int, f *file) {
	s.writeFileFields(w, code, f, r.URL.Query().Get("fields"))
}

// ---- auth scopes and visibility ----

func (a *authInfo) canSpace(space string) bool {
	if space == spaceAppData {
		return a.scopes[ScopeAppData] || a.scopes["https://www.googleapis.com/auth/drive.appfolder"]
	}
	return a.scopes[ScopeDrive] || a.scopes[ScopeFile]
}

// alias resolves 'root' and 'appDataFolder'.
func (s *Server) alias(id string) string {
	switch id {
	case "root":
		return s.rootID
	case spaceAppData:
		return s.appDataID
	}
	return id
}

// lookup finds a file visible to a. Callers hold s.mu.
func (s *Server) lookup(a *authInfo, id string) (*file, *apiError) {
	f := s.files[s.alias(id)]
	if f == nil || !a.canSpace(f.Space) {
		return nil, errNotFound(id)
	}
	return f, nil
}

func (s *Server) insert(f *file) {
	s.files[f.ID] = f
	for _, p := range f.Parents {
		m := s.children[p]
		if m == nil {
			m = map[string]*file{}
			s.children[p] = m
		}
		m[f.ID] = f
	}
	s.dirty()
}

func (s *Server) unlink(f *file) {
	for _, p := range f.Parents {
		delete(s.children[p], f.ID)
		if len(s.children[p]) == 0 {
			delete(s.children, p)
		}
	}
}

func (s *Server) remove(f *file) {
	for _, c := range s.children[f.ID] {
		s.remove(c)
	}
	s.unlink(f)
	delete(s.files, f.ID)
	if s.persist != nil {
		s.persist.removed(f.ID)
	}
	s.dirty()
}

func (s *Server) usage() int64 {
	var n int64
	for _, f := range s.files {
		n += f.Size
	}
	for _, ss := range s.sessions {
		if ss.done == nil {
			n += int64(len(ss.buf))
		}
	}
	return n
}

func (s *Server) dirty() {
	if s.persist != nil {
		s.persist.mark()
	}
}

// ---- metadata bodies ----

// fileMeta is a request body for create and update.
type fileMeta struct {
	ID               *string            `json:"id"`
	Name             *string            `json:"name"`
	MimeType         *string            `json:"mimeType"`
	Parents          []string           `json:"parents"`
	Description      *string            `json:"description"`
	Starred          *bool              `json:"starred"`
	Trashed          *bool              `json:"trashed"`
	AppProperties    map[string]*string `json:"appProperties"`
	Properties       map[string]*string `json:"properties"`
	ModifiedTime     *string            `json:"modifiedTime"`
	CreatedTime      *string            `json:"createdTime"`
	OriginalFilename *string            `json:"originalFilename"`
}

var notWritable = map[string]bool{
	"kind": true, "size": true, "md5Checksum": true, "sha1Checksum": true, "sha256Checksum": true,
	"version": true, "spaces": true, "quotaBytesUsed": true, "headRevisionId": true, "owners": true,
	"trashedTime": true, "webViewLink": true, "webContentLink": true, "iconLink": true, "capabilities": true,
	"explicitlyTrashed": true, "ownedByMe": true, "fileExtension": true, "fullFileExtension": true,
}

func parseMeta(body []byte, create bool) (*fileMeta, *apiError) {
	m := &fileMeta{}
	if len(bytes.TrimSpace(body)) == 0 {
		return m, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, &apiError{Code: 400, Domain: "global", Reason: "parseError", Message: "Parse Error"}
	}
	for k := range raw {
		if notWritable[k] {
			return nil, errForbidden("fieldNotWritable", "The resource body includes fields which are not directly writable.")
		}
		if k == "parents" && !create {
			return nil, errForbidden("parentsNotWritable", "The parents field is not directly writable in update requests. Use the addParents and removeParents parameters instead.")
		}
	}
	if err := json.Unmarshal(body, m); err != nil {
		return nil, &apiError{Code: 400, Domain: "global", Reason: "parseError", Message: "Parse Error"}
	}
	return m, nil
}

func parseRFC3339(param, v string) (time.Time, *apiError) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, errInvalid(param, "Invalid value for: "+param)
	}
	return t.UTC().Truncate(time.Millisecond), nil
}

// newFile validates meta for a create and builds the file (not yet
// inserted). Callers hold s.mu.
func (s *Server) newFile(a *authInfo, m *fileMeta, content []byte, mediaType string) (*file, *apiError) {
	parents := m.Parents
	if len(parents) == 0 {
		parents = []string{"root"}
	}
	if len(parents) > 1 {
		return nil, errForbidden("cannotAddParent", "Increasing the number of parents is not allowed.")
	}
	pid := s.alias(parents[0])
	p := s.files[pid]
	if p == nil || !a.canSpace(p.Space) {
		if parents[0] == spaceAppData && p != nil {
			return nil, &apiError{Code: 403, Domain: "global", Reason: "insufficientScopes", Message: "The granted scopes do not allow use of the Application Data folder."}
		}
		return nil, errNotFound(parents[0])
	}
	if !p.isFolder() {
		return nil, errBadRequest("The specified parent is not a folder.")
	}
	f := &file{ID: newID(), Name: "Untitled", Space: p.Space, Parents: []string{pid}, Version: 1}
	if m.ID != nil {
		return nil, errBadRequest("The provided file ID is not usable.")
	}
	if m.Name != nil {
		f.Name = *m.Name
	}
	switch {
	case m.MimeType != nil && *m.MimeType != "":
		f.MimeType = *m.MimeType
	case mediaType != "":
		f.MimeType, _, _ = strings.Cut(mediaType, ";")
	default:
		f.MimeType = "application/octet-stream"
	}
	if f.isFolder() && len(content) > 0 {
		return nil, errBadRequest("Folders cannot have content.")
	}
	if m.Description != nil {
		f.Description = *m.Description
	}
	if m.Starred != nil {
		f.Starred = *m.Starred
	}
	if m.OriginalFilename != nil {
		f.Original = *m.OriginalFilename
	} else if content != nil && !f.isFolder() {
		f.Original = f.Name
	}
	f.AppProperties = mergeProps(nil, m.AppProperties)
	f.Properties = mergeProps(nil, m.Properties)
	if s.quota > 0 && s.usage()+int64(len(content)) > s.quota {
		return nil, errStorageQuota()
	}
	now := s.now()
	f.Created, f.Modified = now, now
	if m.ModifiedTime != nil {
		t, e := parseRFC3339("modifiedTime", *m.ModifiedTime)
		if e != nil {
			return nil, e
		}
		f.Modified = t
	}
	if m.CreatedTime != nil {
		t, e := parseRFC3339("createdTime", *m.CreatedTime)
		if e != nil {
			return nil, e
		}
		f.Created = t
	}
	if m.Trashed != nil && *m.Trashed {
		f.Trashed, f.Explicit = true, true
	}
	if !f.isFolder() {
		if content == nil {
			content = []byte{}
		}
		f.setContent(content)
	}
	return f, nil
}

func mergeProps(old map[string]string, upd map[string]*string) map[string]string {
	if len(upd) == 0 {
		return old
	}
	out := map[string]string{}
	for k, v := range old {
		out[k] = v
	}
	for k, v := range upd {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = *v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// ---- handlers ----

func readBody(r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(http.MaxBytesReader(nil, r.Body, limit))
	return buf.Bytes(), err
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request, a *authInfo) {
	body, err := readBody(r, 1<<20)
	if err != nil {
		writeError(w, errBadRequest("could not read the request body"))
		return
	}
	m, e := parseMeta(body, true)
	if e != nil {
		writeError(w, e)
		return
	}
	s.mu.Lock()
	f, e := s.newFile(a, m, nil, "")
	if e == nil {
		s.insert(f)
	}
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	s.writeFile(w, r, 200, f)
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	s.mu.Lock()
	f, e := s.lookup(a, id)
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	s.writeFile(w, r, 200, f)
}

func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	body, err := readBody(r, 1<<20)
	if err != nil {
		writeError(w, errBadRequest("could not read the request body"))
		return
	}
	m, e := parseMeta(body, false)
	if e != nil {
		writeError(w, e)
		return
	}
	s.mu.Lock()
	f, e := s.updateMeta(a, id, m, r.URL.Query().Get("addParents"), r.URL.Query().Get("removeParents"), nil, false)
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	s.writeFile(w, r, 200, f)
}

// updateMeta applies a files.update; with setContent it also replaces the
// content. Callers hold s.mu. The stored file is replaced by a modified
// copy so readers holding the old pointer keep a consistent view.
func (s *Server) updateMeta(a *authInfo, id string, m *fileMeta, add, rem string, content []byte, setContent bool) (*file, *apiError) {
	old, e := s.lookup(a, id)
	if e != nil {
		return nil, e
	}
	if old.ID == s.rootID || old.ID == s.appDataID {
		return nil, errForbidden("cannotModifyRootFolder", "The root folder cannot be modified.")
	}
	f := *old
	f.Parents = append([]string(nil), old.Parents...)
	if m.ID != nil && *m.ID != old.ID {
		return nil, errForbidden("fieldNotWritable", "The resource body includes fields which are not directly writable.")
	}
	if m.Name != nil {
		f.Name = *m.Name
	}
	if m.MimeType != nil && *m.MimeType != "" {
		if (*m.MimeType == folderMime) != old.isFolder() {
			return nil, errForbidden("fileWriterTeamDriveMoveInDisabled", "The MIME type of a file cannot be changed to or from a folder.")
		}
		f.MimeType = *m.MimeType
	}
	if m.Description != nil {
		f.Description = *m.Description
	}
	if m.Starred != nil {
		f.Starred = *m.Starred
	}
	if m.Trashed != nil {
		f.Trashed, f.Explicit = *m.Trashed, *m.Trashed
	}
	if m.OriginalFilename != nil {
		f.Original = *m.OriginalFilename
	}
	if m.CreatedTime != nil {
		return nil, errForbidden("fieldNotWritable", "The resource body includes fields which are not directly writable.")
	}
	f.AppProperties = mergeProps(old.AppProperties, m.AppProperties)
	f.Properties = mergeProps(old.Properties, m.Properties)
	for _, p := range splitIDs(rem) {
		pid := s.alias(p)
		out := f.Parents[:0]
		found := false
		for _, q := range f.Parents {
			if q == pid {
				found = true
				continue
			}
			out = append(out, q)
		}
		if !found {
			return nil, errBadRequest("The parent " + p + " is not a parent of the file.")
		}
		f.Parents = out
	}
	for _, p := range splitIDs(add) {
		pid := s.alias(p)
		pf := s.files[pid]
		if pf == nil || !a.canSpace(pf.Space) {
			return nil, errNotFound(p)
		}
		if !pf.isFolder() {
			return nil, errBadRequest("The specified parent is not a folder.")
		}
		if pf.Space != old.Space {
			return nil, errForbidden("cannotMoveAcrossSpaces", "Files cannot be moved between spaces.")
		}
		for anc := pf; anc != nil; {
			if anc.ID == old.ID {
				return nil, errBadRequest("The specified parent would create a cycle.")
			}
			if len(anc.Parents) == 0 {
				break
			}
			anc = s.files[anc.Parents[0]]
		}
		f.Parents = append(f.Parents, pid)
	}
	if len(f.Parents) > 1 {
		return nil, errForbidden("cannotAddParent", "Increasing the number of parents is not allowed.")
	}
	if len(f.Parents) == 0 {
		f.Parents = []string{s.rootID}
		if old.Space == spaceAppData {
			f.Parents = []string{s.appDataID}
		}
	}
	if setContent {
		if old.isFolder() {
			return nil, errBadRequest("Folders cannot have content.")
		}
		if s.quota > 0 && s.usage()-old.Size+int64(len(content)) > s.quota {
			return nil, errStorageQuota()
		}
		f.setContent(content)
	}
	f.Modified = s.now()
	if m.ModifiedTime != nil {
		t, e := parseRFC3339("modifiedTime", *m.ModifiedTime)
		if e != nil {
			return nil, e
		}
		f.Modified = t
	}
	f.Version = old.Version + 1
	s.unlink(old)
	s.insert(&f)
	return &f, nil
}

func splitIDs(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	s.mu.Lock()
	f, e := s.lookup(a, id)
	if e == nil && (f.ID == s.rootID || f.ID == s.appDataID) {
		e = errForbidden("cannotDeleteRootFolder", "The root folder cannot be deleted.")
	}
	if e == nil {
		s.remove(f)
	}
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleAbout(w http.ResponseWriter, r *http.Request, a *authInfo) {
	fields := r.URL.Query().Get("fields")
	if fields == "" {
		writeError(w, &apiError{Code: 400, Domain: "global", Reason: "required", Message: "The 'fields' parameter is required for this method.", Location: "fields", LocationType: "parameter"})
		return
	}
	s.mu.Lock()
	used := s.usage()
	limit := s.quota
	s.mu.Unlock()
	ab := &drive.About{
		Kind: "drive#about",
		User: &drive.User{Kind: "drive#user", DisplayName: "Emulated User", EmailAddress: emuUserEmail, Me: true, PermissionId: "00000000000000000000"},
		StorageQuota: &drive.AboutStorageQuota{
			Limit: limit, Usage: used, UsageInDrive: used,
			ForceSendFields: []string{"Usage", "UsageInDrive", "UsageInDriveTrash"},
		},
		AppInstalled: true,
	}
	if limit == 0 {
		ab.StorageQuota.Limit = 0 // unlimited: omitted, as for Workspace unlimited accounts
	}
	schemas()
	out, e := render(ab, fields, "", aboutSchema)
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, 200, out)
}

// ---- list ----

type pageToken struct {
	Q     string   `json:"q"`
	Order string   `json:"o"`
	Key   []string `json:"k"`
}

type orderKey struct {
	field string
	desc  bool
}

func parseOrderBy(s string) ([]orderKey, *apiError) {
	var keys []orderKey
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, dir, _ := strings.Cut(part, " ")
		k := orderKey{field: name}
		switch strings.TrimSpace(dir) {
		case "":
		case "desc":
			k.desc = true
		default:
			return nil, errInvalid("orderBy", "Invalid sort order: "+part)
		}
		switch name {
		case "createdTime", "modifiedTime", "name", "name_natural", "folder", "quotaBytesUsed", "starred", "recency", "viewedByMeTime", "modifiedByMeTime", "sharedWithMeTime":
		default:
			return nil, errInvalid("orderBy", "Invalid field for sorting: "+name)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// sortKey renders f's sort tuple as strings that compare like the values.
func sortKey(f *file, keys []orderKey) []string {
	out := make([]string, 0, len(keys)+1)
	for _, k := range keys {
		var v string
		switch k.field {
		case "createdTime":
			v = f.Created.UTC().Format("2006-01-02T15:04:05.000000000")
		case "modifiedTime", "recency", "viewedByMeTime", "modifiedByMeTime", "sharedWithMeTime":
			v = f.Modified.UTC().Format("2006-01-02T15:04:05.000000000")
		case "name", "name_natural":
			v = strings.ToLower(f.Name) + "\x00" + f.Name
		case "folder":
			v = "1"
			if f.isFolder() {
				v = "0" // folders first
			}
		case "quotaBytesUsed":
			v = fmt.Sprintf("%020d", f.Size)
		case "starred":
			v = "0"
			if f.Starred {
				v = "1"
			}
		}
		out = append(out, v)
	}
	return append(out, f.ID)
}

func cmpKeys(a, b []string, keys []orderKey) int {
	for i := range a {
		c := strings.Compare(a[i], b[i])
		if c == 0 {
			continue
		}
		if i < len(keys) && keys[i].desc {
			c = -c
		}
		return c
	}
	return 0
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request, a *authInfo) {
	qv := r.URL.Query()
	spaces := []string{spaceDrive}
	if sp := qv.Get("spaces"); sp != "" {
		spaces = nil
		for _, x := range strings.Split(sp, ",") {
			x = strings.TrimSpace(x)
			switch x {
			case spaceDrive, spaceAppData, "photos":
			default:
				writeError(w, errInvalid("spaces", "Invalid Value"))
				return
			}
			spaces = append(spaces, x)
		}
	}
	for _, sp := range spaces {
		if sp != "photos" && !a.canSpace(sp) {
			writeError(w, &apiError{Code: 403, Domain: "global", Reason: "insufficientScopes", Message: "The granted scopes do not give access to all of the requested spaces."})
			return
		}
	}
	pageSize := 100
	if ps := qv.Get("pageSize"); ps != "" {
		n, err := strconv.Atoi(ps)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, errInvalid("pageSize", fmt.Sprintf("Invalid value '%s'. Values must be within the range: [1, 1000]", ps)))
			return
		}
		pageSize = n
	}
	var query *Query
	if q := qv.Get("q"); q != "" {
		var err error
		query, err = ParseQuery(q)
		if err != nil {
			writeError(w, errInvalid("q", "Invalid Value"))
			return
		}
	}
	keys, e := parseOrderBy(qv.Get("orderBy"))
	if e != nil {
		writeError(w, e)
		return
	}
	if len(keys) == 0 {
		keys = []orderKey{{field: "createdTime"}}
	}
	var after []string
	if pt := qv.Get("pageToken"); pt != "" {
		b, err := base64.RawURLEncoding.DecodeString(pt)
		var tok pageToken
		if err == nil {
			err = json.Unmarshal(b, &tok)
		}
		if err != nil || tok.Q != qv.Get("q") || tok.Order != qv.Get("orderBy") || len(tok.Key) != len(keys)+1 {
			writeError(w, errInvalid("pageToken", "Invalid Value"))
			return
		}
		after = tok.Key
	}
	schemas()
	// validate fields before doing the work
	if fl := qv.Get("fields"); fl != "" {
		if _, e := render(&drive.FileList{}, fl, "", fileListSchema); e != nil {
			writeError(w, e)
			return
		}
	}

	env := &evalEnv{alias: s.alias}
	inSpace := map[string]bool{}
	for _, sp := range spaces {
		inSpace[sp] = true
	}
	type hit struct {
		f   *file
		key []string
	}
	var hits []hit
	s.mu.Lock()
	var cands map[string]*file
	if query != nil {
		if pid, ok := query.requiredParent(); ok {
			cands = s.children[s.alias(pid)]
		} else {
			cands = s.files
		}
	} else {
		cands = s.files
	}
	for _, f := range cands {
		if f.ID == s.rootID || f.ID == s.appDataID || !inSpace[f.Space] {
			continue
		}
		if query != nil && !query.match(f, env) {
			continue
		}
		k := sortKey(f, keys)
		if after != nil && cmpKeys(k, after, keys) <= 0 {
			continue
		}
		hits = append(hits, hit{f, k})
	}
	sort.Slice(hits, func(i, j int) bool { return cmpKeys(hits[i].key, hits[j].key, keys) < 0 })
	list := &drive.FileList{Kind: "drive#fileList", IncompleteSearch: false, ForceSendFields: []string{"IncompleteSearch", "Files"}, Files: []*drive.File{}}
	for i, h := range hits {
		if i == pageSize {
			b, _ := json.Marshal(pageToken{Q: qv.Get("q"), Order: qv.Get("orderBy"), Key: hits[i-1].key})
			list.NextPageToken = base64.RawURLEncoding.EncodeToString(b)
			break
		}
		list.Files = append(list.Files, s.toAPI(h.f))
	}
	s.mu.Unlock()
	out, e := render(list, qv.Get("fields"), defaultListFields, fileListSchema)
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, 200, out)
}

// ---- download ----

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request, a *authInfo, id string) {
	s.mu.Lock()
	f, e := s.lookup(a, id)
	s.mu.Unlock()
	if e != nil {
		writeError(w, e)
		return
	}
	if f.isFolder() || strings.HasPrefix(f.MimeType, "application/vnd.google-apps.") {
		writeError(w, errForbidden("fileNotDownloadable", "Only files with binary content can be downloaded. Use Export with Docs Editors files."))
		return
	}
	data := f.content
	size := int64(len(data))
	h := w.Header()
	h.Set("Content-Type", f.MimeType)
	h.Set("X-Goog-Hash", "md5="+b64hex(f.MD5))
	h.Set("Content-Disposition", "attachment")
	start, end, ranged, ok := parseRange(r.Header.Get("Range"), size)
	if !ok {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		writeError(w, &apiError{Code: http.StatusRequestedRangeNotSatisfiable, Domain: "global", Reason: "requestedRangeNotSatisfiable", Message: "Request range not satisfiable"})
		return
	}
	code := http.StatusOK
	if ranged {
		code = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
	} else {
		start, end = 0, size-1
	}
	body := data[start : end+1]
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if s.dropDownload(w, r, body, code) {
		return
	}
	w.WriteHeader(code)
	w.Write(body)
}

func b64hex(h string) string {
	b, _ := hex.DecodeString(h)
	return base64.StdEncoding.EncodeToString(b)
}

// parseRange understands one byte range. ranged is false when there is no
// usable Range header (absent or multi-range: whole file); ok is false for
// an unsatisfiable range.
func parseRange(h string, size int64) (start, end int64, ranged, ok bool) {
	if h == "" {
		return 0, 0, false, true
	}
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, true
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, true
	}
	if a == "" { // suffix
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, true, false
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, true, true
	}
	s0, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s0 < 0 {
		return 0, 0, false, true
	}
	e0 := size - 1
	if b != "" {
		e0, err = strconv.ParseInt(b, 10, 64)
		if err != nil || e0 < s0 {
			return 0, 0, false, true
		}
	}
	if s0 >= size {
		return 0, 0, true, false
	}
	if e0 >= size {
		e0 = size - 1
	}
	return s0, e0, true, true
}
