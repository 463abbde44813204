package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/wabackup/wabackup/pkg/cloud"
)

func randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// putOptions: no aws-chunked streaming signature, and no signed payload
// hash (UNSIGNED-PAYLOAD): the Content-MD5 header, which is signed, already
// binds the body to the request (see the package comment).
var putOptions = minio.PutObjectOptions{ContentType: "application/octet-stream", DisableContentSha256: true}

// Put implements cloud.Store. Objects up to PartSize go up in one PUT;
// larger ones as a multipart upload of PartSize parts, one part at a time.
// Either way the object appears only when complete. The reader must yield
// exactly size bytes.
//
// A reader that is also an io.ReaderAt and io.Seeker (an *os.File, as the
// staged packs are) is sent straight from its current offset, a part at a
// time, without being copied into memory; any other is buffered a part at
// a time.
func (s *Store) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("s3 put %s: negative size %d", name, size)
	}
	if err := ctx.Err(); err != nil {
		return &opError{op: "put", name: name, msg: err.Error(), err: err}
	}
	partSize := int64(s.cfg.PartSize)
	if parts := (size + partSize - 1) / partSize; parts > maxParts {
		// Grow the parts (in whole MiB) rather than refuse the object.
		partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
		if partSize > maxPartSize {
			return fmt.Errorf("s3 put %s: %d bytes is more than S3 allows in one object", name, size)
		}
	}
	var src payload
	if ra, ok := r.(readerAtSeeker); ok {
		fp, err := newFilePayload(name, ra, size)
		if err != nil {
			return err
		}
		src = fp
	} else {
		src = &bufPayload{s: s, name: name, r: cloud.ContextReader(ctx, r), size: size, partSize: partSize}
	}
	defer src.release()
	if size <= int64(s.cfg.PartSize) {
		return s.putSingle(ctx, name, key, src, size)
	}
	return s.putMultipart(ctx, name, key, src, size, partSize)
}

type readerAtSeeker interface {
	io.ReaderAt
	io.Seeker
}

// A payload yields an object's bytes a part at a time, in order. part
// returns a function that opens a fresh reader over bytes [off, off+n)
// for each attempt to send them; it is valid until the next call.
type payload interface {
	part(off, n int64) (open func() io.Reader, err error)
	// end checks that the data holds nothing beyond the announced size.
	end() error
	release()
}

// bufPayload reads a plain reader into a pooled part buffer.
type bufPayload struct {
	s              *Store
	name           string
	r              io.Reader
	size, partSize int64
	buf            []byte
}

func (p *bufPayload) part(off, n int64) (func() io.Reader, error) {
	if p.buf == nil {
		p.buf = p.s.getBuf(min(p.size, p.partSize))
	}
	b := p.buf[:n]
	if err := fill(p.name, p.r, b, off, p.size); err != nil {
		return nil, err
	}
	return func() io.Reader { return bytes.NewReader(b) }, nil
}

func (p *bufPayload) end() error { return checkEnd(p.name, p.r, p.size) }

func (p *bufPayload) release() {
	if p.buf != nil {
		p.s.putBuf(p.buf)
		p.buf = nil
	}
}

// getBuf returns a buffer of n bytes: pooled when n is near PartSize,
// freshly allocated for small objects (so many small Puts in flight do not
// each pin a whole part's worth).
func (s *Store) getBuf(n int64) []byte {
	ps := int64(s.cfg.PartSize)
	if n < ps/4 || n > ps {
		return make([]byte, n)
	}
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, ps)
}

func (s *Store) putBuf(b []byte) {
	if int64(cap(b)) == int64(s.cfg.PartSize) {
		b = b[:cap(b)]
		s.bufs.Put(&b)
	}
}

// filePayload sends sections of a file (or any ReaderAt) in place.
type filePayload struct {
	ra   io.ReaderAt
	base int64
}

func newFilePayload(name string, ra readerAtSeeker, size int64) (*filePayload, error) {
	base, err := ra.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
	end, err := ra.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
	// Leave the reader where a sequential Put would have: past the object.
	if _, err := ra.Seek(min(base+size, end), io.SeekStart); err != nil {
		return nil, &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
	switch have := end - base; {
	case have < size:
		return nil, &opError{op: "put", name: name, msg: fmt.Sprintf("data ended after %d of %d bytes", max(have, 0), size), err: io.ErrUnexpectedEOF}
	case have > size:
		return nil, &opError{op: "put", name: name, msg: fmt.Sprintf("data is longer than the announced %d bytes", size)}
	}
	return &filePayload{ra: ra, base: base}, nil
}

func (p *filePayload) part(off, n int64) (func() io.Reader, error) {
	return func() io.Reader { return io.NewSectionReader(p.ra, p.base+off, n) }, nil
}

func (p *filePayload) end() error { return nil }
func (p *filePayload) release()   {}

// partMD5 reads one part once for its Content-MD5.
func partMD5(name string, r io.Reader, n int64) (string, [16]byte, error) {
	h := md5.New()
	got, err := io.Copy(h, r)
	if err == nil && got != n {
		err = io.ErrUnexpectedEOF
	}
	var sum [16]byte
	if err != nil {
		return "", sum, &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
	h.Sum(sum[:0])
	return base64.StdEncoding.EncodeToString(sum[:]), sum, nil
}

// fill reads exactly len(buf) bytes of the object from r.
func fill(name string, r io.Reader, buf []byte, off, size int64) error {
	n, err := io.ReadFull(r, buf)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &opError{op: "put", name: name, msg: fmt.Sprintf("data ended after %d of %d bytes", off+int64(n), size), err: io.ErrUnexpectedEOF}
	default:
		return &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
}

// checkEnd makes sure r has nothing beyond the announced size.
func checkEnd(name string, r io.Reader, size int64) error {
	var b [1]byte
	n, err := io.ReadFull(r, b[:])
	if n > 0 {
		return &opError{op: "put", name: name, msg: fmt.Sprintf("data is longer than the announced %d bytes", size)}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return &opError{op: "put", name: name, msg: "reading data: " + err.Error(), err: err}
	}
	return nil
}

func (s *Store) putSingle(ctx context.Context, name, key string, src payload, size int64) error {
	open, err := src.part(0, size)
	if err != nil {
		return err
	}
	if err := src.end(); err != nil {
		return err
	}
	md5b64, _, err := partMD5(name, open(), size)
	if err != nil {
		return err
	}
	return s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		_, err := s.core.PutObject(ctx, s.cfg.Bucket, key, open(), size, md5b64, "", putOptions)
		return err
	})
}

func (s *Store) putMultipart(ctx context.Context, name, key string, src payload, size, partSize int64) (err error) {
	var uploadID string
	err = s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		var err error
		uploadID, err = s.core.NewMultipartUpload(ctx, s.cfg.Bucket, key, putOptions)
		return err
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if aerr := s.abort(ctx, name, key, uploadID); aerr != nil {
				err = &opError{op: "put", name: name, err: err,
					msg: fmt.Sprintf("%s; the incomplete upload could not be aborted either (%s); the next prune, or `wabackup cleanup --older-than 0s` while no backup runs, removes it", innerMsg(err), innerMsg(aerr))}
			}
		}
	}()

	var parts []minio.CompletePart
	var sums [][16]byte
	for off, num := int64(0), 1; off < size; num++ {
		if err := ctx.Err(); err != nil {
			return &opError{op: "put", name: name, msg: err.Error(), err: err}
		}
		n := min(partSize, size-off)
		open, err := src.part(off, n)
		if err != nil {
			return err
		}
		md5b64, sum, err := partMD5(name, open(), n)
		if err != nil {
			return err
		}
		var op minio.ObjectPart
		err = s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
			var err error
			op, err = s.core.PutObjectPart(ctx, s.cfg.Bucket, key, uploadID, num, open(), n,
				minio.PutObjectPartOptions{Md5Base64: md5b64, DisableContentSha256: true})
			return err
		})
		if err != nil {
			return err
		}
		parts = append(parts, minio.CompletePart{PartNumber: num, ETag: op.ETag})
		sums = append(sums, sum)
		off += n
	}
	if err := src.end(); err != nil {
		return err
	}
	want := multipartETag(sums)
	attempts := 0
	return s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		attempts++
		_, err := s.core.CompleteMultipartUpload(ctx, s.cfg.Bucket, key, uploadID, parts, putOptions)
		if err != nil && attempts > 1 && s3Code(err) == "NoSuchUpload" {
			// An earlier attempt may have completed the upload and lost
			// only the answer: accept the object if it is ours.
			oi, serr := s.client.StatObject(ctx, s.cfg.Bucket, key, minio.StatObjectOptions{})
			if serr == nil && oi.ETag == want {
				return nil
			}
		}
		return err
	})
}

// abort abandons a multipart upload, with a context of its own so that it
// still runs when ctx was cancelled, and a short retry budget.
func (s *Store) abort(ctx context.Context, name, key, uploadID string) error {
	budget := min(s.cfg.RetryBudget/4, 15*time.Second)
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget+5*time.Second)
	defer cancel()
	return s.retry(actx, "abort upload of", name, budget, func(ctx context.Context) error {
		err := s.core.AbortMultipartUpload(ctx, s.cfg.Bucket, key, uploadID)
		if s3Code(err) == "NoSuchUpload" {
			return nil
		}
		return err
	})
}

// innerMsg is an error's message without the "s3 OP NAME: " lead.
func innerMsg(err error) string {
	var oe *opError
	if errors.As(err, &oe) {
		return oe.msg
	}
	return err.Error()
}
