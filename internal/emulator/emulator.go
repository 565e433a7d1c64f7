// Package emulator plays a CyberArk Identity tenant's OAuth2 endpoints for one or more
// custom applications, and the password-management APIs that rotate a service user's
// password, so that tests, end-to-end runs and demos need no real tenant.
//
// It follows the tenant's documented behaviour (docs/tenant-api.md in this repository),
// including its error bodies, and every failure a client should survive can
// be injected as a Fault. An *Emulator is an http.Handler; serve it with net/http or
// httptest, over TLS with a CA from NewCA.
package emulator

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultExpiresIn is the token lifetime, in seconds, that the tenant's documentation
// shows (5 hours); it applies when neither Config nor App sets one.
const DefaultExpiresIn = 18000

// maxBodyBytes caps what the emulator reads from a request. Real clients send a few
// hundred bytes; the cap only keeps a runaway client from filling memory.
const maxBodyBytes = 1 << 20

// Config describes the tenant: its OAuth2 custom applications and the response variants
// that differ between tenants or between reports of them.
type Config struct {
	// Apps are the tenant's OAuth2 custom applications.
	Apps []App `json:"apps"`
	// SigningKey signs access tokens; nil generates a new one. Tests that build many
	// tenants share one, since generating an RSA key is the dearest part of New.
	SigningKey *rsa.PrivateKey `json:"-"`
	// UnknownSigningKey signs tokens under TokenQuirks.UnknownKey; it must differ from
	// SigningKey. nil generates one when first needed.
	UnknownSigningKey *rsa.PrivateKey `json:"-"`
	// ExpiresIn is the lifetime of issued tokens in seconds; 0 means DefaultExpiresIn.
	ExpiresIn int `json:"expires_in"`
	// ErrorStatus is the HTTP status of OAuth error responses for client-authentication
	// failures: 400 (the default, as documented) or 401 (seen in third-party reports).
	ErrorStatus int `json:"error_status"`
	// ExpiresInAsString sends "expires_in":"3600" instead of 3600, as some servers do.
	ExpiresInAsString bool `json:"expires_in_as_string"`
	// OmitScope leaves "scope" out of token responses, which the tenant may do.
	OmitScope bool `json:"omit_scope"`
	// PasswordPolicy is what a new password set through the management APIs must meet;
	// nil means DefaultPasswordPolicy(). Secrets in the config are not checked against it.
	PasswordPolicy *PasswordPolicy `json:"password_policy"`
	// PasswordHistory is how many of a user's most recent passwords, the current one
	// included, a new password may not repeat; 0 means DefaultPasswordHistory and a
	// negative value turns the check off.
	PasswordHistory int `json:"password_history"`
	// RevokeTokensOnPasswordChange makes every token issued to a user before a password
	// change inactive. Off, tokens stay valid until they expire. What the tenant does is
	// unknown, so a client must survive both.
	RevokeTokensOnPasswordChange bool `json:"revoke_tokens_on_password_change"`
	// IgnoreOldPassword makes ChangeUserPassword succeed whatever oldPassword says, as
	// third-party reports from live tenants say the tenant's does: the caller's bearer
	// token, its scope, the presence of oldPassword, the password policy and the history
	// are still checked. Off, oldPassword must be the current password, which is what the
	// API's contract promises. A client must survive both.
	IgnoreOldPassword bool `json:"ignore_old_password"`
	// Lockout locks a service user out after repeated failed client authentications, as
	// a tenant's lockout policy does; nil (the default) never locks anyone. See
	// LockoutPolicy.
	Lockout *LockoutPolicy `json:"lockout"`
}

// App is one OAuth2 custom application of the tenant.
type App struct {
	// ID is the application ID from the token URL; it is matched case-insensitively.
	ID string `json:"id"`
	// Scopes are the scopes the app defines; asking for another is "unknown scope requested".
	Scopes []string `json:"scopes"`
	// Clients are the confidential clients (service users) permitted on the app.
	Clients []Client `json:"clients"`
	// AuthModes lists the client authentication methods the app accepts: "basic"
	// (client_secret_basic) and "post" (client_secret_post); empty allows both.
	AuthModes []string `json:"auth_modes"`
	// ExpiresIn overrides Config.ExpiresIn for this app; 0 uses the tenant-wide value.
	ExpiresIn int `json:"expires_in"`
	// ScopeAPIs are the REST APIs each scope allows, as the tenant's "allowed REST APIs":
	// scope name to Go regular expressions matched, case-insensitively and against the
	// whole path without its leading slash, such as "UserMgmt/ChangeUserPassword" or
	// "UserMgmt/.*". A management call succeeds only with a token one of whose scopes
	// allows its path, so an app without ScopeAPIs issues tokens that can call none.
	ScopeAPIs map[string][]string `json:"scope_apis"`
	// TokenQuirks make the app hand out tokens that differ from the documented ones (a
	// widened scope, a foreign key, issuer, audience or subject, an opaque token). The
	// zero value, the default, issues documented tokens. SetTokenQuirks changes them at
	// run time.
	TokenQuirks TokenQuirks `json:"token_quirks"`
	// RequiredParams are grant parameters the app insists on, such as an RFC 8707
	// resource or an audience: a grant that lacks one, or gives another value, is
	// refused with invalid_target. They let a test see that a client sends them.
	RequiredParams map[string]string `json:"required_params"`
}

// PlatformAppID is the application behind POST /oauth2/platformtoken, the endpoint
// that gives service users tokens for CyberArk's platform APIs without naming an app.
// Public clients of the platform name this OIDC application; that the platform
// token's issuer and audience are derived from it is this emulator's assumption.
const PlatformAppID = "__idaptive_cybr_user_oidc"

// Client is a confidential OAuth2 client: a service user whose password is the secret.
//
// The same service user may be listed under several apps. It is one user with one
// password, so its entries must agree on Secret and, where set, on UUID; AllowedScopes
// may differ per app.
type Client struct {
	// ID is the service user's login name, e.g. svc-vault@example.cyberark.cloud.
	// It is matched exactly.
	ID string `json:"id"`
	// Secret is the service user's password.
	Secret string `json:"secret"`
	// UUID is the service user's ID, sent as the "sub" claim; generated when empty.
	UUID string `json:"uuid"`
	// AllowedScopes limits the app's scopes for this client; empty allows all of them.
	AllowedScopes []string `json:"allowed_scopes"`
	// Admin gives the service user user-management rights, which ResetUserPassword
	// needs. It belongs to the user: setting it on any one of its entries is enough.
	Admin bool `json:"admin"`
}

// Stats counts what the emulator answered since it started or was last Reset.
type Stats struct {
	// TokenRequests counts every request to the token endpoint, failed and faulted ones too.
	TokenRequests int64 `json:"token_requests"`
	// Grants counts token responses that issued a token.
	Grants int64 `json:"grants"`
	// TokenErrors counts OAuth error responses from the token endpoint (not injected faults).
	TokenErrors int64 `json:"token_errors"`
	// Revocations counts revoke requests the emulator itself answered with 200.
	Revocations int64 `json:"revocations"`
	// RevokeRequests counts every request to the revoke endpoint.
	RevokeRequests int64 `json:"revoke_requests"`
	// Introspections counts every request to the introspect endpoint.
	Introspections int64 `json:"introspections"`
	// FaultsServed counts requests that a queued Fault applied to.
	FaultsServed int64 `json:"faults_served"`
	// ManagementRequests counts every request to the password-management endpoints.
	ManagementRequests int64 `json:"management_requests"`
	// PasswordChanges counts successful ChangeUserPassword and ResetUserPassword calls,
	// faulted ones with ApplyFirst included, and held changes when they land. Changes made
	// with SetClientSecret are not among them: they did not come through the API.
	PasswordChanges int64 `json:"password_changes"`
	// OutOfBandChanges counts SetClientSecret calls: passwords an administrator changed
	// at the tenant, behind the clients' back.
	OutOfBandChanges int64 `json:"out_of_band_changes"`
	// FailedLogins counts every refused client authentication of a known client ID at the
	// token, revoke and introspect endpoints: a wrong secret, whether or not the user is
	// locked, and any secret, the right one included, while the user is locked. An unknown
	// client ID is not a login of anyone and is not counted. Counted with or without
	// Config.Lockout.
	FailedLogins int64 `json:"failed_logins"`
	// Lockouts counts the times a user became locked under Config.Lockout.
	Lockouts int64 `json:"lockouts"`
}

// ClientStats counts what one client ID did since the emulator started or was last
// Reset, so a test can tell whose requests were refused when several clients share a
// tenant. Requests are attributed to the client ID their credentials name (a Basic
// header, else client_id form fields), known to the tenant or not; requests without
// credentials are attributed to no one.
type ClientStats struct {
	// TokenRequests counts token endpoint requests with this client ID, faulted ones too.
	TokenRequests int64 `json:"token_requests"`
	// Grants counts tokens issued to the client.
	Grants int64 `json:"grants"`
	// TokenErrors counts the token endpoint's OAuth errors to the client (not injected
	// faults): the refused token requests, whatever the reason.
	TokenErrors int64 `json:"token_errors"`
	// FailedLogins and Lockouts are Stats.FailedLogins and Stats.Lockouts for this client.
	FailedLogins int64 `json:"failed_logins"`
	Lockouts     int64 `json:"lockouts"`
}

// Request is a copy of one request the emulator received, for tests to assert on exactly
// what crossed the wire. It holds credentials as sent, and the old and new passwords of
// management calls: keep it out of logs.
type Request struct {
	Time   time.Time
	Method string
	// Host is the host (and port) the request was sent to, from r.Host: tells apart
	// requests that reached the same emulator under different names.
	Host string
	// Path is r.URL.Path as received, in its original case.
	Path   string
	Header http.Header
	// Form is the parsed body of an application/x-www-form-urlencoded request, else nil.
	Form url.Values
	// Body is the raw body, up to 1 MiB.
	Body []byte
}

// Emulator is a CyberArk Identity tenant in memory. All methods are safe for concurrent use.
type Emulator struct {
	// key signs access tokens; kid is its RFC 7638 thumbprint, published in the JWKS.
	key *rsa.PrivateKey
	kid string
	// unknown signs tokens under TokenQuirks.UnknownKey; no JWKS publishes it. It is
	// generated on first use unless Config.UnknownSigningKey supplied it.
	unknownOnce sync.Once
	unknown     *rsa.PrivateKey
	unknownErr  error
	// clock is replaceable (SetClock) so tests can move time without sleeping; nil
	// means time.Now.
	clock atomic.Pointer[func() time.Time]

	// Everything the tenant's configuration and history hold sits behind one mutex:
	// requests are small and the lock is never held across I/O or signing.
	mu                sync.Mutex
	apps              map[string]*app // by lower-cased app ID
	users             *directory
	policy            PasswordPolicy
	history           int // passwords a new one may not repeat, current included; 0 = off
	revokeOnChange    bool
	expiresIn         int // tenant-wide, changed by SetExpiresIn
	errorStatus       int
	expiresInAsString bool
	omitScope         bool
	ignoreOldPassword bool
	lockout           *LockoutPolicy // nil = no lockout
	faults            []*queuedFault
	held              []heldChange // accepted ChangeUserPassword calls not yet applied
	stats             Stats
	clientStats       map[string]*ClientStats // by client ID as sent
	requests          []Request
	revoked           map[string]struct{}
	issued            []string
	tokens            map[string]tokenInfo
}

type app struct {
	id        string // as configured, used in "iss"
	scopes    []string
	scopeSet  map[string]bool
	clients   map[string]*client // by exact client ID
	basic     bool
	post      bool
	expiresIn int
	// scopeAPIs holds each scope's allowed REST APIs, compiled anchored and
	// case-insensitive.
	scopeAPIs map[string][]*regexp.Regexp
	// quirks shape the tokens the app issues; guarded by Emulator.mu (SetTokenQuirks).
	quirks TokenQuirks
	// required are the grant parameters the app insists on (App.RequiredParams).
	required map[string]string
}

// client is a service user's entry on one app: the user itself is shared by every app
// that lists it, so a password change reaches all of them.
type client struct {
	user    *user
	allowed map[string]bool // nil = all of the app's scopes
	// defaultScopes is what a request without "scope" gets.
	defaultScopes []string
}

// tokenInfo is what the tenant remembers about an issued token, for introspection and
// for the bearer tokens of management calls.
type tokenInfo struct {
	appKey   string
	clientID string
	sub      string
	aud      string
	scope    string
	iss      string
	iat      int64
	exp      int64
	// epoch is the user's password epoch at issue; a token from an older epoch was
	// invalidated by a password change (see Config.RevokeTokensOnPasswordChange).
	epoch uint64
}

// New validates cfg and returns an emulator with a fresh RSA-2048 signing key.
// The emulator keeps its own copy of cfg.
func New(cfg Config) (*Emulator, error) {
	apps, users, err := buildApps(cfg)
	if err != nil {
		return nil, err
	}
	policy := DefaultPasswordPolicy()
	if cfg.PasswordPolicy != nil {
		if err := cfg.PasswordPolicy.validate(); err != nil {
			return nil, fmt.Errorf("password_policy: %w", err)
		}
		policy = *cfg.PasswordPolicy
	}
	history := cfg.PasswordHistory
	switch {
	case history == 0:
		history = DefaultPasswordHistory
	case history < 0:
		history = 0
	}
	if cfg.ExpiresIn < 0 {
		return nil, fmt.Errorf("expires_in %d is negative", cfg.ExpiresIn)
	}
	var lockout *LockoutPolicy
	if cfg.Lockout != nil {
		if err := cfg.Lockout.validate(); err != nil {
			return nil, fmt.Errorf("lockout: %w", err)
		}
		p := *cfg.Lockout
		lockout = &p
	}
	errorStatus := cfg.ErrorStatus
	switch errorStatus {
	case 0:
		errorStatus = http.StatusBadRequest
	case http.StatusBadRequest, http.StatusUnauthorized:
	default:
		return nil, fmt.Errorf("error_status %d: must be 400 or 401", cfg.ErrorStatus)
	}
	key := cfg.SigningKey
	if key == nil {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	if cfg.UnknownSigningKey != nil && cfg.UnknownSigningKey.PublicKey.Equal(&key.PublicKey) {
		return nil, errors.New("unknown signing key: must differ from the signing key")
	}
	e := &Emulator{
		unknown:           cfg.UnknownSigningKey,
		key:               key,
		kid:               keyID(&key.PublicKey),
		apps:              apps,
		users:             users,
		policy:            policy,
		history:           history,
		revokeOnChange:    cfg.RevokeTokensOnPasswordChange,
		expiresIn:         orDefault(cfg.ExpiresIn),
		errorStatus:       errorStatus,
		expiresInAsString: cfg.ExpiresInAsString,
		omitScope:         cfg.OmitScope,
		ignoreOldPassword: cfg.IgnoreOldPassword,
		lockout:           lockout,
		clientStats:       make(map[string]*ClientStats),
		revoked:           make(map[string]struct{}),
		tokens:            make(map[string]tokenInfo),
	}
	return e, nil
}

// SetClock replaces the emulator's clock, which dates tokens and requests and drives
// token expiry and the lockout window and duration, so that a test can move time without
// sleeping. nil restores time.Now. It is safe to call while requests are being served.
func (e *Emulator) SetClock(now func() time.Time) {
	if now == nil {
		e.clock.Store(nil)
		return
	}
	e.clock.Store(&now)
}

// now reads the clock.
func (e *Emulator) now() time.Time {
	if f := e.clock.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

func orDefault(seconds int) int {
	if seconds <= 0 {
		return DefaultExpiresIn
	}
	return seconds
}

// buildApps checks cfg and turns it into lookup tables, with the service users that the
// apps share. Error messages name apps and clients but never a secret.
func buildApps(cfg Config) (map[string]*app, *directory, error) {
	if len(cfg.Apps) == 0 {
		return nil, nil, errors.New("config has no apps")
	}
	users := newDirectory()
	apps := make(map[string]*app, len(cfg.Apps))
	for i, ac := range cfg.Apps {
		if strings.TrimSpace(ac.ID) == "" || strings.ContainsAny(ac.ID, "/ ") {
			return nil, nil, fmt.Errorf("app %d: id %q must be non-empty without slashes or spaces", i, ac.ID)
		}
		key := strings.ToLower(ac.ID)
		if _, dup := apps[key]; dup {
			return nil, nil, fmt.Errorf("app %q: defined twice (app IDs are case-insensitive)", ac.ID)
		}
		if ac.ExpiresIn < 0 {
			return nil, nil, fmt.Errorf("app %q: expires_in %d is negative", ac.ID, ac.ExpiresIn)
		}
		if err := ac.TokenQuirks.validate(); err != nil {
			return nil, nil, fmt.Errorf("app %q: token_quirks: %w", ac.ID, err)
		}
		a := &app{
			required:  maps.Clone(ac.RequiredParams),
			quirks:    ac.TokenQuirks.clone(),
			id:        ac.ID,
			scopes:    append([]string{}, ac.Scopes...),
			scopeSet:  make(map[string]bool, len(ac.Scopes)),
			clients:   make(map[string]*client, len(ac.Clients)),
			expiresIn: ac.ExpiresIn,
		}
		for _, s := range ac.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\r\n") {
				return nil, nil, fmt.Errorf("app %q: scope %q must be non-empty without whitespace", ac.ID, s)
			}
			a.scopeSet[s] = true
		}
		apis, err := compileScopeAPIs(a, ac.ScopeAPIs)
		if err != nil {
			return nil, nil, fmt.Errorf("app %q: %w", ac.ID, err)
		}
		a.scopeAPIs = apis
		if len(ac.AuthModes) == 0 {
			a.basic, a.post = true, true
		}
		for _, m := range ac.AuthModes {
			switch strings.ToLower(m) {
			case "basic":
				a.basic = true
			case "post":
				a.post = true
			default:
				return nil, nil, fmt.Errorf("app %q: auth mode %q: must be basic or post", ac.ID, m)
			}
		}
		if len(ac.Clients) == 0 {
			return nil, nil, fmt.Errorf("app %q: no clients", ac.ID)
		}
		for j, cc := range ac.Clients {
			c, err := buildClient(a, cc, users)
			if err != nil {
				return nil, nil, fmt.Errorf("app %q: client %d: %w", ac.ID, j, err)
			}
			if _, dup := a.clients[cc.ID]; dup {
				return nil, nil, fmt.Errorf("app %q: client %q defined twice", ac.ID, cc.ID)
			}
			a.clients[cc.ID] = c
		}
		apps[key] = a
	}
	if err := users.index(); err != nil {
		return nil, nil, err
	}
	if apps[strings.ToLower(PlatformAppID)] == nil {
		apps[strings.ToLower(PlatformAppID)] = platformApp(users)
	}
	return apps, users, nil
}

// platformApp serves /oauth2/platformtoken when the config defines no app of that ID:
// every service user of the tenant may use it, with either way of authenticating, and
// its tokens carry no scope and name the platform's application as their audience.
func platformApp(users *directory) *app {
	a := &app{
		id:       PlatformAppID,
		scopeSet: map[string]bool{},
		clients:  make(map[string]*client, len(users.byID)),
		basic:    true,
		post:     true,
		quirks:   TokenQuirks{Audience: PlatformAppID},
	}
	for id, u := range users.byID {
		a.clients[id] = &client{user: u}
	}
	return a
}

// compileScopeAPIs anchors each expression: the tenant matches an allowed API against
// the whole path, and an unanchored "UserMgmt/Get" would otherwise allow far more than
// its author meant.
func compileScopeAPIs(a *app, in map[string][]string) (map[string][]*regexp.Regexp, error) {
	out := make(map[string][]*regexp.Regexp, len(in))
	for scope, exprs := range in {
		if !a.scopeSet[scope] {
			return nil, fmt.Errorf("scope_apis: scope %q is not one of the app's scopes", scope)
		}
		for _, expr := range exprs {
			if expr == "" {
				return nil, fmt.Errorf("scope_apis: scope %q: empty expression", scope)
			}
			re, err := regexp.Compile(`(?i)^(?:` + expr + `)$`)
			if err != nil {
				return nil, fmt.Errorf("scope_apis: scope %q: %w", scope, err)
			}
			out[scope] = append(out[scope], re)
		}
	}
	return out, nil
}

func buildClient(a *app, cc Client, users *directory) (*client, error) {
	if cc.ID == "" {
		return nil, errors.New("id is empty")
	}
	if cc.Secret == "" {
		return nil, fmt.Errorf("client %q: secret is empty", cc.ID)
	}
	u, err := users.add(cc)
	if err != nil {
		return nil, fmt.Errorf("client %q: %w", cc.ID, err)
	}
	c := &client{user: u, defaultScopes: a.scopes}
	if len(cc.AllowedScopes) > 0 {
		c.allowed = make(map[string]bool, len(cc.AllowedScopes))
		for _, s := range cc.AllowedScopes {
			if !a.scopeSet[s] {
				return nil, fmt.Errorf("client %q: allowed scope %q is not defined by the app", cc.ID, s)
			}
			c.allowed[s] = true
		}
		c.defaultScopes = append([]string(nil), cc.AllowedScopes...)
	}
	return c, nil
}

// LoadConfig reads a JSON Config from path. Unknown fields are an error, so that a typo
// in a test fixture does not silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the -config file the operator named, or a test fixture
	if err != nil {
		return Config{}, fmt.Errorf("read emulator config: %w", err)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("parse emulator config %s: %w", path, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("parse emulator config %s: trailing data after the JSON object", path)
	}
	return cfg, nil
}

// SetExpiresIn changes the lifetime of tokens issued from now on by every app without its
// own expires_in. Zero or less restores DefaultExpiresIn.
func (e *Emulator) SetExpiresIn(seconds int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expiresIn = orDefault(seconds)
}

// SetClientSecret changes a client's secret as an administrator would at the tenant,
// outside the management APIs: the out-of-band change a rotation must survive. The
// service user's password changes on every app that lists it, the old password enters
// the history, and with Config.RevokeTokensOnPasswordChange the user's tokens become
// inactive (otherwise they stay valid until they expire). Unlike the management APIs it
// skips the password policy and history checks, so a test can set any secret. It counts
// in Stats.OutOfBandChanges, not in PasswordChanges, and leaves a lockout as it is (see
// Unlock). appID only has to be one of the apps that list the client.
func (e *Emulator) SetClientSecret(appID, clientID, secret string) error {
	if secret == "" {
		return errors.New("secret is empty")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.apps[strings.ToLower(appID)]
	if !ok {
		return fmt.Errorf("unknown app %q", appID)
	}
	c, ok := a.clients[clientID]
	if !ok {
		return fmt.Errorf("app %q: unknown client %q", appID, clientID)
	}
	e.setPassword(c.user, secret)
	e.stats.OutOfBandChanges++
	return nil
}

// Stats returns the counters.
func (e *Emulator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats
}

// ClientStats returns the counters of one client ID, zero for one never seen.
func (e *Emulator) ClientStats(clientID string) ClientStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cs := e.clientStats[clientID]; cs != nil {
		return *cs
	}
	return ClientStats{}
}

// countClient returns the counters of a client ID to increment, or a scratch value for
// requests attributed to no one. The caller holds e.mu.
func (e *Emulator) countClient(clientID string) *ClientStats {
	if clientID == "" {
		return &ClientStats{}
	}
	cs := e.clientStats[clientID]
	if cs == nil {
		cs = &ClientStats{}
		e.clientStats[clientID] = cs
	}
	return cs
}

// Requests returns copies of the requests received, in order of arrival. Requests to the
// /_emulator/ control endpoints are not part of the tenant and are left out.
func (e *Emulator) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Request, len(e.requests))
	for i, r := range e.requests {
		out[i] = copyRequest(r)
	}
	return out
}

func copyRequest(r Request) Request {
	r.Header = r.Header.Clone()
	if r.Form != nil {
		f := make(url.Values, len(r.Form))
		for k, v := range r.Form {
			f[k] = append([]string(nil), v...)
		}
		r.Form = f
	}
	r.Body = bytes.Clone(r.Body)
	return r
}

// Reset clears the recorded requests, the counters (per client too), the fault queue,
// the held changes (discarded, never applied), every lockout and the failed logins
// counting towards one, the revoked set and the list that Issued returns, so one
// emulator can serve several scenarios. The configuration, the clock, SetExpiresIn
// changes, passwords and their history (however they were changed) and the signing key
// stay, and tokens issued before keep their state for introspection, as they would at a
// tenant: only tokens revoked at the revoke endpoint become active again, since that
// record is what Reset clears.
func (e *Emulator) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests = nil
	e.stats = Stats{}
	e.clientStats = make(map[string]*ClientStats)
	e.faults = nil
	e.held = nil
	for _, u := range e.users.byID {
		u.unlock()
	}
	e.revoked = make(map[string]struct{})
	e.issued = nil
}

// Revoked reports whether token was sent to the revoke endpoint by an authenticated
// client, or invalidated by a password change (see Config.RevokeTokensOnPasswordChange),
// since the last Reset.
func (e *Emulator) Revoked(token string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.revoked[token]
	return ok
}

// Issued returns the access tokens issued since the last Reset, in order.
func (e *Emulator) Issued() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.issued...)
}

// endpoint names, as used in Fault.Endpoint.
const (
	epToken          = "token"
	epRevoke         = "revoke"
	epIntrospect     = "introspect"
	epKeys           = "keys"
	epDiscovery      = "discovery"
	epChangePassword = "change_password"
	epResetPassword  = "reset_password"
)

// isManagement tells the endpoints that answer with the management envelope from the
// OAuth ones.
func isManagement(ep string) bool {
	return ep == epChangePassword || ep == epResetPassword
}

const controlPrefix = "/_emulator/"

// ServeHTTP answers as the tenant would, after applying the first queued fault that
// matches the endpoint.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if hasPrefixFold(r.URL.Path, controlPrefix) {
		e.serveControl(w, r)
		return
	}
	body, tooLarge := readBody(r)
	rec := Request{
		Time:   e.now(),
		Method: r.Method,
		Host:   r.Host,
		Path:   r.URL.Path,
		Header: r.Header.Clone(),
		Body:   body,
	}
	form, formErr := parseForm(r, body)
	rec.Form = form

	ep, appID, found := route(r.URL.Path)
	// The client ID the credentials name, for the per-client counters; the handlers
	// parse the credentials again when they authenticate.
	var clientID string
	switch ep {
	case epToken, epRevoke, epIntrospect:
		_, clientID, _, _ = credentials(r, form)
	}

	e.mu.Lock()
	e.requests = append(e.requests, rec)
	switch ep {
	case epToken:
		e.stats.TokenRequests++
		e.countClient(clientID).TokenRequests++
	case epRevoke:
		e.stats.RevokeRequests++
	case epIntrospect:
		e.stats.Introspections++
	case epChangePassword, epResetPassword:
		e.stats.ManagementRequests++
	}
	var fault *Fault
	if found {
		fault = e.takeFault(ep)
		if fault != nil {
			e.stats.FaultsServed++
		}
	}
	e.mu.Unlock()

	if !found {
		http.NotFound(w, r)
		return
	}
	req := &call{w: w, r: r, ep: ep, appID: appID, clientID: clientID, form: form, formErr: formErr, body: body, tooLarge: tooLarge}
	switch {
	case fault == nil:
		e.serve(req)
	case fault.Hold && ep == epChangePassword:
		// The tenant takes the change in but does not make it yet (LandHeldChanges does),
		// and the caller hears nothing of it: the answer the checks produce is thrown
		// away, and the fault drops the connection unless it answers itself.
		req.w = newBufferedResponse()
		req.hold = true
		e.serve(req)
		f := *fault
		if !f.replacesAnswer() {
			f.DropConnection = true
		}
		e.applyFault(w, r, ep, f)
	case fault.ApplyFirst:
		// The tenant acts before the fault strikes, so the caller may never learn of an
		// effect that stands. The answer waits in memory; the request's context is not
		// consulted until the fault's delay, so a caller that hangs up cannot undo it.
		buf := newBufferedResponse()
		req.w = buf
		e.serve(req)
		if handled := e.applyFault(w, r, ep, *fault); !handled {
			buf.sendTo(w)
		}
	default:
		if handled := e.applyFault(w, r, ep, *fault); !handled {
			e.serve(req)
		}
	}
}

// serve runs the real handler for a routed request.
func (e *Emulator) serve(req *call) {
	if isManagement(req.ep) {
		e.serveManagement(req)
		return
	}
	if req.tooLarge {
		e.oauthError(req, http.StatusRequestEntityTooLarge, "invalid_request", "request body too large")
		return
	}
	if req.formErr != nil {
		e.oauthError(req, http.StatusBadRequest, "invalid_request", "malformed form body")
		return
	}
	switch req.ep {
	case epToken:
		e.serveToken(req)
	case epRevoke:
		e.serveRevoke(req)
	case epIntrospect:
		e.serveIntrospect(req)
	case epKeys:
		e.serveKeys(req)
	case epDiscovery:
		e.serveDiscovery(req)
	}
}

// readBody keeps at most maxBodyBytes; the flag tells the handler to refuse the request
// rather than act on a truncated form.
func readBody(r *http.Request) (body []byte, tooLarge bool) {
	if r.Body == nil {
		return nil, false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return body, false
	}
	if len(body) > maxBodyBytes {
		return body[:maxBodyBytes], true
	}
	return body, false
}

// parseForm reads the body as a form only when the client says it is one: the tenant
// documents form bodies, and a client that forgets the Content-Type should see the
// failure here rather than first in production.
func parseForm(r *http.Request, body []byte) (url.Values, error) {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil, nil
	}
	mediaType, _, _ := strings.Cut(ct, ";")
	if !strings.EqualFold(strings.TrimSpace(mediaType), "application/x-www-form-urlencoded") {
		return nil, nil
	}
	return url.ParseQuery(string(body))
}

var endpointPrefixes = []struct{ prefix, ep string }{
	{"/oauth2/token/", epToken},
	{"/oauth2/revoke/", epRevoke},
	{"/oauth2/introspect/", epIntrospect},
	{"/oauth2/keys/", epKeys},
}

// managementPaths are the management APIs, by their canonical spelling without the
// leading slash, which is also what an app's scope_apis are matched against.
var managementPaths = map[string]string{ //nolint:gosec // API paths, not credentials
	epChangePassword: "UserMgmt/ChangeUserPassword",
	epResetPassword:  "UserMgmt/ResetUserPassword",
}

// route maps a tenant path to an endpoint name and the app ID as sent (empty for the
// management APIs, which are tenant-wide). Matching is case-insensitive because the
// tenant's is.
func route(path string) (ep, appID string, ok bool) {
	trimmed := strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/")
	for name, p := range managementPaths {
		if strings.EqualFold(trimmed, p) {
			return name, "", true
		}
	}
	for _, p := range endpointPrefixes {
		if hasPrefixFold(path, p.prefix) {
			id := strings.TrimSuffix(path[len(p.prefix):], "/")
			if id == "" || strings.Contains(id, "/") {
				return "", "", false
			}
			return p.ep, id, true
		}
	}
	if strings.EqualFold(trimmed, "oauth2/platformtoken") {
		return epToken, PlatformAppID, true
	}
	const wellKnown = "/.well-known/openid-configuration"
	if len(path) > len(wellKnown)+1 && strings.EqualFold(path[len(path)-len(wellKnown):], wellKnown) {
		id := path[1 : len(path)-len(wellKnown)]
		if !strings.Contains(id, "/") {
			return epDiscovery, id, true
		}
	}
	return "", "", false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error since Go 1.24
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
