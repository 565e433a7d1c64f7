package cyberark

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestUnknownFieldsErrorIsBounded: however many unknown names a request carries, and
// however long, the 400 quotes a bounded sample of them.
func TestUnknownFieldsErrorIsBounded(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := e.configData()
	data[strings.Repeat("k", 1<<20)] = "x"
	for i := range 100 {
		data["unknown_"+strings.Repeat("u", i)] = "x"
	}
	resp, err := e.request(t, logical.CreateOperation, "config", data)
	assertBadRequest(t, resp, err, "unknown field")
	if n := len(resp.Error().Error()); n > 4096 {
		t.Errorf("the error message is %d bytes long", n)
	}
	if !strings.Contains(resp.Error().Error(), "more") {
		t.Error("the error does not say more unknown fields were left out")
	}
}
