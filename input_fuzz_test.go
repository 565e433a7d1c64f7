package cyberark

import (
	"context"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// fuzzEngine is one backend for a fuzzing process; every input gets a fresh storage.
type fuzzEngine struct {
	b      *backend
	logs   *syncBuffer
	fields []string // the config path's field names
	// base is a stored config, for inputs that update one.
	base *logical.StorageEntry
}

func newFuzzEngine(tb testing.TB) *fuzzEngine {
	tb.Helper()
	logs := &syncBuffer{}
	b := newTestBackend(tb, &logical.InmemStorage{}, logs)
	tb.Cleanup(func() { b.Cleanup(context.Background()) })
	base, err := logical.StorageEntryJSON(configPath, &cyberarkConfig{
		TenantURL: "https://abc1234.id.cyberark.cloud", AppID: testAppID, ClientID: testClientID,
		ClientSecret: testClientSecret, Scopes: []string{"read"}, ClientAuth: clientAuthBasic,
		RequestTimeout: defaultRequestTimeout, TotalTimeout: defaultTotalTimeout, MaxRetries: defaultMaxRetries,
	})
	if err != nil {
		tb.Fatal(err)
	}
	fe := &fuzzEngine{b: b, logs: logs, base: base}
	for field := range pathConfig(fe.b).Fields {
		fe.fields = append(fe.fields, field)
	}
	return fe
}

// request sends a request as Vault's router does, existence check first.
func (fe *fuzzEngine) request(s logical.Storage, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	return routeRequest(fe.b, s, op, path, data)
}

// fuzzConfigFields are the config fields FuzzConfigWrite fills, in the order of its
// arguments and of the bits of its present mask.
var fuzzConfigFields = []string{"tenant_url", "app_id", "client_id", "client_secret", "scopes", "token_url", "revoke_url", "ca_cert"}

// fuzzScopesAsList is the bit of the present mask that sends scopes as a list.
const fuzzScopesAsList = 1 << 8

// FuzzConfigWrite writes fuzzed text into the config's fields, creating a config or
// updating a stored one, without verify_connection. Whatever the input: no panic, and
// either a 400 that names a field with storage unchanged, or a stored config that
// passes the same validation again. No error or log line quotes the client secret.
func FuzzConfigWrite(f *testing.F) {
	fe := newFuzzEngine(f)
	const allFields = 0xff
	f.Add(false, uint16(allFields), "https://abc1234.id.cyberark.cloud", testAppID, testClientID, testClientSecret, "read,write", "", "", "")
	f.Add(true, uint16(1<<4), "", "", "", "", "read write", "", "", "")
	f.Add(true, uint16(1<<3), "", "", "", "N3w-secret", "", "", "", "")
	f.Add(true, uint16(1<<0|1<<3), "https://tenant.example@evil.example", "", "", testClientSecret, "", "", "", "")
	f.Add(false, uint16(0b1110_1110), "", "", testClientID, testClientSecret, "a", "http://[::1]:8200/token?x=1", "http://localhost/revoke", "")
	f.Add(false, uint16(allFields|fuzzScopesAsList), "http://[::ffff:127.0.0.1]", "..", "svc\u202e@x", "S\x00ecret", "read,,read", "https://[fe80::1%25eth0]/t", "https://t/%2e%2e/r", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")

	f.Fuzz(func(t *testing.T, update bool, present uint16, tenantURL, appID, clientID, clientSecret, scopes, tokenURL, revokeURL, caCert string) {
		values := []string{tenantURL, appID, clientID, clientSecret, scopes, tokenURL, revokeURL, caCert}
		data := map[string]any{"verify_connection": false}
		for i, field := range fuzzConfigFields {
			if present&(1<<i) != 0 {
				data[field] = values[i]
			}
		}
		if _, ok := data["scopes"]; ok && present&fuzzScopesAsList != 0 {
			data["scopes"] = []any{scopes, values[(present>>9)%8]}
		}
		s := &logical.InmemStorage{}
		if update {
			if err := s.Put(context.Background(), fe.base); err != nil {
				t.Fatal(err)
			}
		}
		fe.b.cache.resetAll()
		fe.logs.reset()
		before := snapshotStorage(t, s)

		resp, err := fe.request(s, logical.UpdateOperation, configPath, data)
		if err != nil {
			t.Fatalf("an internal error, not a 400: %s", redactedFor(err.Error(), clientSecret))
		}
		given, _ := data["client_secret"].(string)
		leaks := func(text string) bool {
			return quotesSecret(text, given, func(secret string) string {
				data["client_secret"] = secret
				defer func() { data["client_secret"] = given }()
				fe.b.cache.resetAll()
				fe.logs.reset()
				s := &logical.InmemStorage{}
				if update {
					_ = s.Put(context.Background(), fe.base)
				}
				resp, err := fe.request(s, logical.UpdateOperation, configPath, data)
				if err != nil {
					return err.Error()
				}
				if resp != nil && resp.IsError() {
					return resp.Error().Error() + "\n" + fe.logs.String()
				}
				return fe.logs.String()
			})
		}

		if resp != nil && resp.IsError() {
			msg := resp.Error().Error()
			if code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil); code != 400 {
				t.Fatalf("status %d, want 400", code)
			}
			if !fe.namesField(msg) {
				t.Fatalf("the 400 names no field: %s", redactedFor(msg, clientSecret))
			}
			if len(msg) > 16<<10 {
				t.Fatalf("a %d-byte error message", len(msg))
			}
			if changes := storageChanges(before, snapshotStorage(t, s)); len(changes) > 0 {
				t.Fatalf("a refused write changed storage: %v", changes)
			}
			if leaks(msg + "\n" + fe.logs.String()) {
				t.Fatal("the error or the log quotes the client secret")
			}
			return
		}
		if resp != nil {
			t.Fatalf("a config write answered %s", describeResult(resp, nil))
		}
		if leaks(fe.logs.String()) {
			t.Fatal("the log quotes the client secret")
		}
		cfg, err := readConfig(context.Background(), s)
		if err != nil || cfg == nil {
			t.Fatalf("an accepted write stored no config: %v", err)
		}
		assertStoredConfigValid(t, cfg, data)
		read, err := fe.request(s, logical.ReadOperation, configPath, nil)
		if err != nil || read == nil || read.IsError() {
			t.Fatalf("reading the stored config: %s", describeResult(read, err))
		}
		if secret, ok := read.Data["client_secret"]; ok {
			t.Fatalf("a config read returns client_secret (%T)", secret)
		}
	})
}

// assertStoredConfigValid checks a stored config by the same rules its write was
// checked by, and that each given text was stored as given.
func assertStoredConfigValid(t *testing.T, cfg *cyberarkConfig, data map[string]any) {
	t.Helper()
	if problems := cfg.validate(configInput{}); len(problems) > 0 {
		t.Fatalf("the stored config fails validation: %s", redactedFor(strings.Join(problems, "; "), cfg.ClientSecret))
	}
	for _, u := range []struct {
		field, value string
		query        bool
	}{{"tenant_url", cfg.TenantURL, false}, {"token_url", cfg.TokenURL, true}, {"revoke_url", cfg.RevokeURL, true}} {
		if u.value == "" {
			continue
		}
		if err := checkEndpointURL(u.value, u.query); err != nil {
			t.Fatalf("stored %s fails checkEndpointURL: %v", u.field, err)
		}
	}
	if cfg.AppID != "" {
		if err := checkAppID(cfg.AppID); err != nil {
			t.Fatalf("stored app_id fails checkAppID: %v", err)
		}
	}
	if err := checkText(cfg.ClientID, maxClientIDLength); err != nil || cfg.ClientID == "" {
		t.Fatalf("stored client_id fails checkText: %v", err)
	}
	if err := checkText(cfg.ClientSecret, maxClientSecretLength); err != nil || cfg.ClientSecret == "" || strings.TrimSpace(cfg.ClientSecret) != cfg.ClientSecret {
		t.Fatalf("stored client_secret fails checkText: %v", err)
	}
	if err := checkScopes(cfg.Scopes); err != nil {
		t.Fatalf("stored scopes fail checkScopes: %v", err)
	}
	if cfg.CACert != "" {
		if err := checkCABundle(cfg.CACert); err != nil {
			t.Fatalf("stored ca_cert fails checkCABundle: %v", err)
		}
	}
	stored := map[string]string{
		"tenant_url": cfg.TenantURL, "app_id": cfg.AppID, "client_id": cfg.ClientID, "client_secret": cfg.ClientSecret,
		"token_url": cfg.TokenURL, "revoke_url": cfg.RevokeURL, "ca_cert": cfg.CACert,
	}
	for field, got := range stored {
		given, ok := data[field].(string)
		if field == "tenant_url" {
			given = strings.TrimRight(given, "/")
		}
		if ok && got != given {
			t.Fatalf("%s was stored other than given", field)
		}
	}
}

// namesField says whether a 400 names a config field as the one to fix.
func (fe *fuzzEngine) namesField(msg string) bool {
	if strings.Contains(msg, "unknown field") {
		return true
	}
	for _, field := range fe.fields {
		if strings.Contains(msg, field+": ") || strings.Contains(msg, `field "`+field+`"`) {
			return true
		}
	}
	return false
}

// quotesSecret says whether text quotes secret. Text may hold the secret's characters
// by chance (a field that holds the same text, a word of a message), so a finding is
// checked by sending the same request with the secret's letters changed (ROT13, which
// keeps every character's class): only a text that follows the change quotes it.
func quotesSecret(text, secret string, again func(secret string) string) bool {
	if len(secret) < 8 || !strings.Contains(text, secret) {
		return false
	}
	other := rot13(secret)
	if other == secret {
		return false // no letters to change: cannot tell quoting from chance
	}
	return strings.Contains(again(other), other)
}

func rot13(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return 'a' + (r-'a'+13)%26
		case r >= 'A' && r <= 'Z':
			return 'A' + (r-'A'+13)%26
		}
		return r
	}, s)
}

// redactedFor is msg with secret blanked and cut short, for a failure message.
func redactedFor(msg, secret string) string {
	if secret != "" {
		msg = strings.ReplaceAll(msg, secret, "<client secret>")
	}
	return redacted(msg)
}

// canonicalRoleName is the role name rule written out independently of the product's
// pattern: the one spelling a name may have.
var canonicalRoleName = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,126}[a-z0-9])?$`)

// FuzzRoleName: checkRoleName accepts exactly the canonical names, and a role write
// through the backend stores exactly those, under exactly their name.
func FuzzRoleName(f *testing.F) {
	fe := newFuzzEngine(f)
	for _, n := range badRoleNames {
		f.Add(n.role)
	}
	for _, good := range []string{"a", "0", "a-b_c.d", "a..b", strings.Repeat("z", maxRoleNameLength)} {
		f.Add(good)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := canonicalRoleName.MatchString(name)
		if byHand := canonicalByHand(name); byHand != want {
			t.Fatalf("the reference pattern and the hand-written rule disagree on %q", name)
		}
		err := checkRoleName(name)
		if (err == nil) != want {
			t.Fatalf("checkRoleName(%q) = %v, want accepted: %t", name, err, want)
		}
		if err != nil && len(err.Error()) > 1024 {
			t.Fatalf("a %d-byte error", len(err.Error()))
		}
		if name == "" || strings.Contains(name, "/") {
			return // another path, or none
		}
		s := &logical.InmemStorage{}
		fe.b.cache.resetAll()
		resp, rerr := fe.request(s, logical.CreateOperation, "roles/"+name, map[string]any{"ttl": 60})
		keys := slices.Sorted(maps.Keys(snapshotStorage(t, s)))
		switch {
		case rerr != nil:
			t.Fatalf("roles/%q: an internal error: %v", name, rerr)
		case want && (resp != nil || !slices.Equal(keys, []string{rolePrefix + name})):
			t.Fatalf("roles/%q: %s, stored %q", name, describeResult(resp, nil), keys)
		case !want && (resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "name: ") || len(keys) != 0):
			t.Fatalf("roles/%q: %s, stored %q; want a 400 naming name", name, describeResult(resp, nil), keys)
		}
	})
}

// canonicalByHand is canonicalRoleName without a regular expression.
func canonicalByHand(name string) bool {
	if len(name) == 0 || len(name) > maxRoleNameLength {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		inner := c == '-' || c == '_' || c == '.'
		if !alnum && (!inner || i == 0 || i == len(name)-1) {
			return false
		}
	}
	return true
}
