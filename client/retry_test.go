package client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func retrying(maxRetries int, budget time.Duration) func(*Config) {
	return func(cfg *Config) {
		cfg.Retry = RetryPolicy{MaxRetries: maxRetries, WaitMin: 10 * time.Millisecond, WaitMax: 50 * time.Millisecond, MaxRetryAfter: 3 * time.Second, Budget: budget}
	}
}

// failThen answers the first n requests with status (and Retry-After), then okBody.
func failThen(n, status int, retryAfter string) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, _ *http.Request, i int) {
		if i <= n {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"try later"}`)
			return
		}
		_, _ = io.WriteString(w, okBody)
	}
}

func TestRetriesTransientAnswers(t *testing.T) {
	t.Parallel()
	for _, status := range []int{500, 502, 503, 504, 429} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			tn := newTenant(t, failThen(2, status, ""))
			c := newTestClient(t, tn, retrying(3, 10*time.Second))
			if _, err := c.Token(context.Background(), nil); err != nil {
				t.Fatalf("after two %d answers and a success: %v", status, err)
			}
			reqs := tn.got()
			if len(reqs) != 3 {
				t.Fatalf("%d requests, want 3", len(reqs))
			}
			for i, r := range reqs {
				if r.body != "grant_type=client_credentials" || r.header.Get("Authorization") == "" {
					t.Errorf("attempt %d was not the same request: body %q", i+1, r.body)
				}
			}
		})
	}
}

func TestNoRetryOnRefusals(t *testing.T) {
	t.Parallel()
	for _, status := range []int{400, 401, 403, 404, 501} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			tn := newTenant(t, failThen(1, status, "1"))
			c := newTestClient(t, tn, retrying(5, 10*time.Second))
			_, err := c.Token(context.Background(), nil)
			var te *Error
			if !errors.As(err, &te) || te.StatusCode != status {
				t.Fatalf("err = %v, want the %d", err, status)
			}
			if n := len(tn.got()); n != 1 {
				t.Errorf("a %d was retried: %d requests", status, n)
			}
		})
	}
}

func TestRetryAfterIsHonouredAndCapped(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, failThen(1, 429, "1"))
	c := newTestClient(t, tn, retrying(3, 10*time.Second))
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	reqs := tn.got()
	if gap := reqs[1].at.Sub(reqs[0].at); gap < 900*time.Millisecond {
		t.Errorf("second attempt came %s after a 429 with Retry-After: 1", gap)
	}

	// A Retry-After beyond MaxRetryAfter (3s) waits only the cap.
	tn2 := newTenant(t, failThen(1, 503, "3600"))
	c2 := newTestClient(t, tn2, retrying(3, 10*time.Second))
	if _, err := c2.Token(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	reqs = tn2.got()
	if gap := reqs[1].at.Sub(reqs[0].at); gap < 2900*time.Millisecond || gap > 8*time.Second {
		t.Errorf("after Retry-After: 3600 the retry came %s later, want the 3s cap", gap)
	}
}

func TestRetryBudgetBoundsTheCall(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, failThen(1000, 503, "2"))
	c := newTestClient(t, tn, retrying(10, 1500*time.Millisecond))
	start := time.Now()
	_, err := c.Token(context.Background(), nil)
	elapsed := time.Since(start)
	var te *Error
	if !errors.As(err, &te) || te.StatusCode != 503 {
		t.Fatalf("err = %v, want the tenant's last answer (503)", err)
	}
	if !strings.Contains(err.Error(), "temporarily_unavailable: try later") || !strings.Contains(err.Error(), "gave up after") {
		t.Errorf("error %q should quote the last answer and the attempts", err)
	}
	if elapsed > 4*time.Second {
		t.Errorf("the call took %s with a 1.5s budget", elapsed)
	}
	if n := len(tn.got()); n < 1 || n > 2 {
		t.Errorf("%d attempts within a 1.5s budget and 2s Retry-After, want 1 or 2", n)
	}
}

func TestRetryExhaustionReportsLastAnswer(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, failThen(1000, 502, ""))
	c := newTestClient(t, tn, retrying(2, 10*time.Second))
	_, err := c.Token(context.Background(), nil)
	var te *Error
	if !errors.As(err, &te) || te.StatusCode != 502 || te.Attempts != 3 {
		t.Fatalf("err = %v (%+v), want the 502 after 3 attempts", err, te)
	}
	if n := len(tn.got()); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestRetriesConnectionErrors(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, func(w http.ResponseWriter, _ *http.Request, i int) {
		if i == 1 {
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		_, _ = io.WriteString(w, okBody)
	})
	c := newTestClient(t, tn, retrying(2, 10*time.Second))
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatalf("a dropped connection then a success: %v", err)
	}
	if n := len(tn.got()); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

// A call that gives up must not close the pooled connections other calls use.
func TestFailedCallKeepsPooledConnections(t *testing.T) {
	t.Parallel()
	tn := newTenant(t, failThen(2, 503, ""))
	c := newTestClient(t, tn, retrying(1, 10*time.Second))
	if _, err := c.Token(context.Background(), nil); err == nil {
		t.Fatal("two 503s with one retry: want an error")
	}
	if _, err := c.Token(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if tn.conns != 1 {
		t.Errorf("%d connections for 3 requests; the failed call closed the pool", tn.conns)
	}
}

// The configured clock runs an hour behind the real one, so a Retry-After date shortly
// after it lies in the real past: read with time.Now, it asks for no wait at all.
func TestRetryAfterDateUsesTheConfiguredClock(t *testing.T) {
	t.Parallel()
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	clock := func() time.Time { return now }
	date := func(d time.Duration) string { return now.Add(d).UTC().Format(http.TimeFormat) }

	t.Run("error", func(t *testing.T) {
		t.Parallel()
		tn := newTenant(t, failThen(1, 429, date(time.Minute)))
		c := newTestClient(t, tn, func(cfg *Config) { cfg.Now = clock })
		_, err := c.Token(context.Background(), nil)
		var te *Error
		if !errors.As(err, &te) || te.RetryAfter != time.Minute {
			t.Fatalf("err = %v, want a 429 asking for a 1m wait", err)
		}
	})
	t.Run("backoff", func(t *testing.T) {
		t.Parallel()
		tn := newTenant(t, failThen(1, 503, date(time.Second)))
		c := newTestClient(t, tn, func(cfg *Config) {
			retrying(3, 10*time.Second)(cfg)
			cfg.Now = clock
		})
		if _, err := c.Token(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		reqs := tn.got()
		if gap := reqs[1].at.Sub(reqs[0].at); gap < 900*time.Millisecond || gap > 2500*time.Millisecond {
			t.Errorf("retry came %s after a Retry-After one second ahead of the configured clock", gap)
		}
	})
}

// Concurrent calls on one Client each count their own attempts.
func TestConcurrentCallsCountTheirOwnAttempts(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]int{}
	// Call i (its scope) gets i%3 answers of 503, then a refusal.
	tn := newTenant(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		scope := r.PostFormValue("scope")
		i, _ := strconv.Atoi(scope)
		mu.Lock()
		seen[scope]++
		n := seen[scope]
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n <= i%3 {
			w.WriteHeader(503)
			_, _ = io.WriteString(w, `{"error":"temporarily_unavailable"}`)
			return
		}
		w.WriteHeader(400)
		_, _ = io.WriteString(w, `{"error":"invalid_scope","error_description":"call `+scope+`"}`)
	})
	c := newTestClient(t, tn, retrying(3, 10*time.Second))
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			_, err := c.Token(context.Background(), []string{strconv.Itoa(i)})
			var te *Error
			if !errors.As(err, &te) || te.StatusCode != 400 || te.Description != "call "+strconv.Itoa(i) {
				t.Errorf("call %d: err = %v, want its own 400", i, err)
				return
			}
			if want := i%3 + 1; te.Attempts != want {
				t.Errorf("call %d: Attempts = %d, want %d", i, te.Attempts, want)
			}
		})
	}
	wg.Wait()
}

// TestRetryPolicyBoundsTheCall counts the attempts the tenant sees for each MaxRetries,
// and times calls whose Budget runs out first, whether in waits between attempts or in
// one attempt that never ends.
func TestRetryPolicyBoundsTheCall(t *testing.T) {
	t.Parallel()
	const (
		minWait = 20 * time.Millisecond
		// margin is scheduling slack under -race, not part of the policy.
		margin = time.Second
	)
	unavailable := failThen(1<<30, 503, "")
	cases := []struct {
		name       string
		maxRetries int
		budget     time.Duration
		hang       bool
		// attempts is exact when set; otherwise the budget must have cut the call short
		// of MaxRetries.
		attempts int
	}{
		{name: "MaxRetries 0", maxRetries: 0, attempts: 1},
		{name: "MaxRetries 1", maxRetries: 1, attempts: 2},
		{name: "MaxRetries 3", maxRetries: 3, attempts: 4},
		{name: "Budget ends the waits", maxRetries: 1000, budget: 600 * time.Millisecond},
		{name: "Budget ends a hung attempt", maxRetries: 1000, budget: 400 * time.Millisecond, hang: true, attempts: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var tn *tenant
			if tc.hang {
				tn = hangingTenant(t)
			} else {
				tn = newTenant(t, unavailable)
			}
			c := newTestClient(t, tn, func(cfg *Config) {
				// The request timeout is longer than any budget here, so only the budget
				// can end a hung attempt.
				cfg.RequestTimeout = 10 * time.Second
				cfg.Retry = RetryPolicy{MaxRetries: tc.maxRetries, WaitMin: minWait, WaitMax: 2 * minWait, Budget: tc.budget}
			})
			// A guard for a client that ignores its budget: the elapsed check reports it,
			// instead of the test hanging.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err := c.Token(ctx, nil)
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("want an error")
			}
			n := len(tn.got())
			switch {
			case tc.attempts > 0 && n != tc.attempts:
				t.Errorf("the tenant saw %d attempts, want %d", n, tc.attempts)
			case tc.attempts == 0 && (n < 2 || n > tc.maxRetries):
				t.Errorf("the tenant saw %d attempts, want several, cut short by the budget", n)
			}
			if tc.budget == 0 {
				// Every retry waits at least WaitMin first.
				if least := time.Duration(tc.maxRetries) * minWait; elapsed < least {
					t.Errorf("%d retries took %s, less than %d waits of at least %s", tc.maxRetries, elapsed, tc.maxRetries, minWait)
				}
				var te *Error
				if !errors.As(err, &te) || te.StatusCode != 503 || te.Attempts != n {
					t.Errorf("err = %v, want the last 503 after %d attempts", err, n)
				}
				return
			}
			if elapsed < tc.budget || elapsed > tc.budget+margin {
				t.Errorf("the call took %s with a %s budget", elapsed, tc.budget)
			}
			// The budget may cut short an attempt that the tenant never heard of but the
			// client counts.
			msg := err.Error()
			m := regexp.MustCompile(`gave up after (\d+) attempt\(s\) in (\S+):`).FindStringSubmatch(msg)
			if m == nil || (m[1] != strconv.Itoa(n) && m[1] != strconv.Itoa(n+1)) || m[2] != tc.budget.String() {
				t.Errorf("error %q should say it gave up after %d attempt(s), or one more, in %s", msg, n, tc.budget)
			}
		})
	}
}
