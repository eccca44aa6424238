package collector_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// sockaddrString prints a socket address as the table prints a tuple.
func sockaddrString(t *testing.T, sa unix.Sockaddr) string {
	t.Helper()
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	t.Fatalf("unexpected socket address %T", sa)
	return ""
}

// rawPair connects with a blocking connect(2), which returns 0 rather than
// Go's EINPROGRESS, and takes the server end with a plain accept(2), which
// Go never calls (it uses accept4). It returns the two fds and the
// client's local and remote address.
func rawPair(t *testing.T, family int) (cfd, sfd int, local, remote string) {
	t.Helper()
	mustFD := func(fd int, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	var bindTo unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		bindTo = &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}
	}
	lfd := mustFD(unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0))
	if err := unix.Bind(lfd, bindTo); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 4); err != nil {
		t.Fatal(err)
	}
	laddr, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	cfd = mustFD(unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0))
	if err := unix.Connect(cfd, laddr); err != nil {
		t.Fatalf("blocking connect: %v", err)
	}
	r, _, errno := unix.Syscall(unix.SYS_ACCEPT, uintptr(lfd), 0, 0)
	if errno != 0 {
		t.Fatalf("accept: %v", errno)
	}
	sfd = mustFD(int(r), nil)
	caddr, err := unix.Getsockname(cfd)
	if err != nil {
		t.Fatal(err)
	}
	return cfd, sfd, sockaddrString(t, caddr), sockaddrString(t, laddr)
}

// TestOwnerEventsGiveHolders: with holder walks an hour apart, a
// connection made after the collector is ready has both its holders within
// 1s from the connect and accept hooks alone: through Go's non-blocking
// connect (EINPROGRESS) and accept4, and through a blocking connect
// (returning 0) and a plain accept, IPv4 and IPv6.
func TestOwnerEventsGiveHolders(t *testing.T) {
	// A listener the seed snapshot sees gives the namespace's sysctls, so
	// no verdict rule asks for a refresh (another walk) for a new socket.
	pre, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	c := startCollector(t, collector.Config{ReconcileInterval: time.Hour})
	pid := uint32(os.Getpid())
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	wantComm := string(comm[:len(comm)-1])
	st0, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}

	type ends struct {
		cfd, sfd      int
		local, remote string
	}
	for _, tc := range []struct {
		name string
		open func(t *testing.T) ends
	}{
		{"go-ipv4", func(t *testing.T) ends {
			cl, sv := pair(t, "tcp4", "127.0.0.1:0")
			t.Cleanup(func() { cl.Close(); sv.Close() })
			return ends{fdOf(t, cl), fdOf(t, sv), cl.LocalAddr().String(), cl.RemoteAddr().String()}
		}},
		{"go-ipv6", func(t *testing.T) ends {
			cl, sv := pair(t, "tcp6", "[::1]:0")
			t.Cleanup(func() { cl.Close(); sv.Close() })
			return ends{fdOf(t, cl), fdOf(t, sv), cl.LocalAddr().String(), cl.RemoteAddr().String()}
		}},
		{"raw-ipv4", func(t *testing.T) ends {
			var e ends
			e.cfd, e.sfd, e.local, e.remote = rawPair(t, unix.AF_INET)
			return e
		}},
		{"raw-ipv6", func(t *testing.T) ends {
			var e ends
			e.cfd, e.sfd, e.local, e.remote = rawPair(t, unix.AF_INET6)
			return e
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.open(t)
			holds := func(v *collector.ConnView, fd int) bool {
				for _, h := range v.Holders {
					if h.PID == pid && h.FD == int32(fd) && h.Comm == wantComm {
						return true
					}
				}
				return false
			}
			var cv, sv *collector.ConnView
			testutil.Eventually(t, time.Second, fmt.Sprintf("holders of %s -> %s: pid %d fds %d and %d", e.local, e.remote, pid, e.cfd, e.sfd), func() (bool, string) {
				cv, sv = nil, nil
				for _, v := range c.Table().List(time.Now(), collector.ListOptions{}) {
					switch {
					case v.Local == e.local && v.Remote == e.remote:
						cv = &v
					case v.Local == e.remote && v.Remote == e.local:
						sv = &v
					}
				}
				return cv != nil && sv != nil && holds(cv, e.cfd) && holds(sv, e.sfd), fmt.Sprintf("client %+v\nserver %+v", cv, sv)
			})
			for _, v := range []*collector.ConnView{cv, sv} {
				if !v.HoldersKnown || len(v.Holders) != 1 {
					t.Errorf("%s: holders_known %t, holders %+v; want this process alone", v.Local, v.HoldersKnown, v.Holders)
				}
			}
		})
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Reconciles != st0.Reconciles || st.Refreshes != st0.Refreshes || st.EventsLost["delta"] != 0 {
		t.Errorf("reconciles %d -> %d, verdict refreshes %d -> %d, owner events lost %d: want no holder walk and no loss",
			st0.Reconciles, st.Reconciles, st0.Refreshes, st.Refreshes, st.EventsLost["delta"])
	}
}

// TestCloseWaitSurvivesAcceptRace: the peer's FIN can arrive while the
// accept hook of the same socket is writing its owner on another CPU. With
// holder walks and snapshots an hour apart, every accepted socket whose
// peer closed must still reach CLOSE_WAIT in the table, with its holder:
// the state hook and the syscall hooks keep apart deltas, so neither writes
// the other's news back out. (It catches the race with two CPUs or more.)
func TestCloseWaitSurvivesAcceptRace(t *testing.T) {
	c := startCollector(t, collector.Config{ReconcileInterval: time.Hour})
	// An attempt during which the kernel lost events (counted) has a
	// reconcile repair the table, and proves nothing: try again.
	// Under TCG with another guest beside it, three attempts in a row lost
	// events (121, 87, 33 counted): five are allowed.
	for attempt := 1; attempt <= 5; attempt++ {
		if !acceptRace(t, c) || t.Failed() {
			return
		}
	}
	t.Error("every attempt lost events and had a reconcile repair the table: the hooks alone were never tested")
}

// acceptRace runs one round of 3000 accepts racing their peers' FINs on a
// fresh listener, and reports whether a reconcile ran meanwhile.
func acceptRace(t *testing.T, c *collector.Collector) (reconciled bool) {
	const n = 3000
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lfd := fdOf(t, ln)
	laddr, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	st0, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	// Each round fills the backlog, then one goroutine accepts while
	// another closes the clients in the same order: each FIN lands close
	// to its socket's accept return.
	servers := map[string]int{} // client address -> accepted fd
	// Closed when the attempt ends: another attempt must not run out of fds.
	defer func() {
		for _, fd := range servers {
			unix.Close(fd)
		}
	}()
	const round = 250
	for len(servers) < n {
		clients := make([]int, 0, round)
		for range round {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Connect(fd, laddr); err != nil {
				unix.Close(fd)
				t.Fatalf("connect: %v", err)
			}
			clients = append(clients, fd)
		}
		done := make(chan error, 1)
		go func() {
			for _, fd := range clients {
				if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		for range round {
			r, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
			if errno != 0 {
				t.Fatalf("accept4: %v", errno)
			}
			peer, err := unix.Getpeername(int(r))
			if err != nil {
				t.Fatal(err)
			}
			servers[sockaddrString(t, peer)] = int(r)
		}
		if err := <-done; err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		for _, fd := range clients {
			unix.Close(fd)
		}
	}
	pid := uint32(os.Getpid())
	// 15 s: where the kernel lost events, the reconcile brought forward
	// must have time to walk every socket, under TCG too.
	// Without socket cookies (5.10) ids are derived from the socket's
	// address, and a socket that takes a freed one's memory before the
	// agent has read that one's end can be merged with it (README,
	// socket_cookie); the reconcile repairs that. There, after 5 s, one is
	// run, said so, and the table must then be whole.
	start, repaired := time.Now(), false
	testutil.Eventually(t, 15*time.Second, fmt.Sprintf("%d accepted sockets in CLOSE_WAIT with their holder", n), func() (ok bool, detail string) {
		defer func() {
			if !ok && !repaired && !bpf.IDsAreCookies() && time.Since(start) > 5*time.Second {
				repaired = true
				t.Logf("no socket cookies: after 5s %s; reconciling", detail)
				if err := c.Reconcile(); err != nil {
					detail += "; reconcile: " + err.Error()
				}
			}
		}()
		left, example := 0, ""
		seen := map[string]bool{}
		for _, v := range c.Table().List(time.Now(), collector.ListOptions{}) {
			fd, ok := servers[v.Remote]
			if !ok || v.Local != ln.Addr().String() {
				continue
			}
			seen[v.Remote] = true
			held := false
			for _, h := range v.Holders {
				held = held || (h.PID == pid && h.FD == int32(fd))
			}
			if v.State != collector.StateCloseWait || !held {
				left++
				if example == "" {
					example = fmt.Sprintf("%s: state %v holders %+v (fd %d)", v.Remote, v.State, v.Holders, fd)
				}
			}
		}
		left += len(servers) - len(seen)
		st, err := c.Status()
		return left == 0, fmt.Sprintf("%d not yet (%d not in the table); e.g. %s; reconciles %d -> %d, lost %v -> %v, program misses %v -> %v (status error %v)",
			left, len(servers)-len(seen), example, st0.Reconciles, st.Reconciles, st0.EventsLost, st.EventsLost, st0.ProgramMisses, st.ProgramMisses, err)
	})
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.EventsLost["delta"] != st0.EventsLost["delta"] {
		t.Errorf("deltas lost %d -> %d: want none", st0.EventsLost["delta"], st.EventsLost["delta"])
	}
	if st.Reconciles == st0.Reconciles || repaired {
		return false
	}
	// A reconcile repaired the table: only a loss the agent counted
	// (a program run the kernel skipped, under TCG most often) may have
	// brought it forward, and then this attempt proves nothing.
	if lostSum(st) == lostSum(st0) {
		t.Errorf("reconciles %d -> %d with no loss counted: want the hooks alone", st0.Reconciles, st.Reconciles)
	}
	t.Logf("attempt inconclusive: losses counted %d -> %d brought a reconcile forward (lost %v -> %v, program misses %v -> %v)",
		lostSum(st0), lostSum(st), st0.EventsLost, st.EventsLost, st0.ProgramMisses, st.ProgramMisses)
	return true
}

// lostSum adds up every loss the agent counts: ring records, deltas and
// program runs the kernel skipped.
func lostSum(st collector.Status) uint64 {
	var n uint64
	for _, v := range st.EventsLost {
		n += v
	}
	for _, v := range st.ProgramMisses {
		n += v
	}
	return n
}
