package emulator

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// TokenQuirks make an app hand out tokens that a careful client must refuse, or must
// accept although they differ from the documented shape: scopes it did not ask for,
// signatures by keys the JWKS does not hold, foreign issuers, audiences and subjects,
// opaque tokens. The zero value issues tokens exactly as documented.
//
// Quirks change what the token and the token answer say. The tenant still knows the
// token as issued to its client: introspection and the management APIs accept it (while
// unexpired and unrevoked), and report and enforce what the token carries (its scope
// claim, iss, aud, sub and exp).
type TokenQuirks struct {
	// WidenScope are scopes added to every grant that does not already hold them, as a
	// tenant that grants more than was asked. They need not be scopes the app defines.
	// Where they show is WidenScopeIn.
	WidenScope []string `json:"widen_scope,omitempty"`
	// WidenScopeIn says where WidenScope shows: "both" (or empty: the answer's "scope"
	// and the JWT's "scope" claim), "answer" (the answer only) or "claim" (the JWT only),
	// so that a client checking only one of them is caught.
	WidenScopeIn string `json:"widen_scope_in,omitempty"`
	// EmptyScopeAsAll answers a request without "scope" with the literal scope "all", as
	// CyberArk's examples show, instead of the default: the client's allowed_scopes, or
	// all of the app's scopes, listed. WidenScope still applies.
	EmptyScopeAsAll bool `json:"empty_scope_as_all,omitempty"`
	// UnknownKey signs the JWT with a second RSA key that the JWKS does not hold:
	// "own_kid" names that key's own kid (its RFC 7638 thumbprint, which no published key
	// has), "real_kid" names the published key's kid, so the signature fails to verify
	// with the key the kid points at. Empty signs with the published key.
	UnknownKey string `json:"unknown_key,omitempty"`
	// Issuer replaces the "iss" claim (by default <scheme>://<host>/<app id>/).
	Issuer string `json:"issuer,omitempty"`
	// IssuerNoTrailingSlash drops a trailing slash from "iss": the other spelling
	// CyberArk uses, which a client must accept. The discovery document's issuer keeps
	// its slash, so the two then differ by it.
	IssuerNoTrailingSlash bool `json:"issuer_no_trailing_slash,omitempty"`
	// Audience replaces the "aud" claim (by default the client ID).
	Audience string `json:"audience,omitempty"`
	// Subject replaces the "sub" claim (by default the client's UUID), as if another
	// service user had been swapped in under the client.
	Subject string `json:"subject,omitempty"`
	// ExpOffset is added, in seconds, to the "exp" claim, which then disagrees with the
	// answer's expires_in (a negative offset of expires_in or more makes a token born
	// expired). The tenant enforces the claim's exp.
	ExpOffset int64 `json:"exp_offset,omitempty"`
	// OmitClaims leaves these claims out of the JWT: any of iss, aud, sub, scope, exp,
	// iat, auth_time, unique_name, jti.
	OmitClaims []string `json:"omit_claims,omitempty"`
	// OpaqueToken issues a random opaque string instead of a JWT. The other JWT quirks
	// then have nothing to act on; WidenScope and EmptyScopeAsAll still shape the answer.
	OpaqueToken bool `json:"opaque_token,omitempty"`
}

// Values of TokenQuirks.UnknownKey and WidenScopeIn.
const (
	UnknownKeyOwnKid  = "own_kid"
	UnknownKeyRealKid = "real_kid"
	WidenInBoth       = "both"
	WidenInAnswer     = "answer"
	WidenInClaim      = "claim"
)

var omittableClaims = []string{"iss", "aud", "sub", "scope", "exp", "iat", "auth_time", "unique_name", "jti"}

func (q TokenQuirks) validate() error {
	for _, s := range q.WidenScope {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return fmt.Errorf("widen_scope: scope %q must be non-empty without whitespace", s)
		}
	}
	switch q.WidenScopeIn {
	case "", WidenInBoth, WidenInAnswer, WidenInClaim:
	default:
		return fmt.Errorf("widen_scope_in %q: want both, answer, claim or empty", q.WidenScopeIn)
	}
	switch q.UnknownKey {
	case "", UnknownKeyOwnKid, UnknownKeyRealKid:
	default:
		return fmt.Errorf("unknown_key %q: want own_kid, real_kid or empty", q.UnknownKey)
	}
	for _, c := range q.OmitClaims {
		if !slices.Contains(omittableClaims, c) {
			return fmt.Errorf("omit_claims: %q: want one of %s", c, strings.Join(omittableClaims, ", "))
		}
	}
	return nil
}

// clone copies the slices, so that the emulator's quirks never alias a caller's.
func (q TokenQuirks) clone() TokenQuirks {
	q.WidenScope = slices.Clone(q.WidenScope)
	q.OmitClaims = slices.Clone(q.OmitClaims)
	return q
}

// SetTokenQuirks replaces the token quirks of an app (App.TokenQuirks) for tokens issued
// from now on; the zero TokenQuirks restores the documented behaviour. Reset keeps them.
func (e *Emulator) SetTokenQuirks(appID string, q TokenQuirks) error {
	if err := q.validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[strings.ToLower(appID)]
	if a == nil {
		return fmt.Errorf("unknown app %q", appID)
	}
	a.quirks = q.clone()
	return nil
}

// TokenQuirks returns an app's current token quirks.
func (e *Emulator) TokenQuirks(appID string) (TokenQuirks, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[strings.ToLower(appID)]
	if a == nil {
		return TokenQuirks{}, fmt.Errorf("unknown app %q", appID)
	}
	return a.quirks.clone(), nil
}

// widen adds the quirk's scopes to granted, in order, skipping those already there.
func widen(granted, extra []string) []string {
	out := slices.Clone(granted)
	for _, s := range extra {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// scopesFor works out the answer's and the claim's scope strings under q.
func (q TokenQuirks) scopesFor(granted []string, askedNone bool) (answer, claim string) {
	if askedNone && q.EmptyScopeAsAll {
		granted = []string{"all"}
	}
	plain := strings.Join(granted, " ")
	wide := strings.Join(widen(granted, q.WidenScope), " ")
	switch q.WidenScopeIn {
	case WidenInAnswer:
		return wide, plain
	case WidenInClaim:
		return plain, wide
	default:
		return wide, wide
	}
}

// unknownKey returns the second signing key, which no JWKS publishes, generating it on
// first use (Config.UnknownSigningKey supplies one instead).
func (e *Emulator) unknownKey() (*rsa.PrivateKey, error) {
	e.unknownOnce.Do(func() {
		if e.unknown != nil {
			return
		}
		e.unknown, e.unknownErr = rsa.GenerateKey(rand.Reader, 2048)
	})
	if e.unknownErr != nil {
		return nil, fmt.Errorf("generate the unknown signing key: %w", e.unknownErr)
	}
	return e.unknown, nil
}

// UnknownPublicKey returns the public half of the key that signs tokens under
// TokenQuirks.UnknownKey, which no JWKS of the emulator holds, for a test that wants to
// show such a token is otherwise well formed. It generates the key if need be.
func (e *Emulator) UnknownPublicKey() (*rsa.PublicKey, error) {
	k, err := e.unknownKey()
	if err != nil {
		return nil, err
	}
	return &k.PublicKey, nil
}

// PublicKey returns the public half of the signing key that the keys endpoint publishes.
func (e *Emulator) PublicKey() *rsa.PublicKey {
	pub := &e.key.PublicKey
	return &rsa.PublicKey{N: new(big.Int).Set(pub.N), E: pub.E}
}

// KeyID returns the kid of the published signing key: its RFC 7638 thumbprint.
func (e *Emulator) KeyID() string {
	return e.kid
}

// JWKS returns the JSON Web Key Set that GET /oauth2/keys/<app_id> serves (the same for
// every app), so that a unit test can verify tokens without a round trip.
func (e *Emulator) JWKS() []byte {
	b, err := json.Marshal(e.jwks())
	if err != nil {
		// A map of strings always encodes.
		panic(err)
	}
	return b
}

// newOpaqueToken is a random token that is not a JWT: no dots, URL-safe characters.
func newOpaqueToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return b64.EncodeToString(b[:])
}
