package cyberark

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// unknownFields answers a 400 naming any request field the path does not define: a
// typo such as "client_secert" must not be silently ignored and leave the old secret.
func unknownFields(req *logical.Request, d *framework.FieldData) *logical.Response {
	var unknown []string
	for k := range req.Data {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	allowed := make([]string, 0, len(d.Schema))
	for k := range d.Schema {
		allowed = append(allowed, k)
	}
	sort.Strings(allowed)
	return logical.ErrorResponse("unknown field(s) %s; this path takes: %s",
		strings.Join(unknown, ", "), strings.Join(allowed, ", "))
}

// fieldErrors collects problems with named fields, so one response can list them all.
type fieldErrors []string

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, field+": "+fmt.Sprintf(format, args...))
}

func (f fieldErrors) response() *logical.Response {
	if len(f) == 0 {
		return nil
	}
	return logical.ErrorResponse(strings.Join(f, "; "))
}

// checkEndpointURL accepts an absolute https URL, or http for a loopback host (local
// development with the emulator). Credentials in the URL would be logged by anything that
// prints it, and a fragment means nothing to a server, so both are refused.
func checkEndpointURL(raw string, allowQuery bool) (*url.URL, error) {
	if strings.TrimSpace(raw) != raw || raw == "" {
		return nil, errors.New("must be an absolute URL such as https://example.id.cyberark.cloud, without surrounding spaces")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("is not a valid URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("must be an absolute URL with a host, such as https://example.id.cyberark.cloud")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, errors.New("must use https (http is allowed only for loopback hosts: 127.0.0.0/8, ::1, localhost)")
		}
	default:
		return nil, fmt.Errorf("has scheme %q; only https is allowed (http for loopback hosts)", u.Scheme)
	}
	if u.User != nil {
		return nil, errors.New("must not contain user information (user:password@); credentials go in client_id and client_secret")
	}
	if (u.RawQuery != "" || u.ForceQuery) && !allowQuery {
		return nil, errors.New("must not contain a query string")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return nil, errors.New("must not contain a fragment (#...)")
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkAppID keeps application IDs to what can stand as one URL path segment.
func checkAppID(id string) error {
	if id == "" {
		return errors.New("must not be empty")
	}
	if len(id) > 256 {
		return errors.New("must be at most 256 characters")
	}
	for _, r := range id {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`/\?#%`, r) {
			return fmt.Errorf("must be the application ID of the OAuth2 client app, without spaces, control characters or any of / \\ ? # %%; got %q", id)
		}
	}
	return nil
}

// checkScopes applies RFC 6749 3.3: a scope token is printable ASCII without space,
// double quote or backslash.
func checkScopes(scopes []string) error {
	for _, s := range scopes {
		if s == "" {
			return errors.New("must not contain an empty scope")
		}
		for _, r := range s {
			if r < 0x21 || r > 0x7e || r == '"' || r == '\\' {
				return fmt.Errorf("scope %q is not a valid OAuth2 scope token (printable ASCII without spaces, \" or \\)", s)
			}
		}
	}
	return nil
}

// splitScopes accepts a list, a comma-separated string or a space-separated string (the
// OAuth form), drops empties and duplicates, and keeps the order given.
func splitScopes(in []string) []string {
	out := make([]string, 0, len(in))
	for _, item := range in {
		for _, s := range strings.FieldsFunc(item, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// checkCABundle requires at least one PEM certificate that parses.
func checkCABundle(bundle string) error {
	rest := []byte(bundle)
	found := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a PEM block of type %q; only CERTIFICATE blocks are allowed", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return errors.New("holds a CERTIFICATE block that does not parse")
		}
		found++
	}
	if found == 0 {
		return errors.New("must be a PEM bundle with at least one CERTIFICATE block")
	}
	return nil
}
