package cyberark

import (
	"bytes"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// scrape reads <mount>/metrics as Vault's HTTP layer would serve it: the status, the
// Content-Type and the raw body the response data carries.
func scrape(t *testing.T, e *testEnv) (status int, contentType string, body []byte) {
	t.Helper()
	resp := e.mustRequest(t, logical.ReadOperation, "metrics", nil)
	if resp == nil {
		t.Fatal("the metrics read returned no response")
	}
	status, _ = resp.Data[logical.HTTPStatusCode].(int)
	contentType, _ = resp.Data[logical.HTTPContentType].(string)
	body, _ = resp.Data[logical.HTTPRawBody].([]byte)
	return status, contentType, body
}

// families parses a scrape's body; a body that is not the Prometheus text format fails
// the test.
func families(t *testing.T, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	var parser expfmt.TextParser
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the metrics body (%d bytes) is not in the Prometheus text format: %v", len(body), err)
	}
	return fams
}

// sample is the value of family's series whose label name has value, and whether
// there is one.
func sample(f *dto.MetricFamily, name, value string) (float64, bool) {
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// specialPathMatches reports whether a PathsSpecial entry covers path the way Vault's
// router reads those lists: "+" stands for one segment, and a trailing "*" makes the
// entry a prefix.
func specialPathMatches(pattern, path string) bool {
	prefix := strings.HasSuffix(pattern, "*")
	want, got := strings.Split(strings.TrimSuffix(pattern, "*"), "/"), strings.Split(path, "/")
	if len(got) < len(want) || !prefix && len(got) != len(want) {
		return false
	}
	for i, w := range want {
		switch {
		case w == "+":
		case prefix && i == len(want)-1:
			if !strings.HasPrefix(got[i], w) {
				return false
			}
		case w != got[i]:
			return false
		}
	}
	return true
}

// TestMetricsPathNeedsAToken: Vault lets a request through without a token only on the
// backend's Unauthenticated paths, so none of them may cover metrics; the metrics name
// the engine's activity, and a scraper is given a token with a policy for them.
func TestMetricsPathNeedsAToken(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if p := e.b.Route("metrics"); p == nil {
		t.Fatal("no path serves metrics")
	}
	for _, pattern := range e.b.SpecialPaths().Unauthenticated {
		if specialPathMatches(pattern, "metrics") {
			t.Errorf("the Unauthenticated path %q lets a read of metrics through without a token", pattern)
		}
	}
}

// TestMetricsPathAnswersWithTheText: the read answers 200 with the Prometheus text
// format as its raw body, which Vault's HTTP layer sends as it is.
func TestMetricsPathAnswersWithTheText(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	status, contentType, body := scrape(t, e)
	if status != http.StatusOK {
		t.Errorf("status %d, want 200", status)
	}
	if !strings.HasPrefix(contentType, "text/plain") || !strings.Contains(contentType, "version=0.0.4") {
		t.Errorf("Content-Type %q, want the Prometheus text format", contentType)
	}
	if len(body) == 0 {
		t.Fatal("the body is empty, though the config's write made a grant")
	}
	families(t, body)
}

// TestMetricsPathServesTheMountsOwnRegistry: each mount serves its own counts and only
// them, not the process's default registry (Go runtime and process metrics) nor another
// mount's.
func TestMetricsPathServesTheMountsOwnRegistry(t *testing.T) {
	t.Parallel()
	busy, idle := newTestEnv(t), newTestEnv(t)
	busy.configure(t)
	busy.mustRequest(t, logical.ReadOperation, "token", nil)
	idle.configure(t)

	for _, m := range []struct {
		name string
		e    *testEnv
	}{{"busy", busy}, {"idle", idle}} {
		_, _, body := scrape(t, m.e)
		fams := families(t, body)
		want := float64(m.e.emu.Stats().Grants)
		if got, ok := sample(fams["cyberark_grant"], "outcome", "success"); !ok || got != want {
			t.Errorf("%s mount: cyberark_grant{outcome=\"success\"} = %v (present %t), want %v, the grants its tenant saw", m.name, got, ok, want)
		}
		var foreign []string
		for name := range fams {
			if !strings.HasPrefix(name, "cyberark_") {
				foreign = append(foreign, name)
			}
		}
		if len(foreign) > 0 {
			slices.Sort(foreign)
			t.Errorf("%s mount: the metrics include %d families that are not the engine's, first %s", m.name, len(foreign), foreign[0])
		}
	}
}

// TestRefusedGrantMetricCarriesNoTenantText: a refusal's label is the word refused,
// whatever the tenant wrote in its error_description. The description is tenant text of
// any length, and would make a new series per message and show tenant details to
// whoever reads the metrics.
func TestRefusedGrantMetricCarriesNoTenantText(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	const description = "client " + testClientID + " is not allowed access to app " + testAppID
	e.emu.AddFaults(emulator.Fault{Endpoint: "token", Times: 1, Status: http.StatusBadRequest,
		Body: `{"error":"invalid_client","error_description":"` + description + `"}`})
	if _, err := e.request(t, logical.ReadOperation, "token", nil); err == nil {
		t.Fatal("the refused grant was not an error")
	}

	_, _, body := scrape(t, e)
	fams := families(t, body)
	if got, ok := sample(fams["cyberark_grant"], "outcome", "refused"); !ok || got != 1 {
		t.Errorf(`cyberark_grant{outcome="refused"} = %v (present %t), want 1`, got, ok)
	}
	word := regexp.MustCompile(`^[a-z0-9_]{1,32}$`)
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !word.MatchString(l.GetValue()) {
					t.Errorf("%s: label %s is not one short word, but %d bytes of text", name, l.GetName(), len(l.GetValue()))
				}
			}
		}
	}
	for _, text := range []string{"not allowed", testClientID, testAppID} {
		if bytes.Contains(body, []byte(text)) {
			t.Errorf("the metrics carry the tenant's text %q", text)
		}
	}
}

// TestMetricsPathInTheOpenAPIDocument: the OpenAPI document of the path (what "vault
// path-help" and Vault's whole document are built from) says that a read of metrics
// answers 200 with a text/plain body, and describes it, so that generated clients do
// not expect Vault's JSON. The path's help is asked rather than the root's, which needs
// a system view that knows Vault's version.
func TestMetricsPathInTheOpenAPIDocument(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	resp, err := e.request(t, logical.HelpOperation, "metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, ok := resp.Data["openapi"].(*framework.OASDocument)
	if !ok {
		t.Fatalf("the help response carries no OpenAPI document (%T)", resp.Data["openapi"])
	}
	item, ok := doc.Paths["/metrics"]
	if !ok || item.Get == nil {
		t.Fatal("the document has no read of /metrics")
	}
	ok200, ok := item.Get.Responses[http.StatusOK]
	if !ok {
		t.Fatalf("the read of /metrics declares no 200 response (it declares %d)", len(item.Get.Responses))
	}
	if d := strings.TrimSpace(ok200.Description); d == "" || d == "OK" {
		t.Errorf("the 200 response is not described (%q)", ok200.Description)
	}
	if _, ok := ok200.Content["text/plain"]; !ok || len(ok200.Content) != 1 {
		var types []string
		for mt := range ok200.Content {
			types = append(types, mt)
		}
		t.Errorf("the 200 response's media types are %v, want text/plain alone", types)
	}
}

// TestTLSHandshakesCounted: a token read's new connection to the tenant is counted
// once, by protocol, and later reads reuse it.
func TestTLSHandshakesCounted(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	sink := withInmemMetrics(t, e)
	e.configure(t) // the verification grant opens a connection of its own client
	before := counter(sink, "test.cyberark.tls_handshake;protocol=http1")
	for range 3 {
		e.mustRequest(t, logical.ReadOperation, "token", nil)
	}
	if n := counter(sink, "test.cyberark.tls_handshake;protocol=http1") - before; n != 1 {
		t.Errorf("%d handshakes for 3 sequential reads, want 1", n)
	}
}
