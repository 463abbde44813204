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
}

func (r *Repository) newRepoBlobs() *repoBlobs { return &repoBlobs{br: r.newBlobReader()} }

func (b *repoBlobs) close() { b.br.close() }

// loadTreeBlob returns a copy of blob id's plaintext.
func (b *repoBlobs) loadTreeBlob(ctx context.Context, id ID) ([]byte, error) {
	data, err := b.br.chunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), data...), nil
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
	if s.Version >= 2 {
		root, err := s.rootIDs()
		if err != nil {
			return nil, nil
		}
		blobs := r.newRepoBlobs()
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
