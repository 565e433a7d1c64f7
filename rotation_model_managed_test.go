package cyberark

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The model test's managed histories: one history in four (by its seed) rotates a
// managed client, whose manager resets its password, with the same events and
// invariants as the default client's, and the manager's own invariants besides.

const (
	modelManager     = "mgr"
	modelManaged     = "team-b"
	modelManagedRole = "team-b-app"
	modelManageScope = "manage"
	modelMgrUUID     = "0c0c0c0c-0000-4000-8000-00000000000c"
)

// target is the client a history rotates, and where the model finds it.
type target struct {
	managed bool
	// name is the client's name; path its config path, rotatePath its rotate-root,
	// key its storage key, tokenPath the token read the workloads make.
	name, path, rotatePath, key, tokenPath string
	// appID, userID and initialSecret are its service user at the tenant.
	appID, userID, initialSecret string
	// changeEndpoint is the emulator's endpoint (for faults) its rotation changes the
	// password at.
	changeEndpoint string
}

func selfTarget() target {
	return target{
		name: defaultClient, path: configPath, rotatePath: "config/rotate-root", key: configPath, tokenPath: "token",
		appID: testAppID, userID: testClientID, initialSecret: testClientSecret, changeEndpoint: "change_password",
	}
}

// managedTarget is team B's user, on the manager's app or another one.
func managedTarget(sameApp bool) target {
	app := otherApp
	if sameApp {
		app = testAppID
	}
	return target{
		managed: true, name: modelManaged, path: clientsPrefix + modelManaged, rotatePath: clientsPrefix + modelManaged + "/rotate-root",
		key: clientStorageKey(modelManaged), tokenPath: "token/" + modelManagedRole,
		appID: app, userID: teamBUser, initialSecret: teamBSecret, changeEndpoint: "reset_password",
	}
}

// cred is the rotated client's credential in the running backend.
func (h *history) cred() *credential { return h.b.credential(h.name) }

// failedLogins is the tenant's count of refused logins of the rotated client's user.
func (h *history) failedLogins() int64 { return h.emu.ClientStats(h.userID).FailedLogins }

// managedApps adds the manager, an administrator whose "manage" scope may reset
// passwords, and the managed user, to the tenant.
func (h *history) managedApps(cfg *emulator.Config) {
	a := &cfg.Apps[0]
	a.Scopes = append(a.Scopes, modelManageScope)
	a.ScopeAPIs[modelManageScope] = []string{"UserMgmt/ResetUserPassword"}
	a.Clients = append(a.Clients, emulator.Client{ID: mgrUser, Secret: mgrSecret, UUID: modelMgrUUID, Admin: true})
	managed := emulator.Client{ID: teamBUser, Secret: teamBSecret, UUID: teamBUUID}
	if h.appID == testAppID {
		a.Clients = append(a.Clients, managed)
	} else {
		cfg.Apps = append(cfg.Apps, emulator.App{ID: h.appID, Scopes: []string{"read"}, Clients: []emulator.Client{managed}})
	}
}

// writeManager stores the manager, which rotates itself never in the model.
func (h *history) writeManager() error {
	_, err := h.call(logical.CreateOperation, clientsPrefix+modelManager, map[string]any{
		"tenant_url": h.srv.URL, "app_id": testAppID, "client_id": mgrUser, "client_secret": mgrSecret, "scopes": "read",
		"managed_clients": modelManaged, "management_scopes": modelManageScope,
		"max_retries": 0, "request_timeout": 2, "total_timeout": 3,
	})
	return err
}

// holdReset is holdChange for a managed client. The emulator holds only
// ChangeUserPassword (Fault.Hold), so the model plays a held reset itself: the reset
// is not made and its caller hears nothing (a dropped connection), and land makes it
// later with the password it carried, which a reset sets whatever the password is by
// then, as it needs no old one.
func (h *history) holdReset() error {
	h.emu.AddFaults(emulator.Fault{Endpoint: "reset_password", DropConnection: true, Times: 1})
	seen := len(h.emu.Requests())
	due, err := h.rotation()
	h.emu.ClearFaults()
	h.held, h.heldDue = "", time.Time{}
	for _, r := range h.emu.Requests()[seen:] {
		if strings.EqualFold(r.Path, resetPasswordPath) {
			var body struct {
				NewPassword string `json:"newPassword"`
			}
			if err := json.Unmarshal(r.Body, &body); err != nil {
				return fmt.Errorf("a reset the engine sent: %w", err)
			}
			h.held = body.NewPassword
		}
	}
	if h.held != "" {
		h.heldSince, h.heldDue = h.clock.Now(), due
	}
	h.logf("rotation whose reset the tenant holds unanswered (held %t): %s %s", h.held != "", errorCode(err), shortErr(err))
	return nil
}

// checkManaged is what a managed history adds to check: the managed client's
// rotations never touch the manager (its secret, stored and at the tenant, stays;
// its user has no failed login, since its secret is always right), and every password
// call is a reset of the managed user, authorised by a token of the manager.
func (h *history) checkManaged() error {
	if !h.emu.ClientSecretIs(mgrUser, mgrSecret) {
		return errors.New("MANAGER CHANGED: the tenant no longer accepts the manager's secret")
	}
	mcfg, err := readConfigAt(context.Background(), h.storage.Storage, clientStorageKey(modelManager))
	switch {
	case err != nil:
		return fmt.Errorf("reading the manager's config: %w", err)
	case mcfg == nil:
		return errors.New("the manager's config is gone")
	case mcfg.ClientSecret != mgrSecret || mcfg.Rotation.PendingSecret != "":
		return fmt.Errorf("MANAGER CHANGED: the manager's stored secret changed (its rotation state %q)", mcfg.Rotation.status())
	}
	if st := h.emu.ClientStats(mgrUser); st.FailedLogins > 0 || st.Lockouts > 0 {
		return fmt.Errorf("MANAGER REFUSED: %d failed logins and %d lockouts of the manager's user, whose secret never changes", st.FailedLogins, st.Lockouts)
	}
	n := h.emu.Stats().ManagementRequests
	if n == h.mgmtSeen {
		return nil
	}
	h.mgmtSeen = n
	reqs := h.emu.Requests()
	for _, r := range reqs[h.managedSeen:] {
		switch {
		case strings.EqualFold(r.Path, changePasswordPath):
			return errors.New("a managed client's rotation called ChangeUserPassword")
		case strings.EqualFold(r.Path, resetPasswordPath):
			var body struct {
				ID string `json:"ID"`
			}
			if err := json.Unmarshal(r.Body, &body); err != nil || !strings.EqualFold(body.ID, teamBUUID) {
				return fmt.Errorf("a ResetUserPassword named user %q, not the managed one", body.ID)
			}
			jwt, err := client.ParseJWT(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
			if err != nil || !strings.EqualFold(jwt.String("sub"), modelMgrUUID) {
				return errors.New("a ResetUserPassword was not authorised by a token of the manager")
			}
		}
	}
	h.managedSeen = len(reqs)
	return nil
}
