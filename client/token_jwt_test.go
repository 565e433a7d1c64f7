package client

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestTokenClaimsDoNotPrintTheToken: a token's decoded claims, printed by mistake with
// any verb, show no part of the token.
func TestTokenClaimsDoNotPrintTheToken(t *testing.T) {
	t.Parallel()
	const tok = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJl"
	parsed, err := parseToken([]byte(`{"access_token":"`+tok+`","expires_in":3600}`), time.Now(), nil)
	if err != nil || parsed.Claims == nil || parsed.Claims.String("sub") != "user-1" {
		t.Fatalf("parse: %v %v", parsed, err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, parsed.Claims) + fmt.Sprintf(verb, *parsed)
		for _, part := range strings.Split(tok, ".") {
			if strings.Contains(out, part) {
				t.Errorf("%s prints a part of the token", verb)
			}
		}
	}
}
