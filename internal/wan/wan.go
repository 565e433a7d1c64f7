// Package wan is a TCP proxy that puts a wide-area network between a client and a
// server on one machine: each byte reaches the other side half a round trip after it
// was sent, in both directions, so that a TLS handshake and a grant cost the round
// trips they cost across the internet. It models latency alone: no bandwidth limit,
// no loss.
package wan

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections from its listener to a target address.
type Proxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	conns  atomic.Int64
	wg     sync.WaitGroup
	ctx    context.Context
	stop   context.CancelFunc
}

// Start listens on a loopback port and forwards each connection to target, delaying
// each direction by rtt/2.
func Start(target string, rtt time.Duration) (*Proxy, error) {
	if rtt < 0 {
		return nil, errors.New("wan: the round trip must not be negative")
	}
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, oneWay: rtt / 2, ctx: ctx, stop: stop}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address clients dial instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Connections is how many connections clients opened through the proxy.
func (p *Proxy) Connections() int64 { return p.conns.Load() }

// Close stops accepting, cuts every connection, and waits for them to end.
func (p *Proxy) Close() error {
	p.stop()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer client.Close()
	server, err := (&net.Dialer{}).DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		<-p.ctx.Done()
		client.Close()
		server.Close()
	}()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(server, client) })
	wg.Go(func() { p.pipe(client, server) })
	wg.Wait()
}

// chunk is bytes read from one side, due at the other at a time.
type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, each read delivered oneWay after it was read: reads go on
// while earlier bytes are in flight, as on a long link.
func (p *Proxy) pipe(dst, src net.Conn) {
	inFlight := make(chan chunk, 4096)
	go func() {
		defer close(inFlight)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				inFlight <- chunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(p.oneWay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range inFlight {
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		if _, err := dst.Write(c.data); err != nil {
			// The other side is gone: end the reader too, and let it finish.
			src.Close()
			for range inFlight {
			}
			return
		}
	}
	// The sender is done: pass the end on, so that the other side sees EOF.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
