// Package cyberark is a HashiCorp Vault secrets engine that holds a CyberArk Identity
// confidential OAuth2 client and turns each token read into a client-credentials grant,
// returned as a Vault lease whose TTL follows the token's expires_in.
package cyberark

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/errutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus"
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
	if conf.System != nil {
		c := *conf
		c.System = &replicationStateCache{SystemView: conf.System, ttl: replicationStateTTL}
		conf = &c
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	b.storage = conf.StorageView
	return b, nil
}

// replicationStateTTL is how long replicationStateCache keeps Vault's answer.
const replicationStateTTL = time.Second

// replicationStateCache answers ReplicationState from memory for up to ttl. The SDK's
// router asks for it before every request to a path declared with Operations, to honour
// forwarding flags, and for an external plugin each ask is a gRPC round trip back to
// Vault: on a reused token read, 14 to 18% of the engine's CPU (docs/performance.md).
//
// The state is that of the node and cluster, which change rarely, and Vault sets a
// mount up anew when its node becomes active. For the moment a change takes to show,
// every decision made on the state fails safe: a write that should have been forwarded
// runs here until its storage write is refused, which Vault then forwards; a rotation
// stores its new secret before the tenant hears of it, so one started where storage is
// read-only stops with nothing changed.
type replicationStateCache struct {
	logical.SystemView
	ttl  time.Duration
	last atomic.Pointer[replicationStateAt]
}

type replicationStateAt struct {
	state consts.ReplicationState
	at    time.Time
}

func (c *replicationStateCache) ReplicationState() consts.ReplicationState {
	now := time.Now()
	if l := c.last.Load(); l != nil && now.Sub(l.at) < c.ttl {
		return l.state
	}
	state := c.SystemView.ReplicationState()
	c.last.Store(&replicationStateAt{state: state, at: now})
	return state
}

// Lock order. A credential's owner lock (credential.mu) comes first: rotations, settles,
// the schedule and config writes and deletes hold it, across tenant calls. Under it,
// or without it, a goroutine may take one of the leaf locks, cache.mu, gate.mu or the
// scheduler's, for a few memory operations and never while it waits or calls out:
// none of them is held with another. roleMu serialises role writes and is never held
// with the owner lock. Token reads take no lock across a tenant call: a reuse-cache hit
// takes cache.mu for a lookup; a grant passes the credential's gate, which may make it
// wait (bounded by the request and total_timeout) for a password change in progress or
// for an attempt left in the failed-login budget, but holds no lock meanwhile.
//
// backend is the engine. Everything a token read needs besides the tenant's answer is
// kept in cache, so a read costs no storage access and no TLS or CA parsing.
type backend struct {
	*framework.Backend

	// root is the config's client secret and its rotation: the client named default.
	root *credential
	// creds are the mount's clients by name, root among them, made when first named
	// (credential): each owns its secret, its rotation state, schedule and budget.
	credsMu sync.RWMutex
	creds   map[string]*credential
	// roleMu serialises role writes, so a partial update reads and writes a
	// consistent role.
	roleMu sync.Mutex

	cache *cache

	// storage is the mount's storage, for the rotation scheduler's timer, which has no
	// request to take it from.
	storage logical.Storage
	// schedule is root's scheduler, which fires its scheduled rotations where Vault's
	// rotation manager does not; every credential has its own.
	schedule *scheduler
	// afterRotationStep, when set by a test, is called after each step of a rotation.
	afterRotationStep func(step string)

	revokeFailures *failureCounter
	// tracker holds readers of reused tokens until the periodic function stores them.
	tracker *tracker
	// recordsMu serialises changes to stored token records (tokens.go).
	recordsMu sync.Mutex
	// keyCache holds the tenant's token signing keys (trust.go).
	keyCache *keyCache

	// metrics feeds promRegistry, which the metrics path serves, and go-metrics'
	// global sink (metrics.go); a test may put its own in place.
	metrics      *metrics.Metrics
	promRegistry *prometheus.Registry
	// now is the engine's one clock, handed to every tenant client; tests move it.
	now func() time.Time
	// drainLimit is how long tokens/revoke-all waits for reads begun before its
	// freeze (defaultDrainLimit; tests shorten it).
	drainLimit time.Duration
}

func newBackend() *backend {
	m, registry, err := newMetrics()
	if err != nil {
		// Only a second registration of one collector fails, and each registry here
		// is new.
		panic(fmt.Sprintf("metrics: %v", err))
	}
	b := &backend{
		metrics:        m,
		promRegistry:   registry,
		revokeFailures: newFailureCounter(),
		tracker:        newTracker(),
		keyCache:       newKeyCache(),
		creds:          make(map[string]*credential),
		now:            time.Now,
		drainLimit:     defaultDrainLimit,
	}
	b.cache = newCache(b.newTenantClient)
	b.root = b.credential(defaultClient)
	b.schedule = b.root.sched
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configPath, clientsPrefix, tokensPrefix, incidentsPrefix, incidentTokensPrefix},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{pathConfig(b), pathRotateRoot(b), pathMetrics(b)},
			pathClients(b),
			pathTokens(b),
			pathRoles(b),
			pathToken(b),
		),
		Secrets:          []*framework.Secret{secretAccessToken(b)},
		Invalidate:       b.invalidate,
		Clean:            b.clean,
		InitializeFunc:   b.initialize,
		PeriodicFunc:     b.periodic,
		RotateCredential: b.rotateCredential,
		RunningVersion:   Version,
	}
	return b
}

// credential is the client named name, made on first use. Its storage key is config
// for the default client, clients/<name> for the others.
func (b *backend) credential(name string) *credential {
	// Every token read asks: a read lock, unless the client is new.
	b.credsMu.RLock()
	c := b.creds[name]
	b.credsMu.RUnlock()
	if c != nil {
		return c
	}
	b.credsMu.Lock()
	defer b.credsMu.Unlock()
	if c := b.creds[name]; c != nil {
		return c
	}
	c = newCredential(b, name, clientStorageKey(name))
	b.creds[name] = c
	return c
}

// knownCredentials are the credentials made so far, root first.
func (b *backend) knownCredentials() []*credential {
	b.credsMu.RLock()
	defer b.credsMu.RUnlock()
	out := []*credential{b.root}
	for name, c := range b.creds {
		if name != defaultClient {
			out = append(out, c)
		}
	}
	return out
}

// storedCredentials are root and every client stored under clients/: what the
// periodic function and a start look after.
func (b *backend) storedCredentials(ctx context.Context, s logical.Storage) ([]*credential, error) {
	names, err := s.List(ctx, clientsPrefix)
	if err != nil {
		return []*credential{b.root}, fmt.Errorf("listing clients: %w", err)
	}
	out := []*credential{b.root}
	for _, name := range names {
		if name != defaultClient && !strings.HasSuffix(name, "/") {
			out = append(out, b.credential(name))
		}
	}
	return out, nil
}

// invalidate is called when another node (or replication) changed a storage key.
func (b *backend) invalidate(ctx context.Context, key string) {
	switch {
	case key == configPath:
		b.cache.resetClient(defaultClient)
	case strings.HasPrefix(key, clientsPrefix):
		b.cache.resetClient(strings.TrimPrefix(key, clientsPrefix))
	case strings.HasPrefix(key, failedLoginsPrefix):
		b.credential(strings.TrimPrefix(key, failedLoginsPrefix)).gate.invalidate()
	case strings.HasPrefix(key, rolePrefix):
		b.cache.resetRole(strings.TrimPrefix(key, rolePrefix))
	case strings.HasPrefix(key, incidentsPrefix):
		// A freeze or unfreeze on the active node: a performance standby's reuse cache
		// (it serves reads itself) holds tokens that the incident revoked, or that it
		// could not reach; none of them is handed out again.
		name := strings.TrimPrefix(key, incidentsPrefix)
		b.credential(name).forgetFrozen()
		b.cache.resetClient(name)
	case strings.HasPrefix(key, tokensPrefix):
		// A token's record changed on the active node. Most changes add readers; one
		// that marks it revoked (tokens/revoke) means it must not be handed out again
		// from this node's cache. A record gone or unreadable drops it too.
		sha := strings.TrimPrefix(key, tokensPrefix)
		if b.storage != nil {
			if rec, err := readTokenRecord(ctx, b.storage, sha); err == nil && rec != nil && rec.RevokedAt.IsZero() {
				return
			}
		}
		b.cache.dropSHA(sha)
	}
}

func (b *backend) clean(_ context.Context) {
	for _, c := range b.knownCredentials() {
		// A rotation the timer started is cut short and waited for, so it cannot race
		// the instance that takes over; what it stored is settled by that instance.
		c.sched.stop(30 * time.Second)
		if b.storage != nil {
			// A refusal counted in memory only must outlive this instance.
			if err := c.gate.flush(context.Background(), b.storage); err != nil {
				b.Logger().Error("could not store the failed-login count before stopping", "client", c.name, "error", err)
			}
		}
	}
	b.cache.resetAll()
}

// initialize runs when the engine is mounted or its plugin (re)started: a rotation that
// a crash interrupted is settled, and the rotation schedule armed.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	creds, err := b.storedCredentials(ctx, req.Storage)
	if err != nil {
		b.Logger().Error("could not list the clients to settle and schedule their rotations; the periodic function tries again", "error", err)
	}
	for _, c := range creds {
		if _, err := c.settleIf(ctx, req.Storage, settleOnStart); err != nil {
			// The mount must still come up: tokens are served with the stored secret,
			// and the periodic function tries again.
			b.Logger().Error("could not settle an interrupted root rotation at start", "client", c.name, "error", err)
		}
		cfg, err := c.load(ctx, req.Storage)
		if err != nil {
			b.Logger().Error("could not read the config to arm the rotation schedule", "client", c.name, "error", err)
			continue
		}
		c.armSchedule(cfg)
	}
	return nil
}

// periodic runs about once a minute on the active node (Vault's rollback manager).
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	creds, lerr := b.storedCredentials(ctx, req.Storage)
	var errs []error
	for _, c := range creds {
		if err := c.gate.flush(ctx, req.Storage); err != nil {
			b.Logger().Error("could not store the failed-login count", "client", c.name, "error", err)
		}
		if _, err := c.settleIf(ctx, req.Storage, settlePeriodic); err != nil {
			b.Logger().Error("could not settle an interrupted root rotation", "client", c.name, "error", err)
		}
		errs = append(errs, c.rotateIfDue(ctx, req.Storage))
	}
	if err := b.flushTracked(ctx, req.Storage); err != nil {
		b.Logger().Error("could not store the readers of tracked tokens or prune expired records", "error", err)
	}
	return errors.Join(append(errs, lerr)...)
}

// rotateCredential is what Vault's rotation manager (Enterprise) calls when the job
// registered by a config write is due: its path names the client.
func (b *backend) rotateCredential(ctx context.Context, req *logical.Request) error {
	name := defaultClient
	if rest, ok := strings.CutPrefix(req.Path, clientsPrefix); ok {
		name = strings.TrimSuffix(rest, "/rotate-root")
	}
	_, err := b.rotateClient(ctx, req.Storage, b.credential(name), false)
	return err
}

// HandleRequest refuses a field of the wrong type before the framework does: the
// framework's own message quotes the value whole, which may be a client secret sent as
// a list, or a megabyte.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	if p := b.Route(req.Path); p != nil {
		if resp := checkFieldTypes(p.Fields, req.Data); resp != nil {
			return resp, nil
		}
	}
	return b.Backend.HandleRequest(ctx, req)
}

// HandleExistenceCheck does the same for the check Vault runs before a write.
func (b *backend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	if p := b.Route(req.Path); p != nil {
		if resp := checkFieldTypes(p.Fields, req.Data); resp != nil {
			return true, false, errutil.UserError{Err: resp.Error().Error()}
		}
	}
	return b.Backend.HandleExistenceCheck(ctx, req)
}
