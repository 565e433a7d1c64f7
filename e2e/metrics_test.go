//go:build unix

package e2e

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// TestMetricsPath reads the engine's metrics through a real Vault, in the Prometheus text
// format, with a scraper's token whose policy allows read on <mount>/metrics and nothing
// else; without a token, or with one that lacks the policy, the read is refused. The
// counts match what the tenant saw, and the labels are the few bounded ones.
func TestMetricsPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure() // verify_connection: one grant
	e.writeRole("shared", map[string]any{"scopes": "read", "token_reuse": true})
	for range 3 {
		e.readToken("token/shared", nil) // one grant, then two hits
	}
	e.readToken("token", nil) // one grant

	if err := e.client.Sys().PutPolicyWithContext(e.ctx, "scraper", `path "`+mountPath+`/metrics" { capabilities = ["read"] }`); err != nil {
		t.Fatalf("writing the scraper's policy: %v", err)
	}
	secret, err := e.client.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{Policies: []string{"scraper"}, NoDefaultPolicy: true})
	if err != nil {
		t.Fatalf("creating the scraper's token: %v", err)
	}
	scraper := newClient(t, e.vault.addr, secret.Auth.ClientToken)

	status, header, body := rawGet(t, e, scraper, mountPath+"/metrics")
	e.guard.addTexts(func() []checkedText { return []checkedText{{name: "the metrics response", data: body}} })
	if status != http.StatusOK {
		t.Fatalf("the scraper's read of %s/metrics: HTTP %d: %s", mountPath, status, body)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || !strings.Contains(ct, "version=0.0.4") {
		t.Errorf("Content-Type %q, want the Prometheus text format", ct)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the response is not in the Prometheus text format: %v\n%s", err, body)
	}
	grants := e.tenant.emu.Stats().Grants
	for _, c := range []struct {
		family, label, value string
		want                 float64
	}{
		{"cyberark_grant", "outcome", "success", float64(grants)},
		{"cyberark_reuse", "result", "hit", 2},
		{"cyberark_reuse", "result", "miss", 1},
	} {
		if got, ok := metricValue(families[c.family], c.label, c.value); !ok || got != c.want {
			t.Errorf("%s{%s=%q} = %v (present %t), want %v", c.family, c.label, c.value, got, ok, c.want)
		}
	}
	if d := families["cyberark_grant_duration"]; d == nil || d.GetType() != dto.MetricType_SUMMARY ||
		len(d.GetMetric()) == 0 || grants < 0 || d.GetMetric()[0].GetSummary().GetSampleCount() != uint64(grants) {
		t.Errorf("cyberark_grant_duration: %v, want a summary of %d grants", d, grants)
	}
	// The emulator here speaks HTTP/1.1: the engine's connections to it were counted.
	if got, ok := metricValue(families["cyberark_tls_handshake"], "protocol", "http1"); !ok || got < 1 {
		t.Errorf(`cyberark_tls_handshake{protocol="http1"} = %v (present %t), want at least 1`, got, ok)
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				switch {
				case l.GetName() == "client" && l.GetValue() != "default":
					t.Errorf("%s has client=%q; the mount has only the default client", name, l.GetValue())
				case !slices.Contains([]string{"outcome", "result", "client", "call", "protocol"}, l.GetName()):
					t.Errorf("%s has the label %s; only outcome, result, call, client and protocol are allowed", name, l.GetName())
				}
			}
		}
	}
	t.Logf("metrics: %d families, %d bytes", len(families), len(body))

	// The scraper reads metrics and nothing else; no one reads them without a token.
	for _, path := range []string{"token/shared", "config"} {
		if status, _, _ := rawGet(t, e, scraper, mountPath+"/"+path); status != http.StatusForbidden {
			t.Errorf("the scraper's read of %s: HTTP %d, want 403", path, status)
		}
	}
	anonymous := newClient(t, e.vault.addr, "")
	anonymous.ClearToken()
	if status, _, _ := rawGet(t, e, anonymous, mountPath+"/metrics"); status != http.StatusForbidden {
		t.Errorf("a read of %s/metrics without a token: HTTP %d, want 403", mountPath, status)
	}
	reader := newClient(t, e.vault.addr, e.tokenWithPolicy("reader", `path "`+mountPath+`/token/*" { capabilities = ["read"] }`))
	if status, _, _ := rawGet(t, e, reader, mountPath+"/metrics"); status != http.StatusForbidden {
		t.Errorf("a token reader's read of %s/metrics: HTTP %d, want 403", mountPath, status)
	}
}

// tokenWithPolicy writes policy under name and returns a token that has it alone.
func (e *env) tokenWithPolicy(name, policy string) string {
	e.t.Helper()
	if err := e.client.Sys().PutPolicyWithContext(e.ctx, name, policy); err != nil {
		e.t.Fatalf("writing policy %s: %v", name, err)
	}
	s, err := e.client.Auth().Token().CreateWithContext(e.ctx, &api.TokenCreateRequest{Policies: []string{name}, NoDefaultPolicy: true})
	if err != nil {
		e.t.Fatalf("creating a token with policy %s: %v", name, err)
	}
	return s.Auth.ClientToken
}

// rawGet sends GET /v1/path through c and returns the status, headers and body,
// whatever the status: for an error status ReadRawWithContext returns the response
// beside the error.
func rawGet(t *testing.T, e *env, c *api.Client, path string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := c.Logical().ReadRawWithContext(e.ctx, path)
	if resp == nil {
		t.Fatalf("GET /v1/%s: %v", path, err)
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	if rerr != nil {
		t.Fatalf("GET /v1/%s: reading the body: %v", path, rerr)
	}
	return resp.StatusCode, resp.Header, body
}

// metricValue is the value of the counter in f whose label is value.
func metricValue(f *dto.MetricFamily, label, value string) (float64, bool) {
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}
