package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Fault is a failure to inject into the answers of the tenant endpoints. A fault with
// only Delay (and perhaps RetryAfter) serves the real answer late; one with Status, Body,
// MalformedJSON or OversizeBytes replaces the answer; DropConnection sends none. A
// faulted request has no effect at the tenant unless ApplyFirst is set.
//
// In JSON, Delay is a Go duration string ("250ms", "2s") or a number of nanoseconds.
type Fault struct {
	// Endpoint limits the fault to "token", "revoke", "introspect", "keys", "discovery",
	// "change_password" or "reset_password"; empty matches all of them. Control endpoints
	// are never faulted.
	Endpoint string `json:"endpoint"`
	// Times is how many matching requests the fault applies to; 0 (or less) keeps it
	// until ClearFaults.
	Times int `json:"times"`
	// Delay is slept before answering; a client that gives up ends the wait and gets
	// nothing.
	Delay time.Duration `json:"delay"`
	// Status replaces the real answer's status; 0 keeps the real answer unless a body
	// option below is set, which is then sent with 200. Values outside 200-599 become 500.
	Status int `json:"status"`
	// RetryAfter is sent as the Retry-After header, with real and replaced answers alike.
	RetryAfter string `json:"retry_after"`
	// Location is sent as the Location header, for redirect statuses.
	Location string `json:"location"`
	// Body is sent raw instead of the default: a JSON OAuth-like error for 4xx, a front
	// proxy's short HTML page for 3xx and 5xx, and {} for 2xx.
	Body string `json:"body"`
	// ContentType overrides the Content-Type, which otherwise follows the body's look.
	ContentType string `json:"content_type"`
	// MalformedJSON sends a truncated JSON object, as a connection cut mid-body would.
	MalformedJSON bool `json:"malformed_json"`
	// OversizeBytes sends a well-formed token response padded to at least this many bytes,
	// to check that a client bounds what it reads.
	OversizeBytes int `json:"oversize_bytes"`
	// DropConnection closes the connection without answering (on HTTP/2, resets the stream).
	DropConnection bool `json:"drop_connection"`
	// ApplyFirst lets the tenant handle the request for real before the fault strikes, and
	// its effects stand: a password is changed, a token issued or revoked, even when the
	// fault then drops the connection, replaces the answer, or delays it past the
	// caller's patience. It plays "the tenant did it but the caller never heard".
	ApplyFirst bool `json:"apply_first"`
	// Hold, for Endpoint "change_password" only, plays a tenant that takes a password
	// change in and makes it later, or never: a ChangeUserPassword that passes the
	// request's checks (method, size, bearer token, scope, body) is held, unapplied, and
	// the caller gets no answer (the connection is dropped, as with DropConnection, after
	// any Delay) unless the fault sends its own (Status, Body, ...). LandHeldChanges
	// applies the held changes later and DiscardHeldChanges forgets them. A request that
	// fails those checks is not held and gets no answer either. Hold excludes ApplyFirst,
	// and is ignored on other endpoints.
	Hold bool `json:"hold"`
}

// faultPlain has Fault's fields without its methods, so the JSON methods can reuse the
// standard encoding for everything but Delay.
type faultPlain Fault

// MarshalJSON writes Delay as a duration string so that a marshalled fault reads back
// the same and stays readable.
func (f Fault) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		faultPlain
		Delay string `json:"delay,omitempty"`
	}{faultPlain: faultPlain(f), Delay: durationString(f.Delay)})
}

func durationString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// UnmarshalJSON accepts Delay as a duration string or as nanoseconds, and rejects unknown
// fields: a misspelt option would otherwise leave a fault that silently does nothing.
func (f *Fault) UnmarshalJSON(data []byte) error {
	var aux struct {
		faultPlain
		Delay json.RawMessage `json:"delay"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return fmt.Errorf("fault: %w", err)
	}
	d, err := parseDelay(aux.Delay)
	if err != nil {
		return err
	}
	*f = Fault(aux.faultPlain)
	f.Delay = d
	return nil
}

func parseDelay(raw json.RawMessage) (time.Duration, error) {
	return parseDuration(raw, "fault delay")
}

// parseDuration reads a JSON duration: a Go duration string or integer nanoseconds,
// never negative. what names the field in errors.
func parseDuration(raw json.RawMessage, what string) (time.Duration, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var d time.Duration
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if s == "" {
			return 0, nil
		}
		parsed, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		d = parsed
	} else {
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: want a duration string or integer nanoseconds", what, raw)
		}
		d = time.Duration(n)
	}
	if d < 0 {
		return 0, fmt.Errorf("%s %s is negative", what, d)
	}
	return d, nil
}

// validate rejects faults that could never do what their author meant. AddFaults cannot
// return an error, so only the control endpoint applies it.
func (f Fault) validate() error {
	switch strings.ToLower(f.Endpoint) {
	case "", epToken, epRevoke, epIntrospect, epKeys, epDiscovery, epChangePassword, epResetPassword:
	default:
		return fmt.Errorf("endpoint %q: want token, revoke, introspect, keys, discovery, %s, %s or empty",
			f.Endpoint, epChangePassword, epResetPassword)
	}
	if f.Times < 0 {
		return fmt.Errorf("times %d is negative", f.Times)
	}
	if f.Hold && !strings.EqualFold(f.Endpoint, epChangePassword) {
		return fmt.Errorf("hold: only for endpoint %s", epChangePassword)
	}
	if f.Hold && f.ApplyFirst {
		return errors.New("hold and apply_first exclude each other: a held change is made later, not first")
	}
	if f.Delay < 0 {
		return fmt.Errorf("delay %s is negative", f.Delay)
	}
	if f.Status != 0 && (f.Status < 200 || f.Status > 599) {
		return fmt.Errorf("status %d: want 200-599", f.Status)
	}
	if f.OversizeBytes < 0 {
		return fmt.Errorf("oversize_bytes %d is negative", f.OversizeBytes)
	}
	for name, v := range map[string]string{"retry_after": f.RetryAfter, "location": f.Location, "content_type": f.ContentType} {
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("%s contains a line break", name)
		}
	}
	return nil
}

// replacesAnswer reports whether the fault sends its own answer instead of the real one.
func (f Fault) replacesAnswer() bool {
	return f.Status != 0 || f.Body != "" || f.MalformedJSON || f.OversizeBytes > 0
}

type queuedFault struct {
	fault Fault
	left  int // matching requests still to fault; <= 0 means until cleared
}

// AddFaults appends faults to the queue. Each request takes the first queued fault whose
// Endpoint matches it.
func (e *Emulator) AddFaults(f ...Fault) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, fault := range f {
		e.faults = append(e.faults, &queuedFault{fault: fault, left: fault.Times})
	}
}

// ClearFaults empties the fault queue.
func (e *Emulator) ClearFaults() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = nil
}

// takeFault pops one use of the first fault matching ep. The caller holds e.mu.
func (e *Emulator) takeFault(ep string) *Fault {
	for i, q := range e.faults {
		if q.fault.Endpoint != "" && !strings.EqualFold(q.fault.Endpoint, ep) {
			continue
		}
		f := q.fault
		if q.left > 0 {
			q.left--
			if q.left == 0 {
				e.faults = slices.Delete(e.faults, i, i+1)
			}
		}
		return &f
	}
	return nil
}

// applyFault plays f on a request to endpoint ep. It reports false when the real answer
// should follow.
func (e *Emulator) applyFault(w http.ResponseWriter, r *http.Request, ep string, f Fault) (handled bool) {
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client left, or the server is shutting down. Returning quietly would
			// send an empty 200 to a client that is still there; cut it off instead.
			abortResponse(w, r)
			return true
		}
	}
	if f.DropConnection {
		dropConnection(w)
		return true
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.Location != "" {
		w.Header().Set("Location", f.Location)
	}
	if !f.replacesAnswer() {
		return false
	}

	status := f.Status
	switch {
	case status == 0:
		status = http.StatusOK
	case status < 200 || status > 599:
		status = http.StatusInternalServerError
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	switch {
	case f.Body != "":
		writeRaw(w, status, f.ContentType, []byte(f.Body))
	case f.MalformedJSON:
		// A real-looking prefix cut off mid-value: clients must fail to parse it rather
		// than pick fields out of it, even a "success":true.
		truncated := `{"access_token":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ`
		if isManagement(ep) {
			truncated = `{"success":true,"Result":nu`
		}
		writeRaw(w, status, f.ContentType, []byte(truncated))
	case f.OversizeBytes > 0:
		writeOversize(w, status, f.ContentType, ep, f.OversizeBytes)
	default:
		body, ct := defaultFaultBody(ep, status)
		if f.ContentType != "" {
			ct = f.ContentType
		}
		writeRaw(w, status, ct, body)
	}
	return true
}

// dropConnection closes the connection under the request. HTTP/2 connections cannot be
// hijacked; aborting the handler resets the stream there, which a client sees the same way.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// abortResponse is dropConnection for a request whose context has ended. A writer that
// is neither hijackable nor HTTP/2, such as an httptest.ResponseRecorder in a test that
// calls ServeHTTP directly, is left unanswered rather than panicked through.
func abortResponse(w http.ResponseWriter, r *http.Request) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
		return
	}
	if r.ProtoMajor >= 2 {
		panic(http.ErrAbortHandler)
	}
}

func writeRaw(w http.ResponseWriter, status int, contentType string, body []byte) {
	if contentType == "" {
		contentType = sniffContentType(body)
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) // fails for 204/304 and for clients that left; neither matters
}

func sniffContentType(body []byte) string {
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
		return "application/json"
	case trimmed[0] == '{' || trimmed[0] == '[':
		return "application/json"
	case trimmed[0] == '<':
		return "text/html; charset=utf-8"
	default:
		return "text/plain; charset=utf-8"
	}
}

// defaultFaultBody mimics who would really send such a status: the tenant's OAuth layer
// (or, on the management APIs, a failed envelope) for 2xx and 4xx there, a front proxy's
// HTML page for redirects and 5xx.
func defaultFaultBody(ep string, status int) ([]byte, string) {
	text := http.StatusText(status)
	if text == "" {
		text = "Status " + strconv.Itoa(status)
	}
	switch {
	case isManagement(ep) && (status < 300 || status >= 400 && status < 500):
		msg, id, errID := text+".", "InjectedFault", newUUID()
		body, _ := json.Marshal(envelope{Message: &msg, MessageID: &id, ErrorID: &errID})
		return body, "application/json"
	case status >= 400 && status < 500:
		code := "invalid_request"
		switch status {
		case http.StatusUnauthorized:
			code = "invalid_client"
		case http.StatusForbidden:
			code = "access_denied"
		case http.StatusTooManyRequests:
			code = "temporarily_unavailable"
		}
		body, _ := json.Marshal(map[string]string{"error": code, "error_description": strings.ToLower(text)})
		return body, "application/json"
	case status >= 300:
		title := strconv.Itoa(status) + " " + text
		page := "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>" +
			title + "</h1></center>\r\n</body>\r\n</html>\r\n"
		return []byte(page), "text/html"
	default:
		return []byte("{}"), "application/json"
	}
}

// writeOversize streams a valid object shaped like the endpoint's answer (a token, or a
// management envelope) padded past size bytes without holding it in memory, so
// multi-megabyte faults stay cheap.
func writeOversize(w http.ResponseWriter, status int, contentType, ep string, size int) {
	prefix := `{"access_token":"oversize.response.padding","token_type":"Bearer","expires_in":3600,"padding":"`
	if isManagement(ep) {
		prefix = `{"success":true,"Result":null,"Message":null,"padding":"`
	}
	const suffix = `"}`
	pad := max(size-len(prefix)-len(suffix), 0)
	if contentType == "" {
		contentType = "application/json"
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(prefix)+pad+len(suffix)))
	w.WriteHeader(status)
	if _, err := io.WriteString(w, prefix); err != nil {
		return
	}
	chunk := bytes.Repeat([]byte{'x'}, 32<<10)
	for pad > 0 {
		n := min(pad, len(chunk))
		if _, err := w.Write(chunk[:n]); err != nil {
			return // the client stopped reading, as a bounded client should
		}
		pad -= n
	}
	_, _ = io.WriteString(w, suffix)
}

// bufferedResponse holds a real answer while an ApplyFirst fault decides whether the
// caller gets it.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newBufferedResponse() *bufferedResponse {
	return &bufferedResponse{header: make(http.Header)}
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// sendTo forwards the held answer, keeping headers the fault has set (Retry-After,
// Location) where the answer has none of its own.
func (b *bufferedResponse) sendTo(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range b.header {
		h[k] = v
	}
	status := b.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(b.body.Bytes())
}
