package bpf

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/internal/privtest"
)

// loopbackPair returns both ends of a loopback TCP connection.
func loopbackPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// cookieOf returns the id the programs give a connection's socket (its
// cookie where ids are cookies).
func cookieOf(t *testing.T, p *Probes, c *net.TCPConn) uint64 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var id uint64
	var gerr error
	if err := raw.Control(func(fd uintptr) { id, gerr = p.SocketID(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return id
}

// TestDestroyAbortsExactSocket: Destroy aborts the socket with the cookie
// it is given and no other: the peer's blocked read gets ECONNRESET, the
// holder's next write ECONNABORTED, and another connection on the same
// loopback stays up. A cookie of no socket is reported unseen.
func TestDestroyAbortsExactSocket(t *testing.T) {
	privtest.Require(t)
	p, err := Load(Options{IteratorsOnly: true})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	if !SockDestroyAvailable() {
		if _, err := p.Destroy("", []uint64{1}); !errors.Is(err, ErrNoSockDestroy) {
			t.Fatalf("Destroy on a kernel without bpf_sock_destroy: %v, want ErrNoSockDestroy", err)
		}
		return
	}
	victim, peer := loopbackPair(t)
	other, otherPeer := loopbackPair(t)
	read := make(chan error, 1)
	go func() {
		_, err := peer.Read(make([]byte, 1))
		read <- err
	}()
	cookie := cookieOf(t, p, victim)
	// Cookies count up from 1 since boot (a fresh guest's first socket has
	// 1); none is near 2^63.
	const noSocket = 1<<63 + 12345
	res, err := p.Destroy("", []uint64{cookie, noSocket})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[cookie]; !r.Seen || !r.Full || r.Err != nil || r.State != 1 {
		t.Errorf("victim: %+v, want seen ESTABLISHED full socket destroyed", r)
	}
	if r := res[noSocket]; r.Seen {
		t.Errorf("cookie %d: %+v, want unseen", uint64(noSocket), r)
	}
	select {
	case err := <-read:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("peer read: %v, want ECONNRESET", err)
		}
	case <-time.After(time.Second):
		t.Fatal("peer read still blocked 1s after the destroy")
	}
	if _, err := victim.Write([]byte("x")); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("holder write: %v, want ECONNABORTED", err)
	}
	if _, err := other.Write([]byte("y")); err != nil {
		t.Errorf("other connection: %v", err)
	}
	buf := make([]byte, 1)
	otherPeer.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := otherPeer.Read(buf); err != nil || buf[0] != 'y' {
		t.Errorf("other connection's peer read %q, %v", buf, err)
	}
	socks, err := p.Sockets("")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		if s.Cookie == cookie {
			t.Errorf("destroyed socket still in iter/tcp: %+v", s)
		}
	}
}

// sockopt reads an integer option of a connection's socket.
func sockopt(t *testing.T, c *net.TCPConn, level, name int) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, name) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestSetKeepaliveArmsSocket: SetKeepalive sets keepalive and the give-up
// time on the socket with the cookie, as the application's getsockopt sees
// them, and on no other.
func TestSetKeepaliveArmsSocket(t *testing.T) {
	privtest.Require(t)
	p, err := Load(Options{IteratorsOnly: true})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	target, _ := loopbackPair(t)
	other, _ := loopbackPair(t)
	for _, c := range []*net.TCPConn{target, other} {
		if err := c.SetKeepAlive(false); err != nil {
			t.Fatal(err)
		}
	}
	cookie := cookieOf(t, p, target)
	res, err := p.SetKeepalive("", []uint64{cookie}, KeepaliveOptions{IdleSeconds: 7, IntervalSeconds: 3, Count: 4, UserTimeoutMs: 5000})
	if lacks := KernelLacks(ProgIterKeepalive); lacks != "" {
		// Before 5.15: refused, with what is missing named (the collector
		// then sets the options through a holder's fd).
		if err == nil || !strings.Contains(err.Error(), lacks) {
			t.Fatalf("SetKeepalive on a kernel without %s: %v, want it named", lacks, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if r := res[cookie]; !r.Seen || !r.Full || r.Err != nil {
		t.Fatalf("SetKeepalive: %+v", r)
	}
	for _, o := range []struct {
		name        string
		level, opt  int
		want, other int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, 0},
		{"TCP_KEEPIDLE", unix.SOL_TCP, unix.TCP_KEEPIDLE, 7, -1},
		{"TCP_KEEPINTVL", unix.SOL_TCP, unix.TCP_KEEPINTVL, 3, -1},
		{"TCP_KEEPCNT", unix.SOL_TCP, unix.TCP_KEEPCNT, 4, -1},
		{"TCP_USER_TIMEOUT", unix.SOL_TCP, unix.TCP_USER_TIMEOUT, 5000, 0},
	} {
		if got := sockopt(t, target, o.level, o.opt); got != o.want {
			t.Errorf("%s = %d, want %d", o.name, got, o.want)
		}
		if o.other >= 0 {
			if got := sockopt(t, other, o.level, o.opt); got != o.other {
				t.Errorf("the other connection's %s = %d, want %d", o.name, got, o.other)
			}
		}
	}
	// The kernel's limit (MAX_TCP_KEEPIDLE, 32767 s) is the kernel's to
	// enforce; the refusal names the option.
	res, err = p.SetKeepalive("", []uint64{cookie}, KeepaliveOptions{IdleSeconds: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[cookie]; r.Err == nil || !strings.Contains(r.Err.Error(), "TCP_KEEPIDLE") {
		t.Errorf("an idle time above the kernel's limit: %+v, want a TCP_KEEPIDLE refusal", r)
	}
}
