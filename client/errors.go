package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Error is a non-success HTTP answer from the tenant. It carries what the tenant said,
// never what was sent to it.
type Error struct {
	// StatusCode is the HTTP status of the tenant's (last) answer.
	StatusCode int
	// Code is the OAuth error code, e.g. "invalid_client"; empty for non-OAuth bodies.
	Code string
	// Description is the OAuth error_description, e.g. "wrong clientid".
	Description string
	// Body is a short, printable excerpt of a body that was not an OAuth error, such as
	// a proxy's HTML page.
	Body string
	// ContentType is the media type of the answer.
	ContentType string
	// RetryAfter is the wait the tenant asked for with Retry-After, if any.
	RetryAfter time.Duration
	// Location is where a redirect pointed, redacted and cut like Body.
	Location string
	// Attempts is how many requests were made before giving up.
	Attempts int
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tenant answered HTTP %d", e.StatusCode)
	switch {
	case e.Code != "" && e.Description != "":
		fmt.Fprintf(&b, ": %s: %s", e.Code, e.Description)
	case e.Code != "":
		fmt.Fprintf(&b, ": %s", e.Code)
	case e.Description != "":
		fmt.Fprintf(&b, ": %s", e.Description)
	case e.Location != "":
		fmt.Fprintf(&b, ": redirect to %q (set token_url to the final URL)", e.Location)
	case e.Body != "":
		fmt.Fprintf(&b, " (%s): %q", e.ContentType, e.Body)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (Retry-After %s)", e.RetryAfter)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	return b.String()
}

// Temporary reports whether trying again later may succeed: timeouts, rate limits and
// server errors, not refusals.
func (e *Error) Temporary() bool {
	return e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// Refused reports whether the tenant gave a definite refusal that repeating the request
// cannot fix: a redirect, or a 4xx other than 408 and 429. Callers should pass it on
// rather than retry, since repeated failed logins can lock the service user.
func (e *Error) Refused() bool {
	return e.StatusCode >= 300 && e.StatusCode < 500 && !e.Temporary()
}

// notAuthFailures are OAuth error codes that say the request, not the client's
// credentials, was wrong: the tenant authenticated the client first, or never needed
// to. Every other refusal may be a failed login.
var notAuthFailures = map[string]bool{
	"invalid_scope":          true,
	"invalid_request":        true,
	"unsupported_grant_type": true,
	"unsupported_token_type": true,
}

// CredentialsRefused reports whether a refusal may have counted as a failed login of
// the client at the tenant, towards locking it out. It errs on the side of yes: a
// refusal of an unknown shape (a redirect, an HTML page, no OAuth code) counts, since
// over-counting only slows the caller down, while under-counting can lock the service
// user out.
func (e *Error) CredentialsRefused() bool {
	return e.Refused() && !notAuthFailures[e.Code]
}

// maxExcerpt bounds how much of an unexpected body is quoted back in an error.
const maxExcerpt = 200

// newError describes a non-2xx answer. Everything quoted from it is redacted of the
// secrets before it is cut or folded: an excerpt could otherwise end inside a reflected
// secret, or fold its white space so that it no longer matches, and leak a prefix.
func newError(resp *http.Response, body []byte, now time.Time, secrets []string) *Error {
	e := &Error{StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), now)}
	contentType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	e.ContentType = excerpt(contentType, secrets)
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		e.Location = excerpt(resp.Header.Get("Location"), secrets)
	}
	raw := []byte(redactString(string(body), secrets))
	var oauth struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		// CyberArk's management APIs answer with this envelope instead.
		Message string `json:"Message"`
	}
	if json.Unmarshal(raw, &oauth) == nil && (oauth.Error != "" || oauth.Description != "" || oauth.Message != "") {
		// excerpt redacts the decoded fields again: a JSON escape (\u0026, \/) inside a
		// reflected secret hid it from the pass over the raw bytes.
		e.Code = excerpt(oauth.Error, secrets)
		e.Description = excerpt(oauth.Description, secrets)
		if e.Description == "" {
			e.Description = excerpt(oauth.Message, secrets)
		}
		return e
	}
	e.Body = excerpt(string(redactJSON(raw, secrets)), secrets)
	return e
}

// excerpt redacts s, then makes it printable and short. The second redaction catches a
// secret whose pieces only folding white space brought together.
func excerpt(s string, secrets []string) string {
	return redactString(printable(redactString(s, secrets), maxExcerpt), secrets)
}

// redactJSON returns a JSON body re-encoded with the secrets removed from every decoded
// string, so no escaping can hide one; anything that is not one JSON value comes back
// as it was.
func redactJSON(body []byte, secrets []string) []byte {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil || dec.Decode(new(any)) != io.EOF {
		return body
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if enc.Encode(redactValue(v, secrets)) != nil {
		return body
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

func redactValue(v any, secrets []string) any {
	switch v := v.(type) {
	case string:
		return redactString(v, secrets)
	case []any:
		for i := range v {
			v[i] = redactValue(v[i], secrets)
		}
		return v
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[redactString(k, secrets)] = redactValue(x, secrets)
		}
		return out
	}
	return v
}

// printable folds white space and drops control characters, so a tenant's answer
// cannot forge log lines, and cuts it to n runes.
func printable(s string, n int) string {
	var b strings.Builder
	space := false
	count := 0
	for _, r := range s {
		if count >= n {
			b.WriteString("…")
			break
		}
		if unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if !unicode.IsPrint(r) {
			continue
		}
		if space {
			b.WriteByte(' ')
			count++
			space = false
		}
		b.WriteRune(r)
		count++
	}
	return b.String()
}

// parseRetryAfter reads delay-seconds or an HTTP date (RFC 9110 10.2.3).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	// Digits only, as the RFC has it; a value past a time.Duration saturates rather than
	// wrapping round to a negative wait, which would be no wait at all.
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs > uint64(math.MaxInt64/time.Second) {
			return math.MaxInt64
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
