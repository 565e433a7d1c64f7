package cyberark

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const secretAccessTokenType = "cyberark_access_token"

// secretAccessToken is the lease type of a token read. Tokens from a client-credentials
// grant cannot be extended, so the lease is not renewable; its end is the token's.
func secretAccessToken(b *backend) *framework.Secret {
	return &framework.Secret{
		Type: secretAccessTokenType,
		Fields: map[string]*framework.FieldSchema{
			"access_token": {Type: framework.TypeString, Description: "The OAuth2 access token (a JWT)."},
			"token_type":   {Type: framework.TypeString, Description: "The token type, normally Bearer."},
			"expires_in":   {Type: framework.TypeInt, Description: "The lifetime in seconds granted by the tenant."},
			"expires_at":   {Type: framework.TypeString, Description: "When the token expires, RFC 3339 in UTC."},
			"scope":        {Type: framework.TypeString, Description: "The scopes the tenant says it granted."},
		},
		Renew:  b.accessTokenRenew,
		Revoke: b.accessTokenRevoke,
	}
}

// accessTokenRenew is reached only by callers that bypass Vault's own "not renewable"
// check; it says what to do instead.
func (b *backend) accessTokenRenew(_ context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	role, _ := req.Secret.InternalData["role"].(string)
	path := "token"
	if role != "" {
		path += "/" + role
	}
	return nil, fmt.Errorf("CyberArk Identity access tokens cannot be renewed: read %s%s again for a new token", req.MountPoint, path)
}

// accessTokenRevoke ends the lease. The token stays valid at the tenant until it expires.
func (b *backend) accessTokenRevoke(_ context.Context, _ *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return nil, nil
}
