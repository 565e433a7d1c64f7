package cyberark

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestAccessTokenLeaseRenewAndRevoke(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read"})
	secret := e.mustRequest(t, logical.ReadOperation, "token/r", nil).Secret

	_, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.RenewOperation, Secret: secret, Storage: e.storage, MountPoint: "cyberark/",
	})
	if err == nil || !strings.Contains(err.Error(), "cannot be renewed: read cyberark/token/r again") {
		t.Errorf("renew error = %v, want one that says to read cyberark/token/r again", err)
	}

	resp, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.RevokeOperation, Secret: secret, Storage: e.storage, MountPoint: "cyberark/",
	})
	if err != nil || (resp != nil && resp.IsError()) {
		t.Errorf("revoke: %v %v", err, resp)
	}
}
