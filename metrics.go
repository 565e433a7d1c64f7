package cyberark

import (
	"context"
	"errors"
	"net/url"
	"time"

	"github.com/hashicorp/go-metrics"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

// Metric names. Labels are few and bounded (an outcome or result word); tenant URLs,
// client IDs, role names and tokens never become labels.
var (
	metricGrant         = []string{"cyberark", "grant"}
	metricGrantDuration = []string{"cyberark", "grant", "duration"}
	metricReuse         = []string{"cyberark", "reuse"}
	metricRevoke        = []string{"cyberark", "revoke"}
	metricRevokeLatency = []string{"cyberark", "revoke", "duration"}
)

func (b *backend) count(key []string, label, value string) {
	b.metrics.IncrCounterWithLabels(key, 1, []metrics.Label{{Name: label, Value: value}})
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
