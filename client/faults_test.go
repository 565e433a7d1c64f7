package client

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// The fault matrix runs every case against a client with a short timeout and budget,
// so that "bounded" is something a test can see within seconds.
const (
	faultRequestTimeout = 300 * time.Millisecond
	faultBudget         = 2 * time.Second
	faultMaxRetryAfter  = 200 * time.Millisecond
	// faultMargin is scheduling slack for -race on two busy cores, not part of what the
	// client promises.
	faultMargin = time.Second
	// faultMaxAlloc is far below what any fault here would make an unbounded client
	// allocate (10 MiB, 2 GiB), and far above what a bounded one needs.
	faultMaxAlloc = 64 << 20
)

func faultConfig(cfg *Config) {
	cfg.RequestTimeout = faultRequestTimeout
	cfg.Retry = RetryPolicy{
		MaxRetries:    2,
		WaitMin:       10 * time.Millisecond,
		WaitMax:       50 * time.Millisecond,
		MaxRetryAfter: faultMaxRetryAfter,
		Budget:        faultBudget,
	}
}

// faultFixture is what one case runs against.
type faultFixture struct {
	emu *emulator.Emulator
	ca  *emulator.CA
	// count is how many attempts the tenant saw: token requests at the emulator, or
	// connections at a tenant of the case's own, which may never see a request.
	count func() int
}

type faultCase struct {
	name string
	// faults are queued on the emulator, which plays the tenant unless target is set.
	faults []emulator.Fault
	// target starts what the emulator cannot play, sets fx.count, and returns the
	// token URL.
	target func(t *testing.T, fx *faultFixture) string
	config func(*Config)
	// transport adjusts the client's transport before the call.
	transport func(*http.Transport)

	// want checks a token; nil means the call must fail.
	want func(t *testing.T, tok *Token)
	// words must all appear in the error.
	words []string
	// status is the StatusCode of the *Error the call must return; 0 means the error
	// must not be an *Error, since no tenant answer was read.
	status             int
	refused, temporary bool
	// attempts is what fx.count must say afterwards; 0 is not checked.
	attempts               int
	minElapsed, maxElapsed time.Duration // maxElapsed 0: the case's Budget + faultMargin
	// after checks what else the case is about.
	after func(t *testing.T, fx *faultFixture, err error)
}

// TestTenantFaults is the fault matrix. It is not parallel, so that each case can check
// that it left no goroutine behind without other tests' goroutines coming and going.
func TestTenantFaults(t *testing.T) {
	emu, err := emulator.New(emulator.Config{Apps: []emulator.App{{
		ID:      "VaultApp",
		Scopes:  []string{"all"},
		Clients: []emulator.Client{{ID: testClientID, Secret: testClientSecret}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := emulator.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := emulator.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	bomb := gzipBomb(2 << 30)
	for _, tc := range faultCases(otherCA, bomb) {
		t.Run(tc.name, func(t *testing.T) { runFault(t, emu, ca, tc) })
	}
}

func runFault(t *testing.T, emu *emulator.Emulator, ca *emulator.CA, tc faultCase) {
	leaks := goleak.IgnoreCurrent()

	emu.Reset()
	emu.AddFaults(tc.faults...)
	fx := &faultFixture{emu: emu, ca: ca}
	var tokenURL string
	if tc.target != nil {
		tokenURL = tc.target(t, fx)
	} else {
		srv, _ := serveTLS(t, ca, emu)
		tokenURL = srv.URL + "/oauth2/token/VaultApp"
		fx.count = func() int { return int(emu.Stats().TokenRequests) }
	}
	cfg := Config{
		TokenURL:     tokenURL,
		ClientID:     testClientID,
		ClientSecret: testClientSecret,
		CACert:       string(ca.CertPEM()),
	}
	faultConfig(&cfg)
	if tc.config != nil {
		tc.config(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tc.transport != nil {
		tc.transport(c.transport)
	}
	t.Cleanup(c.Close)

	// A guard for a client that ignores its budget: the elapsed check below reports it,
	// instead of the suite hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	tok, err := c.Token(ctx, []string{"all"})
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)

	closeAndVerify(t, c, leaks)

	maxElapsed := tc.maxElapsed
	if maxElapsed == 0 {
		maxElapsed = cfg.Retry.Budget + faultMargin
	}
	if elapsed > maxElapsed || elapsed < tc.minElapsed {
		t.Errorf("the call took %s, want between %s and %s", elapsed, tc.minElapsed, maxElapsed)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > faultMaxAlloc {
		t.Errorf("the call allocated %d MiB", alloc>>20)
	}
	if tc.attempts > 0 {
		if n := fx.count(); n != tc.attempts {
			t.Errorf("the tenant saw %d attempts, want %d", n, tc.attempts)
		}
	}
	if tc.after != nil {
		defer tc.after(t, fx, err)
	}

	if tc.want != nil {
		if err != nil {
			t.Fatalf("want a token, got %v", err)
		}
		tc.want(t, tok)
		return
	}
	if err == nil {
		t.Fatalf("want an error, got a token (%s)", tok)
	}
	msg := err.Error()
	for _, w := range tc.words {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	if fp, ok := leaked(msg, c.sensitive()); ok {
		t.Errorf("the error carries the client secret (%s)", fp)
	}
	var te *Error
	isTenant := errors.As(err, &te)
	switch {
	case tc.status == 0 && isTenant:
		t.Errorf("no tenant answer was read, but the error is a *client.Error (HTTP %d)", te.StatusCode)
	case tc.status == 0:
	case !isTenant:
		t.Errorf("error %T is not a *client.Error, want HTTP %d", err, tc.status)
	default:
		if te.StatusCode != tc.status || te.Refused() != tc.refused || te.Temporary() != tc.temporary {
			t.Errorf("*client.Error: status %d refused %t temporary %t, want %d %t %t",
				te.StatusCode, te.Refused(), te.Temporary(), tc.status, tc.refused, tc.temporary)
		}
	}
}

// closeAndVerify closes the client while the servers are still up, some of them
// holding a connection open for ever, and checks that Close alone ended every goroutine
// the client started: the pooled connections, and dials no call waits for any more (a
// hung TLS handshake would otherwise run on for the transport's TLSHandshakeTimeout).
// The servers' goroutines for those connections end when the client hangs up.
//
// HTTP/2 forgets a canceled stream only after the call has returned, and until then its
// connection is not idle, so Close is repeated for a moment before anything counts as
// left behind.
func closeAndVerify(t *testing.T, c *Client, leaks goleak.Option) {
	t.Helper()
	opts := []goleak.Option{
		leaks,
		goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1"),
		goleak.IgnoreAnyFunction("github.com/idsec-labs/vault-plugin-secrets-cyberark/client.(*rawServer).accept"),
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c.Close()
		if goleak.Find(opts...) == nil {
			return
		}
	}
	goleak.VerifyNone(t, opts...)
}

func faultCases(otherCA *emulator.CA, bomb []byte) []faultCase {
	tokenBody := func(body string) []emulator.Fault {
		return []emulator.Fault{{Endpoint: "token", Status: 200, Body: body}}
	}
	always := func(f emulator.Fault) []emulator.Fault {
		f.Endpoint = "token"
		return []emulator.Fault{f}
	}
	expiresIn := func(want, slack int64) func(*testing.T, *Token) {
		return func(t *testing.T, tok *Token) {
			if tok.ExpiresIn < want-slack || tok.ExpiresIn > want {
				t.Errorf("ExpiresIn = %d, want %d", tok.ExpiresIn, want)
			}
		}
	}
	retryAfter := func(atLeast time.Duration) func(*testing.T, *faultFixture, error) {
		return func(t *testing.T, _ *faultFixture, err error) {
			var te *Error
			if errors.As(err, &te) && te.RetryAfter < atLeast {
				t.Errorf("RetryAfter = %s, want at least %s", te.RetryAfter, atLeast)
			}
		}
	}
	// Waiting the cap twice (three attempts) shows that the cap applied; the upper
	// bound, that nothing waited longer.
	capped := faultMaxRetryAfter*2 - 20*time.Millisecond
	cappedMax := faultMaxRetryAfter*2 + faultMargin
	noGzip := func(tr *http.Transport) { tr.DisableCompression = true }
	// Reading a megabyte under -race on a busy machine can take longer than the
	// default timeout; these cases are about size, not time.
	bigBody := func(cfg *Config) { cfg.RequestTimeout = 2 * time.Second }

	return []faultCase{
		{
			name:     "healthy tenant",
			want:     expiresIn(18000, 5),
			attempts: 1,
		},
		{
			name:     "healthy tenant over HTTP/2",
			target:   overHTTP2,
			want:     expiresIn(18000, 5),
			attempts: 1,
		},

		// The network.
		{
			name:   "connection refused",
			target: refusedTarget,
			words:  []string{"contacting tenant", "connection refused", "gave up after 3 attempts"},
		},
		{
			name: "certificate from another CA",
			target: func(t *testing.T, fx *faultFixture) string {
				srv, conns := serveTLS(t, fx.ca, fx.emu)
				fx.count = conns
				return srv.URL + "/oauth2/token/VaultApp"
			},
			config: func(cfg *Config) { cfg.CACert = string(otherCA.CertPEM()) },
			words:  []string{"contacting tenant", "certificate signed by unknown authority"},
			// A certificate error is not retried: another attempt cannot fix it.
			attempts: 1,
			after: func(t *testing.T, fx *faultFixture, _ error) {
				if n := fx.emu.Stats().TokenRequests; n != 0 {
					t.Errorf("the tenant got %d token requests over a refused handshake", n)
				}
			},
		},
		{
			name: "TLS handshake never completes",
			target: func(t *testing.T, fx *faultFixture) string {
				rs := startRaw(t, func(conn net.Conn) { _, _ = io.Copy(io.Discard, conn) })
				fx.count = rs.accepted
				return "https://" + rs.addr() + "/oauth2/token/VaultApp"
			},
			words:    []string{"gave up after 3 attempts: contacting tenant: no complete answer within the 300ms request timeout"},
			attempts: 3,
		},
		{
			name:     "headers never come over TLS",
			faults:   always(emulator.Fault{Delay: time.Hour}),
			words:    []string{"gave up after 3 attempts: contacting tenant: no complete answer within the 300ms request timeout"},
			attempts: 3,
		},
		{
			name:     "headers never come over HTTP/2",
			target:   overHTTP2,
			faults:   always(emulator.Fault{Delay: time.Hour}),
			words:    []string{"gave up after 3 attempts: contacting tenant: no complete answer within the 300ms request timeout"},
			attempts: 3,
		},
		{
			name: "headers never come over plain HTTP",
			target: func(t *testing.T, fx *faultFixture) string {
				rs := startRaw(t, func(conn net.Conn) {
					if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, conn)
				})
				fx.count = rs.accepted
				return "http://" + rs.addr() + "/oauth2/token/VaultApp"
			},
			words:    []string{"gave up after 3 attempts: contacting tenant: no complete answer within the 300ms request timeout"},
			attempts: 3,
		},
		{
			name:     "connection dropped",
			faults:   always(emulator.Fault{DropConnection: true}),
			words:    []string{"contacting tenant", "EOF", "gave up after 3 attempts"},
			attempts: 3,
		},
		{
			name: "body trickles past the timeout",
			target: func(t *testing.T, fx *faultFixture) string {
				rs := startRaw(t, func(conn net.Conn) { trickle(fx.ca, conn) })
				fx.count = rs.accepted
				return "https://" + rs.addr() + "/oauth2/token/VaultApp"
			},
			// The headers were a 200, so the grant is not repeated: only a failure
			// before an answer is.
			words:      []string{"reading the tenant's answer: no complete answer within the 300ms request timeout"},
			attempts:   1,
			minElapsed: faultRequestTimeout - 20*time.Millisecond,
			maxElapsed: faultRequestTimeout + faultMargin,
		},

		// Answers from the tenant, or from a proxy in front of it.
		{
			name:   "500",
			faults: always(emulator.Fault{Status: 500}),
			status: 500, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 500", "Internal Server Error", "after 3 attempts"},
		},
		{
			name:   "502 proxy page",
			faults: always(emulator.Fault{Status: 502}),
			status: 502, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 502 (text/html)", "<title>502 Bad Gateway</title>", "after 3 attempts"},
		},
		{
			name:   "503",
			faults: always(emulator.Fault{Status: 503}),
			status: 503, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 503", "Service Unavailable", "after 3 attempts"},
		},
		{
			name:   "503 over HTTP/2",
			target: overHTTP2,
			faults: always(emulator.Fault{Status: 503}),
			status: 503, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 503", "after 3 attempts"},
		},
		{
			name:   "429 without Retry-After",
			faults: always(emulator.Fault{Status: 429}),
			status: 429, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 429: temporarily_unavailable: too many requests", "after 3 attempts"},
		},
		{
			name:   "429 with Retry-After 1 is honoured",
			faults: always(emulator.Fault{Status: 429, RetryAfter: "1"}),
			config: func(cfg *Config) {
				cfg.Retry.MaxRetries = 1
				cfg.Retry.MaxRetryAfter = 2 * time.Second
			},
			status: 429, temporary: true, attempts: 2,
			words:      []string{"HTTP 429", "(Retry-After 1s)", "after 2 attempts"},
			minElapsed: time.Second - 20*time.Millisecond,
		},
		{
			name:   "429 with a huge Retry-After waits only MaxRetryAfter",
			faults: always(emulator.Fault{Status: 429, RetryAfter: "999999"}),
			status: 429, temporary: true, attempts: 3,
			words:      []string{"HTTP 429", "(Retry-After 277h46m39s)", "after 3 attempts"},
			minElapsed: capped, maxElapsed: cappedMax,
		},
		{
			name:   "429 with Retry-After a year ahead waits only MaxRetryAfter",
			faults: always(emulator.Fault{Status: 429, RetryAfter: time.Now().AddDate(1, 0, 0).UTC().Format(http.TimeFormat)}),
			status: 429, temporary: true, attempts: 3,
			words:      []string{"HTTP 429", "(Retry-After 87", "after 3 attempts"},
			minElapsed: capped, maxElapsed: cappedMax,
			after: retryAfter(364 * 24 * time.Hour),
		},
		{
			// 9.3e9 seconds is more nanoseconds than an int64 holds: the wait must
			// saturate, not wrap negative and be ignored.
			name:   "503 with a Retry-After beyond a time.Duration waits only MaxRetryAfter",
			faults: always(emulator.Fault{Status: 503, RetryAfter: "9300000000"}),
			status: 503, temporary: true, attempts: 3,
			words:      []string{"HTTP 503", "after 3 attempts"},
			minElapsed: capped, maxElapsed: cappedMax,
			after: retryAfter(time.Duration(1<<63 - 1)),
		},
		{
			name:   "429 with a Retry-After longer than the budget and no cap",
			faults: always(emulator.Fault{Status: 429, RetryAfter: "999999"}),
			config: func(cfg *Config) {
				cfg.Retry.MaxRetryAfter = 0
				cfg.Retry.Budget = time.Second
			},
			status: 429, temporary: true, attempts: 1,
			words:      []string{"gave up after 1 attempt(s) in 1s", "HTTP 429"},
			minElapsed: time.Second - 20*time.Millisecond, maxElapsed: time.Second + faultMargin,
		},
		{
			name:     "HTML page with 200",
			faults:   tokenBody("<html><body>Down for maintenance</body></html>"),
			words:    []string{"tenant answered 200 with a body that is not a JSON token response", "invalid JSON at byte 1"},
			attempts: 1,
		},
		{
			name:   "HTML page with 403 from a proxy",
			faults: always(emulator.Fault{Status: 403, Body: "<html><body>Access denied by policy</body></html>"}),
			status: 403, refused: true, attempts: 1,
			words: []string{"tenant answered HTTP 403 (text/html", "Access denied by policy"},
		},
		{
			name:     "invalid JSON",
			faults:   always(emulator.Fault{Status: 200, MalformedJSON: true}),
			words:    []string{"not a JSON token response", "invalid JSON at byte"},
			attempts: 1,
			after: func(t *testing.T, _ *faultFixture, err error) {
				if err != nil && strings.Contains(err.Error(), "eyJhbGci") {
					t.Error("the error quotes the truncated access token")
				}
			},
		},
		{
			name:     "JSON without access_token",
			faults:   tokenBody(`{"token_type":"Bearer","expires_in":3600}`),
			words:    []string{"tenant answered 200 without an access_token"},
			attempts: 1,
		},

		// expires_in in every shape a tenant might send.
		{
			name:   "expires_in missing, JWT exp in an hour",
			faults: tokenBody(fmt.Sprintf(`{"access_token":%q,"token_type":"Bearer"}`, fakeJWT(time.Now().Add(time.Hour).Unix()))),
			// The exp was set when the table was built, before the cases above ran.
			want: expiresIn(3600, 120),
		},
		{
			name:   "expires_in missing, no JWT exp",
			faults: tokenBody(`{"access_token":"opaque-token","token_type":"Bearer"}`),
			words:  []string{"without expires_in, and the access token carries no exp claim"},
		},
		{
			name:   "expires_in zero",
			faults: tokenBody(`{"access_token":"x","expires_in":0}`),
			words:  []string{"expires_in 0: the token is already expired"},
		},
		{
			name:   "expires_in negative",
			faults: tokenBody(`{"access_token":"x","expires_in":-3600}`),
			words:  []string{"expires_in -3600: the token is already expired"},
		},
		{
			name:   "expires_in huge",
			faults: tokenBody(`{"access_token":"x","expires_in":1e12}`),
			words:  []string{"expires_in 1e12, which is out of range", "MaxTokenLifetime"},
		},
		{
			name:   "expires_in a numeric string",
			faults: tokenBody(`{"access_token":"x","expires_in":"3600"}`),
			want:   expiresIn(3600, 0),
		},
		{
			name:   "expires_in a word",
			faults: tokenBody(`{"access_token":"x","expires_in":"soon"}`),
			words:  []string{`expires_in "soon": it must be a decimal number of seconds`},
		},
		{
			name:   "expires_in a float",
			faults: tokenBody(`{"access_token":"x","expires_in":3600.9}`),
			want:   expiresIn(3600, 0),
		},
		{
			name:   "expires_in a hex float string",
			faults: tokenBody(`{"access_token":"x","expires_in":"0x1p12"}`),
			words:  []string{`expires_in "0x1p12": it must be a decimal number of seconds`},
		},
		{
			name:   "expires_in a bare hex float",
			faults: tokenBody(`{"access_token":"x","expires_in":0x1p12}`),
			words:  []string{"not a JSON token response", "invalid JSON at byte"},
		},

		// Bodies too large to hold.
		{
			name:     "10 MiB token response",
			config:   bigBody,
			faults:   always(emulator.Fault{Status: 200, OversizeBytes: 10 << 20}),
			words:    []string{"tenant response exceeds the 1048576 byte limit"},
			attempts: 1,
		},
		{
			name:   "10 MiB error page",
			config: bigBody,
			faults: always(emulator.Fault{Status: 500, OversizeBytes: 10 << 20}),
			status: 500, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 500", "after 3 attempts"},
		},
		{
			name:   "gzip bomb the transport asked for",
			config: bigBody,
			// The transport adds Accept-Encoding: gzip itself and inflates the answer
			// on the fly, so the limit must apply after decompression.
			target: bombTarget(bomb, http.StatusOK, "gzip"),
			words:  []string{"tenant response exceeds the 1048576 byte limit"},
		},
		{
			name:   "gzip bomb sent unasked",
			config: bigBody,
			// With compression off the transport does not ask for gzip, and so hands
			// over the bytes as sent: 2 MiB of gzip, over the limit too.
			transport: noGzip,
			target:    bombTarget(bomb, http.StatusOK, ""),
			words:     []string{"tenant response exceeds the 1048576 byte limit"},
		},
		{
			name:   "gzip bomb on a 502",
			config: bigBody,
			target: bombTarget(bomb, http.StatusBadGateway, "gzip"),
			status: 502, temporary: true, attempts: 3,
			words: []string{"tenant answered HTTP 502", "after 3 attempts"},
		},

		// Redirects: the credentials must not follow.
		{
			name:   "307 to another host",
			target: redirectTarget(http.StatusTemporaryRedirect),
			status: 307, refused: true, attempts: 1,
			words: []string{"tenant answered HTTP 307: redirect to \"https://localhost:", "set token_url to the final URL"},
		},
		{
			name:   "302 to another host, client_secret_post",
			target: redirectTarget(http.StatusFound),
			config: func(cfg *Config) { cfg.AuthStyle = AuthPost },
			status: 302, refused: true, attempts: 1,
			words: []string{"tenant answered HTTP 302: redirect to"},
		},
	}
}

// overHTTP2 is the emulator served over HTTP/2, as a tenant behind a modern front end
// would be: the client's pool then holds HTTP/2 connections, which Close must end too.
func overHTTP2(t *testing.T, fx *faultFixture) string {
	var h1 atomic.Int64
	srv, _ := serveTLS(t, fx.ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			h1.Add(1)
		}
		fx.emu.ServeHTTP(w, r)
	}), true)
	t.Cleanup(func() {
		if n := h1.Load(); n > 0 {
			t.Errorf("%d requests came over HTTP/1", n)
		}
	})
	fx.count = func() int { return int(fx.emu.Stats().TokenRequests) }
	return srv.URL + "/oauth2/token/VaultApp"
}

// serveTLS serves h over TLS with a certificate from ca, and counts connections.
func serveTLS(t *testing.T, ca *emulator.CA, h http.Handler, http2 ...bool) (*httptest.Server, func() int) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = len(http2) > 0 && http2[0]
	srv.TLS = ca.ServerTLSConfig()
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	// Refused handshakes and dropped connections are what these tests are about.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, func() int { return int(conns.Load()) }
}

// refusedTarget is an address that was just listened on and is now closed.
func refusedTarget(t *testing.T, fx *faultFixture) string {
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	fx.count = func() int { return 0 }
	return "https://" + addr + "/oauth2/token/VaultApp"
}

// redirectTarget has the emulator redirect the grant to a second server, which must
// never hear from the client: not a connection, let alone a credential.
func redirectTarget(status int) func(*testing.T, *faultFixture) string {
	return func(t *testing.T, fx *faultFixture) string {
		var got atomic.Int64
		other, otherConns := serveTLS(t, fx.ca, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { got.Add(1) }))
		// Another host name as well as another port.
		elsewhere := strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/oauth2/token/VaultApp"
		fx.emu.AddFaults(emulator.Fault{Endpoint: "token", Status: status, Location: elsewhere})
		t.Cleanup(func() {
			if n, c := got.Load(), otherConns(); n != 0 || c != 0 {
				t.Errorf("the other host got %d connections and %d requests", c, n)
			}
		})
		srv, _ := serveTLS(t, fx.ca, fx.emu)
		fx.count = func() int { return int(fx.emu.Stats().TokenRequests) }
		return srv.URL + "/oauth2/token/VaultApp"
	}
}

// bombTarget answers every request with a gzip-encoded bomb. With ifAsked set, it
// checks that the transport asked for that encoding; without, that it did not.
func bombTarget(bomb []byte, status int, ifAsked string) func(*testing.T, *faultFixture) string {
	return func(t *testing.T, fx *faultFixture) string {
		var asked sync.Map
		srv, conns := serveTLS(t, fx.ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked.Store(r.Header.Get("Accept-Encoding"), true)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", fmt.Sprint(len(bomb)))
			w.WriteHeader(status)
			_, _ = w.Write(bomb) // fails once the client has read enough and hung up
		}))
		t.Cleanup(func() {
			asked.Range(func(k, _ any) bool {
				if k.(string) != ifAsked {
					t.Errorf("the client sent Accept-Encoding %q, want %q", k, ifAsked)
				}
				return true
			})
		})
		fx.count = conns
		return srv.URL + "/oauth2/token/VaultApp"
	}
}

// gzipBomb is a valid gzip stream of size zero bytes (a multiple of 1 MiB), built in
// milliseconds rather than by compressing them all: each sync-flushed MiB of zeros ends
// on a byte boundary and refers only to zeros before it, so one can be repeated.
func gzipBomb(size int) []byte {
	const mib = 1 << 20
	if size < 2*mib || size%mib != 0 || size > math.MaxUint32 {
		// The trailer below holds the size in 32 bits, and the stream starts with two MiB.
		panic(fmt.Sprintf("gzipBomb(%d): want a whole number of MiB, at least 2 and below 4 GiB", size))
	}
	zeros := make([]byte, mib)
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	// Writes to a bytes.Buffer do not fail.
	_, _ = zw.Write(zeros)
	zw.Flush()
	first := buf.Len()
	_, _ = zw.Write(zeros)
	zw.Flush()
	repeat := buf.Bytes()[first:]
	out := bytes.Clone(buf.Bytes())
	for range size/mib - 2 {
		out = append(out, repeat...)
	}
	out = append(out, 0x03, 0x00) // an empty final block
	crc := uint32(0)
	for range size / mib {
		crc = crc32.Update(crc, crc32.IEEETable, zeros)
	}
	out = binary.LittleEndian.AppendUint32(out, crc)
	return binary.LittleEndian.AppendUint32(out, uint32(size))
}

// trickle answers a 200 with a long body, one byte every 200ms, until the client hangs
// up: every read makes progress, so only a deadline on the whole exchange ends it.
func trickle(ca *emulator.CA, raw net.Conn) {
	conn := tls.Server(raw, ca.ServerTLSConfig())
	if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
		return
	}
	if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"); err != nil {
		return
	}
	for {
		time.Sleep(200 * time.Millisecond)
		if _, err := io.WriteString(conn, " "); err != nil {
			return
		}
	}
}

// rawServer accepts TCP connections on loopback and hands each to play, for faults an
// HTTP server cannot produce. The test's cleanup closes every connection and waits
// for play to return.
type rawServer struct {
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func startRaw(t *testing.T, play func(net.Conn)) *rawServer {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawServer{ln: ln}
	rs.wg.Go(func() { rs.accept(play) })
	t.Cleanup(func() {
		ln.Close()
		rs.mu.Lock()
		rs.closed = true
		for _, c := range rs.conns {
			c.Close()
		}
		rs.mu.Unlock()
		rs.wg.Wait()
	})
	return rs
}

func (rs *rawServer) accept(play func(net.Conn)) {
	for {
		conn, err := rs.ln.Accept()
		if err != nil {
			return
		}
		rs.mu.Lock()
		if rs.closed {
			rs.mu.Unlock()
			conn.Close()
			return
		}
		rs.conns = append(rs.conns, conn)
		rs.mu.Unlock()
		rs.wg.Go(func() {
			defer conn.Close()
			play(conn)
		})
	}
}

func (rs *rawServer) addr() string { return rs.ln.Addr().String() }

func (rs *rawServer) accepted() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.conns)
}
