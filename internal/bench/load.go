package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// scenario is one kind of read.
type scenario struct {
	key, label string
	path       string // Vault path; empty for the direct tenant call
	leased     bool   // leaves leases, which are force-revoked after each run
}

var scenarios = []scenario{
	{key: "kv", label: "KV-v2 read", path: "secret/data/bench"},
	{key: "plain", label: "trivial plugin, no lease", path: "trivial/plain"},
	{key: "small", label: "trivial plugin, small lease", path: "trivial/small", leased: true},
	{key: "jwt", label: "trivial plugin, JWT-sized lease", path: "trivial/jwt", leased: true},
	{key: "direct", label: "direct tenant call (POST, TLS)"},
	{key: "client", label: "direct tenant call through the engine's client package"},
	{key: "uncached", label: "token/<role>, uncached (grant per read)", path: "cyberark/token/uncached", leased: true},
	{key: "tracked", label: "token/<role>, uncached, track_tokens (a record per read)", path: "cyberark/token/tracked", leased: true},
	{key: "reuse", label: "token/<role>, token_reuse, leased", path: "cyberark/token/reuse", leased: true},
	{key: "leasefree", label: "token/<role>, token_reuse, lease_free", path: "cyberark/token/leasefree"},
}

func scenarioByKey(key string) scenario {
	i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.key == key })
	return scenarios[i]
}

// result is one run: p50 latency and throughput.
type result struct {
	p50, p99 time.Duration
	mean     time.Duration
	rps      float64
	n        int
	errors   int
}

type bench struct {
	o       options
	bed     *bed
	vault   *api.Client
	vaultHC *http.Client
	tenant  *http.Client
	// engineClient is the engine's own tenant client, configured as the engine's.
	engineClient *client.Client
	// results[key][conc] is one result per round.
	results map[string]map[int][]result
	grants  []int64
	// reads[key] counts the reads that succeeded, warm-ups included: for the tracked
	// read, the records it left in the engine's storage.
	reads map[string]int
}

func (b *bench) setup(ctx context.Context) error {
	b.vault = b.bed.vault.Client
	// Every reader keeps its connection: the figures are Vault's work, not TCP's.
	b.vaultHC = cleanhttp.DefaultPooledClient()
	b.vaultHC.Transport.(*http.Transport).MaxIdleConnsPerHost = max(b.o.readers, b.o.conc) + 8
	b.vaultHC.Timeout = time.Minute

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.bed.caPEM) {
		return errors.New("the tenant CA file holds no certificate")
	}
	tr := cleanhttp.DefaultPooledTransport()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = b.o.conc + 8
	b.tenant = &http.Client{Transport: tr, Timeout: time.Minute}
	var err error
	b.engineClient, err = client.New(client.Config{
		TokenURL: strings.TrimSuffix(b.bed.tenantURL, "/") + "/oauth2/token/" + url.PathEscape(appID),
		ClientID: clientID, ClientSecret: b.bed.secret, CACert: string(b.bed.caPEM), UserAgent: "bench",
		Retry: client.RetryPolicy{MaxRetries: 2, WaitMin: 100 * time.Millisecond, WaitMax: time.Second, Budget: time.Minute},
	})
	if err != nil {
		return err
	}

	for _, p := range []struct {
		path   string
		plugin vaultproc.Plugin
	}{{"cyberark", b.bed.engine}, {"trivial", b.bed.trivial}} {
		if err := p.plugin.Register(ctx, b.vault); err != nil {
			return err
		}
		if err := p.plugin.Mount(ctx, b.vault, p.path); err != nil {
			return err
		}
	}
	writes := []struct {
		path string
		data map[string]any
	}{
		{"cyberark/config", map[string]any{
			"tenant_url": b.bed.tenantURL, "app_id": appID, "client_id": clientID,
			"client_secret": b.bed.secret, "ca_cert": string(b.bed.caPEM), "scopes": "read",
		}},
		{"cyberark/roles/uncached", map[string]any{"token_reuse": false}},
		// The same grant through a second client of the same service user, with
		// track_tokens: its reads differ from uncached's by the record alone.
		{"cyberark/clients/tracked", map[string]any{
			"tenant_url": b.bed.tenantURL, "app_id": appID, "client_id": clientID,
			"client_secret": b.bed.secret, "ca_cert": string(b.bed.caPEM), "scopes": "read",
			"track_tokens": true, "allowed_roles": "tracked",
		}},
		{"cyberark/roles/tracked", map[string]any{"client": "tracked", "token_reuse": false}},
		{"cyberark/roles/reuse", map[string]any{"token_reuse": true}},
		{"cyberark/roles/leasefree", map[string]any{"token_reuse": true, "lease_free": true}},
		{"cyberark/roles/crowd", map[string]any{"token_reuse": true}},
		{"secret/data/bench", map[string]any{"data": map[string]any{"value": "bench"}}},
	}
	for _, w := range writes {
		if _, err := b.vault.Logical().WriteWithContext(ctx, w.path, w.data); err != nil {
			return fmt.Errorf("writing %s: %w", w.path, err)
		}
	}
	// The trivial plugin's token gets the length of the tenant's.
	s, err := b.vault.Logical().ReadWithContext(ctx, "cyberark/token/uncached")
	if err != nil {
		return fmt.Errorf("a first token read failed: %w", err)
	}
	if s == nil {
		return errors.New("a first token read returned nothing")
	}
	tok, _ := s.Data["access_token"].(string)
	if tok == "" {
		return errors.New("a token read returned no access_token")
	}
	if _, err := b.vault.Logical().WriteWithContext(ctx, "trivial/shape", map[string]any{"token_len": len(tok)}); err != nil {
		return fmt.Errorf("shaping the trivial plugin: %w", err)
	}
	fmt.Fprintf(os.Stderr, "setup done: tenant tokens are %d bytes, and so is the trivial plugin's\n", len(tok))
	return nil
}

// measure runs s with c readers: a warm-up, then duration measured.
func (b *bench) measure(ctx context.Context, s scenario, c int) (result, error) {
	if _, err := b.load(ctx, s, c, b.o.warmup); err != nil {
		return result{}, err
	}
	r, err := b.load(ctx, s, c, b.o.duration)
	if err != nil {
		return r, err
	}
	if s.leased {
		// Leases pile up in Vault's expiration manager and slow what runs after; each
		// run starts from the same lease count.
		if err := b.revokeForce(ctx, s.path); err != nil {
			return r, err
		}
	}
	return r, nil
}

// load keeps c readers busy for d, each one read after another, and collects every
// latency.
func (b *bench) load(ctx context.Context, s scenario, c int, d time.Duration) (result, error) {
	do := b.vaultRead(s.path)
	switch s.key {
	case "direct":
		do = b.tenantCall()
	case "client":
		do = b.clientCall
	}
	lat := make([][]time.Duration, c)
	errs := make([]int, c)
	var firstErr error
	var mu sync.Mutex
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for i := range c {
		wg.Go(func() {
			l := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(stop) {
					break
				}
				if err := do(ctx); err != nil {
					errs[i]++
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				l = append(l, time.Since(t0))
			}
			lat[i] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	r := result{n: len(all)}
	b.reads[s.key] += r.n
	for _, e := range errs {
		r.errors += e
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	if r.errors > 0 {
		return r, fmt.Errorf("%d of %d reads failed, the first: %w", r.errors, r.errors+r.n, firstErr)
	}
	if len(all) == 0 {
		return r, errors.New("no read completed")
	}
	slices.Sort(all)
	r.p50 = all[len(all)/2]
	r.p99 = all[len(all)*99/100]
	var sum time.Duration
	for _, l := range all {
		sum += l
	}
	r.mean = sum / time.Duration(len(all))
	r.rps = float64(len(all)) / elapsed.Seconds()
	return r, nil
}

// vaultRead is one GET of path, its body read whole, as a client would.
func (b *bench) vaultRead(path string) func(context.Context) error {
	u := strings.TrimSuffix(b.bed.vault.Addr, "/") + "/v1/" + path
	return func(ctx context.Context) error {
		status, body, err := b.vaultGet(ctx, u)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("%s: HTTP %d: %.200s", path, status, body)
		}
		return nil
	}
}

func (b *bench) vaultGet(ctx context.Context, u string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Vault-Token", b.bed.vault.Token)
	return fetch(b.vaultHC, req)
}

// tenantCall is the grant the engine makes, made directly: the same form, headers and
// kept-alive TLS connection.
func (b *bench) tenantCall() func(context.Context) error {
	u := strings.TrimSuffix(b.bed.tenantURL, "/") + "/oauth2/token/" + url.PathEscape(appID)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+b.bed.secret))
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}.Encode()
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Authorization", auth)
		status, body, err := fetch(b.tenant, req)
		if err != nil {
			return err
		}
		if status != http.StatusOK || !bytes.Contains(body, []byte(`"access_token"`)) {
			return fmt.Errorf("tenant: HTTP %d", status)
		}
		return nil
	}
}

// fetch sends req and reads the whole answer, as a client would.
func fetch(hc *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// clientCall is the grant made with the engine's client package, as the engine makes
// it, but from here: what the package adds to a bare POST, without Vault or gRPC.
func (b *bench) clientCall(ctx context.Context) error {
	_, err := b.engineClient.Token(ctx, []string{"read"})
	return err
}

func (b *bench) revokeForce(ctx context.Context, path string) error {
	_, err := b.vault.Logical().WriteWithContext(ctx, "sys/leases/revoke-force/"+path, nil)
	return err
}

// crowd empties the reuse cache (a role write does) and has readers read the role at
// once; it returns the grants the tenant made meanwhile.
func (b *bench) crowd(ctx context.Context) (int64, error) {
	if _, err := b.vault.Logical().WriteWithContext(ctx, "cyberark/roles/crowd", map[string]any{"token_reuse": true}); err != nil {
		return 0, err
	}
	before, err := b.tenantGrants(ctx)
	if err != nil {
		return 0, err
	}
	read := b.vaultRead("cyberark/token/crowd")
	start := make(chan struct{})
	errs := make(chan error, b.o.readers)
	var wg sync.WaitGroup
	for range b.o.readers {
		wg.Go(func() {
			<-start
			if err := read(ctx); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	after, err := b.tenantGrants(ctx)
	if err != nil {
		return 0, err
	}
	if err := b.revokeForce(ctx, "cyberark/token/crowd"); err != nil {
		return 0, err
	}
	return after - before, nil
}

// tenantGrants is the emulator's count of issued tokens.
func (b *bench) tenantGrants(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.bed.tenantURL, "/")+"/_emulator/stats", nil)
	if err != nil {
		return 0, err
	}
	resp, err := b.tenant.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Grants int64 `json:"grants"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("emulator stats: %w", err)
	}
	return st.Grants, nil
}
