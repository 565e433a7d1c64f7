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
	"maps"
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
	// wan, for the reads across the simulated WAN, names the link: "h2" to the emulator
	// that offers HTTP/2, "h1" to the one that offers HTTP/1.1 alone.
	wan string
	// manyOnly runs only at the throughput runs' concurrency, where it differs.
	manyOnly bool
	// maxFailedLogins is the WAN client's max_failed_logins, 0 for the default (3).
	// The engine lets no more grants be at the tenant at once than the budget has
	// attempts left, so the default holds uncached reads to 3 grants at a time.
	maxFailedLogins int
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

// wanScenarios are the reads across the simulated WAN, measured at 1 and -wan-c
// readers: the engine's uncached read and the direct call, to each emulator. The
// engine's WAN clients do not revoke at the tenant, so that the force-revocation after
// each run does not cross the WAN once per lease. Their max_failed_logins is the
// highest allowed, so that -wan-c grants can be at the tenant at once; one more client
// keeps the default, which allows 3.
var wanScenarios = []scenario{
	{key: "wanh2", label: "token/<role>, uncached, max_failed_logins=100", path: "cyberark/token/wan-h2", leased: true, wan: "h2", maxFailedLogins: 100},
	{key: "wandirecth2", label: "direct tenant call", wan: "h2"},
	{key: "wanh1", label: "token/<role>, uncached, max_failed_logins=100", path: "cyberark/token/wan-h1", leased: true, wan: "h1", maxFailedLogins: 100},
	{key: "wandirecth1", label: "direct tenant call", wan: "h1"},
	{key: "wanh2gate", label: "token/<role>, uncached, max_failed_logins=3 (default)", path: "cyberark/token/wan-h2-gate", leased: true, wan: "h2", manyOnly: true},
}

func scenarioByKey(key string) (scenario, bool) {
	all := slices.Concat(scenarios, wanScenarios)
	i := slices.IndexFunc(all, func(s scenario) bool { return s.key == key })
	if i < 0 {
		return scenario{}, false
	}
	return all[i], true
}

func mustScenario(key string) scenario {
	s, ok := scenarioByKey(key)
	if !ok {
		panic("no scenario " + key)
	}
	return s
}

// result is one run: p50 latency and throughput, and what the measured window cost.
type result struct {
	p50, p99 time.Duration
	mean     time.Duration
	rps      float64
	n        int
	errors   int
	// handshakes is the TLS handshakes with the tenant in the measured window, for the
	// reads across the WAN: the engine's own count for its reads, the proxy's count of
	// connections for the direct call (one TLS handshake each). -1 where not counted.
	handshakes int64
	// cpu is the CPU time each process used in the measured window.
	cpu cpuUse
}

// cpuUse is CPU time used, user and system, by the processes on a read's path.
type cpuUse struct {
	engine, vault time.Duration
	tenant        time.Duration // both emulators
	bench         time.Duration // this process: the load generator and the WAN proxies
	ok            bool          // every process's time was read
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
	// wanTenant is the load generator's client to each WAN link, by link.
	wanTenant map[string]*http.Client
	// protocols[key] is the protocols seen on the tenant connections of a WAN read:
	// for the engine, those of the handshakes it counted; for the direct call, those of
	// its answers.
	protocols   map[string]map[string]bool
	protocolsMu sync.Mutex
	// enginePid is the engine's process, found once and again if it goes.
	enginePid int
	// storageRuns is Vault's storage and memory around reads of a reused role, leased
	// and lease-free.
	storageRuns []storageRun
	// engineRSS and trivialRSS are the plugins' peak RSS after the loopback runs;
	// engineWANRSS is the engine's after the runs across the WAN too.
	engineRSS, trivialRSS, engineWANRSS int64
	// loadStart and loadEnd are the machine's load average when the runs start and end.
	loadStart, loadEnd string
}

func (b *bench) setup(ctx context.Context) error {
	b.vault = b.bed.vault.Client
	// Every reader keeps its connection: the figures are Vault's work, not TCP's.
	b.vaultHC = cleanhttp.DefaultPooledClient()
	b.vaultHC.Transport.(*http.Transport).MaxIdleConnsPerHost = max(b.o.readers, b.o.conc) + 8
	b.vaultHC.Timeout = time.Minute

	var err error
	if b.tenant, err = tenantClient(b.bed.tenant.caPEM, b.o.conc+8); err != nil {
		return err
	}
	b.wanTenant = map[string]*http.Client{}
	b.protocols = map[string]map[string]bool{}
	for offers, l := range b.bed.wan {
		if b.wanTenant[offers], err = tenantClient(l.tenant.caPEM, b.o.wanC+8); err != nil {
			return err
		}
	}
	b.engineClient, err = client.New(client.Config{
		TokenURL: strings.TrimSuffix(b.bed.tenant.url, "/") + "/oauth2/token/" + url.PathEscape(appID),
		ClientID: clientID, ClientSecret: b.bed.secret, CACert: string(b.bed.tenant.caPEM), UserAgent: "bench",
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
		{"cyberark/config", b.clientConfig(b.bed.tenant.url, b.bed.tenant.caPEM, nil)},
		{"cyberark/roles/uncached", map[string]any{"token_reuse": false}},
		// The same grant through a second client of the same service user, with
		// track_tokens: its reads differ from uncached's by the record alone.
		{"cyberark/clients/tracked", b.clientConfig(b.bed.tenant.url, b.bed.tenant.caPEM, map[string]any{
			"track_tokens": true, "allowed_roles": "tracked",
		})},
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
	if err := b.setupWAN(ctx); err != nil {
		return err
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

// tenantClient is the load generator's kept-alive client to a tenant: a pooled
// transport, HTTP/2 attempted as cleanhttp does, idle connections for idle readers.
func tenantClient(caPEM []byte, idle int) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the tenant CA file holds no certificate")
	}
	tr := cleanhttp.DefaultPooledTransport()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = idle
	return &http.Client{Transport: tr, Timeout: time.Minute}, nil
}

// setupWAN gives each WAN link a client of the engine and a role of it: the same
// service user, through the proxy. Writing a client makes a first grant, whose
// handshake tells the protocol the engine agreed with that tenant.
func (b *bench) setupWAN(ctx context.Context) error {
	for _, s := range wanScenarios {
		if s.path == "" {
			continue
		}
		l := b.bed.wan[s.wan]
		name := strings.TrimPrefix(s.path, "cyberark/token/")
		before, err := b.handshakeCounts(ctx)
		if err != nil {
			return err
		}
		cfg := b.clientConfig(l.url, l.tenant.caPEM, map[string]any{"revoke_tokens": false, "allowed_roles": name})
		if s.maxFailedLogins > 0 {
			cfg["max_failed_logins"] = s.maxFailedLogins
		}
		_, err = b.vault.Logical().WriteWithContext(ctx, "cyberark/clients/"+name, cfg)
		if err != nil {
			return fmt.Errorf("writing the client %s: %w", name, err)
		}
		if _, err := b.vault.Logical().WriteWithContext(ctx, "cyberark/roles/"+name, map[string]any{"client": name, "token_reuse": false}); err != nil {
			return fmt.Errorf("writing the role %s: %w", name, err)
		}
		after, err := b.handshakeCounts(ctx)
		if err != nil {
			return err
		}
		b.noteHandshakes(s.key, before, after)
	}
	return nil
}

// measure runs s with c readers: a warm-up, then duration measured, with the CPU
// time of every process on the path and, across the WAN, the TLS handshakes.
func (b *bench) measure(ctx context.Context, s scenario, c int) (result, error) {
	if _, err := b.load(ctx, s, c, b.o.warmup); err != nil {
		return result{}, err
	}
	before, err := b.handshakesNow(ctx, s)
	if err != nil {
		return result{}, err
	}
	cpuBefore := b.cpuNow()
	r, err := b.load(ctx, s, c, b.o.duration)
	if err != nil {
		return r, err
	}
	r.cpu = b.cpuNow().since(cpuBefore)
	after, err := b.handshakesNow(ctx, s)
	if err != nil {
		return r, err
	}
	r.handshakes = -1
	if before.counted {
		r.handshakes = after.total - before.total
		b.noteHandshakes(s.key, before.byProtocol, after.byProtocol)
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
	switch {
	case s.key == "client":
		do = b.clientCall
	case s.path == "" && s.wan != "":
		key := s.key
		do = b.tenantCall(b.wanTenant[s.wan], b.bed.wan[s.wan].url, func(proto string) { b.noteProtocol(key, proto) })
	case s.path == "":
		do = b.tenantCall(b.tenant, b.bed.tenant.url, nil)
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

// tenantCall is the grant the engine makes, made directly to base with hc: the same
// form, headers and kept-alive TLS connection. note, if not nil, hears the protocol of
// each answer ("h2" or "http/1.1", as the engine's metric names them).
func (b *bench) tenantCall(hc *http.Client, base string, note func(string)) func(context.Context) error {
	u := strings.TrimSuffix(base, "/") + "/oauth2/token/" + url.PathEscape(appID)
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
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"access_token"`)) {
			return fmt.Errorf("tenant: HTTP %d", resp.StatusCode)
		}
		if note != nil {
			switch resp.ProtoMajor {
			case 2:
				note("h2")
			case 1:
				note("http/1.1")
			default:
				note(resp.Proto)
			}
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.bed.tenant.url, "/")+"/_emulator/stats", nil)
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

// clientConfig is the bench's service user at a tenant URL, with extra fields.
func (b *bench) clientConfig(tenantURL string, caPEM []byte, extra map[string]any) map[string]any {
	cfg := map[string]any{
		"tenant_url": tenantURL, "app_id": appID, "client_id": clientID,
		"client_secret": b.bed.secret, "ca_cert": string(caPEM), "scopes": "read",
	}
	maps.Copy(cfg, extra)
	return cfg
}
