package cyberark

import (
	"errors"
	"reflect"
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
		"scopes": []string{"read"}, "allowed_scopes": []string{"read"}, "app_id": "", "ttl": int64(600),
		"revoke_tokens": nil, "token_reuse": false, "reuse_min_remaining": int64(300), "reuse_min_fraction": 0.1,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("reader = %v, want %v (allowed_scopes defaults to scopes)", got, want)
	}

	// A partial update keeps the other fields, and allowed_scopes follows scopes while
	// it was never set.
	e.mustRequest(t, logical.UpdateOperation, "roles/reader", map[string]any{"scopes": "read write"})
	got = e.mustRequest(t, logical.ReadOperation, "roles/reader", nil).Data
	if !reflect.DeepEqual(got["allowed_scopes"], []string{"read", "write"}) || got["ttl"] != int64(600) {
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
		{"scope outside allowed", map[string]any{"scopes": "admin", "allowed_scopes": "read"}, "scopes"},
		{"bad app_id", map[string]any{"app_id": "x?y"}, "app_id"},
		{"negative ttl", map[string]any{"ttl": -5}, "ttl"},
		{"garbage ttl", map[string]any{"ttl": "forever"}, "ttl"},
		{"negative reuse_min_remaining", map[string]any{"reuse_min_remaining": -1}, "reuse_min_remaining"},
		{"reuse_min_fraction too big", map[string]any{"reuse_min_fraction": 0.95}, "reuse_min_fraction"},
		{"reuse_min_fraction negative", map[string]any{"reuse_min_fraction": -0.1}, "reuse_min_fraction"},
		{"token_reuse not bool", map[string]any{"token_reuse": "often"}, "token_reuse"},
		{"unknown field", map[string]any{"scope": "read"}, "scope"},
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

func TestRoleNameMustBeSimple(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	for _, name := range []string{"a/b", "-lead", "trail-", "sp ace"} {
		_, err := e.request(t, logical.CreateOperation, "roles/"+name, map[string]any{"scopes": "read"})
		if !errors.Is(err, logical.ErrUnsupportedPath) {
			t.Errorf("role name %q: err = %v, want unsupported path", name, err)
		}
	}
	if keys, _ := e.storage.List(t.Context(), "roles/"); len(keys) != 0 {
		t.Errorf("stored roles %v", keys)
	}
}
