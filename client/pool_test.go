package client

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestConnectionsStayWarm: 64 concurrent grants, round after round, open no new TLS
// connection once the first round has opened its own, whether the tenant speaks HTTP/2
// (one connection) or HTTP/1.1 alone (one per concurrent grant), and OnTLSHandshake
// reports each handshake the tenant's server counts, with its protocol.
func TestConnectionsStayWarm(t *testing.T) {
	t.Parallel()
	ca, err := emulator.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		http2    bool
		protocol string
	}{{"HTTP/2", true, "h2"}, {"HTTP/1.1 only", false, "http/1.1"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const readers = 64
			// Each answer waits for the round's others, so that all readers hold a
			// connection at once.
			b := &barrier{n: readers, ch: make(chan struct{})}
			srv, conns := serveTLS(t, ca, jsonHandler(b.wait), tc.http2)
			var handshakes atomic.Int64
			var wrong atomic.Value
			c, err := New(Config{
				TokenURL: srv.URL + "/oauth2/token/vaultapp", ClientID: testClientID, ClientSecret: testClientSecret,
				CACert: string(ca.CertPEM()), RequestTimeout: 10 * time.Second,
				OnTLSHandshake: func(p string) {
					handshakes.Add(1)
					if p != tc.protocol {
						wrong.Store(p)
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			round := func() {
				var wg sync.WaitGroup
				for range readers {
					wg.Go(func() {
						if _, err := c.Token(t.Context(), nil); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
			}
			round()
			first := conns()
			for range 3 {
				round()
			}
			if extra := conns() - first; extra != 0 {
				t.Errorf("%d new connections after the first round (of %d), want 0: the pool did not keep them", extra, first)
			}
			if int(handshakes.Load()) != conns() {
				t.Errorf("OnTLSHandshake reported %d handshakes, the server accepted %d connections", handshakes.Load(), conns())
			}
			if p := wrong.Load(); p != nil {
				t.Errorf("a handshake reported protocol %q, want %q", p, tc.protocol)
			}
			// A first burst on HTTP/2 dials once per waiting grant (the protocol is
			// known only after a handshake), and net/http closes the extra connections:
			// steady state is what the pool decides.
			t.Logf("%s: %d connections opened by the first round of %d concurrent grants, none after", tc.name, first, readers)
		})
	}
}

// jsonHandler answers every grant with okBody after wait returns.
func jsonHandler(wait func()) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		wait()
		jsonAnswer(http.StatusOK, okBody)(w, r, 0)
	})
}

// barrier lets n callers through together, round after round.
type barrier struct {
	mu    sync.Mutex
	n     int
	count int
	ch    chan struct{}
}

func (b *barrier) wait() {
	b.mu.Lock()
	ch := b.ch
	b.count++
	if b.count == b.n {
		close(ch)
		b.ch, b.count = make(chan struct{}), 0
	}
	b.mu.Unlock()
	<-ch
}
