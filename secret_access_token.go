package cyberark

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const (
	secretAccessTokenType = "cyberark_access_token"

	// Vault's expiration manager (vault/expiration.go, 1.19) tries a revocation up to 6
	// times, waiting (1<<n) x 10s, +-50%, after the n-th failure: 20s, 40s, 80s, 160s
	// and 320s. Then it marks the lease irrevocable, which leaves it stuck until an
	// operator forces it. We end the lease first, by whichever comes first: our 5th
	// failure for a token (counted in memory, so a plugin restart starts the count
	// again), the token's expiry (at most 60s after the lease's natural end), or 2
	// minutes past the lease's natural end, which Vault's 4th or 5th attempt always is.
	// A lease revoked early (vault lease revoke, a revoked Vault token) has its natural
	// end far ahead, so only the count protects it: a plugin restart during its ten
	// minutes of retries can still let Vault mark it irrevocable.
	maxRevokeAttempts = 5
	revokeGiveUpAfter = 2 * time.Minute
)

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

// accessTokenRevoke revokes the token at the tenant when the lease was issued with
// revocation on. A reused token (token_reuse) is left alone: other
// leases still hold it. Transient failures go back to Vault, which retries; refusals
// and repeated failures are logged and the lease ends anyway, since the token expires
// by itself.
func (b *backend) accessTokenRevoke(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	data := req.Secret.InternalData
	if reused, _ := data["reused"].(bool); reused {
		b.count(metricRevoke, "outcome", "skipped_reused")
		return nil, nil
	}
	if revoke, _ := data["revoke"].(bool); !revoke {
		b.count(metricRevoke, "outcome", "disabled")
		return nil, nil
	}
	token, _ := data["access_token"].(string)
	appID, _ := data["app_id"].(string)
	clientID, _ := data["client_id"].(string)
	clientName, _ := data["client"].(string)
	clientName = cmp.Or(clientName, defaultClient) // leases of earlier releases name none
	c := b.credential(clientName)
	endpoint, _ := data["revoke_endpoint"].(string)
	expiresAt := time.Unix(int64Of(data["expires_at"]), 0)
	now := b.now()
	if token == "" || !now.Before(expiresAt) {
		b.count(metricRevoke, "outcome", "expired")
		return nil, nil
	}
	fingerprint := sha256.Sum256([]byte(token))
	// A lease issued with track_tokens asks its record whether tokens/revoke did it.
	if tracked, _ := data["tracked"].(bool); tracked {
		rec, err := readTokenRecord(ctx, req.Storage, hex.EncodeToString(fingerprint[:]))
		if err != nil {
			return nil, err
		}
		if rec != nil && !rec.RevokedAt.IsZero() {
			b.count(metricRevoke, "outcome", "revoked_before")
			return nil, nil
		}
	}
	// Vault does not set the lease ID on a revocation request, so the lines name the
	// lease by what it holds; the fingerprint matches no token that is not this one and
	// reveals nothing of it.
	role, _ := data["role"].(string)
	logger := b.Logger().With("role", role, "app_id", appID, "expires_at", expiresAt.UTC().Format(time.RFC3339),
		"token_sha256", hex.EncodeToString(fingerprint[:6]))
	if endpoint == "" {
		// Only leases from before revocation needed an endpoint can lack one; retrying
		// cannot give them one.
		logger.Warn("cannot revoke the token at the tenant: the lease names no revocation endpoint; the token stays valid until it expires")
		b.count(metricRevoke, "outcome", "no_endpoint")
		return nil, nil
	}

	var v *view
	start := time.Now()
	err := errStaleView
	for try := 0; try < maxReadTries && errors.Is(err, errStaleView); try++ {
		epoch := c.gate.epochNow()
		if v, err = b.cache.view(ctx, req.Storage, clientName, "", appID); err != nil {
			return nil, err
		}
		if v.config == nil || v.config.ClientID != clientID || v.config.revokeEndpoint(appID) != endpoint {
			// The token belongs to a client or tenant this engine no longer holds; the
			// current one would answer 200 for a token it does not know.
			logger.Warn("cannot revoke the token at the tenant: the config was deleted or now holds another client or tenant; the token stays valid until it expires")
			b.count(metricRevoke, "outcome", "no_client")
			return nil, nil
		}
		// Through the credential's gate: a revocation during a password change waits
		// for it and uses the secret the tenant then accepts.
		err = c.revoke(ctx, req.Storage, v, epoch, token)
	}
	b.measure(metricRevokeLatency, start, outcome(err))
	var te *client.Error
	var spent *budgetSpentError
	switch {
	case err == nil:
		b.revokeFailures.forget(fingerprint)
		b.count(metricRevoke, "outcome", "success")
		logger.Debug("token revoked at the tenant")
		return nil, nil
	case errors.Is(err, client.ErrRevokeUnsupported):
		b.revokeFailures.forget(fingerprint)
		b.count(metricRevoke, "outcome", "unsupported")
		logger.Warn("the tenant cannot revoke tokens; ending the lease, the token stays valid until it expires", "error", err)
		return nil, nil
	case errors.As(err, &te) && te.Refused() && !te.CredentialsRefused():
		// The request itself was refused; asking again cannot change that.
		b.revokeFailures.forget(fingerprint)
		b.count(metricRevoke, "outcome", "refused")
		logger.Warn("tenant refused to revoke the token; ending the lease anyway, the token stays valid until it expires", "error", err)
		return nil, nil
	case errors.As(err, &spent), errors.As(err, &te) && te.CredentialsRefused():
		// Never reported done: Vault retries it (by then a pending rotation may have
		// settled on the secret the tenant accepts), and marks the lease irrevocable,
		// for an operator to see, if it never succeeds before the token expires.
		b.count(metricRevoke, "outcome", "credentials_refused")
		logger.Warn("the tenant refused the engine's credentials for the revocation, or the failed-login budget is spent; Vault will retry", "error", err)
		return nil, fmt.Errorf("revoking the token at CyberArk Identity: %w", err)
	}
	attempt := b.revokeFailures.add(fingerprint, expiresAt, now)
	leaseEnd := req.Secret.IssueTime.Add(req.Secret.TTL)
	if attempt >= maxRevokeAttempts || !req.Secret.IssueTime.IsZero() && now.After(leaseEnd.Add(revokeGiveUpAfter)) {
		b.revokeFailures.forget(fingerprint)
		b.count(metricRevoke, "outcome", "gave_up")
		logger.Error("giving up revoking the token at the tenant; ending the lease anyway, the token stays valid until it expires", "attempts", attempt, "error", err)
		return nil, nil
	}
	b.count(metricRevoke, "outcome", "retry")
	logger.Warn("revoking the token at the tenant failed; Vault will retry", "attempt", attempt, "error", err)
	return nil, fmt.Errorf("revoking the token at CyberArk Identity (attempt %d): %w", attempt, err)
}

// int64Of reads a number from lease internal data, which JSON round trips turn into
// json.Number or float64.
func int64Of(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int:
		return int64(n)
	case float64:
		return int64(n)
	case interface{ Int64() (int64, error) }:
		i, _ := n.Int64()
		return i
	}
	return 0
}

// failureCounter counts failed revocations per token, in memory, keyed by a hash so the
// token itself is not kept. Entries go when the revocation ends or the token expires.
type failureCounter struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]failureEntry
}

type failureEntry struct {
	count     int
	expiresAt time.Time
}

func newFailureCounter() *failureCounter {
	return &failureCounter{entries: make(map[[sha256.Size]byte]failureEntry)}
}

func (f *failureCounter) add(key [sha256.Size]byte, expiresAt, now time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.entries {
		if now.After(e.expiresAt) {
			delete(f.entries, k)
		}
	}
	e := f.entries[key]
	e.count++
	e.expiresAt = expiresAt
	f.entries[key] = e
	return e.count
}

func (f *failureCounter) forget(key [sha256.Size]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.entries, key)
}
