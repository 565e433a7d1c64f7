package cyberark

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const (
	// maxLeaseMargin and minLeaseMargin bound the safety margin between the token's
	// expiry and the lease's end: a tenth of the token's lifetime, at least 1s and at
	// most 60s. The lease ends first, so whoever holds the lease never holds an expired
	// token, whatever the clock skew and network delay within the margin.
	maxLeaseMargin = 60 * time.Second
	minLeaseMargin = time.Second
)

func pathToken(b *backend) []*framework.Path {
	fields := map[string]*framework.FieldSchema{
		"scope": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Narrow the token to these scopes (space- or comma-separated); each must be among the allowed scopes.",
		},
	}
	roleFields := map[string]*framework.FieldSchema{
		"role": {
			Type:        framework.TypeLowerCaseString,
			Description: "Name of the role.",
			Required:    true,
		},
		"scope": fields["scope"],
	}
	op := func(suffix string) map[logical.Operation]framework.OperationHandler {
		return map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathTokenRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "generate", OperationSuffix: suffix},
			},
		}
	}
	return []*framework.Path{
		{
			Pattern:      "token$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       fields,
			Operations:   op("token"),
			HelpSynopsis: "Get an access token with the config's default scopes.",
			HelpDescription: `Performs the OAuth2 client-credentials grant against the tenant and returns the
access token as a lease. The lease TTL is the token's remaining lifetime less a safety
margin (a tenth of expires_in, between 1s and 60s). Leases are not renewable: read
again for a new token.`,
		},
		{
			Pattern:      "token/" + framework.GenericNameRegex("role"),
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       roleFields,
			Operations:   op("role-token"),
			HelpSynopsis: "Get an access token for a role.",
			HelpDescription: `Performs the OAuth2 client-credentials grant with the role's scopes and
application and returns the access token as a lease. The lease TTL is the token's
remaining lifetime less a safety margin, further bounded by the role's ttl.`,
		},
	}
}

func (b *backend) pathTokenRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	cfg, gen, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("the engine is not configured: write %sconfig first", req.MountPoint), nil
	}

	roleName := ""
	if v, ok := d.Raw["role"]; ok && v != nil {
		roleName = d.Get("role").(string)
	}
	var role *roleEntry
	if roleName != "" {
		if role, err = b.getRole(ctx, req.Storage, roleName); err != nil {
			return nil, err
		}
		if role == nil {
			return logical.ErrorResponse("role: %q does not exist", roleName), nil
		}
	}
	appID, scopes, allowed, resp := resolveGrant(cfg, roleName, role)
	if resp != nil {
		return resp, nil
	}
	if v, ok := d.GetOk("scope"); ok {
		if asked := splitScopes(v.([]string)); len(asked) > 0 {
			for _, s := range asked {
				if !slices.Contains(allowed, s) {
					return logical.ErrorResponse("scope: %q is not allowed here; allowed scopes: [%s]", s, strings.Join(allowed, " ")), nil
				}
			}
			scopes = asked
		}
	}

	c, err := b.getClient(cfg, gen, appID)
	if err != nil {
		return nil, err
	}
	revoke := cfg.revokes()
	if role != nil && role.RevokeTokens != nil {
		revoke = *role.RevokeTokens
	}
	shared := role != nil && role.TokenReuse
	var tok *client.Token
	if shared {
		tok, err = b.reusedToken(ctx, c, gen, reuseKey(appID, scopes), scopes, role)
	} else {
		tok, err = b.grant(ctx, c, scopes)
	}
	if err != nil {
		b.Logger().Error("token request failed", "role", roleName, "app_id", appID, "error", err)
		return nil, tenantFailure("getting a token", err)
	}

	now := b.now()
	ttl, warning, err := leaseTTL(tok, now, role)
	if err != nil {
		return nil, tenantFailure("getting a token", err)
	}
	expiresIn := tok.ExpiresIn
	if shared {
		// A reused token has lived part of its life: what a client computes from
		// expires_in must not outlast it.
		expiresIn = int64(tok.Expiry.Sub(now) / time.Second)
	}
	internal := map[string]any{
		"role":       roleName,
		"app_id":     appID,
		"client_id":  cfg.ClientID,
		"expires_at": tok.Expiry.Unix(),
		"shared":     shared,
		"revoke":     revoke && !shared,
	}
	if revoke && !shared {
		// What revocation at the tenant needs. Vault keeps lease data encrypted in its
		// storage, as it keeps the response data itself.
		internal["access_token"] = tok.AccessToken
		internal["revoke_endpoint"] = cfg.revokeEndpoint(appID)
	}
	resp = b.Secret(secretAccessTokenType).Response(map[string]any{
		"access_token": tok.AccessToken,
		"token_type":   tok.TokenType,
		"expires_in":   expiresIn,
		"expires_at":   tok.Expiry.UTC().Format(time.RFC3339),
		"scope":        tok.Scope,
	}, internal)
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = ttl
	resp.Secret.Renewable = false
	if warning != "" {
		resp.AddWarning(warning)
	}
	return resp, nil
}

// resolveGrant works out what a read asks the tenant for: the application, the scopes
// asked by default, and the scopes a reader may narrow to. A role's empty scopes fall
// back to the config's; its allowed scopes default to its effective scopes.
func resolveGrant(cfg *cyberarkConfig, roleName string, role *roleEntry) (appID string, scopes, allowed []string, resp *logical.Response) {
	appID, scopes, allowed = cfg.AppID, cfg.Scopes, cfg.Scopes
	if role == nil {
		return appID, scopes, allowed, nil
	}
	if role.AppID != "" {
		if cfg.TokenURL != "" {
			return "", nil, nil, logical.ErrorResponse("app_id: role %q sets app_id, but the config's token_url replaces per-application endpoints; remove one of them", roleName)
		}
		appID = role.AppID
	}
	if len(role.Scopes) > 0 {
		scopes = role.Scopes
	}
	allowed = scopes
	if role.AllowedScopes != nil {
		allowed = role.AllowedScopes
	}
	for _, s := range scopes {
		if !slices.Contains(allowed, s) {
			return "", nil, nil, logical.ErrorResponse("allowed_scopes: role %q falls back to the config's scopes [%s], which its allowed_scopes [%s] do not include; set scopes on the role",
				roleName, strings.Join(scopes, " "), strings.Join(allowed, " "))
		}
	}
	return appID, scopes, allowed, nil
}

// grant performs one client-credentials grant and records its outcome.
func (b *backend) grant(ctx context.Context, c *client.Client, scopes []string) (*client.Token, error) {
	start := time.Now()
	tok, err := c.Token(ctx, scopes)
	result := outcome(err)
	b.count(metricGrant, "outcome", result)
	b.measure(metricGrantDuration, start, result)
	if err == nil {
		b.Logger().Debug("token granted", "expires_in", tok.ExpiresIn, "scope", tok.Scope)
	}
	return tok, err
}

// reuseKey identifies what a token was granted for: the same app and scope set get the
// same token. The client is the config's, and a config write empties the cache.
func reuseKey(appID string, scopes []string) string {
	set := slices.Clone(scopes)
	slices.Sort(set)
	return appID + "\n" + strings.Join(slices.Compact(set), " ")
}

// reusedToken hands out the cached token for key while it has enough life left, and
// otherwise gets a new one; concurrent misses share one grant. The grant runs detached
// from the first reader's cancellation, since other readers may be waiting on it, and is
// bounded by the client's own time budget instead.
func (b *backend) reusedToken(ctx context.Context, c *client.Client, gen uint64, key string, scopes []string, role *roleEntry) (*client.Token, error) {
	b.mu.RLock()
	tok := b.tokens[key]
	if b.gen != gen {
		tok = nil // the cache already belongs to newer settings than c
	}
	b.mu.RUnlock()
	if b.reusable(tok, role) {
		b.count(metricReuse, "result", "hit")
		return tok, nil
	}
	b.count(metricReuse, "result", "miss")

	// The generation is part of the flight's key, so a reader that arrives after a
	// config or role write never joins a grant made with the old settings.
	flight := strconv.FormatUint(gen, 10) + "\n" + key
	ch := b.grants.DoChan(flight, func() (any, error) {
		b.mu.RLock()
		cached := b.tokens[key]
		if b.gen != gen {
			cached = nil
		}
		b.mu.RUnlock()
		if b.reusable(cached, role) {
			return cached, nil // another flight finished between our look and this one
		}
		tok, err := b.grant(context.WithoutCancel(ctx), c, scopes)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		if b.gen == gen {
			b.tokens[key] = tok
		}
		b.mu.Unlock()
		return tok, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*client.Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reusable says whether a cached token may be handed out again: it must have the role's
// threshold left, and whatever the role says, enough for a lease of a second beyond the
// safety margin.
func (b *backend) reusable(tok *client.Token, role *roleEntry) bool {
	if tok == nil {
		return false
	}
	lifetime := time.Duration(tok.ExpiresIn) * time.Second
	floor := leaseMargin(lifetime) + time.Second
	return tok.Expiry.Sub(b.now()) >= max(role.reuseThreshold(lifetime), floor)
}

// leaseMargin is how long before the token's expiry its lease ends.
func leaseMargin(lifetime time.Duration) time.Duration {
	return min(max(lifetime/10, minLeaseMargin), maxLeaseMargin)
}

// leaseTTL is the token's remaining life less the margin, cut to whole seconds (Vault
// reports leases in seconds) and at least 1s, bounded by the role's ttl. It is never
// longer than the token lives.
func leaseTTL(tok *client.Token, now time.Time, role *roleEntry) (time.Duration, string, error) {
	remaining := tok.Expiry.Sub(now)
	if remaining < time.Second {
		return 0, "", fmt.Errorf("the tenant issued a token that expires in under a second (expires_in %d)", tok.ExpiresIn)
	}
	ttl := (remaining - leaseMargin(time.Duration(tok.ExpiresIn)*time.Second)).Truncate(time.Second)
	if ttl < time.Second {
		// Too short a token for a margin: the lease lasts a second, still within its life.
		ttl = time.Second
	}
	if role != nil && role.TTL > 0 && role.TTL < ttl {
		warning := fmt.Sprintf("lease TTL capped at %s by the role's ttl; the token itself stays valid at the tenant until %s",
			role.TTL, tok.Expiry.UTC().Format(time.RFC3339))
		return role.TTL, warning, nil
	}
	return ttl, "", nil
}

// tenantFailure turns a failed tenant call into a Vault error. It is not the reader's
// fault, so it is a 502 (Bad Gateway), with the tenant's own words and no secret.
func tenantFailure(what string, err error) error {
	status := http.StatusBadGateway
	var te *client.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusTooManyRequests {
		status = http.StatusTooManyRequests
	}
	return logical.CodedError(status, fmt.Sprintf("%s from CyberArk Identity: %s", what, err))
}
