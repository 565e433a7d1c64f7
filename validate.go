package cyberark

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Limits on what a writer may store. Each is far above any real value and far below
// what would make a stored entry, a log line or a request to the tenant unwieldy.
const (
	maxURLLength          = 2048
	maxAppIDLength        = 256
	maxClientIDLength     = 256
	maxClientSecretLength = 1024
	maxScopes             = 64
	maxScopeLength        = 256
	maxCACertBytes        = 256 << 10
	maxRoleNameLength     = 128
)

// roleNamePattern is the one spelling a role name may have. Vault policies match paths
// exactly, so a name with two spellings (token/admin, token/ADMIN) could escape a policy
// written for one of them; names are refused, never folded, when they are not in this
// form.
var roleNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,` + strconv.Itoa(maxRoleNameLength-2) + `}[a-z0-9])?$`)

// checkRoleName accepts a role name only in its canonical form.
func checkRoleName(name string) error {
	if roleNamePattern.MatchString(name) {
		return nil
	}
	return fmt.Errorf("%s is not a role name in canonical form: use lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most %d characters; names are never folded to lower case, so that a Vault policy on one spelling cannot be escaped with another",
		quoteShort(name), maxRoleNameLength)
}

// quoteShort quotes a value a request supplied for an error message, cut to 64
// characters: an error must not grow with the input.
func quoteShort(s string) string {
	if utf8.RuneCountInString(s) > 64 {
		return strconv.Quote(string([]rune(s)[:64])) + "..."
	}
	return strconv.Quote(s)
}

// unsafeRune reports characters that have no place in an identifier or a password:
// C0 and C1 controls, format characters (zero-width and bidirectional controls such as
// U+200B and U+202E, which make a value look other than it is), other characters that
// render as nothing (U+034F, U+115F, U+3164, variation selectors), spaces other than
// U+0020 (a no-break space looks like one), line and paragraph separators, private-use
// and surrogate code points, and U+FFFD, which is what bytes that were not UTF-8 become.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || r == utf8.RuneError ||
		unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs,
			unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector) ||
		unicode.Is(unicode.Zs, r) && r != ' '
}

// checkText bounds the length of an identifier or secret and refuses unsafe characters.
// The message names the code point and its position, never the value, which may be a
// secret.
func checkText(v string, maxLen int) error {
	if n := utf8.RuneCountInString(v); n > maxLen {
		return fmt.Errorf("must be at most %d characters, got %d", maxLen, n)
	}
	if i := strings.IndexFunc(v, unsafeRune); i >= 0 {
		r, _ := utf8.DecodeRuneInString(v[i:])
		return fmt.Errorf("must not contain control, invisible or bidirectional formatting characters (U+%04X at byte %d)", r, i)
	}
	return nil
}

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
	// A request may carry any number of names of any length: quote a bounded sample.
	if len(unknown) > 10 {
		unknown = append(unknown[:10], fmt.Sprintf("and %d more", len(unknown)-10))
	}
	for i, name := range unknown {
		unknown[i] = quoteShort(name)
	}
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
	if len(raw) > maxURLLength {
		return nil, fmt.Errorf("must be at most %d characters, got %d", maxURLLength, len(raw))
	}
	if strings.ContainsFunc(raw, func(r rune) bool { return unsafeRune(r) || unicode.IsSpace(r) }) {
		return nil, errors.New("must not contain white space, control or invisible characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("is not a valid URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("must be an absolute URL with a host, such as https://example.id.cyberark.cloud")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("has port %q; a port must be between 1 and 65535", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, errors.New("has an empty port; leave out the colon or give a port between 1 and 65535")
	}
	for _, seg := range strings.Split(u.EscapedPath(), "/") {
		if seg == "." || seg == ".." || strings.EqualFold(seg, "%2e") || strings.EqualFold(seg, "%2e%2e") ||
			strings.EqualFold(seg, ".%2e") || strings.EqualFold(seg, "%2e.") {
			return nil, errors.New("must not contain dot segments (/./ or /../) in its path")
		}
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
	if err := checkText(id, maxAppIDLength); err != nil {
		return err
	}
	if id == "." || id == ".." {
		return errors.New(`must not be "." or "..", which a URL path resolves away`)
	}
	for _, r := range id {
		if unicode.IsSpace(r) || strings.ContainsRune(`/\?#%`, r) {
			return fmt.Errorf("must be the application ID of the OAuth2 client app, without white space or any of / \\ ? # %%; got %q", id)
		}
	}
	return nil
}

// checkScopes applies RFC 6749 3.3: a scope token is printable ASCII without space,
// double quote or backslash.
func checkScopes(scopes []string) error {
	if len(scopes) > maxScopes {
		return fmt.Errorf("must list at most %d scopes, got %d", maxScopes, len(scopes))
	}
	for _, s := range scopes {
		if s == "" {
			return errors.New("must not contain an empty scope")
		}
		if len(s) > maxScopeLength {
			return fmt.Errorf("scopes must be at most %d characters each, got one of %d", maxScopeLength, len(s))
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
