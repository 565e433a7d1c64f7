package client

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxTokenLifetime is the longest lifetime a token is accepted with. No tenant issues a
// client-credentials token for longer; a larger expires_in, or an exp claim further out,
// comes from a misbehaving tenant, and the engine would otherwise hand out leases that
// outlive any sensible rotation.
const MaxTokenLifetime = 366 * 24 * time.Hour

// Token is an access token issued by the tenant. Its String and GoString methods leave
// the access token out, so a stray %v in a log line or a test failure cannot print it.
type Token struct {
	// AccessToken is the bearer token (a JWT for CyberArk Identity).
	AccessToken string
	// TokenType is what the tenant called it, "Bearer" when it said nothing.
	TokenType string
	// ExpiresIn is the lifetime in seconds the tenant granted.
	ExpiresIn int64
	// Scope is what the tenant says it granted; it may be empty or differ from the ask.
	Scope string
	// IssuedAt is when the request that obtained the token was sent. Counting the
	// lifetime from there, not from the answer, errs on the side of an earlier expiry.
	IssuedAt time.Time
	// Expiry is IssuedAt plus ExpiresIn.
	Expiry time.Time
	// SHA256 is the hex SHA-256 of AccessToken, computed once with the token, since a
	// token handed to many readers is reported to each.
	SHA256 string
	// Claims is the access token decoded as a JWT, not verified; nil for an opaque or
	// malformed token.
	Claims *JWT
}

func (t Token) String() string {
	return fmt.Sprintf("Token{type=%s expires_in=%d expiry=%s scope=%q}",
		t.TokenType, t.ExpiresIn, t.Expiry.UTC().Format(time.RFC3339), t.Scope)
}

// GoString keeps %#v from printing the access token.
func (t Token) GoString() string { return t.String() }

// tokenResponse is RFC 6749 section 5.1, made lenient where tenants are known to vary.
type tokenResponse struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	Scope       json.RawMessage `json:"scope"`
}

// parseToken reads a 2xx token response. Secrets are redacted from anything an error
// quotes.
func parseToken(body []byte, sentAt time.Time, secrets []string) (*Token, error) {
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, fmt.Errorf("tenant answered 200 with a body that is not a JSON token response (%d bytes): %w", len(body), jsonErr(err))
	}
	if tr.AccessToken == "" {
		return nil, errors.New("tenant answered 200 without an access_token")
	}
	sum := sha256.Sum256([]byte(tr.AccessToken))
	tok := &Token{AccessToken: tr.AccessToken, TokenType: tr.TokenType, IssuedAt: sentAt, SHA256: hex.EncodeToString(sum[:])}
	tok.Claims, _ = ParseJWT(tr.AccessToken) // nil for an opaque token
	if tok.TokenType == "" {
		tok.TokenType = "Bearer"
	}
	scope, err := parseScope(tr.Scope)
	if err != nil {
		return nil, err
	}
	tok.Scope = scope

	secs, err := parseSeconds(tr.ExpiresIn, secrets)
	if err != nil {
		return nil, err
	}
	if secs == 0 {
		// RFC 6749 only recommends expires_in; a JWT carries its own expiry.
		exp, ok := jwtExpiry(tr.AccessToken)
		if !ok {
			return nil, errors.New("tenant answered 200 without expires_in, and the access token carries no exp claim")
		}
		// In float seconds, so that an absurd exp cannot overflow a time.Duration.
		life := exp - float64(sentAt.UnixNano())/1e9
		if life < 1 {
			return nil, errors.New("tenant issued an access token that has already expired")
		}
		if life > MaxTokenLifetime.Seconds() {
			return nil, fmt.Errorf("tenant answered without expires_in and the access token's exp claim lies more than %d seconds (MaxTokenLifetime) after the request", int64(MaxTokenLifetime.Seconds()))
		}
		secs = int64(life)
	}
	tok.ExpiresIn = secs
	tok.Expiry = sentAt.Add(time.Duration(secs) * time.Second)
	return tok, nil
}

// decimalSeconds is JSON number syntax, with no sign other than a minus (which the
// range check then refuses as expired). strconv.ParseFloat alone would also take hex
// floats, underscores, a plus sign, Inf and NaN, none of which a tenant means.
var decimalSeconds = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// parseSeconds reads expires_in as a JSON number or a numeric string; absent is 0.
func parseSeconds(raw json.RawMessage, secrets []string) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("tenant answered an unreadable expires_in: %w", jsonErr(err))
		}
		s = strings.TrimSpace(s)
	}
	if !decimalSeconds.MatchString(s) {
		return 0, fmt.Errorf("tenant answered expires_in %.40q: it must be a decimal number of seconds", redactString(s, secrets))
	}
	// The syntax is checked, so the only error left is a range error, and then f is
	// ±Inf or 0, which the checks below refuse.
	f, _ := strconv.ParseFloat(s, 64)
	s = redactString(s, secrets) // a reflected secret may be all digits
	if f < 1 {
		return 0, fmt.Errorf("tenant answered expires_in %.40s: the token is already expired, or expires within a second", s)
	}
	if limit := MaxTokenLifetime.Seconds(); f > limit {
		return 0, fmt.Errorf("tenant answered expires_in %.40s, which is out of range: the limit is %d seconds (MaxTokenLifetime)", s, int64(limit))
	}
	return int64(f), nil
}

// parseScope accepts the RFC string form and, leniently, a JSON array of strings.
func parseScope(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return strings.Join(list, " "), nil
	}
	return "", errors.New("tenant answered a scope that is neither a string nor a list of strings")
}

// jwtExpiry reads the exp claim, in seconds since the epoch, without verifying the
// signature: it only serves as a lifetime hint when the tenant leaves out expires_in,
// never to trust the token.
func jwtExpiry(token string) (float64, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return 0, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return 0, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == "" {
		return 0, false
	}
	f, err := claims.Exp.Float64()
	if err != nil {
		return 0, false
	}
	return f, true
}

// jsonErr keeps the position of a syntax error but not the bytes around it, which could
// be part of a token.
func jsonErr(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q has the wrong JSON type %s", te.Field, te.Value)
	}
	return errors.New("invalid JSON")
}
