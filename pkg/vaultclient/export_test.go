package vaultclient

import (
	"context"

	"github.com/wabackup/wabackup/pkg/vault/api"
)

// The steps of ChangePassword and Delete one at a time, so that a test
// knows the token they carry (token_mitm_test.go).

// LoginWithTokenForTest logs in as ChangePassword and Delete do and returns
// the secret and the token, opened with the session key.
func LoginWithTokenForTest(ctx context.Context, c *Client, credID, password []byte) (secret, tok []byte, err error) {
	return c.login(ctx, credID, password, true)
}

// ChangeWithTokenForTest is ChangePassword after its login.
func ChangeWithTokenForTest(ctx context.Context, c *Client, credID, tok, newPassword, secret []byte) error {
	_, err := c.register(ctx, credID, tok, newPassword, secret, 0)
	return err
}

// DeleteWithTokenForTest is Delete after its login.
func DeleteWithTokenForTest(ctx context.Context, c *Client, tok []byte) error {
	return c.inChannel(ctx, api.PathDelete, api.Delete{Token: tok}, nil)
}
