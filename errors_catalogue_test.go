package cyberark

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// docs/errors.md describes the classes of error an operator has to tell apart to act,
// not every text in the code, so that rewording a message costs no catalogue entry.
// Each class is made by requests to the engine and the emulated tenant: the page's
// example is a message the code produced in this run, with the status Vault answers,
// and a class that no longer comes out with its status and shape fails here.

var updateCatalogue = flag.Bool("update", false, "rewrite the generated part of docs/errors.md")

// otherSecret is a password the tenant holds when the engine's secret is stale.
const otherSecret = "Changed-Elsewhere-42"

// An errorClass is made on the engine env builds (rotating when nil), with the tenant
// set up as the fields say, by sending op on path with data repeat+1 times, or by send;
// the last answer counts.
type errorClass struct {
	section      string
	status       int
	shape        string // how the message begins; "…" stands for any text
	about        string // cause and fix, in Markdown
	env          func(*testing.T) *testEnv
	tenantSecret string
	quirks       emulator.TokenQuirks
	fault        *emulator.Fault
	repeat       int
	op           logical.Operation
	path         string
	data         map[string]any
	send         func(*testing.T, *testEnv) (*logical.Response, error)
}

var errorClasses = []errorClass{
	{section: "Any write or token read", status: 400, shape: `unknown field(s) "scopes"; this path takes: …`,
		about: "A field the path does not define, usually a typo. It is refused rather than ignored so that a misspelt field never leaves the old value in place. Fix: correct the name.",
		op:    logical.ReadOperation, path: "token", data: map[string]any{"scopes": "read"}},
	{section: "Config writes: URLs", status: 400, shape: "tenant_url: must use https …",
		about: "`tenant_url`, `token_url` and `revoke_url` must be absolute https URLs (http only for loopback hosts) with a DNS name or IP address, and no user information, fragment, dot segments, encoded slashes, invisible characters or IPv6 zone; `tenant_url` takes no query. The message says which rule failed. Fix: write the URL as the admin portal shows it.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"tenant_url": "http://abc1234.id.cyberark.cloud", "client_secret": testClientSecret}},
	{section: "Config writes: other fields", status: 400, shape: "client_secret: must not begin or end with white space or a newline …",
		about: "Each problem starts with its field, and a write lists all of them, separated by `; `; nothing is stored. A value of the wrong type is refused alone, as `max_retries: must be a whole number`. A trailing newline usually comes from `echo`: write the file with `printf '%s'`. Ranges: `request_timeout` 1s-5m, `total_timeout` 1s-85s, `max_retries` 0-10, `password_length` 16-64, `max_failed_logins` 1-100, `failed_login_window` 1m-24h.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"client_secret": testClientSecret + "\n", "max_retries": 99}},
	{section: "Config writes: other fields", status: 400, shape: "client_secret: must be given again in the same write, because …",
		about: "The write moves where the secret or tokens go (`tenant_url`, `token_url`, `revoke_url`, `jwks_url`, `client_id`, `client_auth`, `ca_cert`, an `app_id` that moves an endpoint), so that a writer who cannot read the secret cannot send it elsewhere. Fix: include `client_secret` in the same write.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"client_id": "svc-other@tenant.example"}},
	{section: "Config writes: other fields", status: 400, shape: `scopes: "rotate" is a rotation, management or denied scope …`,
		about: "A config's `scopes`, a role's `scopes` or `allowed_scopes`, or a reader's `scope` names a scope of `rotation_scopes` or `denied_scopes` (default `all`), compared without case: a workload token with it could change the engine's own password. Fix: give workloads scopes that do not allow `UserMgmt` APIs.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"scopes": "read,rotate"}},
	{section: "Config writes: other fields", status: 400, shape: "scopes: is required while rotation_scopes is set: …",
		about: "A grant without a scope gets the tenant's default, which may include the rotation scope. A token read under a config stored so by an earlier release is refused the same way. Fix: set `scopes`.",
		env:   withoutRotation, op: logical.UpdateOperation, path: "config", data: map[string]any{"rotation_scopes": "rotate"}},
	{section: "Config writes: other fields", status: 400, shape: `password_policy: "missing" …`,
		about: "Vault could not generate passwords from the named policy, or they are too weak (under 95.3 bits, judged on 64 samples) or hold characters a secret must not. Checked again at each `config/rotate-root`. Fix: `vault read sys/policies/password/<name>`; lengthen the policy or widen its character sets.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"password_policy": "missing"}},
	{section: "Config writes: the verification grant", status: 400, shape: "verify_connection: the tenant refused a token request with these settings, nothing was stored: …",
		about: "A config write first asks the tenant for a token with the new settings (unless `verify_connection=false`); the tenant's answer follows. Fix: see [the tenant's refusals](tenant-setup.md#tenant-errors-and-their-fixes). A verification token that fails a check (see the 409s of token reads) is refused as `verify_connection: nothing was stored: …`.",
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"client_secret": otherSecret}},
	{section: "Config writes: the verification grant", status: 502, shape: "verify_connection: could not get a token from the tenant, nothing was stored (set verify_connection=false to store anyway): …",
		about: "The tenant could not be reached, failed, or answered something unusable; the cause follows, as under [what the tenant answered](#what-the-tenant-answered). Fix: check the URL, DNS, the proxy and `ca_cert` from the Vault servers. A rate limit is a 429, `verify_connection: the tenant is rate limiting token requests, …`: wait for its `Retry-After`.",
		fault: &emulator.Fault{Endpoint: "token", Status: 503},
		op:    logical.UpdateOperation, path: "config", data: map[string]any{"client_secret": testClientSecret}},
	{section: "Role writes", status: 400, shape: "allowed_scopes: the effective scopes […] (from the …) include …",
		about: "A role's fields contradict each other or the config: its scopes (or the config's) outside its `allowed_scopes`, `lease_free` without `token_reuse`, an `app_id` or `revoke_tokens` the config's `token_url` cannot serve. A role that became so after a config write is refused at token reads and warned about at role reads. Fix: as the message says.",
		op:    logical.CreateOperation, path: "roles/team", data: map[string]any{"scopes": "write", "allowed_scopes": "read"}},
	{section: "Role writes", status: 400, shape: "scope_ceiling: is required when scopes or allowed_scopes hold templates: …",
		about: "A role's `scopes` or `allowed_scopes` hold `{{identity...}}` templates, so whoever edits entity metadata would choose scopes; `scope_ceiling` bounds them. The same field is refused when a pattern is only `*` and `.`, matches a rotation, management or denied scope (`scope_ceiling: \"r*\" matches \"rotate\", …`), or leaves out a literal scope of the role. A template Vault cannot parse or this engine does not expand is refused under its own field (`scopes: template \"…\": …`). See [templated scopes](templated-scopes.md).",
		op:    logical.CreateOperation, path: "roles/team", data: map[string]any{"scopes": teamRead}},
	{section: "Token reads", status: 400, shape: "the engine is not configured: write cyberark/config first",
		about: "`config/rotate-root` answers `the engine is not configured: write the config first`. A role that does not exist gets `role: \"…\" does not exist`: check `vault list <mount>/roles`; names are never folded to lower case, so `token/Reader` is refused.",
		env:   func(t *testing.T) *testEnv { return newTestEnv(t) }, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 400, shape: `scope: "admin" is not allowed here; allowed scopes: […]`,
		about: "The reader's `scope` asks for a scope outside the role's `allowed_scopes` (the config's `scopes` on `token`). Nothing is sent to the tenant.",
		op:    logical.ReadOperation, path: "token", data: map[string]any{"scope": "admin"}},
	{section: "Token reads", status: 400, shape: `scopes: role "team": its scopes come from the reader's identity ({{identity...}} templates), and this token has no entity …`,
		about: "The role is [templated](templated-scopes.md) and the token has no entity to expand it from: a root token, or one made with `vault token create`. Nothing is sent to the tenant. Fix: read with a token from an auth method (userpass, OIDC, Kubernetes, AppRole…), whose logins Vault ties to an entity.",
		env:   templateEnv, send: readTeamAs("")},
	{section: "Token reads", status: 400, shape: `scopes: role "team": template "…" needs the metadata key "team", which the reader's entity does not have (or has empty); …`,
		about: "The reader's entity lacks what a template of the role reads: a metadata key, an alias on the named mount accessor, or a key of that alias's metadata. A value that holds a character a scope value may not (a space, a comma, `*`, a brace, a control character) is refused as `template …: … holds a character a scope value may not (allowed: …)`. Nothing is sent to the tenant. Fix: set the metadata on the entity (`vault write identity/entity/id/<id> metadata=team=…`).",
		env:   templateEnv, send: readTeamAs("ent-none")},
	{section: "Token reads", status: 400, shape: `scopes: role "team": "…", which template "…" expands to from the reader's identity, is outside scope_ceiling […]: metadata outside the ceiling is refused, …`,
		about: "The reader's identity expands a template of the role to a scope its `scope_ceiling` does not admit (a `*` of the ceiling never matches a `.`, so `team.payments.admin.read` is outside `team.*.read`). This is the ceiling at work: whoever edits entity metadata cannot widen a grant. Nothing is sent to the tenant. Fix: correct the entity's metadata, or, if the scope is meant, widen the ceiling.",
		env:   templateEnv, send: readTeamAs("ent-deeper")},
	{section: "Token reads", status: 400, shape: "getting a token from CyberArk Identity: tenant answered HTTP 400: …",
		about:        "The tenant refused the grant (an OAuth error, or a 4xx other than 408 and 429); its `error` and `error_description` follow. A redirect counts as one, `tenant answered HTTP 302: redirect to … (set token_url to the final URL)`: the engine never follows one, which would send the credentials elsewhere. A refusal is a 400, not a 5xx, so that Vault clients do not retry a failed login that counts towards locking the service user. Fix: see [the tenant's refusals](tenant-setup.md#tenant-errors-and-their-fixes).",
		tenantSecret: otherSecret, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 400, shape: "the tenant refused the engine's stored credentials … times since … (last: …). To keep the service user from being locked out, the engine makes no login attempt with them until …",
		about:        "The failed-login budget is spent: `max_failed_logins` refusals within `failed_login_window`. Token reads, revocations, settles and rotations get this at once, without a call to the tenant. Fix: find out why the tenant refuses and write the secret it accepts to `client_secret` (always verified, and it resets the count), or wait. See [the failed-login budget](rotation.md#the-failed-login-budget).",
		tenantSecret: otherSecret, repeat: defaultMaxFailedLogins, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 429, shape: "getting a token from CyberArk Identity: tenant answered HTTP 429…",
		about: "The tenant is rate limiting grants, after the engine's own retries. Vault clients retry a 429. Fix: spread the reads, or share grants with a role's `token_reuse`.",
		fault: &emulator.Fault{Endpoint: "token", Status: 429, RetryAfter: "7"}, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 409, shape: "the tenant granted scopes beyond those asked for: …",
		about:  "The tenant widened the grant; the token was never handed out, and was revoked where the tenant has a revocation endpoint (the message says whether it was) (`verify_scope=warn` hands such tokens out with a warning). A granted rotation or denied scope is refused as `the tenant granted the protected scope …` whatever `verify_scope` says. Fix: correct the application's scope settings at the tenant.",
		quirks: emulator.TokenQuirks{WidenScope: []string{"admin"}}, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 409, shape: "the tenant's token failed a check and was not handed out (…): token check: …",
		about:  "A check of `verify_tokens` refused the JWT; it names the part: `signature` (a key the tenant does not publish, or not RS256), `iss`, `aud` (set `token_audience` for an audience other than the client ID), `exp` (lifetime unlike `expires_in`), `sub` (another service user than the one pinned at the last verified write: write `client_secret` to pin it), `scope`, or a token that is not a JWT under `enforce`. The parenthesis says whether the token was revoked or could not be (no revocation endpoint, or the tenant failed the revocation: the log says which).",
		quirks: emulator.TokenQuirks{Audience: "someone-else"}, op: logical.ReadOperation, path: "token"},
	{section: "Token reads", status: 503, shape: "waited … for …; try again",
		about: "A read or revocation waited its whole `total_timeout` for a password change at the tenant, or for a login attempt left in the failed-login budget (no more grants are in flight than refusals are left). Fix: read again; if it recurs under load, share grants with `token_reuse`.",
		send: func(t *testing.T, e *testEnv) (resp *logical.Response, err error) {
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"total_timeout": "1s"})
			e.b.afterRotationStep = func(step string) {
				if step == "tenant_changed" {
					resp, err = e.request(t, logical.ReadOperation, "token", nil)
				}
			}
			e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
			return resp, err
		}},
	{section: "What the tenant answered", status: 502, shape: "getting a token from CyberArk Identity: tenant answered HTTP 503 …",
		about: "The tenant failed (408 or 5xx) on every attempt, an excerpt of its body following; or it answered 200 with something unusable: `a body that is not a JSON token response` (an HTML login page: check `token_url`, or `tenant_url` and `app_id`; a proxy may be answering), over 1 MiB, no `access_token`, an `expires_in` out of range. The same inner texts follow `verify_connection: …` and `root rotation: …`. Vault clients retry a 502.",
		fault: &emulator.Fault{Endpoint: "token", Status: 503}, op: logical.ReadOperation, path: "token"},
	{section: "What the tenant answered", status: 502, shape: "getting a token from CyberArk Identity: contacting tenant: …",
		about: "No HTTP answer: DNS (`no such host`), `connection refused`, TLS (`x509: certificate signed by unknown authority`: set `ca_cert`, or fix a proxy's interception) or the proxy (`proxyconnect tcp`). `no complete answer within the … request timeout` and `gave up after … attempt(s) in …` say that `request_timeout` or `total_timeout` ran out.",
		fault: &emulator.Fault{Endpoint: "token", DropConnection: true}, op: logical.ReadOperation, path: "token"},
	{section: "Root rotation (`config/rotate-root`)", status: 400, shape: "rotation needs rotation_scopes: …",
		about: "The config cannot rotate: it lacks `rotation_scopes`, or `tenant_url` (a `token_url` config). A scheduled rotation fails the same way and backs off. Fix: see [what root rotation needs](tenant-setup.md#what-root-rotation-needs-at-the-tenant).",
		env:   withoutRotation, op: logical.UpdateOperation, path: "config/rotate-root"},
	{section: "Root rotation (`config/rotate-root`)", status: 400, shape: "the tenant did not change the secret, which stays as it was: …",
		about: "The tenant refused the change (its password policy or history), or the grant for the rotation's token (often `invalid_scope` from `rotation_scopes`). `the tenant kept the current secret: …` is the same outcome found by a later check. Fix: match the Vault password policy to the tenant's.",
		env: func(t *testing.T) *testEnv {
			return newRotationEnv(t, func(c *emulator.Config) { c.PasswordPolicy = &emulator.PasswordPolicy{MinLength: 40} })
		},
		op: logical.UpdateOperation, path: "config/rotate-root"},
	{section: "Root rotation (`config/rotate-root`)", status: 502, shape: "root rotation: the secret stays as it was: …",
		about: "The tenant could not be reached or failed before the change was sent (a 429 when it rate limits), so nothing changed. A change whose answer was lost is never a 502: the engine checks which secret the tenant accepts and answers 200 or a 409. Fix: try again.",
		fault: &emulator.Fault{Endpoint: "token", Status: 503}, op: logical.UpdateOperation, path: "config/rotate-root"},
	{section: "Root rotation (`config/rotate-root`)", status: 409, shape: "root rotation pending since … and not settled: …",
		about: "A change was sent and the tenant is not yet seen to accept the new secret; both secrets are kept and the engine checks again on its own. `root rotation unresolved: …` (also 409) says the tenant accepts neither. Fix: for pending, nothing, and do not retry in a loop; for unresolved, see [recovering](rotation.md#recovering).",
		fault: &emulator.Fault{Endpoint: "change_password", Hold: true}, repeat: 1, op: logical.UpdateOperation, path: "config/rotate-root"},
	{section: "Leases: renew and revoke", status: 500, shape: "revoking the token at CyberArk Identity (attempt 1): …",
		about: "A revocation failed for a reason that may pass; Vault retries with backoff and the engine ends the lease itself after its 5th failure. Without `(attempt …)` the tenant refused the engine's credentials or the budget is spent: Vault retries, then keeps the lease as irrevocable. See [when revocation fails](leases.md#when-revocation-fails-vaults-retries-and-the-engines-limit).",
		send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			secret := e.mustRequest(t, logical.ReadOperation, "token", nil).Secret
			e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: 503})
			return e.revoke(t, secret)
		}},
	{section: "Incident response (`tokens/`)", status: 423, shape: `client "default" is frozen by tokens/revoke-all since … (the incident switch): …`,
		about: "`tokens/revoke-all` froze the client: its token reads are refused until `tokens/unfreeze`, a 4xx so that Vault clients do not retry it. Fix: finish the [incident runbook](incident-response.md), then unfreeze.",
		env:   withoutRotation, send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			e.mustRequest(t, logical.UpdateOperation, "tokens/revoke-all", nil)
			return e.request(t, logical.ReadOperation, "token", nil)
		}},
	{section: "Incident response (`tokens/`)", status: 409, shape: `client "default": 1 tokens of this incident are not yet revoked; …`,
		about: "A `tokens/revoke-all` run did not finish (its answer and Vault's log say which step failed), so tokens it found may still be valid. Fix: run `tokens/revoke-all` again; or, to leave them valid until they expire, `tokens/unfreeze force=true`.",
		env:   withoutRotation, send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
			e.mustRequest(t, logical.ReadOperation, "token/shared", nil)
			e.emu.AddFaults(emulator.Fault{Endpoint: "revoke", Status: 503})
			_, _ = e.request(t, logical.UpdateOperation, "tokens/revoke-all", nil)
			return e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
		}},
	{section: "Incident response (`tokens/`)", status: 409, shape: `client "default": no run of tokens/revoke-all has got as far as gathering the tokens of its reuse cache …`,
		about: "Every `tokens/revoke-all` run so far stopped before its gather step (its answer says why: a storage failure), so tokens only the reuse cache knows are on no list yet. Fix: run `tokens/revoke-all` again; or `tokens/unfreeze force=true` to leave them valid until they expire.",
		env:   withoutRotation, send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			e.mustRequest(t, logical.CreateOperation, "roles/shared", map[string]any{"token_reuse": true})
			e.mustRequest(t, logical.ReadOperation, "token/shared", nil)
			fs := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentTokensPrefix, nth: 1})
			_, _ = e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: fs, MountPoint: "cyberark/"})
			return e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
		}},
	{section: "Incident response (`tokens/`)", status: 409, shape: `client "default": 1 token reads that began before the last tokens/revoke-all run are still in progress, …`,
		about: "The last `tokens/revoke-all` run gave up waiting for some token reads that began before its freeze (it answered 503). Such a read may still get a token, and would hand it out if the client were unfrozen; once it ends while the client is frozen, it has withheld and revoked its token. Fix: unfreeze again when they have ended (each ends within the client's `total_timeout`); or `tokens/unfreeze force=true`.",
		env:   withoutRotation, send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			readHeldAtTheTenant(t, e, time.Second)
			e.b.drainLimit = 100 * time.Millisecond
			_, _ = e.request(t, logical.UpdateOperation, "tokens/revoke-all", nil)
			return e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
		}},
	{section: "Incident response (`tokens/`)", status: 409, shape: `client "default" is frozen on this node only: …`,
		about: "A `tokens/revoke-all` run could not store its freeze (its answer said why), so it revoked nothing, and the node it ran on refuses reads anyway in case the write landed after all. Fix: run `tokens/revoke-all` again; or `tokens/unfreeze force=true` to serve reads without it.",
		env:   withoutRotation, send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			fs := newFaultStorage(e.storage, storageFault{op: "Put", prefix: incidentsPrefix})
			_, _ = e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.UpdateOperation, Path: "tokens/revoke-all", Storage: fs, MountPoint: "cyberark/"})
			return e.request(t, logical.UpdateOperation, "tokens/unfreeze", nil)
		}},
	{section: "Incident response (`tokens/`)", status: 404, shape: "no record of this token: …",
		about: "`tokens/lookup` and `tokens/revoke` know only tokens handed out by a client with `track_tokens=true`, until their record is pruned after expiry. Fix: trace it through the audit log with `sys/audit-hash` ([runbook](incident-response.md#without-tracking-the-audit-log)); revoke its lease, or run `tokens/revoke-all`.",
		env:   withoutRotation, op: logical.UpdateOperation, path: "tokens/lookup", data: map[string]any{"token": "not-a-token-the-engine-tracked"}},
	{section: "Engine failures (500)", status: 500, shape: "reading config: …",
		about: "Vault's storage failed (`reading`, `storing`, `decoding`, `deleting` the config, a role or the failed-login count), or a case that should not happen. Vault's log has the detail; storage failures usually mean Vault itself is unhealthy. A refusal whose count cannot be stored holds every later login attempt back with a 503, `the failed-login count could not be stored, …`, until storage takes it.",
		send: func(t *testing.T, e *testEnv) (*logical.Response, error) {
			return e.b.HandleRequest(t.Context(), &logical.Request{Operation: logical.ReadOperation, Path: "config", Storage: &failingStorage{}, MountPoint: "cyberark/"})
		}},
}

// templateEnv has a templated role "team" and the readers of teamEntities.
func templateEnv(t *testing.T) *testEnv {
	e, _ := newTemplateEnv(t)
	e.mustRequest(t, logical.CreateOperation, "roles/team", map[string]any{"scopes": teamRead, "scope_ceiling": "team.*.read"})
	return e
}

// readTeamAs reads token/team with a token of the entity (none when empty).
func readTeamAs(entityID string) func(*testing.T, *testEnv) (*logical.Response, error) {
	return func(t *testing.T, e *testEnv) (*logical.Response, error) {
		return e.readAs(t, entityID, "token/team", nil)
	}
}

func withoutRotation(t *testing.T) *testEnv {
	e := newTestEnv(t)
	e.configure(t)
	return e
}

// rotating is the engine as tenant-setup.md recommends, without retries so that a
// fault is answered at once.
func rotating(t *testing.T) *testEnv {
	e := newRotationEnv(t, nil)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	return e
}

// produce makes the class's error and returns its message.
func (c errorClass) produce(t *testing.T) string {
	env := c.env
	if env == nil {
		env = rotating
	}
	e := env(t)
	// Times in the examples are the clock's, so that the page stays the same.
	newFakeClock(e).Set(time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC))
	if c.tenantSecret != "" {
		if err := e.emu.SetClientSecret(testAppID, testClientID, c.tenantSecret); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.emu.SetTokenQuirks(testAppID, c.quirks); err != nil {
		t.Fatal(err)
	}
	if c.fault != nil {
		e.emu.AddFaults(*c.fault)
	}
	send := c.send
	if send == nil {
		send = func(t *testing.T, e *testEnv) (resp *logical.Response, err error) {
			for range c.repeat + 1 {
				resp, err = e.request(t, c.op, c.path, c.data)
			}
			return resp, err
		}
	}
	resp, err := send(t, e)
	// Vault takes the status from an error response, else from the error it is handed,
	// never from one wrapped inside it.
	status, err := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, err)
	logical.AdjustErrorStatusCode(&status, err)
	msg := fmt.Sprint(err)
	for _, s := range secretsSeen(e) {
		if s != "" && strings.Contains(msg, s) {
			t.Fatalf("%q: the message holds a secret or a token", c.shape)
		}
	}
	// The emulator listens on a port of its own each run.
	msg = strings.NewReplacer(e.url, "https://abc1234.id.cyberark.cloud", strings.TrimPrefix(e.url, "https://"), "abc1234.id.cyberark.cloud").Replace(msg)
	if status != c.status || !shapePattern(c.shape).MatchString(msg) {
		t.Fatalf("%q: got status %d and %q", c.shape, status, msg)
	}
	return msg
}

// secretsSeen is every credential that crossed the wire to the tenant (including the
// passwords of a rotation, stored or dropped), and every token it issued.
func secretsSeen(e *testEnv) []string {
	seen := append([]string{testClientSecret, otherSecret}, e.emu.Issued()...)
	for _, r := range e.emu.Requests() {
		_, basic, _ := (&http.Request{Header: r.Header}).BasicAuth()
		var change struct{ OldPassword, NewPassword string }
		_ = json.Unmarshal(r.Body, &change)
		seen = append(seen, basic, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "),
			r.Form.Get("client_secret"), r.Form.Get("token"), change.OldPassword, change.NewPassword)
	}
	return seen
}

func shapePattern(shape string) *regexp.Regexp {
	parts := strings.Split(shape, "…")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile("^" + strings.Join(parts, "(?s:.*)"))
}

func TestErrorCatalogue(t *testing.T) {
	examples := make([]string, len(errorClasses))
	t.Run("class", func(t *testing.T) {
		for i, c := range errorClasses {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				examples[i] = c.produce(t)
			})
		}
	})
	if t.Failed() || slices.Contains(examples, "") { // a class failed, or -run chose some
		return
	}
	const file, begin, end = "docs/errors.md", "<!-- errors:begin -->\n", "<!-- errors:end -->"
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the lines %q and %q around the generated part", file, begin, end)
	}
	want := doc[:i+len(begin)] + renderCatalogue(examples) + doc[j:]
	switch {
	case *updateCatalogue:
		if err := os.WriteFile(file, []byte(want), 0o644); err != nil { //nolint:gosec // a file of the repository, read by everyone
			t.Fatal(err)
		}
	case want != doc:
		t.Errorf("%s is not what errorClasses render; run\n\tgo test -run TestErrorCatalogue -update .\nand review the diff", file)
	}
}

func renderCatalogue(examples []string) string {
	var b strings.Builder
	section := ""
	for i, c := range errorClasses {
		if c.section != section {
			section = c.section
			fmt.Fprintf(&b, "\n## %s\n\n", section)
		}
		// One line a paragraph, so that a change to the table changes one line here.
		fmt.Fprintf(&b, "- **%d** `%s`\n  %s\n", c.status, c.shape, c.about)
		if examples[i] != c.shape {
			fmt.Fprintf(&b, "  Example: `%s`\n", examples[i])
		}
	}
	return b.String() + "\n"
}
