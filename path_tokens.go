package cyberark

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	op := func(cb framework.OperationFunc, verb, summary string, answer map[string]*framework.FieldSchema) *framework.PathOperation {
		responses := map[int][]framework.Response{http.StatusOK: {{Description: "What was found or done.", Fields: answer}}}
		if answer == nil {
			responses = map[int][]framework.Response{http.StatusNoContent: {{Description: "Done."}}}
		}
		return &framework.PathOperation{
			Callback:                    cb,
			ForwardPerformanceStandby:   true,
			ForwardPerformanceSecondary: true,
			DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: verb, OperationSuffix: "token"},
			Summary:                     summary,
			Responses:                   responses,
		}
	}
	return []*framework.Path{
		{
			Pattern:      "tokens/lookup",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"token":        fields["token"],
				"token_sha256": fields["token_sha256"],
				"token_accessor": {
					Type:        framework.TypeString,
					Description: "Instead of a token: the accessor of a Vault token; the answer lists the tracked tokens it read.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensLookup, "look-up", "Who got a token: its role, client, readers, issue and expiry (track_tokens).", lookupFields()),
			},
			HelpSynopsis: "Find out who got a token, by the token or its SHA-256; needs track_tokens.",
		},
		{
			Pattern:      "tokens/revoke",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       fields,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensRevoke, "revoke", "Revoke a tracked token at the tenant now; its leases then end without another revocation.", nil),
			},
			HelpSynopsis: "Revoke a leaked token at the tenant, by the token or its SHA-256; needs track_tokens.",
		},
		{
			Pattern:      "tokens/revoke-all",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"client": clientField,
				"rotate": {Type: framework.TypeBool, Description: "Change the client's secret at the tenant first (once per incident)."},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensRevokeAll, "revoke-all", "Break glass: freeze a client's token reads, optionally rotate its secret, revoke every token the engine knows it handed out.", revokeAllFields()),
			},
			HelpSynopsis: "Break glass for a client: freeze its reads, rotate, revoke every tracked and cached token. Safe to run again.",
			HelpDescription: `Freezes the client's token reads (a 423 until tokens/unfreeze), rotates its secret
if rotate=true and it was not rotated yet in this incident, then revokes at the tenant
every live token it tracked (track_tokens) and every token its reuse cache holds, and
empties its caches. Each step is in the answer and in the log at warn. A run that fails
or is cut short keeps what it found to revoke: run it again to finish.`,
		},
		{
			Pattern:      "tokens/unfreeze",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"client": clientField,
				"force":  {Type: framework.TypeBool, Description: "Unfreeze although tokens of the incident are not yet revoked: they stay valid until they expire."},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: op(b.pathTokensUnfreeze, "unfreeze", "Allow a frozen client's token reads again, once revoke-all has revoked everything it found.", unfreezeFields()),
			},
			HelpSynopsis: "End an incident: allow a client's token reads again.",
		},
	}
}

func lookupFields() map[string]*framework.FieldSchema {
	str := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeString, Description: d}
	}
	return map[string]*framework.FieldSchema{
		"token_sha256":   str("The token's hex SHA-256."),
		"client":         str("The client that handed it out."),
		"role":           str("The role read, empty for the token path."),
		"app_id":         str("The application it was granted for."),
		"issued_at":      {Type: framework.TypeTime, Description: "When the engine got it."},
		"expires_at":     {Type: framework.TypeTime, Description: "When it expires."},
		"reused":         {Type: framework.TypeBool, Description: "Shared by token_reuse with other readers."},
		"readers":        {Type: framework.TypeSlice, Description: "Up to 16 reads that handed it out: entity_id, token_accessor, request_id, at."},
		"readers_total":  {Type: framework.TypeInt, Description: "Every read that handed it out."},
		"revoked_at":     {Type: framework.TypeTime, Description: "When tokens/revoke or revoke-all revoked it; null if not."},
		"token_accessor": str("With token_accessor: the accessor asked about."),
		"tokens":         {Type: framework.TypeSlice, Description: "With token_accessor: the tracked tokens it read (token_sha256, client, role, expires_at, revoked)."},
	}
}

func revokeAllFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"client":       {Type: framework.TypeString, Description: "The client."},
		"frozen_since": {Type: framework.TypeTime, Description: "When its reads were frozen."},
		"runs":         {Type: framework.TypeInt, Description: "Runs of revoke-all in this incident."},
		"rotated_at":   {Type: framework.TypeTime, Description: "When this incident rotated the secret; null if it did not."},
		"steps":        {Type: framework.TypeSlice, Description: "Each step: step, outcome (done, skipped, failed), detail."},
		"revoked":      {Type: framework.TypeInt, Description: "Tokens revoked at the tenant in this incident."},
		"expired":      {Type: framework.TypeInt, Description: "Tokens found that had expired before their revocation."},
		"pending":      {Type: framework.TypeInt, Description: "Tokens still to revoke: run it again."},
		"complete":     {Type: framework.TypeBool, Description: "Nothing is left to do but tokens/unfreeze."},
	}
}

func unfreezeFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"client":       {Type: framework.TypeString, Description: "The client."},
		"frozen_since": {Type: framework.TypeTime, Description: "When its reads were frozen."},
		"revoked":      {Type: framework.TypeInt, Description: "Tokens the incident revoked."},
		"left_valid":   {Type: framework.TypeInt, Description: "Tokens left valid by force=true."},
	}
}

// clientField names the client of an incident path; config's client is default.
var clientField = &framework.FieldSchema{
	Type:        framework.TypeString,
	Description: "The client: default for the one config holds, or a name under clients/.",
	Default:     defaultClient,
}

// incidentClient is the credential an incident path names, which must exist.
func (b *backend) incidentClient(ctx context.Context, req *logical.Request, d *framework.FieldData) (*credential, *logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return nil, resp, nil
	}
	name, resp := roleName(d, "client")
	if resp != nil {
		return nil, resp, nil
	}
	c := b.credential(name)
	cfg, err := c.load(ctx, req.Storage)
	if err != nil || cfg != nil {
		return c, nil, err
	}
	if inc, err := readIncident(ctx, req.Storage, name); err != nil || inc != nil {
		return c, nil, err // deleted during its incident: unfreeze still ends it
	}
	return nil, logical.ErrorResponse("client: %q does not exist", name), nil
}

func (b *backend) pathTokensRevokeAll(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	c, resp, err := b.incidentClient(ctx, req, d)
	if c == nil || err != nil {
		return resp, err
	}
	r, err := b.revokeAll(ctx, req, c, d.Get("rotate").(bool))
	if err != nil {
		return nil, err
	}
	inc := r.inc
	resp = &logical.Response{Data: map[string]any{
		"client":       c.name,
		"frozen_since": inc.Since.UTC().Format(time.RFC3339),
		"runs":         inc.Runs,
		"rotated_at":   nil,
		"steps":        r.steps,
		"revoked":      inc.Revoked,
		"expired":      inc.Expired,
		"pending":      r.left,
		"complete":     r.failure == nil && r.left == 0,
	}}
	if !inc.RotatedAt.IsZero() {
		resp.Data["rotated_at"] = inc.RotatedAt.UTC().Format(time.RFC3339)
	}
	if r.failure == nil {
		return resp, nil
	}
	// Not finished: the answer still reports every step, with the status of what
	// stopped it, and says to run it again.
	resp.AddWarning("tokens/revoke-all did not finish; the client stays frozen; run it again to finish: " + r.failure.Error())
	code := http.StatusBadGateway
	var coded logical.HTTPCodedError
	if errors.As(r.failure, &coded) {
		code = coded.Code()
	}
	return logical.RespondWithStatusCode(resp, req, code)
}

func (b *backend) pathTokensUnfreeze(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	c, resp, err := b.incidentClient(ctx, req, d)
	if c == nil || err != nil {
		return resp, err
	}
	inc, left, err := b.unfreeze(ctx, req.Storage, c, d.Get("force").(bool))
	if err != nil {
		return nil, err
	}
	if inc == nil {
		return logical.ErrorResponse("client: %q is not frozen", c.name), nil
	}
	return &logical.Response{Data: map[string]any{
		"client":       c.name,
		"frozen_since": inc.Since.UTC().Format(time.RFC3339),
		"revoked":      inc.Revoked,
		"left_valid":   left,
	}}, nil
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
	return nil, nil, logical.CodedError(http.StatusNotFound,
		"no record of this token: it was not handed out by a client with track_tokens=true, or it expired and its record was pruned; without tracking, find its read in the audit log with sys/audit-hash (see the incident runbook)")
}

func (b *backend) pathTokensLookup(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if accessor := d.Get("token_accessor").(string); accessor != "" {
		_, token := d.Raw["token"]
		_, sha := d.Raw["token_sha256"]
		if token || sha {
			return logical.ErrorResponse("token_accessor: give a token, its SHA-256 or a Vault token's accessor, one of them"), nil
		}
		return b.lookupByAccessor(ctx, req.Storage, accessor)
	}
	rec, resp, err := b.recordNamed(ctx, req, d)
	if rec == nil || err != nil {
		return resp, err
	}
	rec.addReaders(b.tracker.peek()[rec.SHA256]...) // not stored yet, but they read it
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
	if rec == nil || err != nil {
		return resp, err
	}
	if !rec.RevokedAt.IsZero() {
		return nil, nil // revoked before: asking the tenant again changes nothing
	}
	if err := b.revokeAt(ctx, req.Storage, b.credential(rec.Client), rec.target()); err != nil {
		// A coded error crosses the plugin's gRPC only unwrapped: its code kept, its
		// text told what it leaves valid.
		code := http.StatusInternalServerError
		var coded logical.HTTPCodedError
		if errors.As(err, &coded) {
			code = coded.Code()
		}
		return nil, logical.CodedError(code, fmt.Sprintf("%s; the token stays valid until %s", err, rec.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	b.Logger().Warn("token revoked at the tenant by tokens/revoke", "client", rec.Client, "role", rec.Role, "token_sha256", rec.SHA256[:12])
	return nil, nil
}

// lookupByAccessor lists the tracked tokens a Vault token read, for the token's accessor:
// what a compromised Vault token got. Readers past the cap of a shared token are not
// kept, which the answer says.
func (b *backend) lookupByAccessor(ctx context.Context, s logical.Storage, accessor string) (*logical.Response, error) {
	pending := b.tracker.peek()
	keys, err := s.List(ctx, tokensPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing token records: %w", err)
	}
	tokens := []map[string]any{}
	capped := 0
	for _, sha := range keys {
		rec, err := readTokenRecord(ctx, s, sha)
		if err != nil {
			return nil, err
		}
		if rec == nil {
			continue // pruned since the listing
		}
		rec.addReaders(pending[sha]...)
		if rec.readBy(accessor) {
			tokens = append(tokens, map[string]any{
				"token_sha256": rec.SHA256, "client": rec.Client, "role": rec.Role,
				"expires_at": rec.ExpiresAt.UTC().Format(time.RFC3339), "revoked": !rec.RevokedAt.IsZero(),
			})
		} else if rec.ReadersTotal > len(rec.Readers) {
			capped++
		}
	}
	resp := &logical.Response{Data: map[string]any{"token_accessor": accessor, "tokens": tokens}}
	if capped > 0 {
		resp.AddWarning(fmt.Sprintf("%d shared tokens had more readers than the %d kept per token; this accessor may have read them too: tokens/revoke-all covers them", capped, maxTrackedReaders))
	}
	// An empty list must not read as "it read nothing" where nothing was recorded.
	untracked, err := b.untrackedClients(ctx, s)
	if err != nil {
		return nil, err
	}
	if len(untracked) > 0 {
		resp.AddWarning(fmt.Sprintf("clients %v do not track tokens (track_tokens=false), so tokens they handed out are not listed here; find what this accessor read through the audit log", untracked))
	}
	return resp, nil
}

// untrackedClients are the configured clients with track_tokens off.
func (b *backend) untrackedClients(ctx context.Context, s logical.Storage) ([]string, error) {
	creds, err := b.storedCredentials(ctx, s)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range creds {
		cfg, err := c.load(ctx, s)
		if err != nil {
			return nil, err
		}
		if cfg != nil && !cfg.TrackTokens {
			out = append(out, c.name)
		}
	}
	return out, nil
}
