package cyberark

import (
	"cmp"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// Every token the engine hands out is a token of the service user whose password
// rotate-root changes, with a token granted with rotation_scopes. Whatever a handed-out
// token's scope allows is all that stands between a workload and the engine's own
// credential (CyberArk's ChangeUserPassword is reported not to check oldPassword). So
// no scope that is a rotation scope is asked for a workload, and a granted scope is
// checked before a token leaves.

const (
	verifyScopeEnforce = "enforce"
	verifyScopeWarn    = "warn"
)

// rotationScopeIn returns the first of scopes that is one of the rotation scopes,
// compared without regard to case: a tenant that folds case must not let "ROTATE"
// through where "rotate" is refused.
func rotationScopeIn(scopes, rotation []string) (string, bool) {
	for _, s := range scopes {
		for _, r := range rotation {
			if strings.EqualFold(s, r) {
				return s, true
			}
		}
	}
	return "", false
}

// defaultDeniedScopes are the scopes no workload token may carry when the config names
// none: CyberArk's examples grant "all", a scope conventionally allowing every API.
var defaultDeniedScopes = []string{"all"}

// protectedScopes are the scopes no workload token may carry: the rotation scopes, and
// the denied scopes (denied_scopes, default "all"), which the operator lists for every
// other scope whose allowed REST APIs include UserMgmt. The engine cannot see what a
// scope allows at the tenant; what it is told, it holds.
func (c *cyberarkConfig) protectedScopes() []string {
	return slices.Concat(c.RotationScopes, c.ManagementScopes, c.deniedScopes())
}

// deniedScopes is denied_scopes as it applies.
func (c *cyberarkConfig) deniedScopes() []string {
	if c.DeniedScopes == nil {
		return defaultDeniedScopes
	}
	return c.DeniedScopes
}

// rotationScopeRefusal is the 400's reason for a protected scope asked for a workload.
func rotationScopeRefusal(field, scope string) string {
	return fmt.Sprintf("%s: %q is a rotation, management or denied scope (this client's rotation_scopes, management_scopes or denied_scopes, or another client's rotation_scopes or management_scopes at the same application): a token with it may change a password the engine holds, so no token read may ask for it; give workloads scopes that do not allow UserMgmt APIs", field, scope)
}

// scopeConflicts are the config's own scope problems: a workload scope that is a
// rotation scope, and, with rotation configured, no workload scopes at all (a grant
// without scope gets the tenant's default, which CyberArk's examples show as "all").
func (c *cyberarkConfig) scopeConflicts() fieldErrors {
	var problems fieldErrors
	if s, ok := rotationScopeIn(c.Scopes, c.protectedScopes()); ok {
		problems = append(problems, rotationScopeRefusal("scopes", s))
	}
	if len(c.RotationScopes) > 0 && len(c.Scopes) == 0 {
		problems.add("scopes", "is required while rotation_scopes is set: a token read without scopes gets the tenant's default grant, which may include the rotation scope (CyberArk's examples show \"all\"); list the scopes workloads need")
	}
	return problems
}

// roleScopeConflicts are a role's scopes, and ceiling patterns, that are or match
// rotation scopes of the config.
func (r *roleEntry) roleScopeConflicts(cfg *cyberarkConfig) []string {
	var problems []string
	if s, ok := rotationScopeIn(r.Scopes, cfg.protectedScopes()); ok {
		problems = append(problems, rotationScopeRefusal("scopes", s))
	}
	if s, ok := rotationScopeIn(r.AllowedScopes, cfg.protectedScopes()); ok {
		problems = append(problems, rotationScopeRefusal("allowed_scopes", s))
	}
	if pattern, s, ok := ceilingCovers(r.ScopeCeiling, cfg.protectedScopes()); ok {
		problems = append(problems, ceilingRefusal(pattern, s))
	}
	return problems
}

// wider is what the tenant granted beyond the scopes asked for; nothing when nothing
// was asked (the tenant's default).
func wider(asked []string, tok *client.Token) []string {
	if len(asked) == 0 {
		return nil
	}
	var extra []string
	for _, g := range strings.Fields(tok.Scope) {
		if !slices.Contains(asked, g) {
			extra = append(extra, g)
		}
	}
	return extra
}

// scopeWarning is the warning a token handed out under verify_scope=warn carries, to
// every reader of it (reused tokens included).
func scopeWarning(cfg *cyberarkConfig, asked []string, tok *client.Token) string {
	extra := wider(asked, tok)
	if len(extra) == 0 || cfg.VerifyScope != verifyScopeWarn {
		return ""
	}
	return fmt.Sprintf("the tenant granted scopes beyond those asked for: [%s] (asked for [%s]); handed out because verify_scope=warn", strings.Join(extra, " "), strings.Join(asked, " "))
}

// checkGranted compares the scope the tenant granted with the scopes asked for. A
// rotation scope is always refused; a scope beyond those asked is refused, or handed
// out with a warning under verify_scope=warn. An answer without scope means the scopes
// asked for (RFC 6749 §5.1); nothing is asked means the tenant's default, which only
// the rotation scopes are held against. A refused token is revoked at once, and the
// answer is a 409: the tenant's grant conflicts with what the engine may hand out,
// which a retry does not change.
func (b *backend) checkGranted(ctx context.Context, s logical.Storage, v *view, asked []string, tok *client.Token) error {
	cfg := v.config
	extra := wider(asked, tok)
	granted := strings.Fields(tok.Scope)
	if tok.Claims != nil {
		// The claim is what the tenant's APIs honour: checked here whatever
		// verify_tokens says, for the rotation scope at least.
		granted = append(granted, tok.Claims.Strings("scope")...)
	}
	rot, isRot := rotationScopeIn(granted, v.protectedScopes())
	switch {
	case isRot:
		b.count(metricScopeCheck, "result", "rotation_scope")
		fate := refusedFate(b.revokeRefused(ctx, s, v, tok))
		return logical.CodedError(http.StatusConflict, fmt.Sprintf("the tenant granted the protected scope %q (asked for [%s]; rotation_scopes, denied_scopes): a token that may change the engine's own password is never handed out; %s. Stop the application from granting it to this client unasked", rot, strings.Join(asked, " "), fate))
	case len(extra) == 0:
		b.count(metricScopeCheck, "result", "ok")
		return nil
	case cfg.VerifyScope == verifyScopeWarn:
		b.count(metricScopeCheck, "result", "wider_warned")
		return nil
	default:
		b.count(metricScopeCheck, "result", "wider_refused")
		fate := refusedFate(b.revokeRefused(ctx, s, v, tok))
		return logical.CodedError(http.StatusConflict, fmt.Sprintf("the tenant granted scopes beyond those asked for: [%s] (asked for [%s]); the token was not handed out, and %s. Fix the application's scope settings at the tenant, or set verify_scope=warn to hand such tokens out with a warning", strings.Join(extra, " "), strings.Join(asked, " "), fate))
	}
}

// revokeRefused revokes a token the engine will not hand out, at once, through the
// credential's gate like any revocation. It does so wherever the tenant has a
// revocation endpoint: revoke_tokens=false is about lease ends, and a token the engine
// refused is never in a lease.
func (b *backend) revokeRefused(ctx context.Context, s logical.Storage, v *view, tok *client.Token) (revoked bool) {
	if v.config.revokeEndpoint(v.appID("")) == "" {
		b.Logger().Warn("a token the engine refused to hand out cannot be revoked (no revocation endpoint); it stays valid until it expires", "expires_at", tok.Expiry.UTC())
		return false
	}
	c := b.credential(v.name)
	if err := c.revoke(ctx, s, v, c.gate.epochNow(), tok.AccessToken); err != nil {
		b.Logger().Error("could not revoke a token the engine refused to hand out; it stays valid until it expires", "expires_at", tok.Expiry.UTC(), "error", err)
		return false
	}
	return true
}

// refusedFate says what became of a refused token, for the refusal's message.
func refusedFate(revoked bool) string {
	if revoked {
		return "it was revoked"
	}
	return "it could not be revoked and stays valid until it expires (the log says why)"
}

const (
	verifyTokensAuto    = "auto"
	verifyTokensEnforce = "enforce"
	verifyTokensOff     = "off"

	// jwtExpirySkew is how far a JWT's lifetime may differ from the answer's
	// expires_in: the engine counts the lifetime from when it sent the request.
	jwtExpirySkew = time.Minute
	// keysRetryAfter spaces the engine's attempts to find keys that were not found.
	keysRetryAfter = time.Minute
)

// keyCache holds the tenant's signing keys per key-set URL, fetched once and again
// only for a kid it does not know, through one fetch in flight at a time.
type keyCache struct {
	mu     sync.Mutex
	sets   map[string]*keySet
	flight singleflight.Group
}

type keySet struct {
	keys map[string]*rsa.PublicKey
	// missing says why no keys could be had, when they could not; at is when.
	missing string
	at      time.Time
}

func newKeyCache() *keyCache { return &keyCache{sets: make(map[string]*keySet)} }

// keysURL is where the signing keys of appID's tokens are: jwks_url when set, else the
// tenant's per-application key endpoint (reported, not documented), else nowhere.
func (c *cyberarkConfig) keysURL(appID string) string {
	switch {
	case c.JWKSURL != "":
		return c.JWKSURL
	case c.TokenURL == "" && c.TenantURL != "":
		return c.tenantEndpoint("keys", appID)
	}
	return ""
}

// discoveryURL is the tenant's OpenID discovery document for appID (documented).
func (c *cyberarkConfig) discoveryURL(appID string) string {
	if c.TokenURL != "" || c.TenantURL == "" {
		return ""
	}
	return strings.TrimRight(c.TenantURL, "/") + "/" + url.PathEscape(appID) + "/.well-known/openid-configuration"
}

// keys returns the key set for appID, fetching it when it is not cached or refresh
// asks for it (an unknown kid). Keys that cannot be found are remembered as missing,
// and asked for again at most every keysRetryAfter.
func (b *backend) keys(ctx context.Context, cfg *cyberarkConfig, tc *client.Client, appID string, refresh bool) *keySet {
	keysURL := cfg.keysURL(appID)
	k := b.keyCache
	k.mu.Lock()
	set := k.sets[keysURL]
	k.mu.Unlock()
	now := b.now()
	switch {
	case keysURL == "":
		return &keySet{missing: "no key set is known for token_url: set jwks_url"}
	case set != nil && set.missing == "" && !refresh:
		return set
	case set != nil && now.Sub(set.at) < keysRetryAfter && (set.missing != "" || refresh):
		return set
	}
	// The fetch is shared and its result kept for keysRetryAfter, so it must not end
	// with the first caller's request: a caller that gives up waits no longer, and the
	// fetch goes on for the others.
	ch := k.flight.DoChan(keysURL, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		fetched := &keySet{at: now}
		body, err := tc.FetchPublic(ctx, keysURL)
		if err != nil && cfg.JWKSURL == "" {
			// The reported key endpoint did not answer: the documented discovery
			// document may name another.
			if doc, derr := tc.FetchPublic(ctx, cfg.discoveryURL(appID)); derr == nil {
				var d struct {
					JWKSURI string `json:"jwks_uri"`
				}
				if json.Unmarshal(doc, &d) == nil && d.JWKSURI != "" && d.JWKSURI != keysURL {
					body, err = tc.FetchPublic(ctx, d.JWKSURI)
				}
			}
		}
		if err == nil {
			fetched.keys, err = client.ParseJWKS(body)
		}
		if err != nil {
			fetched.missing = fmt.Sprintf("the signing keys at %s could not be had: %s", keysURL, err)
		}
		k.mu.Lock()
		k.sets[keysURL] = fetched
		k.mu.Unlock()
		return fetched, nil
	})
	select {
	case res := <-ch:
		return res.Val.(*keySet)
	case <-ctx.Done():
		return &keySet{at: now, missing: "the request ended while the signing keys were fetched: " + ctx.Err().Error()}
	}
}

// verifyToken checks a granted token before it leaves: a JWT's signature against the
// tenant's keys, its issuer, audience, expiry, subject and scope claim. Under auto an
// opaque token, or keys that cannot be found, only warn (the keys' location is
// reported, not documented, and an unknown must not become an outage); under enforce
// they refuse. A failed check names the check, never the token.
func (b *backend) verifyToken(ctx context.Context, v *view, asked []string, tok *client.Token) (warning string, err error) {
	cfg := v.config
	mode := cmp.Or(cfg.VerifyTokens, verifyTokensAuto)
	if cfg.managed() {
		// The sub a managed client's verified write pins is whom its manager resets:
		// only a token the tenant's own keys vouch for may name it.
		mode = verifyTokensEnforce
	}
	if mode == verifyTokensOff {
		return "", nil
	}
	if mode == verifyTokensAuto && cfg.keysURL(v.appID("")) == "" {
		// A token_url endpoint without jwks_url: its tokens follow no known
		// convention (issuer, audience), so auto checks their scope only; the config
		// read's signing_keys says so.
		b.count(metricTokenCheck, "result", "unchecked")
		return "", nil
	}
	// The client decoded it once already; a token without Claims is parsed again only
	// to say why it is no JWT.
	jwt, perr := tok.Claims, error(nil)
	if jwt == nil {
		jwt, perr = client.ParseJWT(tok.AccessToken)
	}
	switch {
	case errors.Is(perr, client.ErrNotJWT) && mode == verifyTokensAuto:
		b.count(metricTokenCheck, "result", "opaque")
		return "", nil
	case perr != nil:
		b.count(metricTokenCheck, "result", "refused")
		return "", fmt.Errorf("token check: %w", perr)
	}
	appID := v.appID("")
	set := b.keys(ctx, cfg, v.client, appID, false)
	if set.missing == "" && set.keys[jwt.Kid] == nil {
		set = b.keys(ctx, cfg, v.client, appID, true) // a new key: refreshed once
	}
	switch key := set.keys[jwt.Kid]; {
	case set.missing != "" && mode == verifyTokensAuto:
		b.count(metricTokenCheck, "result", "keys_missing")
		warning = "the token's signature was not checked: " + set.missing
	case set.missing != "":
		b.count(metricTokenCheck, "result", "refused")
		return "", errors.New("token check: signature: " + set.missing)
	case key == nil:
		b.count(metricTokenCheck, "result", "refused")
		return "", fmt.Errorf("token check: signature: the token is signed with a key the tenant does not publish (kid %q)", jwt.Kid)
	default:
		if err := jwt.VerifyRS256(key); err != nil {
			b.count(metricTokenCheck, "result", "refused")
			return "", fmt.Errorf("token check: signature: %w", err)
		}
	}
	if err := cfg.checkClaims(jwt, appID, asked, tok); err != nil {
		b.count(metricTokenCheck, "result", "refused")
		return "", fmt.Errorf("token check: %w", err)
	}
	if warning == "" {
		b.count(metricTokenCheck, "result", "verified")
	}
	return warning, nil
}

// checkClaims checks a JWT's claims against the config and the answer it came with.
func (c *cyberarkConfig) checkClaims(jwt *client.JWT, appID string, asked []string, tok *client.Token) error {
	if c.TokenURL == "" {
		// CyberArk writes the issuer with and without the trailing slash.
		want := strings.TrimRight(c.TenantURL, "/") + "/" + appID
		if iss := strings.TrimRight(jwt.String("iss"), "/"); iss != want {
			return fmt.Errorf("iss: the token was issued by %q, want %q", jwt.String("iss"), want+"/")
		}
	}
	aud := cmp.Or(c.TokenAudience, c.ClientID)
	if !slices.Contains(jwt.Strings("aud"), aud) {
		return fmt.Errorf("aud: the token is for %q, want %q (token_audience)", strings.Join(jwt.Strings("aud"), " "), aud)
	}
	// The token's own lifetime (exp - iat) against the answer's expires_in: a check that
	// holds whatever the skew between the tenant's clock and Vault's.
	exp, ok := jwt.Int("exp")
	iat, hasIat := jwt.Int("iat")
	switch {
	case !ok:
		return errors.New("exp: the token has no expiry")
	case hasIat && (time.Duration(exp-iat)*time.Second-time.Duration(tok.ExpiresIn)*time.Second).Abs() > jwtExpirySkew:
		return fmt.Errorf("exp: the token lives %ds (exp - iat), the answer's expires_in says %ds", exp-iat, tok.ExpiresIn)
	case !hasIat && time.Unix(exp, 0).Sub(tok.Expiry).Abs() > jwtExpirySkew:
		return fmt.Errorf("exp: the token expires at %s, the answer's expires_in says %s", time.Unix(exp, 0).UTC().Format(time.RFC3339), tok.Expiry.UTC().Format(time.RFC3339))
	}
	if c.PinnedSub != "" && jwt.String("sub") != c.PinnedSub {
		return fmt.Errorf("sub: the token is for another user than the one pinned at the last verified config write (%q): the client may have been swapped at the tenant; write the config's client_secret again to pin the new one", c.PinnedSub)
	}
	claimed := jwt.Strings("scope")
	if s, ok := rotationScopeIn(claimed, c.protectedScopes()); ok {
		return fmt.Errorf("scope: the token's scope claim holds the protected scope %q", s)
	}
	if len(asked) > 0 && c.VerifyScope != verifyScopeWarn {
		for _, s := range claimed {
			if !slices.Contains(asked, s) {
				return fmt.Errorf("scope: the token's scope claim holds %q, which was not asked for ([%s])", s, strings.Join(asked, " "))
			}
		}
	}
	return nil
}

// tokenFacts is what a read tells the reader about its token: its SHA-256, to match a
// leaked token to its read in the audit log, and a JWT's claims an application may
// want. Both were worked out once, with the token; no signature is checked here: the
// token was checked when it was granted.
func tokenFacts(tok *client.Token, data map[string]any) {
	data["token_sha256"] = tok.SHA256
	jwt := tok.Claims
	if jwt == nil {
		return
	}
	if sub := jwt.String("sub"); sub != "" {
		data["sub"] = sub
	}
	if jti := jwt.String("jti"); jti != "" {
		data["jti"] = jti
	}
	if iat, ok := jwt.Int("iat"); ok {
		data["iat"] = iat
	}
}

// keysWarning is the warning a token read carries under verify_tokens=auto while the
// signing keys of its application could not be found: its signature was not checked.
func (b *backend) keysWarning(cfg *cyberarkConfig, appID string) string {
	if cmp.Or(cfg.VerifyTokens, verifyTokensAuto) != verifyTokensAuto {
		return ""
	}
	b.keyCache.mu.Lock()
	set := b.keyCache.sets[cfg.keysURL(appID)]
	b.keyCache.mu.Unlock()
	if set == nil || set.missing == "" {
		return ""
	}
	return "the token's signature was not checked: " + set.missing
}

// keyStatus says, for a config read, whether the config's signing keys were found.
func (b *backend) keyStatus(cfg *cyberarkConfig) string {
	keysURL := cfg.keysURL(cfg.AppID)
	if keysURL == "" {
		return "none: token_url without jwks_url"
	}
	b.keyCache.mu.Lock()
	set := b.keyCache.sets[keysURL]
	b.keyCache.mu.Unlock()
	switch {
	case set == nil:
		return "not fetched yet"
	case set.missing != "":
		return set.missing
	}
	return "found"
}
