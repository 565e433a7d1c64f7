package cyberark

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/errutil"
	"github.com/hashicorp/vault/sdk/helper/jsonutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// TestUnknownFieldsErrorIsBounded: however many unknown names a request carries, and
// however long, the 400 quotes a bounded sample of them.
func TestUnknownFieldsErrorIsBounded(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data[strings.Repeat("k", 1<<20)] = "x"
	for i := range 100 {
		data["unknown_"+strings.Repeat("u", i)] = "x"
	}
	resp, err := e.request(t, logical.CreateOperation, "config", data)
	assertBadRequest(t, resp, err, "unknown field")
	if n := len(resp.Error().Error()); n > 4096 {
		t.Errorf("the error message is %d bytes long", n)
	}
	if !strings.Contains(resp.Error().Error(), "more") {
		t.Error("the error does not say more unknown fields were left out")
	}
}

// vaultRequest sends a request as Vault's router does: a write first runs the path's
// existence check, which picks create or update, and a user error there is a 400.
func (e *testEnv) vaultRequest(tb testing.TB, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	tb.Helper()
	return e.vaultRequestWith(tb, e.storage, op, path, data)
}

func (e *testEnv) vaultRequestWith(tb testing.TB, s logical.Storage, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	tb.Helper()
	return routeRequest(e.b, s, op, path, data)
}

// routeRequest sends a request as Vault's router does: a write runs the existence check
// first, which decides between create and update, and its user errors are 400s.
func routeRequest(b *backend, s logical.Storage, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	ctx := context.Background()
	req := &logical.Request{Operation: op, Path: path, Data: data, Storage: s, MountPoint: "cyberark/"}
	if op == logical.CreateOperation || op == logical.UpdateOperation {
		found, exists, err := b.HandleExistenceCheck(ctx, req)
		var user errutil.UserError
		switch {
		case errors.As(err, &user):
			return logical.ErrorResponse(user.Error()), nil
		case err != nil:
			return nil, err
		case found && exists:
			req.Operation = logical.UpdateOperation
		case found:
			req.Operation = logical.CreateOperation
		}
	}
	return b.HandleRequest(ctx, req)
}

// badInput is one request that must be refused: a 400 that names field, a message of at
// most 4 KiB that quotes no secret, no call to the tenant, and storage byte for byte as
// it was.
type badInput struct {
	name  string
	path  string            // the table's when empty
	op    logical.Operation // the table's when empty
	data  map[string]any    // merged over the table's base; a dropField value removes a field
	field string
}

// dropField removes a field of the table's base from a request.
type dropField struct{}

// badInputTable runs bad inputs against one engine, each from the same state.
type badInputTable struct {
	e    *testEnv
	op   logical.Operation
	path string
	// base is what every request carries besides the case's own fields.
	base map[string]any
	// reset puts back what storage does not hold (the tenant's secret) after a case
	// that was wrongly accepted.
	reset func(t *testing.T)
}

// run tries every case and returns how many it tried.
func (tbl badInputTable) run(t *testing.T, cases []badInput) int {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tbl.check(t, tc) })
	}
	return len(cases)
}

func (tbl badInputTable) check(t *testing.T, tc badInput) {
	e := tbl.e
	op, path := cmp.Or(tc.op, tbl.op), cmp.Or(tc.path, tbl.path)
	data := maps.Clone(tbl.base)
	if data == nil {
		data = map[string]any{}
	}
	for k, v := range tc.data {
		if _, ok := v.(dropField); ok {
			delete(data, k)
		} else {
			data[k] = v
		}
	}
	if len(data) == 0 {
		data = nil
	}
	before := snapshotStorage(t, e.storage)
	grants := e.emu.Stats().TokenRequests
	defer func() {
		if len(storageChanges(before, snapshotStorage(t, e.storage))) > 0 {
			restoreStorage(t, e, before)
			if tbl.reset != nil {
				tbl.reset(t)
			}
		}
	}()

	resp, err := runNoPanic(t, func() (*logical.Response, error) { return e.vaultRequest(t, op, path, data) })
	var problems []string
	if p := refusalProblem(resp, err, tc.field); p != "" {
		problems = append(problems, p)
	}
	if resp != nil && resp.IsError() {
		msg := resp.Error().Error()
		if len(msg) > 4096 {
			problems = append(problems, fmt.Sprintf("the error message is %d bytes long: it must not grow with the input", len(msg)))
		}
		for _, secret := range secretsIn(data) {
			if strings.Contains(msg, secret) {
				problems = append(problems, "the error message quotes the client secret")
			}
		}
	}
	if changes := storageChanges(before, snapshotStorage(t, e.storage)); len(changes) > 0 {
		problems = append(problems, fmt.Sprintf("storage changed: %v", changes))
	}
	if n := e.emu.Stats().TokenRequests - grants; n != 0 {
		problems = append(problems, fmt.Sprintf("the input reached the tenant (%d token requests)", n))
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// refusalProblem is "" for a 400 error response that names field, and otherwise says
// what came instead, without secrets.
func refusalProblem(resp *logical.Response, err error, field string) string {
	switch {
	case err != nil:
		return "got " + describeResult(resp, err) + ", want a 400 naming " + field
	case resp == nil || !resp.IsError():
		return "accepted: " + describeResult(resp, err)
	}
	if code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil); code != 400 {
		return fmt.Sprintf("status %d, want 400", code)
	}
	if msg := resp.Error().Error(); !strings.Contains(msg, field) {
		return fmt.Sprintf("the error %s does not name %q", redacted(msg), field)
	}
	return ""
}

// secretsIn is every client secret a request carries, long enough that finding it in a
// message is not chance.
func secretsIn(data map[string]any) []string {
	out := []string{testClientSecret}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			if len(v) >= 8 {
				out = append(out, v)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(data["client_secret"])
	return out
}

// badChar is a character no identifier, URL, scope token, role name or secret may hold.
type badChar struct{ name, s string }

var badChars = []badChar{
	{"NUL", "\x00"}, {"BEL", "\a"}, {"tab", "\t"}, {"newline", "\n"}, {"carriage return", "\r"},
	{"ESC", "\x1b"}, {"DEL", "\x7f"}, {"C1 NEL U+0085", "\u0085"}, {"C1 CSI U+009B", "\u009b"},
	{"zero-width space U+200B", "\u200b"}, {"left-to-right mark U+200E", "\u200e"},
	{"right-to-left override U+202E", "\u202e"}, {"left-to-right isolate U+2066", "\u2066"},
	{"byte order mark U+FEFF", "\ufeff"}, {"combining grapheme joiner U+034F", "\u034f"},
	{"hangul filler U+3164", "\u3164"}, {"no-break space U+00A0", "\u00a0"},
	// Bytes that are not UTF-8, as a Go caller can put them in Request.Data, and as
	// Vault's JSON decoding hands them on: U+FFFD.
	{"invalid byte 0xFF", "\xff"}, {"truncated UTF-8 sequence", "\xe2\x80"},
	{"overlong encoding of a slash", "\xc0\xaf"}, {"UTF-16 surrogate half", "\xed\xa0\x80"},
	{"replacement character U+FFFD", "\ufffd"},
}

// textAttacks are bad values for a text field whose good value is valid: each bad
// character inside it and at its end (except those in allowed, and at the end for a
// field whose values Vault trims), a megabyte, a list and a map.
func textAttacks(field, valid, allowed string, trimmed bool) []badInput {
	var out []badInput
	mid := len(valid) / 2
	for _, c := range badChars {
		if allowed != "" && strings.Contains(allowed, c.s) {
			continue
		}
		out = append(out, badInput{name: field + "/" + c.name + " inside", data: map[string]any{field: valid[:mid] + c.s + valid[mid:]}, field: field})
		if !trimmed {
			out = append(out, badInput{name: field + "/" + c.name + " at the end", data: map[string]any{field: valid + c.s}, field: field})
		}
	}
	return append(out,
		badInput{name: field + "/1 MiB", data: map[string]any{field: valid + strings.Repeat("a", 1<<20)}, field: field},
		badInput{name: field + "/a list", data: map[string]any{field: []any{valid, valid}}, field: field},
		badInput{name: field + "/a map", data: map[string]any{field: map[string]any{field: valid}}, field: field},
		badInput{name: field + "/a list of a megabyte", data: map[string]any{field: []any{strings.Repeat("a", 1<<20)}}, field: field},
	)
}

// valueAttacks are cases that set field to each of values.
func valueAttacks(field string, values ...any) []badInput {
	out := make([]badInput, 0, len(values))
	for _, v := range values {
		name := fmt.Sprintf("%s/%T %.40q", field, v, fmt.Sprint(v))
		out = append(out, badInput{name: name, data: map[string]any{field: v}, field: field})
	}
	return out
}

// wrongTypes are values no field of a scalar type takes.
var wrongTypes = []any{[]any{"1"}, map[string]any{"k": "v"}}

func intAttacks(field string, outOfRange ...any) []badInput {
	values := append([]any{"three", "1.5", json.Number("1.5"), json.Number("1e3"), json.Number("9223372036854775808"), strings.Repeat("9", 1<<20)}, wrongTypes...)
	return valueAttacks(field, append(values, outOfRange...)...)
}

func durationAttacks(field string, outOfRange ...any) []badInput {
	values := append([]any{"soon", "10 s", "1x", "-5s", -1, json.Number("-1"), json.Number("1.5"), "9999999999999999999", "106752d",
		strings.Repeat("9", 1<<20)}, wrongTypes...)
	return valueAttacks(field, append(values, outOfRange...)...)
}

func boolAttacks(field string) []badInput {
	return valueAttacks(field, append([]any{"maybe", "yes", "2", "-1", json.Number("2"), "truee", strings.Repeat("t", 1<<20)}, wrongTypes...)...)
}

// scopeAttacks are bad values for a list of scopes.
func scopeAttacks(field string) []badInput {
	out := []badInput{
		{name: field + "/a duplicate", data: map[string]any{field: "read,read"}},
		{name: field + "/a duplicate in a list", data: map[string]any{field: []any{"read", "read"}}},
		{name: field + "/a duplicate across separators", data: map[string]any{field: "read write,read"}},
		{name: field + "/an empty element", data: map[string]any{field: "read,,write"}},
		{name: field + "/a trailing comma", data: map[string]any{field: "read,"}},
		{name: field + "/a leading comma", data: map[string]any{field: ",read"}},
		{name: field + "/only a comma", data: map[string]any{field: ","}},
		{name: field + "/a blank element", data: map[string]any{field: "read, ,write"}},
		{name: field + "/only spaces", data: map[string]any{field: "   "}},
		{name: field + "/an empty string in a list", data: map[string]any{field: []any{"read", ""}}},
		{name: field + "/tab between scopes", data: map[string]any{field: "read\twrite"}},
		{name: field + "/newline between scopes", data: map[string]any{field: "read\nwrite"}},
		{name: field + "/no-break space between scopes", data: map[string]any{field: "read\u00a0write"}},
		{name: field + "/65 scopes", data: map[string]any{field: manyScopes(maxScopes + 1)}},
		{name: field + "/a 257-character scope", data: map[string]any{field: strings.Repeat("s", maxScopeLength+1)}},
		{name: field + "/a double quote", data: map[string]any{field: `re"ad`}},
		{name: field + "/a backslash", data: map[string]any{field: `re\ad`}},
		{name: field + "/not ASCII", data: map[string]any{field: "l\u00e9se"}},
		{name: field + "/a nested list", data: map[string]any{field: []any{[]any{"read"}}}},
		{name: field + "/a map in a list", data: map[string]any{field: []any{map[string]any{"read": true}}}},
		{name: field + "/a map", data: map[string]any{field: map[string]any{"read": true}}},
	}
	for i := range out {
		out[i].field = field
	}
	// Vault trims white space around list elements, so a bad character at an end may
	// never reach the engine: put them inside.
	return append(out, textAttacks(field, "read", "", true)...)
}

// urlAttacks are bad values for an endpoint URL field.
func urlAttacks(field string, queryAllowed bool) []badInput {
	bad := []struct{ name, url string }{
		{"user info before the host", "https://evil.example@tenant.example"},
		{"the tenant as user info", "https://tenant.example@evil.example"},
		{"user and password", "https://user:pass@tenant.example"},
		{"empty user info", "https://@tenant.example"},
		{"backslash before @", `https://tenant.example\@evil.example`},
		{"backslash in the host", `https://evil.example\.tenant.example`},
		{"backslash in the path", `https://tenant.example/oauth2\..\token`},
		{"dot-dot segment", "https://tenant.example/a/../oauth2/token"},
		{"dot segment", "https://tenant.example/./oauth2/token"},
		{"trailing dot-dot", "https://tenant.example/oauth2/.."},
		{"encoded dot-dot", "https://tenant.example/%2e%2e/oauth2/token"},
		{"upper-case encoded dot-dot", "https://tenant.example/%2E%2E/oauth2/token"},
		{"half-encoded dot-dot", "https://tenant.example/.%2e/oauth2/token"},
		{"other half-encoded dot-dot", "https://tenant.example/%2e./oauth2/token"},
		{"encoded dot", "https://tenant.example/%2e/oauth2/token"},
		{"encoded slash", "https://tenant.example/a%2f..%2foauth2/token"},
		{"encoded backslash", "https://tenant.example/a%5C..%5Coauth2/token"},
		{"fragment", "https://tenant.example/oauth2/token#frag"},
		{"empty fragment", "https://tenant.example/oauth2/token#"},
		{"http off loopback", "http://tenant.example"},
		{"http to a name that starts like 127.0.0.1", "http://127.0.0.1.evil.com"},
		{"http to a name that starts like localhost", "http://localhost.evil.com"},
		{"http to IPv4-mapped loopback", "http://[::ffff:127.0.0.1]"},
		{"http to link-local with a zone", "http://[fe80::1%25eth0]"},
		{"https to link-local with a zone", "https://[fe80::1%25eth0]"},
		{"https to loopback with a zone", "https://[::1%25lo]"},
		{"http to a decimal IP", "http://2130706433"},
		{"http to a hexadecimal IP", "http://0x7f000001"},
		{"http to a short IP", "http://127.1"},
		{"http to an octal IP", "http://0177.0.0.1"},
		{"http to the unspecified address", "http://0.0.0.0:8200"},
		{"http to the IPv6 unspecified address", "http://[::]:8200"},
		{"port 0", "https://tenant.example:0"},
		{"port 65536", "https://tenant.example:65536"},
		{"port 99999", "https://tenant.example:99999"},
		{"port -1", "https://tenant.example:-1"},
		{"empty port", "https://tenant.example:"},
		{"empty port on IPv6", "https://[::1]:"},
		{"non-numeric port", "https://tenant.example:https"},
		{"port with letters", "https://tenant.example:443abc"},
		{"IPv6 without brackets", "https://::1"},
		{"unclosed IPv6 bracket", "https://[::1"},
		{"look-alike host, Cyrillic a", "https://cyber\u0430rk.example"},
		{"fullwidth host", "https://\uff54enant.example"},
		{"host with a sub-delimiter", "https://tenant.example!evil.example"},
		{"empty label", "https://tenant..example"},
		{"63+1-character label", "https://" + strings.Repeat("l", 64) + ".example"},
		{"no scheme", "tenant.example"},
		{"scheme-relative", "//tenant.example"},
		{"opaque", "https:tenant.example"},
		{"no host", "https:///oauth2/token"},
		{"only a port", "https://:443"},
		{"ftp", "ftp://tenant.example"},
		{"file", "file:///etc/passwd"},
		{"javascript", "javascript:alert(1)"},
		{"data", "data:text/plain,x"},
		{"leading space", " https://tenant.example"},
		{"space in the host", "https://ten ant.example"},
		{"2049 characters", "https://tenant.example/" + strings.Repeat("p", maxURLLength)},
	}
	if !queryAllowed {
		bad = append(bad,
			struct{ name, url string }{"query", "https://tenant.example?x=1"},
			struct{ name, url string }{"empty query", "https://tenant.example?"},
			struct{ name, url string }{"query after a path", "https://tenant.example/x?y"})
	}
	out := make([]badInput, 0, len(bad))
	for _, b := range bad {
		out = append(out, badInput{name: field + "/" + b.name, data: map[string]any{field: b.url}, field: field})
	}
	return append(out, textAttacks(field, "https://tenant.example/oauth2", "", false)...)
}

// cronAttacks are rotation schedules that are not five-field cron expressions, or never
// fire.
func cronAttacks() []badInput {
	out := valueAttacks("rotation_schedule",
		"every day", "* * * *", "* * * * * *", "61 * * * *", "0 25 * * *", "0 0 32 * *", "0 0 * 13 *",
		"0 0 * * 8", "@reboot", "@every 1s", "@hourly", "TZ=Mars/Olympus 0 * * * *", "*/0 * * * *",
		"0-70 * * * *", "a b c d e", "0 0 1-0 * *", strings.Repeat("* ", 129), strings.Repeat("x", 1<<20),
		[]any{"0 * * * *"}, map[string]any{"k": "v"})
	for _, s := range []string{"0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"} {
		out = append(out, badInput{name: "rotation_schedule/never fires " + s, data: map[string]any{"rotation_schedule": s}, field: "rotation_schedule"})
	}
	out = append(out, textAttacks("rotation_schedule", "0 3 * * *", "", false)...)
	// The SDK's parser takes a time zone and runs the schedule in UTC all the same;
	// "TZ=UTC" with nothing after it makes it panic.
	out = append(out, valueAttacks("rotation_schedule", "TZ=Asia/Tokyo 0 3 * * *", "CRON_TZ=Asia/Tokyo 0 3 * * *",
		"CRON_TZ=UTC 0 3 * * *", "TZ=UTC", "CRON_TZ=UTC", "TZ=", " TZ=Europe/Paris 0 3 * * *", "cron_tz=UTC 0 3 * * *")...)
	return out
}

// unknownFieldAttacks are names a path does not define.
func unknownFieldAttacks(names ...string) []badInput {
	names = append(names, "client_secert", "CLIENT_SECRET", "tenant-url", "tenant_url ", "\u200btenant_url", "",
		"scope\x00", "\xff", strings.Repeat("k", 1<<20))
	out := make([]badInput, 0, len(names))
	for _, n := range names {
		shown := n
		if len(shown) > 40 {
			shown = shown[:40]
		}
		out = append(out, badInput{name: fmt.Sprintf("unknown field %q", shown), data: map[string]any{n: "x"}, field: "unknown field"})
	}
	return out
}

// configAttacks are bad inputs for every field of config, as a create or an update.
func configAttacks(e *testEnv) []badInput {
	var out []badInput
	for _, f := range []string{"tenant_url", "app_id", "client_id", "client_secret", "client_auth"} {
		out = append(out, badInput{name: f + "/empty", data: map[string]any{f: ""}, field: f})
	}
	out = append(out, urlAttacks("tenant_url", false)...)
	out = append(out, urlAttacks("token_url", true)...)
	out = append(out, urlAttacks("revoke_url", true)...)
	out = append(out, textAttacks("app_id", testAppID, "", false)...)
	out = append(out, valueAttacks("app_id", ".", "..", "a/b", `a\b`, "a?b", "a#b", "a%2fb", "a b")...)
	out = append(out, textAttacks("client_id", testClientID, "", false)...)
	out = append(out, valueAttacks("client_id", "a:b", " "+testClientID, testClientID+" ", strings.Repeat("c", maxClientIDLength+1))...)
	out = append(out, textAttacks("client_secret", testClientSecret, "", false)...)
	out = append(out, valueAttacks("client_secret", " "+testClientSecret, testClientSecret+"\n", strings.Repeat("S", maxClientSecretLength+1))...)
	out = append(out, textAttacks("client_auth", clientAuthBasic, "", false)...)
	out = append(out, valueAttacks("client_auth", "BASIC", "Basic", "jwt", "none", "private_key_jwt")...)
	// PEM carries line breaks and may indent; other characters are refused.
	out = append(out, textAttacks("ca_cert", e.caPEM, "\t\n\r", false)...)
	out = append(out, valueAttacks("ca_cert", "hello", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", strings.Repeat("A", maxCACertBytes+1))...)
	out = append(out, textAttacks("password_policy", "my-policy", "", false)...)
	out = append(out, textAttacks("rotation_policy", "my-policy", "", false)...)
	out = append(out, scopeAttacks("scopes")...)
	out = append(out, scopeAttacks("rotation_scopes")...)
	out = append(out, intAttacks("max_retries", -1, 11, 1<<31, json.Number("-1"), json.Number("11"))...)
	out = append(out, intAttacks("password_length", 15, 65, -1, 1<<40, json.Number("8"))...)
	out = append(out, badInput{name: "password_length/0", data: map[string]any{"password_length": 0}, field: "password_length"})
	out = append(out, durationAttacks("request_timeout", 0, "0s", "0.5s", 301, "5m1s", "1h", "1d")...)
	out = append(out, durationAttacks("total_timeout", 0, "0s", 86, "90s", "2m")...)
	out = append(out, durationAttacks("rotation_period", 1, 4, "4s")...)
	out = append(out, durationAttacks("rotation_window")...)
	// Not zero, but the framework keeps whole seconds and would store 0: rotation off,
	// or a window of the whole period.
	out = append(out, valueAttacks("rotation_period", "300ms", "0.5", 0.5, float32(0.25), "0.5s", "999ms", "1ns", "-300ms", -0.5,
		json.Number("0.5"), 300*time.Millisecond)...)
	for _, w := range []any{"500ms", 0.5, "0.999s", "-1ms", "0.5"} {
		out = append(out, badInput{name: fmt.Sprintf("rotation_window/%T %v", w, w), data: map[string]any{"rotation_window": w, "rotation_schedule": "0 * * * *"}, field: "rotation_window"})
	}
	out = append(out,
		badInput{name: "rotation_period/with rotation_schedule", data: map[string]any{"rotation_period": "1h", "rotation_schedule": "0 * * * *"}, field: "rotation_"},
		badInput{name: "rotation_window/without rotation_schedule", data: map[string]any{"rotation_window": "1h"}, field: "rotation_window"},
		badInput{name: "rotation_window/with rotation_period", data: map[string]any{"rotation_window": "1h", "rotation_period": "1h"}, field: "rotation_window"},
		badInput{name: "rotation_window/1s", data: map[string]any{"rotation_window": "1s", "rotation_schedule": "0 * * * *"}, field: "rotation_window"},
		badInput{name: "rotation_window/59m", data: map[string]any{"rotation_window": "59m", "rotation_schedule": "0 * * * *"}, field: "rotation_window"},
	)
	out = append(out, cronAttacks()...)
	for _, f := range []string{"revoke_tokens", "verify_connection", "disable_automated_rotation"} {
		out = append(out, boolAttacks(f)...)
	}
	out = append(out, unknownFieldAttacks("scope", "name", "role", "ttl", "password", "client_secret_set", "token_endpoint")...)
	return out
}

// TestBadInputConfigCreate: every bad value of every config field, in a create.
func TestBadInputConfigCreate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	base := e.configData()
	base["verify_connection"] = false // an input wrongly accepted is then stored, and seen
	n := badInputTable{e: e, op: logical.CreateOperation, path: "config", base: base}.run(t, append(configAttacks(e),
		badInput{name: "tenant_url/missing", data: map[string]any{"tenant_url": dropField{}}, field: "tenant_url"},
		badInput{name: "app_id/missing", data: map[string]any{"app_id": dropField{}}, field: "app_id"},
		badInput{name: "client_id/missing", data: map[string]any{"client_id": dropField{}}, field: "client_id"},
		badInput{name: "client_secret/missing", data: map[string]any{"client_secret": dropField{}}, field: "client_secret"},
	))
	t.Logf("%d bad inputs tried on config (create)", n)
}

// TestBadInputConfigUpdate: every bad value of every config field, in an update of a
// stored config. The secret goes with each, so only the value itself can be refused.
func TestBadInputConfigUpdate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read"})
	base := map[string]any{"client_secret": testClientSecret, "verify_connection": false}
	n := badInputTable{e: e, op: logical.UpdateOperation, path: "config", base: base}.run(t, configAttacks(e))
	t.Logf("%d bad inputs tried on config (update)", n)
}

// TestBadInputConfigJSONBody: Vault decodes a request body as JSON, which turns bytes
// that are not UTF-8 into U+FFFD; every text field refuses what that makes.
func TestBadInputConfigJSONBody(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	var cases []badInput
	for _, f := range []string{"tenant_url", "token_url", "revoke_url", "app_id", "client_id", "client_secret", "client_auth", "scopes", "rotation_scopes", "password_policy", "ca_cert"} {
		var data map[string]any
		body := `{"` + f + `": "Value` + "\xff\xfe" + `value"}`
		if err := jsonutil.DecodeJSON([]byte(body), &data); err != nil {
			t.Fatal(err)
		}
		if v, _ := data[f].(string); !strings.ContainsRune(v, '\ufffd') {
			t.Fatalf("Vault's JSON decoding left %q without U+FFFD", v)
		}
		cases = append(cases, badInput{name: f, data: data, field: f})
	}
	base := e.configData()
	base["verify_connection"] = false
	n := badInputTable{e: e, op: logical.CreateOperation, path: "config", base: base}.run(t, cases)
	t.Logf("%d bad inputs tried on config (JSON bodies)", n)
}

// TestBadInputRotateRoot: config/rotate-root takes no fields.
func TestBadInputRotateRoot(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	var cases []badInput
	for _, data := range []map[string]any{
		{"client_secret": "Chosen-By-Caller-1"}, {"password_length": 8}, {"password_policy": "weak"},
		{"force": true}, {"verify_connection": false}, {"": ""}, {"x\xff": 1}, {strings.Repeat("k", 1<<20): "x"},
	} {
		for k := range data {
			cases = append(cases, badInput{name: fmt.Sprintf("unknown field %.40q", k), data: data, field: "unknown field"})
		}
	}
	tbl := badInputTable{e: e, op: logical.UpdateOperation, path: "config/rotate-root", reset: func(t *testing.T) {
		// A wrongly accepted case rotated the secret at the tenant; storage was put back.
		if err := e.emu.SetClientSecret(testAppID, testClientID, testClientSecret); err != nil {
			t.Fatal(err)
		}
	}}
	t.Logf("%d bad inputs tried on config/rotate-root", tbl.run(t, cases))
}

// badRoleNames are every spelling of a role name that is not the one canonical form.
var badRoleNames = []struct{ name, role string }{
	{"upper case", "ADMIN"}, {"mixed case", "Admin"}, {"one upper-case letter", "admiN"},
	{"leading hyphen", "-admin"}, {"trailing hyphen", "admin-"}, {"leading underscore", "_admin"},
	{"trailing underscore", "admin_"}, {"leading dot", ".admin"}, {"trailing dot", "admin."},
	{"dot", "."}, {"dot dot", ".."}, {"encoded dot dot", "%2e%2e"}, {"percent-encoded letter", "ad%6din"},
	{"Cyrillic a", "\u0430dmin"}, {"dotless i", "adm\u0131n"}, {"fullwidth a", "\uff41dmin"},
	{"Kelvin sign", "\u212aey"}, {"long s", "\u017fecret"}, {"soft hyphen", "ad\u00admin"},
	{"zero-width space", "admin\u200b"}, {"right-to-left override", "\u202enimda"},
	{"byte order mark", "\ufeffadmin"}, {"no-break space", "admin\u00a0"}, {"space", "ad min"},
	{"trailing newline", "admin\n"}, {"NUL", "admin\x00"}, {"C1 control", "admin\u0085"},
	{"invalid UTF-8", "admin\xff"}, {"U+FFFD", "admin\ufffd"}, {"colon", "ad:min"}, {"plus", "ad+min"},
	{"at", "admin@x"}, {"star", "*"}, {"glob", "admin*"},
	{"129 characters", strings.Repeat("a", maxRoleNameLength+1)},
}

// TestBadInputRoles: every non-canonical role name on every role operation, and every
// bad value of every role field.
func TestBadInputRoles(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/admin", map[string]any{"scopes": "admin"})
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "allowed_scopes": "read,write"})
	var names []badInput
	for _, n := range badRoleNames {
		for _, op := range []logical.Operation{logical.CreateOperation, logical.ReadOperation, logical.DeleteOperation} {
			var data map[string]any
			if op == logical.CreateOperation {
				data = map[string]any{"scopes": "read"}
			}
			names = append(names, badInput{name: fmt.Sprintf("%s %s", op, n.name), op: op, path: "roles/" + n.role, data: data, field: "name"})
		}
	}
	count := badInputTable{e: e}.run(t, names)

	var fields []badInput
	for _, f := range []string{"scopes", "allowed_scopes"} {
		fields = append(fields, scopeAttacks(f)...)
	}
	fields = append(fields, textAttacks("app_id", "OtherApp", "", false)...)
	fields = append(fields, valueAttacks("app_id", ".", "..", "a/b", `a\b`, "a?b", "a#b", "a%2fb", "a b")...)
	fields = append(fields, durationAttacks("ttl")...)
	fields = append(fields, durationAttacks("reuse_min_remaining")...)
	fields = append(fields, valueAttacks("reuse_min_fraction", 0.95, -0.1, 1, "NaN", "Inf", "-Inf", "1e309", "half",
		json.Number("0.91"), "0x1p1", strings.Repeat("9", 1<<20), []any{0.5}, map[string]any{"k": 0.5})...)
	fields = append(fields, boolAttacks("revoke_tokens")...)
	fields = append(fields, boolAttacks("token_reuse")...)
	fields = append(fields,
		badInput{name: "allowed_scopes/not covering scopes", data: map[string]any{"scopes": "admin", "allowed_scopes": "read"}, field: "allowed_scopes"},
		badInput{name: "name/another in the body", data: map[string]any{"name": "admin"}, field: "name"},
		badInput{name: "name/another spelling in the body", data: map[string]any{"name": "R"}, field: "name"},
		badInput{name: "name/a number in the body", data: map[string]any{"name": 5}, field: "name"},
	)
	fields = append(fields, unknownFieldAttacks("scope", "role", "client_secret", "tenant_url", "ttl_seconds")...)
	for _, path := range []string{"roles/r", "roles/new"} {
		count += badInputTable{e: e, op: logical.CreateOperation, path: path}.run(t, fields)
	}
	t.Logf("%d bad inputs tried on roles/<name>", count)
}

// TestBadInputToken: every bad scope parameter, field and role name of a token read.
func TestBadInputToken(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data["scopes"] = "read"
	e.mustRequest(t, logical.CreateOperation, "config", data)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read", "allowed_scopes": "read,write"})
	e.emu.Reset()
	var cases []badInput
	cases = append(cases, scopeAttacks("scope")...)
	cases = append(cases, valueAttacks("scope", "admin", "read admin", "read,admin")...)
	count := 0
	for _, path := range []string{"token", "token/r"} {
		cases := append(cases, unknownFieldAttacks("scopes", "ttl", "client_secret", "app_id")...)
		if path == "token" {
			cases = append(cases, badInput{name: "role in the body", data: map[string]any{"role": "r"}, field: "unknown field"})
		} else {
			cases = append(cases, badInput{name: "another role in the body", data: map[string]any{"role": "admin"}, field: "role"})
		}
		count += badInputTable{e: e, op: logical.ReadOperation, path: path}.run(t, cases)
	}
	var names []badInput
	for _, n := range badRoleNames {
		names = append(names, badInput{name: n.name, path: "token/" + n.role, field: "role"})
	}
	count += badInputTable{e: e, op: logical.ReadOperation}.run(t, names)
	t.Logf("%d bad inputs tried on token and token/<role>", count)
}

// TestGoodInputAccepted: values at the edge of what is allowed are stored, so that the
// checks above refuse only what they should.
func TestGoodInputAccepted(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	configs := []map[string]any{
		{"tenant_url": "http://[::1]:8200"},
		{"tenant_url": "http://127.0.0.1:8200"},
		{"tenant_url": "http://127.255.0.1"},
		{"tenant_url": "http://localhost:8200"},
		{"tenant_url": "http://LOCALHOST:8200"},
		{"tenant_url": "https://[::1]"},
		{"tenant_url": "https://[2001:db8::1]:8443"},
		{"tenant_url": "https://abc1234.id.cyberark.cloud/"},
		{"tenant_url": "https://Tenant.Example:443"},
		{"tenant_url": "https://xn--80ak6aa92e.example"},
		{"tenant_url": "https://tenant.example/proxy/prefix"},
		{"tenant_url": "https://tenant_1.internal.example"},
		{"tenant_url": "https://tenant.example."},
		{"token_url": "https://tenant.example/oauth2/platformtoken?audience=x"},
		{"token_url": "https://tenant.example/a.b/..c/token"},
		{"revoke_url": "https://tenant.example/oauth2/revoke/VaultApp"},
		{"scopes": "read write"},
		{"scopes": "read, write"},
		{"scopes": []any{"read", " write "}},
		{"scopes": manyScopes(maxScopes)},
		{"scopes": strings.Repeat("s", maxScopeLength)},
		{"scopes": ""},
		{"app_id": "Vault.App-1_x"},
		{"app_id": strings.Repeat("a", maxAppIDLength)},
		{"client_id": "svc-\u00e9t\u00e9@tenant.example"},
		{"client_secret": "p\u00e4ss w\u00f6rd \u2603 with spaces inside"},
		{"client_secret": strings.Repeat("S", maxClientSecretLength)},
		{"ca_cert": "# The emulator's CA\n" + e.caPEM + "\n\n"},
		{"max_retries": 0}, {"max_retries": "10"},
		{"password_length": 16}, {"password_length": json.Number("64")},
		{"request_timeout": 1}, {"request_timeout": "5m"}, {"total_timeout": "85s"},
		{"rotation_period": "5s"}, {"rotation_period": 0},
		{"rotation_period": "0s"}, {"rotation_period": "0ms"}, {"rotation_period": 0.0}, {"rotation_period": json.Number("0")},
		{"rotation_period": 5.5}, {"rotation_period": "5.5s"}, {"rotation_period": 5 * time.Second},
		{"rotation_schedule": "0 3 * * *", "rotation_window": "0s"},
		{"rotation_schedule": "0 3 * * *", "rotation_window": 3600.5},
		{"rotation_schedule": "0 3 * * 1-5", "rotation_window": "1h"},
		{"rotation_schedule": "0 0 29 2 *"},
		{"revoke_tokens": "true"}, {"revoke_tokens": json.Number("0")},
	}
	for _, data := range configs {
		before := snapshotStorage(t, e.storage)
		data["verify_connection"] = false
		if _, ok := data["client_secret"]; !ok {
			data["client_secret"] = testClientSecret
		}
		resp, err := e.vaultRequest(t, logical.UpdateOperation, "config", data)
		if err != nil || resp != nil && resp.IsError() {
			delete(data, "client_secret")
			t.Errorf("config %.80v: %s", data, describeResult(resp, err))
		}
		restoreStorage(t, e, before)
	}
	roles := map[string]map[string]any{
		"a": nil, "0": nil, "a-b_c.d": nil, "a..b": nil, strings.Repeat("a", maxRoleNameLength): nil,
		"ttl0":      {"ttl": 0},
		"fraction":  {"reuse_min_fraction": 0.9, "token_reuse": true},
		"fraction0": {"reuse_min_fraction": json.Number("0"), "reuse_min_remaining": "0s"},
		"scopes":    {"scopes": "read write", "allowed_scopes": "read,write,admin"},
		"named":     {"name": "named", "app_id": "OtherApp"},
	}
	for name, data := range roles {
		resp, err := e.vaultRequest(t, logical.CreateOperation, "roles/"+name, data)
		if err != nil || resp != nil && resp.IsError() {
			t.Errorf("role %.20q %v: %s", name, data, describeResult(resp, err))
		}
	}
	for _, scope := range []any{"read", "read write", "write,read", []any{"admin"}, ""} {
		resp, err := e.vaultRequest(t, logical.ReadOperation, "token/scopes", map[string]any{"scope": scope})
		if err != nil || resp.IsError() {
			t.Errorf("token/scopes scope=%v: %s", scope, describeResult(resp, err))
		}
	}
}

// TestCheckFieldTypes: a mistyped field is named, with what it takes, and its value is
// never quoted.
func TestCheckFieldTypes(t *testing.T) {
	t.Parallel()
	b := newBackend()
	schema := pathConfig(b).Fields
	data := map[string]any{
		"client_secret":   []any{testClientSecret},
		"tenant_url":      map[string]any{"u": strings.Repeat("x", 1<<20)},
		"request_timeout": strings.Repeat("9", 1<<20),
		"max_retries":     "three",
		"revoke_tokens":   "maybe",
		"scopes":          map[string]any{"read": true},
		"app_id":          "fine",
		"unknown":         []any{"left to unknownFields"},
	}
	resp := checkFieldTypes(schema, data)
	if resp == nil || !resp.IsError() {
		t.Fatal("mistyped fields passed")
	}
	msg := resp.Error().Error()
	for _, f := range []string{"client_secret", "tenant_url", "request_timeout", "max_retries", "revoke_tokens", "scopes"} {
		if !strings.Contains(msg, f+": ") {
			t.Errorf("the message does not name %s", f)
		}
	}
	for _, f := range []string{"app_id", "unknown"} {
		if strings.Contains(msg, f) {
			t.Errorf("the message names %s, which is not mistyped", f)
		}
	}
	if strings.Contains(msg, testClientSecret) || len(msg) > 1024 {
		t.Errorf("the message quotes a value (%d bytes)", len(msg))
	}
	if resp := checkFieldTypes(schema, map[string]any{"app_id": "x", "max_retries": json.Number("3")}); resp != nil {
		t.Errorf("well-typed fields refused: %s", redacted(resp.Error().Error()))
	}
}

// TestCheckRotationSchedule is the check path_config.go is to make of rotation_schedule.
func TestCheckRotationSchedule(t *testing.T) {
	t.Parallel()
	now := newBackend().now()
	for _, good := range []string{"0 3 * * *", "*/5 * * * *", "0 0 29 2 *", "0 0 1 1 *"} {
		if err := checkRotationSchedule(good, now); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"0 0 30 2 *", "0 0 31 4 *", "0 3 * * *\n", "0 3 * * *\u00a0", "0\u200b 3 * * *", "every day",
		"@every 1s", strings.Repeat("5 ", 150)} {
		err := checkRotationSchedule(bad, now)
		if err == nil {
			t.Errorf("%.40q accepted", bad)
		} else if len(err.Error()) > 512 {
			t.Errorf("%.40q: a %d-byte message", bad, len(err.Error()))
		}
	}
	if err := checkRotationSchedule(strings.Repeat("x ", 1<<19), now); err == nil || len(err.Error()) > 512 {
		t.Errorf("a megabyte schedule: %v", err)
	}
}

// TestCheckRotationScheduleTimeZone: a time zone prefix is refused with a message that
// says the schedule runs in UTC and what to give instead, before the SDK's parser
// (which panics on "TZ=UTC") sees it.
func TestCheckRotationScheduleTimeZone(t *testing.T) {
	t.Parallel()
	now := newBackend().now()
	for _, spec := range []string{"TZ=Asia/Tokyo 0 3 * * *", "CRON_TZ=Asia/Tokyo 0 3 * * *", "TZ=UTC", "CRON_TZ=UTC",
		"TZ=", "CRON_TZ=Mars/Olympus 0 3 * * *", "  TZ=UTC 0 3 * * *", "tz=UTC 0 3 * * *", "Cron_Tz=UTC 0 3 * * *"} {
		t.Run(spec, func(t *testing.T) {
			err := runNoPanicErr(t, func() error { return checkRotationSchedule(spec, now) })
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range []string{"time zone prefixes", "runs in UTC", "five fields", "0 1 * * *"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%q does not say %q", err, want)
				}
			}
		})
	}
	// A field that merely holds "TZ" is the parser's to judge.
	if err := checkRotationSchedule("0 3 * * MON", now); err != nil {
		t.Error(err)
	}
}

// runNoPanicErr runs f and turns a panic into a test failure.
func runNoPanicErr(t *testing.T, f func() error) (err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("panic: %v", r)
		}
	}()
	return f()
}

// TestRotationDurationsAsGiven: a rotation_period or rotation_window that is not zero
// but that the framework would store as 0 is named, with what is allowed and the value
// as given; zero and whole seconds are judged by their value, and what does not parse
// is left to checkFieldTypes.
func TestRotationDurationsAsGiven(t *testing.T) {
	t.Parallel()
	b := newBackend()
	schema := pathConfig(b).Fields
	for _, tc := range []struct {
		name string
		raw  map[string]any
		want string // the whole problem list, "" for none
	}{
		{"300ms", map[string]any{"rotation_period": "300ms"}, "rotation_period: must be 0 (off) or at least 5s, got 300ms"},
		{"float 0.5", map[string]any{"rotation_period": 0.5}, "rotation_period: must be 0 (off) or at least 5s, got 0.5s"},
		{"float32 0.25", map[string]any{"rotation_period": float32(0.25)}, "rotation_period: must be 0 (off) or at least 5s, got 0.25s"},
		{"-300ms", map[string]any{"rotation_period": "-300ms"}, "rotation_period: must be 0 (off) or at least 5s, got -300ms"},
		{"-0.5", map[string]any{"rotation_period": -0.5}, "rotation_period: must be 0 (off) or at least 5s, got -0.5s"},
		{"1ns", map[string]any{"rotation_period": "1ns"}, "rotation_period: must be 0 (off) or at least 5s, got 1ns"},
		{"a time.Duration", map[string]any{"rotation_period": 300 * time.Millisecond}, "rotation_period: must be 0 (off) or at least 5s, got 300ms"},
		{"window 500ms", map[string]any{"rotation_window": "500ms"}, "rotation_window: must be 0 (the whole period) or at least 1h, as Vault's rotation manager requires, got 500ms"},
		{"both", map[string]any{"rotation_period": "1ms", "rotation_window": 0.1}, "rotation_period: must be 0 (off) or at least 5s, got 1ms; rotation_window: must be 0 (the whole period) or at least 1h, as Vault's rotation manager requires, got 0.1s"},
		// Judged by their value once whole seconds.
		{"4s", map[string]any{"rotation_period": "4s"}, "rotation_period: must be 0 (off) or at least 5s, got 4s"},
		{"1.5s", map[string]any{"rotation_period": "1.5s"}, "rotation_period: must be 0 (off) or at least 5s, got 1s"},
		{"5s", map[string]any{"rotation_period": "5s"}, ""},
		{"0", map[string]any{"rotation_period": 0, "rotation_window": "0s"}, ""},
		{"0.0", map[string]any{"rotation_period": 0.0, "rotation_window": json.Number("0")}, ""},
		{"empty string", map[string]any{"rotation_period": ""}, ""},
		{"string 0.5", map[string]any{"rotation_period": "0.5"}, ""},
		{"json 0.5", map[string]any{"rotation_period": json.Number("0.5")}, ""},
		{"absent", map[string]any{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &framework.FieldData{Raw: tc.raw, Schema: schema}
			if checkFieldTypes(schema, tc.raw) != nil {
				return // not a duration at all: checkFieldTypes answers
			}
			cfg := &cyberarkConfig{}
			copyGiven(d, cfg.fields())
			var got []string
			for _, p := range cfg.checkRotation(configInput{raw: tc.raw}) {
				if strings.Contains(p, ": must be 0") { // a window without a schedule is another rule
					got = append(got, p)
				}
			}
			if strings.Join(got, "; ") != tc.want {
				t.Errorf("got %q, want %q", strings.Join(got, "; "), tc.want)
			}
		})
	}
}
