package cyberark

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/singleflight"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// maxViewTries bounds how often view starts over because a write landed while it was
// reading storage. Writes come at human pace, so a second try almost always suffices.
const maxViewTries = 8

// errSettingsChanging is returned when the settings changed under every try of a view.
var errSettingsChanging = errors.New("the engine's config or roles changed during this request; try again")

// cache holds everything a token read needs besides the tenant's answer: the config,
// the roles, one tenant client per application, and the tokens of roles that reuse
// them. It is the only place that knows how they stay coherent.
//
// Coherence rests on one counter, gen, bumped under mu by every reset. A request takes
// all it uses from one generation (a view); work started under an older generation
// (a storage read, a grant in flight) never fills the cache of a newer one. Writes on
// this node reset the cache after storing; Vault's Invalidate hook does the same for
// writes made on other nodes.
type cache struct {
	// newClient builds the tenant client for one application of a config.
	newClient func(cfg *cyberarkConfig, appID string) (*client.Client, error)

	mu      sync.RWMutex
	gen     uint64
	config  *cyberarkConfig
	roles   map[string]*roleEntry
	clients map[string]*client.Client // by app ID, all built from config
	// tokens holds tokens of roles with token_reuse, in memory only: never in storage.
	tokens map[string]*client.Token

	// grants lets concurrent misses for one reused token share one grant.
	grants singleflight.Group
}

// view is what one request works with: settings that were current together. Its
// values are shared and must not be modified.
type view struct {
	gen    uint64
	config *cyberarkConfig // nil: the engine is not configured
	role   *roleEntry      // nil: no role was named, or it does not exist
	client *client.Client  // nil when config or a named role is missing
}

func newCache(newClient func(*cyberarkConfig, string) (*client.Client, error)) *cache {
	return &cache{
		newClient: newClient,
		roles:     make(map[string]*roleEntry),
		clients:   make(map[string]*client.Client),
		tokens:    make(map[string]*client.Token),
	}
}

// view returns the config, the role roleName (none when empty) and the tenant client
// for appID, all of one generation. An empty appID means the application the role or
// the config names. Misses are read from storage without holding the lock, so a slow
// storage read never holds up other readers.
func (c *cache) view(ctx context.Context, s logical.Storage, roleName, appID string) (*view, error) {
	for range maxViewTries {
		c.mu.RLock()
		v := &view{gen: c.gen, config: c.config, role: c.roles[roleName]}
		if v.config != nil {
			v.client = c.clients[v.appID(appID)]
		}
		c.mu.RUnlock()
		if v.client != nil && (roleName == "" || v.role != nil) {
			return v, nil
		}

		var err error
		if v.config == nil {
			if v.config, err = readConfig(ctx, s); err != nil {
				return nil, err
			}
		}
		if roleName != "" && v.role == nil {
			if v.role, err = readRole(ctx, s, roleName); err != nil {
				return nil, err
			}
		}
		if v.config == nil || roleName != "" && v.role == nil {
			return v, nil // nothing to build a client for; the caller says what is missing
		}

		c.mu.Lock()
		if c.gen != v.gen {
			c.mu.Unlock()
			continue // a write landed while storage was read: what was read may be stale
		}
		filled, err := c.fillLocked(v, roleName, v.appID(appID))
		c.mu.Unlock()
		return filled, err
	}
	return nil, errSettingsChanging
}

// fillLocked stores what v read into the cache, of v's generation, and completes v
// with the client for appID. The caller holds mu for writing.
func (c *cache) fillLocked(v *view, roleName, appID string) (*view, error) {
	if c.config == nil {
		c.config = v.config
	}
	v.config = c.config
	if roleName != "" {
		if cached := c.roles[roleName]; cached != nil {
			v.role = cached
		} else {
			c.roles[roleName] = v.role
		}
	}
	if v.client = c.clients[appID]; v.client == nil {
		cl, err := c.newClient(v.config, appID)
		if err != nil {
			return nil, err
		}
		c.clients[appID] = cl
		v.client = cl
	}
	return v, nil
}

// appID is the application a request for want goes to: want itself, else the role's,
// else the config's.
func (v *view) appID(want string) string {
	if want != "" {
		return want
	}
	return appFor(v.config, v.role)
}

// reusedToken returns the reused token for key while fresh accepts it, and otherwise
// a new one from grant; concurrent misses share one grant. The grant runs detached from
// the first reader's cancellation, since other readers may be waiting on it; the client
// bounds it with its own time budget. hit reports whether the cache served it.
func (c *cache) reusedToken(ctx context.Context, v *view, key string, fresh func(*client.Token) bool,
	grant func(context.Context) (*client.Token, error),
) (tok *client.Token, hit bool, err error) {
	lookup := func() *client.Token {
		c.mu.RLock()
		defer c.mu.RUnlock()
		if c.gen != v.gen {
			return nil // the cache already belongs to newer settings than v
		}
		return c.tokens[key]
	}
	if tok := lookup(); tok != nil && fresh(tok) {
		return tok, true, nil
	}

	// The generation is part of the flight's key, so a reader that arrives after a
	// config or role write never joins a grant made with the old settings.
	flight := strconv.FormatUint(v.gen, 10) + "\n" + key
	ch := c.grants.DoChan(flight, func() (any, error) {
		if tok := lookup(); tok != nil && fresh(tok) {
			return tok, nil // another flight finished between our look and this one
		}
		tok, err := grant(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.gen == v.gen {
			c.tokens[key] = tok
		}
		c.mu.Unlock()
		return tok, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, false, res.Err
		}
		return res.Val.(*client.Token), false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// resetConfig drops the config and everything built from it. Requests already under
// way keep the client they hold and finish with it.
func (c *cache) resetConfig() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.config = nil
	for _, cl := range c.clients {
		cl.Close()
	}
	c.clients = make(map[string]*client.Client)
	c.tokens = make(map[string]*client.Token)
}

// refreshConfig drops the cached config alone: a write changed only its rotation
// state, not the secret or where it is sent, so the clients and reused tokens built
// from it stay good. Reads take the new state from their next view.
func (c *cache) refreshConfig() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.config = nil
}

// resetRole drops a role and all reused tokens. Tokens are keyed by what they were
// granted for, not by role, and a role write is rare: dropping them all is simpler than
// tracking which roles share a token, and costs at most one grant per key.
func (c *cache) resetRole(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.roles, name)
	c.tokens = make(map[string]*client.Token)
}

// resetAll empties the cache, as when Vault unmounts or reloads the engine.
func (c *cache) resetAll() {
	c.resetConfig()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roles = make(map[string]*roleEntry)
}
