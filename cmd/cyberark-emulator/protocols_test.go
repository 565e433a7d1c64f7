package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
)

// TestHTTP1Only: the emulator speaks HTTP/2 to a client that offers it, and HTTP/1.1
// alone with -http1-only.
func TestHTTP1Only(t *testing.T) {
	t.Parallel()
	ca, err := emulator.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	for _, tc := range []struct {
		only bool
		want int
	}{{false, 2}, {true, 1}} {
		srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: ca.ServerTLSConfig(), ReadHeaderTimeout: 5 * time.Second}
		if tc.only {
			http1Only(srv)
		}
		ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.ServeTLS(ln, "", "") }()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+ln.Addr().String()+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
		_ = srv.Close()
		if resp.ProtoMajor != tc.want {
			t.Errorf("http1-only=%v: the client spoke HTTP/%d, want HTTP/%d", tc.only, resp.ProtoMajor, tc.want)
		}
	}
}
