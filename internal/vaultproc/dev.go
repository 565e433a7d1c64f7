//go:build unix

package vaultproc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"
)

// DevConfig says how to run a Vault dev server.
type DevConfig struct {
	Bin string // the vault binary
	// Dir is the server's working directory; its HOME is Dir/home, made if missing.
	Dir       string
	PluginDir string
	// LogPath is the file the server's output is appended to; Dir/vault.log if empty.
	LogPath string
	// LogLevel is the server's -log-level; Vault's default (info) if empty.
	LogLevel string
	// Token is the root token; a random one if empty. It reaches Vault through the
	// environment, which other users cannot read, not the command line, which they can.
	Token string
	// Port is the API port to try first (the cluster listener takes the next one);
	// if it or the next is taken, or it is 0, a free pair is picked.
	Port int
	// Env is extra environment for the server, after ChildEnv has cleaned it.
	Env []string
	// RaftDir, when not empty, keeps the server's storage in Raft under this directory
	// (emptied first, made if missing) instead of in memory, so that what it stores can
	// be measured on disk. The server is still a dev server: initialised, unsealed and
	// with the root token Token.
	RaftDir string
}

// Dev is a running Vault dev server on loopback, unsealed, with the plugin directory
// set and nothing in it registered: its callers register their plugins by SHA-256 and
// version, as operators do.
type Dev struct {
	Addr   string // http://127.0.0.1:PORT
	Token  string
	Client *api.Client // with Token; see NewClient
	Proc   *Process
}

// devAttempts bounds the starts that lose their port to another process between the
// check and Vault's bind.
const devAttempts = 3

// StartDev starts a dev server and waits until it serves. On error nothing it started
// is left running.
func StartDev(ctx context.Context, cfg DevConfig) (*Dev, error) {
	if cfg.LogPath == "" {
		cfg.LogPath = filepath.Join(cfg.Dir, "vault.log")
	}
	if cfg.Token == "" {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		cfg.Token = "dev-root-" + hex.EncodeToString(b)
	}
	home := filepath.Join(cfg.Dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	env := ChildEnv(home, append([]string{"VAULT_DEV_ROOT_TOKEN_ID=" + cfg.Token}, cfg.Env...)...)
	port := cfg.Port
	var lastErr error
	for range devAttempts {
		if port == 0 || !portPairFree(ctx, port) {
			p, err := FreePortPair(ctx)
			if err != nil {
				return nil, err
			}
			port = p
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		// Only this attempt's output tells whether the port was lost.
		logStart := fileSize(cfg.LogPath)
		args := []string{"server", "-dev",
			"-dev-listen-address=" + addr,
			"-dev-plugin-dir=" + cfg.PluginDir,
			// The callers register what they mount, with versions; the dev server would
			// otherwise also register each file in the directory, unversioned.
			"-dev-plugin-init=false",
			"-dev-no-store-token",
		}
		if cfg.LogLevel != "" {
			args = append(args, "-log-level="+cfg.LogLevel)
		}
		if cfg.RaftDir != "" {
			file, err := writeRaftConfig(cfg.Dir, cfg.RaftDir, port)
			if err != nil {
				return nil, err
			}
			args = append(args, "-config="+file)
		}
		p, err := Start("vault server", cfg.Bin, cfg.Dir, env, cfg.LogPath, args...)
		if err != nil {
			return nil, err
		}
		d := &Dev{Addr: "http://" + addr, Token: cfg.Token, Proc: p}
		if d.Client, err = NewClient(d.Addr, cfg.Token); err != nil {
			p.Stop(5*time.Second, nil)
			return nil, err
		}
		if lastErr = d.waitHealthy(ctx); lastErr == nil {
			return d, nil
		}
		p.Stop(5*time.Second, nil)
		if !bytes.Contains(readFrom(cfg.LogPath, logStart), []byte("address already in use")) {
			break
		}
		port = 0
	}
	return nil, fmt.Errorf("vault server did not become ready (its log: %s): %w", cfg.LogPath, lastErr)
}

// writeRaftConfig empties raftDir and writes the server configuration that keeps its
// storage there, for a dev server whose API listens on port and its cluster listener
// on the next. Raft needs both addresses; mlock is off, as it is in dev mode.
func writeRaftConfig(dir, raftDir string, port int) (string, error) {
	// A start that lost its port may have left Raft state behind, which a dev server
	// would refuse to initialise again.
	if err := os.RemoveAll(raftDir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return "", err
	}
	hcl := fmt.Sprintf("storage \"raft\" {\n  path    = %s\n  node_id = \"dev\"\n}\n"+
		"api_addr      = \"http://127.0.0.1:%d\"\ncluster_addr  = \"https://127.0.0.1:%d\"\ndisable_mlock = true\n",
		strconv.Quote(raftDir), port, port+1)
	file := filepath.Join(dir, "vault-raft.hcl")
	return file, os.WriteFile(file, []byte(hcl), 0o600)
}

// Stop stops the server and the plugins it started.
func (d *Dev) Stop(grace time.Duration, logf func(string, ...any)) { d.Proc.Stop(grace, logf) }

func (d *Dev) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var lastErr error
	for {
		if d.Proc.Exited() {
			if d.Proc.Err() == nil {
				return errors.New("vault exited early, with status 0")
			}
			return fmt.Errorf("vault exited early: %w", d.Proc.Err())
		}
		h, err := d.Client.Sys().HealthWithContext(ctx)
		switch {
		case err != nil:
			lastErr = err
		case !h.Initialized || h.Sealed:
			lastErr = fmt.Errorf("initialized=%t sealed=%t", h.Initialized, h.Sealed)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), lastErr)
		case <-d.Proc.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// NewClient is a Vault client for addr with token and no namespace; tweaks change its
// config first. It never retries, since a retried read would be a second grant at the
// tenant, and gives up on a call after a minute.
func NewClient(addr, token string, tweaks ...func(*api.Config)) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	cfg.Timeout = time.Minute
	for _, f := range tweaks {
		f(cfg)
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.SetToken(token)
	c.ClearNamespace()
	return c, nil
}

// FreePortPair returns a loopback port p such that p and p+1 were free a moment ago:
// a dev server listens on p and its cluster listener on p+1. Another process may still
// take them before Vault binds; StartDev retries when that happens.
//
// It looks below the kernel's ephemeral range (portRange), never in it. There, every
// outgoing connection holds a port of its own for as long as it lives (Raft between
// nodes, the tests' keep-alive clients, the CLI's status checks), and a listener that
// asks for :0 takes one too. A node of the test cluster that is killed and started
// again must bind the same two ports, and a connection that took one of them in
// between made the restart fail with "address already in use"; below the range only
// another explicit bind can take them. In the range, thousands of connections in
// TIME_WAIT after a load test also made many pairs unusable.
func FreePortPair(ctx context.Context) (int, error) {
	lo, hi := portRange()
	for range 500 {
		port := lo + mrand.IntN(hi-lo) //nolint:gosec // a test port, nothing secret
		if portPairFree(ctx, port) {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no pair of adjacent free loopback ports found in %d-%d", lo, hi)
}

// ephemeralRange is the kernel's range of ports for outgoing connections and :0
// listeners (Linux); elsewhere, the range most systems use (IANA's dynamic ports).
const ephemeralRange = "/proc/sys/net/ipv4/ip_local_port_range"

// portRange is where FreePortPair picks p: [lo, hi), so that p+1 is at most hi, below
// the ephemeral range, or above it where the range leaves no room below.
func portRange() (lo, hi int) {
	first, last := 49152, 65535
	if raw, err := os.ReadFile(ephemeralRange); err == nil {
		var a, b int
		if n, _ := fmt.Sscan(string(raw), &a, &b); n == 2 && a > 0 && b >= a {
			first, last = a, b
		}
	}
	const floor = 10000 // above the well-known and most registered server ports
	switch {
	case first-1-floor >= 1000:
		return floor, first - 1
	case 65535-(last+1) >= 1000:
		return last + 1, 65535
	default:
		return floor, 65535 // no room outside the range: anywhere
	}
}

func portPairFree(ctx context.Context, port int) bool {
	return port > 0 && port < 65535 && portFree(ctx, port) && portFree(ctx, port+1)
}

func portFree(ctx context.Context, port int) bool {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// readFrom is the file's content from offset on, or nothing if it cannot be read.
func readFrom(path string, offset int64) []byte {
	f, err := os.Open(path) //nolint:gosec // the server's log, which this package named
	if err != nil {
		return nil
	}
	defer f.Close()
	data, _ := io.ReadAll(io.NewSectionReader(f, offset, 1<<30))
	return data
}
