package client

import (
	"encoding/json"
	"fmt"
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
	// Location is where a redirect pointed.
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

// maxExcerpt bounds how much of an unexpected body is quoted back in an error.
const maxExcerpt = 200

func newError(resp *http.Response, body []byte) *Error {
	e := &Error{StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	e.ContentType, _, _ = mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		e.Location = resp.Header.Get("Location")
	}
	var oauth struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		// CyberArk's management APIs answer with this envelope instead.
		Message string `json:"Message"`
	}
	if json.Unmarshal(body, &oauth) == nil && (oauth.Error != "" || oauth.Description != "" || oauth.Message != "") {
		e.Code = printable(oauth.Error, maxExcerpt)
		e.Description = printable(oauth.Description, maxExcerpt)
		if e.Description == "" {
			e.Description = printable(oauth.Message, maxExcerpt)
		}
		return e
	}
	e.Body = printable(string(body), maxExcerpt)
	return e
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
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
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
