package emulator

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func newTLSEmulator(t *testing.T, http2 bool) (*Emulator, *httptest.Server, *CA) {
	t.Helper()
	emu, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(emu)
	srv.EnableHTTP2 = http2
	srv.TLS = ca.ServerTLSConfig()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return emu, srv, ca
}

// trustingClient trusts only the emulator's CA, as the plugin does with ca_cert.
func trustingClient(t *testing.T, ca *CA, http2 bool) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.CertPEM()) {
		t.Fatal("CertPEM is not a PEM certificate")
	}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: http2,
		},
	}
}

func TestCAServesVerifiedTLS(t *testing.T) {
	t.Parallel()
	_, srv, ca := newTLSEmulator(t, false)
	client := trustingClient(t, ca, false)

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicHeader(testClient, testSecret))
	status, _, body := do(t, client, req)
	if status != http.StatusOK {
		t.Fatalf("%d %s", status, body)
	}
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	if iss := decodeClaims(t, resp.AccessToken)["iss"]; iss != srv.URL+"/"+testApp+"/" || !strings.HasPrefix(srv.URL, "https://") {
		t.Errorf("iss %v for %s", iss, srv.URL)
	}

	// The server certificate names every loopback form a client may use.
	block, _ := pem.Decode(ca.CertPEM())
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !caCert.IsCA {
		t.Error("CertPEM is not a CA certificate")
	}
	leaf, err := x509.ParseCertificate(ca.ServerTLSConfig().Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}

	// A client that does not trust the CA is refused.
	keys := func(c *http.Client) (*http.Response, error) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/oauth2/keys/"+testApp, nil)
		if err != nil {
			return nil, err
		}
		return c.Do(req)
	}
	if resp, err := keys(&http.Client{Timeout: 30 * time.Second}); err == nil {
		resp.Body.Close()
		t.Error("a client without the CA connected")
	}
	// Another CA's certificate does not verify this server.
	other, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := keys(trustingClient(t, other, false)); err == nil {
		resp.Body.Close()
		t.Error("a client trusting another CA connected")
	}
}

func TestServerTLSConfigIsFresh(t *testing.T) {
	t.Parallel()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	a, b := ca.ServerTLSConfig(), ca.ServerTLSConfig()
	if a == b {
		t.Fatal("ServerTLSConfig returns a shared config that httptest would modify")
	}
	if a.NextProtos != nil {
		t.Errorf("NextProtos %v preset; httptest and net/http choose them", a.NextProtos)
	}
}

func TestDropConnectionHTTP2(t *testing.T) {
	t.Parallel()
	emu, srv, ca := newTLSEmulator(t, true)
	client := trustingClient(t, ca, true)
	emu.AddFaults(Fault{Endpoint: "token", Times: 1, DropConnection: true})

	post := func() (*http.Response, error) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/oauth2/token/"+testApp, strings.NewReader(grantForm.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", basicHeader(testClient, testSecret))
		return client.Do(req)
	}
	if resp, err := post(); err == nil {
		resp.Body.Close()
		t.Fatalf("dropped HTTP/2 request answered %d (%s)", resp.StatusCode, resp.Proto)
	}
	resp, err := post()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Errorf("after the drop: %d over %s", resp.StatusCode, resp.Proto)
	}
}
