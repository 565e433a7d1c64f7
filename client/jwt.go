package client

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"

	"github.com/hashicorp/go-retryablehttp"
)

// ErrNotJWT says an access token is not a JWT (an opaque token).
var ErrNotJWT = errors.New("the access token is not a JWT")

// JWT is a parsed, not yet verified, JSON Web Token (RFC 7519) in compact form.
type JWT struct {
	Alg, Kid string
	// Claims are the payload's claims as JSON decodes them (numbers as json.Number).
	Claims map[string]any
	signed []byte // header.payload, as signed
	sig    []byte
}

// ParseJWT splits and decodes token. An error never quotes the token.
func ParseJWT(token string) (*JWT, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, ErrNotJWT
	}
	dec := base64.RawURLEncoding
	header, err := dec.DecodeString(parts[0])
	if err != nil {
		return nil, ErrNotJWT
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(header, &h); err != nil {
		return nil, ErrNotJWT
	}
	payload, err := dec.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("the JWT's payload is not base64url")
	}
	d := json.NewDecoder(strings.NewReader(string(payload)))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil {
		return nil, errors.New("the JWT's payload is not a JSON object")
	}
	sig, err := dec.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("the JWT's signature is not base64url")
	}
	return &JWT{Alg: h.Alg, Kid: h.Kid, Claims: claims, signed: []byte(parts[0] + "." + parts[1]), sig: sig}, nil
}

// Format prints the header alone, for every verb: the signed bytes and the signature
// together are the token, and a stray %v in a log line or a test failure must not
// print it.
func (j *JWT) Format(f fmt.State, _ rune) { fmt.Fprintf(f, "JWT{alg=%s kid=%s}", j.Alg, j.Kid) }

// VerifyRS256 checks the token's RS256 signature with pub.
func (j *JWT) VerifyRS256(pub *rsa.PublicKey) error {
	if j.Alg != "RS256" {
		return fmt.Errorf("the JWT is signed with %q, not RS256", j.Alg)
	}
	sum := sha256.Sum256(j.signed)
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], j.sig); err != nil {
		return errors.New("the JWT's signature does not verify")
	}
	return nil
}

// String is the claim name's value as a string, or "".
func (j *JWT) String(name string) string {
	s, _ := j.Claims[name].(string)
	return s
}

// Int is the claim name's value as an integer, and whether it is one.
func (j *JWT) Int(name string) (int64, bool) {
	switch n := j.Claims[name].(type) {
	case json.Number:
		i, err := n.Int64()
		if err != nil {
			f, ferr := n.Float64()
			return int64(f), ferr == nil
		}
		return i, true
	case float64:
		return int64(n), true
	}
	return 0, false
}

// Strings is a claim that may be one string or a list of them (aud, scope): a string
// is split at spaces.
func (j *JWT) Strings(name string) []string {
	switch v := j.Claims[name].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// ParseJWKS reads the RSA keys of a JSON Web Key Set (RFC 7517), by kid.
func ParseJWKS(body []byte) (map[string]*rsa.PublicKey, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			N   string `json:"n"`
			E   string `json:"e"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("the key set is not JSON")
	}
	keys := make(map[string]*rsa.PublicKey)
	for _, k := range set.Keys {
		if k.Kty != "RSA" {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
			continue
		}
		exp := int(new(big.Int).SetBytes(e).Int64())
		if exp < 3 {
			continue
		}
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
	}
	if len(keys) == 0 {
		return nil, errors.New("the key set holds no RSA key")
	}
	return keys, nil
}

// FetchPublic GETs one of the tenant's public documents (its key set, its OpenID
// discovery document), with the client's TLS settings, timeouts, retries and size cap.
// No credentials are sent.
func (c *Client) FetchPublic(ctx context.Context, endpoint string) ([]byte, error) {
	if c.cfg.Retry.Budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Retry.Budget)
		defer cancel()
	}
	cl := &call{secrets: c.sensitive()}
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if c.cfg.UserAgent != "" {
		req.Header.Set("User-Agent", c.cfg.UserAgent)
	}
	body, answered, err := c.send(ctx, cl, req)
	if answered {
		return body, err
	}
	return nil, redact(err, cl.secrets)
}
