// Command bench is the load generator of scripts/bench.sh (make bench). Against a Vault
// dev server that the script started, with the engine and the trivial bench plugin in
// its plugin directory and the tenant emulator beside it, it registers and mounts both
// plugins, configures the engine, and then measures, round after round, every read the
// performance figures compare: KV-v2, the trivial plugin without a lease and with
// leases of two sizes, a direct call to the tenant, and the engine's uncached, reused
// and lease-free token reads, each at 1 and at -c concurrent readers for a fixed time
// after a warm-up. It also counts the grants that -readers concurrent readers of a
// reuse role cost from an empty cache, reads the plugins' peak RSS, and prints (and
// writes as markdown) the medians and the ratios of issue 11's targets.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/client"
)

type options struct {
	vaultAddr     string
	vaultPID      int
	pluginDir     string
	pluginFile    string
	pluginVersion string
	trivialFile   string
	trivialVer    string
	tenantURL     string
	tenantCA      string
	appID         string
	clientID      string
	duration      time.Duration
	warmup        time.Duration
	rounds        int
	conc          int
	readers       int
	out           string
	profileDir    string
	pprofAddr     string
	only          string
}

func main() {
	var o options
	flag.StringVar(&o.vaultAddr, "vault-addr", "", "Vault `URL`; the root token comes from $BENCH_VAULT_TOKEN")
	flag.IntVar(&o.vaultPID, "vault-pid", 0, "the Vault server's `pid`, to find its plugin processes for their peak RSS")
	flag.StringVar(&o.pluginDir, "plugin-dir", "", "Vault's plugin `directory`")
	flag.StringVar(&o.pluginFile, "plugin", "vault-plugin-secrets-cyberark", "the engine's file `name` in the plugin directory")
	flag.StringVar(&o.pluginVersion, "plugin-version", "", "the `version` the engine was built to report")
	flag.StringVar(&o.trivialFile, "trivial", "bench-trivial", "the trivial plugin's file `name` in the plugin directory")
	flag.StringVar(&o.trivialVer, "trivial-version", "v0.0.1-bench", "the `version` the trivial plugin reports")
	flag.StringVar(&o.tenantURL, "tenant-url", "", "the emulator's HTTPS `URL`")
	flag.StringVar(&o.tenantCA, "tenant-ca", "", "the emulator's CA certificate `file` (PEM)")
	flag.StringVar(&o.appID, "app", "vault-bench", "the emulator's application `ID`")
	flag.StringVar(&o.clientID, "client-id", "svc-vault@bench.cyberark.cloud", "the client `ID`; the secret comes from $BENCH_CLIENT_SECRET")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "measured `time` of each run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured `time` before each run")
	flag.IntVar(&o.rounds, "rounds", 3, "`rounds` of every run; figures are medians over rounds")
	flag.IntVar(&o.conc, "c", 16, "concurrent readers of the throughput runs")
	flag.IntVar(&o.readers, "readers", 200, "concurrent readers of the grant count")
	flag.StringVar(&o.out, "out", "bench/results.md", "markdown `file` to write the table to (empty: none)")
	flag.StringVar(&o.profileDir, "profile-dir", "", "write CPU and allocation profiles of the engine under load to this `directory` (needs -pprof)")
	flag.StringVar(&o.pprofAddr, "pprof", "", "`host:port` of the engine's pprof listener (internal/benchprof build)")
	flag.StringVar(&o.only, "only", "", "comma-separated scenario `keys` to run (development; the report needs all)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

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
	{key: "reuse", label: "token/<role>, token_reuse, leased", path: "cyberark/token/reuse", leased: true},
	{key: "leasefree", label: "token/<role>, token_reuse, lease_free", path: "cyberark/token/leasefree"},
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
	token   string
	secret  string
	vault   *api.Client
	vaultHC *http.Client
	tenant  *http.Client
	// engineClient is the engine's own tenant client, configured as the engine's.
	engineClient *client.Client
	// results[key][conc] is one result per round.
	results map[string]map[int][]result
	grants  []int64
}

func run(o options) error {
	b := &bench{o: o, token: os.Getenv("BENCH_VAULT_TOKEN"), secret: os.Getenv("BENCH_CLIENT_SECRET"),
		results: map[string]map[int][]result{}}
	if o.vaultAddr == "" || b.token == "" || o.tenantURL == "" || o.tenantCA == "" || b.secret == "" || o.pluginDir == "" || o.pluginVersion == "" {
		return errors.New("-vault-addr, -tenant-url, -tenant-ca, -plugin-dir, -plugin-version, $BENCH_VAULT_TOKEN and $BENCH_CLIENT_SECRET are required")
	}
	ctx := context.Background()
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if o.profileDir != "" {
		return b.profile(ctx)
	}
	concs := []int{1, o.conc}
	for round := 1; round <= o.rounds; round++ {
		for _, c := range concs {
			for _, s := range scenarios {
				if o.only != "" && !slices.Contains(strings.Split(o.only, ","), s.key) {
					continue
				}
				r, err := b.measure(ctx, s, c)
				if err != nil {
					return fmt.Errorf("round %d, %s at c=%d: %w", round, s.key, c, err)
				}
				if b.results[s.key] == nil {
					b.results[s.key] = map[int][]result{}
				}
				b.results[s.key][c] = append(b.results[s.key][c], r)
				fmt.Fprintf(os.Stderr, "round %d  c=%-3d %-10s p50 %7.3f ms  p99 %7.3f ms  %8.0f req/s  (%d reads, %d errors)\n",
					round, c, s.key, ms(r.p50), ms(r.p99), r.rps, r.n, r.errors)
			}
		}
		g, err := b.crowd(ctx)
		if err != nil {
			return fmt.Errorf("round %d, %d readers: %w", round, o.readers, err)
		}
		b.grants = append(b.grants, g)
		fmt.Fprintf(os.Stderr, "round %d  %d concurrent readers from an empty cache: %d grant(s)\n", round, o.readers, g)
	}
	if o.only != "" {
		return nil
	}
	report := b.report()
	fmt.Print(report)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(report), 0o600); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", o.out)
	}
	return nil
}

func (b *bench) setup(ctx context.Context) error {
	cfg := api.DefaultConfig()
	cfg.Address = b.o.vaultAddr
	cfg.MaxRetries = 0
	vc, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	vc.SetToken(b.token)
	b.vault = vc
	// Every reader keeps its connection: the figures are Vault's work, not TCP's.
	b.vaultHC = cleanhttp.DefaultPooledClient()
	b.vaultHC.Transport.(*http.Transport).MaxIdleConnsPerHost = max(b.o.readers, b.o.conc) + 8
	b.vaultHC.Timeout = time.Minute

	caPEM, err := os.ReadFile(b.o.tenantCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("the tenant CA file holds no certificate")
	}
	tr := cleanhttp.DefaultPooledTransport()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = b.o.conc + 8
	b.tenant = &http.Client{Transport: tr, Timeout: time.Minute}
	b.engineClient, err = client.New(client.Config{
		TokenURL: strings.TrimSuffix(b.o.tenantURL, "/") + "/oauth2/token/" + url.PathEscape(b.o.appID),
		ClientID: b.o.clientID, ClientSecret: b.secret, CACert: string(caPEM), UserAgent: "bench",
		Retry: client.RetryPolicy{MaxRetries: 2, WaitMin: 100 * time.Millisecond, WaitMax: time.Second, Budget: time.Minute},
	})
	if err != nil {
		return err
	}

	for _, p := range []struct{ name, file, version string }{
		{"vault-plugin-secrets-cyberark", b.o.pluginFile, b.o.pluginVersion},
		{"bench-trivial", b.o.trivialFile, b.o.trivialVer},
	} {
		sum, err := fileSHA256(filepath.Join(b.o.pluginDir, p.file))
		if err != nil {
			return err
		}
		in := &api.RegisterPluginInput{Name: p.name, Type: api.PluginTypeSecrets, Command: p.file, SHA256: sum, Version: p.version}
		if b.o.pprofAddr != "" && p.name == "vault-plugin-secrets-cyberark" {
			in.Env = []string{"BENCH_PPROF_ADDR=" + b.o.pprofAddr}
		}
		if err := vc.Sys().RegisterPluginWithContext(ctx, in); err != nil {
			return fmt.Errorf("registering %s: %w", p.name, err)
		}
	}
	if err := vc.Sys().MountWithContext(ctx, "cyberark", &api.MountInput{Type: "vault-plugin-secrets-cyberark", Config: api.MountConfigInput{PluginVersion: b.o.pluginVersion}}); err != nil {
		return fmt.Errorf("mounting the engine: %w", err)
	}
	if err := vc.Sys().MountWithContext(ctx, "trivial", &api.MountInput{Type: "bench-trivial", Config: api.MountConfigInput{PluginVersion: b.o.trivialVer}}); err != nil {
		return fmt.Errorf("mounting the trivial plugin: %w", err)
	}
	writes := []struct {
		path string
		data map[string]any
	}{
		{"cyberark/config", map[string]any{
			"tenant_url": b.o.tenantURL, "app_id": b.o.appID, "client_id": b.o.clientID,
			"client_secret": b.secret, "ca_cert": string(caPEM), "scopes": "read",
		}},
		{"cyberark/roles/uncached", map[string]any{"token_reuse": false}},
		{"cyberark/roles/reuse", map[string]any{"token_reuse": true}},
		{"cyberark/roles/leasefree", map[string]any{"token_reuse": true, "lease_free": true}},
		{"cyberark/roles/crowd", map[string]any{"token_reuse": true}},
		{"secret/data/bench", map[string]any{"data": map[string]any{"value": "bench"}}},
	}
	for _, w := range writes {
		if _, err := vc.Logical().WriteWithContext(ctx, w.path, w.data); err != nil {
			return fmt.Errorf("writing %s: %w", w.path, err)
		}
	}
	// The trivial plugin's token gets the length of the tenant's.
	s, err := vc.Logical().ReadWithContext(ctx, "cyberark/token/uncached")
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
	if _, err := vc.Logical().WriteWithContext(ctx, "trivial/shape", map[string]any{"token_len": len(tok)}); err != nil {
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
			for {
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
	for _, e := range errs {
		r.errors += e
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
	u := strings.TrimSuffix(b.o.vaultAddr, "/") + "/v1/" + path
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		req.Header.Set("X-Vault-Token", b.token)
		status, body, err := fetch(b.vaultHC, req)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("%s: HTTP %d: %.200s", path, status, body)
		}
		return nil
	}
}

// tenantCall is the grant the engine makes, made directly: the same form, headers and
// kept-alive TLS connection.
func (b *bench) tenantCall() func(context.Context) error {
	u := strings.TrimSuffix(b.o.tenantURL, "/") + "/oauth2/token/" + url.PathEscape(b.o.appID)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(b.o.clientID+":"+b.secret))
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.o.tenantURL, "/")+"/_emulator/stats", nil)
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

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path) //nolint:gosec // a plugin binary in the -plugin-dir the operator named
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// median of the rounds' results, each figure on its own.
func (b *bench) median(key string, c int) result {
	rs := b.results[key][c]
	p50s := make([]time.Duration, len(rs))
	p99s := make([]time.Duration, len(rs))
	rps := make([]float64, len(rs))
	for i, r := range rs {
		p50s[i], p99s[i], rps[i] = r.p50, r.p99, r.rps
	}
	return result{p50: medianOf(p50s), p99: medianOf(p99s), rps: medianOf(rps)}
}

func medianOf[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (b *bench) report() string {
	var w strings.Builder
	cpu := cpuModel()
	fmt.Fprintf(&w, "## make bench: %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&w, "Machine: %d cores (%s), %s; one Vault dev server, the emulator and this load generator on loopback. "+
		"Each run: %s warm-up, %s measured; figures are medians of %d rounds.\n\n",
		runtime.NumCPU(), cpu, runtime.Version(), b.o.warmup, b.o.duration, b.o.rounds)
	fmt.Fprintf(&w, "| read | c=1 p50 ms | c=1 req/s | c=%d p50 ms | c=%d p99 ms | c=%d req/s |\n|---|---:|---:|---:|---:|---:|\n", b.o.conc, b.o.conc, b.o.conc)
	for _, s := range scenarios {
		one, many := b.median(s.key, 1), b.median(s.key, b.o.conc)
		fmt.Fprintf(&w, "| %s | %.3f | %.0f | %.3f | %.3f | %.0f |\n", s.label, ms(one.p50), one.rps, ms(many.p50), ms(many.p99), many.rps)
	}
	engine, trivial := b.peakRSS()
	fmt.Fprintf(&w, "\nGrants for %d concurrent readers of a reuse role from an empty cache, per round: %s.  \n", b.o.readers, joinInts(b.grants))
	fmt.Fprintf(&w, "Peak RSS (VmHWM) after these runs: engine %s, trivial plugin %s.\n\n", mib(engine), mib(trivial))

	one := func(k string) float64 { return ms(b.median(k, 1).p50) }
	many := func(k string) float64 { return b.median(k, b.o.conc).rps }
	extra := one("uncached") - one("direct")
	fmt.Fprintf(&w, "| target (issue 11) | measured | goal | met |\n|---|---:|---|---|\n")
	target := func(name string, v float64, format, goal string, ok bool) {
		fmt.Fprintf(&w, "| %s | "+format+" | %s | %s |\n", name, v, goal, yesNo(ok))
	}
	r1 := extra / one("jwt")
	target("(uncached p50 − direct tenant p50) / trivial JWT-lease p50, c=1", r1, "%.2f", "≤ 1.10", r1 <= 1.10)
	fmt.Fprintf(&w, "| uncached p50 − (trivial JWT-lease p50 + direct tenant p50), c=1 | %.3f ms | — | — |\n", one("uncached")-one("jwt")-one("direct"))
	r2 := many("leasefree") / many("plain")
	target(fmt.Sprintf("lease-free reuse req/s / trivial no-lease req/s, c=%d", b.o.conc), r2, "%.2f", "≥ 0.95", r2 >= 0.95)
	r3 := many("reuse") / many("jwt")
	target(fmt.Sprintf("leased reuse req/s / trivial JWT-lease req/s, c=%d", b.o.conc), r3, "%.2f", "≥ 1.00", r3 >= 1.0)
	maxGrants := slices.Max(append([]int64{0}, b.grants...))
	target(fmt.Sprintf("most grants for %d concurrent readers in a round", b.o.readers), float64(maxGrants), "%.0f", "= 1", maxGrants == 1 && slices.Min(b.grants) == 1)
	diff := float64(engine-trivial) / (1 << 20)
	target("engine peak RSS − trivial plugin's, MiB", diff, "%.1f", "≤ 4", engine > 0 && trivial > 0 && diff <= 4)
	fmt.Fprintf(&w, "\nOther ratios: KV-v2 / trivial no-lease req/s %.2f; trivial small-lease / no-lease req/s %.2f; JWT-lease / no-lease req/s %.2f; lease-free / leased reuse req/s %.2f.\n",
		many("kv")/many("plain"), many("small")/many("plain"), many("jwt")/many("plain"), many("leasefree")/many("reuse"))
	return w.String()
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func joinInts(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

func mib(n int64) string {
	if n <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
