package cyberark

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Vault Agent (consul-template) re-reads a non-renewable secret after
// lease_duration x (0.9 + a jitter of up to +-0.05). This simulates a fleet of Agents
// reading token/<role> through the real backend and the emulated tenant, on a fake
// clock, for two token lifetimes, and counts grants and reads.

type simAgent struct {
	id    int
	next  time.Time
	reads int
}

type agentQueue []*simAgent

func (q agentQueue) Len() int           { return len(q) }
func (q agentQueue) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q agentQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *agentQueue) Push(x any)        { *q = append(*q, x.(*simAgent)) }
func (q *agentQueue) Pop() any {
	old := *q
	a := old[len(old)-1]
	*q = old[:len(old)-1]
	return a
}

type simResult struct {
	grants, reads, maxReadsPerAgent int
	minLease                        time.Duration
}

func simulateAgents(t *testing.T, agents int, reuse, staggered bool) simResult {
	t.Helper()
	const lifetime = time.Hour
	e := newTestEnv(t)
	e.emu.SetExpiresIn(int(lifetime.Seconds()))
	clock := newFakeClock(e)
	e.configure(t)
	e.mustRequest(t, logical.CreateOperation, "roles/agent", map[string]any{"scopes": "read", "token_reuse": reuse})
	e.emu.Reset()

	rng := rand.New(rand.NewPCG(42, uint64(agents))) //nolint:gosec // seeded so the simulation repeats; it guards no secret
	start := clock.Now()
	end := start.Add(2 * lifetime)
	q := &agentQueue{}
	for i := range agents {
		offset := time.Duration(rng.Int64N(int64(time.Second))) // a fleet started together
		if staggered {
			offset = time.Duration(rng.Int64N(int64(lifetime)))
		}
		heap.Push(q, &simAgent{id: i, next: start.Add(offset)})
	}
	res := simResult{minLease: lifetime}
	for q.Len() > 0 {
		a := heap.Pop(q).(*simAgent)
		if a.next.After(end) {
			continue
		}
		clock.Set(a.next)
		resp := e.mustRequest(t, logical.ReadOperation, "token/agent", nil)
		a.reads++
		res.reads++
		lease := resp.Secret.TTL
		res.minLease = min(res.minLease, lease)
		fraction := 0.9 + (rng.Float64()-0.5)*0.1
		a.next = a.next.Add(time.Duration(float64(lease) * fraction))
		res.maxReadsPerAgent = max(res.maxReadsPerAgent, a.reads)
		heap.Push(q, a)
	}
	res.grants = int(e.emu.Stats().Grants)
	return res
}

// TestAgentFleetGrantCount prints the figures docs/operator-guide.md quotes; run it with -v.
func TestAgentFleetGrantCount(t *testing.T) {
	t.Parallel()
	const agents = 100
	for _, staggered := range []bool{false, true} {
		start := "together"
		if staggered {
			start = "staggered"
		}
		t.Run(start, func(t *testing.T) {
			t.Parallel()
			with := simulateAgents(t, agents, true, staggered)
			without := simulateAgents(t, agents, false, staggered)
			for _, r := range []struct {
				name string
				simResult
			}{{"token_reuse=true", with}, {"token_reuse=false", without}} {
				t.Logf("%d agents started %s, 1h tokens, 2h: %s: %d grants, %d reads, max %d reads per agent, shortest lease %s",
					agents, start, r.name, r.grants, r.reads, r.maxReadsPerAgent, r.minLease)
			}

			// Without reuse every read is a grant.
			if without.grants != without.reads {
				t.Errorf("without reuse: %d grants for %d reads", without.grants, without.reads)
			}
			// With reuse, a token serves until 10% of its life is left (the defaults),
			// so over two lifetimes there are at most ceil(2/0.9) = 3 grants, plus the
			// one in flight at the end.
			if with.grants > 4 {
				t.Errorf("with reuse: %d grants in two lifetimes, want at most 4", with.grants)
			}
			// No re-fetch storm near expiry: each Agent reads about once per 0.9 of a
			// lease, and a lease on a reused token is never shorter than the reuse
			// threshold (6m for 1h tokens) less the 60s margin.
			if with.minLease < 5*time.Minute {
				t.Errorf("with reuse: a lease of %s was handed out, want >= 5m", with.minLease)
			}
			if with.maxReadsPerAgent > 2*without.maxReadsPerAgent {
				t.Errorf("with reuse an Agent read %d times, without %d: reuse makes Agents re-read too often",
					with.maxReadsPerAgent, without.maxReadsPerAgent)
			}
		})
	}
}
