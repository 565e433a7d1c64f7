package cyberark

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	rolePrefix      = "roles/"
	operationPrefix = "cyberark"

	// A reused token is handed out only while it has at least
	// max(reuse_min_remaining, reuse_min_fraction x its lifetime) to live. With these
	// defaults a 5-hour token serves for 4.5 hours (about 1.1 grants per lifetime) and
	// every lease on it lasts at least 29 minutes.
	defaultReuseMinRemaining = 5 * time.Minute
	defaultReuseMinFraction  = 0.1
	// maxReuseMinFraction keeps some of a token's life for reuse: at 1 none is left.
	maxReuseMinFraction = 0.9
)

// roleEntry is a stored role: which token a read of token/<name> asks for.
type roleEntry struct {
	// Client names the client whose tokens the role hands out; empty is the default
	// client (config), as in roles written before clients had names.
	Client string   `json:"client,omitempty"`
	Scopes []string `json:"scopes,omitempty"`
	// AllowedScopes limits what a reader may ask for with the scope parameter. Nil means
	// "the role's scopes", kept unresolved so that a later change of scopes carries over.
	AllowedScopes []string `json:"allowed_scopes,omitempty"`
	// ScopeCeiling bounds every scope a read asks for or allows (scopes or * patterns);
	// a role whose scopes are templates over the reader's identity must set it.
	ScopeCeiling []string      `json:"scope_ceiling,omitempty"`
	AppID        string        `json:"app_id,omitempty"`
	TTL          time.Duration `json:"ttl,omitempty"`
	// RevokeTokens overrides the config's revoke_tokens; nil inherits it.
	RevokeTokens      *bool         `json:"revoke_tokens,omitempty"`
	TokenReuse        bool          `json:"token_reuse,omitempty"`
	ReuseMinRemaining time.Duration `json:"reuse_min_remaining"`
	ReuseMinFraction  float64       `json:"reuse_min_fraction"`
	// LeaseFree answers token reads without a Vault lease (token_reuse only): the data
	// says when to read again instead (ttl, rotation_period).
	LeaseFree bool `json:"lease_free,omitempty"`
}

// client is the name of the client the role uses.
func (r *roleEntry) client() string {
	if r == nil || r.Client == "" {
		return defaultClient
	}
	return r.Client
}

// reuseThreshold is how much life a cached token must have left to be handed out.
func (r *roleEntry) reuseThreshold(lifetime time.Duration) time.Duration {
	return max(r.ReuseMinRemaining, time.Duration(r.ReuseMinFraction*float64(lifetime)))
}

// scopeRule is what a token read asks the tenant for by default and what a reader may
// narrow it to with the scope parameter, and where each comes from.
type scopeRule struct {
	Scopes      []string
	Allowed     []string
	ScopesFrom  string // "role" or "config"
	AllowedFrom string // "role", or "scopes" when it defaults to the effective scopes
	// Templated: the role's scopes are templates over the reader's identity, which a
	// token read expands (forReader); the rule holds them as written.
	Templated bool
}

// effectiveScopes is the one statement of the scope rule, used by token reads, role
// reads and role writes alike: a role's scopes, or the config's when it sets none; its
// allowed_scopes, or those effective scopes when it sets none. The effective scopes
// must be allowed. Templates stay as written, so the rule holds for every reader; a
// token read then expands it for its reader (forReader). cfg may be nil (no config
// yet); role may be nil (a read of token).
func effectiveScopes(cfg *cyberarkConfig, role *roleEntry) (scopeRule, error) {
	rule := scopeRule{ScopesFrom: "config", AllowedFrom: "scopes", Templated: role.templated()}
	if cfg != nil {
		rule.Scopes = cfg.Scopes
	}
	if role != nil && len(role.Scopes) > 0 {
		rule.Scopes, rule.ScopesFrom = role.Scopes, "role"
	}
	rule.Allowed = rule.Scopes
	if role != nil && role.AllowedScopes != nil {
		rule.Allowed, rule.AllowedFrom = role.AllowedScopes, "role"
	}
	for _, s := range rule.Scopes {
		if !slices.Contains(rule.Allowed, s) {
			return rule, fmt.Errorf("the effective scopes [%s] (from the %s) include %q, which allowed_scopes [%s] does not; add it to allowed_scopes or set scopes on the role",
				strings.Join(rule.Scopes, " "), rule.ScopesFrom, s, strings.Join(rule.Allowed, " "))
		}
	}
	return rule, nil
}

func pathRoles(b *backend) []*framework.Path {
	// A create and an update are one write: fields left out keep their stored values.
	roleWrite := &framework.PathOperation{
		Callback:                    b.pathRoleWrite,
		ForwardPerformanceStandby:   true,
		ForwardPerformanceSecondary: true,
		DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "write"},
		Summary:                     "Create a role, or change some of its settings.",
		Responses:                   writeResponses("The role was stored."),
	}
	return []*framework.Path{
		{
			Pattern: "roles/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "roles",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback:     b.pathRoleList,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list"},
					Summary:      "List the names of the roles.",
					Responses: map[int][]framework.Response{
						http.StatusOK: {{Description: "The role names.", Fields: map[string]*framework.FieldSchema{
							"keys": {Type: framework.TypeStringSlice, Description: "The names of the roles, sorted."},
						}}},
						http.StatusNotFound: {{Description: "No role is defined."}},
					},
				},
			},
			HelpSynopsis:    "List the roles.",
			HelpDescription: "Lists the names of the roles defined in this engine.",
		},
		{
			// Any segment matches, so that a name in a spelling other than the canonical
			// one gets a 400 that says so rather than an "unsupported path".
			Pattern: rolePrefix + `(?P<name>[^/]+)$`,
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "role",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeString,
					Description: "Name of the role: lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 128 characters. Other spellings are refused, never folded.",
					Required:    true,
				},
				"client": {
					Type:        framework.TypeString,
					Description: "The client whose tokens the role hands out (clients/<name>); it must allow the role in its allowed_roles. Default: default, the client config holds.",
				},
				"scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes the token asks for, as a list or comma-separated string. Empty: the config's scopes. A scope may hold templates over the reader's identity, such as team.{{identity.entity.metadata.team}}.read (with scope_ceiling); {{identity.entity.groups.names}} makes one scope per group.",
				},
				"allowed_scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes a reader may ask for with the scope parameter. Default: the role's scopes. May hold templates, as scopes may.",
				},
				"scope_ceiling": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes, or patterns with *, that bound every scope a token read of the role asks for or allows, after templates are expanded; required when scopes or allowed_scopes hold templates. In a pattern, * stands for any run of characters other than '.'. A pattern that matches a rotation, management or denied scope, or holds only * and '.', is refused.",
				},
				"app_id": {
					Type:        framework.TypeString,
					Description: "Application ID to get tokens from instead of the config's app_id.",
				},
				"ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Upper bound on the lease TTL; the lease never outlives the token either way. 0: no bound but the token's.",
				},
				"revoke_tokens": {
					Type:        framework.TypeBool,
					Description: "Override the config's revoke_tokens for this role's leases. Tokens reused by token_reuse are never revoked. true needs a revocation endpoint (revoke_url when the config sets token_url).",
				},
				"token_reuse": {
					Type:        framework.TypeBool,
					Description: "Hand the same token to concurrent and later readers while it has enough life left, instead of a grant per read. Tokens are held in memory only.",
					Default:     false,
				},
				"reuse_min_remaining": {
					Type:        framework.TypeDurationSecond,
					Description: "With token_reuse: a cached token is handed out only while it has at least this long to live (and reuse_min_fraction of its lifetime).",
					Default:     int(defaultReuseMinRemaining.Seconds()),
				},
				"reuse_min_fraction": {
					Type:        framework.TypeFloat,
					Description: "With token_reuse: a cached token is handed out only while at least this fraction of its lifetime is left (and reuse_min_remaining). 0 to 0.9.",
					Default:     defaultReuseMinFraction,
				},
				"lease_free": {
					Type: framework.TypeBool,
					Description: "With token_reuse: answer token reads without a Vault lease. The data carries ttl (seconds until this engine hands out a newer token) " +
						"and rotation_period, from which Vault Agent schedules its next read. Saves a lease per read; there is no lease to revoke, and a reused token is never revoked anyway.",
					Default: false,
				},
			},
			ExistenceCheck: b.pathRoleExists,
			// Writes and deletes forward to the node that writes storage, as config's do
			// (path_config.go), rather than fail here on the write and run again there.
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: roleWrite,
				logical.UpdateOperation: roleWrite,
				logical.ReadOperation: &framework.PathOperation{
					Callback:     b.pathRoleRead,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
					Summary:      "Read a role, with the scopes a token read of it asks for and allows.",
					Responses: map[int][]framework.Response{
						http.StatusOK:        {{Description: "The role. Warnings say what would make token reads of it fail.", Fields: roleReadFields()}},
						http.StatusNoContent: {{Description: "No role of that name exists."}},
					},
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:                    b.pathRoleDelete,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "delete"},
					Summary:                     "Delete a role; token reads of it fail from then on, and its leases end as they would have.",
					Responses:                   writeResponses("The role was deleted."),
				},
			},
			HelpSynopsis: "Manage a role: the scopes, application and TTL bound of a token.",
			HelpDescription: `A role names a kind of token: the scopes it asks for, the scopes a reader may
narrow to, an optional application ID that overrides the config's, and an optional
bound on the lease TTL. Read token/<name> to get a token for it. An update that leaves
a field out keeps its stored value.`,
		},
	}
}

// roleReadFields describe a role read's response.
func roleReadFields() map[string]*framework.FieldSchema {
	str := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeString, Description: d}
	}
	list := func(d string) *framework.FieldSchema {
		return &framework.FieldSchema{Type: framework.TypeCommaStringSlice, Description: d}
	}
	return map[string]*framework.FieldSchema{
		"scopes":                   list("Scopes the role asks for; empty: the config's."),
		"allowed_scopes":           list("Scopes a reader may narrow to, or null for the effective scopes."),
		"client":                   {Type: framework.TypeString, Description: "The client whose tokens the role hands out."},
		"effective_scopes":         list("Scopes a token read of this role asks for, after the config's are applied; templates as written, not expanded for the reader."),
		"effective_allowed_scopes": list("Scopes a reader may narrow to, after the config's are applied."),
		"scopes_source":            str(`Where effective_scopes come from: "role" or "config".`),
		"allowed_scopes_source":    str(`Where effective_allowed_scopes come from: "role", or "scopes" when they are the effective scopes.`),
		"scope_ceiling":            list("Scopes and * patterns that bound every scope a token read asks for or allows."),
		"templated":                {Type: framework.TypeBool, Description: "Whether the scopes hold templates that each token read expands from the reader's identity."},
		"app_id":                   str("Application ID the role's tokens come from, or empty for the config's."),
		"ttl":                      {Type: framework.TypeInt, Description: "Bound on the lease TTL in seconds, or 0 for none."},
		"revoke_tokens":            {Type: framework.TypeBool, Description: "Whether a lease's end revokes its token at the tenant, or null to follow the config."},
		"token_reuse":              {Type: framework.TypeBool, Description: "Whether readers share one cached token."},
		"reuse_min_remaining":      {Type: framework.TypeInt, Description: "With token_reuse: seconds of life a cached token must have left to be handed out."},
		"reuse_min_fraction":       {Type: framework.TypeFloat, Description: "With token_reuse: fraction of its lifetime a cached token must have left to be handed out."},
		"lease_free":               {Type: framework.TypeBool, Description: "With token_reuse: whether token reads answer without a Vault lease."},
	}
}

// pathRoleExists decides between create and update. A name that is not canonical is
// reported as existing, so that the request reaches its handler, which refuses it, and
// does not stop at a policy check for create that would hide the reason.
func (b *backend) pathRoleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name := d.Get("name").(string)
	if checkRoleName(name) != nil {
		return true, nil
	}
	r, err := readRole(ctx, req.Storage, name)
	return r != nil, err
}

// roleName returns the request's role name, or a 400 when it is not canonical.
func roleName(d *framework.FieldData, field string) (string, *logical.Response) {
	name := d.Get(field).(string)
	if err := checkRoleName(name); err != nil {
		return "", logical.ErrorResponse("%s: %s", field, err)
	}
	return name, nil
}

func (b *backend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, resp := roleName(d, "name")
	if resp != nil {
		return resp, nil
	}
	r, err := readRole(ctx, req.Storage, name)
	if err != nil || r == nil {
		return nil, err
	}
	cfg, err := readConfigAt(ctx, req.Storage, clientStorageKey(r.client()))
	if err != nil {
		return nil, err
	}
	var revoke any // null: inherited from the config
	if r.RevokeTokens != nil {
		revoke = *r.RevokeTokens
	}
	var allowed any // null: the effective scopes
	if r.AllowedScopes != nil {
		allowed = r.AllowedScopes
	}
	rule, ruleErr := effectiveScopes(cfg, r)
	resp = &logical.Response{Data: map[string]any{
		"scopes":                   nonNil(r.Scopes),
		"allowed_scopes":           allowed,
		"client":                   r.client(),
		"effective_scopes":         nonNil(rule.Scopes),
		"effective_allowed_scopes": nonNil(rule.Allowed),
		"scopes_source":            rule.ScopesFrom,
		"allowed_scopes_source":    rule.AllowedFrom,
		"scope_ceiling":            nonNil(r.ScopeCeiling),
		"templated":                rule.Templated,
		"app_id":                   r.AppID,
		"ttl":                      int64(r.TTL.Seconds()),
		"revoke_tokens":            revoke,
		"token_reuse":              r.TokenReuse,
		"reuse_min_remaining":      int64(r.ReuseMinRemaining.Seconds()),
		"reuse_min_fraction":       r.ReuseMinFraction,
		"lease_free":               r.LeaseFree,
	}}
	if ruleErr != nil {
		resp.AddWarning("token reads of this role are refused until this is fixed: " + ruleErr.Error())
	}
	if cfg != nil {
		for _, problem := range r.configConflicts(cfg) {
			resp.AddWarning(problem)
		}
	}
	if cfg == nil {
		resp.AddWarning("the engine is not configured: effective scopes will include the config's once it is")
	}
	return resp, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, resp := roleName(d, "name")
	if resp != nil {
		// Earlier releases accepted names such as "_x" that are no longer canonical; a
		// role stored under exactly this key may still be deleted, and nothing else is.
		name = d.Get("name").(string)
		if legacy, err := readRole(ctx, req.Storage, name); err != nil || legacy == nil {
			return resp, err
		}
	}
	b.roleMu.Lock()
	defer b.roleMu.Unlock()
	if err := req.Storage.Delete(ctx, rolePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting role %q: %w", name, err)
	}
	b.cache.resetRole(name)
	return nil, nil
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	name, resp := roleName(d, "name")
	if resp != nil {
		return resp, nil
	}
	b.roleMu.Lock()
	defer b.roleMu.Unlock()
	r, err := readRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &roleEntry{ReuseMinRemaining: defaultReuseMinRemaining, ReuseMinFraction: defaultReuseMinFraction}
	}
	copyGiven(d, r.fields())
	if err := checkRoleName(r.client()); err != nil {
		// Before it names a storage key.
		return logical.ErrorResponse("client: %s", err), nil
	}
	cfg, err := readConfigAt(ctx, req.Storage, clientStorageKey(r.client()))
	if err != nil {
		return nil, err
	}
	problems := r.validate(name, cfg)
	if len(problems) == 0 && cfg != nil {
		// Another client's rotation or management scope is no workload's either.
		protected, err := b.appProtectedScopes(ctx, req.Storage, appKey(cfg.TenantURL, appFor(cfg, r)))
		if err != nil {
			return nil, err
		}
		for _, sc := range slices.Concat(r.Scopes, r.AllowedScopes) {
			if slices.Contains(protected, sc) {
				problems = append(problems, rotationScopeRefusal("scopes", sc))
				break
			}
		}
		if pattern, sc, ok := ceilingCovers(r.ScopeCeiling, protected); ok {
			problems = append(problems, ceilingRefusal(pattern, sc))
		}
	}
	if resp := problems.response(); resp != nil {
		return resp, nil
	}
	entry, err := logical.StorageEntryJSON(rolePrefix+name, r)
	if err != nil {
		return nil, fmt.Errorf("encoding role: %w", err)
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, fmt.Errorf("storing role %q: %w", name, err)
	}
	b.cache.resetRole(name)
	return nil, nil
}

// fields maps each request field a role write copies to where it is stored.
func (r *roleEntry) fields() map[string]any {
	return map[string]any{
		"client":              &r.Client,
		"scopes":              &r.Scopes,
		"allowed_scopes":      &r.AllowedScopes,
		"scope_ceiling":       &r.ScopeCeiling,
		"app_id":              &r.AppID,
		"ttl":                 &r.TTL,
		"revoke_tokens":       &r.RevokeTokens,
		"token_reuse":         &r.TokenReuse,
		"reuse_min_remaining": &r.ReuseMinRemaining,
		"reuse_min_fraction":  &r.ReuseMinFraction,
		"lease_free":          &r.LeaseFree,
	}
}

// validate is the one place a role is checked, against the config it would be read
// with (nil when there is none yet).
func (r *roleEntry) validate(name string, cfg *cyberarkConfig) fieldErrors {
	var problems fieldErrors
	switch client := r.client(); {
	case cfg == nil && client != defaultClient:
		problems.add("client", "no client named %q: write clients/%s first", client, client)
	case cfg != nil && !cfg.allowsRole(client, name):
		problems.add("client", "client %q does not allow role %q: add the role (or a glob that matches it) to the client's allowed_roles first, as whoever may change that client decides", client, name)
	}
	scopesOK := problems.check("scopes", checkScopes(r.Scopes))
	scopesOK = problems.check("allowed_scopes", checkScopes(r.AllowedScopes)) && scopesOK
	if scopesOK {
		templates := r.ceilingProblems(cfg)
		problems, scopesOK = append(problems, templates...), len(templates) == 0
	}
	if r.AppID != "" {
		problems.check("app_id", checkAppID(r.AppID))
	}
	if r.TTL < 0 {
		problems.add("ttl", "must not be negative")
	}
	if r.ReuseMinRemaining < 0 {
		problems.add("reuse_min_remaining", "must not be negative")
	}
	if !(r.ReuseMinFraction >= 0 && r.ReuseMinFraction <= maxReuseMinFraction) {
		problems.add("reuse_min_fraction", "must be between 0 and %v, got %v", maxReuseMinFraction, r.ReuseMinFraction)
	}
	if r.LeaseFree && !r.TokenReuse {
		// Checked on the stored result, so that turning token_reuse off later cannot
		// leave a lease-free role that hands each reader a token of its own with no
		// lease to end it.
		problems.add("lease_free", "true is allowed only with token_reuse=true (each reader would otherwise get a token of its own and no lease to account for it); set token_reuse=true or lease_free=false")
	}
	if scopesOK {
		// Its message quotes every scope: only scopes that passed checkScopes.
		if _, err := effectiveScopes(cfg, r); err != nil {
			problems.add("allowed_scopes", "%s", err)
		}
		if cfg != nil {
			problems = append(problems, r.configConflicts(cfg)...)
		}
	}
	return problems
}

// configConflicts lists what in the role the config cannot honour. A role write with
// any of them is refused; a role read shows them, since the config may have changed
// after the role was written.
func (r *roleEntry) configConflicts(cfg *cyberarkConfig) []string {
	var problems []string
	if r.AppID != "" && cfg.TokenURL != "" {
		problems = append(problems, "app_id: the config's token_url replaces per-application endpoints, so token reads of a role with its own app_id are refused; remove one of them")
	}
	if r.RevokeTokens != nil && *r.RevokeTokens && cfg.revokeEndpoint(appFor(cfg, r)) == "" {
		problems = append(problems, "revoke_tokens: cannot be true while the config sets token_url without revoke_url: there is no revocation endpoint, so tokens of this role are not revoked; set revoke_url in the config")
	}
	return append(problems, r.roleScopeConflicts(cfg)...)
}

// appFor is the application a role's tokens come from: its own app_id, else the
// config's.
func appFor(cfg *cyberarkConfig, role *roleEntry) string {
	if role != nil && role.AppID != "" {
		return role.AppID
	}
	return cfg.AppID
}

func readRole(ctx context.Context, s logical.Storage, name string) (*roleEntry, error) {
	entry, err := s.Get(ctx, rolePrefix+name)
	if err != nil {
		return nil, fmt.Errorf("reading role %q: %w", name, err)
	}
	if entry == nil {
		return nil, nil
	}
	r := new(roleEntry)
	if err := entry.DecodeJSON(r); err != nil {
		return nil, fmt.Errorf("decoding role %q: %w", name, err)
	}
	return r, nil
}
