package cyberark

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/common/expfmt"
)

// pathMetrics serves the engine's metrics in the Prometheus text format. Vault does not
// collect metrics from an external plugin, so without it they would reach no one. It is
// an ordinary authenticated path: a scraper needs a Vault token whose policy allows
// read on <mount>/metrics, and nothing else.
func pathMetrics(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "metrics$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
			OperationVerb:   "read",
			OperationSuffix: "metrics",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathMetricsRead,
				Summary:  "Read the engine's counters and timers in the Prometheus text format.",
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "The metrics of this mount on the node that served the request, in the Prometheus text exposition format (version 0.0.4).",
						MediaType:   "text/plain",
						// The SDK writes a response's media type into the OpenAPI
						// document only beside an example, and an example can only be a
						// logical.Response, a JSON object: an empty one declares the
						// media type without inventing a body that is not text.
						Example: &logical.Response{},
					}},
				},
			},
		},
		HelpSynopsis: "The engine's metrics, for a Prometheus scraper that holds a Vault token.",
		HelpDescription: `Serves this mount's counters and timers (grants, reuse, revocation, rotation,
by outcome) in the Prometheus text format. The path is authenticated like any other: a
scraper's Vault token needs a policy with read on <mount>/metrics. The metrics are those
of the node whose engine serves the request, counted since its plugin started.`,
	}
}

func (b *backend) pathMetricsRead(_ context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := unknownFields(req, d); resp != nil {
		return resp, nil
	}
	families, err := b.promRegistry.Gather()
	if err != nil {
		return nil, fmt.Errorf("gathering metrics: %w", err)
	}
	format := expfmt.NewFormat(expfmt.TypeTextPlain)
	var body bytes.Buffer
	enc := expfmt.NewEncoder(&body, format)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, fmt.Errorf("encoding metrics: %w", err)
		}
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPContentType: string(format),
		logical.HTTPRawBody:     body.Bytes(),
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}
