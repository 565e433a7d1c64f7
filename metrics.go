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
	metricRotation      = []string{"cyberark", "rotation"}
)

// count and measure go to b.metrics when a test set one, else to go-metrics' global
// sink as it is at the time of the call, so a sink installed after the backend was
// built is still used.
func (b *backend) count(key []string, label, value string) {
	labels := []metrics.Label{{Name: label, Value: value}}
	if b.metrics != nil {
		b.metrics.IncrCounterWithLabels(key, 1, labels)
		return
	}
	metrics.IncrCounterWithLabels(key, 1, labels)
}

func (b *backend) measure(key []string, start time.Time, outcome string) {
	labels := []metrics.Label{{Name: "outcome", Value: outcome}}
	if b.metrics != nil {
		b.metrics.MeasureSinceWithLabels(key, start, labels)
		return
	}
	metrics.MeasureSinceWithLabels(key, start, labels)
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
