package cyberark

import (
	"context"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// blockingStorage reads key at the first Get of it, then holds the answer until release
// is closed, so a test can land a write while a reader is between its storage read and
// what it does with it.
type blockingStorage struct {
	logical.Storage
	key     string
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *blockingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	entry, err := s.Storage.Get(ctx, key)
	if key == s.key {
		s.once.Do(func() {
			close(s.reached)
			<-s.release
		})
	}
	return entry, err
}

// TestViewNeverFillsFromBeforeAWrite: a reader that read the config from storage before
// a write, and reaches the cache after it, must not put the old config in the cache or
// be served with it; it starts over and sees the new one.
func TestViewNeverFillsFromBeforeAWrite(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.b.cache.resetClient(defaultClient) // the next view reads storage

	slow := &blockingStorage{Storage: e.storage, key: configPath, reached: make(chan struct{}), release: make(chan struct{})}
	type result struct {
		v   *view
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := e.b.cache.view(t.Context(), slow, "", "", "")
		done <- result{v, err}
	}()
	<-slow.reached
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"scopes": "write", "verify_connection": false})
	close(slow.release)

	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.v.config.Scopes) != 1 || r.v.config.Scopes[0] != "write" {
		t.Errorf("the reader was served the config from before the write (scopes %v)", r.v.config.Scopes)
	}
	v, err := e.b.cache.view(t.Context(), e.storage, "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(v.config.Scopes) != 1 || v.config.Scopes[0] != "write" {
		t.Errorf("the cache holds the config from before the write (scopes %v)", v.config.Scopes)
	}
}

// TestViewIsConsistentUnderWrites: views taken while config and role writes race them
// are complete and, while their generation is current, are what the cache holds; the
// race detector watches the cache's locking.
func TestViewIsConsistentUnderWrites(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/r", map[string]any{"scopes": "read"})
	ctx := t.Context()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				v, err := e.b.cache.view(ctx, e.storage, "", "r", "")
				if err != nil {
					t.Error(err)
					return
				}
				if v.config == nil || v.role == nil || v.client == nil {
					t.Error("incomplete view")
					return
				}
				// While the view's generation is current, the cache holds exactly
				// the view's config and client: nothing from another generation.
				c := e.b.cache
				c.mu.RLock()
				mixed := c.gen == v.gen && (c.configs[v.name] != v.config || c.clients[clientKey(v.name, v.appID(""))] != v.client || c.roles["r"] != v.role)
				c.mu.RUnlock()
				if mixed {
					t.Error("a view of the current generation differs from the cache")
					return
				}
			}
		}()
	}
	for i := range 20 {
		scopes := []string{"read", "write"}[i%2]
		e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"scopes": scopes, "verify_connection": false})
		e.mustRequest(t, logical.UpdateOperation, "roles/r", map[string]any{"ttl": i})
		e.b.Invalidate(ctx, "roles/r")
	}
	close(stop)
	wg.Wait()
}
