package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// vaultState is what a Vault keeps, on disk and in memory, at one moment.
type vaultState struct {
	// dirBytes and dirAlloc are the Raft directory's files: their sizes, and the disk
	// blocks allocated to them. Raft's BoltDB files are preallocated, sparsely: their
	// sizes grow in steps, their blocks with the pages written.
	dirBytes, dirAlloc int64
	// fsmBytes is the logical size of what Vault stores: the state in a Raft snapshot,
	// every key and its encrypted value, without BoltDB's free pages or Raft's log.
	fsmBytes int64
	leases   int                // leases under the role's path
	rss      vaultproc.Resident // Vault's resident set
	// heap is Vault's heap in use just after a forced garbage collection.
	heap int64
}

// storageRun is Vault's state before and after reads of a role.
type storageRun struct {
	role          string
	leased        bool
	reads         int
	elapsed       time.Duration
	before, after vaultState
}

// storage measures what reads of a reused role cost Vault's storage and memory,
// lease-free and leased: a second Vault dev server, with its storage in Raft, so that
// it can be measured (the first one's is in memory), and the engine on it. Each role
// is read -storage-reads times by -c readers, and Vault's state is read before and
// after. The lease-free role goes first, on a store that no revocation has left free
// pages in for its writes, if it made any, to hide in; the leased role's leases are
// measured and then left to the server, which stops: revoking them would take time
// and show nothing more. The second server runs only for this, when the other runs
// are over.
func (b *bench) storage(ctx context.Context) error {
	dir := filepath.Join(b.bed.dir, "storage")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	raftDir := filepath.Join(dir, "raft")
	logf("a Vault dev server on Raft storage, for %d reads of a reused role, lease-free and then leased", b.o.storageReads)
	dev, err := vaultproc.StartDev(ctx, vaultproc.DevConfig{Bin: b.o.vaultBin, Dir: dir, PluginDir: b.bed.plugins, RaftDir: raftDir})
	if err != nil {
		return err
	}
	defer dev.Stop(10*time.Second, logf)
	if err := b.bed.engine.Register(ctx, dev.Client); err != nil {
		return err
	}
	if err := b.bed.engine.Mount(ctx, dev.Client, "cyberark"); err != nil {
		return err
	}
	writes := []struct {
		path string
		data map[string]any
	}{
		{"cyberark/config", b.clientConfig(b.bed.tenant.url, b.bed.tenant.caPEM, nil)},
		{"cyberark/roles/reuse", map[string]any{"token_reuse": true}},
		{"cyberark/roles/leasefree", map[string]any{"token_reuse": true, "lease_free": true}},
	}
	for _, w := range writes {
		if _, err := dev.Client.Logical().WriteWithContext(ctx, w.path, w.data); err != nil {
			return fmt.Errorf("writing %s: %w", w.path, err)
		}
	}
	for _, run := range []storageRun{{role: "leasefree"}, {role: "reuse", leased: true}} {
		path := "cyberark/token/" + run.role
		// The role's grant and the engine's first work on it are not what is measured.
		if err := readN(ctx, b.vaultHC, dev, path, 1, 1); err != nil {
			return err
		}
		if run.before, err = b.vaultState(ctx, dev, raftDir, path); err != nil {
			return err
		}
		start := time.Now()
		if err := readN(ctx, b.vaultHC, dev, path, b.o.storageReads, b.o.conc); err != nil {
			return err
		}
		run.elapsed, run.reads = time.Since(start), b.o.storageReads
		if run.after, err = b.vaultState(ctx, dev, raftDir, path); err != nil {
			return err
		}
		b.storageRuns = append(b.storageRuns, run)
		fmt.Fprintf(os.Stderr, "storage: %d reads of %s in %s: Raft directory %+d bytes (%+d allocated), logical %+d bytes, leases %d → %d, "+
			"Vault RSS %+.1f MiB (anonymous %+.1f, file-backed %+.1f), live heap %+.1f MiB\n",
			run.reads, path, run.elapsed.Round(time.Millisecond), run.after.dirBytes-run.before.dirBytes,
			run.after.dirAlloc-run.before.dirAlloc, run.after.fsmBytes-run.before.fsmBytes,
			run.before.leases, run.after.leases, mibOf(run.after.rss.Total-run.before.rss.Total),
			mibOf(run.after.rss.Anon-run.before.rss.Anon), mibOf(run.after.rss.File-run.before.rss.File),
			mibOf(run.after.heap-run.before.heap))
	}
	return nil
}

func mibOf(n int64) float64 { return float64(n) / (1 << 20) }

// readN reads path n times with c readers, and fails on the first failed read.
func readN(ctx context.Context, hc *http.Client, dev *vaultproc.Dev, path string, n, c int) error {
	u := strings.TrimSuffix(dev.Addr, "/") + "/v1/" + path
	var next atomic.Int64
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
				if err == nil {
					req.Header.Set("X-Vault-Token", dev.Token)
					var status int
					var body []byte
					if status, body, err = fetch(hc, req); err == nil && status != http.StatusOK {
						err = fmt.Errorf("%s: HTTP %d: %.200s", path, status, body)
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n)) // the others stop too
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// vaultState reads dev's state: its Raft directory and its RSS first, then the leases
// under path, then a snapshot for the logical size (taking one may compact Raft's log).
func (b *bench) vaultState(ctx context.Context, dev *vaultproc.Dev, raftDir, path string) (vaultState, error) {
	var st vaultState
	var err error
	if st.dirBytes, st.dirAlloc, err = dirSize(raftDir); err != nil {
		return st, err
	}
	if st.rss, err = vaultproc.RSS(dev.Proc.Pid()); err != nil {
		return st, err
	}
	s, err := dev.Client.Logical().ListWithContext(ctx, "sys/leases/lookup/"+path+"/")
	if err != nil {
		return st, fmt.Errorf("listing the leases of %s: %w", path, err)
	}
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		st.leases = len(keys)
	}
	if st.fsmBytes, err = snapshotStateSize(ctx, b.vaultHC, dev); err != nil {
		return st, err
	}
	st.heap, err = liveHeap(ctx, b.vaultHC, dev)
	return st, err
}

// liveHeap is dev's heap in use (HeapAlloc) just after a garbage collection: its pprof
// heap endpoint collects first with gc=1, and with debug=1 ends its text with the
// runtime's memory statistics.
func liveHeap(ctx context.Context, hc *http.Client, dev *vaultproc.Dev) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(dev.Addr, "/")+"/v1/sys/pprof/heap?gc=1&debug=1", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Vault-Token", dev.Token)
	status, body, err := fetch(hc, req)
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("sys/pprof/heap: HTTP %d", status)
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("sys/pprof/heap: no HeapAlloc in the answer")
}

// dirSize is the total size of the regular files under dir, and the disk blocks
// allocated to them, in bytes.
func dirSize(dir string) (size, alloc int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		size += info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			alloc += int64(st.Blocks) * 512 //nolint:unconvert // int32 on some platforms
		}
		return nil
	})
	return size, alloc, err
}

// snapshotStateSize takes a Raft snapshot of dev (a gzipped tar archive) and returns
// the size of its state.bin: every key and value Vault stores.
func snapshotStateSize(ctx context.Context, hc *http.Client, dev *vaultproc.Dev) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(dev.Addr, "/")+"/v1/sys/storage/raft/snapshot", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Vault-Token", dev.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("raft snapshot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("raft snapshot: HTTP %d", resp.StatusCode)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("raft snapshot: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return 0, errors.New("raft snapshot: no state.bin in it")
		}
		if err != nil {
			return 0, fmt.Errorf("raft snapshot: %w", err)
		}
		if h.Name == "state.bin" {
			return h.Size, nil
		}
	}
}
