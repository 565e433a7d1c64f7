package cyberark

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/go-secure-stdlib/strutil"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// defaultClient is the client config holds: the one a mount had before clients had
	// names, and the one a role that names none uses.
	defaultClient = "default"
	clientsPrefix = "clients/"

	rotationSelf    = "self"
	rotationManaged = "managed"
)

// clientStorageKey is where a client's config, secret and rotation state are stored.
func clientStorageKey(name string) string {
	if name == defaultClient {
		return configPath
	}
	return clientsPrefix + name
}

// allowsRole says whether role may get tokens of this client (allowed_roles, names or
// globs). The default client allows every role while its list is empty, as a mount did
// before clients had names: roles written then name no client and must go on working.
func (c *cyberarkConfig) allowsRole(clientName, role string) bool {
	if clientName == defaultClient && len(c.AllowedRoles) == 0 {
		return true
	}
	return strutil.StrListContainsGlob(c.AllowedRoles, role)
}

// managed says whether the client's secret is rotated by its manager.
func (c *cyberarkConfig) managed() bool {
	return c.RotationMethod == rotationManaged
}

// addClientFields adds what a read of any client shows about its place among the
// others.
func (c *cyberarkConfig) addClientFields(name string, data map[string]any) {
	data["name"] = name
	data["rotation_method"] = cmp.Or(c.RotationMethod, rotationSelf)
	data["manager"] = c.Manager
	data["managed_clients"] = nonNil(c.ManagedClients)
	data["management_scopes"] = nonNil(c.ManagementScopes)
	data["allowed_roles"] = nonNil(c.AllowedRoles)
	data["track_tokens"] = c.TrackTokens
}

// sameTenant says whether two clients are on one tenant: a manager's token, which may
// reset passwords, never goes to another.
func sameTenant(a, b *cyberarkConfig) bool {
	return strings.TrimRight(a.TenantURL, "/") == strings.TrimRight(b.TenantURL, "/")
}

// clientFieldSchemas are the fields a client has beyond the config's first ones.
func clientFieldSchemas() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"rotation_method": {
			Type:          framework.TypeString,
			Description:   `How the secret is rotated: "self" through the service user's own UserMgmt/ChangeUserPassword (rotation_scopes), or "managed" through the manager client's UserMgmt/ResetUserPassword. A managed client's password is never readable and never needed by anyone.`,
			Default:       rotationSelf,
			AllowedValues: []any{rotationSelf, rotationManaged},
		},
		"manager": {
			Type:        framework.TypeString,
			Description: "rotation_method=managed: the client (of this mount, on the same tenant) whose tokens reset this client's password. It must list this client in managed_clients.",
		},
		"managed_clients": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Clients (names or globs) this client may rotate as their manager. Empty: none.",
		},
		"management_scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Scopes asked for in this client's grant that resets a managed client's password: one whose allowed REST APIs include UserMgmt/ResetUserPassword. No workload token may carry them.",
		},
		"track_tokens": {
			Type:        framework.TypeBool,
			Description: "Record every token handed out (its SHA-256, role, reader's entity and token accessor, request ID, issue and expiry; readers of a reused token, up to 16) for tokens/lookup and tokens/revoke. One storage write per grant, none per reused read.",
		},
		"allowed_roles": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Roles (names or globs) that may get tokens of this client. Empty: none, except for the default client (config), which then allows every role as before clients had names.",
		},
	}
}

func pathClients(b *backend) []*framework.Path {
	nameField := &framework.FieldSchema{Type: framework.TypeString, Description: "Name of the client: lower-case letters, digits, '-', '_' and '.'. Not \"default\", the client config holds."}
	fields := configWriteFields()
	fields["name"] = nameField
	write := &framework.PathOperation{
		Callback:                    b.withClient(b.writeClient),
		ForwardPerformanceStandby:   true,
		ForwardPerformanceSecondary: true,
		DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "configure", OperationSuffix: "client"},
		Summary:                     "Store a client (a service user of a tenant), or change some of its settings.",
		Responses:                   writeResponses("The client was stored."),
	}
	readFields := configReadFields()
	return []*framework.Path{
		{
			Pattern:      "clients/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "clients"},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback:     b.pathClientList,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list"},
					Summary:      "List the clients stored under clients/ (the default client is config).",
					Responses: map[int][]framework.Response{
						http.StatusOK: {{Description: "The client names.", Fields: map[string]*framework.FieldSchema{
							"keys": {Type: framework.TypeStringSlice, Description: "The names of the clients, sorted."},
						}}},
						http.StatusNotFound: {{Description: "No client is stored under clients/."}},
					},
				},
			},
			HelpSynopsis: "List the mount's clients.",
		},
		{
			Pattern:      "clients/" + framework.GenericNameRegex("name"),
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       fields,
			ExistenceCheck: func(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
				c, resp := b.clientNamed(d)
				if resp != nil {
					return false, nil
				}
				return b.clientExists(ctx, req, c)
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: write,
				logical.UpdateOperation: write,
				logical.ReadOperation: &framework.PathOperation{
					Callback:     b.withClientRead(b.readClient),
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "client"},
					Summary:      "Read a client, without its secret, and the state of its rotation.",
					Responses: map[int][]framework.Response{
						http.StatusOK:        {{Description: "The client. The secret is never returned.", Fields: readFields}},
						http.StatusNoContent: {{Description: "No such client."}},
					},
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:                    b.withClientRead(b.deleteClient),
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "client"},
					Summary:                     "Delete a client and its secret; refused while roles use it or it manages another.",
					Responses:                   writeResponses("The client was deleted."),
				},
			},
			HelpSynopsis: "A confidential client of a tenant: one service user, its secret and its rotation.",
			HelpDescription: `Takes every field config takes, and a client's own: rotation_method and
manager (a managed client is rotated through its manager's ResetUserPassword),
managed_clients and management_scopes (on a manager), and allowed_roles (which roles
may use it). The default client is config's, at config only. Tokens of a client come from reading
token/<role> of a role that names it (client=<name>).`,
		},
		{
			Pattern:      "clients/" + framework.GenericNameRegex("name") + "/rotate-root",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "rotate", OperationSuffix: "client-credentials"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback:                    b.withClientRead(b.rotateNow),
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Rotate a client's secret now.",
					Responses:                   rotateResponses(),
				},
			},
			HelpSynopsis: "Rotate a client's secret: Vault generates a new one and changes it at the tenant.",
		},
	}
}

// clientNamed is the credential of the client a path names, in canonical form. The
// default client has one path only, config: Vault policies match paths exactly, and a
// second path to it would escape a policy written for config.
func (b *backend) clientNamed(d *framework.FieldData) (*credential, *logical.Response) {
	name, resp := roleName(d, "name")
	if resp != nil {
		return nil, resp
	}
	if name == defaultClient {
		return nil, logical.ErrorResponse("name: %q is the client config holds; read and write it at config (and config/rotate-root)", defaultClient)
	}
	return b.credential(name), nil
}

func (b *backend) withClient(f func(context.Context, *logical.Request, *framework.FieldData, *credential) (*logical.Response, error)) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		c, resp := b.clientNamed(d)
		if resp != nil {
			return resp, nil
		}
		return f(ctx, req, d, c)
	}
}

func (b *backend) withClientRead(f func(context.Context, *logical.Request, *credential) (*logical.Response, error)) framework.OperationFunc {
	return b.withClient(func(ctx context.Context, req *logical.Request, d *framework.FieldData, c *credential) (*logical.Response, error) {
		if resp := unknownFields(req, d); resp != nil {
			return resp, nil
		}
		return f(ctx, req, c)
	})
}

func (b *backend) pathClientList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, clientsPrefix)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return logical.ListResponse(names), nil
}

// clientInUse refuses to delete a client that a role names or that manages another:
// its roles' reads would fail, and the other's rotation. The default client keeps the
// answer config had before clients had names: deleting it is allowed.
func (b *backend) clientInUse(ctx context.Context, s logical.Storage, name string) (*logical.Response, error) {
	if name == defaultClient {
		return nil, nil
	}
	var users []string
	roles, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, err
	}
	for _, r := range roles {
		role, err := readRole(ctx, s, r)
		if err != nil {
			return nil, err
		}
		if role != nil && role.client() == name {
			users = append(users, "role "+r)
		}
	}
	others, err := b.storedConfigs(ctx, s)
	if err != nil {
		return nil, err
	}
	for other, cfg := range others {
		if cfg.Manager == name {
			users = append(users, "client "+other)
		}
	}
	if len(users) == 0 {
		return nil, nil
	}
	sort.Strings(users)
	return logical.ErrorResponse("name: client %q is in use by %s; point them at another client or delete them first (deleting the client revokes nothing: leases of its tokens end without a revocation at the tenant)", name, strings.Join(users, ", ")), nil
}

// storedConfigs reads every client's config, the default one included, by name.
func (b *backend) storedConfigs(ctx context.Context, s logical.Storage) (map[string]*cyberarkConfig, error) {
	creds, err := b.storedCredentials(ctx, s)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*cyberarkConfig, len(creds))
	for _, c := range creds {
		cfg, err := c.load(ctx, s)
		if err != nil {
			return nil, err
		}
		if cfg != nil {
			out[c.name] = cfg
		}
	}
	return out, nil
}

// checkClientLinks checks what a client's config says of others: its manager exists,
// rotates itself, manages it and can ask for the scope that resets it, on the same
// tenant; and no scope it gives workloads is another client's rotation or management
// scope.
func (b *backend) checkClientLinks(ctx context.Context, s logical.Storage, name string, cfg *cyberarkConfig) (fieldErrors, error) {
	var problems fieldErrors
	others, err := b.storedConfigs(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("reading the other clients to check this one against them: %w", err)
	}
	delete(others, name)
	if cfg.managed() {
		mgr := others[cfg.Manager]
		switch {
		case mgr == nil:
			problems.add("manager", "no client named %q: write clients/%s first", cfg.Manager, cfg.Manager)
		case mgr.managed():
			problems.add("manager", "client %q is managed itself; a manager must rotate its own secret", cfg.Manager)
		case !strutil.StrListContainsGlob(mgr.ManagedClients, name):
			problems.add("manager", "client %q does not list %q in its managed_clients; add it there first, as whoever may change that client decides", cfg.Manager, name)
		case len(mgr.ManagementScopes) == 0:
			problems.add("manager", "client %q sets no management_scopes: the scope whose tokens may call UserMgmt/ResetUserPassword", cfg.Manager)
		case !sameTenant(mgr, cfg):
			problems.add("manager", "client %q is on another tenant (%s)", cfg.Manager, mgr.TenantURL)
		}
	}
	for other, o := range others {
		if o.Manager == name && !sameTenant(o, cfg) {
			problems.add("tenant_url", "client %q, which this one manages, is on %s: a manager's token never goes to another tenant; move or delete that client first", other, o.TenantURL)
		}
	}
	// On one application, a client's workload scopes and another's password-changing
	// scopes must not meet: the one would get tokens that change the other's password,
	// or could stop the other's reads by declaring its scopes protected.
	key := appKey(cfg.TenantURL, cfg.AppID)
	mine := slices.Concat(cfg.RotationScopes, cfg.ManagementScopes)
	for other, o := range others {
		if appKey(o.TenantURL, o.AppID) != key {
			continue
		}
		for _, sc := range cfg.Scopes {
			if slices.Contains(o.RotationScopes, sc) || slices.Contains(o.ManagementScopes, sc) {
				problems = append(problems, rotationScopeRefusal("scopes", sc)+fmt.Sprintf(" (client %q's)", other))
			}
		}
		for _, sc := range mine {
			if slices.Contains(o.Scopes, sc) {
				problems.add("rotation_scopes", "%q is a workload scope of client %q on the same application: it cannot also be a scope that changes passwords", sc, other)
			}
		}
	}
	used, err := b.roleScopesByApp(ctx, s, others, name)
	if err != nil {
		return nil, err
	}
	use := cmp.Or(used[key], &appRoleUse{})
	for _, sc := range mine {
		if role, ok := use.scopes[sc]; ok {
			problems.add("rotation_scopes", "%q is a scope of role %q on the same application: it cannot also be a scope that changes passwords", sc, role)
		}
		if role, pattern, ok := use.ceilingFor(sc); ok {
			problems.add("rotation_scopes", "%q matches scope_ceiling %q of role %q on the same application, whose templates could expand to it: it cannot also be a scope that changes passwords", sc, pattern, role)
		}
	}
	return problems, nil
}

// checkNames checks a list of client or role names or globs.
func checkNames(names []string) error {
	for _, n := range names {
		if n == "" || len(n) > maxRoleNameLength || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-_.*") != "" {
			return fmt.Errorf("%s is not a name or glob: use lower-case letters, digits, '-', '_', '.' and '*', at most %d characters", quoteShort(n), maxRoleNameLength)
		}
	}
	return nil
}

// appKey names an application of a tenant: scopes are an application's, so one
// client's rotation or management scope is another's concern only on the same one.
func appKey(tenantURL, appID string) string {
	return strings.ToLower(strings.TrimRight(tenantURL, "/")) + "\n" + strings.ToLower(appID)
}

// grantScopes are the scopes of a client's grants that may change a password: its
// rotation and management scopes, by the application they are asked for at.
func (b *backend) grantScopes(ctx context.Context, s logical.Storage) (map[string][]string, error) {
	configs, err := b.storedConfigs(ctx, s)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, cfg := range configs {
		key := appKey(cfg.TenantURL, cfg.AppID)
		out[key] = append(out[key], slices.Concat(cfg.RotationScopes, cfg.ManagementScopes)...)
	}
	return out, nil
}

// appProtectedScopes are the rotation and management scopes any client asks for at
// the application key: no workload token from there may carry one.
func (b *backend) appProtectedScopes(ctx context.Context, s logical.Storage, key string) ([]string, error) {
	all, err := b.grantScopes(ctx, s)
	return all[key], err
}

// appRoleUse is what the roles of other clients ask for or allow at one application:
// each scope and each scope_ceiling pattern, with one role that does.
type appRoleUse struct {
	scopes   map[string]string
	ceilings map[string]string
}

// ceilingFor returns a role whose ceiling matches scope, and the pattern, compared
// without case as the role write compares (ceilingCovers).
func (u *appRoleUse) ceilingFor(scope string) (role, pattern string, ok bool) {
	for _, p := range slices.Sorted(maps.Keys(u.ceilings)) {
		if _, _, ok := ceilingCovers([]string{p}, []string{scope}); ok {
			return u.ceilings[p], p, true
		}
	}
	return "", "", false
}

// roleScopesByApp maps each application key to what the roles of other clients than
// name ask for or allow there.
func (b *backend) roleScopesByApp(ctx context.Context, s logical.Storage, configs map[string]*cyberarkConfig, name string) (map[string]*appRoleUse, error) {
	roles, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, err
	}
	out := map[string]*appRoleUse{}
	for _, r := range roles {
		role, err := readRole(ctx, s, r)
		if err != nil {
			return nil, err
		}
		if role == nil || role.client() == name || configs[role.client()] == nil {
			continue
		}
		cfg := configs[role.client()]
		key := appKey(cfg.TenantURL, appFor(cfg, role))
		if out[key] == nil {
			out[key] = &appRoleUse{scopes: map[string]string{}, ceilings: map[string]string{}}
		}
		for _, sc := range slices.Concat(role.Scopes, role.AllowedScopes) {
			out[key].scopes[sc] = r
		}
		for _, p := range role.ScopeCeiling {
			out[key].ceilings[p] = r
		}
	}
	return out, nil
}
