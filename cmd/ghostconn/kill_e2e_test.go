package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/testnet"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// killGhost makes a ghost on a fresh listener: the application closes its
// connection while a TCPConn.File dup keeps the socket open. It returns
// the listener, the dup (the holder) and the peer's end.
func killGhost(t *testing.T) (ln net.Listener, dup *os.File, peer net.Conn, local, remote string) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if peer, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	if dup, err = c.(*net.TCPConn).File(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dup.Close() })
	local, remote = c.LocalAddr().String(), c.RemoteAddr().String()
	c.Close()
	return ln, dup, peer, local, remote
}

// waitVerdict waits until ls shows the connection local -> remote with
// the verdict, and returns it.
func waitVerdict(t *testing.T, sock, local, remote, verdict string, timeout time.Duration) collector.ConnView {
	t.Helper()
	var v collector.ConnView
	testutil.Eventually(t, timeout, local+" -> "+remote+" flagged "+verdict, func() (bool, string) {
		c := find(lsJSON(t, "--api-socket", sock, "--verdict", verdict), local, remote)
		if c == nil {
			return false, "not flagged"
		}
		v = *c
		return true, ""
	})
	return v
}

// readErr starts reading c (past any data already sent) and returns where
// the read's error arrives.
func readErr(c net.Conn) <-chan error {
	ch := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				ch <- err
				return
			}
		}
	}()
	return ch
}

// TestKillGhost: a ghost aborted with `kill --verdict ghost --yes`: the
// peer's blocked read gets ECONNRESET within 1s, the holder's next write
// fails, and a bystander on the same listener and the listener itself stay
// up. Before that, without --yes and without a terminal, and with
// --dry-run, nothing changes. The action is in the agent's log with the
// caller, in the connection's history, and in the metrics.
func TestKillGhost(t *testing.T) {
	metrics := freePort(t)
	a := launchAgent(t, "", "", "--ghost-grace", "1s", "--metrics-address", metrics)
	t.Cleanup(func() { a.stop(t) })
	sock := a.sock
	ln, dup, peer, local, remote := killGhost(t)
	by, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer by.Close()
	byPeer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer byPeer.Close()
	v := waitVerdict(t, sock, local, remote, "ghost", 10*time.Second)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	sel := []string{"kill", "--api-socket", sock, "--verdict", "ghost", "--port", port}

	if _, stderr, code := ghostconn(t, "kill", "--api-socket", sock); code != 2 || !strings.Contains(stderr, "refusing to act on every connection") {
		t.Errorf("kill with neither target nor filter: exit %d\n%s", code, stderr)
	}
	if out, stderr, code := ghostconn(t, sel...); code != 2 || !strings.Contains(stderr, "refusing to act without --yes") || !strings.Contains(out, local) {
		t.Errorf("kill without --yes and without a terminal: exit %d\n%s\n%s", code, out, stderr)
	}
	if out, stderr, code := ghostconn(t, append(sel, "--dry-run")...); code != 0 || !strings.Contains(stderr, "dry run: nothing was done") || !strings.Contains(out, "ghost") {
		t.Errorf("kill --dry-run: exit %d\n%s\n%s", code, out, stderr)
	}
	// On a terminal without --yes it asks once; anything but y leaves
	// the connection alone.
	savedTerm, savedInput := stdinTerminal, confirmInput
	stdinTerminal, confirmInput = func() bool { return true }, strings.NewReader("n\n")
	var asked, askedErr bytes.Buffer
	askedCode := run(sel, &asked, &askedErr)
	stdinTerminal, confirmInput = savedTerm, savedInput
	if askedCode != exitNoMatch || strings.Count(askedErr.String(), "Proceed? [y/N]") != 1 || !strings.Contains(askedErr.String(), "nothing was done") {
		t.Errorf("kill on a terminal, answered n: exit %d\n%s", askedCode, askedErr.String())
	}
	if c := find(lsJSON(t, "--api-socket", sock), local, remote); c == nil || c.State != collector.StateEstablished {
		t.Fatalf("the ghost after the refused, declined and dry runs: %+v", c)
	}

	// A watcher sees the action: subscribed once it shows a new
	// connection on the port.
	w := startWatch(t, "--api-socket", sock, "--port", port)
	testutil.Eventually(t, 5*time.Second, "the watch to subscribe", func() (bool, string) {
		if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
			defer c.Close()
			if s, err := ln.Accept(); err == nil {
				s.Close()
			}
		}
		_, ok := w.next(300*time.Millisecond, func(l string) bool { return strings.Contains(l, "ESTABLISHED") })
		return ok, strings.Join(w.seen, "\n")
	})
	read := readErr(peer)
	out, stderr, code := ghostconn(t, append(sel, "--yes")...)
	if code != 0 {
		t.Fatalf("kill --yes: exit %d\n%s\n%s\nagent:\n%s", code, out, stderr, a.logs)
	}
	mustMatch(t, "kill output", out, `abort\s+`+regexpQuote(local)+` -> `+regexpQuote(remote)+` \(cookie \d+, was ESTABLISHED, via (bpf_sock_destroy|sock_diag), now gone\): done`,
		`still held by pid `+strconv.Itoa(os.Getpid())+` \(\S+\) fd `+strconv.Itoa(int(dup.Fd())))
	wantReadErr(t, read, syscall.ECONNRESET, "peer read")
	if _, err := dup.Write([]byte("x")); err == nil {
		t.Error("the holder's write after kill worked")
	}
	if _, err := by.Write([]byte("y")); err != nil {
		t.Errorf("bystander write: %v", err)
	}
	byPeer.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := byPeer.Read(make([]byte, 1)); err != nil {
		t.Errorf("bystander read: %v", err)
	}
	if c, err := net.Dial("tcp4", ln.Addr().String()); err != nil {
		t.Errorf("listener after kill --port %s: %v", port, err)
	} else {
		c.Close()
	}

	if _, ok := w.next(3*time.Second, func(l string) bool {
		return strings.Contains(l, "ACTION abort "+local+" -> "+remote) && strings.Contains(l, "by uid 0 pid ") && strings.HasSuffix(l, ": done")
	}); !ok {
		t.Errorf("watch did not show the action:\n%s", strings.Join(w.seen, "\n"))
	}

	// The audit: log line, history entry, metric.
	testutil.Eventually(t, 2*time.Second, "the action in the agent's log", func() (bool, string) {
		logs := a.logs.String()
		return strings.Contains(logs, "msg=action op=abort cookie="+strconv.FormatUint(v.Cookie, 10)) &&
			strings.Contains(logs, "verdicts=ghost") && strings.Contains(logs, "caller_uid=0") && strings.Contains(logs, "done=true"), logs
	})
	who, stderr, code := ghostconn(t, "who", "--api-socket", sock, "-o", "json", strconv.FormatUint(v.Cookie, 10))
	var views []collector.ConnView
	if err := json.Unmarshal([]byte(who), &views); err != nil || code != 0 || len(views) != 1 {
		t.Fatalf("who: exit %d, %v\n%s\n%s", code, err, who, stderr)
	}
	var act *collector.Action
	for _, tr := range views[0].History {
		if tr.Action != nil {
			act = tr.Action
		}
	}
	if act == nil || act.Op != "abort" || !act.Done || act.UID != 0 || act.PID == 0 || len(act.Verdicts) != 1 || act.Verdicts[0] != "ghost" {
		t.Errorf("history action %+v, want abort of a ghost, done, by uid 0", act)
	}
	if n := scrapeOr0(t, metrics, `ghostconn_sockets_killed_total{mode="abort",verdict="ghost"}`); n != 1 {
		t.Errorf("ghostconn_sockets_killed_total{mode=abort,verdict=ghost} = %v, want 1", n)
	}
}

// wantReadErr waits up to 1s for the read started by readErr to fail with
// want.
func wantReadErr(t *testing.T, read <-chan error, want error, what string) {
	t.Helper()
	select {
	case err := <-read:
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	case <-time.After(time.Second):
		t.Errorf("%s: still blocked 1s later", what)
	}
}

// tcpPair connects d to a fresh loopback listener and returns the
// listener and both ends, closed at cleanup.
func tcpPair(t *testing.T, d *net.Dialer) (ln net.Listener, client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if client, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if server, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return ln, client, server
}

// connCookie returns the id ghostconn gives c's socket: its cookie, or
// where ids are not cookies the one the iterators report.
func connCookie(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	p, err := bpf.Load(bpf.Options{IteratorsOnly: true})
	if err != nil {
		t.Fatalf("load the iterators: %v", err)
	}
	defer p.Close()
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

// regexpQuote quotes the address characters mustMatch patterns meet.
func regexpQuote(s string) string {
	r := strings.NewReplacer(".", `\.`, "[", `\[`, "]", `\]`)
	return r.Replace(s)
}

// TestKillGracefulGhost: with --graceful the ghost's FIN goes out through
// the holder's fd, and the peer reads EOF, as it would have had the
// application's close worked.
func TestKillGracefulGhost(t *testing.T) {
	sock := startAgent(t, "--ghost-grace", "1s")
	_, _, peer, local, remote := killGhost(t)
	v := waitVerdict(t, sock, local, remote, "ghost", 10*time.Second)
	read := readErr(peer)
	out, stderr, code := ghostconn(t, "kill", "--api-socket", sock, "--graceful", "--yes", strconv.FormatUint(v.Cookie, 10))
	if code != 0 {
		t.Fatalf("kill --graceful: exit %d\n%s\n%s", code, out, stderr)
	}
	mustMatch(t, "kill --graceful output", out, `graceful .* via shutdown, now FIN_WAIT[12]\): done`)
	wantReadErr(t, read, io.EOF, "peer read")
}

// TestKillCloseWaitAndUnresponsive: a CLOSE_WAIT socket killed by target,
// and a half-open connection in another network namespace (its peer's
// namespace drops everything) killed from the host, after which its
// unresponsive verdict is gone.
func TestKillCloseWaitAndUnresponsive(t *testing.T) {
	sock := startAgent(t, "--close-wait-after", "1s", "--unresponsive-after-rtos", "1")
	_, c, srv := tcpPair(t, &net.Dialer{})
	c.Close()
	cw := waitVerdict(t, sock, srv.LocalAddr().String(), srv.RemoteAddr().String(), "close-wait", 10*time.Second)

	const port = 18391
	var err error
	nsA, nsB := testnet.Netns(t), testnet.Netns(t)
	testnet.Veth(t, nsA, nsB, "10.233.7.1/24", "10.233.7.2/24")
	var uln net.Listener
	testnet.In(t, nsB, func() {
		if uln, err = net.Listen("tcp4", "10.233.7.2:"+strconv.Itoa(port)); err != nil {
			t.Error(err)
		}
	})
	if uln == nil {
		t.FailNow()
	}
	defer uln.Close()
	var sender net.Conn
	testnet.In(t, nsA, func() {
		if sender, err = net.Dial("tcp4", uln.Addr().String()); err != nil {
			t.Error(err)
		}
	})
	if sender == nil {
		t.FailNow()
	}
	defer sender.Close()
	gone, err := uln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cliDropAll(t, nsB, port)
	gone.(*net.TCPConn).SetLinger(0)
	gone.Close()
	if _, err := sender.Write([]byte("anyone there?")); err != nil {
		t.Fatal(err)
	}
	un := waitVerdict(t, sock, sender.LocalAddr().String(), sender.RemoteAddr().String(), "unresponsive", 15*time.Second)
	if un.Netns == cw.Netns {
		t.Fatalf("the unresponsive connection is in the host's namespace %d", un.Netns)
	}

	out, stderr, code := ghostconn(t, "kill", "--api-socket", sock, "--yes", "-o", "json",
		strconv.FormatUint(cw.Cookie, 10), strconv.FormatUint(un.Cookie, 10))
	var res []collector.ActionResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || len(res) != 2 {
		t.Fatalf("kill: exit %d, %v\n%s\n%s", code, err, out, stderr)
	}
	for _, r := range res {
		if !r.Done || r.After != "gone" {
			t.Errorf("kill result %+v, want done and gone", r)
		}
	}
	if _, err := srv.Write([]byte("x")); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("CLOSE_WAIT holder's write after kill: %v, want ECONNABORTED", err)
	}
	testutil.Eventually(t, 3*time.Second, "the unresponsive verdict gone", func() (bool, string) {
		for _, v := range lsJSON(t, "--api-socket", sock, "--verdict", "unresponsive") {
			if v.Cookie == un.Cookie {
				return false, "still flagged"
			}
		}
		return true, ""
	})
}

// TestKillRefusals: an agent with --read-only refuses (exit 2, nothing
// changed); one whose mechanisms are all turned off names what is missing
// and claims nothing; without an agent, kill acts itself.
func TestKillRefusals(t *testing.T) {
	_, c, s := tcpPair(t, &net.Dialer{})
	target := c.LocalAddr().String()
	alive := func(what string) {
		t.Helper()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("%s: the connection is gone: %v", what, err)
		}
	}

	ro := startAgent(t, "--read-only")
	if out, stderr, code := ghostconn(t, "kill", "--api-socket", ro, "--yes", target); code != 2 || !strings.Contains(stderr, "--read-only") {
		t.Errorf("kill on a --read-only agent: exit %d\n%s\n%s", code, out, stderr)
	}
	alive("after a --read-only agent refused")

	none := startAgent(t, "--kill-via", "")
	out, stderr, code := ghostconn(t, "kill", "--api-socket", none, "--yes", target)
	if code != 2 || !strings.Contains(out, "FAILED: cannot abort sockets: bpf_sock_destroy is turned off, and sock_diag is turned off") {
		t.Errorf("kill with every mechanism off: exit %d\n%s\n%s", code, out, stderr)
	}
	if strings.Contains(out, "): done") {
		t.Errorf("kill with every mechanism off claims success:\n%s", out)
	}
	alive("after a kill with every mechanism off")

	// By cookie, so that it is this end (an address matches both ends, and
	// which one goes first is the iterator's order).
	cookie := connCookie(t, c)
	read := readErr(s)
	out, stderr, code = ghostconn(t, "kill", "--api-socket", t.TempDir()+"/none.sock", "--yes", strconv.FormatUint(cookie, 10))
	if code != 0 || !strings.Contains(stderr, "kill acts itself") || !strings.Contains(out, "): done") {
		t.Fatalf("kill without an agent: exit %d\n%s\n%s", code, out, stderr)
	}
	wantReadErr(t, read, syscall.ECONNRESET, "peer read after kill without an agent")
}

// TestKeepaliveArmsSilent: `ghostconn keepalive` on a silent connection
// without keepalive: the application's getsockopt sees the values, ls shows
// them with ghostconn as their source, the silent verdict clears, and when
// the peer then vanishes the connection becomes unresponsive with the give-up
// time the new values make. The arming is in the history and the metrics.
func TestKeepaliveArmsSilent(t *testing.T) {
	metrics := freePort(t)
	a := launchAgent(t, "", "", "--silent-after", "2s", "--metrics-address", metrics)
	t.Cleanup(func() { a.stop(t) })
	sock := a.sock
	const port = 18393
	nsA, nsB := testnet.Netns(t), testnet.Netns(t)
	testnet.Veth(t, nsA, nsB, "10.233.8.1/24", "10.233.8.2/24")
	var ln net.Listener
	var err error
	testnet.In(t, nsB, func() {
		lc := net.ListenConfig{KeepAlive: -1}
		if ln, err = lc.Listen(t.Context(), "tcp4", "10.233.8.2:"+strconv.Itoa(port)); err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	var app net.Conn
	testnet.In(t, nsA, func() {
		if app, err = (&net.Dialer{KeepAlive: -1}).Dial("tcp4", ln.Addr().String()); err != nil {
			t.Error(err)
		}
	})
	if app == nil {
		t.FailNow()
	}
	defer app.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	local, remote := app.LocalAddr().String(), app.RemoteAddr().String()
	v := waitVerdict(t, sock, local, remote, "silent", 10*time.Second)

	out, stderr, code := ghostconn(t, "keepalive", "--api-socket", sock, "--idle", "1s", "--interval", "1s", "--count", "4", "--yes", strconv.FormatUint(v.Cookie, 10))
	if code != 0 {
		t.Fatalf("keepalive: exit %d\n%s\n%s", code, out, stderr)
	}
	// Through a holder's fd where iter/tcp has no bpf_setsockopt (5.10).
	mech := "bpf_setsockopt"
	if !bpf.HasFeature(bpf.FeatureIterSockopt) {
		mech = "setsockopt"
	}
	mustMatch(t, "keepalive output", out, `keepalive .* via `+mech+`, now ESTABLISHED\): done`)
	tc := app.(*net.TCPConn)
	for _, o := range []struct {
		name      string
		level, nr int
		want      int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.SOL_TCP, unix.TCP_KEEPIDLE, 1},
		{"TCP_KEEPINTVL", unix.SOL_TCP, unix.TCP_KEEPINTVL, 1},
		{"TCP_KEEPCNT", unix.SOL_TCP, unix.TCP_KEEPCNT, 4},
	} {
		raw, _ := tc.SyscallConn()
		var got int
		var gerr error
		raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.nr) })
		if gerr != nil || got != o.want {
			t.Errorf("the application's %s: %d (%v), want %d", o.name, got, gerr, o.want)
		}
	}
	c := find(lsJSON(t, "--api-socket", sock), local, remote)
	if c == nil || !c.Keepalive.Enabled || c.Keepalive.IdleSeconds != 1 || c.Keepalive.Count != 4 || c.Keepalive.Source != "ghostconn" {
		t.Fatalf("keepalive after arming: %+v", c)
	}
	testutil.Eventually(t, 3*time.Second, "the silent verdict cleared", func() (bool, string) {
		c := find(lsJSON(t, "--api-socket", sock), local, remote)
		return c != nil && hasVerdict(c, "silent") == nil, fmt.Sprintf("%+v", c)
	})
	if n := scrapeOr0(t, metrics, `ghostconn_keepalive_armed_total{verdict="silent"}`); n != 1 {
		t.Errorf("ghostconn_keepalive_armed_total{verdict=silent} = %v, want 1", n)
	}

	// The peer vanishes: its namespace drops everything. The probes go
	// unanswered, and the kernel gives up after idle + interval x count.
	cliDropAll(t, nsB, port)
	un := waitVerdict(t, sock, local, remote, "unresponsive", 6*time.Second)
	vd := hasVerdict(&un, "unresponsive")
	if vd.GiveUp == nil || vd.GiveUp.Sub(vd.Since) > 6*time.Second {
		t.Errorf("unresponsive verdict %+v: want a give-up time within the armed keepalive's 5s", vd)
	}
	who, _, _ := ghostconn(t, "who", "--api-socket", sock, "-o", "json", strconv.FormatUint(v.Cookie, 10))
	if !strings.Contains(who, `"op": "keepalive"`) {
		t.Errorf("who lacks the keepalive action in the history:\n%s", who)
	}
}

// TestKeepaliveWithoutAgent: with no agent, keepalive arms the socket
// itself, as kill acts itself.
func TestKeepaliveWithoutAgent(t *testing.T) {
	_, c, _ := tcpPair(t, &net.Dialer{KeepAlive: -1})
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opt := func(level, name int) int {
		var v int
		var gerr error
		raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, name) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	cookie := connCookie(t, c)
	out, stderr, code := ghostconn(t, "keepalive", "--api-socket", t.TempDir()+"/none.sock", "--idle", "9s", "--interval", "2s", "--count", "3",
		"--user-timeout", "1500ms", "--yes", strconv.FormatUint(cookie, 10))
	if code != 0 || !strings.Contains(stderr, "keepalive acts itself") || !strings.Contains(out, "): done") {
		t.Fatalf("keepalive without an agent: exit %d\n%s\n%s", code, out, stderr)
	}
	if ka, idle, intvl, cnt, ut := opt(unix.SOL_SOCKET, unix.SO_KEEPALIVE), opt(unix.SOL_TCP, unix.TCP_KEEPIDLE), opt(unix.SOL_TCP, unix.TCP_KEEPINTVL),
		opt(unix.SOL_TCP, unix.TCP_KEEPCNT), opt(unix.SOL_TCP, unix.TCP_USER_TIMEOUT); ka != 1 || idle != 9 || intvl != 2 || cnt != 3 || ut != 1500 {
		t.Errorf("after keepalive: SO_KEEPALIVE %d, idle %d, interval %d, count %d, user timeout %d", ka, idle, intvl, cnt, ut)
	}
	for _, bad := range [][]string{
		{"--idle", "0s", "--interval", "1s", "--count", "1"},
		{"--idle", "1500ms", "--interval", "1s", "--count", "1"},
		{"--idle", "1s", "--interval", "1s", "--count", "0"},
		{"--idle", "40000s", "--interval", "1s", "--count", "1"},
	} {
		if _, stderr, code := ghostconn(t, append([]string{"keepalive", "--yes", strconv.FormatUint(cookie, 10)}, bad...)...); code != 2 || !strings.Contains(stderr, "want") {
			t.Errorf("keepalive %v: exit %d\n%s", bad, code, stderr)
		}
	}
}
