package s3

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"
)

// Get implements cloud.Store. The request is made (and a missing object
// reported) before Get returns. Reading past the end yields fewer bytes.
func (s *Store) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("s3 get %s: negative offset", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, &opError{op: "get", name: name, msg: err.Error(), err: err}
	}
	if length == 0 {
		if _, err := s.Stat(ctx, name); err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	body, info, err := s.getRange(ctx, name, key, offset, length, "")
	if err != nil {
		if s3Code(err) == "InvalidRange" {
			// offset is at or past the end of an existing object
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, err
	}
	return &objectReader{s: s, ctx: ctx, name: name, key: key, etag: info.ETag, body: body, pos: offset, left: info.Size}, nil
}

// getRange opens length bytes at offset (length < 0: to the end), pinned
// to etag if given.
func (s *Store) getRange(ctx context.Context, name, key string, offset, length int64, etag string) (io.ReadCloser, minio.ObjectInfo, error) {
	var opts minio.GetObjectOptions
	if etag != "" {
		if err := opts.SetMatchETag(etag); err != nil {
			return nil, minio.ObjectInfo{}, err
		}
	}
	var err error
	switch {
	case length < 0 && offset > 0:
		err = opts.SetRange(offset, 0)
	case length > 0:
		err = opts.SetRange(offset, offset+length-1)
	}
	if err != nil {
		return nil, minio.ObjectInfo{}, err
	}
	var body io.ReadCloser
	var info minio.ObjectInfo
	err = s.retry(ctx, "get", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		var err error
		body, info, _, err = s.core.GetObject(ctx, s.cfg.Bucket, key, opts)
		return err
	})
	return body, info, err
}

// objectReader streams an object's body and, when the connection fails
// midway, reopens the rest of the range (same ETag) and carries on.
type objectReader struct {
	s         *Store
	ctx       context.Context
	name, key string
	etag      string
	body      io.ReadCloser
	pos, left int64 // next offset, bytes still to come
	fresh     bool  // nothing read since the last reopen
	stuck     int   // reopens in a row that yielded nothing
	err       error // sticky
	resumes   int
}

func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	for {
		n, err := r.body.Read(p)
		r.pos += int64(n)
		r.left -= int64(n)
		if n > 0 {
			r.fresh, r.stuck = false, 0
			r.s.progress.Done()
		}
		if err == nil || r.left == 0 {
			return n, nil
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if r.ctx.Err() != nil || !classify(err, r.s.cfg.Endpoint, r.s.cfg.Bucket, r.s.cfg.Region).retry {
			r.err = &opError{op: "get", name: r.name, msg: "reading: " + err.Error(), err: err}
			return n, r.err
		}
		if r.fresh {
			r.stuck++
		}
		if r.stuck >= 3 {
			r.err = &opError{op: "get", name: r.name, kind: ErrUnreachable,
				msg: fmt.Sprintf("reading: %v (the connection failed %d times in a row before any data arrived)", err, r.stuck), err: err}
			return n, r.err
		}
		r.body.Close()
		body, _, oerr := r.s.getRange(r.ctx, r.name, r.key, r.pos, r.left, r.etag)
		if oerr != nil {
			r.body = io.NopCloser(strings.NewReader(""))
			if s3Code(oerr) == "PreconditionFailed" {
				oerr = &opError{op: "get", name: r.name, msg: "the object changed while being read", err: oerr}
			}
			r.err = oerr
			return n, r.err
		}
		r.body, r.fresh = body, true
		r.resumes++
		if n > 0 {
			return n, nil
		}
	}
}

func (r *objectReader) Close() error { return r.body.Close() }
