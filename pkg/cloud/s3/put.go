package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// putOptions: no aws-chunked streaming signature. Plain-HTTP requests sign
// the payload's SHA-256 instead (see sums); HTTPS ones send
// UNSIGNED-PAYLOAD and rely on TLS plus Content-MD5.
var putOptions = minio.PutObjectOptions{ContentType: "application/octet-stream", DisableContentSha256: true}

// sums returns the Content-MD5 value, the raw MD5, and for plain HTTP the
// hex SHA-256 that signs the payload ("" for HTTPS).
func (s *Store) sums(b []byte) (md5b64 string, md5raw [16]byte, sha256hex string) {
	md5b64, md5raw = md5sum(b)
	if !s.cfg.Secure {
		h := sha256.Sum256(b)
		sha256hex = hex.EncodeToString(h[:])
	}
	return md5b64, md5raw, sha256hex
}

// Put implements cloud.Store. Objects up to PartSize go up in one PUT;
// larger ones as a multipart upload of PartSize parts, one part at a time.
// Either way the object appears only when complete. The reader must yield
// exactly size bytes.
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
	r = cloud.ContextReader(ctx, r)
	partSize := int64(s.cfg.PartSize)
	if size <= partSize {
		return s.putSingle(ctx, name, key, r, size)
	}
	if parts := (size + partSize - 1) / partSize; parts > maxParts {
		// Grow the parts (in whole MiB) rather than refuse the object.
		partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
		if partSize > maxPartSize {
			return fmt.Errorf("s3 put %s: %d bytes is more than S3 allows in one object", name, size)
		}
	}
	return s.putMultipart(ctx, name, key, r, size, partSize)
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

func (s *Store) putSingle(ctx context.Context, name, key string, r io.Reader, size int64) error {
	buf := s.getBuf(size)
	defer s.putBuf(buf)
	if err := fill(name, r, buf, 0, size); err != nil {
		return err
	}
	if err := checkEnd(name, r, size); err != nil {
		return err
	}
	md5b64, _, sha := s.sums(buf)
	return s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
		_, err := s.core.PutObject(ctx, s.cfg.Bucket, key, bytes.NewReader(buf), size, md5b64, sha, putOptions)
		return err
	})
}

func (s *Store) putMultipart(ctx context.Context, name, key string, r io.Reader, size, partSize int64) (err error) {
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

	buf := s.getBuf(min(size, partSize))
	defer s.putBuf(buf)
	var parts []minio.CompletePart
	var sums [][16]byte
	for off, num := int64(0), 1; off < size; num++ {
		n := min(partSize, size-off)
		part := buf[:n]
		if err := fill(name, r, part, off, size); err != nil {
			return err
		}
		md5b64, sum, sha := s.sums(part)
		var op minio.ObjectPart
		err := s.retry(ctx, "put", name, s.cfg.RetryBudget, func(ctx context.Context) error {
			var err error
			op, err = s.core.PutObjectPart(ctx, s.cfg.Bucket, key, uploadID, num, bytes.NewReader(part), n,
				minio.PutObjectPartOptions{Md5Base64: md5b64, Sha256Hex: sha, DisableContentSha256: true})
			return err
		})
		if err != nil {
			return err
		}
		parts = append(parts, minio.CompletePart{PartNumber: num, ETag: op.ETag})
		sums = append(sums, sum)
		off += n
	}
	if err := checkEnd(name, r, size); err != nil {
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
