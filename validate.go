package cyberark

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-secure-stdlib/parseutil"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
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
	// maxRotationScheduleLength and maxPolicyNameLength bound rotation_schedule, and
	// password_policy and rotation_policy.
	maxRotationScheduleLength = 256
	maxPolicyNameLength       = 128
	maxTokenParams            = 16
	maxTokenParamNameLength   = 64
	maxTokenParamValueLength  = 2048
)

// tokenParamsOwned are the grant's parameters that the engine sets itself, or that carry
// a credential or turn the grant into another kind: token_params may not set them. scope
// is among them so that the scope checks see every scope a grant asks for.
var tokenParamsOwned = []string{
	"grant_type", "client_id", "client_secret", "scope", "client_assertion", "client_assertion_type",
	"username", "password", "refresh_token", "code", "code_verifier", "redirect_uri", "assertion",
	"subject_token", "actor_token", "device_code",
}

// tokenParamName is the spelling of a parameter name: what form encoding carries without
// surprises and a log shows as it is.
var tokenParamName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,` + strconv.Itoa(maxTokenParamNameLength) + `}$`)

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
// A field the URL path sets (a role's name) may not be given in the body with another
// value either: the framework would silently take the path's.
func unknownFields(req *logical.Request, d *framework.FieldData) *logical.Response {
	var unknown []string
	var fromPath fieldErrors
	for k, v := range req.Data {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
			continue
		}
		// Captures are the only strings in d.Raw that are not the body's own value.
		if inPath, ok := d.Raw[k].(string); ok {
			if inBody, ok := v.(string); !ok || inBody != inPath {
				fromPath.add(k, "is set by the request path (%s) and must not be given in the body with another value", quoteShort(inPath))
			}
		}
	}
	if len(unknown) == 0 {
		sort.Strings(fromPath)
		return fromPath.response()
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
	takes := "this path takes: " + strings.Join(allowed, ", ")
	if len(allowed) == 0 {
		takes = "this path takes no fields"
	}
	return logical.ErrorResponse("unknown field(s) %s; %s", strings.Join(unknown, ", "), takes)
}

// checkFieldTypes answers a 400 for request fields whose values the path's schema cannot
// convert, in words that never quote the value. The framework's own message ("Field
// validation failed: ... value: '[...]'") quotes it whole, and the value may be a client
// secret sent as a list, or a megabyte long. It must run before the framework's
// HandleRequest and HandleExistenceCheck, which refuse such a field first.
func checkFieldTypes(schema map[string]*framework.FieldSchema, data map[string]any) *logical.Response {
	var problems fieldErrors
	for k, v := range data {
		s, ok := schema[k]
		if !ok {
			continue // unknownFields names these
		}
		one := framework.FieldData{Raw: map[string]any{k: v}, Schema: map[string]*framework.FieldSchema{k: s}}
		if _, _, err := one.GetOkErr(k); err != nil {
			problems.add(k, "%s", typeWords(s.Type))
		}
	}
	sort.Strings(problems)
	return problems.response()
}

// typeWords says what a field of type t takes.
func typeWords(t framework.FieldType) string {
	switch t {
	case framework.TypeString:
		return "must be a string"
	case framework.TypeBool:
		return "must be true or false"
	case framework.TypeInt, framework.TypeInt64:
		return "must be a whole number"
	case framework.TypeFloat:
		return "must be a number"
	case framework.TypeDurationSecond:
		return "must be a duration that is not negative: a whole number of seconds, or a string such as 90s, 10m or 1h"
	case framework.TypeCommaStringSlice, framework.TypeStringSlice:
		return "must be a list of strings or a comma-separated string"
	default:
		return "has a value of the wrong type"
	}
}

// fieldErrors collects problems with named fields, so one response can list them all.
type fieldErrors []string

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, field+": "+fmt.Sprintf(format, args...))
}

// short writes a duration as an operator would: 1h, 30m, 1m30s, not 1h0m0s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	return strings.TrimSuffix(s, "0m")
}

// check adds field's problem when err is one, and reports whether there was none.
func (f *fieldErrors) check(field string, err error) bool {
	if err != nil {
		f.add(field, "%s", err)
	}
	return err == nil
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
func checkEndpointURL(raw string, allowQuery bool) error {
	if strings.TrimSpace(raw) != raw || raw == "" {
		return errors.New("must be an absolute URL such as https://example.id.cyberark.cloud, without surrounding spaces")
	}
	if len(raw) > maxURLLength {
		return fmt.Errorf("must be at most %d characters, got %d", maxURLLength, len(raw))
	}
	if strings.ContainsFunc(raw, func(r rune) bool { return unsafeRune(r) || unicode.IsSpace(r) }) {
		return errors.New("must not contain white space, control or invisible characters")
	}
	if strings.ContainsRune(raw, '\\') {
		// Go's parser and browsers' disagree on what a backslash means in a URL.
		return errors.New(`must not contain a backslash`)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("must be an absolute URL with a host, such as https://example.id.cyberark.cloud")
	}
	if err := checkHost(u.Hostname()); err != nil {
		return err
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("has port %q; a port must be between 1 and 65535", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return errors.New("has an empty port; leave out the colon or give a port between 1 and 65535")
	}
	for _, seg := range strings.Split(u.EscapedPath(), "/") {
		if seg == "." || seg == ".." || strings.EqualFold(seg, "%2e") || strings.EqualFold(seg, "%2e%2e") ||
			strings.EqualFold(seg, ".%2e") || strings.EqualFold(seg, "%2e.") {
			return errors.New("must not contain dot segments (/./ or /../) in its path")
		}
		// A server that decodes %2F before it splits the path sees other segments,
		// dot segments among them, than this check does.
		if lower := strings.ToLower(seg); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
			return errors.New("must not contain an encoded slash or backslash (%2F, %5C) in its path")
		}
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return errors.New("must use https (http is allowed only for loopback hosts: 127.0.0.0/8, ::1, localhost)")
		}
	default:
		return fmt.Errorf("has scheme %q; only https is allowed (http for loopback hosts)", u.Scheme)
	}
	if u.User != nil {
		return errors.New("must not contain user information (user:password@); credentials go in client_id and client_secret")
	}
	if (u.RawQuery != "" || u.ForceQuery) && !allowQuery {
		return errors.New("must not contain a query string")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return errors.New("must not contain a fragment (#...)")
	}
	return nil
}

// isLoopback accepts the spellings the http exception names: localhost, an IPv4
// address in 127.0.0.0/8, and ::1. An IPv4 address in IPv6 form (::ffff:127.0.0.1)
// reaches the same host but is not one of them.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return false
	}
	return strings.Contains(host, ":") == (ip.To4() == nil)
}

// checkHost accepts an IP address, or a DNS name in ASCII: letters, digits, '-', '_' and
// dots between non-empty labels. A name in another script can look like a familiar one
// (a Cyrillic "а" in cyberаrk), so it is taken only in its xn-- form; an IPv6 zone
// (fe80::1%eth0) names an interface of whichever host reads the config.
func checkHost(host string) error {
	if strings.Contains(host, "%") {
		return errors.New("must not name an IPv6 zone (%25...)")
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 {
			return errors.New("must have a host name whose labels are 1 to 63 characters long")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("must have a host that is an IP address or a DNS name of ASCII letters, digits, '-' and '_' (an internationalised name in its xn-- form); it holds %+q (U+%04X)", r, r)
			}
		}
	}
	return nil
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

// checkTokenParams checks extra parameters of the grant, such as RFC 8707's resource
// or an audience. A resource must be an absolute URI without a fragment (RFC 8707 2).
func checkTokenParams(params map[string]string) error {
	if len(params) > maxTokenParams {
		return fmt.Errorf("must have at most %d parameters, got %d", maxTokenParams, len(params))
	}
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := params[name]
		switch {
		case !tokenParamName.MatchString(name):
			return fmt.Errorf("parameter names are 1 to %d ASCII letters, digits, '_', '.' or '-', got %s", maxTokenParamNameLength, quoteShort(name))
		case slices.Contains(tokenParamsOwned, strings.ToLower(name)):
			return fmt.Errorf("must not set %s: the engine sets the grant's own parameters, credentials never go in token_params, and scopes go in scopes", name)
		case value == "":
			return fmt.Errorf("parameter %s must not be empty", name)
		}
		if err := checkText(value, maxTokenParamValueLength); err != nil {
			return fmt.Errorf("parameter %s %w", name, err)
		}
		if name == "resource" {
			if u, err := url.Parse(value); err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(value, "#") {
				return errors.New("parameter resource must be an absolute URI without a fragment (RFC 8707), such as https://api.example.com")
			}
		}
	}
	return nil
}

// checkScopes applies RFC 6749 3.3: a scope token is printable ASCII without space,
// double quote or backslash. It also refuses an empty element and a scope listed twice:
// "read,,write" or "read,read" is more likely a scope lost to a typo than a list meant
// that way.
func checkScopes(scopes []string) error {
	if len(scopes) > maxScopes {
		return fmt.Errorf("must list at most %d scopes, got %d", maxScopes, len(scopes))
	}
	for i, s := range scopes {
		if s == "" {
			return errors.New("must not contain an empty scope (two commas in a row, or one at an end)")
		}
		if len(s) > maxScopeLength {
			return fmt.Errorf("scopes must be at most %d characters each, got one of %d", maxScopeLength, len(s))
		}
		for _, r := range s {
			if r < 0x21 || r > 0x7e || r == '"' || r == '\\' {
				return fmt.Errorf("scope %s is not a valid OAuth2 scope token (printable ASCII without spaces, \" or \\)", quoteShort(s))
			}
		}
		if slices.Contains(scopes[:i], s) {
			return fmt.Errorf("lists scope %q more than once", s)
		}
	}
	return nil
}

// splitScopes accepts a list, a comma-separated string or a space-separated string (the
// OAuth form), and keeps the order given. An element that is empty or only spaces stays
// in as "", and a repeated scope stays in, so that checkScopes refuses them.
func splitScopes(in []string) []string {
	out := make([]string, 0, len(in))
	for _, item := range in {
		for _, piece := range strings.Split(item, ",") {
			fields := strings.FieldsFunc(piece, func(r rune) bool { return r == ' ' })
			if len(fields) == 0 {
				fields = []string{""}
			}
			out = append(out, fields...)
		}
	}
	return out
}

// checkCABundle requires at least one PEM certificate that parses. Text between blocks
// is allowed (bundles often name each certificate), but not unsafe characters anywhere.
func checkCABundle(bundle string) error {
	if i := strings.IndexFunc(bundle, func(r rune) bool { return unsafeRune(r) && r != '\n' && r != '\r' && r != '\t' }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(bundle[i:])
		return fmt.Errorf("must not contain control, invisible or bidirectional formatting characters (U+%04X at byte %d)", r, i)
	}
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

// checkRotationSchedule refuses a rotation_schedule that holds unsafe characters, is
// not a five-field cron expression, or never fires (the 30th of February): each would be
// stored as a schedule that rotates nothing. Its message is bounded: the cron parser's
// own quotes every field it was given.
func checkRotationSchedule(spec string, now time.Time) error {
	if err := checkText(spec, maxRotationScheduleLength); err != nil {
		return err
	}
	// The SDK's parser takes a time zone prefix and then runs the schedule in UTC all
	// the same ("TZ=UTC" alone makes it panic).
	if lead := strings.TrimLeft(spec, " "); hasPrefixFold(lead, "TZ=") || hasPrefixFold(lead, "CRON_TZ=") {
		return errors.New(`time zone prefixes (TZ=, CRON_TZ=) are not supported: the schedule runs in UTC; give five fields (minute hour day-of-month month day-of-week) in UTC, e.g. "0 1 * * *" for 10:00 in Asia/Tokyo (UTC+9)`)
	}
	sched, err := rotation.DefaultScheduler.Parse(spec)
	if err != nil {
		return fmt.Errorf("is not a cron schedule of five fields (minute hour day-of-month month day-of-week): %s", quoteShort(err.Error()))
	}
	if sched.Next(now).IsZero() {
		return fmt.Errorf("%s never fires: no date matches it", quoteShort(spec))
	}
	return nil
}

// hasPrefixFold is strings.HasPrefix without regard to ASCII case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// lostToTruncation reports a duration field's raw value that is not zero but that the
// framework, which keeps whole seconds only, turns into 0: "300ms", "-0.5s", 0.5. It
// returns the value as a duration to show. A value that does not parse is left to
// checkFieldTypes, and one of a second or more to cfg.validate.
func lostToTruncation(raw any) (string, bool) {
	switch v := raw.(type) {
	case nil:
		return "", false
	case float64:
		return floatSeconds(v)
	case float32:
		return floatSeconds(float64(v))
	}
	dur, err := parseutil.ParseDurationSecond(raw)
	if err != nil || dur == 0 || int(dur.Seconds()) != 0 {
		return "", false
	}
	return dur.String(), true
}

// floatSeconds is lostToTruncation for a number of seconds that may have a fraction,
// which the framework truncates to whole seconds before it multiplies.
func floatSeconds(v float64) (string, bool) {
	if v == 0 || math.IsNaN(v) || math.Abs(v) >= 1 {
		return "", false
	}
	return strconv.FormatFloat(v, 'g', -1, 64) + "s", true
}

// copyGiven copies each field a request gave into its destination: a list is a list of
// scopes (splitScopes), a duration is whole seconds, a *bool field stays nil until given.
// A write's handler copies with it and then validates the result in one place.
func copyGiven(d *framework.FieldData, dst map[string]any) {
	for field, p := range dst {
		v, ok := d.GetOk(field)
		if !ok {
			continue
		}
		switch p := p.(type) {
		case *string:
			*p = v.(string)
		case *[]string:
			*p = splitScopes(v.([]string))
		case *int:
			*p = v.(int)
		case *time.Duration:
			*p = time.Duration(v.(int)) * time.Second
		case *bool:
			*p = v.(bool)
		case **bool:
			b := v.(bool)
			*p = &b
		case *float64:
			*p = v.(float64)
		case *map[string]string:
			*p = v.(map[string]string)
		default:
			panic(fmt.Sprintf("copyGiven: field %s has a destination of type %T", field, p))
		}
	}
}
