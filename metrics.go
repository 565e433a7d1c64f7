package cyberark

import (
	"context"
	"errors"
	"net/url"
	"time"

	"github.com/hashicorp/go-metrics"
	gmprometheus "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// Metric names. Labels are few and bounded (an outcome, result or protocol word, and
// the name of the mount's client); tenant URLs, client IDs, role names and tokens never
// become labels.
var (
	metricGrant         = []string{"cyberark", "grant"}
	metricGrantDuration = []string{"cyberark", "grant", "duration"}
	metricReuse         = []string{"cyberark", "reuse"}
	metricRevoke        = []string{"cyberark", "revoke"}
	metricRevokeLatency = []string{"cyberark", "revoke", "duration"}
	metricRotation      = []string{"cyberark", "rotation"}
	// metricFailedLogin counts refused client authentications the engine caused, by
	// call; metricFailedLoginsInWindow is how many the budget's window holds, and
	// metricLoginBudget counts calls the spent budget answered without the tenant.
	metricFailedLogin          = []string{"cyberark", "failed_login"}
	metricFailedLoginsInWindow = []string{"cyberark", "failed_logins_in_window"}
	metricLoginBudget          = []string{"cyberark", "login_budget_spent"}
	// metricScopeCheck counts the checks of granted scopes by result.
	metricScopeCheck = []string{"cyberark", "scope_check"}
	// metricTokenCheck counts the checks of granted tokens (signature and claims).
	metricTokenCheck = []string{"cyberark", "token_check"}
	// metricTLSHandshake counts new TLS connections to tenants, by the protocol agreed:
	// per grant, it says how well the connection pool holds up.
	metricTLSHandshake = []string{"cyberark", "tls_handshake"}
)

// newMetrics is one mount's metrics: go-metrics, as Vault's telemetry uses, into a
// Prometheus registry of the mount's own, which the metrics path serves, and into
// go-metrics' global sink, which is Vault's telemetry when the engine is compiled into
// Vault. An external plugin's global sink reaches nothing: Vault does not collect
// metrics from plugin processes.
func newMetrics() (*metrics.Metrics, *prometheus.Registry, error) {
	registry := prometheus.NewRegistry()
	// No expiration: a counter that stopped moving must still be scraped, or a
	// scraper would see it reset.
	sink, err := gmprometheus.NewPrometheusSinkFrom(gmprometheus.PrometheusOpts{Registerer: registry, Name: "cyberark"})
	if err != nil {
		return nil, nil, err
	}
	conf := metrics.DefaultConfig("")
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false
	conf.EnableTypePrefix = false
	conf.EnableServiceLabel = false
	m, err := metrics.New(conf, metrics.FanoutSink{sink, globalSink{}})
	if err != nil {
		return nil, nil, err
	}
	return m, registry, nil
}

// globalSink hands every metric on to go-metrics' global sink as it is at the time of
// the call, so that a sink installed after the engine was built is still used.
type globalSink struct{}

func (globalSink) SetGauge(key []string, val float32) { metrics.SetGauge(key, val) }
func (globalSink) SetGaugeWithLabels(key []string, val float32, labels []metrics.Label) {
	metrics.SetGaugeWithLabels(key, val, labels)
}
func (globalSink) EmitKey(key []string, val float32)     { metrics.EmitKey(key, val) }
func (globalSink) IncrCounter(key []string, val float32) { metrics.IncrCounter(key, val) }
func (globalSink) IncrCounterWithLabels(key []string, val float32, labels []metrics.Label) {
	metrics.IncrCounterWithLabels(key, val, labels)
}
func (globalSink) AddSample(key []string, val float32) { metrics.AddSample(key, val) }
func (globalSink) AddSampleWithLabels(key []string, val float32, labels []metrics.Label) {
	metrics.AddSampleWithLabels(key, val, labels)
}

func (b *backend) count(key []string, label, value string) {
	b.metrics.IncrCounterWithLabels(key, 1, []metrics.Label{{Name: label, Value: value}})
}

// countFor counts for one client: its name is the operator's, one of a few, never
// the tenant's words.
func (b *backend) countFor(key []string, client, label, value string) {
	b.metrics.IncrCounterWithLabels(key, 1, []metrics.Label{{Name: "client", Value: client}, {Name: label, Value: value}})
}

func (b *backend) measure(key []string, start time.Time, outcome string) {
	b.metrics.MeasureSinceWithLabels(key, start, []metrics.Label{{Name: "outcome", Value: outcome}})
}

// outcome sorts a tenant call's result into a handful of words for metric labels.
func outcome(err error) string {
	var te *client.Error
	var ue *url.Error
	switch {
	case err == nil:
		return "success"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &te) && te.StatusCode == 429:
		return "rate_limited"
	case errors.As(err, &te) && te.StatusCode >= 500:
		return "tenant_error"
	case errors.As(err, &te):
		return "refused"
	case errors.As(err, &ue), errors.Is(err, context.DeadlineExceeded):
		return "unreachable"
	default:
		return "invalid_response"
	}
}

// countHandshake counts a TLS handshake with a tenant by its agreed protocol, one of a
// few words.
func (b *backend) countHandshake(protocol string) {
	switch protocol {
	case "h2":
	case "http/1.1":
		protocol = "http1"
	case "":
		protocol = "none" // no ALPN: HTTP/1.1 by default
	default:
		protocol = "other"
	}
	b.count(metricTLSHandshake, "protocol", protocol)
}
