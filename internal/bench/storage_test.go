package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/idsec-labs/vault-plugin-secrets-cyberark/internal/vaultproc"
)

// TestSnapshotStateSize: the logical size is state.bin's, read from a gzipped tar as
// Vault's snapshot endpoint sends it, with the token it was given.
func TestSnapshotStateSize(t *testing.T) {
	t.Parallel()
	files := []struct {
		name string
		size int
	}{{"meta.json", 190}, {"state.bin", 13033}, {"SHA256SUMS", 152}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/sys/storage/raft/snapshot" || r.Header.Get("X-Vault-Token") != "root" {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		zw := gzip.NewWriter(w)
		tw := tar.NewWriter(zw)
		for _, f := range files {
			if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o600, Size: int64(f.size)}); err != nil {
				t.Error(err)
			}
			if _, err := tw.Write(make([]byte, f.size)); err != nil {
				t.Error(err)
			}
		}
		_ = tw.Close()
		_ = zw.Close()
	}))
	defer srv.Close()
	got, err := snapshotStateSize(context.Background(), srv.Client(), &vaultproc.Dev{Addr: srv.URL, Token: "root"})
	if err != nil || got != 13033 {
		t.Fatalf("snapshotStateSize = %d, %v; want 13033", got, err)
	}
	if _, err := snapshotStateSize(context.Background(), srv.Client(), &vaultproc.Dev{Addr: srv.URL, Token: "other"}); err == nil {
		t.Error("snapshotStateSize with a refused token: no error")
	}
}

// TestDirSize: every regular file below the directory counts, subdirectories included.
func TestDirSize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "raft", "snapshots"), 0o700); err != nil {
		t.Fatal(err)
	}
	for path, n := range map[string]int{"vault.db": 5000, "raft/raft.db": 3000, "raft/snapshots/x": 7} {
		if err := os.WriteFile(filepath.Join(dir, path), make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	size, alloc, err := dirSize(dir)
	if err != nil || size != 8007 {
		t.Fatalf("dirSize = %d, %d, %v; want a size of 8007", size, alloc, err)
	}
	if alloc <= 0 {
		t.Errorf("allocated %d bytes, want some", alloc)
	}
}
