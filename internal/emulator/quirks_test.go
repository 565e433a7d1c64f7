package emulator

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// withQuirks sets the token quirks of testApp in the config.
func withQuirks(q TokenQuirks) func(*Config) {
	return func(c *Config) {
		for i := range c.Apps {
			if c.Apps[i].ID == testApp {
				c.Apps[i].TokenQuirks = q
			}
		}
	}
}

// issued is a token answer as a client reads it, with the JWT's parts decoded.
type issued struct {
	answer map[string]any
	token  string
	header map[string]any
	claims map[string]any
}

// issue gets a token for testClient at testApp, asking for scope (none when empty),
// and decodes the JWT the way a client would before checking it.
func (f *fixture) issue(t *testing.T, scope string) issued {
	t.Helper()
	form := url.Values{}
	if scope != "" {
		form.Set("scope", scope)
	}
	ans := f.token(t, form)
	tok, _ := ans["access_token"].(string)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return issued{answer: ans, token: tok}
	}
	var header map[string]any
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(raw, &header) != nil {
		t.Fatalf("JWT header undecodable: %v", err)
	}
	return issued{answer: ans, token: tok, header: header, claims: decodeClaims(t, tok)}
}

// verifyJWT checks a compact RS256 JWS against pub, as a client holding the key would.
func verifyJWT(token string, pub *rsa.PublicKey) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errNotJWT
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
}

var errNotJWT = errors.New("not a compact JWT")

// jwksKeys reads a JWKS document into public keys by kid.
func jwksKeys(t *testing.T, doc []byte) map[string]*rsa.PublicKey {
	t.Helper()
	var set struct {
		Keys []struct{ Kid, N, E string }
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("JWKS %s: %v", doc, err)
	}
	out := make(map[string]*rsa.PublicKey, len(set.Keys))
	for _, k := range set.Keys {
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil {
			t.Fatalf("JWK encoding: %v %v", err1, err2)
		}
		out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	return out
}

// introspect asks testApp about a token with testClient's credentials.
func (f *fixture) introspect(t *testing.T, token string) map[string]any {
	t.Helper()
	status, _, body := f.post(t, "/oauth2/introspect/"+testApp, basicHeader(testClient, testSecret), url.Values{"token": {token}})
	if status != http.StatusOK {
		t.Fatalf("introspect: %d %s", status, body)
	}
	var resp map[string]any
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestTokenQuirksDefaults pins the documented token, the one every quirk departs from:
// it verifies with the served JWKS and with the Go accessors, which agree.
func TestTokenQuirksDefaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	if q, err := f.emu.TokenQuirks(testApp); err != nil || !reflect.DeepEqual(q, TokenQuirks{}) {
		t.Fatalf("default quirks %+v, %v", q, err)
	}
	got := f.issue(t, "read")
	if got.header["kid"] != f.emu.KeyID() || got.header["alg"] != "RS256" {
		t.Errorf("header %v, KeyID %q", got.header, f.emu.KeyID())
	}
	if err := verifyJWT(got.token, f.emu.PublicKey()); err != nil {
		t.Errorf("does not verify with PublicKey: %v", err)
	}
	status, _, served := f.get(t, "/oauth2/keys/"+testApp)
	if status != http.StatusOK || !bytes.Equal(served, f.emu.JWKS()) {
		t.Errorf("JWKS() %s differs from the keys endpoint's %d %s", f.emu.JWKS(), status, served)
	}
	keys := jwksKeys(t, f.emu.JWKS())
	if pub := keys[f.emu.KeyID()]; pub == nil || !pub.Equal(f.emu.PublicKey()) || len(keys) != 1 {
		t.Errorf("JWKS() keys %v", keys)
	}
	for k, v := range map[string]any{
		"iss": f.srv.URL + "/" + testApp + "/", "aud": testClient, "sub": testUUID, "scope": "read",
		"exp": float64(f.clock.Now().Unix() + DefaultExpiresIn),
	} {
		if got.claims[k] != v {
			t.Errorf("claim %s = %v, want %v", k, got.claims[k], v)
		}
	}
	if got.answer["scope"] != "read" {
		t.Errorf("answer scope %v", got.answer["scope"])
	}
}

func TestTokenQuirkWidenScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, ask, wantAnswer, wantClaim string
	}{
		{"", "read", "read write rotate", "read write rotate"},
		{WidenInBoth, "read", "read write rotate", "read write rotate"},
		{WidenInAnswer, "read", "read write rotate", "read"},
		{WidenInClaim, "read", "read", "read write rotate"},
		// A scope already granted is not repeated.
		{WidenInBoth, "write read", "write read rotate", "write read rotate"},
		// Without a scope asked the default grant (all the app's) is widened.
		{WidenInBoth, "", "all read write rotate", "all read write rotate"},
	}
	for _, tc := range tests {
		t.Run(tc.in+"/"+tc.ask, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) {
				withUserMgmt(c)
				withQuirks(TokenQuirks{WidenScope: []string{"write", "rotate"}, WidenScopeIn: tc.in})(c)
			})
			got := f.issue(t, tc.ask)
			if got.answer["scope"] != tc.wantAnswer {
				t.Errorf("answer scope %q, want %q", got.answer["scope"], tc.wantAnswer)
			}
			if got.claims["scope"] != tc.wantClaim {
				t.Errorf("claim scope %q, want %q", got.claims["scope"], tc.wantClaim)
			}
			if err := verifyJWT(got.token, f.emu.PublicKey()); err != nil {
				t.Errorf("widened token does not verify: %v", err)
			}
			// The tenant knows the token by its claim: introspection says it, and the
			// management APIs honour it ("write" allows ChangeUserPassword).
			if in := f.introspect(t, got.token); in["scope"] != tc.wantClaim {
				t.Errorf("introspection scope %v, want %q", in["scope"], tc.wantClaim)
			}
			if tc.ask == "read" {
				_, _, ans := f.manage(t, http.MethodPost, "/UserMgmt/ChangeUserPassword", got.token, changeBody(testSecret, newPass1))
				if want := tc.in != WidenInAnswer; ans.Success != want {
					t.Errorf("change with claim %q: success %v, want %v (%s)", tc.wantClaim, ans.Success, want, ans.message())
				}
			}
		})
	}
}

func TestTokenQuirkEmptyScopeAsAll(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	// The default, documented: no scope asked gets every scope the client may have.
	if got := f.issue(t, ""); got.answer["scope"] != "all read write" || got.claims["scope"] != "all read write" {
		t.Errorf("default empty request: answer %v, claim %v", got.answer["scope"], got.claims["scope"])
	}
	if err := f.emu.SetTokenQuirks(testApp, TokenQuirks{EmptyScopeAsAll: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.issue(t, ""); got.answer["scope"] != "all" || got.claims["scope"] != "all" {
		t.Errorf("empty request as all: answer %v, claim %v", got.answer["scope"], got.claims["scope"])
	}
	// A scope asked is granted as asked.
	if got := f.issue(t, "read"); got.answer["scope"] != "read" || got.claims["scope"] != "read" {
		t.Errorf("asked read: answer %v, claim %v", got.answer["scope"], got.claims["scope"])
	}
	// Even a client limited to "read" is told "all", whatever "all" means at the tenant.
	form := url.Values{"grant_type": {"client_credentials"}}
	status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(limitedClient, limitedSecret), form)
	if status != http.StatusOK || !strings.Contains(string(body), `"scope":"all"`) {
		t.Errorf("limited client, no scope: %d %s", status, body)
	}
	// Widening still applies.
	if err := f.emu.SetTokenQuirks(testApp, TokenQuirks{EmptyScopeAsAll: true, WidenScope: []string{"rotate"}}); err != nil {
		t.Fatal(err)
	}
	if got := f.issue(t, ""); got.answer["scope"] != "all rotate" || got.claims["scope"] != "all rotate" {
		t.Errorf("empty as all, widened: answer %v, claim %v", got.answer["scope"], got.claims["scope"])
	}
}

func TestTokenQuirkUnknownKey(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{UnknownKeyOwnKid, UnknownKeyRealKid} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, withQuirks(TokenQuirks{UnknownKey: mode}))
			got := f.issue(t, "read")
			unknown, err := f.emu.UnknownPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			status, _, doc := f.get(t, "/oauth2/keys/"+testApp)
			if status != http.StatusOK {
				t.Fatalf("keys: %d %s", status, doc)
			}
			keys := jwksKeys(t, doc)
			for kid, pub := range keys {
				if pub.Equal(unknown) || kid == keyID(unknown) {
					t.Fatal("the JWKS publishes the unknown key")
				}
				if verifyJWT(got.token, pub) == nil {
					t.Errorf("token verifies with published key %s", kid)
				}
			}
			kid, _ := got.header["kid"].(string)
			switch mode {
			case UnknownKeyOwnKid:
				if kid != keyID(unknown) || keys[kid] != nil {
					t.Errorf("kid %q: want the unknown key's %q, absent from the JWKS", kid, keyID(unknown))
				}
			case UnknownKeyRealKid:
				if kid != f.emu.KeyID() || keys[kid] == nil {
					t.Errorf("kid %q: want the published %q", kid, f.emu.KeyID())
				}
			}
			// Otherwise a perfectly good token, signed by the other key.
			if err := verifyJWT(got.token, unknown); err != nil {
				t.Errorf("does not verify with the unknown key: %v", err)
			}
			if got.claims["iss"] != f.srv.URL+"/"+testApp+"/" || got.claims["aud"] != testClient || got.claims["scope"] != "read" {
				t.Errorf("claims %v", got.claims)
			}
			// Back to the default: signed by the published key again.
			if err := f.emu.SetTokenQuirks(testApp, TokenQuirks{}); err != nil {
				t.Fatal(err)
			}
			if err := verifyJWT(f.issue(t, "").token, f.emu.PublicKey()); err != nil {
				t.Errorf("after clearing the quirk: %v", err)
			}
		})
	}
}

func TestUnknownSigningKeyConfig(t *testing.T) {
	t.Parallel()
	signing := testKey(t)
	other := testKey(t)
	cfg := testConfig()
	cfg.SigningKey, cfg.UnknownSigningKey = signing, other
	cfg.Apps[0].TokenQuirks = TokenQuirks{UnknownKey: UnknownKeyOwnKid}
	emu, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := emu.UnknownPublicKey(); err != nil || !pub.Equal(&other.PublicKey) {
		t.Errorf("UnknownPublicKey is not Config.UnknownSigningKey: %v", err)
	}
	cfg.UnknownSigningKey = signing
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "must differ") {
		t.Errorf("unknown key equal to the signing key: %v", err)
	}
}

func testKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	e, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	return e.key
}

func TestTokenQuirkIssuer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	discovered := func() any {
		_, _, body := f.get(t, "/"+testApp+"/.well-known/openid-configuration")
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		return doc["issuer"]
	}
	tenantIss := f.srv.URL + "/" + testApp + "/"
	tests := []struct {
		name string
		q    TokenQuirks
		want string
	}{
		{"default", TokenQuirks{}, tenantIss},
		{"no trailing slash", TokenQuirks{IssuerNoTrailingSlash: true}, strings.TrimSuffix(tenantIss, "/")},
		{"wrong issuer", TokenQuirks{Issuer: "https://evil.example/" + testApp + "/"}, "https://evil.example/" + testApp + "/"},
		{"wrong issuer without slash", TokenQuirks{Issuer: "https://evil.example/x/", IssuerNoTrailingSlash: true}, "https://evil.example/x"},
	}
	for _, tc := range tests {
		if err := f.emu.SetTokenQuirks(testApp, tc.q); err != nil {
			t.Fatal(err)
		}
		got := f.issue(t, "")
		if got.claims["iss"] != tc.want {
			t.Errorf("%s: iss %v, want %s", tc.name, got.claims["iss"], tc.want)
		}
		if err := verifyJWT(got.token, f.emu.PublicKey()); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if in := f.introspect(t, got.token); in["iss"] != tc.want {
			t.Errorf("%s: introspection iss %v", tc.name, in["iss"])
		}
		// Discovery keeps the tenant's own spelling.
		if iss := discovered(); iss != tenantIss {
			t.Errorf("%s: discovery issuer %v, want %s", tc.name, iss, tenantIss)
		}
	}
}

func TestTokenQuirkAudienceAndSubject(t *testing.T) {
	t.Parallel()
	const otherUUID = "7d1e3a5c-0000-4000-8000-000000000001"
	f := newFixture(t, withQuirks(TokenQuirks{Audience: "svc-other@example.cyberark.cloud", Subject: otherUUID}))
	got := f.issue(t, "read")
	if got.claims["aud"] != "svc-other@example.cyberark.cloud" || got.claims["sub"] != otherUUID {
		t.Errorf("aud %v, sub %v", got.claims["aud"], got.claims["sub"])
	}
	// unique_name still names the client, as the tenant knows who it gave the token to.
	if got.claims["unique_name"] != testClient {
		t.Errorf("unique_name %v", got.claims["unique_name"])
	}
	if err := verifyJWT(got.token, f.emu.PublicKey()); err != nil {
		t.Error(err)
	}
	in := f.introspect(t, got.token)
	if in["active"] != true || in["aud"] != "svc-other@example.cyberark.cloud" || in["sub"] != otherUUID || in["client_id"] != testClient {
		t.Errorf("introspection %v", in)
	}
	// Only the audience.
	if err := f.emu.SetTokenQuirks(testApp, TokenQuirks{Audience: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := f.issue(t, ""); got.claims["aud"] != "x" || got.claims["sub"] != testUUID {
		t.Errorf("aud only: %v", got.claims)
	}
}

func TestTokenQuirkExpOffsetAndOmitClaims(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) {
		withUserMgmt(c)
		withQuirks(TokenQuirks{ExpOffset: -DefaultExpiresIn})(c)
	})
	now := f.clock.Now().Unix()
	got := f.issue(t, "all")
	if got.answer["expires_in"] != float64(DefaultExpiresIn) || got.claims["exp"] != float64(now) {
		t.Errorf("expires_in %v, exp %v (now %d)", got.answer["expires_in"], got.claims["exp"], now)
	}
	// Born expired: the tenant enforces the claim.
	if in := f.introspect(t, got.token); in["active"] != false {
		t.Errorf("introspection of a token born expired: %v", in)
	}
	if _, _, ans := f.manage(t, http.MethodPost, "/UserMgmt/ChangeUserPassword", got.token, changeBody(testSecret, newPass1)); ans.Success {
		t.Error("a token born expired changed a password")
	}

	if err := f.emu.SetTokenQuirks(testApp, TokenQuirks{OmitClaims: []string{"exp", "aud", "scope"}}); err != nil {
		t.Fatal(err)
	}
	got = f.issue(t, "read")
	for _, c := range []string{"exp", "aud", "scope"} {
		if _, ok := got.claims[c]; ok {
			t.Errorf("claim %s not omitted", c)
		}
	}
	if got.claims["iss"] == nil || got.claims["sub"] != testUUID || got.answer["scope"] != "read" {
		t.Errorf("claims %v, answer %v", got.claims, got.answer)
	}
	if err := verifyJWT(got.token, f.emu.PublicKey()); err != nil {
		t.Error(err)
	}
}

func TestTokenQuirkOpaqueToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) {
		withUserMgmt(c)
		withQuirks(TokenQuirks{OpaqueToken: true, WidenScope: []string{"write"}})(c)
	})
	got := f.issue(t, "read")
	if got.token == "" || strings.Contains(got.token, ".") || got.claims != nil {
		t.Fatalf("token %q looks like a JWT", got.token)
	}
	if got.answer["scope"] != "read write" || got.answer["token_type"] != "Bearer" || got.answer["expires_in"] != float64(DefaultExpiresIn) {
		t.Errorf("answer %v", got.answer)
	}
	if second := f.issue(t, "read"); second.token == got.token {
		t.Error("two opaque tokens are equal")
	}
	if issued := f.emu.Issued(); len(issued) != 2 || issued[0] != got.token {
		t.Errorf("Issued %d tokens", len(issued))
	}
	// The tenant knows it: introspection and the management APIs accept it.
	if in := f.introspect(t, got.token); in["active"] != true || in["scope"] != "read write" {
		t.Errorf("introspection %v", in)
	}
	if _, _, ans := f.manage(t, http.MethodPost, "/UserMgmt/ChangeUserPassword", got.token, changeBody(testSecret, newPass1)); !ans.Success {
		t.Errorf("change with an opaque token: %s", ans.message())
	}
}

// TestKeysAndDiscoveryNotFound plays a tenant whose keys or discovery document cannot
// be found, with the existing faults.
func TestKeysAndDiscoveryNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	discovery := "/" + testApp + "/.well-known/openid-configuration"
	for _, tc := range []struct{ endpoint, path string }{{"keys", "/oauth2/keys/" + testApp}, {"discovery", discovery}} {
		status, body := f.control(t, http.MethodPost, "/_emulator/faults", `{"endpoint":"`+tc.endpoint+`","status":404}`)
		if status != http.StatusOK {
			t.Fatalf("queue: %d %s", status, body)
		}
		for range 2 { // until cleared
			status, hdr, body := f.get(t, tc.path)
			if status != http.StatusNotFound || string(body) != oauthBody("invalid_request", "not found") ||
				hdr.Get("Content-Type") != "application/json" {
				t.Errorf("%s: %d %s %s", tc.endpoint, status, hdr.Get("Content-Type"), body)
			}
		}
		// Tokens are still issued, and verify with the key the tenant no longer serves.
		if err := verifyJWT(f.issue(t, "").token, f.emu.PublicKey()); err != nil {
			t.Errorf("%s: %v", tc.endpoint, err)
		}
		f.emu.ClearFaults()
		if status, _, body := f.get(t, tc.path); status != http.StatusOK {
			t.Errorf("%s after clearing: %d %s", tc.endpoint, status, body)
		}
	}
	// An empty key set, also a fault.
	f.emu.AddFaults(Fault{Endpoint: "keys", Times: 1, Body: `{"keys":[]}`})
	if status, hdr, body := f.get(t, "/oauth2/keys/"+testApp); status != 200 || string(body) != `{"keys":[]}` || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("empty JWKS: %d %s", status, body)
	}
}

func TestControlTokenQuirks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	if status, body := f.control(t, http.MethodGet, "/_emulator/token_quirks?app_id=vaultapp", ""); status != 200 || string(body) != `{}` {
		t.Errorf("default: %d %s", status, body)
	}
	const set = `{"widen_scope":["rotate"],"widen_scope_in":"claim","empty_scope_as_all":true,"unknown_key":"real_kid",` +
		`"issuer":"https://evil.example/","issuer_no_trailing_slash":true,"audience":"a","subject":"s",` +
		`"exp_offset":-60,"omit_claims":["jti"],"opaque_token":true}`
	status, body := f.control(t, http.MethodPost, "/_Emulator/Token_Quirks/", `{"app_id":"VaultApp","quirks":`+set+`}`)
	if status != 200 || string(body) != set {
		t.Fatalf("set: %d %s\nwant %s", status, body, set)
	}
	want := TokenQuirks{
		WidenScope: []string{"rotate"}, WidenScopeIn: WidenInClaim, EmptyScopeAsAll: true, UnknownKey: UnknownKeyRealKid,
		Issuer: "https://evil.example/", IssuerNoTrailingSlash: true, Audience: "a", Subject: "s",
		ExpOffset: -60, OmitClaims: []string{"jti"}, OpaqueToken: true,
	}
	if q, _ := f.emu.TokenQuirks(testApp); !reflect.DeepEqual(q, want) {
		t.Errorf("TokenQuirks %+v", q)
	}
	if status, body := f.control(t, http.MethodGet, "/_emulator/token_quirks?app_id="+testApp, ""); status != 200 || string(body) != set {
		t.Errorf("get: %d %s", status, body)
	}
	// Reset keeps them, like the other run-time configuration.
	f.emu.Reset()
	if q, _ := f.emu.TokenQuirks(testApp); !reflect.DeepEqual(q, want) {
		t.Errorf("after Reset %+v", q)
	}
	// Other apps are untouched.
	if q, _ := f.emu.TokenQuirks(overrideApp); !reflect.DeepEqual(q, TokenQuirks{}) {
		t.Errorf("other app %+v", q)
	}
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"nope","quirks":{}}`, 404},
		{http.MethodGet, "/_emulator/token_quirks?app_id=nope", "", 404},
		{http.MethodGet, "/_emulator/token_quirks", "", 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp"}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"quirks":{}}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp","quirks":{"widen":["x"]}}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp","quirks":{"unknown_key":"yes"}}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp","quirks":{"widen_scope_in":"header"}}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp","quirks":{"omit_claims":["kid"]}}`, 400},
		{http.MethodPost, "/_emulator/token_quirks", `{"app_id":"VaultApp","quirks":{"widen_scope":["a b"]}}`, 400},
		{http.MethodDelete, "/_emulator/token_quirks", "", 405},
	} {
		if status, body := f.control(t, tc.method, tc.path, tc.body); status != tc.status {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, status, body, tc.status)
		}
	}
	// A refused change leaves the quirks as they were; {} restores the defaults.
	if q, _ := f.emu.TokenQuirks(testApp); !reflect.DeepEqual(q, want) {
		t.Errorf("after refused changes %+v", q)
	}
	if status, body := f.control(t, http.MethodPost, "/_emulator/token_quirks", `{"app_id":"vaultapp","quirks":{}}`); status != 200 || string(body) != `{}` {
		t.Errorf("restore: %d %s", status, body)
	}
	got := f.issue(t, "")
	if got.claims["scope"] != "all read write" || got.header["kid"] != f.emu.KeyID() || verifyJWT(got.token, f.emu.PublicKey()) != nil {
		t.Errorf("after restoring: %v %v", got.header, got.claims)
	}
}

func TestTokenQuirksConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "quirks.json")
	const doc = `{"apps":[{"id":"A","scopes":["all"],"clients":[{"id":"c","secret":"s"}],
	  "token_quirks":{"widen_scope":["rotate"],"widen_scope_in":"answer","issuer_no_trailing_slash":true,"unknown_key":"own_kid"}}]}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := TokenQuirks{WidenScope: []string{"rotate"}, WidenScopeIn: WidenInAnswer, IssuerNoTrailingSlash: true, UnknownKey: UnknownKeyOwnKid}
	if !reflect.DeepEqual(cfg.Apps[0].TokenQuirks, want) {
		t.Errorf("loaded %+v", cfg.Apps[0].TokenQuirks)
	}
	emu, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The emulator keeps its own copy.
	cfg.Apps[0].TokenQuirks.WidenScope[0] = "changed"
	if q, _ := emu.TokenQuirks("a"); !reflect.DeepEqual(q, want) {
		t.Errorf("quirks alias the config: %+v", q)
	}
	if _, err := emu.TokenQuirks("nope"); err == nil {
		t.Error("TokenQuirks of an unknown app: no error")
	}
	if err := emu.SetTokenQuirks("nope", TokenQuirks{}); err == nil {
		t.Error("SetTokenQuirks of an unknown app: no error")
	}
	for _, bad := range []TokenQuirks{
		{WidenScope: []string{""}}, {WidenScopeIn: "x"}, {UnknownKey: "x"}, {OmitClaims: []string{"nbf"}},
	} {
		c := testConfig()
		c.Apps[0].TokenQuirks = bad
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), "token_quirks") {
			t.Errorf("New with %+v: %v", bad, err)
		}
		if err := emu.SetTokenQuirks("A", bad); err == nil {
			t.Errorf("SetTokenQuirks with %+v: no error", bad)
		}
	}
	if q, _ := emu.TokenQuirks("A"); !reflect.DeepEqual(q, want) {
		t.Errorf("refused SetTokenQuirks changed the quirks: %+v", q)
	}
}
