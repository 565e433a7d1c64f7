package emulator

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// call carries one tenant request through the handlers.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	ep    string
	appID string // as sent, for the "unknown app" message
	// clientID is the client ID the credentials name, known or not, for ClientStats.
	clientID string
	form     url.Values
	formErr  error
	// body is the raw body, which the management APIs read as JSON; tooLarge says it
	// was cut at maxBodyBytes.
	body     []byte
	tooLarge bool
	// epoch is the authenticated user's password epoch, read with its secret, so that a
	// token granted on a password that changes meanwhile is born stale.
	epoch uint64
	// hold makes a ChangeUserPassword that passes the request's checks wait in the held
	// list instead of changing the password (Fault.Hold).
	hold bool
}

// oauthError writes the tenant's flat error object. Only the token endpoint's errors are
// counted, because TokenErrors is what tests compare against failed grants.
func (e *Emulator) oauthError(c *call, status int, code, desc string) {
	if c.ep == epToken {
		e.mu.Lock()
		e.stats.TokenErrors++
		e.countClient(c.clientID).TokenErrors++
		e.mu.Unlock()
	}
	writeJSON(c.w, status, map[string]string{"error": code, "error_description": desc})
}

// writeJSON sends v with no-store on every answer: OAuth responses carry tokens or
// say something about credentials, and neither belongs in a cache.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (e *Emulator) methodNotAllowed(c *call, allow string) {
	c.w.Header().Set("Allow", allow)
	e.oauthError(c, http.StatusMethodNotAllowed, "invalid_request", "method not allowed")
}

// authenticate finds the app and checks the client's credentials in the order the tenant
// reports failures. On failure it has already answered, and ok is false.
func (e *Emulator) authenticate(c *call) (a *app, cl *client, ok bool) {
	a = e.apps[strings.ToLower(c.appID)] // the map is never written after New
	if a == nil {
		e.oauthError(c, http.StatusBadRequest, "invalid_request", "unknown app "+c.appID)
		return nil, nil, false
	}
	mode, id, secret, present := credentials(c.r, c.form)
	if present && !(mode == "basic" && a.basic || mode == "post" && a.post) {
		e.oauthError(c, e.errorStatus, "access_denied", "auth mode not allowed")
		return nil, nil, false
	}
	var want string
	var locked bool
	now := e.now()
	if present {
		e.mu.Lock()
		cl = a.clients[id]
		if cl != nil {
			want, c.epoch = cl.user.secret, cl.user.epoch
			locked = cl.user.lockedAt(now)
		}
		e.mu.Unlock()
	}
	if cl == nil {
		e.oauthError(c, e.errorStatus, "invalid_client", "wrong clientid")
		return nil, nil, false
	}
	// A locked user is refused before its secret is looked at, so the right secret gets
	// the same answer as a wrong one.
	if locked {
		e.loginFailed(cl.user, now, false)
		e.oauthError(c, e.errorStatus, "access_denied", lockedDescription)
		return nil, nil, false
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(want)) != 1 {
		e.loginFailed(cl.user, now, true)
		e.oauthError(c, e.errorStatus, "access_denied", "invalid client creds or client not allowed")
		return nil, nil, false
	}
	e.loginSucceeded(cl.user)
	return a, cl, true
}

// credentials extracts the client's ID and secret. Basic credentials are taken raw, not
// URL-decoded, and split at the first colon: that is what the tenant does, so a client
// that URL-encodes them (as golang.org/x/oauth2 does) fails here as it would there.
// A Basic header wins over form fields; a malformed one counts as credentials that
// match no client.
func credentials(r *http.Request, form url.Values) (mode, id, secret string, present bool) {
	if scheme, rest, _ := strings.Cut(r.Header.Get("Authorization"), " "); strings.EqualFold(scheme, "Basic") {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
		if err != nil {
			return "basic", "", "", true
		}
		id, secret, found := strings.Cut(string(raw), ":")
		if !found {
			return "basic", "", "", true
		}
		return "basic", id, secret, true
	}
	if form.Has("client_id") {
		return "post", form.Get("client_id"), form.Get("client_secret"), true
	}
	return "", "", "", false
}

func (e *Emulator) serveToken(c *call) {
	if c.r.Method != http.MethodPost {
		e.methodNotAllowed(c, http.MethodPost)
		return
	}
	a, cl, ok := e.authenticate(c)
	if !ok {
		return
	}
	if c.form.Get("grant_type") != "client_credentials" {
		e.oauthError(c, http.StatusBadRequest, "invalid_grant", "invalid grant type")
		return
	}
	for name, want := range a.required {
		if c.form.Get(name) != want {
			e.oauthError(c, http.StatusBadRequest, "invalid_target", "the requested resource or audience is not allowed")
			return
		}
	}
	scopes, ok := e.grantScopes(c, a, cl)
	if !ok {
		return
	}

	u := cl.user
	e.mu.Lock()
	ttl := a.expiresIn
	if ttl == 0 {
		ttl = e.expiresIn
	}
	asString, omitScope := e.expiresInAsString, e.omitScope
	q := a.quirks.clone()
	e.mu.Unlock()

	askedNone := len(strings.Fields(c.form.Get("scope"))) == 0
	answerScope, claimScope := q.scopesFor(scopes, askedNone)
	iat := e.now().Unix()
	info := tokenInfo{
		appKey:   strings.ToLower(a.id),
		clientID: u.id,
		sub:      u.uuid,
		aud:      u.id,
		scope:    claimScope,
		iss:      baseURL(c.r) + "/" + a.id + "/",
		iat:      iat,
		exp:      iat + int64(ttl) + q.ExpOffset,
		epoch:    c.epoch,
	}
	token, err := e.issueToken(&info, q)
	if err != nil {
		e.oauthError(c, http.StatusInternalServerError, "server_error", "could not sign token")
		return
	}

	e.mu.Lock()
	e.issued = append(e.issued, token)
	e.tokens[token] = info
	if info.epoch != u.epoch {
		// A password change revoked the user's tokens while this one was being signed.
		e.revoked[token] = struct{}{}
	}
	e.stats.Grants++
	e.countClient(c.clientID).Grants++
	e.mu.Unlock()

	resp := map[string]any{
		"access_token": token,
		"token_type":   "Bearer",
		"expires_in":   ttl,
	}
	if asString {
		resp["expires_in"] = strconv.Itoa(ttl)
	}
	if !omitScope {
		resp["scope"] = answerScope
	}
	writeJSON(c.w, http.StatusOK, resp)
}

// issueToken applies the token quirks to info and returns the access token: a JWT
// signed with the published key, or as q asks otherwise.
func (e *Emulator) issueToken(info *tokenInfo, q TokenQuirks) (string, error) {
	if q.Issuer != "" {
		info.iss = q.Issuer
	}
	if q.IssuerNoTrailingSlash {
		info.iss = strings.TrimSuffix(info.iss, "/")
	}
	if q.Audience != "" {
		info.aud = q.Audience
	}
	if q.Subject != "" {
		info.sub = q.Subject
	}
	if q.OpaqueToken {
		return newOpaqueToken(), nil
	}
	claims := map[string]any{
		"iss":         info.iss,
		"aud":         info.aud,
		"sub":         info.sub,
		"unique_name": info.clientID,
		"scope":       info.scope,
		"iat":         info.iat,
		"auth_time":   info.iat,
		"exp":         info.exp,
		"jti":         newUUID(),
	}
	for _, name := range q.OmitClaims {
		delete(claims, name)
	}
	if q.UnknownKey == "" {
		return e.sign(claims)
	}
	key, err := e.unknownKey()
	if err != nil {
		return "", err
	}
	kid := keyID(&key.PublicKey)
	if q.UnknownKey == UnknownKeyRealKid {
		kid = e.kid
	}
	return signWith(key, kid, claims)
}

// grantScopes decides the granted scopes. Unknown scopes are reported before forbidden
// ones, so a typo is named as such even when the client also lacks a permission.
func (e *Emulator) grantScopes(c *call, a *app, cl *client) ([]string, bool) {
	asked := strings.Fields(c.form.Get("scope"))
	if len(asked) == 0 {
		return cl.defaultScopes, true
	}
	seen := make(map[string]bool, len(asked))
	granted := make([]string, 0, len(asked))
	for _, s := range asked {
		if !seen[s] {
			seen[s] = true
			granted = append(granted, s)
		}
	}
	for _, s := range granted {
		if !a.scopeSet[s] {
			e.oauthError(c, http.StatusBadRequest, "invalid_scope", "unknown scope requested")
			return nil, false
		}
	}
	for _, s := range granted {
		if cl.allowed != nil && !cl.allowed[s] {
			e.oauthError(c, http.StatusBadRequest, "invalid_scope", "scope not allowed for client")
			return nil, false
		}
	}
	return granted, true
}

// baseURL is the tenant URL as the client addressed it, which is what "iss" carries.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	host := r.Host
	if host == "" {
		host = "localhost"
	}
	return scheme + "://" + host
}

// serveRevoke answers 200 for unknown, expired and already revoked tokens alike, as the
// tenant does (and RFC 7009 asks), so a client cannot learn which tokens exist. Only a
// token issued by this app to this client is actually revoked: a client that sends a
// revocation to the wrong app or with the wrong credentials gets its 200 and nothing
// more, as it would from the tenant.
func (e *Emulator) serveRevoke(c *call) {
	a, cl, token, ok := e.tokenCall(c)
	if !ok {
		return
	}
	e.mu.Lock()
	if info, issued := e.tokens[token]; issued && info.appKey == strings.ToLower(a.id) && info.clientID == cl.user.id {
		e.revoked[token] = struct{}{}
	}
	e.stats.Revocations++
	e.mu.Unlock()
	writeJSON(c.w, http.StatusOK, struct{}{})
}

// tokenCall checks what revoke and introspect share: a POST from an authenticated
// client, with a token. It has answered the request when ok is false.
func (e *Emulator) tokenCall(c *call) (a *app, cl *client, token string, ok bool) {
	if c.r.Method != http.MethodPost {
		e.methodNotAllowed(c, http.MethodPost)
		return nil, nil, "", false
	}
	if a, cl, ok = e.authenticate(c); !ok {
		return nil, nil, "", false
	}
	if token = c.form.Get("token"); token == "" {
		e.oauthError(c, http.StatusBadRequest, "invalid_request", "missing token")
		return nil, nil, "", false
	}
	return a, cl, token, true
}

func (e *Emulator) serveIntrospect(c *call) {
	a, _, token, ok := e.tokenCall(c)
	if !ok {
		return
	}
	now := e.now().Unix()
	e.mu.Lock()
	info, issued := e.tokens[token]
	revoked := issued && e.tokenRevoked(token, info)
	e.mu.Unlock()
	if !issued || revoked || now >= info.exp || info.appKey != strings.ToLower(a.id) {
		writeJSON(c.w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(c.w, http.StatusOK, map[string]any{
		"active":     true,
		"scope":      info.scope,
		"exp":        info.exp,
		"iat":        info.iat,
		"iss":        info.iss,
		"sub":        info.sub,
		"aud":        info.aud,
		"client_id":  info.clientID,
		"username":   info.clientID,
		"token_type": "Bearer",
	})
}

func (e *Emulator) serveKeys(c *call) {
	if c.r.Method != http.MethodGet && c.r.Method != http.MethodHead {
		e.methodNotAllowed(c, "GET, HEAD")
		return
	}
	if e.apps[strings.ToLower(c.appID)] == nil {
		e.oauthError(c, http.StatusBadRequest, "invalid_request", "unknown app "+c.appID)
		return
	}
	writeJSON(c.w, http.StatusOK, e.jwks())
}

// serveDiscovery publishes the app's OpenID configuration so that clients which discover
// endpoints, rather than building the URLs, can be tested too.
func (e *Emulator) serveDiscovery(c *call) {
	if c.r.Method != http.MethodGet && c.r.Method != http.MethodHead {
		e.methodNotAllowed(c, "GET, HEAD")
		return
	}
	a := e.apps[strings.ToLower(c.appID)]
	if a == nil {
		e.oauthError(c, http.StatusBadRequest, "invalid_request", "unknown app "+c.appID)
		return
	}
	base := baseURL(c.r)
	var methods []string
	if a.basic {
		methods = append(methods, "client_secret_basic")
	}
	if a.post {
		methods = append(methods, "client_secret_post")
	}
	writeJSON(c.w, http.StatusOK, map[string]any{
		"issuer":                                base + "/" + a.id + "/",
		"token_endpoint":                        base + "/oauth2/token/" + a.id,
		"revocation_endpoint":                   base + "/oauth2/revoke/" + a.id,
		"introspection_endpoint":                base + "/oauth2/introspect/" + a.id,
		"jwks_uri":                              base + "/oauth2/keys/" + a.id,
		"grant_types_supported":                 []string{"client_credentials"},
		"token_endpoint_auth_methods_supported": methods,
		"scopes_supported":                      a.scopes,
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
}
