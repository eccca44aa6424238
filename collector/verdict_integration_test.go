package collector_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/testnet"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// TestMain lets the test binary double as a helper process that receives
// an fd over SCM_RIGHTS and keeps it.
func TestMain(m *testing.M) {
	switch os.Getenv("GHOSTCONN_TEST_HELPER") {
	case "recvfd":
		recvFDHelper()
		return
	case "writefd":
		// A worker handed a connection on fd 3: it answers when told (a
		// line on stdin), then holds the connection until stdin closes.
		in := bufio.NewReader(os.Stdin)
		in.ReadString('\n')
		unix.Write(3, []byte("hello\n"))
		in.ReadString('\n')
		return
	}
	os.Exit(m.Run())
}

// recvFDHelper receives one fd on the unix socket at fd 3, prints its
// number, and holds it until stdin closes.
func recvFDHelper() {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(3, buf, oob, 0)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("fd", fds[0])
	bufio.NewReader(os.Stdin).ReadString('\n')
}

var verdictTestConfig = collector.VerdictConfig{
	GhostGrace:       2 * time.Second,
	CloseWaitAfter:   2 * time.Second,
	SilentAfter:      3 * time.Second,
	UnresponsiveRTOs: 2,
}

func startVerdictCollector(t *testing.T) *collector.Collector {
	t.Helper()
	cfg := collector.DefaultTableConfig
	cfg.Verdicts = verdictTestConfig
	return startCollector(t, collector.Config{Table: cfg})
}

func verdictOf(v *collector.ConnView, kind string) *collector.Verdict {
	for i := range v.Verdicts {
		if v.Verdicts[i].Kind == kind {
			return &v.Verdicts[i]
		}
	}
	return nil
}

// waitVerdict waits until the live connection local->remote carries kind,
// and returns it with the time it was seen.
func waitVerdict(t *testing.T, c *collector.Collector, local, remote net.Addr, kind string) (collector.ConnView, time.Time) {
	t.Helper()
	v := waitFor(t, c, kind+" on "+local.String(), func(v *collector.ConnView) bool {
		return v.Local == local.String() && v.Remote == remote.String() && v.ClosedAt == nil && verdictOf(v, kind) != nil
	})
	return v, time.Now()
}

// waitCleared waits until the connection with cookie carries no verdict of
// kind (or is gone).
func waitCleared(t *testing.T, c *collector.Collector, cookie uint64, kind string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the %s verdict on cookie %d to clear", kind, cookie), func() (bool, string) {
		still := c.Table().List(time.Now(), collector.ListOptions{Match: func(v *collector.ConnView) bool {
			return v.Cookie == cookie && verdictOf(v, kind) != nil
		}})
		if len(still) == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("still flagged: %+v", still[0].Verdicts)
	})
}

func checkGhost(t *testing.T, v collector.ConnView, closedAt, seen time.Time, closerFD int, holderPID uint32, holderFD int) {
	t.Helper()
	// The verdict comes from the check scheduled at the close plus the
	// grace, not from the next full pass (a reconcile, 30 s away): any lag
	// well below that shows the schedule at work. The margin is for
	// emulated guests, where a poll of the table alone can take 100s of ms
	// (3.03 s was seen under TCG beside another guest; natively ~2.1 s).
	const margin = 5 * time.Second
	if lag := seen.Sub(closedAt); lag > verdictTestConfig.GhostGrace+margin {
		t.Errorf("ghost flagged %s after the close, want within grace+%s (%s): not by the scheduled check", lag, margin, verdictTestConfig.GhostGrace+margin)
	}
	cb := v.ClosedBy
	if cb == nil || cb.PID != uint32(os.Getpid()) || cb.FD != int32(closerFD) {
		t.Errorf("closed_by %+v, want pid %d fd %d", cb, os.Getpid(), closerFD)
	}
	if len(v.Holders) != 1 || v.Holders[0].PID != holderPID || v.Holders[0].FD != int32(holderFD) {
		t.Errorf("holders %+v, want pid %d fd %d", v.Holders, holderPID, holderFD)
	}
	g := verdictOf(&v, collector.VerdictGhost)
	for _, want := range []string{fmt.Sprintf("pid %d", os.Getpid()), fmt.Sprintf("closed fd %d", closerFD), fmt.Sprintf("pid %d, fd %d", holderPID, holderFD)} {
		if !strings.Contains(g.Detail, want) {
			t.Errorf("ghost detail %q lacks %q", g.Detail, want)
		}
	}
}

func TestGhostFromTCPConnFile(t *testing.T) {
	c := startVerdictCollector(t)
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer server.Close()
	fd := fdOf(t, client)
	f, err := client.(*net.TCPConn).File() // the dup a library forgets
	if err != nil {
		t.Fatal(err)
	}
	local, remote := client.LocalAddr(), client.RemoteAddr()
	client.Close()
	closedAt := time.Now()

	v, seen := waitVerdict(t, c, local, remote, collector.VerdictGhost)
	checkGhost(t, v, closedAt, seen, fd, uint32(os.Getpid()), int(f.Fd()))

	f.Close() // the last copy: the socket closes and the verdict clears
	waitCleared(t, c, v.Cookie, collector.VerdictGhost)
}

func TestGhostInheritedByChild(t *testing.T) {
	c := startVerdictCollector(t)
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer server.Close()
	fd := fdOf(t, client)
	f, err := client.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	child.ExtraFiles = []*os.File{f} // fd 3 in the child, no CLOEXEC there
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		child.Process.Kill()
		child.Wait()
	}()
	f.Close()
	local, remote := client.LocalAddr(), client.RemoteAddr()
	client.Close()
	closedAt := time.Now()

	v, seen := waitVerdict(t, c, local, remote, collector.VerdictGhost)
	checkGhost(t, v, closedAt, seen, fd, uint32(child.Process.Pid), 3)
	if v.Holders[0].Comm != "sleep" {
		t.Errorf("holder comm %q, want sleep", v.Holders[0].Comm)
	}

	child.Process.Kill()
	child.Wait()
	waitCleared(t, c, v.Cookie, collector.VerdictGhost)
}

func TestGhostPassedOverSCMRights(t *testing.T) {
	c := startVerdictCollector(t)
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer server.Close()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "mine"), os.NewFile(uintptr(pair[1]), "theirs")
	defer mine.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	recv := exec.Command(exe)
	recv.Env = append(os.Environ(), "GHOSTCONN_TEST_HELPER=recvfd")
	recv.ExtraFiles = []*os.File{theirs}
	stdin, err := recv.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := recv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	defer func() {
		stdin.Close()
		recv.Wait()
	}()

	fd := fdOf(t, client)
	if err := unix.Sendmsg(pair[0], []byte{0}, unix.UnixRights(fd), nil, 0); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var gotFD int
	if _, err := fmt.Sscanf(line, "fd %d", &gotFD); err != nil {
		t.Fatalf("helper said %q", line)
	}
	local, remote := client.LocalAddr(), client.RemoteAddr()
	client.Close()
	closedAt := time.Now()

	v, seen := waitVerdict(t, c, local, remote, collector.VerdictGhost)
	checkGhost(t, v, closedAt, seen, fd, uint32(recv.Process.Pid), gotFD)

	stdin.Close()
	recv.Wait()
	waitCleared(t, c, v.Cookie, collector.VerdictGhost)
}

// TestNoFalseGhosts drives the patterns that close fds of live sockets
// legitimately and checks that no ghost is ever raised.
func TestNoFalseGhosts(t *testing.T) {
	c := startVerdictCollector(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted []net.Conn
	acceptCh := make(chan net.Conn, 2000)
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			acceptCh <- s
		}
	}()
	dial := func() (net.Conn, net.Conn) {
		cl, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s := <-acceptCh
		accepted = append(accepted, s)
		return cl, s
	}
	defer func() {
		for _, s := range accepted {
			s.Close()
		}
	}()

	// A normal close.
	cl, _ := dial()
	cl.Close()
	// Shutdown, then close.
	cl, _ = dial()
	cl.(*net.TCPConn).CloseWrite()
	cl.Close()
	// A half-close that stays open.
	half, _ := dial()
	defer half.Close()
	half.(*net.TCPConn).CloseWrite()
	// Both copies closed within the grace period.
	cl, _ = dial()
	dup, err := unix.Dup(fdOf(t, cl))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(dup)
	cl.Close()
	// A listening socket with a copy closed.
	ldup, err := unix.Dup(fdOf(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(ldup)
	// A forking server: the child writes on the connection after the
	// parent closes its copy (sshd does this for every session).
	cl, s := dial()
	defer cl.Close()
	f, err := s.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	worker := exec.Command(exe)
	worker.Env = append(os.Environ(), "GHOSTCONN_TEST_HELPER=writefd")
	worker.ExtraFiles = []*os.File{f}
	workerIn, err := worker.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		workerIn.Close()
		worker.Wait()
	}()
	f.Close()
	s.Close()
	// The worker answers after the parent's close, as a forked server
	// child does.
	if _, err := io.WriteString(workerIn, "go\n"); err != nil {
		t.Fatal(err)
	}
	// 1,000 churned connections.
	for i := 0; i < 1000; i++ {
		cl, s := dial()
		cl.Close()
		s.Close()
	}

	// Not synchronisation: what is under test is that nothing fires, so
	// wall time must pass beyond the ghost grace period of the last close.
	time.Sleep(verdictTestConfig.GhostGrace + 2*time.Second)
	// The forking server's connection is held by the worker and still open.
	if err := c.Reconcile(); err != nil {
		t.Fatal(err)
	}
	c.Table().Evaluate(time.Now())
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if n := st.VerdictsRaised[collector.VerdictGhost]; n != 0 {
		ghosts := c.Table().List(time.Now(), collector.ListOptions{Match: func(v *collector.ConnView) bool { return verdictOf(v, collector.VerdictGhost) != nil }})
		t.Errorf("%d ghosts raised, want none: %+v", n, ghosts)
	}
	handoff := waitFor(t, c, "the forking server's connection", tuple(s.LocalAddr().String(), s.RemoteAddr().String(), collector.StateEstablished))
	if handoff.ClosedBy == nil || len(handoff.Holders) != 1 || handoff.Holders[0].PID != uint32(worker.Process.Pid) {
		t.Errorf("handoff connection: closed_by %+v holders %+v, want a close record and the worker as holder", handoff.ClosedBy, handoff.Holders)
	}
}

func TestCloseWait(t *testing.T) {
	c := startVerdictCollector(t)
	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer server.Close() // the server never closes in time
	client.Close()
	v, _ := waitVerdict(t, c, server.LocalAddr(), server.RemoteAddr(), collector.VerdictCloseWait)
	cw := verdictOf(&v, collector.VerdictCloseWait)
	if v.State != collector.StateCloseWait {
		t.Errorf("state %s, want CLOSE_WAIT", v.State)
	}
	if got := cw.Since.Sub(v.StateSince); got != verdictTestConfig.CloseWaitAfter {
		t.Errorf("since is %s after entering CLOSE_WAIT, want %s", got, verdictTestConfig.CloseWaitAfter)
	}
	if want := fmt.Sprintf("pid %d, fd %d", os.Getpid(), fdOf(t, server)); !strings.Contains(cw.Detail, want) {
		t.Errorf("detail %q does not name the holder (%s)", cw.Detail, want)
	}
	// A connection that has only just entered CLOSE_WAIT is not flagged.
	c2, s2 := pair(t, "tcp4", "127.0.0.1:0")
	defer s2.Close()
	c2.Close()
	fresh := waitFor(t, c, "fresh CLOSE_WAIT", tuple(s2.LocalAddr().String(), s2.RemoteAddr().String(), collector.StateCloseWait))
	if verdictOf(&fresh, collector.VerdictCloseWait) != nil {
		t.Errorf("flagged right after entering CLOSE_WAIT: %+v", fresh.Verdicts)
	}
	// Closing clears it.
	server.Close()
	waitCleared(t, c, v.Cookie, collector.VerdictCloseWait)
}

func TestSilent(t *testing.T) {
	c := startVerdictCollector(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			// Echo, so heartbeats go both ways; otherwise stay quiet.
			go func() {
				defer s.Close()
				buf := make([]byte, 64)
				for {
					n, err := s.Read(buf)
					if err != nil {
						return
					}
					s.Write(buf[:n])
				}
			}()
		}
	}()
	dial := func(ka net.KeepAliveConfig, keepAlive time.Duration) net.Conn {
		d := net.Dialer{KeepAlive: keepAlive, KeepAliveConfig: ka}
		cl, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	noKA := dial(net.KeepAliveConfig{}, -1)
	shortKA := dial(net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 3}, 0)
	longKA := dial(net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: time.Second, Count: 3}, 0)
	beating := dial(net.KeepAliveConfig{}, -1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		buf := make([]byte, 1)
		for {
			select {
			case <-stop:
				return
			// A beat every 250ms: twelve to the 3s threshold (a beat a
			// second was flagged once, on 6.12 under TCG beside another
			// guest, where the test process stalled for seconds).
			case <-time.After(250 * time.Millisecond):
			}
			if _, err := beating.Write([]byte{'.'}); err != nil {
				return
			}
			beating.Read(buf)
		}
	}()

	v, _ := waitVerdict(t, c, noKA.LocalAddr(), noKA.RemoteAddr(), collector.VerdictSilent)
	if d := verdictOf(&v, collector.VerdictSilent).Detail; !strings.Contains(d, "keepalive is off") {
		t.Errorf("no-keepalive detail %q does not say keepalive is off", d)
	}
	v, _ = waitVerdict(t, c, longKA.LocalAddr(), longKA.RemoteAddr(), collector.VerdictSilent)
	if d := verdictOf(&v, collector.VerdictSilent).Detail; !strings.Contains(d, "keepalive idle 10s, set on the socket") {
		t.Errorf("long-keepalive detail %q does not explain the keepalive", d)
	}
	// Give the others the same time and more: they must stay clean. Not
	// synchronisation: the test is that nothing is raised on them while
	// this time passes.
	time.Sleep(2 * time.Second)
	for _, cl := range []net.Conn{shortKA, beating} {
		views := c.Table().List(time.Now(), collector.ListOptions{Match: tuple(cl.LocalAddr().String(), cl.RemoteAddr().String(), collector.StateEstablished)})
		if len(views) != 1 {
			t.Fatalf("%s not in table", cl.LocalAddr())
		}
		if verdictOf(&views[0], collector.VerdictSilent) != nil {
			t.Errorf("%s flagged silent: %+v", cl.LocalAddr(), views[0].Verdicts)
		}
	}
	st, _ := c.Status()
	t.Logf("silent verdicts raised: %d, targeted refreshes: %d", st.VerdictsRaised[collector.VerdictSilent], st.Refreshes)
}

func TestUnresponsive(t *testing.T) {
	c := startVerdictCollector(t)
	nsA, nsB := testnet.Netns(t), testnet.Netns(t)
	testnet.Veth(t, nsA, nsB, "10.232.0.1/24", "10.232.0.2/24")
	const port = 18282
	var ln net.Listener
	testnet.In(t, nsB, func() {
		var err error
		if ln, err = net.Listen("tcp4", "10.232.0.2:"+strconv.Itoa(port)); err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { s.Close() })
		}
	}()
	var sender, prober net.Conn
	testnet.In(t, nsA, func() {
		var err error
		if sender, err = (&net.Dialer{KeepAlive: -1}).Dial("tcp4", ln.Addr().String()); err != nil {
			t.Error(err)
			return
		}
		d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}}
		if prober, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Error(err)
		}
	})
	if sender == nil || prober == nil {
		t.FailNow()
	}
	defer sender.Close()
	defer prober.Close()
	// Let the prober's first keepalive be answered, then cut the peer off.
	// Nothing but a keepalive makes the peer ACK after the handshake, so
	// an ACK received well after the dial (tcpi_last_ack_recv, ms ago) is
	// the answer.
	dialed := time.Now()
	testutil.Eventually(t, 10*time.Second, "the prober's first keepalive to be answered", func() (bool, string) {
		info, err := unix.GetsockoptTCPInfo(fdOf(t, prober), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatalf("TCP_INFO of the prober: %v", err)
		}
		lastAck := time.Now().Add(-time.Duration(info.Last_ack_recv) * time.Millisecond)
		return lastAck.Sub(dialed) > 500*time.Millisecond, fmt.Sprintf("last ACK received %dms ago, %s after the dial", info.Last_ack_recv, lastAck.Sub(dialed).Round(time.Millisecond))
	})
	testnet.DropInput(t, nsB, port)
	if _, err := sender.Write([]byte("anyone there?")); err != nil {
		t.Fatal(err)
	}

	v, _ := waitVerdict(t, c, sender.LocalAddr(), sender.RemoteAddr(), collector.VerdictUnresponsive)
	u := verdictOf(&v, collector.VerdictUnresponsive)
	if u.GiveUp == nil || !strings.Contains(u.Detail, "net.ipv4.tcp_retries2=15") || !strings.Contains(u.Detail, "consecutive retransmission timeouts") {
		t.Errorf("data-pending verdict %+v: want a give-up time from tcp_retries2", u)
	} else if got := u.GiveUp.Sub(u.Since); got < 900*time.Second || got > 950*time.Second {
		t.Errorf("give-up %s after the first retransmission, want about 924.6s for tcp_retries2=15", got)
	}

	v, _ = waitVerdict(t, c, prober.LocalAddr(), prober.RemoteAddr(), collector.VerdictUnresponsive)
	u = verdictOf(&v, collector.VerdictUnresponsive)
	if u.GiveUp == nil || !strings.Contains(u.Detail, "keepalive probe(s) unanswered") || !strings.Contains(u.Detail, "keepalive count 5 x interval 1s") {
		t.Errorf("keepalive verdict %+v: want unanswered probes and a give-up from count x interval", u)
	} else if left := u.GiveUp.Sub(u.Since); left > 5*time.Second+500*time.Millisecond {
		// Since stays where the verdict was first raised, but the give-up
		// is recomputed from the latest keepalive firing (the last probe
		// plus the probes left x interval), so each timer firing that comes
		// late (timer slack; qemu TCG) moves it later by that lateness: CI
		// saw 5.0198s. Allow 500ms of that on top of count x interval.
		t.Errorf("give-up %s after the probe, want at most count x interval = 5s plus 500ms of keepalive timer lateness", left)
	}
	if v.ProbesOut == 0 {
		t.Errorf("probes_out is 0 on the unresponsive prober")
	}
}
