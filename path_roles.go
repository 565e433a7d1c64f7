package cyberark

import (
	"context"
	"fmt"
	"slices"
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
)

// roleEntry is a stored role: which token a read of token/<name> asks for.
type roleEntry struct {
	Scopes []string `json:"scopes,omitempty"`
	// AllowedScopes limits what a reader may ask for with the scope parameter. Nil means
	// "the role's scopes", kept unresolved so that a later change of scopes carries over.
	AllowedScopes []string      `json:"allowed_scopes,omitempty"`
	AppID         string        `json:"app_id,omitempty"`
	TTL           time.Duration `json:"ttl,omitempty"`
	// RevokeTokens overrides the config's revoke_tokens; nil inherits it.
	RevokeTokens      *bool         `json:"revoke_tokens,omitempty"`
	TokenReuse        bool          `json:"token_reuse,omitempty"`
	ReuseMinRemaining time.Duration `json:"reuse_min_remaining"`
	ReuseMinFraction  float64       `json:"reuse_min_fraction"`
}

// reuseThreshold is how much life a cached token must have left to be handed out.
func (r *roleEntry) reuseThreshold(lifetime time.Duration) time.Duration {
	return max(r.ReuseMinRemaining, time.Duration(r.ReuseMinFraction*float64(lifetime)))
}

func (r *roleEntry) allowedScopes() []string {
	if r.AllowedScopes != nil {
		return r.AllowedScopes
	}
	return r.Scopes
}

func pathRoles(b *backend) []*framework.Path {
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
				},
			},
			HelpSynopsis:    "List the roles.",
			HelpDescription: "Lists the names of the roles defined in this engine.",
		},
		{
			Pattern: rolePrefix + framework.GenericNameRegex("name"),
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "role",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeLowerCaseString,
					Description: "Name of the role.",
					Required:    true,
				},
				"scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes the token asks for, as a list or comma-separated string. Empty: the config's scopes.",
				},
				"allowed_scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes a reader may ask for with the scope parameter. Default: the role's scopes.",
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
					Description: "Override the config's revoke_tokens for this role's leases. Tokens shared by token_reuse are never revoked.",
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
			},
			ExistenceCheck: b.pathRoleExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: &framework.PathOperation{
					Callback:     b.pathRoleWrite,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"},
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:     b.pathRoleWrite,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"},
				},
				logical.ReadOperation: &framework.PathOperation{
					Callback:     b.pathRoleRead,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:     b.pathRoleDelete,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete"},
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

func (b *backend) pathRoleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	r, err := readRole(ctx, req.Storage, d.Get("name").(string))
	return r != nil, err
}

func (b *backend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.getRole(ctx, req.Storage, d.Get("name").(string))
	if err != nil || r == nil {
		return nil, err
	}
	var revoke any // null: inherited from the config
	if r.RevokeTokens != nil {
		revoke = *r.RevokeTokens
	}
	return &logical.Response{Data: map[string]any{
		"scopes":              nonNil(r.Scopes),
		"allowed_scopes":      nonNil(r.allowedScopes()),
		"app_id":              r.AppID,
		"ttl":                 int64(r.TTL.Seconds()),
		"revoke_tokens":       revoke,
		"token_reuse":         r.TokenReuse,
		"reuse_min_remaining": int64(r.ReuseMinRemaining.Seconds()),
		"reuse_min_fraction":  r.ReuseMinFraction,
	}}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	b.roleMu.Lock()
	defer b.roleMu.Unlock()
	if err := req.Storage.Delete(ctx, rolePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting role %q: %w", name, err)
	}
	b.resetRole(name)
	return nil, nil
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	name := d.Get("name").(string)
	b.roleMu.Lock()
	defer b.roleMu.Unlock()
	r, err := readRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &roleEntry{ReuseMinRemaining: defaultReuseMinRemaining, ReuseMinFraction: defaultReuseMinFraction}
	}
	var problems fieldErrors
	if v, ok := d.GetOk("scopes"); ok {
		r.Scopes = splitScopes(v.([]string))
		if err := checkScopes(r.Scopes); err != nil {
			problems.add("scopes", "%s", err)
		}
	}
	if v, ok := d.GetOk("allowed_scopes"); ok {
		r.AllowedScopes = splitScopes(v.([]string))
		if err := checkScopes(r.AllowedScopes); err != nil {
			problems.add("allowed_scopes", "%s", err)
		}
	}
	if v, ok := d.GetOk("app_id"); ok {
		r.AppID = v.(string)
		if r.AppID != "" {
			if err := checkAppID(r.AppID); err != nil {
				problems.add("app_id", "%s", err)
			}
		}
	}
	if v, ok := d.GetOk("ttl"); ok {
		r.TTL = time.Duration(v.(int)) * time.Second
		if r.TTL < 0 {
			problems.add("ttl", "must not be negative")
		}
	}
	if v, ok := d.GetOk("revoke_tokens"); ok {
		revoke := v.(bool)
		r.RevokeTokens = &revoke
	}
	if v, ok := d.GetOk("token_reuse"); ok {
		r.TokenReuse = v.(bool)
	}
	if v, ok := d.GetOk("reuse_min_remaining"); ok {
		r.ReuseMinRemaining = time.Duration(v.(int)) * time.Second
		if r.ReuseMinRemaining < 0 {
			problems.add("reuse_min_remaining", "must not be negative")
		}
	}
	if v, ok := d.GetOk("reuse_min_fraction"); ok {
		r.ReuseMinFraction = v.(float64)
		if !(r.ReuseMinFraction >= 0 && r.ReuseMinFraction <= 0.9) {
			problems.add("reuse_min_fraction", "must be between 0 and 0.9, got %v", v)
		}
	}
	if r.AllowedScopes != nil {
		for _, s := range r.Scopes {
			if !slices.Contains(r.AllowedScopes, s) {
				problems.add("scopes", "%q is not in allowed_scopes (%v); a role must be allowed its own scopes", s, r.AllowedScopes)
			}
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
	b.resetRole(name)
	return nil, nil
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

// getRole returns the cached role, reading storage on a miss. The result is shared:
// callers must not modify it.
func (b *backend) getRole(ctx context.Context, s logical.Storage, name string) (*roleEntry, error) {
	b.mu.RLock()
	r, gen := b.roles[name], b.gen
	b.mu.RUnlock()
	if r != nil {
		return r, nil
	}
	r, err := readRole(ctx, s, name)
	if err != nil || r == nil {
		return nil, err
	}
	b.mu.Lock()
	if b.gen == gen {
		b.roles[name] = r
	}
	b.mu.Unlock()
	return r, nil
}
