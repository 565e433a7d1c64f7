package cyberark

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

func pathRotateRoot(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: configPath + "/rotate-root",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
			OperationVerb:   "rotate",
			OperationSuffix: "root-credentials",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathRotateRootUpdate,
				// A rotation writes storage, so it must run where storage is written.
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
				Summary:                     "Rotate the client secret now: a new one is generated, changed at the tenant, checked and stored.",
				Responses:                   rotateResponses(),
			},
		},
		HelpSynopsis: "Rotate the client secret: Vault generates a new one and changes it at the tenant.",
		HelpDescription: `Generates a new client secret (from password_policy, or letters and digits of
password_length), stores it beside the current one, changes the service user's password
at the tenant through UserMgmt/ChangeUserPassword with a token granted with the current
secret and rotation_scopes, checks the new secret with a grant, and keeps it. The new
secret is never returned. If the engine stops part way, it finds out on its next start,
and about once a minute after, which secret the tenant accepts and keeps that one; a
config read shows the state (rotation_state).`,
	}
}

func rotateResponses() map[int][]framework.Response {
	return map[int][]framework.Response{
		http.StatusOK: {{
			Description: "The secret was changed at the tenant and stored.",
			Fields: map[string]*framework.FieldSchema{
				"rotated_at": {Type: framework.TypeTime, Description: "When the new secret was stored, RFC 3339 in UTC."},
			},
		}},
	}
}

func (b *backend) pathRotateRootUpdate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	return b.rotateNow(ctx, req, b.root)
}

// rotateNow is an operator's rotation of client c's secret.
func (b *backend) rotateNow(ctx context.Context, req *logical.Request, c *credential) (*logical.Response, error) {
	cfg, err := b.rotateClient(ctx, req.Storage, c, true)
	var re *errRotation
	var te *client.Error
	var coded logical.HTTPCodedError
	switch {
	case errors.As(err, &re):
		return logical.ErrorResponse("%s", re.Error()), nil
	case errors.As(err, &coded):
		// An unsettled or unresolved rotation is a 409, a spent failed-login budget a
		// 400: answers a Vault client does not retry, since a retry could only add
		// failed logins. The coded error itself, not what wraps it: Vault reads the
		// status from the error it is handed.
		return nil, logical.CodedError(coded.Code(), rotationMessage(err))
	case errors.As(err, &te) && te.StatusCode == http.StatusTooManyRequests:
		return nil, logical.CodedError(http.StatusTooManyRequests, rotationMessage(err))
	case err != nil && (errors.Is(err, client.ErrOutcomeUnknown) || outcome(err) != "invalid_response"):
		// The tenant could not be reached, failed, or left the outcome open.
		return nil, logical.CodedError(http.StatusBadGateway, rotationMessage(err))
	case err != nil:
		return nil, err
	}
	resp := &logical.Response{Data: map[string]any{
		"rotated_at": cfg.Rotation.LastRotation.UTC().Format(time.RFC3339),
	}}
	if cfg.PasswordChangeEndsTokens {
		resp.AddWarning(endedTokensWarning)
	}
	return resp, nil
}

// endedTokensWarning is what a rotation says on a tenant that ends tokens at a password
// change: the engine cannot end the leases Vault holds, so it says what they hold.
const endedTokensWarning = "password_change_ends_tokens: the tenant ended every token of the service user at this change: tokens handed out before it no longer work, though their leases (and a lease-free ttl) run on; reused tokens were dropped, and readers get new ones at their next read"

// rotationMessage says that err is the root rotation's, once: the texts of an unsettled
// or unresolved rotation already do.
func rotationMessage(err error) string {
	if msg := err.Error(); strings.HasPrefix(msg, "root rotation") {
		return msg
	}
	return "root rotation: " + err.Error()
}
