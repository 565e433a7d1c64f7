package cyberark

import (
	"cmp"
	"context"
	"errors"
	"strconv"
	"strings"
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

// cache holds everything a token read needs besides the tenant's answer: each
// client's config, the roles, one tenant client per client and application, and the
// tokens of roles that reuse them. It is the only place that knows how they stay
// coherent.
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
	configs map[string]*cyberarkConfig // by client name
	roles   map[string]*roleEntry
	clients map[string]*client.Client // by clientKey(client name, app ID)
	// tokens holds tokens of roles with token_reuse, in memory only: never in storage.
	// Their keys start with clientKey's client part.
	tokens map[string]*client.Token

	// grants lets concurrent misses for one reused token share one grant.
	grants singleflight.Group

	// protected is the password-changing scopes by application key, of generation
	// protectedGen (appProtected).
	protected    map[string][]string
	protectedGen uint64
}

// appProtected returns the rotation and management scopes that any client asks for at
// the application key, read from storage once per generation: token reads hold each
// token against them.
func (c *cache) appProtected(ctx context.Context, key string, load func(context.Context) (map[string][]string, error)) ([]string, error) {
	c.mu.RLock()
	all, gen := c.protected, c.gen
	fresh := all != nil && c.protectedGen == gen
	c.mu.RUnlock()
	if !fresh {
		var err error
		if all, err = load(ctx); err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.gen == gen {
			c.protected, c.protectedGen = all, gen
		}
		c.mu.Unlock()
	}
	return all[key], nil
}

// view is what one request works with: settings that were current together. Its
// values are shared and must not be modified.
type view struct {
	gen    uint64
	name   string          // the client's name
	config *cyberarkConfig // nil: the client is not configured
	role   *roleEntry      // nil: no role was named, or it does not exist
	client *client.Client  // nil when config or a named role is missing
	// others are the rotation and management scopes every client asks for at the
	// read's application, when the read has looked them up (cache.appProtected).
	others []string
}

// protectedScopes are the scopes no token of this view may carry: its own client's
// rotation, management and denied scopes, and every other client's rotation and
// management scopes at the same application.
func (v *view) protectedScopes() []string {
	return append(v.config.protectedScopes(), v.others...)
}

func newCache(newClient func(*cyberarkConfig, string) (*client.Client, error)) *cache {
	return &cache{
		newClient: newClient,
		configs:   make(map[string]*cyberarkConfig),
		roles:     make(map[string]*roleEntry),
		clients:   make(map[string]*client.Client),
		tokens:    make(map[string]*client.Token),
	}
}

// clientKey keys what the cache holds for one client: a name never holds a newline.
func clientKey(name, rest string) string {
	return name + "\n" + rest
}

// view returns the role roleName (none when empty), the config of the client it names
// (clientName when no role is named; "" is the default client) and the tenant client
// for appID, all of one generation. An empty appID means the application the role or
// the config names. Misses are read from storage without holding the lock, so a slow
// storage read never holds up other readers.
func (c *cache) view(ctx context.Context, s logical.Storage, clientName, roleName, appID string) (*view, error) {
	for range maxViewTries {
		c.mu.RLock()
		v := &view{gen: c.gen, role: c.roles[roleName], name: cmp.Or(clientName, defaultClient)}
		known := roleName == "" || v.role != nil
		if known {
			v.name = v.clientName()
			if v.config = c.configs[v.name]; v.config != nil {
				v.client = c.clients[clientKey(v.name, v.appID(appID))]
			}
		}
		c.mu.RUnlock()
		if v.client != nil && known {
			return v, nil
		}

		var err error
		if !known {
			if v.role, err = readRole(ctx, s, roleName); err != nil || v.role == nil {
				return v, err // no role: the caller says what is missing
			}
			v.name = v.clientName()
		}
		if v.config == nil {
			if v.config, err = readConfigAt(ctx, s, clientStorageKey(v.name)); err != nil {
				return nil, err
			}
		}
		if v.config == nil {
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
	if cached := c.configs[v.name]; cached != nil {
		v.config = cached
	} else {
		c.configs[v.name] = v.config
	}
	if roleName != "" {
		if cached := c.roles[roleName]; cached != nil {
			v.role = cached
		} else {
			c.roles[roleName] = v.role
		}
	}
	key := clientKey(v.name, appID)
	if v.client = c.clients[key]; v.client == nil {
		cl, err := c.newClient(v.config, appID)
		if err != nil {
			return nil, err
		}
		c.clients[key] = cl
		v.client = cl
	}
	return v, nil
}

// clientName is the client the view's role names, or the one asked for without a role.
func (v *view) clientName() string {
	if v.role != nil {
		return v.role.client()
	}
	return v.name
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

// resetClient drops a client's config and everything built from it. Requests already
// under way keep the tenant client they hold and finish with it.
func (c *cache) resetClient(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.configs, name)
	prefix := clientKey(name, "")
	for key, cl := range c.clients {
		if strings.HasPrefix(key, prefix) {
			cl.Close()
			delete(c.clients, key)
		}
	}
	for key := range c.tokens {
		if strings.HasPrefix(key, prefix) {
			delete(c.tokens, key)
		}
	}
}

// refreshClient drops a client's cached config alone: a write changed only its
// rotation state, not the secret or where it is sent, so the tenant clients and reused
// tokens built from it stay good. Reads take the new state from their next view.
func (c *cache) refreshClient(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.configs, name)
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
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, cl := range c.clients {
		cl.Close()
	}
	c.configs = make(map[string]*cyberarkConfig)
	c.roles = make(map[string]*roleEntry)
	c.clients = make(map[string]*client.Client)
	c.tokens = make(map[string]*client.Token)
}

// dropToken removes a token from the reuse cache wherever it is held: it was revoked.
func (c *cache) dropToken(accessToken string) {
	c.dropWhere(func(tok *client.Token) bool { return tok.AccessToken == accessToken })
}

// dropSHA drops the token whose SHA-256 is sha.
func (c *cache) dropSHA(sha string) {
	c.dropWhere(func(tok *client.Token) bool { return tok.SHA256 == sha })
}

func (c *cache) dropWhere(match func(*client.Token) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, tok := range c.tokens {
		if match(tok) {
			delete(c.tokens, key)
		}
	}
}
