package cyberark

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRoleCRUD(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/reader", map[string]any{"scopes": "read", "ttl": "10m"})
	e.mustRequest(t, logical.CreateOperation, "roles/writer", map[string]any{
		"scopes": []string{"write"}, "allowed_scopes": "read,write", "app_id": "OtherApp",
	})

	got := e.mustRequest(t, logical.ReadOperation, "roles/reader", nil).Data
	want := map[string]any{
		"scopes": []string{"read"}, "allowed_scopes": nil, "app_id": "", "ttl": int64(600),
		"effective_scopes": []string{"read"}, "effective_allowed_scopes": []string{"read"},
		"scopes_source": "role", "allowed_scopes_source": "scopes", "client": "default",
		"revoke_tokens": nil, "token_reuse": false, "reuse_min_remaining": int64(300), "reuse_min_fraction": 0.1,
		"lease_free": false, "scope_ceiling": []string{}, "templated": false,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("reader = %v, want %v (allowed_scopes defaults to scopes)", got, want)
	}

	// A partial update keeps the other fields, and allowed_scopes follows scopes while
	// it was never set.
	e.mustRequest(t, logical.UpdateOperation, "roles/reader", map[string]any{"scopes": "read write"})
	got = e.mustRequest(t, logical.ReadOperation, "roles/reader", nil).Data
	if !reflect.DeepEqual(got["effective_allowed_scopes"], []string{"read", "write"}) || got["allowed_scopes"] != nil || got["ttl"] != int64(600) {
		t.Errorf("after partial update: %v", got)
	}

	list := e.mustRequest(t, logical.ListOperation, "roles/", nil).Data["keys"]
	if !reflect.DeepEqual(list, []string{"reader", "writer"}) {
		t.Errorf("list = %v", list)
	}

	e.mustRequest(t, logical.DeleteOperation, "roles/writer", nil)
	if resp := e.mustRequest(t, logical.ReadOperation, "roles/writer", nil); resp != nil {
		t.Errorf("deleted role still reads as %v", resp.Data)
	}
	if list := e.mustRequest(t, logical.ListOperation, "roles/", nil).Data["keys"]; !reflect.DeepEqual(list, []string{"reader"}) {
		t.Errorf("list after delete = %v", list)
	}
}

func TestRoleInvalidInput(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		data  map[string]any
		field string
	}{
		{"bad scope", map[string]any{"scopes": "re\\ad"}, "scopes"},
		{"bad allowed scope", map[string]any{"allowed_scopes": "ok,\x01"}, "allowed_scopes"},
		{"scope outside allowed", map[string]any{"scopes": "admin", "allowed_scopes": "read"}, "allowed_scopes"},
		{"too many scopes", map[string]any{"scopes": manyScopes(maxScopes + 1)}, "scopes"},
		{"scope too long", map[string]any{"scopes": strings.Repeat("s", 257)}, "scopes"},
		{"app_id dot", map[string]any{"app_id": "."}, "app_id"},
		{"app_id dot dot", map[string]any{"app_id": ".."}, "app_id"},
		{"app_id zero-width space", map[string]any{"app_id": "App\u200b"}, "app_id"},
		{"app_id bidi override", map[string]any{"app_id": "\u202eppA"}, "app_id"},
		{"app_id C1 control", map[string]any{"app_id": "App\u0085"}, "app_id"},
		{"app_id too long", map[string]any{"app_id": strings.Repeat("a", 257)}, "app_id"},
		{"bad app_id", map[string]any{"app_id": "x?y"}, "app_id"},
		{"negative ttl", map[string]any{"ttl": -5}, "ttl"},
		{"garbage ttl", map[string]any{"ttl": "forever"}, "ttl"},
		{"negative reuse_min_remaining", map[string]any{"reuse_min_remaining": -1}, "reuse_min_remaining"},
		{"reuse_min_fraction too big", map[string]any{"reuse_min_fraction": 0.95}, "reuse_min_fraction"},
		{"reuse_min_fraction negative", map[string]any{"reuse_min_fraction": -0.1}, "reuse_min_fraction"},
		{"token_reuse not bool", map[string]any{"token_reuse": "often"}, "token_reuse"},
		{"unknown field", map[string]any{"scope": "read"}, "scope"},
		{"revoke_tokens is not a bool", map[string]any{"revoke_tokens": "sometimes"}, "revoke_tokens"},
		{"lease_free without token_reuse", map[string]any{"lease_free": true}, "lease_free"},
		{"lease_free with token_reuse off", map[string]any{"lease_free": true, "token_reuse": false}, "lease_free"},
		{"lease_free is not a bool", map[string]any{"lease_free": "sometimes", "token_reuse": true}, "lease_free"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			resp, err := e.request(t, logical.CreateOperation, "roles/r", tc.data)
			assertBadRequest(t, resp, err, tc.field)
			if storedJSON(t, e.storage, "roles/r") != "" {
				t.Error("an invalid role was stored")
			}
		})
	}
}

// TestRoleNameHasOneSpelling: Vault policies match paths exactly, so a role name that
// could be spelled two ways (token/admin, token/ADMIN) would let a reader escape a deny
// on one spelling. Every other spelling is a 400 on every role and token path, and
// nothing is stored or granted.
func TestRoleNameHasOneSpelling(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/admin", map[string]any{"scopes": "admin"})
	before := storedJSON(t, e.storage, "roles/admin")
	e.emu.Reset()
	bad := []string{"ADMIN", "Admin", "adMin", "-lead", "trail-", "_under", "sp ace", "dot.", "a\u200bb",
		"\u0430dmin", strings.Repeat("a", maxRoleNameLength+1)}
	for _, name := range bad {
		for _, op := range []struct {
			op   logical.Operation
			path string
		}{
			{logical.CreateOperation, "roles/"},
			{logical.UpdateOperation, "roles/"},
			{logical.ReadOperation, "roles/"},
			{logical.DeleteOperation, "roles/"},
			{logical.ReadOperation, "token/"},
		} {
			var data map[string]any
			if op.op == logical.CreateOperation || op.op == logical.UpdateOperation {
				data = map[string]any{"scopes": "read"}
			}
			resp, err := e.request(t, op.op, op.path+name, data)
			if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "canonical form") {
				t.Errorf("%s %s%.20q: got (%v, %v), want a 400 saying the name is not in canonical form", op.op, op.path, name, resp, err)
			}
		}
	}
	if keys, _ := e.storage.List(t.Context(), "roles/"); !reflect.DeepEqual(keys, []string{"admin"}) {
		t.Errorf("stored roles %v, want only admin", keys)
	}
	if after := storedJSON(t, e.storage, "roles/admin"); after != before {
		t.Errorf("role admin changed: %s -> %s", before, after)
	}
	if n := e.emu.Stats().TokenRequests; n != 0 {
		t.Errorf("the tenant got %d token requests from refused names", n)
	}
	// A role stored by an earlier release under a name no longer canonical can still be
	// deleted, under exactly its stored key.
	legacy, err := logical.StorageEntryJSON("roles/_legacy", &roleEntry{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(t.Context(), legacy); err != nil {
		t.Fatal(err)
	}
	e.mustRequest(t, logical.DeleteOperation, "roles/_legacy", nil)
	if storedJSON(t, e.storage, "roles/_legacy") != "" {
		t.Error("the legacy role was not deleted")
	}
	// The longest canonical name is accepted.
	e.mustRequest(t, logical.CreateOperation, "roles/"+strings.Repeat("a", maxRoleNameLength), map[string]any{"scopes": "read"})
}

// TestRoleRevokeTokensNeedsAnEndpoint: with token_url and no revoke_url there is nowhere
// to revoke, so a role cannot ask for it.
func TestRoleRevokeTokensNeedsAnEndpoint(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["token_url"] = e.url + "/oauth2/token/" + testAppID
	e.mustRequest(t, logical.CreateOperation, "config", data)
	resp, err := e.request(t, logical.CreateOperation, "roles/r", map[string]any{"revoke_tokens": true})
	assertBadRequest(t, resp, err, "revoke_tokens")
	if storedJSON(t, e.storage, "roles/r") != "" {
		t.Error("the role was stored")
	}
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"revoke_tokens": false})
}

// TestRoleReadShowsWhatATokenReadAllows: the role read states the same scope rule as
// token reads, including scopes inherited from the config.
func TestRoleReadShowsWhatATokenReadAllows(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read,write"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/bare", nil)
	got := e.mustRequest(t, logical.ReadOperation, "roles/bare", nil).Data
	if !reflect.DeepEqual(got["effective_scopes"], []string{"read", "write"}) ||
		!reflect.DeepEqual(got["effective_allowed_scopes"], []string{"read", "write"}) ||
		got["scopes_source"] != "config" || got["allowed_scopes_source"] != "scopes" || got["allowed_scopes"] != nil {
		t.Errorf("role read = %v, want the config's scopes shown as effective and inherited", got)
	}
	// And a token read allows exactly that.
	for _, s := range []string{"read", "write"} {
		if tok := e.mustRequest(t, logical.ReadOperation, "token/bare", map[string]any{"scope": s}); tok.Data["scope"] != s {
			t.Errorf("scope=%s gave %v", s, tok.Data["scope"])
		}
	}
	resp, err := e.request(t, logical.ReadOperation, "token/bare", map[string]any{"scope": "admin"})
	assertBadRequest(t, resp, err, "scope")
}

func manyScopes(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("s%d", i)
	}
	return strings.Join(s, ",")
}

// TestRoleLeaseFreeNeedsReuse: a lease-free role must keep token_reuse, whichever of
// the two a write changes; a refused update leaves the stored role as it was.
func TestRoleLeaseFreeNeedsReuse(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"token_reuse": true, "lease_free": true})
	if got := e.mustRequest(t, logical.ReadOperation, "roles/r", nil).Data["lease_free"]; got != true {
		t.Fatalf("lease_free reads back as %v, want true", got)
	}
	before := storedJSON(t, e.storage, "roles/r")
	resp, err := e.request(t, logical.UpdateOperation, "roles/r", map[string]any{"token_reuse": false})
	assertBadRequest(t, resp, err, "lease_free")
	if !strings.Contains(resp.Error().Error(), "token_reuse=true") {
		t.Errorf("the refusal does not say what is allowed: %v", resp.Error())
	}
	if after := storedJSON(t, e.storage, "roles/r"); after != before {
		t.Errorf("a refused update changed the stored role:\n%s\nwas\n%s", after, before)
	}
	// Turning both off in one write is allowed.
	e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"token_reuse": false, "lease_free": false})
}
