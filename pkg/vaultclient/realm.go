package vaultclient

import (
	"context"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/wabackup/wabackup/pkg/noise"
	"github.com/wabackup/wabackup/pkg/threshold"
	"github.com/wabackup/wabackup/pkg/vault/api"
)

// DefaultRealmTimeout bounds each request of a Realm unless
// RealmOptions.Timeout says otherwise.
const DefaultRealmTimeout = 20 * time.Second

// RealmOptions configure a Realm.
type RealmOptions struct {
	// Options are the TLS and pinning options, as for a Client: Pin (with
	// PinSource) is the fingerprint the vault must present, PinFile the
	// local pin store that records it on first use.
	Options
	// ID, if not zero, is the realm id the vault must have (the one the
	// repository's vault slot records).
	ID threshold.RealmID
	// Timeout bounds each HTTP request, /v2/info included (default
	// DefaultRealmTimeout).
	Timeout time.Duration
}

// Realm is one wabackup-vault as a realm of threshold escrow, for one
// credential: it implements [threshold.Realm] over the vault's realm API
// (API version 2, pkg/vault/api/realm.go), each request carrying the
// pkg/threshold message in its binary encoding.
//
// Before its first request a Realm fetches GET /v2/info and checks the
// vault's fingerprint against the pins exactly as a Client does (the Pin
// option, then the local pin file, which records it on first use), and
// its realm id against RealmOptions.ID; a vault that fails either check
// is asked nothing else. Every other request travels in the realm channel
// (docs/VAULT.md, "The realm channel"): a Noise NK handshake to the pinned key inside
// the TLS 1.3 connection, whose first message carries the request and
// whose second the answer. So a man in the middle holding a certificate
// the client trusts reads no unlock tag, no share and no password
// evaluation, and cannot answer in the vault's name: an answer that is not
// from the pinned key is a *ChannelError, and the realm counts as failed.
//
// It is safe for concurrent use.
type Realm struct {
	conn
	credID  []byte
	wantID  threshold.RealmID
	timeout time.Duration

	mu   sync.Mutex
	info *api.RealmInfo
	id   threshold.RealmID
}

var _ threshold.Realm = (*Realm)(nil)

// NewRealm returns the realm at url (https://host:port) for the credential
// credID (api.CredentialID).
func NewRealm(url string, credID []byte, opt RealmOptions) (*Realm, error) {
	cn, err := newConn(url, opt.Options)
	if err != nil {
		return nil, err
	}
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultRealmTimeout
	}
	return &Realm{conn: *cn, credID: append([]byte(nil), credID...), wantID: opt.ID, timeout: opt.Timeout}, nil
}

// RealmIDMismatchError reports a vault whose realm id is not the one
// recorded: the same key but another realm (its storage was replaced), or
// a slot that was altered.
type RealmIDMismatchError struct {
	URL       string
	Want, Got threshold.RealmID
}

func (e *RealmIDMismatchError) Error() string {
	return fmt.Sprintf("vault %s is realm %x but the repository's vault slot records realm %x: refusing to talk to it (its storage was replaced, or the slot was altered)", e.URL, e.Got[:], e.Want[:])
}

// do runs one request within the per-request timeout: GET /v2/info in
// the clear, every POST in the realm channel.
func (r *Realm) do(ctx context.Context, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var err error
	if in == nil {
		err = r.call(ctx, path, nil, out)
	} else {
		err = r.sealed(ctx, path, in, out)
	}
	if err == nil {
		return nil
	}
	var ae *APIError
	switch {
	case errors.As(err, &ae):
		ae.URL = r.url
		return ae
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return fmt.Errorf("vault %s: no answer within %s", r.url, r.timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// The URL is said once.
		return fmt.Errorf("vault %s: %w", r.url, ue.Err)
	}
	return err
}

// ChannelError reports an answer that did not come through the realm
// channel from the key the vault is pinned by: a proxy or a man in the
// middle answered, or the vault no longer has its key. The realm is
// counted as failed; nothing it said is used.
type ChannelError struct {
	URL, Fingerprint string
	Err              error
}

func (e *ChannelError) Error() string {
	return fmt.Sprintf("vault %s: the answer is not from the key pinned for it (fingerprint %s): %v", e.URL, e.Fingerprint, e.Err)
}

func (e *ChannelError) Unwrap() error { return e.Err }

// sealed sends in (JSON) to path inside the realm channel
// (api.RealmChannelType): the first message of a Noise NK handshake to the
// vault's pinned key, which only that key's holder can read, and reads
// the answer, which only that key's holder can have written, into out.
// An answer outside the channel is only an error: a rate limit or an
// unavailable vault is reported as such, and nothing else is believed.
func (r *Realm) sealed(ctx context.Context, path string, in, out any) error {
	r.mu.Lock()
	info := r.info
	r.mu.Unlock()
	if info == nil {
		return errors.New("vaultclient: a realm request before /v2/info")
	}
	return r.channelCall(ctx, info.PublicKey, info.Fingerprint, path, in, out)
}

// Info fetches the vault's realm description (once; it is kept) and checks
// its key against the pins and its id against RealmOptions.ID.
func (r *Realm) Info(ctx context.Context) (*api.RealmInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.info != nil {
		return r.info, nil
	}
	var in api.RealmInfo
	if err := r.do(ctx, api.PathRealmInfo, nil, &in); err != nil {
		return nil, err
	}
	fp := api.Fingerprint(in.PublicKey)
	if in.Fingerprint != "" && in.Fingerprint != fp {
		return nil, fmt.Errorf("vault %s announces fingerprint %s for a public key whose fingerprint is %s", r.url, in.Fingerprint, fp)
	}
	if err := noise.CheckPublicKey(noise.Ristretto255, in.PublicKey); err != nil {
		return nil, fmt.Errorf("vault %s: its public key is not a ristretto255 key: %v", r.url, err)
	}
	var id threshold.RealmID
	b, err := hex.DecodeString(in.RealmID)
	if err != nil || len(b) != len(id) || hex.EncodeToString(b) != in.RealmID {
		return nil, fmt.Errorf("vault %s: malformed realm id %q (want 32 lowercase hex digits)", r.url, in.RealmID)
	}
	copy(id[:], b)
	if id == (threshold.RealmID{}) {
		return nil, fmt.Errorf("vault %s: the zero realm id", r.url)
	}
	if in.MaxGuesses < 1 || in.MaxGuesses > threshold.MaxAllowedGuesses {
		return nil, fmt.Errorf("vault %s: a guess limit of %d", r.url, in.MaxGuesses)
	}
	if err := r.checkPins(fp); err != nil {
		return nil, err
	}
	if r.wantID != (threshold.RealmID{}) && id != r.wantID {
		return nil, &RealmIDMismatchError{URL: r.url, Want: r.wantID, Got: id}
	}
	in.Fingerprint = fp
	r.info, r.id = &in, id
	return r.info, nil
}

// ID returns the realm's id, after a successful Info.
func (r *Realm) ID() threshold.RealmID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.id
}

// Status returns the state of the credential's record at this realm
// (POST /v2/status); it spends no guess.
func (r *Realm) Status(ctx context.Context) (*api.RealmStatus, error) {
	if _, err := r.Info(ctx); err != nil {
		return nil, err
	}
	var st api.RealmStatus
	if err := r.do(ctx, api.PathRealmStatus, api.RealmStatusRequest{CredentialID: r.credID}, &st); err != nil {
		return nil, err
	}
	switch st.State {
	case api.RealmNotRegistered, api.RealmRegistered, api.RealmNoGuesses:
	default:
		return nil, fmt.Errorf("vault %s: unknown record state %q", r.url, st.State)
	}
	if st.GuessesLeft < 0 || st.Limit < 0 || st.GuessesLeft > st.Limit && st.Limit > 0 {
		return nil, fmt.Errorf("vault %s: impossible counters (%d of %d guesses left)", r.url, st.GuessesLeft, st.Limit)
	}
	return &st, nil
}

// exchange sends one protocol request to path and decodes the answer.
func exchange[T any](ctx context.Context, r *Realm, path string, req encoding.BinaryMarshaler, decode func([]byte) (*T, error)) (*T, error) {
	if _, err := r.Info(ctx); err != nil {
		return nil, err
	}
	msg, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	var reply api.RealmReply
	if err := r.do(ctx, path, api.RealmRequest{CredentialID: r.credID, Message: msg}, &reply); err != nil {
		return nil, err
	}
	resp, err := decode(reply.Message)
	if err != nil {
		return nil, fmt.Errorf("vault %s: %w", r.url, err)
	}
	return resp, nil
}

// Register1 implements [threshold.Realm].
func (r *Realm) Register1(ctx context.Context, req *threshold.Register1Request) (*threshold.Register1Response, error) {
	return exchange(ctx, r, api.PathRealmRegister1, req, threshold.UnmarshalRegister1Response)
}

// Register2 implements [threshold.Realm].
func (r *Realm) Register2(ctx context.Context, req *threshold.Register2Request) (*threshold.Register2Response, error) {
	return exchange(ctx, r, api.PathRealmRegister2, req, threshold.UnmarshalRegister2Response)
}

// Recover1 implements [threshold.Realm].
func (r *Realm) Recover1(ctx context.Context, req *threshold.Recover1Request) (*threshold.Recover1Response, error) {
	return exchange(ctx, r, api.PathRealmRecover1, req, threshold.UnmarshalRecover1Response)
}

// Recover2 implements [threshold.Realm].
func (r *Realm) Recover2(ctx context.Context, req *threshold.Recover2Request) (*threshold.Recover2Response, error) {
	return exchange(ctx, r, api.PathRealmRecover2, req, threshold.UnmarshalRecover2Response)
}

// Recover3 implements [threshold.Realm].
func (r *Realm) Recover3(ctx context.Context, req *threshold.Recover3Request) (*threshold.Recover3Response, error) {
	return exchange(ctx, r, api.PathRealmRecover3, req, threshold.UnmarshalRecover3Response)
}

// Delete implements [threshold.Realm].
func (r *Realm) Delete(ctx context.Context, req *threshold.DeleteRequest) (*threshold.DeleteResponse, error) {
	return exchange(ctx, r, api.PathRealmDelete, req, threshold.UnmarshalDeleteResponse)
}
