package cyberark

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

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

// rotationScopeRefusal is the 400's reason for a rotation scope asked for a workload.
func rotationScopeRefusal(field, scope string) string {
	return fmt.Sprintf("%s: %q is a rotation scope (rotation_scopes): a token with it may change the engine's own password, so no token read may ask for it; give workloads scopes that do not allow UserMgmt APIs", field, scope)
}

// scopeConflicts are the config's own scope problems: a workload scope that is a
// rotation scope, and, with rotation configured, no workload scopes at all (a grant
// without scope gets the tenant's default, which CyberArk's examples show as "all").
func (c *cyberarkConfig) scopeConflicts() fieldErrors {
	var problems fieldErrors
	if len(c.RotationScopes) == 0 {
		return nil
	}
	if s, ok := rotationScopeIn(c.Scopes, c.RotationScopes); ok {
		problems = append(problems, rotationScopeRefusal("scopes", s))
	}
	if len(c.Scopes) == 0 {
		problems.add("scopes", "is required while rotation_scopes is set: a token read without scopes gets the tenant's default grant, which may include the rotation scope (CyberArk's examples show \"all\"); list the scopes workloads need")
	}
	return problems
}

// roleScopeConflicts are a role's scopes that are rotation scopes of the config.
func (r *roleEntry) roleScopeConflicts(cfg *cyberarkConfig) []string {
	var problems []string
	if s, ok := rotationScopeIn(r.Scopes, cfg.RotationScopes); ok {
		problems = append(problems, rotationScopeRefusal("scopes", s))
	}
	if s, ok := rotationScopeIn(r.AllowedScopes, cfg.RotationScopes); ok {
		problems = append(problems, rotationScopeRefusal("allowed_scopes", s))
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
	rot, isRot := rotationScopeIn(strings.Fields(tok.Scope), cfg.RotationScopes)
	switch {
	case isRot:
		b.count(metricScopeCheck, "result", "rotation_scope")
		b.revokeRefused(ctx, s, v, tok)
		return logical.CodedError(http.StatusConflict, fmt.Sprintf("the tenant granted the rotation scope %q (asked for [%s]): a token that may change the engine's own password is never handed out; it was revoked. Remove the scope from what the application grants this client by default, or from the role", rot, strings.Join(asked, " ")))
	case len(extra) == 0:
		b.count(metricScopeCheck, "result", "ok")
		return nil
	case cfg.VerifyScope == verifyScopeWarn:
		b.count(metricScopeCheck, "result", "wider_warned")
		return nil
	default:
		b.count(metricScopeCheck, "result", "wider_refused")
		b.revokeRefused(ctx, s, v, tok)
		return logical.CodedError(http.StatusConflict, fmt.Sprintf("the tenant granted scopes beyond those asked for: [%s] (asked for [%s]); the token was revoked and not handed out. Fix the application's scope settings at the tenant, or set verify_scope=warn to hand such tokens out with a warning", strings.Join(extra, " "), strings.Join(asked, " ")))
	}
}

// revokeRefused revokes a token the engine will not hand out, at once, through the
// credential's gate like any revocation.
func (b *backend) revokeRefused(ctx context.Context, s logical.Storage, v *view, tok *client.Token) {
	if !v.config.revokes() {
		b.Logger().Warn("a token the engine refused to hand out cannot be revoked (no revocation endpoint); it stays valid until it expires", "expires_at", tok.Expiry.UTC())
		return
	}
	if err := b.root.revoke(ctx, s, v, b.root.gate.epochNow(), tok.AccessToken); err != nil {
		b.Logger().Error("could not revoke a token the engine refused to hand out; it stays valid until it expires", "expires_at", tok.Expiry.UTC(), "error", err)
	}
}
