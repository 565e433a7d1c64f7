package cyberark

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
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
			Type:        framework.TypeString,
			Description: "Name of the role, in its one canonical spelling (lower case); other spellings are refused, never folded.",
			Required:    true,
		},
		"scope": fields["scope"],
	}
	// Operations, not the deprecated Callbacks: only Operations can declare the
	// responses that Vault's OpenAPI document publishes. The replication state that the
	// SDK's router asks for before each such request comes from replicationStateCache
	// (backend.go), not a round trip to Vault per read. No forwarding flags: a token read
	// is served where it arrives, a performance standby included. The grant is made
	// there, with that node's caches, and Vault stores the lease with an RPC to the
	// active node, whose instance revokes it at its end.
	op := func(suffix string) map[logical.Operation]framework.OperationHandler {
		return map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathTokenRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "generate", OperationSuffix: suffix},
				Summary:      "Get an access token from the tenant, or a reused one, as a lease (or, for a lease_free role, without one).",
				Responses: map[int][]framework.Response{
					http.StatusOK: {{Description: "The access token and how long it lives.", Fields: tokenResponseFields()}},
				},
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
			// Any segment matches, so that a name in another spelling than the canonical
			// one gets a 400 that says so.
			Pattern:      "token/(?P<role>[^/]+)$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       roleFields,
			Operations:   op("role-token"),
			HelpSynopsis: "Get an access token for a role.",
			HelpDescription: `Performs the OAuth2 client-credentials grant with the role's scopes and
application and returns the access token as a lease. The lease TTL is the token's
remaining lifetime less a safety margin, further bounded by the role's ttl. A role with
token_reuse and lease_free answers without a lease instead: ttl in the data is the
seconds until this engine hands out a newer token, and with rotation_period it tells
Vault Agent to read again ttl+1 seconds later.`,
		},
	}
}

// tokenResponseFields describe a token read's response.
func tokenResponseFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"access_token": {
			Type:         framework.TypeString,
			Description:  "The OAuth2 access token, to send as Authorization: Bearer.",
			DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
		},
		"token_type":   {Type: framework.TypeString, Description: `The token's type as the tenant gave it, usually "Bearer".`},
		"expires_in":   {Type: framework.TypeInt, Description: "Seconds the token has left to live; for a reused token, what is left of its lifetime."},
		"expires_at":   {Type: framework.TypeTime, Description: "When the token expires, RFC 3339 in UTC."},
		"scope":        {Type: framework.TypeString, Description: "The scopes the tenant granted, space-separated."},
		"token_sha256": {Type: framework.TypeString, Description: "Hex SHA-256 of the access token, to match a leaked token to its read in the audit log (audit_non_hmac_response_keys)."},
		"sub":          {Type: framework.TypeString, Description: "A JWT's sub: the service user's ID."},
		"jti":          {Type: framework.TypeString, Description: "A JWT's jti: the token's ID at the tenant."},
		"iat":          {Type: framework.TypeInt, Description: "A JWT's iat: when the tenant issued it, in Unix seconds."},
		"ttl": {
			Type:        framework.TypeInt,
			Description: "lease_free roles only: seconds until this engine hands out a newer token; Vault Agent reads again ttl+1 seconds later.",
		},
		"rotation_period": {
			Type:        framework.TypeInt,
			Description: "lease_free roles only: seconds between the newer tokens this engine hands out; with ttl, it makes Vault Agent schedule its next read.",
		},
	}
}

// pathTokenRead is a token read from start to end: one consistent view of the settings
// (cache.go), the grant it asks for (tokenPlan), a token from the tenant or from the
// reuse cache (client.Token, then client/retry.go to the wire), and the lease.
func (b *backend) pathTokenRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	name := ""
	if _, ok := d.Raw["role"]; ok {
		var resp *logical.Response
		if name, resp = roleName(d, "role"); resp != nil {
			return resp, nil
		}
	}
	var asked []string
	if raw, ok := d.GetOk("scope"); ok {
		asked = splitScopes(raw.([]string))
	}
	return b.readToken(ctx, req, name, asked)
}

// maxReadTries bounds how often a read starts over with a new view: after a password
// change it waited for, or a settle that promoted the pending secret.
const maxReadTries = 3

// readToken serves one read from one view of the settings. It takes no lock across a
// tenant call: a reuse-cache hit is answered at once, and a grant passes the
// credential's gate (rotation.go), which may hold it back while a password change is
// at the tenant, or refuse it at once when the failed-login budget is spent. When the
// secret changed under it, it starts over with a new view.
func (b *backend) readToken(ctx context.Context, req *logical.Request, name string, asked []string) (*logical.Response, error) {
	for range maxReadTries {
		// The role names the client, whose epoch must be taken before the view the
		// read works with, so that a password change in between is seen. A read
		// without a role is the default client's.
		c := b.root
		if name != "" {
			v, err := b.cache.view(ctx, req.Storage, "", name, "")
			if err != nil {
				return nil, err
			}
			c = b.credential(v.name)
		}
		epoch := c.gate.epochNow()
		v, err := b.cache.view(ctx, req.Storage, "", name, "")
		if err != nil {
			return nil, err
		}
		switch {
		case v.name != c.name:
			continue // the role was rewritten to name another client
		case name != "" && v.role == nil:
			return logical.ErrorResponse("role: %q does not exist", name), nil
		case v.config == nil && v.name == defaultClient:
			return logical.ErrorResponse("the engine is not configured: write %sconfig first", req.MountPoint), nil
		case v.config == nil:
			return logical.ErrorResponse("client: role %q names client %q, which does not exist", name, v.name), nil
		case name != "" && !v.config.allowsRole(v.name, name):
			return logical.ErrorResponse("client: client %q does not allow role %q (its allowed_roles: [%s])", v.name, name, strings.Join(v.config.AllowedRoles, " ")), nil
		}
		// Counted from before its first look at the freeze to its answer, so that
		// revoke-all, which freezes and then waits for the reads in flight, lists or
		// sees revoked every token a read could still hand out.
		resp, retry, err := func() (*logical.Response, bool, error) {
			defer c.reads.leave(c.reads.enter())
			return b.readWith(ctx, req, c, v, name, asked, epoch)
		}()
		if retry {
			continue
		}
		return resp, err
	}
	return nil, logical.CodedError(http.StatusServiceUnavailable, "the client secret changed during this request more often than it could follow; try again")
}

// readWith is one try of readToken with its view: the freeze, the plan, the token and
// its lease. retry says that the secret changed under it and the read starts over.
func (b *backend) readWith(ctx context.Context, req *logical.Request, c *credential, v *view, name string, asked []string, epoch uint64) (resp *logical.Response, retry bool, err error) {
	if since, err := c.frozenSince(ctx, req.Storage); err != nil || !since.IsZero() {
		return nil, false, cmp.Or(err, frozenError(c.name, since))
	}
	if v.others, err = b.cache.appProtected(ctx, appKey(v.config.TenantURL, appFor(v.config, v.role)), func(ctx context.Context) (map[string][]string, error) {
		return b.grantScopes(ctx, req.Storage)
	}); err != nil {
		return nil, false, err
	}
	who, err := b.readerIdentity(req, v.role)
	if err != nil {
		return nil, false, err
	}
	plan, resp := newTokenPlan(v, name, asked, who)
	if resp != nil {
		return resp, false, nil
	}
	reader := readerOf(req, b.now())
	tok, err := b.token(ctx, req.Storage, c, v, plan, epoch, reader)
	var coded logical.HTTPCodedError
	switch {
	case errors.Is(err, errStaleView):
		return nil, true, nil
	case errors.Is(err, logical.ErrReadOnly), errors.As(err, &coded):
		return nil, false, err
	case err != nil:
		b.Logger().Error("token request failed", "role", name, "app_id", plan.appID, "error", err)
		return nil, false, tenantFailure("getting a token", err)
	}
	if since, err := c.frozenSince(ctx, req.Storage); err != nil || !since.IsZero() {
		// Frozen while this grant was at the tenant: revoke-all may not have seen
		// the token, so it never leaves. (The switch is in memory unless another
		// node changed it meanwhile.)
		b.withholdToken(ctx, req.Storage, v, tok)
		return nil, false, cmp.Or(err, frozenError(c.name, since))
	}
	resp, err = b.tokenLease(v, plan, tok)
	return resp, false, err
}

// withholdToken revokes a token a read got but does not hand out, since its client
// froze meanwhile. A token the tenant did not take the revocation of stays in the
// reuse cache: another reader may have had it from there before the freeze, and
// revoke-all gathers the cache once this read has ended.
func (b *backend) withholdToken(ctx context.Context, s logical.Storage, v *view, tok *client.Token) {
	if !b.revokeRefused(ctx, s, v, tok) {
		return
	}
	b.cache.dropToken(tok.AccessToken)
	if v.config.TrackTokens {
		// Its record, written before the token reached this read, is marked, which
		// saves revoke-all a second revocation.
		if err := b.markRevoked(ctx, s, tok.SHA256); err != nil {
			b.Logger().Warn("a token revoked at the freeze could not be marked revoked on its record; the next tokens/revoke-all run marks it", "error", err)
		}
	}
}

// token gets the plan's token: from the reuse cache or a grant shared with concurrent
// readers for a role with token_reuse, else a grant of its own.
func (b *backend) token(ctx context.Context, s logical.Storage, c *credential, v *view, plan *tokenPlan, epoch uint64, reader tokenReader) (*client.Token, error) {
	tracked := false // this request's own grant was recorded
	grant := func(ctx context.Context) (*client.Token, error) {
		tok, err := c.grantFor(ctx, s, v, epoch, plan.scopes)
		if err != nil {
			return nil, err
		}
		// Checked before the token can reach the reuse cache or any reader.
		if err := b.checkGranted(ctx, s, v, plan.scopes, tok); err != nil {
			return nil, err
		}
		if _, err := b.verifyToken(ctx, v, plan.scopes, tok); err != nil {
			fate := refusedFate(b.revokeRefused(ctx, s, v, tok))
			b.Logger().Error("a granted token failed its check and was not handed out", "role", plan.role, "app_id", plan.appID, "error", err)
			return nil, logical.CodedError(http.StatusConflict, fmt.Sprintf("the tenant's token failed a check and was not handed out (%s): %s", fate, err))
		}
		if v.config.TrackTokens {
			// Before the token leaves: a token no record names never leaves.
			if err := b.track(ctx, s, v, plan, tok, reader); err != nil {
				b.revokeRefused(ctx, s, v, tok)
				return nil, err
			}
			tracked = true
		}
		return tok, nil
	}
	if plan.reuse {
		tok, hit, err := b.cache.reusedToken(ctx, v, plan.reuseKey(),
			func(t *client.Token) bool { return b.reuseFresh(t, v.role) },
			grant)
		result := "miss"
		if hit {
			result = "hit"
		}
		b.countFor(metricReuse, plan.client, "result", result)
		if err == nil && v.config.TrackTokens && !tracked {
			// Another read's grant, or the reuse cache: the reader is stored with the
			// periodic function's next flush, not with a write of its own.
			b.tracker.addReader(tok.SHA256, reader)
		}
		return tok, err
	}
	return grant(ctx)
}

// tokenPlan is what one token read asks the tenant for and how its lease behaves.
type tokenPlan struct {
	client string
	role   string
	appID  string
	scopes []string
	reuse  bool // token_reuse: the token may be handed to other readers too
	// leaseFree: answer without a lease, with ttl and rotation_period in the data.
	leaseFree bool
	revoke    bool // the lease's end revokes the token at the tenant
	warnings  []string
}

// newTokenPlan applies the role (if any), expanded for the reader who, and the reader's
// scope parameter to the config. A conflict in the settings, a template the reader's
// identity cannot fill or fills outside the role's ceiling, or a scope the reader may
// not ask for is a 400.
func newTokenPlan(v *view, name string, asked []string, who *readerIdentity) (*tokenPlan, *logical.Response) {
	cfg, role := v.config, v.role
	p := &tokenPlan{client: v.name, role: name, appID: appFor(cfg, role)}
	if role != nil && role.AppID != "" && cfg.TokenURL != "" {
		return nil, logical.ErrorResponse("app_id: role %q sets app_id, but the config's token_url replaces per-application endpoints; remove one of them", name)
	}
	rule, err := effectiveScopes(cfg, role)
	if err != nil {
		return nil, logical.ErrorResponse("allowed_scopes: role %q: %s", name, err)
	}
	if rule, err = rule.forReader(role, who); err != nil {
		return nil, logical.ErrorResponse("scopes: role %q: %s", name, err)
	}
	p.scopes = rule.Scopes
	if len(asked) > 0 {
		if err := checkScopes(asked); err != nil {
			return nil, logical.ErrorResponse("scope: %s", err)
		}
		if s, ok := rotationScopeIn(asked, v.protectedScopes()); ok {
			return nil, logical.ErrorResponse("%s", rotationScopeRefusal("scope", s))
		}
		for _, s := range asked {
			if !slices.Contains(rule.Allowed, s) {
				return nil, logical.ErrorResponse("scope: %q is not allowed here; allowed scopes: [%s]", s, strings.Join(rule.Allowed, " "))
			}
		}
		p.scopes = asked
	}
	// Settings written before the guardrails, or a rotation scope set after a role's
	// scopes: refused at the read as at a write.
	if s, ok := rotationScopeIn(p.scopes, v.protectedScopes()); ok {
		field := "scopes"
		if rule.ScopesFrom == "role" {
			field = fmt.Sprintf("role %q: scopes", name)
		}
		return nil, logical.ErrorResponse("%s", rotationScopeRefusal(field, s))
	}
	if len(p.scopes) == 0 && len(cfg.RotationScopes) > 0 {
		return nil, logical.ErrorResponse("scopes: the config sets rotation_scopes but no scopes: a token read without scopes gets the tenant's default grant, which may include the rotation scope; set the config's scopes (or the role's)")
	}
	p.reuse = role != nil && role.TokenReuse
	p.revoke = cfg.revokes()
	if role != nil && role.RevokeTokens != nil {
		p.revoke = *role.RevokeTokens
	}
	if p.reuse {
		p.revoke = false // other leases still hold the token
		p.leaseFree = role.LeaseFree
	}
	if p.revoke && cfg.revokeEndpoint(p.appID) == "" {
		// A config change since the role was written can leave no endpoint; a lease
		// that could never be revoked must not be marked as revocable.
		p.revoke = false
		p.warnings = append(p.warnings, "revoke_tokens is on, but the config has token_url and no revoke_url: this token will not be revoked at the tenant when its lease ends")
	}
	return p, nil
}

// reuseKey identifies what a token was granted for: the same client, app and scope set
// get the same token. The scopes are those expanded for the reader, so readers whose
// identities expand a templated role alike share a token and others never do. A write
// of the client's config empties its part of the cache.
func (p *tokenPlan) reuseKey() string {
	set := slices.Clone(p.scopes)
	slices.Sort(set)
	return clientKey(p.client, p.appID+"\n"+strings.Join(slices.Compact(set), " "))
}

// tokenLease wraps a token in a non-renewable lease that ends before the token does,
// or for a lease-free role answers with the token alone.
func (b *backend) tokenLease(v *view, p *tokenPlan, tok *client.Token) (*logical.Response, error) {
	now := b.now()
	expiresIn := tok.ExpiresIn
	if p.reuse {
		expiresIn = remainingSeconds(tok, now)
	}
	data := map[string]any{
		"access_token": tok.AccessToken,
		"token_type":   tok.TokenType,
		"expires_in":   expiresIn,
		"expires_at":   tok.Expiry.UTC().Format(time.RFC3339),
		"scope":        tok.Scope,
	}
	tokenFacts(tok, data)
	var resp *logical.Response
	var warning string
	if p.leaseFree {
		ttl, period, w, err := leaseFreeTiming(v.role, tok, now)
		if err != nil {
			return nil, tenantFailure("getting a token", err)
		}
		if limit, ok := v.config.tokensEndBy(now); ok && time.Duration(ttl)*time.Second > limit {
			ttl = int64(limit / time.Second)
		}
		data["ttl"], data["rotation_period"] = ttl, period
		resp, warning = &logical.Response{Data: data}, w
	} else {
		ttl, w, err := leaseTTL(tok, now, v.role)
		if err != nil {
			return nil, tenantFailure("getting a token", err)
		}
		if limit, ok := v.config.tokensEndBy(now); ok && ttl > limit {
			ttl = limit
		}
		// Vault stores the internal data with every lease, so it holds only what the
		// lease's end needs: the role for the renewal refusal's message, and for a
		// lease that revokes, what revocation at the tenant needs. Vault keeps it
		// encrypted in its storage, as it keeps the response data itself.
		internal := map[string]any{"role": p.role, "reused": p.reuse, "revoke": p.revoke}
		if p.client != defaultClient {
			internal["client"] = p.client // leases of earlier releases name none: default
		}
		if v.config.TrackTokens {
			internal["tracked"] = true // its end asks the record whether tokens/revoke did it
		}
		if p.revoke {
			internal["app_id"] = p.appID
			internal["client_id"] = v.config.ClientID
			internal["expires_at"] = tok.Expiry.Unix()
			internal["access_token"] = tok.AccessToken
			internal["revoke_endpoint"] = v.config.revokeEndpoint(p.appID)
		}
		resp = b.Secret(secretAccessTokenType).Response(data, internal)
		resp.Secret.TTL = ttl
		resp.Secret.MaxTTL = ttl
		resp.Secret.Renewable = false
		warning = w
	}
	for _, w := range p.warnings {
		resp.AddWarning(w)
	}
	if w := scopeWarning(v.config, p.scopes, tok); w != "" {
		resp.AddWarning(w)
	}
	if w := b.keysWarning(v.config, p.appID); w != "" {
		resp.AddWarning(w)
	}
	if warning != "" {
		resp.AddWarning(warning)
	}
	return resp, nil
}

// tokensEndBy is how long a token handed out now lives at most on a tenant that ends
// a user's tokens when its password changes (password_change_ends_tokens): until the
// next scheduled rotation, so that its lease (or a lease-free ttl) ends with it and
// readers come back for a new one. ok is false when nothing bounds it.
func (c *cyberarkConfig) tokensEndBy(now time.Time) (time.Duration, bool) {
	next := c.Rotation.NextRotation
	if !c.PasswordChangeEndsTokens || next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now).Truncate(time.Second), time.Second), true
}

// remainingSeconds is expires_in for a reused token, which has lived part of its life:
// what a client computes from expires_in must not outlast it.
func remainingSeconds(tok *client.Token, now time.Time) int64 {
	return int64(tok.Expiry.Sub(now) / time.Second)
}

// leaseFreeTiming is what a lease-free read says in place of a lease, in seconds:
// ttl and rotation_period. Vault Agent (consul-template v0.39's leaseCheckWait) reads
// a leaseless secret whose data has both again ttl+1 seconds later. ttl is therefore
// the time until the reuse rule stops handing this token out: the Agent's next read
// gets a newer token, while this one still has the reuse floor (at least the lease
// margin and a second) to live.
func leaseFreeTiming(role *roleEntry, tok *client.Token, now time.Time) (ttlSeconds, periodSeconds int64, warning string, err error) {
	remaining := tok.Expiry.Sub(now)
	if remaining < time.Second {
		return 0, 0, "", fmt.Errorf("the tenant issued a token that expires in under a second (expires_in %d)", tok.ExpiresIn)
	}
	lifetime := time.Duration(tok.ExpiresIn) * time.Second
	floor := reuseFloor(tok, role)
	ttl, period := remaining-floor, lifetime-floor
	// The lifetime decides, not the life left: a token the cache handed out a moment
	// before it crossed the floor gets ttl 0 (read again now), not this branch.
	if lifetime < floor {
		// A token the cache would never hand out again (the role's thresholds ask for
		// more life than the tenant grants): every read makes a grant, and the reader
		// comes back as a lease's holder would, a second before the margin.
		margin := leaseMargin(lifetime)
		ttl, period = remaining-margin-time.Second, lifetime-margin
		warning = fmt.Sprintf("token_reuse cannot reuse this token: the role asks for %s of life left (reuse_min_remaining, reuse_min_fraction), the tenant grants %s; every read makes a grant",
			floor, lifetime)
	}
	ttl = max(ttl.Truncate(time.Second), 0)
	if role.TTL > 0 && role.TTL < ttl {
		ttl = role.TTL // an earlier read gets the same token again: harmless
	}
	return int64(ttl / time.Second), int64(max(period.Truncate(time.Second), time.Second) / time.Second), warning, nil
}

// grant performs one client-credentials grant and records its outcome.
func (b *backend) grant(ctx context.Context, name string, c *client.Client, scopes []string) (*client.Token, error) {
	start := time.Now()
	tok, err := c.Token(ctx, scopes)
	result := outcome(err)
	b.countFor(metricGrant, name, "outcome", result)
	b.measure(metricGrantDuration, start, result)
	// No log line per grant: the plugin logs at trace for Vault to filter, so each line
	// would be JSON written to a pipe and parsed by Vault on every uncached read, to be
	// dropped at Vault's default level. The grant metrics count them instead.
	return tok, err
}

// reuseFresh says whether a cached token may be handed out again: it must have the role's
// threshold left, and whatever the role says, enough for a lease of a second beyond the
// safety margin.
func (b *backend) reuseFresh(tok *client.Token, role *roleEntry) bool {
	if tok == nil {
		return false
	}
	return tok.Expiry.Sub(b.now()) >= reuseFloor(tok, role)
}

// reuseFloor is the life a cached token must have left to be handed out again.
func reuseFloor(tok *client.Token, role *roleEntry) time.Duration {
	lifetime := time.Duration(tok.ExpiresIn) * time.Second
	return max(role.reuseThreshold(lifetime), leaseMargin(lifetime)+time.Second)
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

// tenantFailure turns a failed tenant call into a Vault error with the tenant's own
// words and no secret. Vault clients (the CLI, vault/api, Agent) retry every 5xx, so
// the status matters: a refusal is a 400, since retrying it only repeats a failed login
// that could lock the service user; a rate limit stays a 429; an unreachable tenant, a
// 5xx after our own retries or an unusable answer is a 502.
func tenantFailure(what string, err error) error {
	status := http.StatusBadGateway
	var te *client.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusTooManyRequests:
			status = http.StatusTooManyRequests
		case te.Refused():
			status = http.StatusBadRequest
		}
	}
	return logical.CodedError(status, fmt.Sprintf("%s from CyberArk Identity: %s", what, err))
}
