package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/wabackup/wabackup/pkg/cloud"
)

// spool collects an object of unknown size: in memory up to spoolMem,
// then in a temporary file, so Put always gets a known size.
type spool struct {
	dir string
	buf bytes.Buffer
	f   *os.File
}

const spoolMem = 4 << 20

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.buf.Len()+len(p) > spoolMem {
		f, err := os.CreateTemp(s.dir, "obj-*.tmp")
		if err != nil {
			return 0, err
		}
		os.Remove(f.Name()) // unlinked: vanishes on close or crash
		if _, err := f.Write(s.buf.Bytes()); err != nil {
			f.Close()
			return 0, err
		}
		s.buf = bytes.Buffer{}
		s.f = f
	}
	if s.f != nil {
		return s.f.Write(p)
	}
	return s.buf.Write(p)
}

func (s *spool) reader() (io.Reader, int64, error) {
	if s.f == nil {
		return bytes.NewReader(s.buf.Bytes()), int64(s.buf.Len()), nil
	}
	size, err := s.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, 0, err
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, 0, err
	}
	return s.f, size, nil
}

func (s *spool) close() {
	if s.f != nil {
		s.f.Close()
	}
}

// saveObject encrypts what fill writes (zstd-compressed if compress) as
// a STREAM object under the current epoch's keys and stores it under
// name. It returns the stored size.
func (r *Repository) saveObject(ctx context.Context, name string, compress bool, fill func(w io.Writer) error) (int64, error) {
	return r.saveObjectWith(ctx, r.keys, name, compress, fill)
}

// saveObjectWith is saveObject under the keys k (a keyring is written
// under its new epoch's before the repository switches to it).
func (r *Repository) saveObjectWith(ctx context.Context, k *keySet, name string, compress bool, fill func(w io.Writer) error) (int64, error) {
	sp := &spool{dir: r.tmpDir}
	defer sp.close()
	sw, err := k.newStreamWriter(sp, name)
	if err != nil {
		return 0, err
	}
	var w io.Writer = sw
	var zw *zstd.Encoder
	if compress {
		zw, err = zstd.NewWriter(sw, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return 0, err
		}
		w = zw
	}
	if err := fill(w); err != nil {
		return 0, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return 0, err
		}
	}
	if err := sw.Close(); err != nil {
		return 0, err
	}
	rd, size, err := sp.reader()
	if err != nil {
		return 0, err
	}
	if err := r.store.Put(ctx, name, rd, size); err != nil {
		return 0, fmt.Errorf("store %s: %w", name, err)
	}
	return size, nil
}

// maxObjectWindow bounds zstd decoding of metadata objects.
const maxObjectWindow = 8 << 20

// openObject returns a reader of the decrypted (and decompressed)
// contents of name. Errors while reading wrap ErrCorrupt and name the
// object.
func (r *Repository) openObject(ctx context.Context, name string, compressed bool) (io.ReadCloser, error) {
	rc, err := r.store.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	sr, err := newStreamReaderKeys(rc, name, r.readKeys())
	if err != nil {
		rc.Close()
		return nil, err
	}
	sr.onOld = func() { r.epochs.oldObjects.Add(1) }
	if !compressed {
		return &objReader{Reader: sr, closers: []func(){func() { rc.Close() }}}, nil
	}
	src := &srcErr{r: sr}
	zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxObjectWindow), zstd.WithDecoderLowmem(true))
	if err != nil {
		rc.Close()
		return nil, err
	}
	return &objReader{Reader: &zstdErr{r: zr, src: src, name: name}, closers: []func(){zr.Close, func() { rc.Close() }}}, nil
}

type objReader struct {
	io.Reader
	closers []func()
}

func (o *objReader) Close() error {
	for _, c := range o.closers {
		c()
	}
	return nil
}

// zstdErr tags decompression failures (after authentication succeeded,
// these mean a bug or a malicious writer holding the key) as corruption.
// A failure of the source (the STREAM reader) is passed on as it is: it
// names the object, and wraps ErrCorrupt only if it is damage.
type zstdErr struct {
	r    io.Reader
	src  *srcErr
	name string
}

func (z *zstdErr) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	if err != nil && err != io.EOF {
		if z.src.err != nil {
			err = z.src.err
		} else if !errors.Is(err, ErrCorrupt) {
			err = fmt.Errorf("%s: %v: %w", z.name, err, ErrCorrupt)
		}
	}
	return n, err
}

// listNames lists object names under prefix.
func (r *Repository) listNames(ctx context.Context, prefix string) ([]cloud.ObjectInfo, error) {
	var out []cloud.ObjectInfo
	err := r.store.List(ctx, prefix, func(fi cloud.ObjectInfo) error {
		out = append(out, fi)
		return nil
	})
	return out, err
}
