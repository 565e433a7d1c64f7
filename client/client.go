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
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
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

// DefaultTimeout bounds one HTTP exchange with the tenant when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

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
	// AuthStyle selects Basic (default) or client_secret_post authentication.
	AuthStyle AuthStyle
	// UserAgent is sent on every request.
	UserAgent string
	// HTTPClient carries requests. Build it with NewHTTPClient; it must not follow
	// redirects, or credentials could be replayed to another host.
	HTTPClient *http.Client
	// Retry decides how failed attempts are retried. The zero value does not retry.
	Retry RetryPolicy
	// Now returns the current time; nil means time.Now. Tests move the clock with it.
	Now func() time.Time
}

// Client performs grants and revocations for one Config. It is safe for concurrent use
// and holds no request state: every call takes the caller's context.
type Client struct {
	cfg  Config
	auth string // the precomputed Basic header value; empty for AuthPost
	rc   *retryablehttp.Client
	// secrets are the forms in which the client secret crosses the wire: raw, form
	// encoded, and inside the Basic header. None may come back in an error.
	secrets []string
}

// New checks cfg and returns a Client for it.
func New(cfg Config) (*Client, error) {
	if cfg.TokenURL == "" {
		return nil, errors.New("token URL is empty")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("client ID is empty")
	}
	if cfg.HTTPClient == nil {
		hc, err := NewHTTPClient("", DefaultTimeout)
		if err != nil {
			return nil, err
		}
		cfg.HTTPClient = hc
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{cfg: cfg}
	if cfg.AuthStyle == AuthBasic {
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.ClientID+":"+cfg.ClientSecret))
	}
	if cfg.ClientSecret != "" {
		c.secrets = sensitiveForms(cfg.ClientSecret)
		c.secrets = append(c.secrets, base64.StdEncoding.EncodeToString([]byte(cfg.ClientID+":"+cfg.ClientSecret)))
	}
	c.rc = c.retryClient()
	return c, nil
}

// NewHTTPClient returns an HTTP client for talking to a tenant: pooled connections, TLS
// 1.2 or newer, the given CA bundle (PEM) instead of the system roots when it is not
// empty, a timeout on every exchange, and no redirects followed.
func NewHTTPClient(caPEM string, timeout time.Duration) (*http.Client, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	transport := cleanhttp.DefaultPooledTransport()
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caPEM)) {
			return nil, errors.New("the CA bundle holds no PEM certificate")
		}
		tlsConfig.RootCAs = pool
	}
	transport.TLSClientConfig = tlsConfig
	return &http.Client{
		Transport: transport,
		Timeout:   timeout,
		// A redirected POST would resend the client credentials to wherever the tenant
		// (or a proxy in front of it) points; report the redirect instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// Token performs the client-credentials grant. Scopes, when given, are sent
// space-separated in the scope parameter.
func (c *Client) Token(ctx context.Context, scopes []string) (*Token, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	start := c.cfg.Now()
	body, err := c.post(ctx, c.cfg.TokenURL, form)
	if err != nil {
		return nil, err
	}
	tok, err := parseToken(body, start)
	if err != nil {
		return nil, c.redact(err)
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

// sensitiveForms is a value as sent: raw, and form encoded.
func sensitiveForms(v string) []string {
	forms := []string{v}
	if enc := url.QueryEscape(v); enc != v {
		forms = append(forms, enc)
	}
	return forms
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

// redact removes every form of the client secret, and of the extra values, from an
// error's text. The tenant has no reason to echo them, but error bodies are quoted back
// to Vault operators and readers, and a misbehaving proxy might reflect the request.
func (c *Client) redact(err error, extra ...string) error {
	if err == nil {
		return nil
	}
	secrets := append(slices.Clone(c.secrets), extra...)
	var te *Error
	if errors.As(err, &te) {
		te.Description = redactString(te.Description, secrets)
		te.Body = redactString(te.Body, secrets)
		te.Code = redactString(te.Code, secrets)
		te.Location = redactString(te.Location, secrets)
	}
	if msg := err.Error(); redactString(msg, secrets) != msg {
		return &redactedError{msg: redactString(msg, secrets), err: err}
	}
	return err
}

func redactString(s string, secrets []string) string {
	for _, secret := range secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
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
