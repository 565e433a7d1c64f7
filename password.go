package cyberark

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"unicode/utf8"
)

const (
	defaultPasswordLength = 32
	// CyberArk Identity's default policy allows 8 to 64 characters; we never generate
	// fewer than 16.
	minPasswordLength = 16
	maxPasswordLength = 64
)

// minSecretBits is the least strength a secret for root rotation may have, in bits,
// whatever password_policy says: what the engine's own generator gives at its shortest,
// minPasswordLength characters drawn uniformly from its alphabet of letters and digits,
// 16 × log2(62) ≈ 95.3 bits. (Its rule of at least one digit, upper-case and lower-case
// letter removes about 6% of those strings, under 0.1 bit.) Guessing is not the only
// reason for a floor: a config writer who cannot read the config must not be able to
// weaken or choose the secret through the policy it names. A review set the live
// password to "aaaa" with a policy, and a policy of 8 characters over {a,A,1}, one of
// each, allows 5,796 secrets. (It is a variable because Go constants cannot call math.Log2.)
var minSecretBits = float64(minPasswordLength) * math.Log2(float64(len(generatorAlphabet)))

// policySamples is how many secrets a password policy generates to be judged. A plugin
// cannot read a policy's definition, only generate from it, so its strength is
// estimated from what it makes: the shortest sample and the characters seen across all
// of them. Fewer samples see fewer of a policy's characters and underestimate it: a
// policy exactly at the floor (16 characters from 62) is wrongly refused when one of
// its 62 characters never shows, about 62 × (61/62)^(16n) for n samples: 1.5% for 32,
// 4·10⁻⁶ for 64. Each sample is a call to Vault, made at a config write that names a
// policy and at each rotation from one.
const policySamples = 64

// newPassword generates a secret from the Vault password policy the config names, or
// our own: letters and digits, at least one digit, one upper-case and one lower-case
// letter (CyberArk Identity's default policy), password_length long. A policy is judged
// again at each rotation, as at the config write: it can be changed in Vault after that.
func (b *backend) newPassword(ctx context.Context, cfg *cyberarkConfig) (string, error) {
	if cfg.PasswordPolicy != "" {
		samples, err := b.samplePasswordPolicy(ctx, cfg.PasswordPolicy)
		if err != nil {
			return "", &errRotation{fmt.Sprintf("password_policy: %s", err)}
		}
		// Any sample will do: each is a fresh draw, and none is shown anywhere.
		secret := samples[0]
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

// samplePasswordPolicy generates policySamples secrets from the named Vault password
// policy and returns them if the policy is fit for root rotation (see judgePolicy).
// Its errors start with the policy's name and never quote a sample.
func (b *backend) samplePasswordPolicy(ctx context.Context, name string) ([]string, error) {
	samples := make([]string, 0, policySamples)
	for range policySamples {
		s, err := b.System().GeneratePasswordFromPolicy(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("%s does not exist or cannot generate a password: %s", quoteShort(name), quoteShort(err.Error()))
		}
		samples = append(samples, s)
	}
	if err := judgePolicy(samples); err != nil {
		return nil, fmt.Errorf("%s %w", quoteShort(name), err)
	}
	return samples, nil
}

// judgePolicy refuses a password policy by its samples: one that makes secrets with
// white space at an end or characters a secret must not hold, one whose estimated
// strength is under minSecretBits, and one that makes the same secret twice, which a
// policy of minSecretBits does by chance about once in 2^84 sets of 64 samples.
func judgePolicy(samples []string) error {
	for _, s := range samples {
		if s == "" || strings.TrimSpace(s) != s || checkText(s, maxClientSecretLength) != nil {
			return errors.New("makes passwords with white space at an end or characters a secret must not hold")
		}
	}
	if bits, shortest, symbols := policyBits(samples); bits < minSecretBits {
		return fmt.Errorf("makes passwords of about %.1f bits (%d characters at the shortest, %d distinct characters in %d samples); at least %.1f bits are required, as %d characters drawn from letters and digits give: lengthen the policy or widen its character sets",
			bits, shortest, symbols, len(samples), minSecretBits, minPasswordLength)
	}
	seen := make(map[string]bool, len(samples))
	for _, s := range samples {
		if seen[s] {
			return fmt.Errorf("made the same password twice in %d samples: it allows too few passwords; lengthen it or widen its character sets", len(samples))
		}
		seen[s] = true
	}
	return nil
}

// policyBits estimates a policy's strength from its samples: the shortest sample's
// length times log2 of the number of distinct characters seen across all samples, as if
// each character were drawn uniformly from those. It errs low, never high, for a policy
// that draws uniformly: characters it never happened to draw are not counted.
func policyBits(samples []string) (bits float64, shortest, symbols int) {
	distinct := make(map[rune]bool)
	shortest = -1
	for _, s := range samples {
		if n := utf8.RuneCountInString(s); shortest < 0 || n < shortest {
			shortest = n
		}
		for _, r := range s {
			distinct[r] = true
		}
	}
	if shortest <= 0 || len(distinct) < 2 {
		return 0, max(shortest, 0), len(distinct)
	}
	return float64(shortest) * math.Log2(float64(len(distinct))), shortest, len(distinct)
}

const (
	lowerChars = "abcdefghijklmnopqrstuvwxyz"
	upperChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digitChars = "0123456789"
	// generatorAlphabet is what generatePassword draws from: 62 symbols.
	generatorAlphabet = lowerChars + upperChars + digitChars
)

// generatePassword draws n characters uniformly from letters and digits until the
// result has each kind: 62 symbols give 5.95 bits each, 190 bits for 32.
func generatePassword(n int) (string, error) {
	for {
		out := make([]byte, n)
		for i := range out {
			k, err := rand.Int(rand.Reader, big.NewInt(int64(len(generatorAlphabet))))
			if err != nil {
				return "", fmt.Errorf("reading randomness: %w", err)
			}
			out[i] = generatorAlphabet[k.Int64()]
		}
		s := string(out)
		if strings.ContainsAny(s, lowerChars) && strings.ContainsAny(s, upperChars) && strings.ContainsAny(s, digitChars) {
			return s, nil
		}
	}
}
