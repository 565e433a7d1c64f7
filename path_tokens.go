package cyberark

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// sha256Hex is the spelling of a token's hash: what a read's token_sha256 shows.
var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

func pathTokens(b *backend) []*framework.Path {
	fields := map[string]*framework.FieldSchema{
		"token": {
			Type:         framework.TypeString,
			Description:  "The access token. Give it or token_sha256.",
			DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
		},
		"token_sha256": {Type: framework.TypeString, Description: "The token's hex SHA-256, as a token read's token_sha256 shows it."},
	}
	op := func(cb framework.OperationFunc, verb, summary string) *framework.PathOperation {
		return &framework.PathOperation{
			Callback:                    cb,
			ForwardPerformanceStandby:   true,
			ForwardPerformanceSecondary: true,
			DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: verb, OperationSuffix: "token"},
			Summary:                     summary,
		}
	}
	return []*framework.Path{
		{
			Pattern:      "tokens/lookup",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       fields,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensLookup, "look-up", "Who got a token: its role, client, readers, issue and expiry (track_tokens)."),
			},
			HelpSynopsis: "Find out who got a token, by the token or its SHA-256; needs track_tokens.",
		},
		{
			Pattern:      "tokens/revoke",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       fields,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensRevoke, "revoke", "Revoke a tracked token at the tenant now; its leases then end without another revocation."),
			},
			HelpSynopsis: "Revoke a leaked token at the tenant, by the token or its SHA-256; needs track_tokens.",
		},
	}
}

// recordNamed finds the record of the token a request names.
func (b *backend) recordNamed(ctx context.Context, req *logical.Request, d *framework.FieldData) (*tokenRecord, *logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return nil, resp, nil
	}
	token, sha := d.Get("token").(string), d.Get("token_sha256").(string)
	switch {
	case token != "" && sha != "":
		return nil, logical.ErrorResponse("token_sha256: give the token or its SHA-256, not both"), nil
	case token != "":
		sum := sha256.Sum256([]byte(token))
		sha = hex.EncodeToString(sum[:])
	case !sha256Hex.MatchString(sha):
		return nil, logical.ErrorResponse("token_sha256: must be the token's SHA-256 as 64 lower-case hex digits (or give token)"), nil
	}
	rec, err := readTokenRecord(ctx, req.Storage, sha)
	if err != nil || rec != nil {
		return rec, nil, err
	}
	resp, err := logical.RespondWithStatusCode(logical.ErrorResponse(
		"no record of this token: it was not handed out by a client with track_tokens=true, or it expired and its record was pruned; without tracking, find its read in the audit log with sys/audit-hash (see the incident runbook)"),
		req, http.StatusNotFound)
	return nil, resp, err
}

func (b *backend) pathTokensLookup(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	rec, resp, err := b.recordNamed(ctx, req, d)
	if rec == nil {
		return resp, err
	}
	readers := make([]map[string]any, 0, len(rec.Readers))
	for _, r := range rec.Readers {
		readers = append(readers, map[string]any{"entity_id": r.EntityID, "token_accessor": r.Accessor, "request_id": r.RequestID, "at": r.At.UTC().Format(time.RFC3339)})
	}
	data := map[string]any{
		"token_sha256":  rec.SHA256,
		"client":        rec.Client,
		"role":          rec.Role,
		"app_id":        rec.AppID,
		"issued_at":     rec.IssuedAt.UTC().Format(time.RFC3339),
		"expires_at":    rec.ExpiresAt.UTC().Format(time.RFC3339),
		"reused":        rec.Reused,
		"readers":       readers,
		"readers_total": rec.ReadersTotal,
		"revoked_at":    nil,
	}
	if !rec.RevokedAt.IsZero() {
		data["revoked_at"] = rec.RevokedAt.UTC().Format(time.RFC3339)
	}
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathTokensRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	rec, resp, err := b.recordNamed(ctx, req, d)
	if rec == nil {
		return resp, err
	}
	if !rec.RevokedAt.IsZero() {
		return nil, nil // revoked before: asking the tenant again changes nothing
	}
	c := b.credential(rec.Client)
	v, err := b.cache.view(ctx, req.Storage, rec.Client, "", rec.AppID)
	switch {
	case err != nil:
		return nil, err
	case v.config == nil:
		return logical.ErrorResponse("client: %q, whose token this is, no longer exists; the token stays valid until %s", rec.Client, rec.ExpiresAt.UTC().Format(time.RFC3339)), nil
	case v.config.revokeEndpoint(rec.AppID) == "":
		return logical.ErrorResponse("client: %q has no revocation endpoint (token_url without revoke_url); the token stays valid until %s", rec.Client, rec.ExpiresAt.UTC().Format(time.RFC3339)), nil
	}
	if err := c.revoke(ctx, req.Storage, v, c.gate.epochNow(), rec.AccessToken); err != nil {
		return nil, tenantFailure("revoking the token", err)
	}
	// Gone from the reuse cache, so no reader gets it again; then on record, so that its
	// leases end without asking the tenant.
	b.cache.dropToken(rec.AccessToken)
	rec.RevokedAt = b.now()
	if err := putTokenRecord(ctx, req.Storage, rec); err != nil {
		return nil, fmt.Errorf("the token was revoked at the tenant, but its record could not be stored: %w", err)
	}
	b.Logger().Warn("token revoked at the tenant by tokens/revoke", "client", rec.Client, "role", rec.Role, "token_sha256", rec.SHA256[:12])
	return nil, nil
}
