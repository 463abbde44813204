package archive

import (
	"context"
	"io"
)

// repoBlobs reads the blobs of a snapshot's description (directory
// pieces, page maps) from the repository's packs, authenticated and
// checked against their ids like any chunk. One per goroutine.
type repoBlobs struct {
	br *blobReader
	// cached: through the metadata cache, and on a miss a prefetch of
	// the tree below the piece missed (with walk, its subdirectories
	// too). hint are the root directory's pieces, prefetched with the
	// first miss.
	cached, walk bool
	hint         []ID
}

// newRepoBlobs returns a reader of the store's blobs (check and prune
// read the store itself, not the cache).
func (r *Repository) newRepoBlobs() *repoBlobs { return &repoBlobs{br: r.newBlobReader()} }

// newCachedBlobs returns a reader through the metadata cache, for a walk
// of the whole tree whose root pieces are root (walk) or of its root
// directory only.
func (r *Repository) newCachedBlobs(root []ID, walk bool) *repoBlobs {
	return &repoBlobs{br: r.newBlobReader(), cached: true, walk: walk, hint: root}
}

func (b *repoBlobs) close() { b.br.close() }

// loadTreeBlob returns a copy of blob id's plaintext.
func (b *repoBlobs) loadTreeBlob(ctx context.Context, id ID) ([]byte, error) {
	var data []byte
	var err error
	if b.cached {
		data, err = b.loadCached(ctx, id)
	} else {
		data, err = b.br.chunk(ctx, id)
	}
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), data...), nil
}

// loadCached reads a tree blob through the metadata cache; a miss reads
// what the walk will need next with it (prefetchTree).
func (b *repoBlobs) loadCached(ctx context.Context, id ID) ([]byte, error) {
	r := b.br.r
	c := r.metaCacheFor()
	if c == nil {
		return b.br.chunk(ctx, id)
	}
	if plain, ok := c.get(b.br, id); ok {
		return plain, nil
	}
	r.prefetchTree(ctx, append(append([]ID(nil), b.hint...), id), b.walk)
	b.hint = nil
	return b.br.meta(ctx, id)
}

// closingReader releases its blob reader with the node reader.
type closingReader struct {
	nodeReader
	close func()
}

func (c *closingReader) Close() error {
	err := c.nodeReader.Close()
	c.close()
	return err
}

// findTopNode returns the node of a top-level name (the database) in a
// snapshot's tree, or nil. For a version-2 tree it reads the root
// directory only.
func (r *Repository) findTopNode(ctx context.Context, s *Snapshot, name string) (*Node, error) {
	return r.findTopNodeWith(ctx, s, name, true)
}

// findTopNodeWith is findTopNode, reading the root directory through the
// metadata cache if cached.
func (r *Repository) findTopNodeWith(ctx context.Context, s *Snapshot, name string, cached bool) (*Node, error) {
	if s.Version >= 2 {
		root, err := s.rootIDs()
		if err != nil {
			return nil, nil
		}
		blobs := r.newRepoBlobs()
		if cached {
			blobs = r.newCachedBlobs(root, false)
		}
		defer blobs.close()
		for _, p := range root {
			data, err := blobs.loadTreeBlob(ctx, p)
			if err != nil {
				return nil, nil // damaged or missing: back up afresh
			}
			entries, err := decodeDirPiece(data)
			if err != nil {
				return nil, nil
			}
			for i := range entries {
				if entries[i].name == name {
					n := entries[i].node(name)
					if checkTreeNode(n) != nil {
						return nil, nil
					}
					return n, nil
				}
			}
		}
		return nil, nil
	}
	tr, err := r.OpenTree(ctx, s)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	for {
		n, err := tr.Next()
		if err == io.EOF || err != nil {
			return nil, nil // not found, or damaged: back up afresh
		}
		if n.Path == name {
			return n, nil
		}
	}
}
