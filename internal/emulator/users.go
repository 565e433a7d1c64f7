package emulator

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// DefaultPasswordHistory is how many recent passwords, the current one included, a new
// password may not repeat when Config.PasswordHistory is 0.
const DefaultPasswordHistory = 3

// PasswordPolicy is the rule set a new password must meet. In a Config, zero fields mean
// no such rule: a non-nil policy replaces DefaultPasswordPolicy() as a whole.
type PasswordPolicy struct {
	// MinLength and MaxLength bound the length in characters (Unicode code points);
	// MaxLength 0 means no upper bound.
	MinLength int `json:"min_length"`
	MaxLength int `json:"max_length"`
	// RequireDigit, RequireUpper and RequireLower each ask for at least one character
	// of that class.
	RequireDigit bool `json:"require_digit"`
	RequireUpper bool `json:"require_upper"`
	RequireLower bool `json:"require_lower"`
}

// DefaultPasswordPolicy returns CyberArk Identity's documented default: 8 to 64
// characters with at least one digit, one upper-case and one lower-case letter. It is a
// function so that no test can change the default under another one running in parallel.
func DefaultPasswordPolicy() PasswordPolicy {
	return PasswordPolicy{MinLength: 8, MaxLength: 64, RequireDigit: true, RequireUpper: true, RequireLower: true}
}

func (p PasswordPolicy) validate() error {
	if p.MinLength < 0 || p.MaxLength < 0 {
		return fmt.Errorf("min_length %d and max_length %d must not be negative", p.MinLength, p.MaxLength)
	}
	if p.MaxLength != 0 && p.MaxLength < p.MinLength {
		return fmt.Errorf("max_length %d is below min_length %d", p.MaxLength, p.MinLength)
	}
	return nil
}

// check returns the first rule the password breaks, as the failure the management APIs
// report, or nil. The failure never quotes the password.
func (p PasswordPolicy) check(password string) *mgmtFailure {
	n := utf8.RuneCountInString(password)
	if n < p.MinLength {
		return failPolicy("PasswordTooShort", fmt.Sprintf("it must be at least %d characters long", p.MinLength))
	}
	if p.MaxLength > 0 && n > p.MaxLength {
		return failPolicy("PasswordTooLong", fmt.Sprintf("it must not be longer than %d characters", p.MaxLength))
	}
	rules := []struct {
		on    bool
		class func(rune) bool
		id    string
		what  string
	}{
		{p.RequireDigit, unicode.IsDigit, "PasswordMissingDigit", "it must contain at least one digit"},
		{p.RequireUpper, unicode.IsUpper, "PasswordMissingUpper", "it must contain at least one upper-case letter"},
		{p.RequireLower, unicode.IsLower, "PasswordMissingLower", "it must contain at least one lower-case letter"},
	}
	for _, r := range rules {
		if r.on && !strings.ContainsFunc(password, r.class) {
			return failPolicy(r.id, r.what)
		}
	}
	return nil
}

// user is a service user of the tenant: one password however many apps list it.
type user struct {
	id    string // login name = client ID
	uuid  string
	admin bool
	// The fields below are guarded by Emulator.mu.
	secret string
	// previous holds earlier passwords, most recent first, as many as the history
	// check can need.
	previous []string
	// epoch counts password changes that invalidated the user's tokens.
	epoch uint64
	// lock is the user's standing under Config.Lockout.
	lock lockState
}

// directory is the tenant's users, shared by all apps. Its maps are written only while
// New builds it; the users' mutable fields sit behind Emulator.mu.
type directory struct {
	byID   map[string]*user // by exact client ID
	byUUID map[string]*user // by lower-cased UUID
}

func newDirectory() *directory {
	return &directory{byID: make(map[string]*user), byUUID: make(map[string]*user)}
}

// add merges one app's entry for a service user into the directory. Entries that
// disagree on the password or the UUID cannot be one user, and picking either would
// hide a mistake in the config. Errors never quote a secret.
func (d *directory) add(cc Client) (*user, error) {
	u := d.byID[cc.ID]
	if u == nil {
		u = &user{id: cc.ID, uuid: cc.UUID, secret: cc.Secret}
		d.byID[cc.ID] = u
	} else {
		if u.secret != cc.Secret {
			return nil, errors.New("secret differs from another app's entry for the same service user, which has one password")
		}
		switch {
		case cc.UUID == "":
		case u.uuid == "":
			u.uuid = cc.UUID
		case !strings.EqualFold(u.uuid, cc.UUID):
			return nil, fmt.Errorf("uuid %q differs from another app's entry for the same service user (%q)", cc.UUID, u.uuid)
		}
	}
	u.admin = u.admin || cc.Admin
	return u, nil
}

// index gives UUIDs to the users without one and indexes them by UUID, which is how
// ResetUserPassword names a user.
func (d *directory) index() error {
	for _, u := range d.byID {
		if u.uuid == "" {
			u.uuid = newUUID()
		}
		key := strings.ToLower(u.uuid)
		if other, dup := d.byUUID[key]; dup {
			return fmt.Errorf("clients %q and %q share uuid %q", other.id, u.id, u.uuid)
		}
		d.byUUID[key] = u
	}
	return nil
}

// recentlyUsed reports whether password is the user's current one or one of those
// before it within the history. Every candidate is compared, in constant time, so the
// answer's timing does not say which one matched. The caller holds e.mu.
func (e *Emulator) recentlyUsed(u *user, password string) bool {
	if e.history == 0 {
		return false
	}
	match := subtle.ConstantTimeCompare([]byte(u.secret), []byte(password))
	for _, old := range u.previous[:min(len(u.previous), e.history-1)] {
		match |= subtle.ConstantTimeCompare([]byte(old), []byte(password))
	}
	return match == 1
}

// setPassword changes a user's password with every effect a change has at the tenant:
// the old one joins the history and, if so configured, the user's tokens die. The caller
// holds e.mu and has done any checks.
func (e *Emulator) setPassword(u *user, password string) {
	if keep := e.history - 1; keep > 0 {
		u.previous = append([]string{u.secret}, u.previous[:min(len(u.previous), keep-1)]...)
	}
	u.secret = password
	if !e.revokeOnChange {
		return
	}
	u.epoch++
	for token, info := range e.tokens {
		if info.clientID == u.id {
			e.revoked[token] = struct{}{}
		}
	}
}

// tokenRevoked reports whether an issued token was revoked at the revoke endpoint or by
// a password change. The caller holds e.mu.
func (e *Emulator) tokenRevoked(token string, info tokenInfo) bool {
	if _, ok := e.revoked[token]; ok {
		return true
	}
	u := e.users.byID[info.clientID]
	return u != nil && info.epoch != u.epoch
}

// ClientSecretIs reports whether secret is the current password of the service user
// clientID, so a test can see which secret the tenant accepts without asking for a
// token. The comparison takes constant time.
func (e *Emulator) ClientSecretIs(clientID, secret string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	u := e.users.byID[clientID]
	if u == nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(u.secret), []byte(secret)) == 1
}
