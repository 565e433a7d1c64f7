// Package client speaks OAuth2 to a CyberArk Identity tenant: the client-credentials grant
// and token revocation. It knows nothing of Vault, so it can be tested and reused alone.
//
// CyberArk Identity expects the Basic credentials raw, not URL-encoded as RFC 6749 2.3.1
// asks (a login name such as svc@tenant must arrive with its "@"), which is why this
// package writes its own requests instead of using golang.org/x/oauth2.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-cleanhttp"
)

// AuthStyle is how the client authenticates itself to the token endpoint.
type AuthStyle int

const (
	// AuthBasic sends Authorization: Basic base64(client_id ":" client_secret) with both
	// parts raw, as CyberArk Identity documents it.
	AuthBasic AuthStyle = iota
	// AuthPost sends client_id and client_secret as form fields (client_secret_post).
	AuthPost
)

// DefaultRequestTimeout bounds one HTTP exchange with the tenant when
// Config.RequestTimeout is zero.
const DefaultRequestTimeout = 30 * time.Second

// maxBodyBytes bounds every response body read from the tenant: a token response is a
// few kilobytes, and a misbehaving proxy must not make the plugin buffer gigabytes.
const maxBodyBytes = 1 << 20

// Config describes one confidential client of one tenant application.
type Config struct {
	// TokenURL is the absolute URL of the token endpoint, for CyberArk Identity
	// https://<tenant>/oauth2/token/<app_id>.
	TokenURL string
	// RevokeURL is the absolute URL of the RFC 7009 revocation endpoint, for CyberArk
	// Identity https://<tenant>/oauth2/revoke/<app_id>. Empty means revocation is not
	// available.
	RevokeURL string
	// ClientID is the service user's login name.
	ClientID string
	// ClientSecret is the service user's password.
	ClientSecret string
	// Params are sent with every grant besides grant_type and scope: RFC 8707's
	// resource, an audience. The caller keeps credentials and those two out of them.
	Params map[string]string
	// AuthStyle selects Basic (default) or client_secret_post authentication.
	AuthStyle AuthStyle
	// UserAgent is sent on every request.
	UserAgent string
	// CACert is a PEM bundle of the CA certificates the tenant's certificate must chain
	// to. Empty means the system roots.
	CACert string
	// RequestTimeout bounds one HTTP exchange (one attempt, body included); 0 means
	// DefaultRequestTimeout. Retry.Budget bounds a whole call.
	RequestTimeout time.Duration
	// Retry decides how failed attempts are retried. The zero value does not retry.
	Retry RetryPolicy
	// Now returns the current time; nil means time.Now. Tests move the clock with it.
	Now func() time.Time
	// OnTLSHandshake, when set, is called after each TLS handshake the client
	// completes, with the protocol the tenant agreed to ("h2", "http/1.1", or "" when
	// it named none): each is a new connection, two or more round trips to the tenant.
	OnTLSHandshake func(protocol string)
}

// maxIdlePerHost is the idle connections kept to the tenant: the concurrency at which
// an HTTP/1.1-only tenant still opens no new connection in steady state.
const maxIdlePerHost = 128

// Client performs grants and revocations for one Config. It is safe for concurrent use
// and holds no request state: every call takes the caller's context.
type Client struct {
	cfg  Config
	auth string // the precomputed Basic header value; empty for AuthPost
	// transport is the connection pool, kept to close it; hc, which every call shares,
	// reaches it through keepIdle.
	transport *http.Transport
	hc        *http.Client
	// secrets are the forms in which the client secret crosses the wire: raw, form
	// encoded, and inside the Basic header. None may come back in an error.
	secrets []string
}

// New checks cfg and returns a Client for it, with its own connection pool.
func New(cfg Config) (*Client, error) {
	if cfg.TokenURL == "" {
		return nil, errors.New("token URL is empty")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("client ID is empty")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	transport, err := newTransport(cfg.CACert)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		transport: transport,
		hc: &http.Client{
			// retryablehttp closes its HTTP client's idle connections after every failed
			// call. The pool serves every reader of the engine, so one call giving up
			// must not cost the others their connections; Close empties it instead.
			Transport: keepIdle{rt: transport, onHandshake: cfg.OnTLSHandshake},
			Timeout:   cfg.RequestTimeout,
			// A redirected POST would resend the client credentials to wherever the
			// tenant (or a proxy in front of it) points; report the redirect instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	if cfg.AuthStyle == AuthBasic {
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.ClientID+":"+cfg.ClientSecret))
	}
	if cfg.ClientSecret != "" {
		c.secrets = sensitiveForms(cfg.ClientSecret)
		// The Basic credentials, as sent and as a client that URL-encodes them would send
		// them.
		c.secrets = append(c.secrets,
			base64.StdEncoding.EncodeToString([]byte(cfg.ClientID+":"+cfg.ClientSecret)),
			base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(cfg.ClientID)+":"+url.QueryEscape(cfg.ClientSecret))))
		c.secrets = longestFirst(c.secrets)
	}
	return c, nil
}

// newTransport is a pooled transport with TLS 1.2 or newer, trusting caPEM instead of
// the system roots when it is not empty.
func newTransport(caPEM string) (*http.Transport, error) {
	transport := cleanhttp.DefaultPooledTransport()
	// The pooled default keeps GOMAXPROCS+1 idle connections per host: against a
	// tenant that speaks HTTP/1.1 only, every concurrent grant past that many opens a
	// new TLS connection, and across a WAN pays the handshake's round trips. The engine
	// talks to one host per client, so the pool may keep as many as Vault runs reads
	// at once. HTTP/2 needs one connection, which ForceAttemptHTTP2 (set by cleanhttp)
	// keeps with the custom TLS config below.
	transport.MaxIdleConnsPerHost = maxIdlePerHost
	transport.MaxIdleConns = maxIdlePerHost
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caPEM)) {
			// The bundle is not quoted: an operator may have pasted a key or a secret.
			return nil, errors.New("the CA bundle holds no parsable PEM certificate")
		}
		tlsConfig.RootCAs = pool
	}
	transport.TLSClientConfig = tlsConfig
	return transport, nil
}

// Close closes the client's idle connections. Calls in flight finish normally; the
// connections they return to the pool close when the pool's idle timeout expires. The
// client stays usable, opening new connections as needed.
func (c *Client) Close() {
	c.transport.CloseIdleConnections()
}

// Token performs the client-credentials grant. Scopes, when given, are sent
// space-separated in the scope parameter.
func (c *Client) Token(ctx context.Context, scopes []string) (*Token, error) {
	form := url.Values{}
	for k, v := range c.cfg.Params {
		form.Set(k, v)
	}
	form.Set("grant_type", "client_credentials")
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	start := c.cfg.Now()
	body, err := c.post(ctx, c.cfg.TokenURL, form)
	if err != nil {
		return nil, err
	}
	secrets := c.sensitive()
	tok, err := parseToken(body, start, secrets)
	if err != nil {
		return nil, redact(err, secrets)
	}
	return tok, nil
}

// Revoke asks the tenant to revoke an access token (RFC 7009). The tenant answers 200
// for tokens that are unknown or already invalid, so those are a success too.
func (c *Client) Revoke(ctx context.Context, accessToken string) error {
	if c.cfg.RevokeURL == "" {
		return ErrRevokeUnsupported
	}
	if accessToken == "" {
		return errors.New("no token to revoke")
	}
	form := url.Values{"token": {accessToken}, "token_type_hint": {"access_token"}}
	_, err := c.post(ctx, c.cfg.RevokeURL, form, sensitiveForms(accessToken)...)
	return err
}

// sensitiveForms is a value as it may come back: raw, form encoded, and escaped in a
// JSON string (a body that reflects a request may not itself be JSON, so the JSON pass
// over tenant bodies cannot always undo the escaping).
func sensitiveForms(v string) []string {
	forms := []string{v}
	if enc := url.QueryEscape(v); enc != v {
		forms = append(forms, enc)
	}
	if enc, err := json.Marshal(v); err == nil {
		if inner := string(enc[1 : len(enc)-1]); inner != v {
			forms = append(forms, inner)
		}
	}
	// A reflecting proxy or tenant may echo a value in any encoding a request could
	// carry it in: a path, or base64 in either alphabet, padded or not.
	if enc := url.PathEscape(v); enc != v {
		forms = append(forms, enc)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		forms = append(forms, enc.EncodeToString([]byte(v)))
	}
	return slices.Compact(forms)
}

// ErrRevokeUnsupported is returned by Revoke when no revocation endpoint is configured.
var ErrRevokeUnsupported = errors.New("no revocation endpoint is configured")

func (c *Client) newRequest(ctx context.Context, endpoint string, form url.Values) (*http.Request, error) {
	if c.cfg.AuthStyle == AuthPost {
		form = cloneValues(form)
		form.Set("client_id", c.cfg.ClientID)
		form.Set("client_secret", c.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		// url.Error quotes the URL, which holds no secret: credentials never go there.
		return nil, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if c.cfg.UserAgent != "" {
		req.Header.Set("User-Agent", c.cfg.UserAgent)
	}
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	return req, nil
}

// sensitive lists every form of the client secret, and the extra values, longest first,
// so that a form holding another is replaced whole rather than left in pieces. Without
// extras (every grant) it is the list New sorted, shared and never modified.
func (c *Client) sensitive(extra ...string) []string {
	if len(extra) == 0 {
		return c.secrets
	}
	return longestFirst(append(slices.Clone(c.secrets), extra...))
}

// longestFirst drops empty values and sorts the rest longest first, in place.
func longestFirst(secrets []string) []string {
	secrets = slices.DeleteFunc(secrets, func(s string) bool { return s == "" })
	slices.SortStableFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	return secrets
}

// redact removes the secrets from an error's text. Tenant answers are redacted where
// they are read (newError); this pass covers every other error on its way out. The
// tenant has no reason to echo a secret, but error text reaches Vault operators and
// readers, and a misbehaving proxy might reflect the request.
func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); redactString(msg, secrets) != msg {
		return &redactedError{msg: redactString(msg, secrets), err: err}
	}
	return err
}

// redactMarks replace what is redacted. The second serves when a secret runs into the
// first from the text around it: "]abcdefg" followed by "abcdefg" reads "]abcdefg"
// again after "[redacted". The two share no character, so a secret that runs into one
// rarely runs into the other as well.
var redactMarks = []string{"[redacted]", "***"}

// redactString replaces every stretch of s that holds a secret. The stretches are found
// in s as it is and merged before anything is replaced, so that overlapping occurrences
// and secrets that overlap one another leave no piece behind, and a replacement never
// creates an occurrence that a later pass would have to find.
func redactString(s string, secrets []string) string {
	type span struct{ start, end int }
	var spans []span
	for _, secret := range secrets {
		if secret == "" {
			continue
		}
		for pos := 0; ; {
			i := strings.Index(s[pos:], secret)
			if i < 0 {
				break
			}
			start, end := pos+i, pos+i+len(secret)
			if n := len(spans); n > 0 && spans[n-1].start <= start && start <= spans[n-1].end {
				spans[n-1].end = max(spans[n-1].end, end)
			} else {
				spans = append(spans, span{start, end})
			}
			pos = start + 1
		}
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	for _, mark := range redactMarks {
		var b strings.Builder
		last := 0
		for i := 0; i < len(spans); {
			start, end := spans[i].start, spans[i].end
			for i++; i < len(spans) && spans[i].start <= end; i++ {
				end = max(end, spans[i].end)
			}
			b.WriteString(s[last:start])
			b.WriteString(mark)
			last = end
		}
		b.WriteString(s[last:])
		if out := b.String(); !containsAny(out, secrets) {
			return out
		}
	}
	// The secret runs into both marks: keep nothing.
	return ""
}

func containsAny(s string, secrets []string) bool {
	for _, secret := range secrets {
		if secret != "" && strings.Contains(s, secret) {
			return true
		}
	}
	return false
}

// redactedError keeps the chain of the error it replaces, so errors.Is and errors.As
// still classify it, while its text is redacted.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v)+2)
	for k, vals := range v {
		out[k] = append([]string(nil), vals...)
	}
	return out
}
