package emulator

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
)

// b64 is the unpadded URL-safe encoding that JWS (RFC 7515) and JWK (RFC 7517) use.
var b64 = base64.RawURLEncoding

// sign returns a compact RS256 JWS over claims, signed with the published key.
func (e *Emulator) sign(claims map[string]any) (string, error) {
	return signWith(e.key, e.kid, claims)
}

// signWith returns a compact RS256 JWS over claims signed by key, with kid in the header.
func signWith(key *rsa.PrivateKey, kid string, claims map[string]any) (string, error) {
	header, err := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid})
	if err != nil {
		return "", fmt.Errorf("encode JWT header: %w", err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode JWT claims: %w", err)
	}
	signingInput := b64.EncodeToString(header) + "." + b64.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signingInput))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("sign JWT: %w", err)
	}
	return signingInput + "." + b64.EncodeToString(sig), nil
}

// jwk is an RSA public key as a JSON Web Key.
type jwk struct {
	Kty string `json:"kty"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func (e *Emulator) jwks() map[string][]jwk {
	pub := &e.key.PublicKey
	return map[string][]jwk{"keys": {{
		Kty: "RSA",
		Use: "sig",
		Alg: "RS256",
		Kid: e.kid,
		N:   b64.EncodeToString(pub.N.Bytes()),
		E:   b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}}
}

// keyID is the key's RFC 7638 thumbprint, so the kid is stable for a key and derivable
// by anyone holding the JWKS.
func keyID(pub *rsa.PublicKey) string {
	// RFC 7638 fixes the members and their lexical order; the values need no escaping.
	canonical := `{"e":"` + b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes()) +
		`","kty":"RSA","n":"` + b64.EncodeToString(pub.N.Bytes()) + `"}`
	sum := sha256.Sum256([]byte(canonical))
	return b64.EncodeToString(sum[:])
}
