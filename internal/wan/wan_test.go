package wan

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"
)

// TestProxyDelaysEachDirection: an echo through the proxy arrives intact, no sooner
// than a round trip after it was sent, and each connection is counted.
func TestProxyDelaysEachDirection(t *testing.T) {
	t.Parallel()
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					_, _ = c.Write([]byte(line))
				}
			}()
		}
	}()
	const rtt = 60 * time.Millisecond
	p, err := Start(ln.Addr().String(), rtt)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, msg := range []string{"hello\n", "again\n"} {
		start := time.Now()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Errorf("echo %q, want %q", got, msg)
		}
		// A lower bound only: the proxy must add the round trip; how much more the
		// machine adds is not this test's business.
		if took := time.Since(start); took < rtt {
			t.Errorf("an echo took %s through a proxy of %s round trip", took, rtt)
		}
	}
	if n := p.Connections(); n != 1 {
		t.Errorf("%d connections counted, want 1", n)
	}
}
