package emulator

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestPlatformToken: /oauth2/platformtoken gives every service user of the tenant a
// token with client_secret_post, without an app in the path, whose issuer and audience
// are the platform application's, signed with the key that application publishes.
func TestPlatformToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, who := range []struct{ id, secret string }{{testClient, testSecret}, {limitedClient, limitedSecret}} {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {who.id}, "client_secret": {who.secret}}
		status, _, body := f.post(t, "/oauth2/platformtoken", "", form)
		if status != http.StatusOK {
			t.Fatalf("%s: status %d, body %s", who.id, status, body)
		}
		var resp struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		claims := f.verifiedClaims(t, resp.AccessToken, "/oauth2/keys/"+PlatformAppID)
		if claims["aud"] != PlatformAppID || claims["iss"] != f.srv.URL+"/"+PlatformAppID+"/" || claims["unique_name"] != who.id {
			t.Errorf("%s: claims iss=%v aud=%v unique_name=%v, want the platform's issuer and audience", who.id, claims["iss"], claims["aud"], claims["unique_name"])
		}
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {testClient}, "client_secret": {"wrong"}}
	if status, _, body := f.post(t, "/OAuth2/PlatformToken/", "", form); status != http.StatusBadRequest || !strings.Contains(string(body), "access_denied") {
		t.Errorf("a wrong secret: status %d, body %s; want 400 access_denied", status, body)
	}
}

// TestRequiredParams: an app that insists on grant parameters refuses a grant that
// lacks one or gives another value with RFC 8707's invalid_target.
func TestRequiredParams(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) {
		c.Apps[0].RequiredParams = map[string]string{"resource": "https://api.example.com/"}
	})
	for _, tc := range []struct {
		name   string
		form   url.Values
		status int
	}{
		{"missing", url.Values{}, http.StatusBadRequest},
		{"another value", url.Values{"resource": {"https://evil.example/"}}, http.StatusBadRequest},
		{"as required", url.Values{"resource": {"https://api.example.com/"}}, http.StatusOK},
	} {
		tc.form.Set("grant_type", "client_credentials")
		status, _, body := f.post(t, "/oauth2/token/"+testApp, basicHeader(testClient, testSecret), tc.form)
		if status != tc.status {
			t.Errorf("%s: status %d, body %s; want %d", tc.name, status, body, tc.status)
		}
		if tc.status != http.StatusOK && string(body) != oauthBody("invalid_target", "the requested resource or audience is not allowed") {
			t.Errorf("%s: body %s", tc.name, body)
		}
	}
}

// verifiedClaims checks token against the key set at keysPath and returns its claims.
func (f *fixture) verifiedClaims(t *testing.T, token, keysPath string) map[string]any {
	t.Helper()
	status, _, doc := f.get(t, keysPath)
	if status != http.StatusOK {
		t.Fatalf("GET %s: status %d", keysPath, status)
	}
	verified := false
	for _, key := range jwksKeys(t, doc) {
		verified = verified || verifyJWT(token, key) == nil
	}
	if !verified {
		t.Fatalf("the token does not verify against %s", keysPath)
	}
	return decodeClaims(t, token)
}
