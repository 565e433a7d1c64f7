// Command trivial is a trivial secrets engine for the benchmark (internal/bench): the
// floor that any read served by an external plugin built with the same SDK costs in
// Vault, with no tenant, storage or cache behind it. It answers:
//
//   - plain: a constant, without a lease;
//   - small: a constant in a one-hour lease with a few bytes of internal data;
//   - jwt: a lease of the shape of the engine's token read: a JWT-sized token, with
//     its type, lifetime and scope, in the data, and in the internal data as well, as
//     the engine stores it for revocation.
//
// shape (write, token_len) sets the length of the jwt path's token, so the load
// generator can match the tokens the emulated tenant issues. Not for production.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

// Version is what the plugin reports; the benchmark links in the version it registers.
var Version = "v0.0.1-bench"

const secretType = "bench_token"

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: os.Stderr, JSONFormat: true})
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		logger.Error("invalid plugin flags", "error", err)
		os.Exit(1)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
		Logger:             logger,
	})
	if err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}

type backend struct {
	*framework.Backend
	token atomic.Pointer[string]
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := &backend{}
	b.setToken(1100)
	read := func(cb framework.OperationFunc) map[logical.Operation]framework.OperationHandler {
		return map[logical.Operation]framework.OperationHandler{logical.ReadOperation: &framework.PathOperation{Callback: cb}}
	}
	b.Backend = &framework.Backend{
		BackendType:    logical.TypeLogical,
		RunningVersion: Version,
		Secrets: []*framework.Secret{{
			Type: secretType,
			Revoke: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
				return nil, nil
			},
		}},
		Paths: []*framework.Path{
			{Pattern: "plain$", Operations: read(b.plain)},
			{Pattern: "small$", Operations: read(b.small)},
			{Pattern: "jwt$", Operations: read(b.jwt)},
			{
				Pattern: "shape$",
				Fields:  map[string]*framework.FieldSchema{"token_len": {Type: framework.TypeInt}},
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.UpdateOperation: &framework.PathOperation{Callback: b.shape},
				},
			},
		},
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *backend) setToken(n int) {
	raw := make([]byte, n*3/4+3)
	_, _ = rand.Read(raw)
	tok := base64.RawURLEncoding.EncodeToString(raw)[:n]
	b.token.Store(&tok)
}

func (b *backend) plain(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	return &logical.Response{Data: map[string]any{"value": "bench"}}, nil
}

func (b *backend) small(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	resp := b.Secret(secretType).Response(map[string]any{"value": "bench"}, map[string]any{"k": "v"})
	resp.Secret.TTL = time.Hour
	return resp, nil
}

func (b *backend) jwt(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	tok := *b.token.Load()
	expiry := time.Now().Add(time.Hour)
	resp := b.Secret(secretType).Response(map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int64(3600),
		"expires_at":   expiry.UTC().Format(time.RFC3339),
		"scope":        "read",
	}, map[string]any{
		"role":            "bench",
		"app_id":          "bench-app",
		"client_id":       "svc-bench@bench.example",
		"expires_at":      expiry.Unix(),
		"shared":          false,
		"revoke":          true,
		"access_token":    tok,
		"revoke_endpoint": "https://tenant.example/oauth2/revoke/bench-app",
	})
	resp.Secret.TTL = time.Hour - time.Minute
	resp.Secret.MaxTTL = resp.Secret.TTL
	return resp, nil
}

func (b *backend) shape(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	n := d.Get("token_len").(int)
	if n < 16 || n > 1<<16 {
		return logical.ErrorResponse("token_len: must be between 16 and 65536, got %d", n), nil
	}
	b.setToken(n)
	return nil, nil
}
