//go:build unix

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"testing"
)

// openapiOp is one operation the engine must publish in Vault's OpenAPI document.
type openapiOp struct {
	path, method string
	// response is what a real call returned; its data's fields must all be declared.
	response map[string]any
}

// TestOpenAPI reads Vault's OpenAPI document (sys/internal/specs/openapi) with the
// engine mounted and checks what generated clients, the UI and "vault path-help" rely
// on: every path and operation of the engine is there and described, with an operation
// ID, a summary, declared responses whose fields cover what a real call returns, every
// request field described, no field required that a partial update may leave out, and
// secrets marked sensitive.
func TestOpenAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3600)
	e.configure()
	e.writeRole("full", map[string]any{
		"scopes": "read", "allowed_scopes": "read,write", "app_id": otherAppID, "ttl": "10m",
		"token_reuse": true, "reuse_min_remaining": "1m", "reuse_min_fraction": 0.2, "lease_free": true,
	})
	data := func(path string) map[string]any {
		t.Helper()
		s, err := e.client.Logical().ReadWithContext(e.ctx, mountPath+"/"+path)
		if err != nil || s == nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		return s.Data
	}
	// A second client of the same user, so that clients/<name> reads answer with data;
	// written before the rotation changes the user's password.
	second := e.tenant.configData()
	second["allowed_roles"] = "full"
	if _, err := e.client.Logical().WriteWithContext(e.ctx, mountPath+"/clients/second", second); err != nil {
		t.Fatalf("writing clients/second: %v", err)
	}
	rotated, err := e.rotateRoot(e.ctx)
	if err != nil || rotated == nil {
		t.Fatalf("rotate-root: %v", err)
	}
	list, err := e.client.Logical().ListWithContext(e.ctx, mountPath+"/roles")
	if err != nil || list == nil {
		t.Fatalf("listing roles: %v", err)
	}
	clients, err := e.client.Logical().ListWithContext(e.ctx, mountPath+"/clients")
	if err != nil || clients == nil {
		t.Fatalf("listing clients: %v", err)
	}
	ops := []openapiOp{
		{"/config", "get", data("config")},
		{"/config", "post", nil},
		{"/config", "delete", nil},
		{"/config/rotate-root", "post", rotated.Data},
		{"/roles/", "get", list.Data},
		{"/clients/", "get", clients.Data},
		{"/clients/{name}", "get", data("clients/second")},
		{"/clients/{name}", "post", nil},
		{"/clients/{name}", "delete", nil},
		{"/clients/{name}/rotate-root", "post", nil},
		{"/roles/{name}", "get", data("roles/full")},
		{"/roles/{name}", "post", nil},
		{"/roles/{name}", "delete", nil},
		{"/token", "get", data("token")},
		{"/token/{role}", "get", data("token/full")},
		// Its body is the Prometheus text format, not data fields.
		{"/metrics", "get", nil},
		{"/tokens/lookup", "post", nil},
		{"/tokens/revoke", "post", nil},
		{"/tokens/revoke-all", "post", nil},
		{"/tokens/unfreeze", "post", nil},
	}

	raw, err := e.client.Logical().ReadRawWithContext(e.ctx, "sys/internal/specs/openapi")
	if err != nil {
		t.Fatalf("reading the OpenAPI document: %v", err)
	}
	body, err := io.ReadAll(raw.Body)
	raw.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]openapiSchema `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("decoding the OpenAPI document: %v", err)
	}

	// Every operation published under the mount is one the test knows of, so that a
	// new path or operation cannot go undescribed.
	prefix := "/" + mountPath
	var published []string
	for p, item := range doc.Paths {
		if !strings.HasPrefix(p, prefix+"/") {
			continue
		}
		for m := range item {
			if m == "get" || m == "post" || m == "delete" || m == "put" || m == "patch" {
				published = append(published, m+" "+strings.TrimPrefix(p, prefix))
			}
		}
	}
	var known []string
	for _, op := range ops {
		known = append(known, op.method+" "+op.path)
	}
	sort.Strings(published)
	sort.Strings(known)
	if !slices.Equal(published, known) {
		t.Errorf("operations published under %s/:\n  %v\nwant:\n  %v", mountPath, published, known)
	}

	ids := map[string]string{}
	for _, op := range ops {
		where := op.method + " " + prefix + op.path
		item, ok := doc.Paths[prefix+op.path]
		if !ok {
			t.Errorf("%s: the path is not in the document", where)
			continue
		}
		var desc string
		_ = json.Unmarshal(item["description"], &desc) // absent or not a string: left empty, and reported
		if strings.TrimSpace(desc) == "" {
			t.Errorf("%s: the path has no description", prefix+op.path)
		}
		var pathParams []openapiParam
		_ = json.Unmarshal(item["parameters"], &pathParams)
		for _, p := range pathParams {
			if strings.TrimSpace(p.Description) == "" || !p.Required {
				t.Errorf("%s: path parameter %s: description %q, required %t", where, p.Name, p.Description, p.Required)
			}
		}
		var o openapiOperation
		if err := json.Unmarshal(item[op.method], &o); err != nil || item[op.method] == nil {
			t.Errorf("%s: the operation is not in the document (%v)", where, err)
			continue
		}
		switch {
		case o.OperationID == "":
			t.Errorf("%s: no operationId", where)
		case ids[o.OperationID] != "":
			t.Errorf("%s: operationId %s is also %s's", where, o.OperationID, ids[o.OperationID])
		}
		ids[o.OperationID] = where
		if strings.TrimSpace(o.Summary) == "" {
			t.Errorf("%s: no summary", where)
		}
		for _, p := range o.Parameters {
			if strings.TrimSpace(p.Description) == "" {
				t.Errorf("%s: parameter %s has no description", where, p.Name)
			}
		}
		if o.RequestBody != nil {
			name := schemaName(o.OperationID, "Request")
			req, ok := doc.Components.Schemas[name]
			if !ok {
				t.Errorf("%s: no request schema %s", where, name)
			}
			for f, s := range req.Properties {
				if strings.TrimSpace(s.Description) == "" {
					t.Errorf("%s: request field %s has no description", where, f)
				}
			}
			// Every write of config and roles is a partial update: a field left out
			// keeps its value, so none may be required of every write.
			if len(req.Required) > 0 {
				t.Errorf("%s: request fields %v are marked required, yet an update may leave them out", where, req.Required)
			}
			if s, ok := req.Properties["client_secret"]; ok && !s.DisplayAttrs.Sensitive {
				t.Errorf("%s: client_secret is not marked sensitive", where)
			}
		}

		if len(o.Responses) == 0 {
			t.Errorf("%s: no responses", where)
		}
		for code, r := range o.Responses {
			// "OK" and "empty body" are what Vault writes for an operation that declares
			// none.
			if d := strings.TrimSpace(r.Description); d == "" || d == "OK" || d == "empty body" {
				t.Errorf("%s: response %s is not described (%q)", where, code, r.Description)
			}
		}
		if op.response == nil {
			continue
		}
		if _, ok := o.Responses["200"]; !ok {
			t.Errorf("%s: returns data, but declares no 200 response", where)
			continue
		}
		name := schemaName(o.OperationID, "Response")
		resp, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("%s: no response schema %s", where, name)
			continue
		}
		for f := range op.response {
			s, ok := resp.Properties[f]
			switch {
			case !ok:
				t.Errorf("%s: the response field %s that a real call returned is not declared", where, f)
			case strings.TrimSpace(s.Description) == "":
				t.Errorf("%s: response field %s has no description", where, f)
			}
		}
		for f, s := range resp.Properties {
			if strings.Contains(f, "access_token") && !s.DisplayAttrs.Sensitive {
				t.Errorf("%s: response field %s is not marked sensitive", where, f)
			}
		}
	}
	t.Logf("OpenAPI: %d operations under %s/ checked, %d schemas in the document", len(ops), mountPath, len(doc.Components.Schemas))
}

type openapiParam struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Required    bool   `json:"required"`
}

type openapiOperation struct {
	OperationID string          `json:"operationId"`
	Summary     string          `json:"summary"`
	Parameters  []openapiParam  `json:"parameters"`
	RequestBody json.RawMessage `json:"requestBody"`
	Responses   map[string]struct {
		Description string `json:"description"`
	} `json:"responses"`
}

type openapiSchema struct {
	Required   []string `json:"required"`
	Properties map[string]struct {
		Description  string `json:"description"`
		DisplayAttrs struct {
			Sensitive bool `json:"sensitive"`
		} `json:"x-vault-displayAttrs"`
	} `json:"properties"`
}

// schemaName is the name Vault gives an operation's request or response schema: its
// operationId in PascalCase, then kind.
func schemaName(operationID, kind string) string {
	var b strings.Builder
	for _, w := range strings.Split(operationID, "-") {
		if w != "" {
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return fmt.Sprint(b.String(), kind)
}
