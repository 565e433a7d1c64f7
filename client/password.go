package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// ErrOutcomeUnknown marks a failed password change after which the tenant may or may
// not hold the new password: the request may have reached it and its answer been lost.
// The caller must find out which password the tenant accepts before forgetting either.
var ErrOutcomeUnknown = errors.New("the tenant may or may not have changed the password")

// ManagementError is a management API's refusal: CyberArk Identity answers HTTP 200
// with {"success":false,...} and the password stays as it was. It carries the tenant's
// words, never a password.
type ManagementError struct {
	// StatusCode is the HTTP status of the answer, 200 for the usual envelope.
	StatusCode int
	// Message is the tenant's explanation, e.g. a password policy rule.
	Message string
	// MessageID and ErrorID identify the message at the tenant.
	MessageID string
	ErrorID   string
}

func (e *ManagementError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no message"
	}
	s := fmt.Sprintf("tenant refused the password change (HTTP %d): %s", e.StatusCode, msg)
	if e.MessageID != "" {
		s += " (" + e.MessageID + ")"
	}
	return s
}

// envelope is the answer of CyberArk Identity's management APIs. Only success decides
// the outcome; the texts are kept raw, so that one of an unexpected type (a number, an
// object) cannot make a definite answer unreadable.
type envelope struct {
	Success   *bool           `json:"success"`
	Message   json.RawMessage `json:"Message"`
	MessageID json.RawMessage `json:"MessageID"`
	ErrorID   json.RawMessage `json:"ErrorID"`
}

// envelopeText is one of the envelope's texts, redacted and cut: a string as decoded, any
// other value as JSON with the secrets removed from every string in it.
func envelopeText(raw json.RawMessage, secrets []string) string {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		s = string(redactJSON(raw, secrets))
	}
	return excerpt(s, secrets)
}

// ChangePassword changes the service user's own password (the client secret) to
// newSecret at changeURL, CyberArk Identity's UserMgmt/ChangeUserPassword. It first
// grants a token with the current secret and scopes, which must include one whose
// allowed REST APIs cover the call, and sends it as the bearer.
//
// The change itself is sent once and never retried: it is not idempotent, and a retry
// of a change that went through would be refused as a reused password. A failure before
// the change was sent, or one the tenant answered, leaves the password as it was; any
// other failure wraps ErrOutcomeUnknown.
//
// It returns the bearer token it used, once granted, so that the caller can revoke it
// with whichever secret the tenant takes afterwards.
func (c *Client) ChangePassword(ctx context.Context, changeURL string, scopes []string, newSecret string) (bearer string, _ error) {
	if changeURL == "" {
		return "", errors.New("no password change endpoint is configured")
	}
	if newSecret == "" || newSecret == c.cfg.ClientSecret {
		return "", errors.New("the new password must differ from the current one")
	}
	tok, err := c.Token(ctx, scopes)
	if err != nil {
		return "", fmt.Errorf("getting a token to change the password: %w", err)
	}
	return tok.AccessToken, c.changePassword(ctx, changeURL, tok.AccessToken, newSecret)
}

// SendPasswordChange is the change step of ChangePassword alone, for a caller that
// granted the bearer token itself (to count that grant's refusal as a failed login).
// The same rules hold: sent once, never retried, ErrOutcomeUnknown when the tenant may
// have applied it.
func (c *Client) SendPasswordChange(ctx context.Context, changeURL, bearer, newSecret string) error {
	switch {
	case changeURL == "":
		return errors.New("no password change endpoint is configured")
	case newSecret == "" || newSecret == c.cfg.ClientSecret:
		return errors.New("the new password must differ from the current one")
	case bearer == "":
		return errors.New("no bearer token to change the password with")
	}
	return c.changePassword(ctx, changeURL, bearer, newSecret)
}

// SendPasswordReset sets another user's password, as its manager, at resetURL:
// CyberArk Identity's UserMgmt/ResetUserPassword with the user's UUID. bearer is a
// token of the manager whose scope allows the call; the Client is the managed user's,
// so that its current secret is redacted too. The same rules hold as for a change:
// sent once, never retried, ErrOutcomeUnknown when the tenant may have applied it.
func (c *Client) SendPasswordReset(ctx context.Context, resetURL, bearer, userID, newSecret string) error {
	switch {
	case resetURL == "":
		return errors.New("no password reset endpoint is configured")
	case userID == "":
		return errors.New("the managed user's ID is not known")
	case newSecret == "" || newSecret == c.cfg.ClientSecret:
		return errors.New("the new password must differ from the current one")
	case bearer == "":
		return errors.New("no bearer token to reset the password with")
	}
	return c.sendManagement(ctx, resetURL, bearer, newSecret, map[string]string{"ID": userID, "newPassword": newSecret})
}

func (c *Client) changePassword(ctx context.Context, changeURL, bearer, newSecret string) error {
	return c.sendManagement(ctx, changeURL, bearer, newSecret, map[string]string{"oldPassword": c.cfg.ClientSecret, "newPassword": newSecret})
}

// sendManagement sends one password call of the management API, once.
func (c *Client) sendManagement(ctx context.Context, changeURL, bearer, newSecret string, fields map[string]string) (err error) {
	secrets := c.sensitive(append(sensitiveForms(newSecret), sensitiveForms(bearer)...)...)
	// The fields are redacted as they are read, but an error's text is more: quoting an
	// excerpt adds backslashes, which can complete a secret that holds one.
	defer func() { err = redact(err, secrets) }()
	body, err := json.Marshal(fields)
	if err != nil {
		return fmt.Errorf("encoding the password change: %w", err)
	}
	if c.cfg.Retry.Budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Retry.Budget)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, changeURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the password change request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+bearer)
	if c.cfg.UserAgent != "" {
		req.Header.Set("User-Agent", c.cfg.UserAgent)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, redact(c.transportError(ctx, err), secrets))
	}
	defer resp.Body.Close()
	answer, readErr := c.readLimited(ctx, resp.Body)

	var env envelope
	if readErr == nil && json.Unmarshal(answer, &env) == nil && env.Success != nil {
		if *env.Success && resp.StatusCode == http.StatusOK {
			return nil
		}
		if !*env.Success {
			return &ManagementError{
				StatusCode: resp.StatusCode,
				Message:    envelopeText(env.Message, secrets),
				MessageID:  envelopeText(env.MessageID, secrets),
				ErrorID:    envelopeText(env.ErrorID, secrets),
			}
		}
	}
	if readErr != nil {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, redact(readErr, secrets))
	}
	te := newError(resp, answer, c.cfg.Now(), secrets)
	if te.Refused() || te.StatusCode == http.StatusTooManyRequests {
		// Refused or throttled before it was acted on.
		return te
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return fmt.Errorf("%w: tenant answered HTTP %d without a management envelope", ErrOutcomeUnknown, resp.StatusCode)
	}
	return fmt.Errorf("%w: %w", ErrOutcomeUnknown, te)
}
