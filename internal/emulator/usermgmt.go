package emulator

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// envelope is the answer of the tenant's management APIs, success or not, with the
// tenant's own field names. Those APIs answer 200 even when the operation failed, so a
// client has to read "success".
type envelope struct {
	Success         bool    `json:"success"`
	Result          any     `json:"Result"`
	Message         *string `json:"Message"`
	MessageID       *string `json:"MessageID"`
	Exception       any     `json:"Exception"`
	ErrorID         *string `json:"ErrorID"`
	ErrorCode       int     `json:"ErrorCode"`
	IsSoftError     bool    `json:"IsSoftError"`
	InnerExceptions any     `json:"InnerExceptions"`
}

// mgmtFailure is one refusal of a management call. Its texts are the emulator's own:
// CyberArk does not publish the tenant's, so a client must branch on "success" and
// treat Message as something to show, never to parse. No text ever quotes a password.
type mgmtFailure struct {
	status    int // 0 = 200, the tenant's status for a failed operation
	id        string
	message   string
	challenge string // WWW-Authenticate, for the 401s
}

// Failures about the bearer token. Their 401 is a guess (see README.md): whether the
// tenant answers an unauthenticated management call with 401 or with 200 and
// "success":false is unverified.
var (
	failNoToken = &mgmtFailure{status: http.StatusUnauthorized, id: "AuthTokenMissing",
		message: "Authentication required: the request carries no bearer token.", challenge: `Bearer`}
	failBadToken = &mgmtFailure{status: http.StatusUnauthorized, id: "AuthTokenInvalid",
		message: "Authentication failed: the bearer token is not valid.", challenge: `Bearer error="invalid_token"`}
	failExpiredToken = &mgmtFailure{status: http.StatusUnauthorized, id: "AuthTokenExpired",
		message: "Authentication failed: the bearer token has expired.", challenge: `Bearer error="invalid_token"`}
	failRevokedToken = &mgmtFailure{status: http.StatusUnauthorized, id: "AuthTokenRevoked",
		message: "Authentication failed: the bearer token has been revoked.", challenge: `Bearer error="invalid_token"`}
)

var (
	failMethod = &mgmtFailure{status: http.StatusMethodNotAllowed, id: "MethodNotAllowed",
		message: "Method not allowed: use POST."}
	failTooLarge = &mgmtFailure{status: http.StatusRequestEntityTooLarge, id: "RequestTooLarge",
		message: "The request body is too large."}
	failNotAdmin = &mgmtFailure{id: "UserMgmtRightsRequired",
		message: "Not authorized: resetting a user's password requires user management rights."}
	failBadJSON = &mgmtFailure{id: "InvalidJsonBody",
		message: "The request body is not a valid JSON object."}
	failOldPassword = &mgmtFailure{id: "OldPasswordIncorrect",
		message: "The old password is incorrect."}
	failNoUser = &mgmtFailure{id: "UserNotFound",
		message: "No user exists with the given ID."}
)

func failNotInScope(api string) *mgmtFailure {
	return &mgmtFailure{id: "ApiNotAllowedByScope",
		message: "Not authorized: the token's scopes do not allow calling " + api + "."}
}

func failMissing(field string) *mgmtFailure {
	return &mgmtFailure{id: "MissingParameter", message: "Missing required parameter: " + field + "."}
}

func failPolicy(id, rule string) *mgmtFailure {
	return &mgmtFailure{id: id, message: "Password does not meet policy requirements: " + rule + "."}
}

func (e *Emulator) failHistory() *mgmtFailure {
	rule := "it must differ from the current password"
	if e.history > 1 {
		rule = fmt.Sprintf("it must not match any of the last %d passwords", e.history)
	}
	return failPolicy("PasswordInHistory", rule)
}

// serveManagement answers ChangeUserPassword and ResetUserPassword.
func (e *Emulator) serveManagement(c *call) {
	f := e.manage(c)
	if f == nil {
		writeJSON(c.w, http.StatusOK, envelope{Success: true})
		return
	}
	status := f.status
	if status == 0 {
		status = http.StatusOK
	}
	if f.challenge != "" {
		c.w.Header().Set("WWW-Authenticate", f.challenge)
	}
	// ErrorID is the tenant's correlation ID for a failure, fresh each time.
	msg, id, errID := f.message, f.id, newUUID()
	writeJSON(c.w, status, envelope{Message: &msg, MessageID: &id, ErrorID: &errID})
}

// manage checks a management call in the order a server would: the request itself, then
// who is calling and what the token allows, then the body, then the operation.
func (e *Emulator) manage(c *call) *mgmtFailure {
	if c.r.Method != http.MethodPost {
		c.w.Header().Set("Allow", http.MethodPost)
		return failMethod
	}
	if c.tooLarge {
		return failTooLarge
	}
	caller, info, f := e.bearer(c)
	if f != nil {
		return f
	}
	path := strings.TrimSuffix(strings.TrimPrefix(c.r.URL.Path, "/"), "/")
	if !e.scopeAllows(info, path) {
		return failNotInScope(managementPaths[c.ep])
	}
	if c.ep == epChangePassword {
		return e.changePassword(c, caller)
	}
	return e.resetPassword(c, caller)
}

// bearer finds the user a management call's bearer token was issued to.
func (e *Emulator) bearer(c *call) (*user, tokenInfo, *mgmtFailure) {
	scheme, token, _ := strings.Cut(c.r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, tokenInfo{}, failNoToken
	}
	now := e.now().Unix()
	e.mu.Lock()
	defer e.mu.Unlock()
	info, issued := e.tokens[token]
	switch {
	case !issued:
		return nil, info, failBadToken
	case now >= info.exp:
		return nil, info, failExpiredToken
	case e.tokenRevoked(token, info):
		return nil, info, failRevokedToken
	}
	return e.users.byID[info.clientID], info, nil
}

// scopeAllows applies the allowed REST APIs of the app that issued the token: a token
// can call an API only through a scope it was granted.
func (e *Emulator) scopeAllows(info tokenInfo, path string) bool {
	a := e.apps[info.appKey] // never written after New
	if a == nil {
		return false
	}
	for _, s := range strings.Fields(info.scope) {
		for _, re := range a.scopeAPIs[s] {
			if re.MatchString(path) {
				return true
			}
		}
	}
	return false
}

// decodeManagementBody reads the JSON object of a management call. Unknown fields are
// ignored, as a server that accepts more parameters than these two calls use would.
func decodeManagementBody(body []byte, v any) *mgmtFailure {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return failBadJSON
	}
	if dec.More() {
		return failBadJSON
	}
	return nil
}

// changePassword changes the caller's own password, which needs the old one unless
// Config.IgnoreOldPassword is set. The parameters are required either way. Under a Hold
// fault the change is held instead, for LandHeldChanges to make.
func (e *Emulator) changePassword(c *call, u *user) *mgmtFailure {
	var req struct {
		OldPassword string `json:"oldPassword"`
		NewPassword string `json:"newPassword"`
	}
	if f := decodeManagementBody(c.body, &req); f != nil {
		return f
	}
	if req.OldPassword == "" {
		return failMissing("oldPassword")
	}
	if req.NewPassword == "" {
		return failMissing("newPassword")
	}
	change := heldChange{user: u, oldPassword: req.OldPassword, newPassword: req.NewPassword}
	// One critical section from the old password's check to the change, so that two
	// concurrent changes cannot both succeed from the same old password.
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.hold {
		e.held = append(e.held, change)
		return nil
	}
	return e.makeChange(change)
}

// makeChange checks the old password (unless the tenant ignores it), the policy and the
// history against the user's password now, and changes it. The caller holds e.mu.
func (e *Emulator) makeChange(c heldChange) *mgmtFailure {
	if !e.ignoreOldPassword && subtle.ConstantTimeCompare([]byte(c.user.secret), []byte(c.oldPassword)) != 1 {
		return failOldPassword
	}
	return e.applyNewPassword(c.user, c.newPassword)
}

// resetPassword sets any user's password without the old one, for callers with
// user-management rights.
func (e *Emulator) resetPassword(c *call, caller *user) *mgmtFailure {
	if !caller.admin { // fixed after New
		return failNotAdmin
	}
	var req struct {
		ID          string `json:"ID"`
		NewPassword string `json:"newPassword"`
	}
	if f := decodeManagementBody(c.body, &req); f != nil {
		return f
	}
	if req.ID == "" {
		return failMissing("ID")
	}
	if req.NewPassword == "" {
		return failMissing("newPassword")
	}
	target := e.users.byUUID[strings.ToLower(req.ID)]
	if target == nil {
		return failNoUser
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applyNewPassword(target, req.NewPassword)
}

// applyNewPassword checks the policy and the history, then changes the password. The
// caller holds e.mu.
func (e *Emulator) applyNewPassword(u *user, password string) *mgmtFailure {
	if f := e.policy.check(password); f != nil {
		return f
	}
	if e.recentlyUsed(u, password) {
		return e.failHistory()
	}
	e.setPassword(u, password)
	e.stats.PasswordChanges++
	return nil
}
