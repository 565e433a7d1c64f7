package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// RetryPolicy says how a call retries connection errors, 5xx and 429 answers. Other 4xx
// answers are refusals and are never retried.
type RetryPolicy struct {
	// MaxRetries is how many times a failed attempt is repeated; 0 means no retries.
	MaxRetries int
	// WaitMin and WaitMax bound the exponential backoff between attempts; full jitter is
	// applied below the exponential step.
	WaitMin, WaitMax time.Duration
	// MaxRetryAfter caps how long a Retry-After header may make a call wait.
	MaxRetryAfter time.Duration
	// Budget bounds one call, all attempts and waits included; 0 means only the caller's
	// context bounds it.
	Budget time.Duration
}

// call is the state of one Token or Revoke call: what the tenant said on each attempt,
// so the final error can report its last answer even when the budget ran out during a
// wait, and the values to redact from it.
type call struct {
	secrets []string

	mu    sync.Mutex
	count int
	last  error
}

func (cl *call) record(err error) {
	cl.mu.Lock()
	cl.count++
	cl.last = err
	cl.mu.Unlock()
}

func (cl *call) result() (int, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.count, cl.last
}

// retryClient is a retryablehttp client for one call. It is cheap: it shares the
// Client's HTTP client and pool, and only its CheckRetry belongs to the call.
func (c *Client) retryClient(cl *call) *retryablehttp.Client {
	p := c.cfg.Retry
	return &retryablehttp.Client{
		HTTPClient:   c.hc,
		RetryMax:     p.MaxRetries,
		RetryWaitMin: p.WaitMin,
		RetryWaitMax: p.WaitMax,
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			return c.checkRetry(ctx, cl, resp, err)
		},
		Backoff: c.backoff,
		// We read and report the last answer ourselves.
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
}

// keepIdle is a RoundTripper without CloseIdleConnections.
type keepIdle struct {
	rt          http.RoundTripper
	onHandshake func(protocol string)
}

// RoundTrip also reports the TLS handshakes a request makes: the transport performs
// them under the trace of the request that needed the connection.
func (k keepIdle) RoundTrip(r *http.Request) (*http.Response, error) {
	if k.onHandshake != nil {
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
				if err == nil {
					k.onHandshake(cs.NegotiatedProtocol)
				}
			},
		}))
	}
	return k.rt.RoundTrip(r)
}

// send makes one call with retries. A 2xx answer is answered, with its body and the
// error of reading it; otherwise err is the last failure, never nil.
func (c *Client) send(ctx context.Context, cl *call, req *retryablehttp.Request) (body []byte, answered bool, err error) {
	resp, doErr := c.retryClient(cl).Do(req)
	if resp != nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		defer resp.Body.Close()
		body, err = c.readLimited(ctx, resp.Body)
		return body, true, err
	}
	if resp != nil {
		resp.Body.Close()
	}
	_, last := cl.result()
	if last == nil {
		last = doErr
	}
	if last == nil {
		last = errors.New("no answer from tenant")
	}
	return nil, false, last
}

// post sends one form to the tenant, with retries, and returns the body of a 2xx answer.
// Errors are redacted of the client secret and of the extra values.
func (c *Client) post(ctx context.Context, endpoint string, form url.Values, extra ...string) ([]byte, error) {
	parent := ctx
	if c.cfg.Retry.Budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Retry.Budget)
		defer cancel()
	}
	cl := &call{secrets: c.sensitive(extra...)}

	hreq, err := c.newRequest(ctx, endpoint, form)
	if err != nil {
		return nil, err
	}
	rreq, err := retryablehttp.FromRequest(hreq)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	body, answered, last := c.send(ctx, cl, rreq)
	if answered {
		return body, last
	}
	n, _ := cl.result()
	if parent.Err() != nil {
		return nil, fmt.Errorf("request to tenant abandoned: %w", parent.Err())
	}
	// Redact before wrapping: a wrapper's text is fixed when it is made.
	last = redact(last, cl.secrets)
	var te *Error
	if errors.As(last, &te) {
		te.Attempts = n
	}
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("gave up after %d attempt(s) in %s: %w", n, c.cfg.Retry.Budget, last)
	case te == nil && n > 1:
		return nil, fmt.Errorf("gave up after %d attempts: %w", n, last)
	}
	return nil, last
}

// checkRetry records every attempt's outcome and retries only what may pass later.
func (c *Client) checkRetry(ctx context.Context, cl *call, resp *http.Response, err error) (bool, error) {
	if err != nil {
		cl.record(c.transportError(ctx, err))
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		// The default policy declines to retry certificate and scheme errors, which no
		// retry can fix.
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	body, readErr := c.readLimited(ctx, resp.Body)
	if readErr != nil {
		body = nil
	}
	te := newError(resp, body, c.cfg.Now(), cl.secrets)
	cl.record(te)
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	return te.Temporary() && resp.StatusCode != http.StatusNotImplemented, nil
}

// backoff waits what Retry-After asks, capped, or an exponential step with full jitter.
func (c *Client) backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d := parseRetryAfter(resp.Header.Get("Retry-After"), c.cfg.Now()); d > 0 {
			if limit := c.cfg.Retry.MaxRetryAfter; limit > 0 && d > limit {
				d = limit
			}
			return d
		}
	}
	if minWait <= 0 {
		minWait = 100 * time.Millisecond
	}
	if maxWait < minWait {
		maxWait = minWait
	}
	step := maxWait
	if attempt < 30 {
		if s := minWait << attempt; s > 0 && s < maxWait {
			step = s
		}
	}
	return minWait + rand.N(step-minWait+1) //nolint:gosec // retry jitter spreads clients out; it guards no secret
}

// readLimited reads a body up to maxBodyBytes and fails beyond it.
func (c *Client) readLimited(ctx context.Context, r io.Reader) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, maxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the tenant's answer: %w", c.timedOut(ctx, err))
	}
	if len(body) > maxBodyBytes {
		return nil, fmt.Errorf("tenant response exceeds the %d byte limit", maxBodyBytes)
	}
	return body, nil
}

// transportError describes a failure to reach the tenant.
func (c *Client) transportError(ctx context.Context, err error) error {
	return fmt.Errorf("contacting tenant: %w", c.timedOut(ctx, err))
}

// timedOut says so when an attempt ran out of the request timeout rather than of the
// call's budget or the caller's context (ctx, still live). http.Client adds its own
// "Client.Timeout exceeded" only when its timer beats the context deadline it sets for
// the same instant, so its words differ from run to run.
func (c *Client) timedOut(ctx context.Context, err error) error {
	var ne net.Error
	if ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		return err
	}
	return fmt.Errorf("no complete answer within the %s request timeout: %w", c.cfg.RequestTimeout, err)
}
