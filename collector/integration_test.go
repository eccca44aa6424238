package collector_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testnet"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// startCollector loads the real programs and runs a collector until the
// test ends.
func startCollector(t *testing.T, cfg collector.Config) *collector.Collector {
	t.Helper()
	privtest.Require(t)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err := collector.New(cfg)
	if err != nil {
		t.Fatalf("start collector: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector run: %v", err)
		}
		c.Close()
	})
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("collector stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("collector not ready after 30s")
	}
	return c
}

// waitFor polls the table until match finds a connection, for up to 10s.
// It returns the match.
func waitFor(t *testing.T, c *collector.Collector, what string, match func(*collector.ConnView) bool) collector.ConnView {
	t.Helper()
	var found collector.ConnView
	testutil.Eventually(t, 10*time.Second, what, func() (bool, string) {
		conns := c.Table().List(time.Now(), collector.ListOptions{Closed: true, History: true, Match: match})
		if len(conns) > 0 {
			found = conns[len(conns)-1]
			return true, ""
		}
		// TIME_WAIT sockets (thousands after a churn) are only counted:
		// CI keeps the end of a failing run's output, and the line that
		// names what was awaited must stay in it.
		all := c.Table().List(time.Now(), collector.ListOptions{Closed: true})
		var b strings.Builder
		timeWait := 0
		for _, v := range all {
			if v.State == collector.StateTimeWait {
				timeWait++
				continue
			}
			fmt.Fprintf(&b, "\n  %s %s -> %s cookie=%d closed_at=%v closed_by=%+v holders=%+v", v.State, v.Local, v.Remote, v.Cookie, v.ClosedAt, v.ClosedBy, v.Holders)
		}
		return false, fmt.Sprintf("table has (%d TIME_WAIT not listed):%s\nwaiting for %s", timeWait, b.String(), what)
	})
	return found
}

func tuple(local, remote string, state collector.State) func(*collector.ConnView) bool {
	return func(v *collector.ConnView) bool {
		return v.Local == local && v.Remote == remote && v.State == state
	}
}

// pair opens a loopback connection and returns both ends.
func pair(t *testing.T, network, addr string) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- s
	}()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

// TestLoopbackLifecycle follows both ends of a loopback connection from
// dial to close. Unwatched, the kernel reports only the transitions the
// table acts on (ESTABLISHED, leaving it, CLOSE_WAIT, CLOSE) and folds the
// rest; while a watch client is subscribed, it streams every transition,
// and the watcher sees each one.
func TestLoopbackLifecycle(t *testing.T) {
	c := startCollector(t, collector.Config{})
	for _, watched := range []bool{false, true} {
		for _, tc := range []struct{ network, addr, family string }{
			{"tcp4", "127.0.0.1:0", "ipv4"},
			{"tcp6", "[::1]:0", "ipv6"},
		} {
			name := tc.family + "/unwatched"
			if watched {
				name = tc.family + "/watched"
			}
			t.Run(name, func(t *testing.T) { loopbackLifecycle(t, c, tc.network, tc.addr, tc.family, watched) })
		}
	}
}

func loopbackLifecycle(t *testing.T, c *collector.Collector, network, addr, family string, watched bool) {
	var sub *collector.Subscription
	if watched {
		var err error
		if sub, err = c.Table().Subscribe(1024); err != nil {
			t.Fatal(err)
		}
		defer sub.Cancel()
	}
	client, server := pair(t, network, addr)
	cl, sl := client.LocalAddr().String(), server.LocalAddr().String()

	cv := waitFor(t, c, "client ESTABLISHED", tuple(cl, sl, collector.StateEstablished))
	sv := waitFor(t, c, "server ESTABLISHED", tuple(sl, cl, collector.StateEstablished))
	for _, v := range []collector.ConnView{cv, sv} {
		if v.Family != family {
			t.Errorf("%s: family %q, want %q", v.Local, v.Family, family)
		}
		if v.Cookie == 0 {
			t.Errorf("%s: no cookie", v.Local)
		}
	}
	if cv.Opener == nil || cv.Opener.PID != uint32(os.Getpid()) {
		t.Errorf("client opener %+v: want pid %d", cv.Opener, os.Getpid())
	}

	client.Close()
	// The closing side goes through FIN_WAIT into TIME_WAIT (its full
	// socket reports CLOSE); the other side sees the FIN.
	waitFor(t, c, "server CLOSE_WAIT", tuple(sl, cl, collector.StateCloseWait))
	server.Close()
	// By id and addresses: where ids are derived from the socket's address
	// (5.10), a closed listener of an earlier run whose memory this socket
	// took is in the closed history under the same id.
	closed := waitFor(t, c, "client closed", func(v *collector.ConnView) bool {
		return v.Cookie == cv.Cookie && v.State == collector.StateClose && v.Remote == sl
	})
	serverClosed := waitFor(t, c, "server closed", func(v *collector.ConnView) bool {
		return v.Cookie == sv.Cookie && v.State == collector.StateClose && v.Remote == cl
	})
	// The kernel's transitions; a snapshot racing the reader may add a
	// TIME_WAIT of its own (the time-wait socket keeps the cookie).
	kernelStates := func(v collector.ConnView) string {
		var states []collector.State
		for _, tr := range v.History {
			if tr.Source == "kernel" {
				states = append(states, tr.To)
			}
		}
		return fmt.Sprint(states)
	}
	wantClient := []collector.State{collector.StateEstablished, collector.StateFinWait1, collector.StateClose}
	wantServer := []collector.State{collector.StateEstablished, collector.StateCloseWait, collector.StateClose}
	if watched {
		wantClient = []collector.State{collector.StateSynSent, collector.StateEstablished, collector.StateFinWait1, collector.StateFinWait2, collector.StateClose}
		wantServer = []collector.State{collector.StateSynRecv, collector.StateEstablished, collector.StateCloseWait, collector.StateLastAck, collector.StateClose}
	}
	if got := kernelStates(closed); got != fmt.Sprint(wantClient) {
		t.Errorf("client transitions %v, want %v", got, wantClient)
	}
	if watched && len(serverClosed.History) > 0 && serverClosed.History[0].To == collector.StateEstablished {
		// Some kernels (Debian's 6.1 among them) create the child socket
		// in SYN_RECV without a traced transition.
		wantServer = wantServer[1:]
	}
	if got := kernelStates(serverClosed); got != fmt.Sprint(wantServer) {
		t.Errorf("server transitions %v, want %v", got, wantServer)
	}
	if !watched {
		return
	}
	// The watcher saw every transition of the client, in order.
	var seen []collector.State
	testutil.Eventually(t, 5*time.Second, "the watcher to see the client's transitions", func() (bool, string) {
		for {
			select {
			case ch := <-sub.C:
				if ch.Type == "state" && ch.Cookie == cv.Cookie && ch.Source == "kernel" {
					seen = append(seen, ch.State)
				}
				continue
			default:
			}
			break
		}
		return fmt.Sprint(seen) == fmt.Sprint(wantClient), fmt.Sprintf("watcher saw %v, want %v", seen, wantClient)
	})
}

func TestConnectionBeforeAgentIsSeeded(t *testing.T) {
	privtest.Require(t)
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer client.Close()
	defer server.Close()
	c := startCollector(t, collector.Config{})
	// Ready means seeded: no waiting.
	conns := c.Table().List(time.Now(), collector.ListOptions{Match: tuple(client.LocalAddr().String(), server.LocalAddr().String(), collector.StateEstablished)})
	if len(conns) != 1 {
		t.Fatalf("pre-existing connection not in the table once ready (found %d)", len(conns))
	}
	v := conns[0]
	if len(v.Holders) == 0 || v.Holders[0].PID != uint32(os.Getpid()) {
		t.Errorf("holders %+v, want this process %d", v.Holders, os.Getpid())
	}
	if v.IdleSeconds == nil {
		t.Error("seeded connection has no idle time")
	}
}

// fdOf returns the fd number behind a net.Conn or net.Listener.
func fdOf(t *testing.T, conn any) int {
	t.Helper()
	raw, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

func socketInode(t *testing.T, pid, fd int) uint64 {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		t.Fatalf("/proc/%d/fd/%d is %q, not a socket", pid, fd, link)
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func TestHoldersMatchProc(t *testing.T) {
	c := startCollector(t, collector.Config{})
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer client.Close()
	defer server.Close()
	if err := c.Reconcile(); err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	for _, end := range []struct {
		name string
		conn net.Conn
	}{{"client", client}, {"server", server}} {
		fd := fdOf(t, end.conn)
		ino := socketInode(t, pid, fd)
		v := waitFor(t, c, end.name, tuple(end.conn.LocalAddr().String(), end.conn.RemoteAddr().String(), collector.StateEstablished))
		if v.Inode != ino {
			t.Errorf("%s: inode %d, /proc/%d/fd/%d says %d", end.name, v.Inode, pid, fd, ino)
		}
		if len(v.Holders) != 1 || v.Holders[0].PID != uint32(pid) || v.Holders[0].FD != int32(fd) {
			t.Errorf("%s: holders %+v, want pid %d fd %d", end.name, v.Holders, pid, fd)
		}
	}
}

func TestCloseOfDupReportsRemainingReferences(t *testing.T) {
	c := startCollector(t, collector.Config{})
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer client.Close()
	defer server.Close()
	fd := fdOf(t, client)
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Close(dup); err != nil {
		t.Fatal(err)
	}
	v := waitFor(t, c, "close record", func(v *collector.ConnView) bool {
		return v.Local == client.LocalAddr().String() && v.ClosedBy != nil
	})
	cb := v.ClosedBy
	if cb.PID != uint32(os.Getpid()) || cb.FD != int32(dup) || cb.RefsLeft != 1 || cb.Op != "close" {
		t.Errorf("closed_by %+v, want pid %d fd %d refs_left 1 op close", cb, os.Getpid(), dup)
	}
	if v.State != collector.StateEstablished {
		t.Errorf("state %s after closing a dup, want ESTABLISHED", v.State)
	}

	// dup2 over an fd that holds a socket closes it too.
	dup, err = unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	if err := unix.Dup2(int(devnull.Fd()), dup); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	waitFor(t, c, "dup2 close record", func(v *collector.ConnView) bool {
		cb := v.ClosedBy
		return v.Local == client.LocalAddr().String() && cb != nil && cb.FD == int32(dup) && (cb.Op == "dup2" || cb.Op == "dup3")
	})

	// close_range over a stretch of fds that holds a copy of the socket:
	// hooked only where the kernel has bpf_loop (5.17), and where not, the
	// agent says so.
	if lacks := bpf.KernelLacks(bpf.ProgCloseRange); lacks != "" {
		st, err := c.Status()
		if err != nil {
			t.Fatal(err)
		}
		if why := st.Programs[bpf.ProgCloseRange]; !strings.Contains(why, lacks) {
			t.Errorf("status of %s: %q, want the missing %s named", bpf.ProgCloseRange, why, lacks)
		}
		return
	}
	high := 700
	if err := unix.Dup2(fd, high); err != nil {
		t.Fatal(err)
	}
	if err := unix.CloseRange(uint(high-50), uint(high+50), 0); err != nil {
		t.Fatal(err)
	}
	v = waitFor(t, c, "close_range record", func(v *collector.ConnView) bool {
		cb := v.ClosedBy
		return v.Local == client.LocalAddr().String() && cb != nil && cb.Op == "close_range"
	})
	if v.ClosedBy.FD != int32(high) || v.ClosedBy.RefsLeft != 1 {
		t.Errorf("close_range record %+v, want fd %d with 1 reference left", v.ClosedBy, high)
	}
}

func TestKeepaliveFiringAndSettings(t *testing.T) {
	c := startCollector(t, collector.Config{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err == nil {
			defer s.Close()
			io.Copy(io.Discard, s)
		}
	}()
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 4}}
	client, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	v := waitFor(t, c, "a keepalive firing", func(v *collector.ConnView) bool {
		return v.Local == client.LocalAddr().String() && v.KeepaliveFirings > 0
	})
	want := collector.Keepalive{Enabled: true, IdleSeconds: 1, IntervalSeconds: 1, Count: 4, Source: "socket"}
	if v.Keepalive != want {
		t.Errorf("keepalive %+v, want %+v", v.Keepalive, want)
	}
}

func TestRetransmitAcrossNamespaces(t *testing.T) {
	c := startCollector(t, collector.Config{})
	nsA, nsB := testnet.Netns(t), testnet.Netns(t)
	testnet.Veth(t, nsA, nsB, "10.231.0.1/24", "10.231.0.2/24")
	const port = 18181
	// Namespace A has its own keepalive default, which its sockets must
	// report rather than the agent's.
	testnet.Cmd(t, "ip", "netns", "exec", nsA, "sysctl", "-qw", "net.ipv4.tcp_keepalive_time=77")

	var ln net.Listener
	testnet.In(t, nsB, func() {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("10.231.0.2:%d", port))
		if err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, _ := ln.Accept()
		accepted <- s
	}()
	var client net.Conn
	testnet.In(t, nsA, func() {
		var err error
		// No keepalive of its own: the namespace's sysctl applies.
		d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
		client, err = d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
	})
	if client == nil {
		t.FailNow()
	}
	defer client.Close()
	server := <-accepted
	defer server.Close()

	// Both ends are listed, in their own namespaces, with this process as
	// holder: the agent lives in neither namespace.
	if err := c.Reconcile(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(os.Getpid())
	cl, sl := client.LocalAddr().String(), server.LocalAddr().String()
	cv := waitFor(t, c, "client in namespace A", tuple(cl, sl, collector.StateEstablished))
	sv := waitFor(t, c, "server in namespace B", tuple(sl, cl, collector.StateEstablished))
	if cv.Netns == sv.Netns {
		t.Errorf("both ends report netns %d", cv.Netns)
	}
	if want := (collector.Keepalive{Enabled: false, IdleSeconds: 77, IntervalSeconds: 75, Count: 9, Source: "sysctl"}); cv.Keepalive != want {
		t.Errorf("client keepalive %+v, want namespace A's default %+v", cv.Keepalive, want)
	}
	for _, v := range []collector.ConnView{cv, sv} {
		if len(v.Holders) != 1 || v.Holders[0].PID != pid {
			t.Errorf("%s: holders %+v, want this process", v.Local, v.Holders)
		}
	}

	// B now drops everything on the port: the client's data is never
	// acknowledged and it retransmits.
	testnet.DropInput(t, nsB, port)
	if _, err := client.Write([]byte("hello?")); err != nil {
		t.Fatal(err)
	}
	v := waitFor(t, c, "retransmits on the client", func(v *collector.ConnView) bool {
		return v.Cookie == cv.Cookie && v.Retransmits >= 2 && v.RTORetransmits >= 1
	})
	if v.State != collector.StateEstablished {
		t.Errorf("state %s, want ESTABLISHED", v.State)
	}
}

func TestRingBufferLossIsCountedAndReconciled(t *testing.T) {
	// A 64 KiB ring drained every 2s (the kernel never wakes the reader
	// for an end record): 200 connections are announced, then a burst of
	// aborted connections fills the ring and 100 of the 200 are aborted
	// behind it, their end records lost. Reconcile runs every hour on its
	// own; the loss must bring it forward (once a second passes without
	// more, and 5s after the seeding reconcile), and its sweep retires
	// the 100. The ring is big enough, and drained often enough, that
	// other tests' sockets on the host do not keep the loss going.
	const converge = 11 * time.Second
	c := startCollector(t, collector.Config{
		RingBufferBytes:   64 << 10,
		PollInterval:      2 * time.Second,
		ReconcileInterval: time.Hour,
	})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n, flood = 200, 400
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { s.Close() })
		}
	}()
	server := ln.Addr().String()
	var clients []*net.TCPConn
	for i := 0; i < n; i++ {
		cl, err := net.Dial("tcp4", server)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		clients = append(clients, cl.(*net.TCPConn))
	}
	clientEnds := func() map[string]bool {
		got := map[string]bool{}
		for _, v := range c.Table().List(time.Now(), collector.ListOptions{}) {
			if v.Remote == server && v.State == collector.StateEstablished {
				got[v.Local] = true
			}
		}
		return got
	}
	sameEnds := func(want map[string]bool) (bool, string) {
		got := clientEnds()
		var missing, extra []string
		for l := range want {
			if !got[l] {
				missing = append(missing, l)
			}
		}
		for l := range got {
			if !want[l] {
				extra = append(extra, l)
			}
		}
		return len(missing) == 0 && len(extra) == 0, fmt.Sprintf("table has %d client ends ESTABLISHED, kernel has %d; missing %v; not in the kernel %v", len(got), len(want), missing, extra)
	}
	want := map[string]bool{}
	for _, cl := range clients {
		want[cl.LocalAddr().String()] = true
	}
	testutil.Eventually(t, converge, "all 200 client ends announced", func() (bool, string) { return sameEnds(want) })
	before, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	// SO_LINGER 0: a close sends a RST, so both ends reach CLOSE at once,
	// each with its end record.
	for i := 0; i < flood; i++ {
		cl, err := net.Dial("tcp4", server)
		if err != nil {
			t.Fatal(err)
		}
		cl.(*net.TCPConn).SetLinger(0)
		cl.Close()
	}
	for _, cl := range clients[:n/2] {
		delete(want, cl.LocalAddr().String())
		cl.SetLinger(0)
		cl.Close()
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.EventsLost["state"] == before.EventsLost["state"] {
		t.Fatalf("no loss counted after %d aborted connections into a 64 KiB ring: %+v", flood+n/2, st.EventsLost)
	}
	// The same count is what Prometheus scrapes, between two status reads.
	reg := prometheus.NewRegistry()
	reg.MustRegister(exporter.NewMetrics(c, exporter.MetricsOptions{}))
	scraped := lostMetric(t, reg, "state")
	st2, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if scraped < float64(st.EventsLost["state"]) || scraped > float64(st2.EventsLost["state"]) {
		t.Errorf(`ghostconn_events_lost_total{event="state"} = %v, want between %d and %d (status before and after)`, scraped, st.EventsLost["state"], st2.EventsLost["state"])
	}
	// Within seconds of the loss (not the hour), the table has the 100
	// client ends still open, as the kernel has them, and a reconcile ran.
	burstDone := time.Now()
	testutil.Eventually(t, converge, "the table as the kernel has it after the loss brought a reconcile forward", func() (bool, string) {
		ok, why := sameEnds(want)
		st, err := c.Status()
		if err != nil {
			return false, err.Error()
		}
		if st.Reconciles == before.Reconciles {
			return false, fmt.Sprintf("no reconcile since the loss (%d in all); %s", st.Reconciles, why)
		}
		return ok, why
	})
	t.Logf("converged %s after the burst (reconcile interval 1h)", time.Since(burstDone).Round(time.Millisecond))
	st2, _ = c.Status()
	t.Logf("lost %d state events; reconcile removed %d connections", st2.EventsLost["state"]-before.EventsLost["state"], st2.ReconcileRemoved)
}

// lostMetric gathers reg and returns ghostconn_events_lost_total for event.
func lostMetric(t *testing.T, reg *prometheus.Registry, event string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ghostconn_events_lost_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == event {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf(`no ghostconn_events_lost_total{event=%q} in the scrape`, event)
	return 0
}
