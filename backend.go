// Package cyberark is a HashiCorp Vault secrets engine that holds a CyberArk Identity
// confidential OAuth2 client and turns each token read into a client-credentials grant,
// returned as a Vault lease whose TTL follows the token's expires_in.
package cyberark

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/singleflight"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const backendHelp = `
The CyberArk Identity secrets engine issues OAuth2 access tokens for a confidential
client of a CyberArk Identity tenant. Store the client in "config", optionally define
roles under "roles/", and read "token" or "token/<role>" to get a fresh access token as
a lease whose TTL follows the token's lifetime.
`

// Factory returns a configured backend; Vault calls it when the engine is mounted.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// backend caches what each token read needs (the config, roles, HTTP clients and, for
// roles that opt in, tokens), so a read costs no storage access and no TLS or CA
// parsing. Every cache is emptied by a write through this node and by Invalidate, which
// is how standbys and performance secondaries learn of writes made elsewhere.
type backend struct {
	*framework.Backend

	// configMu serialises config writes, so a partial update reads and writes a
	// consistent config. A write holds it through verify_connection's grant, at most
	// total_timeout; token reads never take it.
	configMu sync.Mutex
	// roleMu does the same for role writes.
	roleMu sync.Mutex

	mu      sync.RWMutex
	gen     uint64 // bumped by every invalidation; a cache fill from an older gen is dropped
	config  *cyberarkConfig
	roles   map[string]*roleEntry
	clients map[string]*client.Client // by app ID; built from config
	// httpClient is shared by all clients of one config, so they share its connection
	// pool and the CA bundle is parsed once.
	httpClient *http.Client
	// tokens holds tokens of roles with token_reuse, in memory only: never in storage.
	tokens map[string]*client.Token
	// grants lets concurrent misses for one token share one grant.
	grants singleflight.Group

	revokeFailures *failureCounter

	metrics *metrics.Metrics // nil: go-metrics' global sink
	now     func() time.Time
}

func newBackend() *backend {
	b := &backend{
		roles:          make(map[string]*roleEntry),
		clients:        make(map[string]*client.Client),
		tokens:         make(map[string]*client.Token),
		revokeFailures: newFailureCounter(),
		now:            time.Now,
	}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configPath},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{pathConfig(b)},
			pathRoles(b),
			pathToken(b),
		),
		Secrets:        []*framework.Secret{secretAccessToken(b)},
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		RunningVersion: Version,
	}
	return b
}

// invalidate is called when another node (or replication) changed a storage key.
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case key == configPath:
		b.resetConfig()
	case strings.HasPrefix(key, rolePrefix):
		b.resetRole(strings.TrimPrefix(key, rolePrefix))
	}
}

func (b *backend) clean(_ context.Context) {
	b.resetConfig()
	b.mu.Lock()
	b.roles = make(map[string]*roleEntry)
	b.mu.Unlock()
}

// resetConfig drops the cached config and everything built from it. Requests already
// under way keep the client they hold and finish with it.
func (b *backend) resetConfig() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	b.config = nil
	b.clients = make(map[string]*client.Client)
	b.tokens = make(map[string]*client.Token)
	if b.httpClient != nil {
		b.httpClient.CloseIdleConnections()
		b.httpClient = nil
	}
}

// resetRole drops a role and all reused tokens. Tokens are keyed by what they were
// granted for, not by role, and a role write is rare: dropping them all is simpler than
// tracking which roles share a token, and costs at most one grant per key.
func (b *backend) resetRole(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	delete(b.roles, name)
	b.tokens = make(map[string]*client.Token)
}
