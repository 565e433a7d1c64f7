package cyberark

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// testPolicies stands for Vault's password policies: named generators a test can
// replace while the engine runs (as an operator can change a policy in Vault after the
// config names it), and a count of the passwords each made.
type testPolicies struct {
	mu    sync.Mutex
	gens  map[string]logical.PasswordGenerator
	calls map[string]int
}

func (p *testPolicies) set(name string, gen logical.PasswordGenerator) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gens[name] = gen
}

func (p *testPolicies) count(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[name]
}

func (p *testPolicies) generate(name string) (string, error) {
	p.mu.Lock()
	gen := p.gens[name]
	p.calls[name]++
	p.mu.Unlock()
	return gen()
}

// servePolicies gives the engine a system view that serves the named password
// policies, through StaticSystemView.PasswordPolicies as Vault's test view does; a
// name not given does not exist.
func servePolicies(t *testing.T, e *testEnv, policies map[string]logical.PasswordGenerator) *testPolicies {
	t.Helper()
	p := &testPolicies{gens: map[string]logical.PasswordGenerator{}, calls: map[string]int{}}
	view := *logical.TestSystemView()
	view.PasswordPolicies = map[string]logical.PasswordGenerator{}
	for name, gen := range policies {
		p.gens[name] = gen
		view.PasswordPolicies[name] = func() (string, error) { return p.generate(name) }
	}
	if err := e.b.Setup(t.Context(), &logical.BackendConfig{Logger: e.b.Logger(), System: view, StorageView: e.storage}); err != nil {
		t.Fatal(err)
	}
	return p
}

// uniformPolicy draws length characters uniformly from charset until the result holds
// one of each of classes, as a Vault password policy with charset rules does.
func uniformPolicy(charset string, length int, classes ...string) logical.PasswordGenerator {
	symbols := []rune(charset)
	return func() (string, error) {
		for {
			out := make([]rune, length)
			for i := range out {
				k, err := rand.Int(rand.Reader, big.NewInt(int64(len(symbols))))
				if err != nil {
					return "", err
				}
				out[i] = symbols[k.Int64()]
			}
			s, ok := string(out), true
			for _, c := range classes {
				ok = ok && strings.ContainsAny(s, c)
			}
			if ok {
				return s, nil
			}
		}
	}
}

// fixedPolicy always makes the same password.
func fixedPolicy(s string) logical.PasswordGenerator {
	return func() (string, error) { return s, nil }
}

// Policies the tests name. "review" is the one a review used to weaken the secret: 8
// characters over {a,A,1}, one of each, 5,796 possible passwords.
func testPolicyGenerators() map[string]logical.PasswordGenerator {
	strongSet := generatorAlphabet + "-_"
	return map[string]logical.PasswordGenerator{
		"strong":      uniformPolicy(strongSet, 24, lowerChars, upperChars, digitChars),
		"review":      uniformPolicy("aA1", 8, "a", "A", "1"),
		"digits-20":   uniformPolicy(digitChars, 20),        // 66 bits
		"alnum-15":    uniformPolicy(generatorAlphabet, 15), // 89 bits
		"constant":    fixedPolicy("Constant-Secret-0123456789"),
		"trailing-nl": func() (string, error) { s, err := uniformPolicy(generatorAlphabet, 24)(); return s + "\n", err },
		"zero-width": func() (string, error) {
			s, err := uniformPolicy(generatorAlphabet, 24)()
			return s[:5] + "\u200b" + s[5:], err
		},
		"broken":        func() (string, error) { return "", errors.New("could not satisfy the policy's rules") },
		"empty":         fixedPolicy(""),
		"once-then-err": onceThenError(),
	}
}

// onceThenError makes one good password and then fails, as a policy whose rules cannot
// always be met.
func onceThenError() logical.PasswordGenerator {
	var n int
	var mu sync.Mutex
	good := uniformPolicy(generatorAlphabet, 24)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n > 1 {
			return "", errors.New("rules cannot be satisfied")
		}
		return good()
	}
}

// TestMinSecretBits: the floor is what the engine's own generator gives at its
// shortest, 16 characters drawn from 62.
func TestMinSecretBits(t *testing.T) {
	t.Parallel()
	if len(generatorAlphabet) != 62 {
		t.Fatalf("the generator's alphabet has %d symbols, want 62", len(generatorAlphabet))
	}
	if want := 16 * math.Log2(62); minSecretBits != want || math.Abs(minSecretBits-95.27) > 0.01 {
		t.Errorf("minSecretBits = %v, want 16 × log2(62) = %v", minSecretBits, want)
	}
}

// samplesOf makes n samples of length runes that between them use every symbol of
// charset (when n+length > its size), without randomness: shifts of the alphabet, read
// with a stride that grows each time the shifts come round again.
func samplesOf(charset string, length, n int) []string {
	symbols := []rune(charset)
	k := len(symbols)
	out := make([]string, n)
	for i := range out {
		s := make([]rune, length)
		for j := range s {
			s[j] = symbols[(i%k+j*(1+i/k))%k]
		}
		out[i] = string(s)
	}
	return out
}

// TestJudgePolicy: a policy is judged by its samples: the shortest sample's length
// times log2 of the characters seen must reach the floor, and no sample may repeat or
// hold characters a secret must not.
func TestJudgePolicy(t *testing.T) {
	t.Parallel()
	atFloor := samplesOf(generatorAlphabet, 16, policySamples)
	oneShort := append([]string{atFloor[0][:15]}, atFloor[1:]...)
	repeated := samplesOf(generatorAlphabet+"-_", 24, policySamples)
	repeated[7] = repeated[3]
	withSpace := samplesOf(generatorAlphabet, 24, policySamples)
	withSpace[9] = " " + withSpace[9]
	withNUL := samplesOf(generatorAlphabet, 24, policySamples)
	withNUL[2] = withNUL[2][:4] + "\x00" + withNUL[2][4:]
	unicodeOK := samplesOf("αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ0123456789", 20, policySamples)

	for _, tc := range []struct {
		name    string
		samples []string
		want    string // "" for accepted
	}{
		{"16 characters from 62, the floor itself", atFloor, ""},
		{"24 characters from 64", repeated[:7], ""},
		{"20 characters from 58 Greek letters and digits, counted as characters", unicodeOK, ""},
		{"one sample of 15 characters", oneShort, "15 characters at the shortest"},
		{"the review's 8 characters over {a,A,1}", samplesOf("aA1", 8, policySamples), "about 12.7 bits"},
		{"one character", []string{"qqqqqqqqqqqqqqqqqqqqqqqq", "qqqqqqqqqqqqqqqqqqqqqqqq"}, "about 0.0 bits"},
		{"a repeated sample", repeated, "the same password twice"},
		{"white space at an end", withSpace, "white space at an end"},
		{"a NUL", withNUL, "characters a secret must not hold"},
		{"an empty password", []string{"", "x"}, "white space at an end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := judgePolicy(tc.samples)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatal("accepted")
			case err != nil && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("%q does not say %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "bits") && !strings.Contains(err.Error(), "at least 95.3 bits"):
				t.Fatalf("%q does not name the floor", err)
			}
		})
	}
}

// TestConfigPasswordPolicyRefused: a config write that names a password policy that
// does not exist, cannot generate, or makes secrets under the floor or unfit to hold is
// a 400 naming password_policy, and stores nothing.
func TestConfigPasswordPolicyRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	servePolicies(t, e, testPolicyGenerators())
	base := map[string]any{"client_secret": testClientSecret, "verify_connection": false}
	var cases []badInput
	for _, name := range []string{"review", "digits-20", "alnum-15", "constant", "trailing-nl", "zero-width", "broken", "empty", "once-then-err", "missing"} {
		cases = append(cases, badInput{name: name, data: map[string]any{"password_policy": name}, field: "password_policy"})
	}
	badInputTable{e: e, op: logical.UpdateOperation, path: "config", base: base}.run(t, cases)

	// And the messages say what is wrong and what is allowed.
	for name, want := range map[string][]string{
		"review":     {`password_policy: "review" makes passwords of about 12.7 bits (8 characters at the shortest, 3 distinct`, "at least 95.3 bits are required"},
		"alnum-15":   {"about 89.3 bits (15 characters at the shortest, 62 distinct", "at least 95.3 bits"},
		"constant":   {"the same password twice"},
		"missing":    {`password_policy: "missing" does not exist or cannot generate a password`, "password policy not found"},
		"broken":     {`"broken" does not exist or cannot generate a password`, "could not satisfy"},
		"zero-width": {"characters a secret must not hold"},
	} {
		resp, err := e.request(t, logical.UpdateOperation, "config", map[string]any{"password_policy": name, "client_secret": testClientSecret, "verify_connection": false})
		assertBadRequest(t, resp, err, "password_policy")
		for _, w := range want {
			if msg := resp.Error().Error(); !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", name, msg, w)
			}
		}
	}
}

// TestConfigPasswordPolicyJudgedOnlyWhenGiven: a write that does not name a policy
// does not ask Vault for passwords, nor does one that clears it; one that names a
// strong policy is stored.
func TestConfigPasswordPolicyJudgedOnlyWhenGiven(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.configure(t)
	p := servePolicies(t, e, testPolicyGenerators())
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_policy": "strong"})
	if got := e.stored(t).PasswordPolicy; got != "strong" {
		t.Fatalf("stored password_policy %q", got)
	}
	if n := p.count("strong"); n != policySamples {
		t.Errorf("the write drew %d samples, want %d", n, policySamples)
	}
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"max_retries": 2})
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_policy": ""})
	if n := p.count("strong"); n != policySamples {
		t.Errorf("writes that did not name the policy drew %d more samples", n-policySamples)
	}
	if got := e.stored(t).PasswordPolicy; got != "" {
		t.Errorf("password_policy %q after clearing it", got)
	}
}

// TestRotateRootWithStrongPolicy: a strong policy is accepted at the config write and
// makes the secret of the rotation; the tenant takes it.
func TestRotateRootWithStrongPolicy(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	p := servePolicies(t, e, testPolicyGenerators())
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_policy": "strong"})
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	secret := e.stored(t).ClientSecret
	if len(secret) != 24 || strings.Trim(secret, generatorAlphabet+"-_") != "" || secret == testClientSecret {
		t.Fatal("the new secret is not one the policy makes")
	}
	if !e.emu.ClientSecretIs(testClientID, secret) {
		t.Fatal("the tenant does not hold the policy's password")
	}
	if n := p.count("strong"); n != 2*policySamples {
		t.Errorf("%d passwords drawn, want %d at the write and %d at the rotation", n, policySamples, policySamples)
	}
	e.assertWorkingSecret(t)
}

// TestRotateRootRefusesPolicyWeakenedLater: a policy changed in Vault after the config
// write is judged again at the rotation, which is a 400 naming password_policy before
// the tenant is asked; the secret stays as it was.
func TestRotateRootRefusesPolicyWeakenedLater(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, want string }{
		{"review", "at least 95.3 bits"},
		{"constant", "the same password twice"},
		{"trailing-nl", "white space at an end"},
		{"broken", "does not exist or cannot generate"},
		{"once-then-err", "does not exist or cannot generate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRotationEnv(t, nil)
			gens := testPolicyGenerators()
			gens["changing"] = gens["strong"]
			p := servePolicies(t, e, gens)
			e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_policy": "changing"})
			p.set("changing", gens[tc.name])
			before := e.stored(t)
			resp, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
			assertBadRequest(t, resp, err, "password_policy")
			if msg := resp.Error().Error(); !strings.Contains(msg, tc.want) {
				t.Errorf("%q does not say %q", msg, tc.want)
			}
			if n := len(passwordChangeRequests(e)); n != 0 {
				t.Errorf("the tenant was asked %d times", n)
			}
			if after := e.stored(t); after.ClientSecret != before.ClientSecret || after.Rotation.PendingSecret != "" {
				t.Error("a refused rotation changed the stored secret or left one pending")
			}
			e.assertWorkingSecret(t)
		})
	}
}

// BenchmarkSamplePasswordPolicy is what judging a policy costs the engine itself, with
// an in-process policy; through Vault each sample is also a round trip to Vault.
func BenchmarkSamplePasswordPolicy(b *testing.B) {
	e := newTestEnv(b)
	view := *logical.TestSystemView()
	view.PasswordPolicies = map[string]logical.PasswordGenerator{"strong": testPolicyGenerators()["strong"]}
	if err := e.b.Setup(b.Context(), &logical.BackendConfig{Logger: e.b.Logger(), System: view, StorageView: e.storage}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := e.b.samplePasswordPolicy(b.Context(), "strong"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNewPasswordWithoutPolicyMeetsTheFloor: the engine's own generator, at its
// shortest, makes what the floor asks of a policy.
func TestNewPasswordWithoutPolicyMeetsTheFloor(t *testing.T) {
	t.Parallel()
	b := newBackend()
	samples := make([]string, policySamples)
	for i := range samples {
		s, err := b.newPassword(t.Context(), &cyberarkConfig{PasswordLength: minPasswordLength})
		if err != nil {
			t.Fatal(err)
		}
		samples[i] = s
	}
	// 64 samples of 16 see all 62 symbols but for about one run in 250,000.
	if err := judgePolicy(samples); err != nil {
		t.Fatal(fmt.Sprint("the engine's own generator fails the floor: ", err))
	}
}

// scriptedPolicy makes strong passwords, except that once armed, the first of each
// batch of policySamples (the one a rotation uses) is the next scripted value.
type scriptedPolicy struct {
	mu     sync.Mutex
	armed  bool
	calls  int
	script []string
	strong logical.PasswordGenerator
}

func (s *scriptedPolicy) arm(values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed, s.calls, s.script = true, 0, values
}

func (s *scriptedPolicy) generate() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.armed && s.calls%policySamples == 0 && len(s.script) > 0 {
		s.calls++
		next := s.script[0]
		s.script = s.script[1:]
		return next, nil
	}
	s.calls++
	return s.strong()
}

// TestRotateRootPolicyHistory: secrets come from the named Vault password policy; a
// secret the tenant's history refuses leaves the current one in place with the
// tenant's message; a policy that makes the current secret again is refused before the
// tenant is asked.
func TestRotateRootPolicyHistory(t *testing.T) {
	t.Parallel()
	e := newRotationEnv(t, nil)
	gens := testPolicyGenerators()
	scripted := &scriptedPolicy{strong: gens["strong"]}
	gens["scripted"] = scripted.generate
	servePolicies(t, e, gens)
	e.mustRequest(t, logical.UpdateOperation, "config", map[string]any{"password_policy": "scripted"})
	scripted.arm("Policy-Made-Secret-A1", "Policy-Made-Secret-B2", "Policy-Made-Secret-A1")
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	if !e.emu.ClientSecretIs(testClientID, "Policy-Made-Secret-A1") {
		t.Fatal("the tenant does not hold the policy's password")
	}
	e.mustRequest(t, logical.UpdateOperation, "config/rotate-root", nil)
	resp, err := e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
	if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "last 3 passwords") {
		t.Fatalf("got (%v, %v), want a 400 with the tenant's history message", resp, err)
	}
	if cfg := e.stored(t); cfg.ClientSecret != "Policy-Made-Secret-B2" || cfg.Rotation.PendingSecret != "" {
		t.Error("a refused rotation changed the stored secret or left it pending")
	}
	e.assertWorkingSecret(t)

	scripted.arm("Policy-Made-Secret-B2")
	changes := e.emu.Stats().PasswordChanges
	resp, err = e.request(t, logical.UpdateOperation, "config/rotate-root", nil)
	assertBadRequest(t, resp, err, "password_policy")
	if !strings.Contains(resp.Error().Error(), "made the current secret again") {
		t.Errorf("%q", resp.Error())
	}
	if n := e.emu.Stats().PasswordChanges; n != changes || len(passwordChangeRequests(e)) != 3 {
		t.Errorf("a policy that made the current secret reached the tenant (%d changes, %d requests)", n-changes, len(passwordChangeRequests(e)))
	}
}
