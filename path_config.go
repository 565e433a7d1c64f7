package cyberark

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/automatedrotationutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

const (
	configPath = "config"

	clientAuthBasic = "basic"
	clientAuthPost  = "post"

	defaultRequestTimeout = 30 * time.Second
	minRequestTimeout     = time.Second
	maxRequestTimeout     = 5 * time.Minute

	// A token read with all its retries must end before its reader gives up, so the
	// reader gets our error rather than its own timeout: the vault CLI and vault/api
	// wait 60s by default, and Vault itself cancels a request after max_request_duration
	// (90s unless raised), which bounds the maximum.
	defaultTotalTimeout = 45 * time.Second
	minTotalTimeout     = time.Second
	maxTotalTimeout     = 85 * time.Second
	defaultMaxRetries   = 3
	maxMaxRetries       = 10

	retryWaitFloor   = 250 * time.Millisecond
	retryWaitCeiling = 4 * time.Second
	maxRetryAfter    = 10 * time.Second
)

// cyberarkConfig is the stored engine configuration. It is seal-wrapped at rest.
type cyberarkConfig struct {
	TenantURL    string   `json:"tenant_url"`
	AppID        string   `json:"app_id,omitempty"`
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret"`
	Scopes       []string `json:"scopes,omitempty"`
	TokenURL     string   `json:"token_url,omitempty"`
	// TokenParams are sent with every grant besides the engine's own parameters:
	// RFC 8707's resource, an audience, and the like.
	TokenParams    map[string]string `json:"token_params,omitempty"`
	ClientAuth     string            `json:"client_auth"`
	CACert         string            `json:"ca_cert,omitempty"`
	RequestTimeout time.Duration     `json:"request_timeout"`
	TotalTimeout   time.Duration     `json:"total_timeout"`
	MaxRetries     int               `json:"max_retries"`
	RevokeURL      string            `json:"revoke_url,omitempty"`
	// RevokeTokens is nil until set, so the default can follow token_url and revoke_url.
	RevokeTokens *bool `json:"revoke_tokens,omitempty"`

	// RotationScopes are asked for in the grant whose token authorises the password
	// change: the app must grant a scope whose allowed REST APIs include
	// UserMgmt/ChangeUserPassword.
	RotationScopes []string `json:"rotation_scopes,omitempty"`
	// PasswordPolicy names a Vault password policy for new secrets; empty uses ours.
	PasswordPolicy string `json:"password_policy,omitempty"`
	// PasswordLength is the length of our generated secrets; 0 means the default.
	PasswordLength int `json:"password_length,omitempty"`
	// MaxFailedLogins and FailedLoginWindow bound the refused logins the engine
	// causes (budget.go); 0 means the default, as in configs of earlier releases.
	MaxFailedLogins   int           `json:"max_failed_logins,omitempty"`
	FailedLoginWindow time.Duration `json:"failed_login_window,omitempty"`
	// PasswordChangeEndsTokens says the tenant ends a user's tokens when its password
	// changes (CyberArk's behaviour is unverified): leases end by the next scheduled
	// rotation, and a rotation says that earlier tokens are dead.
	PasswordChangeEndsTokens bool `json:"password_change_ends_tokens,omitempty"`
	// VerifyScope says what a granted scope wider than the one asked for does:
	// "enforce" (also when empty) refuses and revokes it, "warn" hands it out with a
	// warning. A rotation scope is refused either way (trust.go).
	VerifyScope string `json:"verify_scope,omitempty"`
	// VerifyTokens, TokenAudience and JWKSURL set the checks of granted tokens
	// (trust.go); PinnedSub is the service user's sub, pinned by a verified write.
	VerifyTokens  string `json:"verify_tokens,omitempty"`
	TokenAudience string `json:"token_audience,omitempty"`
	JWKSURL       string `json:"jwks_url,omitempty"`
	PinnedSub     string `json:"pinned_sub,omitempty"`
	// DeniedScopes are scopes no workload token may carry besides the rotation
	// scopes; nil means defaultDeniedScopes, an empty list none (trust.go).
	DeniedScopes []string `json:"denied_scopes"`
	// RotationMethod is how the secret is rotated: "self" (also when empty) through the
	// user's own ChangeUserPassword, or "managed" through Manager's ResetUserPassword.
	RotationMethod string `json:"rotation_method,omitempty"`
	Manager        string `json:"manager,omitempty"`
	// ManagedClients (names or globs) are the clients this one may rotate as their
	// manager, with a token asked for with ManagementScopes.
	ManagedClients   []string `json:"managed_clients,omitempty"`
	ManagementScopes []string `json:"management_scopes,omitempty"`
	// AllowedRoles (names or globs) may get tokens of this client (allowsRole).
	AllowedRoles []string `json:"allowed_roles,omitempty"`
	// TrackTokens records every handed-out token for tokens/lookup and tokens/revoke.
	TrackTokens bool `json:"track_tokens,omitempty"`
	automatedrotationutil.AutomatedRotationParams
	Rotation rotationState `json:"rotation"`
}

// revokeEndpoint is where revocations for appID go, or "" when there is none: revoke_url
// when set, else the tenant's per-application endpoint unless token_url points elsewhere.
func (c *cyberarkConfig) revokeEndpoint(appID string) string {
	switch {
	case c.RevokeURL != "":
		return c.RevokeURL
	case c.TokenURL == "":
		return c.tenantEndpoint("revoke", appID)
	default:
		return ""
	}
}

// revokes says whether leases end with a revocation at the tenant: on by default where
// a revocation endpoint is known.
func (c *cyberarkConfig) revokes() bool {
	if c.RevokeTokens != nil {
		return *c.RevokeTokens
	}
	return c.TokenURL == "" || c.RevokeURL != ""
}

func (c *cyberarkConfig) retryPolicy() client.RetryPolicy {
	return client.RetryPolicy{
		MaxRetries:    c.MaxRetries,
		WaitMin:       retryWaitFloor,
		WaitMax:       retryWaitCeiling,
		MaxRetryAfter: maxRetryAfter,
		Budget:        c.TotalTimeout,
	}
}

// tokenEndpoint is where grants for appID go: token_url when set, else the tenant's
// per-application endpoint.
func (c *cyberarkConfig) tokenEndpoint(appID string) string {
	if c.TokenURL != "" {
		return c.TokenURL
	}
	return c.tenantEndpoint("token", appID)
}

func (c *cyberarkConfig) tenantEndpoint(kind, appID string) string {
	return strings.TrimRight(c.TenantURL, "/") + "/oauth2/" + kind + "/" + url.PathEscape(appID)
}

func (c *cyberarkConfig) authStyle() client.AuthStyle {
	if c.ClientAuth == clientAuthPost {
		return client.AuthPost
	}
	return client.AuthBasic
}

func pathConfig(b *backend) *framework.Path {
	// A create and an update are one write: fields left out keep their stored values.
	configWrite := &framework.PathOperation{
		Callback:                    b.pathConfigWrite,
		ForwardPerformanceStandby:   true,
		ForwardPerformanceSecondary: true,
		DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "configure"},
		Summary:                     "Store the tenant and confidential client, or change some of their settings.",
		Responses:                   writeResponses("The config was stored."),
	}
	p := &framework.Path{
		Pattern: configPath,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields:         configWriteFields(),
		ExistenceCheck: b.pathConfigExists,
		// Writes go straight to the node that writes storage (Enterprise performance
		// standbys and secondaries forward them). Left to Vault's own forwarding on a
		// failed storage write, a write would first run here, verify_connection's grant
		// included, and then run again on the active node.
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.CreateOperation: configWrite,
			logical.UpdateOperation: configWrite,
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
				Summary:      "Read the config, without the client secret, and the state of root rotation.",
				Responses: map[int][]framework.Response{
					http.StatusOK:        {{Description: "The config. The client secret is never returned; client_secret_set says whether one is stored.", Fields: configReadFields()}},
					http.StatusNoContent: {{Description: "The engine is not configured."}},
				},
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:                    b.pathConfigDelete,
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
				DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "configuration"},
				Summary:                     "Delete the config, secret included; token reads fail until a new one is written.",
				Responses:                   writeResponses("The config was deleted."),
			},
		},
		HelpSynopsis: "Configure the CyberArk Identity tenant and confidential client.",
		HelpDescription: `Stores the tenant URL, the OAuth2 application ID and the confidential client's
ID and secret. An update that leaves a field out keeps its stored value, so the secret
alone can be rotated with "vault write <mount>/config client_secret=...". A write that
changes where the secret or tokens are sent (tenant_url, token_url, revoke_url,
jwks_url, client_id, client_auth, ca_cert, or app_id when it moves an endpoint) must carry
client_secret too: a stored secret is never sent to a new destination. Unless
verify_connection=false, a write first fetches a token with the new settings and is
refused, storing nothing, if the tenant refuses. A write of client_secret is the manual
rotation: change the secret at the tenant, then write it here.

Root rotation (config/rotate-root) is scheduled with rotation_period or
rotation_schedule (cron, with rotation_window). On Vault Enterprise, Vault's rotation
manager runs the schedule; elsewhere the engine does, on the active node.`,
	}
	return p
}

// configWriteFields are the fields of a write of config, and of clients/<name>.
func configWriteFields() map[string]*framework.FieldSchema {
	fields := map[string]*framework.FieldSchema{
		"tenant_url": {
			Type:        framework.TypeString,
			Description: "Base URL of the CyberArk Identity tenant, e.g. https://abc1234.id.cyberark.cloud. https only; http is accepted for loopback hosts. Required unless token_url is set. Changing it requires client_secret in the same write.",
		},
		"app_id": {
			Type:        framework.TypeString,
			Description: "Application ID of the OAuth2 confidential client app. Required unless token_url is set.",
		},
		"client_id": {
			Type: framework.TypeString,
			// Not Required: an update may leave it out (it keeps the stored value), and
			// OpenAPI's "required" would make generated clients and the UI send it with
			// every write. A create without it is a 400 all the same.
			Description: "Login name of the service user that is the confidential client, e.g. svc-vault@abc1234. Required when the config is created. Changing it requires client_secret in the same write.",
		},
		"client_secret": {
			Type:         framework.TypeString,
			Description:  "Password of the service user. Required when the config is created, and in any write that changes where it is sent (tenant_url, token_url, revoke_url, jwks_url, client_id, client_auth, ca_cert, or app_id when it moves an endpoint); never returned by a read.",
			DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
		},
		"scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Scopes requested by reads of token (and by roles that set none), as a list or comma-separated string.",
		},
		"token_url": {
			Type:        framework.TypeString,
			Description: "Absolute URL of the token endpoint, overriding <tenant_url>/oauth2/token/<app_id>; e.g. <tenant_url>/oauth2/platformtoken.",
		},
		"token_params": {
			Type:        framework.TypeKVPairs,
			Description: "Parameters sent with every grant besides the engine's own, as key=value pairs: audience, resource (RFC 8707) and the like. Never grant_type, client_id, client_secret, scope or other credentials. An empty map removes them.",
		},
		"client_auth": {
			Type:          framework.TypeString,
			Description:   `How the client authenticates: "basic" (Authorization: Basic with the raw ID and secret) or "post" (client_secret_post form fields).`,
			Default:       clientAuthBasic,
			AllowedValues: []any{clientAuthBasic, clientAuthPost},
		},
		"ca_cert": {
			Type:        framework.TypeString,
			Description: "PEM bundle of CA certificates that the tenant's certificate must chain to, instead of the system roots.",
		},
		"request_timeout": {
			Type:        framework.TypeDurationSecond,
			Description: "Time limit for one HTTP exchange with the tenant, as seconds or a duration string.",
			Default:     int(defaultRequestTimeout.Seconds()),
		},
		"total_timeout": {
			Type:        framework.TypeDurationSecond,
			Description: "Time limit for a whole token read or revocation, all retries and waits included. The default stays below the 60s timeout of the vault CLI and vault/api; at most 85s, within Vault's max_request_duration.",
			Default:     int(defaultTotalTimeout.Seconds()),
		},
		"max_retries": {
			Type:        framework.TypeInt,
			Description: "How often a call is retried after a connection error, a 5xx or a 429 (with backoff and jitter, honouring Retry-After up to 10s). Other 4xx answers are never retried. 0 to 10.",
			Default:     defaultMaxRetries,
		},
		"revoke_tokens": {
			Type:        framework.TypeBool,
			Description: "Revoke a token at the tenant when its lease ends. Default: true when tokens come from the tenant's own endpoint or revoke_url is set, false when token_url points elsewhere.",
		},
		"revoke_url": {
			Type:        framework.TypeString,
			Description: "Absolute URL of an RFC 7009 revocation endpoint, overriding <tenant_url>/oauth2/revoke/<app_id>.",
		},
		"rotation_scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Scopes asked for in the grant whose token authorises a root rotation: the app must grant one whose allowed REST APIs include UserMgmt/ChangeUserPassword. Empty: the grant asks for no scope.",
		},
		"password_policy": {
			Type:        framework.TypeString,
			Description: "Name of a Vault password policy that generates new secrets for root rotation. Empty: letters and digits, password_length long, with at least one digit, one upper-case and one lower-case letter.",
		},
		"password_length": {
			Type:        framework.TypeInt,
			Description: "Length of secrets generated for root rotation when no password_policy is set; 16 to 64.",
			Default:     defaultPasswordLength,
		},
		"max_failed_logins": {
			Type:        framework.TypeInt,
			Description: "At most this many refused logins (client authentications) the engine causes at the tenant per failed_login_window, across token reads, checks, rotation and revocation; once they are spent, reads are refused at once without asking the tenant. Keep it below the tenant's lockout threshold. 1 to 100.",
			Default:     defaultMaxFailedLogins,
		},
		"failed_login_window": {
			Type:        framework.TypeDurationSecond,
			Description: "The window of max_failed_logins, as seconds or a duration string; at least the tenant's own capture window. 1m to 24h.",
			Default:     int(defaultFailedLoginWindow.Seconds()),
		},
		"password_change_ends_tokens": {
			Type:        framework.TypeBool,
			Description: "Set when the tenant ends a service user's tokens at a password change (unverified for CyberArk Identity). Leases (and a lease-free ttl) then end by the next scheduled rotation, so readers come back for a new token, and rotate-root warns that the tokens handed out before it no longer work.",
		},
		"verify_scope": {
			Type:          framework.TypeString,
			Description:   `What a token whose granted scope is wider than the one asked for does: "enforce" refuses it and revokes it at the tenant, "warn" hands it out with a warning. A granted rotation scope is refused either way.`,
			Default:       verifyScopeEnforce,
			AllowedValues: []any{verifyScopeEnforce, verifyScopeWarn},
		},
		"denied_scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: `Scopes no workload token may carry besides rotation_scopes: list every scope whose allowed REST APIs include UserMgmt. Default: "all". A role, reader or config asking for one is refused, and a token granted with one is revoked.`,
		},
		"verify_tokens": {
			Type:          framework.TypeString,
			Description:   `How granted tokens are checked before they leave: "auto" checks a JWT's signature against the tenant's keys and its iss, aud, exp, sub and scope, and lets an opaque token or keys that cannot be found through with a warning; "enforce" refuses those too; "off" checks only the granted scope.`,
			Default:       verifyTokensAuto,
			AllowedValues: []any{verifyTokensAuto, verifyTokensEnforce, verifyTokensOff},
		},
		"token_audience": {
			Type:        framework.TypeString,
			Description: "The aud a token must carry. Empty: client_id (CyberArk's OAuth2 Client apps); OAuth2 Server apps may set another.",
		},
		"jwks_url": {
			Type:        framework.TypeString,
			Description: "Absolute URL of the key set that signs tokens, overriding <tenant_url>/oauth2/keys/<app_id> (and the discovery document's jwks_uri); needed to check tokens from a token_url endpoint.",
		},
		"verify_connection": {
			Type:        framework.TypeBool,
			Description: "Fetch one token with the new settings before storing them, and refuse the write if the tenant does. Not stored.",
			Default:     true,
		},
	}
	maps.Copy(fields, clientFieldSchemas())
	automatedrotationutil.AddAutomatedRotationFieldsWithGroup(fields, "Rotation")
	return fields
}

// writeResponses are the answers of a write or delete that returns no data: nothing,
// or warnings only.
func writeResponses(done string) map[int][]framework.Response {
	return map[int][]framework.Response{
		http.StatusNoContent: {{Description: done}},
		http.StatusOK:        {{Description: done + " The response carries warnings only, saying what to check."}},
	}
}

// configReadFields describe a config read's response.
func configReadFields() map[string]*framework.FieldSchema {
	str := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeString, Description: d}
	}
	list := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeCommaStringSlice, Description: d}
	}
	num := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeInt, Description: d}
	}
	flag := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeBool, Description: d}
	}
	when := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeTime, Description: d}
	}
	return map[string]*framework.FieldSchema{
		"tenant_url":                  str("Base URL of the tenant."),
		"app_id":                      str("Application ID of the OAuth2 confidential client app."),
		"client_id":                   str("Login name of the service user."),
		"client_secret_set":           flag("Whether a client secret is stored. The secret itself is never returned."),
		"scopes":                      list("Scopes asked for by reads of token and by roles that set none."),
		"token_url":                   str("The token endpoint set in place of the tenant's own, or empty."),
		"token_params":                {Type: framework.TypeKVPairs, Description: "Parameters sent with every grant besides the engine's own."},
		"token_endpoint":              str("The token endpoint reads of token use, as derived from tenant_url, app_id and token_url."),
		"client_auth":                 str(`How the client authenticates: "basic" or "post".`),
		"ca_cert":                     str("PEM bundle of CA certificates for the tenant, or empty for the system roots."),
		"request_timeout":             num("Time limit for one HTTP exchange with the tenant, in seconds."),
		"total_timeout":               num("Time limit for a whole token read or revocation, in seconds."),
		"max_retries":                 num("How often a call to the tenant is retried."),
		"revoke_tokens":               flag("Whether a token is revoked at the tenant when its lease ends."),
		"revoke_url":                  str("The revocation endpoint set in place of the tenant's own, or empty."),
		"revoke_endpoint":             str("The revocation endpoint used, or empty when tokens are not revoked."),
		"rotation_scopes":             list("Scopes asked for in the grant that authorises a root rotation."),
		"password_policy":             str("Vault password policy that generates rotated secrets, or empty."),
		"password_length":             num("Length of rotated secrets when no password_policy is set."),
		"max_failed_logins":           num("Refused logins the engine may cause per failed_login_window."),
		"failed_login_window":         num("The window of max_failed_logins, in seconds."),
		"password_change_ends_tokens": flag("Whether the tenant ends a user's tokens at a password change, as the config says."),
		"verify_scope":                str(`What a granted scope wider than the one asked for does: "enforce" or "warn".`),
		"verify_tokens":               str(`How granted tokens are checked: "auto", "enforce" or "off".`),
		"denied_scopes":               list("Scopes no workload token may carry besides rotation_scopes."),
		"token_audience":              str("The aud a token must carry; empty: client_id."),
		"jwks_url":                    str("The key set set in place of the tenant's own, or empty."),
		"pinned_sub":                  str("The service user's sub, pinned at a verified config write; tokens for another are refused."),
		"name":                        str("The client's name: default for config."),
		"rotation_method":             str("self or managed."),
		"manager":                     str("The manager client of a managed client, or empty."),
		"managed_clients":             list("Clients (names or globs) this one may rotate as their manager."),
		"management_scopes":           list("Scopes of this client's grant that resets a managed client's password."),
		"allowed_roles":               list("Roles (names or globs) that may use this client; empty on the default client: every role."),
		"track_tokens":                {Type: framework.TypeBool, Description: "Whether every handed-out token is recorded for tokens/lookup and tokens/revoke."},
		"signing_keys":                str(`Whether the config's token signing keys were found: "found", "not fetched yet", or why not.`),
		"failed_logins":               num("Refused logins the engine caused within the current window."),
		"failed_logins_total":         num("Refused logins since the stored credentials were last verified by a config write."),
		"failed_logins_since":         when("When the first of failed_logins_total happened, or absent."),
		"last_failed_login":           str("The tenant's last refusal, without secrets, or absent."),
		"next_login_attempt":          when("While the budget is spent: when the engine may try the tenant again; absent otherwise."),
		"rotation_state":              str(`State of root rotation: "ok", "pending" (a rotation did not finish; the engine settles it) or "unresolved" (the tenant refused both secrets; see docs/rotation.md).`),
		"rotation_pending_since":      when("When the unfinished rotation began; only while rotation_state is pending or unresolved."),
		"last_rotation_error":         str("Why the last rotation failed, or what its last check found; without secrets."),
		"rotation_period":             num("Seconds between scheduled rotations, or 0."),
		"rotation_schedule":           str("Cron schedule of rotations, or empty."),
		"rotation_window":             num("Seconds after a scheduled time in which a rotation may still start, or 0."),
		"disable_automated_rotation":  flag("Whether scheduled rotation is off."),
		"rotation_policy":             str("Rotation policy passed to Vault Enterprise's rotation manager."),
		"last_vault_rotation":         when("When the secret was last changed by a rotation, or null."),
		"next_vault_rotation":         when("When the next scheduled rotation is due, or null."),
	}
}

func (b *backend) pathConfigExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	return b.clientExists(ctx, req, b.root)
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return b.readClient(ctx, req, b.root)
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return b.deleteClient(ctx, req, b.root)
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.writeClient(ctx, req, d, b.root)
}

func (b *backend) clientExists(ctx context.Context, req *logical.Request, c *credential) (bool, error) {
	cfg, err := c.load(ctx, req.Storage)
	return cfg != nil, err
}

// readClient answers a read of a client's config: config for the default client,
// clients/<name> for the others.
func (b *backend) readClient(ctx context.Context, req *logical.Request, c *credential) (*logical.Response, error) {
	cfg, err := c.load(ctx, req.Storage)
	if err != nil || cfg == nil {
		return nil, err
	}
	data := map[string]any{
		"tenant_url":                  cfg.TenantURL,
		"app_id":                      cfg.AppID,
		"client_id":                   cfg.ClientID,
		"client_secret_set":           cfg.ClientSecret != "",
		"scopes":                      nonNil(cfg.Scopes),
		"token_url":                   cfg.TokenURL,
		"token_params":                nonNilMap(cfg.TokenParams),
		"token_endpoint":              cfg.tokenEndpoint(cfg.AppID),
		"client_auth":                 cfg.ClientAuth,
		"ca_cert":                     cfg.CACert,
		"request_timeout":             int64(cfg.RequestTimeout.Seconds()),
		"total_timeout":               int64(cfg.TotalTimeout.Seconds()),
		"max_retries":                 cfg.MaxRetries,
		"revoke_tokens":               cfg.revokes(),
		"revoke_url":                  cfg.RevokeURL,
		"revoke_endpoint":             cfg.revokeEndpoint(cfg.AppID),
		"rotation_scopes":             nonNil(cfg.RotationScopes),
		"password_policy":             cfg.PasswordPolicy,
		"password_length":             cmp.Or(cfg.PasswordLength, defaultPasswordLength),
		"rotation_state":              cfg.Rotation.status(),
		"max_failed_logins":           cfg.loginLimits().max,
		"failed_login_window":         int64(cfg.loginLimits().window.Seconds()),
		"password_change_ends_tokens": cfg.PasswordChangeEndsTokens,
		"verify_scope":                cmp.Or(cfg.VerifyScope, verifyScopeEnforce),
		"verify_tokens":               cmp.Or(cfg.VerifyTokens, verifyTokensAuto),
		"denied_scopes":               cfg.deniedScopes(),
		"token_audience":              cfg.TokenAudience,
		"jwks_url":                    cfg.JWKSURL,
		"pinned_sub":                  cfg.PinnedSub,
		"signing_keys":                b.keyStatus(cfg),
	}
	cfg.addClientFields(c.name, data)
	if err := c.addLoginStatus(ctx, req.Storage, cfg, data); err != nil {
		return nil, err
	}
	cfg.PopulateSetAutomatedRotationData(data)
	info := automatedrotationutil.RotationInfoResponseParams{
		LastVaultRotation: cfg.Rotation.LastRotation,
		NextVaultRotation: cfg.Rotation.NextRotation,
		RotationID:        cfg.Rotation.RotationID,
	}
	info.PopulateRotationInfo(data)
	if cfg.Rotation.RotationID != "" {
		// Vault's rotation manager holds the schedule and knows the next time.
		if ri, err := b.System().GetRotationInformation(ctx, &rotation.RotationInfoRequest{ReqPath: c.key}); err == nil && ri != nil && !ri.NextVaultRotation.IsZero() {
			data["next_vault_rotation"] = ri.NextVaultRotation.UTC()
		}
	}
	resp := &logical.Response{Data: data}
	if !cfg.Rotation.PendingSince.IsZero() {
		data["rotation_pending_since"] = cfg.Rotation.PendingSince.UTC()
	}
	if cfg.Rotation.LastError != "" {
		data["last_rotation_error"] = cfg.Rotation.LastError
	}
	switch cfg.Rotation.status() {
	case rotationStatePending:
		resp.AddWarning("a root rotation did not finish: a new secret is stored beside the current one, and the engine keeps whichever the tenant accepts at its next check (at start, every few minutes, or at once when a token read is refused)")
	case rotationStateUnresolved:
		resp.AddWarning("a root rotation is unresolved: the tenant refused both the current and the new secret. Check the service user at the tenant (locked, disabled, or its password changed elsewhere), then write the secret it accepts to client_secret")
	}
	return resp, nil
}

// deleteClient deletes a client's config and secret.
func (b *backend) deleteClient(ctx context.Context, req *logical.Request, c *credential) (*logical.Response, error) {
	if resp, err := b.clientInUse(ctx, req.Storage, c.name); resp != nil || err != nil {
		return resp, err
	}
	cfg, err := c.remove(ctx, req.Storage, req.MountPoint)
	if err != nil {
		return nil, err
	}
	if cfg != nil && cfg.Rotation.PendingSecret != "" {
		// After a rotation, Vault held the only copy of the password; say so loudly.
		b.Logger().Warn("config deleted while a root rotation was pending: the secret the tenant accepts may be lost with it")
		return &logical.Response{Warnings: []string{"the config was deleted while a root rotation was " + cfg.Rotation.status() +
			": if the tenant had taken the new secret, no copy of it is left; set a new password for the service user at the tenant"}}, nil
	}
	return nil, nil
}

// writeClient creates or updates a client's config.
func (b *backend) writeClient(ctx context.Context, req *logical.Request, d *framework.FieldData, c *credential) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()

	cfg, err := c.load(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	creating := cfg == nil
	var old cyberarkConfig
	if !creating {
		old = *cfg
	}
	if creating {
		cfg = &cyberarkConfig{
			ClientAuth:     clientAuthBasic,
			RequestTimeout: defaultRequestTimeout,
			TotalTimeout:   defaultTotalTimeout,
			MaxRetries:     defaultMaxRetries,
		}
	}
	copyGiven(d, cfg.fields())
	cfg.TenantURL = strings.TrimRight(cfg.TenantURL, "/")
	verify := d.Get("verify_connection").(bool)
	in := configInput{name: c.name, creating: creating, raw: d.Raw, verify: verify, now: b.now()}
	if !creating {
		in.old = &old
	}
	problems := cfg.validate(in)
	links, err := b.checkClientLinks(ctx, req.Storage, c.name, cfg)
	if err != nil {
		return nil, err
	}
	problems = append(problems, links...)
	if len(problems) == 0 && in.given("password_policy") && cfg.PasswordPolicy != "" {
		// Only a name validate accepted is sent to Vault.
		if _, err := b.samplePasswordPolicy(ctx, cfg.PasswordPolicy); err != nil {
			problems.add("password_policy", "%s", err)
		}
	}
	if resp := problems.response(); resp != nil {
		return resp, nil
	}

	secretGiven := in.given("client_secret")
	if secretGiven || !verify {
		// A written secret may be another user's: the verification pins it anew. An
		// unverified write cannot vouch for the pinned one.
		cfg.PinnedSub = ""
	}
	var warnings []string
	if verify {
		resp, err := b.verifyConfig(ctx, req.Storage, c, cfg)
		if resp != nil && resp.IsError() || err != nil {
			return resp, err
		}
		if resp != nil {
			warnings = resp.Warnings
		}
	}
	rescheduled := creating || rotationFieldsGiven(d)
	if rescheduled {
		if err := c.scheduleRotation(ctx, req, cfg); err != nil {
			return nil, err
		}
	}
	var stored *cyberarkConfig
	if !creating {
		stored = &old
	}
	// A written secret is the manual rotation: it settles any rotation under way, as
	// far as a change in flight allows (operatorWrite).
	if err := c.operatorWrite(ctx, req.Storage, stored, cfg, secretGiven, verify); err != nil {
		if rescheduled {
			// Put Vault's rotation manager back as the stored config has it.
			c.restoreRotationJob(ctx, req, &old, cfg)
		}
		return nil, fmt.Errorf("storing config: %w", err)
	}
	c.armSchedule(cfg)
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

// rotationFieldsGiven says whether a write touches the rotation schedule.
func rotationFieldsGiven(d *framework.FieldData) bool {
	for _, f := range []string{"rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation", "rotation_policy"} {
		if _, ok := d.GetOk(f); ok {
			return true
		}
	}
	return false
}

// destinationChanges names the fields whose change from c to next moves where the
// client secret or issued tokens go, or whom the engine trusts to be that destination.
// A writer who may update the config but not read it could otherwise point the engine
// at a server of theirs and collect the stored secret.
func (c *cyberarkConfig) destinationChanges(next *cyberarkConfig) []string {
	var moved []string
	changed := func(field string, a, b string) {
		if a != b {
			moved = append(moved, field)
		}
	}
	changed("tenant_url", c.TenantURL, next.TenantURL)
	changed("token_url", c.TokenURL, next.TokenURL)
	changed("revoke_url", c.RevokeURL, next.RevokeURL)
	changed("client_id", c.ClientID, next.ClientID)
	changed("client_auth", c.ClientAuth, next.ClientAuth)
	changed("ca_cert", c.CACert, next.CACert)
	changed("jwks_url", c.JWKSURL, next.JWKSURL)
	if c.AppID != next.AppID && (c.tokenEndpoint(c.AppID) != next.tokenEndpoint(next.AppID) ||
		c.revokeEndpoint(c.AppID) != next.revokeEndpoint(next.AppID)) {
		moved = append(moved, "app_id")
	}
	return moved
}

// fields maps each request field a config write copies to where it is stored.
func (c *cyberarkConfig) fields() map[string]any {
	return map[string]any{
		"tenant_url":                  &c.TenantURL,
		"app_id":                      &c.AppID,
		"client_id":                   &c.ClientID,
		"client_secret":               &c.ClientSecret,
		"scopes":                      &c.Scopes,
		"token_url":                   &c.TokenURL,
		"token_params":                &c.TokenParams,
		"client_auth":                 &c.ClientAuth,
		"ca_cert":                     &c.CACert,
		"request_timeout":             &c.RequestTimeout,
		"total_timeout":               &c.TotalTimeout,
		"max_retries":                 &c.MaxRetries,
		"revoke_url":                  &c.RevokeURL,
		"revoke_tokens":               &c.RevokeTokens,
		"rotation_scopes":             &c.RotationScopes,
		"password_policy":             &c.PasswordPolicy,
		"password_length":             &c.PasswordLength,
		"denied_scopes":               &c.DeniedScopes,
		"verify_tokens":               &c.VerifyTokens,
		"token_audience":              &c.TokenAudience,
		"jwks_url":                    &c.JWKSURL,
		"verify_scope":                &c.VerifyScope,
		"password_change_ends_tokens": &c.PasswordChangeEndsTokens,
		"max_failed_logins":           &c.MaxFailedLogins,
		"failed_login_window":         &c.FailedLoginWindow,
		"rotation_period":             &c.RotationPeriod,
		"rotation_schedule":           &c.RotationSchedule,
		"rotation_window":             &c.RotationWindow,
		"rotation_policy":             &c.RotationPolicy,
		"disable_automated_rotation":  &c.DisableAutomatedRotation,
		"rotation_method":             &c.RotationMethod,
		"manager":                     &c.Manager,
		"managed_clients":             &c.ManagedClients,
		"management_scopes":           &c.ManagementScopes,
		"allowed_roles":               &c.AllowedRoles,
		"track_tokens":                &c.TrackTokens,
	}
}

// configInput is a config write as validate sees it. The merged config alone cannot
// tell a field left out from one given as 0 (which would mean "the default"), or a
// duration the framework cut to 0 from "300ms".
type configInput struct {
	name     string // the client's
	creating bool
	raw      map[string]any  // the write's fields; nil checks a stored config as it is
	old      *cyberarkConfig // the stored config an update changes
	verify   bool            // verify_connection
	now      time.Time
}

func (in configInput) given(field string) bool {
	_, ok := in.raw[field]
	return ok
}

// validate is the one place a config is checked: every field's own limits, then the
// rules between fields and between the stored config and the write.
func (c *cyberarkConfig) validate(in configInput) fieldErrors {
	var problems fieldErrors
	problems = append(problems, c.checkEndpoints()...)
	problems = append(problems, c.checkCredentials(in)...)
	problems = append(problems, c.checkLimits(in)...)
	problems = append(problems, c.checkRotation(in)...)
	problems = append(problems, c.checkTokenChecks()...)
	problems = append(problems, c.checkClientFields(in)...)
	scopesOK := true
	for field, scopes := range map[string][]string{"scopes": c.Scopes, "rotation_scopes": c.RotationScopes, "denied_scopes": c.DeniedScopes, "management_scopes": c.ManagementScopes} {
		scopesOK = problems.check(field, checkScopes(scopes)) && scopesOK
	}
	if scopesOK {
		// Their messages quote scopes, so only scopes checkScopes accepted.
		problems = append(problems, c.scopeConflicts()...)
	}
	sort.Strings(problems)
	return problems
}

// checkClientFields checks how the client is rotated and who may use it.
func (c *cyberarkConfig) checkClientFields(in configInput) fieldErrors {
	var problems fieldErrors
	switch c.RotationMethod {
	case "", rotationSelf:
		if c.Manager != "" {
			problems.add("manager", "applies only with rotation_method=managed; set manager=\"\" or rotation_method=managed")
		}
	case rotationManaged:
		switch {
		case c.Manager == "":
			problems.add("manager", "is required with rotation_method=managed: the client whose tokens reset this one's password")
		case c.Manager == in.name:
			problems.add("manager", "must be another client than this one")
		case !problems.check("manager", checkRoleName(c.Manager)):
		}
		if len(c.ManagedClients) > 0 {
			problems.add("managed_clients", "a managed client cannot manage others: a manager rotates its own secret")
		}
		// Its manager resets the user whose sub the verified write pins: that token
		// must come from the tenant itself and be checked against the tenant's keys.
		if c.TokenURL != "" || c.JWKSURL != "" {
			problems.add("rotation_method", "managed needs tokens from the tenant's own endpoint, checked against its own keys: remove token_url and jwks_url")
		}
		if c.VerifyTokens == verifyTokensOff {
			problems.add("verify_tokens", "must not be off for a managed client: the token of its verified write names the user its manager resets")
		}
	default:
		problems.add("rotation_method", "must be %q or %q, got %s", rotationSelf, rotationManaged, quoteShort(c.RotationMethod))
	}
	problems.check("managed_clients", checkNames(c.ManagedClients))
	problems.check("allowed_roles", checkNames(c.AllowedRoles))
	if len(c.ManagedClients) > 0 && len(c.ManagementScopes) == 0 {
		problems.add("management_scopes", "is required with managed_clients: the scope whose tokens may call UserMgmt/ResetUserPassword")
	}
	return problems
}

// checkEndpoints checks where the engine sends the secret and takes tokens from.
func (c *cyberarkConfig) checkEndpoints() fieldErrors {
	var problems fieldErrors
	switch {
	case c.TenantURL != "":
		problems.check("tenant_url", checkEndpointURL(c.TenantURL, false))
	case c.TokenURL == "":
		problems.add("tenant_url", "is required unless token_url is set: the tenant's base URL, e.g. https://abc1234.id.cyberark.cloud")
	}
	if c.TokenURL != "" {
		problems.check("token_url", checkEndpointURL(c.TokenURL, true))
	}
	problems.check("token_params", checkTokenParams(c.TokenParams))
	switch {
	case c.AppID != "":
		problems.check("app_id", checkAppID(c.AppID))
	case c.TokenURL == "":
		problems.add("app_id", "is required unless token_url is set: the application ID of the OAuth2 client app")
	}
	if c.RevokeURL != "" {
		problems.check("revoke_url", checkEndpointURL(c.RevokeURL, true))
	}
	if c.RevokeTokens != nil && *c.RevokeTokens && c.revokeEndpoint(c.AppID) == "" {
		problems.add("revoke_tokens", "needs revoke_url when token_url is set: there is no known revocation endpoint")
	}
	if c.JWKSURL != "" {
		problems.check("jwks_url", checkEndpointURL(c.JWKSURL, true))
	}
	if len(c.CACert) > maxCACertBytes {
		problems.add("ca_cert", "must be at most %d bytes, got %d", maxCACertBytes, len(c.CACert))
	} else if c.CACert != "" {
		problems.check("ca_cert", checkCABundle(c.CACert))
	}
	return problems
}

// checkCredentials checks the client's ID and secret, and that a write which moves
// them elsewhere, or replaces a secret the tenant may hold, is one the writer vouches for.
func (c *cyberarkConfig) checkCredentials(in configInput) fieldErrors {
	var problems fieldErrors
	switch {
	case c.ClientID == "":
		problems.add("client_id", "is required: the service user's login name")
	case strings.TrimSpace(c.ClientID) != c.ClientID:
		problems.add("client_id", "must not begin or end with white space")
	case !problems.check("client_id", checkText(c.ClientID, maxClientIDLength)):
	case c.ClientAuth == clientAuthBasic && strings.Contains(c.ClientID, ":"):
		problems.add("client_id", `must not contain ":" with client_auth=basic (Basic authentication splits at the first colon); use client_auth=post`)
	}
	if c.ClientAuth != clientAuthBasic && c.ClientAuth != clientAuthPost {
		problems.add("client_auth", "must be %q or %q, got %s", clientAuthBasic, clientAuthPost, quoteShort(c.ClientAuth))
	}
	switch secretGiven := in.given("client_secret"); {
	case c.ClientSecret == "" && secretGiven:
		problems.add("client_secret", "must not be empty")
	case c.ClientSecret == "" && in.creating:
		problems.add("client_secret", "is required when the config is created")
	case strings.TrimSpace(c.ClientSecret) != c.ClientSecret:
		// Almost always a newline from "echo" or a file; the tenant would refuse it.
		problems.add("client_secret", "must not begin or end with white space or a newline (write it with printf '%%s', not echo)")
	case !problems.check("client_secret", checkText(c.ClientSecret, maxClientSecretLength)):
	case in.old != nil && !secretGiven:
		if moved := in.old.destinationChanges(c); len(moved) > 0 {
			problems.add("client_secret", "must be given again in the same write, because %s changes where the secret or tokens are sent; the stored secret is never sent to a new destination",
				strings.Join(moved, ", "))
		}
	case in.old != nil && secretGiven && !in.verify && (in.old.Rotation.PendingSecret != "" || in.old.Rotation.Unresolved):
		// This write ends the rotation and forgets its new secret, which the tenant may
		// hold: only a secret the tenant is seen to accept may replace it.
		problems.add("verify_connection", "must stay true while a root rotation is %s: the written secret replaces one the tenant may hold, so it is checked first", in.old.Rotation.status())
	}
	return problems
}

// checkLimits checks time limits, retries and the failed-login budget. A field whose 0
// means "the default" in a stored config is refused when a write gives 0.
func (c *cyberarkConfig) checkLimits(in configInput) fieldErrors {
	var problems fieldErrors
	if c.RequestTimeout < minRequestTimeout || c.RequestTimeout > maxRequestTimeout {
		problems.add("request_timeout", "must be between %s and %s, got %s", short(minRequestTimeout), short(maxRequestTimeout), short(c.RequestTimeout))
	}
	if c.TotalTimeout < minTotalTimeout || c.TotalTimeout > maxTotalTimeout {
		problems.add("total_timeout", "must be between %s and %s, got %s", short(minTotalTimeout), short(maxTotalTimeout), short(c.TotalTimeout))
	}
	if c.MaxRetries < 0 || c.MaxRetries > maxMaxRetries {
		problems.add("max_retries", "must be between 0 and %d, got %d", maxMaxRetries, c.MaxRetries)
	}
	if (c.MaxFailedLogins != 0 || in.given("max_failed_logins")) && (c.MaxFailedLogins < 1 || c.MaxFailedLogins > maxMaxFailedLogins) {
		problems.add("max_failed_logins", "must be between 1 and %d, got %d", maxMaxFailedLogins, c.MaxFailedLogins)
	}
	if (c.FailedLoginWindow != 0 || in.given("failed_login_window")) && (c.FailedLoginWindow < minFailedLoginWindow || c.FailedLoginWindow > maxFailedLoginWindow) {
		problems.add("failed_login_window", "must be between %s and %s, got %s", short(minFailedLoginWindow), short(maxFailedLoginWindow), short(c.FailedLoginWindow))
	}
	return problems
}

// checkRotation checks the root rotation's secret generation and schedule.
func (c *cyberarkConfig) checkRotation(in configInput) fieldErrors {
	var problems fieldErrors
	if (c.PasswordLength != 0 || in.given("password_length")) && (c.PasswordLength < minPasswordLength || c.PasswordLength > maxPasswordLength) {
		problems.add("password_length", "must be between %d and %d, got %d", minPasswordLength, maxPasswordLength, c.PasswordLength)
	}
	problems.check("password_policy", checkText(c.PasswordPolicy, maxPolicyNameLength))
	problems.check("rotation_policy", checkText(c.RotationPolicy, maxPolicyNameLength))
	if c.RotationSchedule != "" {
		problems.check("rotation_schedule", checkRotationSchedule(c.RotationSchedule, in.now))
	}
	// The framework keeps whole seconds: "300ms" arrives as 0, which would turn
	// rotation off or widen the window to the whole period.
	period, cut := lostToTruncation(in.raw["rotation_period"])
	if c.RotationPeriod < 0 || c.RotationPeriod > 0 && c.RotationPeriod < minRotationPeriod || cut {
		problems.add("rotation_period", "must be 0 (off) or at least %s, got %s", short(minRotationPeriod), cmp.Or(period, short(c.RotationPeriod)))
	}
	window, cut := lostToTruncation(in.raw["rotation_window"])
	if c.RotationWindow < 0 || c.RotationWindow > 0 && c.RotationWindow < minRotationWindow || cut {
		problems.add("rotation_window", "must be 0 (the whole period) or at least %s, as Vault's rotation manager requires, got %s", short(minRotationWindow), cmp.Or(window, short(c.RotationWindow)))
	}
	if c.RotationPeriod != 0 && c.RotationSchedule != "" {
		problems.add("rotation_period", "cannot be set with rotation_schedule: choose one (set the other to its zero value in the same write)")
	}
	if c.RotationWindow != 0 && c.RotationSchedule == "" {
		problems.add("rotation_window", "applies only to rotation_schedule: set rotation_schedule, or rotation_window=0")
	}
	if c.HasNonzeroRotationValues() && c.changePasswordURL() == "" {
		problems.add("tenant_url", "is required for scheduled root rotation: the secret is changed through the tenant's UserMgmt/ChangeUserPassword")
	}
	return problems
}

// checkTokenChecks checks the settings of the checks granted tokens pass (trust.go).
func (c *cyberarkConfig) checkTokenChecks() fieldErrors {
	var problems fieldErrors
	if c.VerifyScope != "" && c.VerifyScope != verifyScopeEnforce && c.VerifyScope != verifyScopeWarn {
		problems.add("verify_scope", "must be %q or %q, got %s", verifyScopeEnforce, verifyScopeWarn, quoteShort(c.VerifyScope))
	}
	switch c.VerifyTokens {
	case "", verifyTokensAuto, verifyTokensOff:
	case verifyTokensEnforce:
		if c.keysURL(c.AppID) == "" {
			problems.add("verify_tokens", "enforce needs a key set to check tokens against: set jwks_url, since token_url replaces the tenant's own endpoints")
		}
	default:
		problems.add("verify_tokens", "must be %q, %q or %q, got %s", verifyTokensAuto, verifyTokensEnforce, verifyTokensOff, quoteShort(c.VerifyTokens))
	}
	problems.check("token_audience", checkText(c.TokenAudience, maxClientIDLength))
	return problems
}

// verifyConfig fetches one token with cfg before it is stored. A refusal by the tenant
// is the writer's to fix (400); a tenant that cannot be reached is not (502).
func (b *backend) verifyConfig(ctx context.Context, s logical.Storage, c *credential, cfg *cyberarkConfig) (*logical.Response, error) {
	tc, err := b.newTenantClient(cfg, cfg.AppID)
	if err != nil {
		return logical.ErrorResponse("ca_cert: %s", err), nil
	}
	defer tc.Close()
	tok, err := c.verify(ctx, s, cfg, tc)
	if err != nil {
		b.Logger().Warn("config not stored: verification grant failed", "token_endpoint", cfg.tokenEndpoint(cfg.AppID), "error", err)
		var te *client.Error
		switch {
		case errors.As(err, &te) && te.Refused():
			return logical.ErrorResponse("verify_connection: the tenant refused a token request with these settings, nothing was stored: %s", err), nil
		case te != nil && te.StatusCode == http.StatusTooManyRequests:
			return nil, logical.CodedError(http.StatusTooManyRequests,
				fmt.Sprintf("verify_connection: the tenant is rate limiting token requests, nothing was stored; try again later: %s", err))
		}
		return nil, logical.CodedError(http.StatusBadGateway,
			fmt.Sprintf("verify_connection: could not get a token from the tenant, nothing was stored (set verify_connection=false to store anyway): %s", err))
	}
	if cfg.revokes() {
		defer c.revokeQuietly(ctx, s, cfg, tc, tok.AccessToken) // the verification token has served
	}
	// The settings' own checks of tokens, now rather than at the first read; the
	// token's sub is pinned, or must match the pinned one.
	warning, err := b.verifyToken(ctx, &view{config: cfg, client: tc}, cfg.Scopes, tok)
	if err != nil {
		return logical.ErrorResponse("verify_connection: nothing was stored: %s", err), nil
	}
	if jwt, perr := client.ParseJWT(tok.AccessToken); perr == nil && jwt.String("sub") != "" {
		switch sub := jwt.String("sub"); {
		case cfg.PinnedSub == "":
			cfg.PinnedSub = sub
		case sub != cfg.PinnedSub:
			return logical.ErrorResponse("verify_connection: the tenant's token is for another user (sub) than the one pinned at the last verified write, nothing was stored: the client may have been swapped at the tenant; if that is intended, write client_secret too, which pins the new one"), nil
		}
	}
	if warning != "" {
		return &logical.Response{Warnings: []string{warning}}, nil
	}
	return nil, nil
}

// newTenantClient builds the client for one application of cfg.
func (b *backend) newTenantClient(cfg *cyberarkConfig, appID string) (*client.Client, error) {
	return client.New(client.Config{
		TokenURL:       cfg.tokenEndpoint(appID),
		RevokeURL:      cfg.revokeEndpoint(appID),
		ClientID:       cfg.ClientID,
		ClientSecret:   cfg.ClientSecret,
		Params:         cfg.TokenParams,
		AuthStyle:      cfg.authStyle(),
		UserAgent:      userAgent(),
		CACert:         cfg.CACert,
		RequestTimeout: cfg.RequestTimeout,
		Retry:          cfg.retryPolicy(),
		Now:            b.now,
		OnTLSHandshake: b.countHandshake,
	})
}

// readConfigAt reads the config entry at key: a credential's own.
func readConfigAt(ctx context.Context, s logical.Storage, key string) (*cyberarkConfig, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	cfg := new(cyberarkConfig)
	if err := entry.DecodeJSON(cfg); err != nil {
		return nil, fmt.Errorf("decoding stored config: %w", err)
	}
	return cfg, nil
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
