//go:build unix

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/emulator"
	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// cluster is a 3-node Vault cluster with integrated storage (Raft), started, changed
// and stopped by scripts/cluster.sh as a person would, with a client for each node.
type cluster struct {
	t     *testing.T
	ctx   context.Context
	env   []string // scripts/cluster.sh's environment
	dir   string
	token string
	nodes []*clusterNode
}

// clusterNode is one node, numbered 1 to 3 as the script numbers them.
type clusterNode struct {
	n    int
	addr string
	// client is for the test's own calls; it waits long, as an operator would.
	client *api.Client
	// load is for the read load: it gives up on a read after loadReadTimeout and
	// never retries, so that each failure is seen.
	load *api.Client
	// retrying is load with vault/api's default retries (two, on 5xx and connection
	// errors, after 1 to 1.5s), as most callers have.
	retrying *api.Client
}

func (n *clusterNode) String() string { return "node" + strconv.Itoa(n.n) }

// loadReadTimeout bounds one read of the load, so that a read stuck on a dead leader
// counts as failed instead of stalling its worker.
const loadReadTimeout = 10 * time.Second

// startCluster starts the cluster in base (its files in base/cluster, its logs in
// base/logs, which the guard checks when the test ends) with the plugin versionV1
// registered and enabled at mountPath, and stops it when the test ends.
func startCluster(ctx context.Context, t *testing.T, base string, guard *logGuard) *cluster {
	t.Helper()
	bin := vaultBin(t)
	b := plugin(t, versionV1)
	home := filepath.Join(base, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	var ports []string
	for len(ports) < 3 {
		p, err := vaultproc.FreePortPair(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Two pairs must not overlap: p+1 is a cluster port.
		if s := strconv.Itoa(p); !slices.Contains(ports, s) && !slices.Contains(ports, strconv.Itoa(p-1)) && !slices.Contains(ports, strconv.Itoa(p+1)) {
			ports = append(ports, s)
		}
	}
	logDir := filepath.Join(base, "logs")
	c := &cluster{
		t:   t,
		ctx: ctx,
		dir: filepath.Join(base, "cluster"),
		env: vaultproc.ChildEnv(home,
			"VAULT_BIN="+bin,
			"PLUGIN_BIN="+filepath.Join(pluginDir, b.Command),
			"VERSION="+versionV1,
			"CLUSTER_DIR="+filepath.Join(base, "cluster"),
			"CLUSTER_LOG_DIR="+logDir,
			"CLUSTER_PORTS="+strings.Join(ports, " "),
			// Trace, so that every line the plugin writes reaches the logs the guard checks.
			"CLUSTER_LOG_LEVEL=trace",
			"CLUSTER_MOUNT="+mountPath,
		),
	}
	for n := 1; n <= 3; n++ {
		guard.addLog(fmt.Sprintf("cluster node%d", n), filepath.Join(logDir, fmt.Sprintf("node%d.log", n)))
	}
	// Registered before the start, so that a start that fails half way is cleaned up.
	t.Cleanup(func() {
		if out, err := c.run("stop"); err != nil {
			t.Errorf("scripts/cluster.sh stop: %v\n%s", err, out)
		}
	})
	started := time.Now()
	out := c.script("start")
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "root token") {
			t.Log(line)
		}
	}
	t.Logf("the cluster started in %s", time.Since(started).Round(time.Millisecond))

	vars := readEnvFile(t, filepath.Join(c.dir, "cluster.env"))
	c.token = vars["VAULT_TOKEN"]
	for n := 1; n <= 3; n++ {
		addr := vars[fmt.Sprintf("CLUSTER_NODE%d_ADDR", n)]
		if addr == "" || c.token == "" {
			t.Fatalf("cluster.env lacks node %d's address or the root token", n)
		}
		c.nodes = append(c.nodes, &clusterNode{
			n:      n,
			addr:   addr,
			client: newClient(t, addr, c.token),
			load:   newClient(t, addr, c.token, func(cfg *api.Config) { cfg.Timeout = loadReadTimeout }),
			retrying: newClient(t, addr, c.token, func(cfg *api.Config) {
				cfg.Timeout = loadReadTimeout
				cfg.MaxRetries = api.DefaultConfig().MaxRetries
			}),
		})
	}
	return c
}

// run runs scripts/cluster.sh with args and returns its output.
func (c *cluster) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(moduleRoot, "scripts", "cluster.sh"), args...) //nolint:gosec // the project's own script, with the test's arguments
	cmd.Dir = moduleRoot
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// script runs scripts/cluster.sh with args, failing the test if it fails.
func (c *cluster) script(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("scripts/cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path) //nolint:gosec // cluster.env, which scripts/cluster.sh wrote in the test's directory
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

// pid is node n's Vault process, as the script recorded it.
func (c *cluster) pid(n *clusterNode) int {
	c.t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("node%d", n.n), "pid"))
	if err != nil {
		c.t.Fatalf("%s's pid: %v", n, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		c.t.Fatalf("%s's pid: %v", n, err)
	}
	return pid
}

// active is the node that reports itself active, among nodes, or nil.
func (c *cluster) active(nodes []*clusterNode) *clusterNode {
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
		h, err := n.client.Sys().HealthWithContext(ctx)
		cancel()
		if err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return n
		}
	}
	return nil
}

// waitActive waits up to limit for one of nodes to be active, and returns it.
func (c *cluster) waitActive(nodes []*clusterNode, limit time.Duration) *clusterNode {
	c.t.Helper()
	var a *clusterNode
	waitFor(c.t, limit, "an active node", func() bool {
		a = c.active(nodes)
		return a != nil
	})
	return a
}

func (c *cluster) others(n *clusterNode) []*clusterNode {
	var out []*clusterNode
	for _, m := range c.nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// pluginsUnder counts the plugin processes under node n's Vault, or is -1 where
// processes cannot be listed.
func (c *cluster) pluginsUnder(n *clusterNode) int {
	c.t.Helper()
	pids, err := vaultproc.Children(c.pid(n), pluginName)
	if err != nil {
		c.t.Logf("cannot list processes here, so the plugin processes are not counted: %v", err)
		return -1
	}
	return len(pids)
}

// loadRead is one read of the load.
type loadRead struct {
	node       *clusterNode
	retrying   bool // through the node's retrying client
	start, end time.Time
	err        error
	token      string
}

// readLoad reads one path from several workers, spread over a set of nodes in turn, as
// applications behind a load balancer would; drop takes a node out of the set, as the
// balancer's health check would once the node stops answering.
type readLoad struct {
	path  string
	mu    sync.Mutex
	nodes []*clusterNode
	next  int
	reads []loadRead
	stop  chan struct{}
	wg    sync.WaitGroup
}

// loadPause is each worker's pause between reads: the load is steady, not a flood
// that would starve the cluster's heartbeats on two cores.
const loadPause = 20 * time.Millisecond

// startLoad starts workers workers without retries and as many with them.
func startLoad(path string, workers int, nodes []*clusterNode) *readLoad {
	l := &readLoad{path: path, nodes: slices.Clone(nodes), stop: make(chan struct{})}
	for range workers {
		l.wg.Add(2)
		go l.work(false)
		go l.work(true)
	}
	return l
}

func (l *readLoad) work(retrying bool) {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(loadPause):
		}
		l.mu.Lock()
		n := l.nodes[l.next%len(l.nodes)]
		l.next++
		l.mu.Unlock()
		r := loadRead{node: n, retrying: retrying, start: time.Now()}
		c := n.load
		if retrying {
			c = n.retrying
		}
		sec, err := c.Logical().Read(mountPath + "/" + l.path)
		r.end, r.err = time.Now(), err
		if err == nil && sec != nil {
			r.token, _ = sec.Data["access_token"].(string)
		}
		if err == nil && r.token == "" {
			r.err = errors.New("the response holds no access_token")
		}
		l.mu.Lock()
		l.reads = append(l.reads, r)
		l.mu.Unlock()
	}
}

func (l *readLoad) drop(n *clusterNode) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nodes = slices.DeleteFunc(l.nodes, func(m *clusterNode) bool { return m == n })
}

// waitRecovered waits, up to limit, until every node left in the load has served a read
// sent after the last failed one, so that the load's report sees the recovery however
// long the failover took on a slow machine. It does not fail the test: checkLoad says
// what went wrong.
func (l *readLoad) waitRecovered(limit time.Duration) {
	recovered := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		var lastFail time.Time
		for _, r := range l.reads {
			if r.err != nil && slices.Contains(l.nodes, r.node) && r.end.After(lastFail) {
				lastFail = r.end
			}
		}
		for _, n := range l.nodes {
			if !slices.ContainsFunc(l.reads, func(r loadRead) bool { return r.node == n && r.err == nil && r.start.After(lastFail) }) {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(limit); !recovered() && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *readLoad) finish() []loadRead {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reads)
}

// TestCluster runs the engine on a 3-node Raft cluster: config and roles written once
// are used by reads sent to any node; under a steady read load spread over the nodes
// the leader is killed, and the failed reads and the time until reads succeed again
// are measured; leases issued before the failover are revoked at the tenant after it,
// by revoke-prefix and by expiry; scheduled rotation runs once per period across the
// leader change; a rotation cut off by the leader's death is settled by the next
// leader; and the killed nodes rejoin and serve reads.
//
// It runs alone (not in parallel with the other tests), so that the timings it reports
// are the cluster's, not the machine's.
func TestCluster(t *testing.T) {
	const (
		// period is the rotation period; the rotation window holds three due times.
		period = 8 * time.Second
		window = 3*period + period/2
		// killAfter is when the leader is killed, counted from the config write that
		// starts the schedule: between the first and second due times.
		killAfter = period + period/2
		// shortTTL is the lease TTL of the leases left to expire: longer than the time
		// from their read to the kill, so that they end after the failover.
		shortTTL   = 20 * time.Second
		leasesEach = 5
		// recoveryLimit bounds the time reads may fail after the kill; past it, a
		// failed read fails the test.
		recoveryLimit = time.Minute
	)
	base := t.TempDir() // first, so that it is removed after the guard has read the logs
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	guard := newLogGuard(t)
	tn := startTenant(t, 3600, nil, nil)
	guard.addSecrets(tn.secrets)
	c := startCluster(ctx, t, base, guard)

	leader := c.waitActive(c.nodes, 30*time.Second)
	// env lets the single-server helpers (token checks, config reads with their secret
	// checks) talk to the cluster; its client is the current leader's.
	e := &env{t: t, ctx: ctx, guard: guard, tenant: tn, client: leader.client}
	standbys := c.others(leader)
	t.Logf("leader: %s", leader)

	// Vault Community Edition runs the plugin on the active node only; standbys
	// forward every request to it.
	for _, n := range c.nodes {
		if got, want := c.pluginsUnder(n), map[bool]int{true: 1, false: 0}[n == leader]; got >= 0 && got != want {
			t.Errorf("%s runs %d plugin processes, want %d", n, got, want)
		}
	}

	// Config through the leader, roles through a standby; reads through every node.
	data := tn.configData()
	if _, err := leader.client.Logical().WriteWithContext(ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing the config through %s: %v", leader, err)
	}
	for name, role := range map[string]map[string]any{
		"fleet": {"scopes": "read", "token_reuse": true},
		"own":   {"scopes": "read"},
		"short": {"scopes": "read", "ttl": shortTTL.String()},
	} {
		if _, err := standbys[0].client.Logical().WriteWithContext(ctx, mountPath+"/roles/"+name, role); err != nil {
			t.Fatalf("writing role %s through %s: %v", name, standbys[0], err)
		}
	}
	for _, n := range c.nodes {
		sec := e.readTokenAs(n.client, "token/own", nil)
		if got := parseClaims(t, accessToken(t, sec)).Scope; got != "read" {
			t.Errorf("token/own read through %s has scope %q, want read", n, got)
		}
	}
	// A config change through a standby reaches every node: the next read through any
	// of them asks the tenant for the new scopes.
	if _, err := standbys[1].client.Logical().WriteWithContext(ctx, mountPath+"/config", map[string]any{"scopes": "write"}); err != nil {
		t.Fatalf("changing the config's scopes through %s: %v", standbys[1], err)
	}
	if _, err := standbys[0].client.Logical().WriteWithContext(ctx, mountPath+"/roles/own", map[string]any{"scopes": "read,write"}); err != nil {
		t.Fatalf("changing role own through %s: %v", standbys[0], err)
	}
	for _, n := range c.nodes {
		if got := parseClaims(t, accessToken(t, e.readTokenAs(n.client, "token", nil))).Scope; got != "write" {
			t.Errorf("after the config change, a token read through %s has scope %q, want write", n, got)
		}
		if got := parseClaims(t, accessToken(t, e.readTokenAs(n.client, "token/own", nil))).Scope; got != "read write" {
			t.Errorf("after the role change, token/own through %s has scope %q, want \"read write\"", n, got)
		}
	}

	// Leases from before the failover: some to be revoked by prefix, some to expire.
	type lease struct{ id, token, role string }
	var before []lease
	for i := range leasesEach {
		for _, role := range []string{"own", "short"} {
			sec := e.readTokenAs(c.nodes[i%3].client, "token/"+role, nil)
			before = append(before, lease{sec.LeaseID, accessToken(t, sec), role})
		}
	}

	// revoked counts the leases from before the failover (of role, or all) whose
	// tokens the tenant has revoked.
	revoked := func(role string) (n int) {
		for _, l := range before {
			if (role == "" || l.role == role) && tn.emu.Revoked(l.token) {
				n++
			}
		}
		return n
	}

	// The schedule starts, and the load with it.
	data = map[string]any{"rotation_period": period.String()}
	configuredAt := time.Now()
	if _, err := standbys[0].client.Logical().WriteWithContext(ctx, mountPath+"/config", data); err != nil {
		t.Fatalf("writing rotation_period through %s: %v", standbys[0], err)
	}
	load := startLoad("token/fleet", 2, c.nodes)

	// The leader dies, as a machine would: Vault and its plugin at once.
	time.Sleep(time.Until(configuredAt.Add(killAfter)))
	if n := revoked(""); n != 0 {
		t.Fatalf("%d leases meant to end after the failover ended before it; lengthen shortTTL", n)
	}
	killed, killedAt := leader, time.Now()
	leader = c.failover("kill-node", leader, load, recoveryLimit)
	e.client = leader.client
	time.Sleep(time.Until(configuredAt.Add(window)))
	checkLoad(t, tn, "leader killed", load.finish(), killed, killedAt, recoveryLimit)

	// Rotations: one per due time, across the leader change.
	changes := passwordChanges(tn.emu.Requests())
	var offsets []string
	for _, ch := range changes {
		offsets = append(offsets, ch.at.Sub(configuredAt).Round(time.Millisecond).String())
	}
	t.Logf("rotation_period %s: password changes at %v after the config write (leader killed at %s)",
		period, offsets, killedAt.Sub(configuredAt).Round(time.Millisecond))
	if want := int(window / period); len(changes) != want || tn.emu.Stats().PasswordChanges != int64(want) {
		t.Errorf("in %s with rotation_period %s the tenant received %d password changes and made %d, want %d",
			window, period, len(changes), tn.emu.Stats().PasswordChanges, want)
	}
	for i, ch := range changes {
		due := configuredAt.Add(time.Duration(i+1) * period)
		if ch.at.Before(due) || !ch.at.Before(due.Add(period)) {
			t.Errorf("rotation %d came at %s, outside its period [%s, %s)", i+1, ch.at.Sub(configuredAt).Round(time.Millisecond),
				due.Sub(configuredAt), due.Add(period).Sub(configuredAt))
		}
	}
	if _, err := leader.client.Logical().WriteWithContext(ctx, mountPath+"/config", map[string]any{"disable_automated_rotation": true}); err != nil {
		t.Fatalf("turning the schedule off: %v", err)
	}
	if cfg := readRotationConfig(t, e); cfg["rotation_state"] != "ok" || cfg["next_vault_rotation"] != nil {
		t.Errorf("after the rotations: rotation_state=%v next_vault_rotation=%v, want ok and none", cfg["rotation_state"], cfg["next_vault_rotation"])
	}
	if len(changes) > 0 && !tn.emu.ClientSecretIs(clientID, changes[len(changes)-1].new) {
		t.Error("the tenant does not accept the last rotation's secret")
	}

	// Leases from before the failover end at the tenant: by revoke-prefix through the
	// new leader, and by expiry, which the new leader's expiration manager runs.
	if err := leader.client.Sys().RevokePrefixWithContext(ctx, mountPath+"/token/own"); err != nil {
		t.Fatalf("revoke-prefix through %s: %v", leader, err)
	}
	byPrefix := revoked("own")
	if byPrefix != leasesEach {
		t.Errorf("revoke-prefix through the new leader revoked %d of the %d token/own leases from before the failover at the tenant", byPrefix, leasesEach)
	}
	waitFor(t, shortTTL+time.Minute, "the token/short leases from before the failover to expire and be revoked", func() bool {
		return revoked("short") == leasesEach
	})
	t.Logf("leases issued before the failover: %d; revoked at the tenant after it: %d (%d by revoke-prefix, %d by expiry)",
		len(before), revoked(""), byPrefix, revoked("short"))

	// The killed node rejoins and serves reads.
	c.script("start-node", strconv.Itoa(killed.n))
	e.readTokenAs(killed.client, "token/fleet", nil)
	t.Logf("%s rejoined and served a read", killed)

	// A rotation cut off by the leader's death: the tenant makes the change, its answer
	// is held back, and the leader dies before it hears it.
	secretBefore := tn.secret
	if len(changes) > 0 {
		secretBefore = changes[len(changes)-1].new
	}
	tn.emu.AddFaults(emulator.Fault{Endpoint: "change_password", Times: 1, Delay: 30 * time.Second, ApplyFirst: true})
	rotateErr := make(chan error, 1)
	through := c.others(leader)[0]
	go func() {
		_, err := through.client.Logical().WriteWithContext(ctx, mountPath+"/config/rotate-root", nil)
		rotateErr <- err
	}()
	waitFor(t, 20*time.Second, "the password change to reach the tenant", func() bool {
		return len(passwordChanges(tn.emu.Requests())) == len(changes)+1
	})
	cut := passwordChanges(tn.emu.Requests())[len(changes)]
	if !tn.emu.ClientSecretIs(clientID, cut.new) || tn.emu.ClientSecretIs(clientID, secretBefore) {
		t.Fatal("the held change was not applied at the tenant")
	}
	killed = leader
	killedAt = time.Now()
	c.script("kill-node", strconv.Itoa(killed.n))
	select {
	case err := <-rotateErr:
		t.Logf("rotate-root through %s, cut off by the leader's death: %v", through, shortErr(err))
	case <-time.After(time.Minute):
		t.Fatal("rotate-root had not returned a minute after the leader died")
	}
	leader = c.waitActive(c.others(killed), recoveryLimit)
	e.client = leader.client
	t.Logf("%s killed during the rotation; %s active %s later", killed, leader, time.Since(killedAt).Round(time.Millisecond))
	waitFor(t, time.Minute, "the new leader to settle the rotation", func() bool {
		sec, err := leader.client.Logical().ReadWithContext(ctx, mountPath+"/config")
		return err == nil && sec != nil && sec.Data["rotation_state"] == "ok"
	})
	for _, n := range c.others(killed) {
		e.readTokenAs(n.client, "token", nil)
		if got := tn.lastTokenRequest(t).Header.Get("Authorization"); got != basicAuth(cut.new) {
			t.Errorf("a read through %s after the failover did not authenticate with the secret the cut-off rotation set", n)
		}
	}
	if cfg := readRotationConfig(t, e); cfg["last_vault_rotation"] == nil {
		t.Error("the settled rotation is not recorded as last_vault_rotation")
	}

	// Both killed nodes are back, and every node serves.
	c.script("start-node", strconv.Itoa(killed.n))
	for _, n := range c.nodes {
		e.readTokenAs(n.client, "token/fleet", nil)
	}

	// A leader stopped as an operator stops it (SIGTERM: it seals and steps down).
	load = startLoad("token/fleet", 2, c.nodes)
	time.Sleep(2 * time.Second)
	stopped, stoppedAt := leader, time.Now()
	leader = c.failover("stop-node", leader, load, recoveryLimit)
	time.Sleep(5 * time.Second)
	load.waitRecovered(recoveryLimit)
	checkLoad(t, tn, "leader stopped", load.finish(), stopped, stoppedAt, recoveryLimit)
	c.script("start-node", strconv.Itoa(stopped.n))
	e.readTokenAs(stopped.client, "token/fleet", nil)
	t.Log(c.script("status"))
}

// failover stops the active node old with the script's command how ("kill-node" or
// "stop-node") while load runs, taking old out of the load first as a balancer would,
// and returns the node that becomes active.
func (c *cluster) failover(how string, old *clusterNode, load *readLoad, limit time.Duration) *clusterNode {
	c.t.Helper()
	at := time.Now()
	load.drop(old)
	c.script(how, strconv.Itoa(old.n))
	next := c.waitActive(c.others(old), limit)
	c.t.Logf("%s %s: %s active %s later", how, old, next, time.Since(at).Round(time.Millisecond))
	return next
}

// checkLoad checks and reports the read load across the failover: every read before
// the kill and after the recovery succeeded with a token the tenant issued, and reads
// failed only between the kill and recoveryLimit after it. Readers without retries
// show the window; readers with vault/api's default retries show what most callers
// see of it.
func checkLoad(t *testing.T, tn *tenant, what string, reads []loadRead, killed *clusterNode, killedAt time.Time, recoveryLimit time.Duration) {
	t.Helper()
	issued := map[string]bool{}
	for _, tok := range tn.emu.Issued() {
		issued[tok] = true
	}
	type tally struct {
		reads, ok, failed, cutOff, after int
		lastFailEnd                      time.Time
		kinds                            map[string]int
		sample                           string
	}
	tallies := map[bool]*tally{false: {kinds: map[string]int{}}, true: {kinds: map[string]int{}}}
	for _, r := range reads {
		ty := tallies[r.retrying]
		ty.reads++
		switch {
		case r.err == nil:
			ty.ok++
			if !issued[r.token] {
				t.Errorf("a read through %s returned a token the tenant never issued", r.node)
			}
		case r.node == killed || r.start.Before(killedAt) && !r.end.Before(killedAt):
			// Sent to the node that died before the balancer dropped it, or in flight
			// through a standby to the leader as it died.
			ty.cutOff++
		case r.start.Before(killedAt):
			t.Errorf("a read through %s before the kill failed: %v", r.node, shortErr(r.err))
		case r.end.After(killedAt.Add(recoveryLimit)):
			t.Errorf("a read through %s failed %s after the kill: %v", r.node, r.end.Sub(killedAt).Round(time.Millisecond), shortErr(r.err))
		default:
			ty.failed++
			ty.kinds[errorKind(r.err)]++
			if ty.sample == "" {
				ty.sample = r.err.Error()
			}
			if r.end.After(ty.lastFailEnd) {
				ty.lastFailEnd = r.end
			}
		}
	}
	window := time.Duration(0)
	if raw := tallies[false]; raw.failed > 0 {
		window = raw.lastFailEnd.Sub(killedAt)
	}
	for _, r := range reads {
		if r.node != killed && !r.start.Before(killedAt) && !r.start.After(killedAt.Add(window)) {
			tallies[r.retrying].after++
		}
	}
	for _, retrying := range []bool{false, true} {
		ty := tallies[retrying]
		t.Logf("%s, readers with %s: %d reads, %d served, %d cut off on the stopped node; %d failed of the %d sent to the other nodes in the %s after the stop %v",
			what, map[bool]string{false: "no retries", true: "vault/api's default retries"}[retrying],
			ty.reads, ty.ok, ty.cutOff, ty.failed, ty.after, window.Round(time.Millisecond), ty.kinds)
		if ty.sample != "" {
			t.Logf("%s: a failed read: %s", what, ty.sample)
		}
	}
	// After the window, every surviving node served reads again.
	for _, n := range []int{1, 2, 3} {
		if n == killed.n {
			continue
		}
		served := slices.ContainsFunc(reads, func(r loadRead) bool {
			return r.node.n == n && r.err == nil && r.start.After(killedAt.Add(window))
		})
		if !served {
			t.Errorf("node%d served no read after the failover window", n)
		}
	}
}

// errorKind names a failed read's error for the report.
func errorKind(err error) string {
	var re *api.ResponseError
	switch {
	case errors.As(err, &re):
		return fmt.Sprintf("HTTP %d", re.StatusCode)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout"):
		return "timeout"
	default:
		return "other"
	}
}
