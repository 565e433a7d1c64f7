package cyberark

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"strings"
)

const (
	defaultPasswordLength = 32
	// CyberArk Identity's default policy allows 8 to 64 characters; we never generate
	// fewer than 16.
	minPasswordLength = 16
	maxPasswordLength = 64
)

// newPassword generates a secret from the Vault password policy the config names, or
// our own: letters and digits, at least one digit, one upper-case and one lower-case
// letter (CyberArk Identity's default policy), password_length long.
func (b *backend) newPassword(ctx context.Context, cfg *cyberarkConfig) (string, error) {
	if cfg.PasswordPolicy != "" {
		secret, err := b.System().GeneratePasswordFromPolicy(ctx, cfg.PasswordPolicy)
		if err != nil {
			return "", &errRotation{fmt.Sprintf("password_policy %q: generating a password: %s", cfg.PasswordPolicy, err)}
		}
		if strings.TrimSpace(secret) != secret || checkText(secret, maxClientSecretLength) != nil {
			return "", &errRotation{fmt.Sprintf("password_policy %q makes passwords with white space at an end or characters a secret must not hold", cfg.PasswordPolicy)}
		}
		if secret == cfg.ClientSecret {
			// A policy with too few possible passwords; the tenant would refuse it too.
			return "", &errRotation{fmt.Sprintf("password_policy %q made the current secret again; give it more length or characters", cfg.PasswordPolicy)}
		}
		return secret, nil
	}
	n := cfg.PasswordLength
	if n == 0 {
		n = defaultPasswordLength
	}
	return generatePassword(n)
}

const (
	lowerChars = "abcdefghijklmnopqrstuvwxyz"
	upperChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digitChars = "0123456789"
)

// generatePassword draws n characters uniformly from letters and digits until the
// result has each kind: 62 symbols give 5.95 bits each, 190 bits for 32.
func generatePassword(n int) (string, error) {
	alphabet := lowerChars + upperChars + digitChars
	for {
		out := make([]byte, n)
		for i := range out {
			k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
			if err != nil {
				return "", fmt.Errorf("reading randomness: %w", err)
			}
			out[i] = alphabet[k.Int64()]
		}
		s := string(out)
		if strings.ContainsAny(s, lowerChars) && strings.ContainsAny(s, upperChars) && strings.ContainsAny(s, digitChars) {
			return s, nil
		}
	}
}
