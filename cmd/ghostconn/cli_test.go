package main

// Tests of the incident CLI (ls, who, watch) against a running agent with
// real connections: a ghost, a close-wait, a silent and an unresponsive one.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testnet"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// cliAgentArgs are short thresholds so that every verdict shows within
// seconds.
var cliAgentArgs = []string{"--ghost-grace", "1s", "--close-wait-after", "1s", "--silent-after", "2s", "--reconcile-interval", "2s"}

// cliKeepalive probes often enough (idle 2s, not more than --silent-after)
// that the connections using it are never silent.
var cliKeepalive = net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: 2 * time.Second, Count: 5}

// The unresponsive connection's namespaces, subnet and port.
const (
	cliUnrespNet  = "10.233.0.0/24"
	cliUnrespPort = 18383
)

// cliSocketDir returns a fresh directory for an API socket that every user
// can traverse (0755), so that a permission test meets the socket's own
// mode (0600) and not the directory's.
func cliSocketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ghostconn-cli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cliAgent starts an agent with the short thresholds, its socket in a
// directory anyone can traverse.
func cliAgent(t *testing.T) (a *agentProc, stop func()) {
	t.Helper()
	a = launchAgent(t, cliSocketDir(t), "", cliAgentArgs...)
	var once sync.Once
	stop = func() { once.Do(func() { a.stop(t) }) }
	t.Cleanup(stop)
	return a, stop
}

func cliFD(t *testing.T, c any) int {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

func selfComm(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cliListener is a loopback listener whose accepted connections use
// cliKeepalive. MPTCP is off so that the socket options reach the TCP
// socket directly.
type cliListener struct {
	t  *testing.T
	ln net.Listener
}

func newCLIListener(t *testing.T) *cliListener {
	t.Helper()
	lc := net.ListenConfig{KeepAliveConfig: cliKeepalive}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &cliListener{t: t, ln: ln}
}

func (l *cliListener) port() string { return strconv.Itoa(l.ln.Addr().(*net.TCPAddr).Port) }

// dial connects to the listener with dialer d (cliKeepalive when nil) and
// returns both ends; both are closed at cleanup.
func (l *cliListener) dial(d *net.Dialer) (client, server net.Conn) {
	l.t.Helper()
	if d == nil {
		d = &net.Dialer{KeepAliveConfig: cliKeepalive}
	}
	client, err := d.Dial("tcp4", l.ln.Addr().String())
	if err != nil {
		l.t.Fatal(err)
	}
	server, err = l.ln.Accept()
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// cliScene holds the connections the tests look at.
type cliScene struct {
	sock string
	pid  uint32
	comm string
	port string // the loopback listener's
	addr string // and its address

	ghostLocal, ghostRemote string
	ghostCloserFD           int // the fd closed while a dup kept the socket
	ghostHolderFD           int // the dup that keeps it
	cwLocal, cwRemote       string
	silentLocal             string
	silentRemote            string
	sharedLocal             string
	sharedFDs               []int
	unrespLocal             string
	unrespRemote            string
}

// key names a connection by its tuple.
func key(local, remote string) string { return local + " " + remote }

func newCLIScene(t *testing.T, sock string) *cliScene {
	t.Helper()
	s := &cliScene{sock: sock, pid: uint32(os.Getpid()), comm: selfComm(t)}
	l := newCLIListener(t)
	s.port, s.addr = l.port(), l.ln.Addr().String()

	// A ghost: the application closes its connection, but a dup made by
	// TCPConn.File keeps the socket open.
	c, _ := l.dial(nil)
	s.ghostLocal, s.ghostRemote = c.LocalAddr().String(), c.RemoteAddr().String()
	s.ghostCloserFD = cliFD(t, c)
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s.ghostHolderFD = int(f.Fd())
	c.Close()

	// A close-wait: the peer closes, the server never does. Its keepalive
	// is off so that nothing but CLOSE_WAIT is to be said about it.
	c, srv := l.dial(nil)
	if err := srv.(*net.TCPConn).SetKeepAlive(false); err != nil {
		t.Fatal(err)
	}
	s.cwLocal, s.cwRemote = srv.LocalAddr().String(), srv.RemoteAddr().String()
	c.Close()

	// A silent connection: no keepalive, no data.
	c, _ = l.dial(&net.Dialer{KeepAlive: -1})
	s.silentLocal, s.silentRemote = c.LocalAddr().String(), c.RemoteAddr().String()

	// A shared socket: two fds of this process refer to it.
	c, _ = l.dial(nil)
	s.sharedLocal = c.LocalAddr().String()
	// CLOEXEC, so that the ghostconn processes the test runs do not
	// inherit it and show up as holders.
	dup, err := unix.FcntlInt(uintptr(cliFD(t, c)), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dup) })
	s.sharedFDs = []int{cliFD(t, c), dup}

	// An unresponsive peer: two namespaces joined by a veth; once the
	// connection is up, namespace B drops everything on the port and its
	// end vanishes without a word reaching A, and A sends data into the
	// void.
	nsA, nsB := testnet.Netns(t), testnet.Netns(t)
	testnet.Veth(t, nsA, nsB, "10.233.0.1/24", "10.233.0.2/24")
	var uln net.Listener
	testnet.In(t, nsB, func() {
		lc := net.ListenConfig{KeepAlive: -1}
		lc.SetMultipathTCP(false)
		if uln, err = lc.Listen(context.Background(), "tcp4", "10.233.0.2:"+strconv.Itoa(cliUnrespPort)); err != nil {
			t.Error(err)
		}
	})
	if uln == nil {
		t.FailNow()
	}
	defer uln.Close()
	var sender net.Conn
	testnet.In(t, nsA, func() {
		if sender, err = (&net.Dialer{KeepAliveConfig: cliKeepalive}).Dial("tcp4", uln.Addr().String()); err != nil {
			t.Error(err)
		}
	})
	if sender == nil {
		t.FailNow()
	}
	t.Cleanup(func() { sender.Close() })
	peer, err := uln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cliDropAll(t, nsB, cliUnrespPort)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	s.unrespLocal, s.unrespRemote = sender.LocalAddr().String(), sender.RemoteAddr().String()
	if _, err := sender.Write([]byte("anyone there?")); err != nil {
		t.Fatal(err)
	}
	return s
}

// cliDropAll makes namespace ns drop every TCP segment to or from port, in
// and out.
func cliDropAll(t *testing.T, ns string, port int) {
	t.Helper()
	p := strconv.Itoa(port)
	rules := "table inet gccli {\n" +
		" chain in { type filter hook input priority 0; tcp dport " + p + " drop; tcp sport " + p + " drop; }\n" +
		" chain out { type filter hook output priority 0; tcp dport " + p + " drop; tcp sport " + p + " drop; }\n}\n"
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}

// ours reports whether v is one of the scene's connections: one end is
// the loopback listener's address (other processes may use the same port
// on another address) or in the unresponsive connection's subnet.
func (s *cliScene) ours(v *collector.ConnView) bool {
	unresp := netip.MustParsePrefix(cliUnrespNet)
	for _, a := range []string{v.Local, v.Remote} {
		if a == s.addr {
			return true
		}
		if ap, err := netip.ParseAddrPort(a); err == nil && unresp.Contains(ap.Addr()) {
			return true
		}
	}
	return false
}

// lsJSON runs `ls -o json` with args and decodes the answer; exit 0 and 1
// (no match) are both fine.
func lsJSON(t *testing.T, args ...string) []collector.ConnView {
	t.Helper()
	out, stderr, code := ghostconn(t, append([]string{"ls", "-o", "json"}, args...)...)
	if code != 0 && code != 1 {
		t.Fatalf("ls -o json %v: exit %d\n%s", args, code, stderr)
	}
	var conns []collector.ConnView
	if err := json.Unmarshal([]byte(out), &conns); err != nil {
		t.Fatalf("ls -o json %v: %v\n%s", args, err, out)
	}
	if (code == 1) != (len(conns) == 0) {
		t.Fatalf("ls -o json %v: exit %d with %d connections", args, code, len(conns))
	}
	return conns
}

func find(conns []collector.ConnView, local, remote string) *collector.ConnView {
	for i := range conns {
		if conns[i].Local == local && conns[i].Remote == remote && conns[i].ClosedAt == nil {
			return &conns[i]
		}
	}
	return nil
}

func hasVerdict(v *collector.ConnView, kind string) *collector.Verdict {
	if v == nil {
		return nil
	}
	for i := range v.Verdicts {
		if v.Verdicts[i].Kind == kind {
			return &v.Verdicts[i]
		}
	}
	return nil
}

// wait polls the agent until every connection of the scene carries its
// verdict, and returns the scene's connections by tuple.
func (s *cliScene) wait(t *testing.T) map[string]collector.ConnView {
	t.Helper()
	want := map[string]string{
		key(s.ghostLocal, s.ghostRemote):   collector.VerdictGhost,
		key(s.cwLocal, s.cwRemote):         collector.VerdictCloseWait,
		key(s.silentLocal, s.silentRemote): collector.VerdictSilent,
		key(s.unrespLocal, s.unrespRemote): collector.VerdictUnresponsive,
	}
	var byKey map[string]collector.ConnView
	testutil.Eventually(t, 120*time.Second, "every verdict of the scene", func() (bool, string) {
		conns := lsJSON(t, "--api-socket", s.sock, "--comm", s.comm)
		byKey = map[string]collector.ConnView{}
		var missing []string
		for k, kind := range want {
			lr := strings.SplitN(k, " ", 2)
			v := find(conns, lr[0], lr[1])
			if hasVerdict(v, kind) == nil {
				missing = append(missing, kind+" on "+k)
			}
		}
		for _, v := range conns {
			if v.ClosedAt == nil {
				byKey[key(v.Local, v.Remote)] = v
			}
		}
		return len(missing) == 0, fmt.Sprintf("still missing: %s\n%+v", strings.Join(missing, "; "), conns)
	})
	return byKey
}

// tableRows checks that out is a table whose header is exactly cols and
// whose every row starts each cell at its header's column, and returns the
// rows as maps from column to cell. Lines after the first blank line (the
// footer) are returned separately.
func tableRows(t *testing.T, out string, cols []string) ([]map[string]string, string) {
	t.Helper()
	body, footer, _ := strings.Cut(out, "\n\n")
	lines := strings.Split(strings.TrimRight(body, "\n"), "\n")
	header := lines[0]
	if got := strings.Fields(header); !slices.Equal(got, cols) {
		t.Fatalf("header %q, want columns %v", header, cols)
	}
	offs := make([]int, len(cols))
	for i, c := range cols {
		offs[i] = strings.Index(header, c)
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		r := []rune(line)
		row := map[string]string{}
		for i, off := range offs {
			if len(r) <= off || r[off] == ' ' || (off > 0 && r[off-1] != ' ') {
				t.Fatalf("column %s does not start at offset %d in row\n%q\nheader\n%q", cols[i], off, line, header)
			}
			end := len(r)
			if i+1 < len(offs) {
				end = offs[i+1]
			}
			row[cols[i]] = strings.TrimSpace(string(r[off:end]))
		}
		rows = append(rows, row)
	}
	return rows, footer
}

func rowOf(rows []map[string]string, local, remote string) map[string]string {
	for _, r := range rows {
		if r["LOCAL"] == local && r["REMOTE"] == remote {
			return r
		}
	}
	return nil
}

var humanDurationRE = regexp.MustCompile(`^(\d+ms|\d+s|\d+m\d+s|\d+h\d+m|\d+d\d+h)$`)

var tableCols = []string{"STATE", "LOCAL", "REMOTE", "PROCESS", "IDLE", "RETRANS", "VERDICTS"}
var wideCols = append(slices.Clone(tableCols), "COOKIE", "INODE", "UID", "KEEPALIVE", "SENDQ", "RECVQ", "AGE", "HOLDERS")

// whoSection returns the part of `who` output about the connection with
// cookie (the whole output when there is one connection).
func whoSection(t *testing.T, out string, cookie uint64) string {
	t.Helper()
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^  cookie\s+%d$`, cookie))
	for _, sec := range regexp.MustCompile(`(?m)^=== `).Split(out, -1) {
		if line.MatchString(sec) {
			return sec
		}
	}
	t.Fatalf("who output has no section for cookie %d:\n%s", cookie, out)
	return ""
}

func mustMatch(t *testing.T, what, text string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(text) {
			t.Errorf("%s does not match %q:\n%s", what, p, text)
		}
	}
}

func TestCLIAgainstAgent(t *testing.T) {
	privtest.Require(t)
	a, _ := cliAgent(t)
	sock := a.sock
	s := newCLIScene(t, sock)
	conns := s.wait(t)
	ghost := conns[key(s.ghostLocal, s.ghostRemote)]
	ghostPeer := conns[key(s.ghostRemote, s.ghostLocal)]
	cw := conns[key(s.cwLocal, s.cwRemote)]
	silent := conns[key(s.silentLocal, s.silentRemote)]
	unresp := conns[key(s.unrespLocal, s.unrespRemote)]
	pid := strconv.Itoa(int(s.pid))

	t.Run("ls verdict lists exactly the expected connection", func(t *testing.T) {
		for kind, want := range map[string]string{
			collector.VerdictGhost:        key(s.ghostLocal, s.ghostRemote),
			collector.VerdictCloseWait:    key(s.cwLocal, s.cwRemote),
			collector.VerdictSilent:       key(s.silentLocal, s.silentRemote),
			collector.VerdictUnresponsive: key(s.unrespLocal, s.unrespRemote),
		} {
			var got []string
			for _, v := range lsJSON(t, "--api-socket", sock, "--verdict", kind) {
				if hasVerdict(&v, kind) == nil {
					t.Errorf("--verdict %s listed %s without it: %+v", kind, key(v.Local, v.Remote), v.Verdicts)
				}
				if s.ours(&v) {
					got = append(got, key(v.Local, v.Remote))
				}
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("ls --verdict %s lists %q of the test's connections, want exactly [%s]", kind, got, want)
			}
		}
	})

	t.Run("ls table", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "ls", "--api-socket", sock, "--port", s.port)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("colour codes in output to a pipe:\n%q", out)
		}
		rows, footer := tableRows(t, out, tableCols)
		for _, c := range []struct {
			local, remote, state, verdict string
		}{
			{s.ghostLocal, s.ghostRemote, "ESTABLISHED", "ghost"},
			{s.cwLocal, s.cwRemote, "CLOSE_WAIT", "close-wait"},
			{s.silentLocal, s.silentRemote, "ESTABLISHED", "silent"},
		} {
			r := rowOf(rows, c.local, c.remote)
			if r == nil {
				t.Errorf("no row for %s -> %s:\n%s", c.local, c.remote, out)
				continue
			}
			if r["STATE"] != c.state || !slices.Contains(strings.Split(r["VERDICTS"], ","), c.verdict) {
				t.Errorf("row %v: want state %s and verdict %s", r, c.state, c.verdict)
			}
			if r["PROCESS"] != s.comm+"/"+pid {
				t.Errorf("PROCESS %q, want %s/%s", r["PROCESS"], s.comm, pid)
			}
			if !humanDurationRE.MatchString(r["IDLE"]) {
				t.Errorf("IDLE %q is not a human duration", r["IDLE"])
			}
		}
		shared := rowOf(rows, s.sharedLocal, s.ghostRemote)
		if shared == nil || shared["PROCESS"] != s.comm+"/"+pid+" +1*" {
			t.Errorf("shared socket row %v: want PROCESS %s/%s +1*", shared, s.comm, pid)
		}
		if !strings.HasPrefix(footer, "* shared: more than one fd refers to the socket") {
			t.Errorf("footer %q does not explain the * mark", footer)
		}
		out, _, code = ghostconn(t, "ls", "--api-socket", sock, "--remote", cliUnrespNet)
		if code != 0 {
			t.Fatalf("ls --remote: exit %d", code)
		}
		rows, _ = tableRows(t, out, tableCols)
		r := rowOf(rows, s.unrespLocal, s.unrespRemote)
		if r == nil || r["VERDICTS"] != "unresponsive" || r["RETRANS"] == "0" {
			t.Errorf("unresponsive row %v: want verdict unresponsive and retransmits", r)
		}
	})

	t.Run("ls wide", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "ls", "-o", "wide", "--api-socket", sock, "--port", s.port)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		rows, footer := tableRows(t, out, wideCols)
		g := rowOf(rows, s.ghostLocal, s.ghostRemote)
		if g == nil {
			t.Fatalf("no ghost row:\n%s", out)
		}
		want := map[string]string{
			"COOKIE": strconv.FormatUint(ghost.Cookie, 10), "INODE": strconv.FormatUint(ghost.Inode, 10), "UID": "0",
			"KEEPALIVE": "on 2s/2s/5 socket", "SENDQ": "0", "RECVQ": "0",
			"HOLDERS": fmt.Sprintf("%s/%s fd=%d", s.comm, pid, s.ghostHolderFD),
		}
		for col, w := range want {
			if g[col] != w {
				t.Errorf("ghost %s = %q, want %q", col, g[col], w)
			}
		}
		if !humanDurationRE.MatchString(g["AGE"]) {
			t.Errorf("AGE %q is not a human duration", g["AGE"])
		}
		if r := rowOf(rows, s.silentLocal, s.silentRemote); r == nil || r["KEEPALIVE"] != "off" {
			t.Errorf("silent row %v: want KEEPALIVE off", r)
		}
		sh := rowOf(rows, s.sharedLocal, s.ghostRemote)
		wantHolders := fmt.Sprintf("%s/%s fd=%d, %s/%s fd=%d", s.comm, pid, s.sharedFDs[0], s.comm, pid, s.sharedFDs[1])
		wantHolders2 := fmt.Sprintf("%s/%s fd=%d, %s/%s fd=%d", s.comm, pid, s.sharedFDs[1], s.comm, pid, s.sharedFDs[0])
		if sh == nil || (sh["HOLDERS"] != wantHolders && sh["HOLDERS"] != wantHolders2) {
			t.Errorf("shared row %v: want HOLDERS %q", sh, wantHolders)
		}
		if !strings.Contains(footer, "* shared") {
			t.Errorf("no footer for the shared socket: %q", footer)
		}
	})

	t.Run("ls colour on a terminal only", func(t *testing.T) {
		out := runOnPty(t, nil, "ls", "--api-socket", sock, "--port", s.port)
		for _, want := range []string{"\x1b[31mghost\x1b[0m", "\x1b[33mclose-wait\x1b[0m", "\x1b[33msilent\x1b[0m"} {
			if !strings.Contains(out, want) {
				t.Errorf("terminal output lacks %q:\n%q", want, out)
			}
		}
		out = runOnPty(t, nil, "ls", "--api-socket", sock, "--remote", cliUnrespNet)
		if !strings.Contains(out, "\x1b[31munresponsive\x1b[0m") {
			t.Errorf("terminal output lacks a red unresponsive:\n%q", out)
		}
		// Colour does not shift the columns.
		out = strings.ReplaceAll(runOnPty(t, nil, "ls", "--api-socket", sock, "--port", s.port), "\r\n", "\n")
		tableRows(t, regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(out, ""), tableCols)
		out = runOnPty(t, []string{"NO_COLOR=1"}, "ls", "--api-socket", sock, "--port", s.port)
		if strings.Contains(out, "\x1b[") || !strings.Contains(out, "ghost") {
			t.Errorf("NO_COLOR output has colour codes or lacks the verdicts:\n%q", out)
		}
	})

	t.Run("ls filters", func(t *testing.T) {
		check := func(name string, args []string, want []string, ok func(v *collector.ConnView) bool) {
			t.Helper()
			got := lsJSON(t, append([]string{"--api-socket", sock}, args...)...)
			for i := range got {
				if !ok(&got[i]) {
					t.Errorf("%s %v listed %s (%s), which does not pass", name, args, key(got[i].Local, got[i].Remote), got[i].State)
				}
			}
			for _, w := range want {
				lr := strings.SplitN(w, " ", 2)
				if find(got, lr[0], lr[1]) == nil {
					t.Errorf("%s %v does not list %s", name, args, w)
				}
			}
		}
		involves := func(v *collector.ConnView, match func(pid uint32, comm string) bool) bool {
			for _, h := range v.Holders {
				if match(h.PID, h.Comm) {
					return true
				}
			}
			return (v.Opener != nil && match(v.Opener.PID, v.Opener.Comm)) || (v.ClosedBy != nil && match(v.ClosedBy.PID, v.ClosedBy.Comm))
		}
		check("--state", []string{"--state", "close-wait"}, []string{key(s.cwLocal, s.cwRemote)},
			func(v *collector.ConnView) bool { return v.State == collector.StateCloseWait })
		check("--pid", []string{"--pid", pid}, []string{key(s.ghostLocal, s.ghostRemote), key(s.unrespLocal, s.unrespRemote)},
			func(v *collector.ConnView) bool {
				return involves(v, func(p uint32, _ string) bool { return p == s.pid })
			})
		check("--comm", []string{"--comm", s.comm}, []string{key(s.silentLocal, s.silentRemote), key(s.cwLocal, s.cwRemote)},
			func(v *collector.ConnView) bool {
				return involves(v, func(_ uint32, c string) bool { return c == s.comm })
			})
		port, _ := strconv.Atoi(s.port)
		check("--port", []string{"--port", s.port}, []string{key(s.ghostLocal, s.ghostRemote), key(s.ghostRemote, s.ghostLocal), key(s.silentLocal, s.silentRemote)},
			func(v *collector.ConnView) bool {
				l, r := netip.MustParseAddrPort(v.Local), netip.MustParseAddrPort(v.Remote)
				return int(l.Port()) == port || int(r.Port()) == port
			})
		check("--remote", []string{"--remote", cliUnrespNet}, []string{key(s.unrespLocal, s.unrespRemote)},
			func(v *collector.ConnView) bool {
				return netip.MustParsePrefix(cliUnrespNet).Contains(netip.MustParseAddrPort(v.Remote).Addr())
			})
		check("--verdict with --port", []string{"--verdict", "ghost", "--port", s.port}, []string{key(s.ghostLocal, s.ghostRemote)},
			func(v *collector.ConnView) bool { return v.Local == s.ghostLocal && v.Remote == s.ghostRemote })
	})

	t.Run("ls sort", func(t *testing.T) {
		got := lsJSON(t, "--api-socket", sock, "--comm", s.comm, "--sort", "retransmits")
		for i := 1; i < len(got); i++ {
			if got[i].Retransmits > got[i-1].Retransmits {
				t.Fatalf("--sort retransmits: %d retransmits after %d", got[i].Retransmits, got[i-1].Retransmits)
			}
		}
		// Other processes named like this test may be listed too; among the
		// scene's connections the unresponsive one comes first.
		i := slices.IndexFunc(got, func(v collector.ConnView) bool { return v.Local == s.unrespLocal && v.Remote == s.unrespRemote })
		if i < 0 || got[i].Retransmits == 0 {
			t.Fatalf("--sort retransmits: the unresponsive connection is missing or has no retransmits: %+v", got)
		}
		if j := slices.IndexFunc(got, func(v collector.ConnView) bool { return s.ours(&v) }); j != i {
			t.Errorf("--sort retransmits: the first of the test's connections is %s, not the unresponsive one", key(got[j].Local, got[j].Remote))
		}
		got = lsJSON(t, "--api-socket", sock, "--comm", s.comm, "--sort", "age")
		for i := 1; i < len(got); i++ {
			if got[i].FirstSeen.Before(got[i-1].FirstSeen) {
				t.Fatalf("--sort age: first seen %s after %s", got[i].FirstSeen, got[i-1].FirstSeen)
			}
		}
		got = lsJSON(t, "--api-socket", sock, "--comm", s.comm, "--sort", "idle")
		idle := func(v collector.ConnView) float64 {
			if v.IdleSeconds == nil {
				return -1
			}
			return *v.IdleSeconds
		}
		for i := 1; i < len(got); i++ {
			if idle(got[i]) > idle(got[i-1]) {
				t.Fatalf("--sort idle: idle %v after %v", idle(got[i]), idle(got[i-1]))
			}
		}
	})

	t.Run("ls no match exits 1", func(t *testing.T) {
		port := unusedPort(t)
		out, stderr, code := ghostconn(t, "ls", "--api-socket", sock, "--port", port)
		if code != 1 || out != "" || !strings.Contains(stderr, "no connection matches") {
			t.Errorf("ls --port %s: exit %d, stdout %q, stderr %q; want exit 1 and a message", port, code, out, stderr)
		}
		out, _, code = ghostconn(t, "ls", "-o", "json", "--api-socket", sock, "--port", port)
		if code != 1 || strings.TrimSpace(out) != "[]" {
			t.Errorf("ls -o json --port %s: exit %d, stdout %q; want exit 1 and []", port, code, out)
		}
	})

	t.Run("who ip:port", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "who", s.ghostLocal, "--api-socket", sock)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		// Both ends of the ghost connection have that address.
		mustMatch(t, "who output", out, `(?m)^=== 1 of \d+ connections matching `+regexp.QuoteMeta(s.ghostLocal)+` ===$`)
		whoSection(t, out, ghostPeer.Cookie)
		sec := whoSection(t, out, ghost.Cookie)
		g := hasVerdict(&ghost, collector.VerdictGhost)
		for _, want := range []string{
			"Connection\n", "  local         " + s.ghostLocal + "\n", "  remote        " + s.ghostRemote + "\n",
			"\nVerdicts\n  ghost since ", "    evidence: " + g.Detail + "\n",
			"\nHolders\n", "\nClosed by\n", "\nKeepalive\n  on: idle 2s, interval 2s, count 5 (set on the socket)\n",
			"\nIdle, retransmits, probes\n", "\nHistory\n",
		} {
			if !strings.Contains(sec, want) {
				t.Errorf("who section lacks %q:\n%s", want, sec)
			}
		}
		mustMatch(t, "who section", sec,
			`(?m)^  state\s+ESTABLISHED for \S+ \(since \d\d:\d\d:\d\d\.\d{3}\)$`,
			`(?m)^  PID\s+PPID\s+COMM\s+FD$`,
			fmt.Sprintf(`(?m)^  %d\s+\d+\s+%s\s+%d$`, s.pid, regexp.QuoteMeta(s.comm), s.ghostHolderFD),
			// The kernel's count at the close: the File() dup, and now and
			// then a transient one more (a fork child of this process
			// between clone and exec, or an fd walk's own reference).
			fmt.Sprintf(`(?m)^  %s \(pid %d, ppid \d+\) closed fd %d \(close\) at \d\d:\d\d:\d\d\.\d{3} \(\S+ ago\); (1 reference|[23] references) left$`, regexp.QuoteMeta(s.comm), s.pid, s.ghostCloserFD),
			`(?m)^  idle\s+\S+$`, `(?m)^  retransmits\s+0 in all`, `(?m)^  probes out\s+0 unanswered$`,
			`(?m)^  TIME\s+FROM\s+TO\s+SOURCE\s+BY$`,
			`(?m)^  \d\d:\d\d:\d\d\.\d{3}\s+SYN_SENT\s+ESTABLISHED\s+kernel\s+\S+$`,
		)
	})

	t.Run("who inode and cookie", func(t *testing.T) {
		for _, target := range []string{strconv.FormatUint(ghost.Inode, 10), fmt.Sprintf("socket:[%d]", ghost.Inode), strconv.FormatUint(ghost.Cookie, 10)} {
			out, stderr, code := ghostconn(t, "who", "--api-socket", sock, target)
			if code != 0 {
				t.Fatalf("who %s: exit %d: %s", target, code, stderr)
			}
			if strings.Contains(out, "=== ") {
				t.Errorf("who %s matched more than one connection:\n%s", target, out)
			}
			whoSection(t, out, ghost.Cookie)
			if !strings.Contains(out, "ghost since") {
				t.Errorf("who %s does not show the ghost verdict:\n%s", target, out)
			}
		}
		for _, c := range []struct {
			v    collector.ConnView
			want []string
		}{
			{cw, []string{`(?m)^  state\s+CLOSE_WAIT for `, `(?m)^  close-wait since .*\n    evidence: peer closed its side`}},
			{silent, []string{`(?m)^  silent since .*\n    evidence: no data either way`, `(?m)^Keepalive\n  off \(SO_KEEPALIVE not set\)$`}},
			{unresp, []string{`(?m)^  unresponsive since .*\n    evidence: \d+ consecutive retransmission timeouts`, `(?m)^    the kernel gives up at `, `(?m)^  retransmits\s+[1-9]\d* in all, [1-9]\d* consecutive timeouts now$`}},
		} {
			out, stderr, code := ghostconn(t, "who", "--api-socket", sock, strconv.FormatUint(c.v.Inode, 10))
			if code != 0 {
				t.Fatalf("who %d: exit %d: %s", c.v.Inode, code, stderr)
			}
			mustMatch(t, "who "+c.v.Local, out, c.want...)
		}
	})

	t.Run("who json", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "who", "-o", "json", "--api-socket", sock, strconv.FormatUint(ghost.Cookie, 10))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var got []collector.ConnView
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("who -o json: %v\n%s", err, out)
		}
		if len(got) != 1 || got[0].Cookie != ghost.Cookie {
			t.Fatalf("who -o json gave %d connections, want the ghost", len(got))
		}
		v := got[0]
		if len(v.History) == 0 || v.ClosedBy == nil || v.ClosedBy.PID != s.pid || v.ClosedBy.FD != int32(s.ghostCloserFD) || hasVerdict(&v, "ghost") == nil {
			t.Errorf("who -o json: history %+v closed_by %+v verdicts %+v", v.History, v.ClosedBy, v.Verdicts)
		}
		if len(v.Holders) != 1 || v.Holders[0].FD != int32(s.ghostHolderFD) {
			t.Errorf("who -o json: holders %+v, want fd %d", v.Holders, s.ghostHolderFD)
		}
	})

	t.Run("who no match exits 1", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "who", "--api-socket", sock, "18446744073709551615")
		if code != 1 || out != "" || !strings.Contains(stderr, "no connection matches 18446744073709551615") {
			t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 and a message", code, out, stderr)
		}
		out, _, code = ghostconn(t, "who", "-o", "json", "--api-socket", sock, "18446744073709551615")
		if code != 1 || strings.TrimSpace(out) != "[]" {
			t.Errorf("who -o json: exit %d, stdout %q; want exit 1 and []", code, out)
		}
	})

	t.Run("watch json", func(t *testing.T) { testWatchJSON(t, sock) })
	t.Run("watch text with verdicts", func(t *testing.T) { testWatchText(t, sock) })

	t.Run("status", func(t *testing.T) {
		out, stderr, code := ghostconn(t, "status", "--api-socket", sock)
		var st collector.Status
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.Ready {
			t.Errorf("status: exit %d, %s%s", code, out, stderr)
		}
		// The kernel's optional features, as this kernel gives them, with
		// what degrades named for each one missing.
		want := bpf.KernelFeatures()
		if len(st.Features) != len(want) || st.Kernel == "" {
			t.Fatalf("status: kernel %q, features %+v; want %d features", st.Kernel, st.Features, len(want))
		}
		for i, f := range want {
			got := st.Features[i]
			if got.Name != f.Name || got.Available != (f.Err == nil) || got.Needs == "" ||
				(!got.Available && (got.Without == "" || got.Reason == "")) || (got.Available && got.Without != "") {
				t.Errorf("status feature %+v; this kernel: %s available=%v (%v)", got, f.Name, f.Err == nil, f.Err)
			}
		}
		// The hooks read with direct loads exactly where the kernel has
		// bpf_rdonly_cast.
		if want := map[bool]string{true: "direct loads", false: "probe reads"}[bpf.HasFeature(bpf.FeatureCast)]; st.HookReads != want {
			t.Errorf("status hook_reads %q, want %q", st.HookReads, want)
		}
	})

	t.Run("API rejects bad parameters with 400 and JSON", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		for _, c := range []struct{ path, want string }{
			{"/v1/connections?verdict=bogus", `unknown verdict "bogus"`},
			{"/v1/connections?remote=x", `remote "x" is not a CIDR prefix`},
			{"/v1/connections?remote=10.0.0.0/33", `remote "10.0.0.0/33" is not a CIDR prefix`},
			{"/v1/connections?nosuch=1", `unknown parameter "nosuch"`},
			{"/v1/connections?target=not-a-target", `target "not-a-target" is not`},
			{"/v1/connections?sort=bogus", `unknown sort "bogus"`},
			{"/v1/watch?sort=idle", "watch takes only"},
		} {
			resp, err := hc.Get("http://ghostconn" + c.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var e exporter.Error
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/json" ||
				json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, c.want) {
				t.Errorf("GET %s: %s %s %s; want 400 with a JSON error mentioning %q", c.path, resp.Status, resp.Header.Get("Content-Type"), body, c.want)
			}
		}
	})

	t.Run("non-root cannot connect", func(t *testing.T) {
		fi, err := os.Stat(sock)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("api socket %v, %v: want mode 0600", fi, err)
		}
		nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}
		// Fair test: nobody can reach the socket file; only its mode stops it.
		if out, err := exec.Command(nobody[0], append(nobody[1:], "test", "-S", sock)...).CombinedOutput(); err != nil {
			t.Fatalf("nobody cannot even see the socket (%v %s): the directory, not the socket, would refuse", err, out)
		}
		for _, args := range [][]string{
			{"ls", "--api-socket", sock},
			{"who", "--api-socket", sock, s.ghostLocal},
			{"watch", "--api-socket", sock},
			{"status", "--api-socket", sock},
		} {
			cmd := exec.Command(nobody[0], append(append(nobody[1:], binary), args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err == nil {
				code = 0
			}
			if code != 2 || !strings.Contains(stderr.String(), "permission denied") || stdout.Len() > 0 {
				t.Errorf("as nobody, ghostconn %v: exit %d, stdout %q, stderr %q; want exit 2 and a permission error", args, code, stdout.String(), stderr.String())
			}
		}
	})
}

// unusedPort returns a port below the ephemeral range that nothing listens
// on, on any address; nothing connects from it either, since it is below
// that range.
func unusedPort(t *testing.T) string {
	t.Helper()
	for p := 23000; p < 32000; p++ {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		return strconv.Itoa(p)
	}
	t.Fatal("no free port")
	return ""
}

// runOnPty runs the binary with its stdout on a pseudo-terminal and
// returns what it wrote there. NO_COLOR is removed from the environment
// unless env sets it.
func runOnPty(t *testing.T, env []string, args ...string) string {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NO_COLOR=") && !strings.HasPrefix(e, "TERM=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(append(cmd.Env, "TERM=xterm"), env...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = slave, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO once the child exits
		read <- b
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ghostconn %v on a pty: %v\n%s", args, err, stderr.String())
	}
	return string(<-read)
}

// watcher is a running `ghostconn watch` whose stdout lines arrive on
// lines.
type watcher struct {
	cmd    *exec.Cmd
	lines  chan string
	seen   []string
	stderr *bytes.Buffer
	exited chan int
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	w := &watcher{cmd: exec.Command(binary, append([]string{"watch"}, args...)...), lines: make(chan string, 100000), stderr: &bytes.Buffer{}, exited: make(chan int, 1)}
	w.cmd.Stderr = w.stderr
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
		err := w.cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		w.exited <- code
	}()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
	})
	return w
}

// next waits up to d for a line that satisfies match.
func (w *watcher) next(d time.Duration, match func(string) bool) (string, bool) {
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-w.lines:
			if !ok {
				return "", false
			}
			w.seen = append(w.seen, l)
			if match(l) {
				return l, true
			}
		case <-timeout:
			return "", false
		}
	}
}

// stop sends sig and returns the exit code.
func (w *watcher) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	w.cmd.Process.Signal(sig)
	for l := range w.lines {
		w.seen = append(w.seen, l)
	}
	select {
	case code := <-w.exited:
		return code
	case <-time.After(10 * time.Second):
		t.Fatalf("watch did not exit within 10s of %v", sig)
	}
	return -1
}

// primeWatch makes connections to l until the watch shows one of them
// reaching ESTABLISHED (before that the stream may not have subscribed
// yet), and returns that connection's ends.
func primeWatch(t *testing.T, w *watcher, l *cliListener, established func(line string, client net.Conn) bool) (net.Conn, net.Conn) {
	t.Helper()
	var c, s net.Conn
	testutil.Eventually(t, 30*time.Second, "the watch to show a connection reaching ESTABLISHED", func() (bool, string) {
		c, s = l.dial(nil)
		if _, ok := w.next(2*time.Second, func(line string) bool { return established(line, c) }); ok {
			return true, ""
		}
		c.Close()
		s.Close()
		return false, fmt.Sprintf("stderr %s; lines:\n%s", w.stderr, strings.Join(w.seen, "\n"))
	})
	return c, s
}

func decodeChange(t *testing.T, line string) collector.Change {
	t.Helper()
	var ch collector.Change
	dec := json.NewDecoder(strings.NewReader(line))
	if err := dec.Decode(&ch); err != nil || dec.More() {
		t.Fatalf("watch -o json line is not one Change object (%v): %q", err, line)
	}
	return ch
}

func testWatchJSON(t *testing.T, sock string) {
	l := newCLIListener(t)
	w := startWatch(t, "-o", "json", "--api-socket", sock, "--port", l.port())
	c, _ := primeWatch(t, w, l, func(line string, c net.Conn) bool {
		ch := decodeChange(t, line)
		return ch.Type == "state" && ch.State == collector.StateEstablished && ch.From == collector.StateSynSent &&
			ch.Local == c.LocalAddr().String() && ch.Remote == c.RemoteAddr().String()
	})
	local := c.LocalAddr().String()
	c.Close()
	if _, ok := w.next(20*time.Second, func(line string) bool {
		ch := decodeChange(t, line)
		return ch.Type == "state" && ch.Local == local && ch.From == collector.StateEstablished && ch.State == collector.StateFinWait1
	}); !ok {
		t.Fatalf("no ESTABLISHED->FIN_WAIT1 for %s; lines:\n%s", local, strings.Join(w.seen, "\n"))
	}
	if code := w.stop(t, syscall.SIGINT); code != 0 {
		t.Errorf("watch exit %d after SIGINT, want 0; stderr %s", code, w.stderr)
	}
	port, _ := strconv.Atoi(l.port())
	for _, line := range w.seen {
		ch := decodeChange(t, line)
		if ch.Type == "lost" {
			continue
		}
		lp, rp := netip.MustParseAddrPort(ch.Local).Port(), netip.MustParseAddrPort(ch.Remote).Port()
		if int(lp) != port && int(rp) != port {
			t.Errorf("--port %d let through %q", port, line)
		}
	}
}

var watchTimeRE = `^\d\d:\d\d:\d\d\.\d{3} `

func testWatchText(t *testing.T, sock string) {
	l := newCLIListener(t)
	w := startWatch(t, "--api-socket", sock, "--port", l.port())
	pid := os.Getpid()
	c, srv := primeWatch(t, w, l, func(line string, c net.Conn) bool {
		return strings.HasSuffix(line, fmt.Sprintf(" STATE SYN_SENT->ESTABLISHED %s -> %s %s/%d", c.LocalAddr(), c.RemoteAddr(), selfComm(t), pid))
	})
	mustMatch(t, "watch line", w.seen[len(w.seen)-1], watchTimeRE+`STATE SYN_SENT->ESTABLISHED `)
	// The client closes; the server holds on: CLOSE_WAIT, then its verdict.
	conn := fmt.Sprintf("%s -> %s", srv.LocalAddr(), srv.RemoteAddr())
	c.Close()
	line, ok := w.next(30*time.Second, func(line string) bool { return strings.Contains(line, " VERDICT close-wait "+conn) })
	if !ok {
		t.Fatalf("no close-wait verdict for %s; lines:\n%s", conn, strings.Join(w.seen, "\n"))
	}
	mustMatch(t, "verdict line", line, watchTimeRE+`VERDICT close-wait `+regexp.QuoteMeta(conn)+` \S+/\d+: peer closed its side`)
	if !slices.ContainsFunc(w.seen, func(l string) bool { return strings.Contains(l, " STATE ESTABLISHED->CLOSE_WAIT "+conn) }) {
		t.Errorf("no ESTABLISHED->CLOSE_WAIT line for %s:\n%s", conn, strings.Join(w.seen, "\n"))
	}
	srv.Close()
	if _, ok := w.next(20*time.Second, func(line string) bool { return strings.Contains(line, " CLEARED close-wait "+conn) }); !ok {
		t.Fatalf("close-wait verdict not cleared for %s; lines:\n%s", conn, strings.Join(w.seen, "\n"))
	}
	if code := w.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("watch exit %d after SIGTERM, want 0; stderr %s", code, w.stderr)
	}
}

// TestWatchEndsWithAgent: when the agent goes away, watch exits 2.
func TestWatchEndsWithAgent(t *testing.T) {
	privtest.Require(t)
	a, stopAgent := cliAgent(t)
	l := newCLIListener(t)
	w := startWatch(t, "-o", "json", "--api-socket", a.sock, "--port", l.port())
	primeWatch(t, w, l, func(line string, c net.Conn) bool {
		return strings.Contains(line, `"local":"`+c.LocalAddr().String()+`"`)
	})
	stopAgent()
	for range w.lines {
	}
	select {
	case code := <-w.exited:
		if code != 2 || !strings.HasPrefix(w.stderr.String(), "ghostconn watch: ") {
			t.Errorf("watch exit %d, stderr %q after the agent stopped; want exit 2 and a message", code, w.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watch still running 20s after the agent stopped")
	}
}

// TestCLIBadInput: bad flags and targets exit 2 with a message naming the
// problem, before any agent is asked (with no agent there, a command that
// got past validation would say so or take a snapshot).
func TestCLIBadInput(t *testing.T) {
	missing := "/nonexistent/ghostconn-test.sock"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "--verdict", "bogus"}, `ghostconn ls: unknown verdict "bogus" (want one of ghost, close-wait, silent, unresponsive)`},
		{[]string{"ls", "--remote", "10.0.0.0/33"}, `ghostconn ls: --remote: "10.0.0.0/33" is not a CIDR prefix or an IP address`},
		{[]string{"ls", "--remote", "x"}, `--remote: "x" is not a CIDR prefix`},
		{[]string{"ls", "--nosuch"}, "ghostconn ls: flag provided but not defined: -nosuch"},
		{[]string{"ls", "--sort", "bogus"}, `ghostconn ls: unknown sort "bogus" (want one of idle, age, retransmits)`},
		{[]string{"ls", "-o", "yaml"}, `ghostconn ls: -o "yaml": use table, wide or json`},
		{[]string{"ls", "--state", "bogus"}, `unknown tcp state "bogus"`},
		{[]string{"ls", "--pid", "0"}, `pid "0" is not a process id`},
		{[]string{"ls", "--pid", "abc"}, `pid "abc" is not a process id`},
		{[]string{"ls", "--port", "70000"}, `port "70000" is not a port number`},
		{[]string{"ls", "--comm", "a-name-longer-than-15"}, `want a process name of 1 to 15 characters`},
		{[]string{"ls", "extra"}, `unexpected argument "extra"`},
		{[]string{"who", "not-a-target"}, `ghostconn who: target "not-a-target" is not an ip:port (127.0.0.1:80, [::1]:80), a socket inode or a socket cookie`},
		{[]string{"who", "10.0.0.1"}, `target "10.0.0.1" is not an ip:port`},
		{[]string{"who"}, "ghostconn who: missing TARGET"},
		{[]string{"who", "1.2.3.4:5", "6.7.8.9:10"}, `unexpected argument "6.7.8.9:10"`},
		{[]string{"who", "-o", "yaml", "1.2.3.4:5"}, `-o "yaml": use text or json`},
		{[]string{"who", "--verdict", "ghost", "1.2.3.4:5"}, "flag provided but not defined: -verdict"},
		{[]string{"watch", "--verdict", "bogus"}, `ghostconn watch: unknown verdict "bogus"`},
		{[]string{"watch", "--remote", "10.0.0.0/33"}, `--remote: "10.0.0.0/33" is not a CIDR prefix`},
		{[]string{"watch", "--sort", "idle"}, "flag provided but not defined: -sort"},
		{[]string{"watch", "-o", "table"}, `-o "table": use text or json`},
	} {
		args := append(slices.Clone(tc.args), "--api-socket", missing)
		if tc.args[0] == "who" {
			// Flags may follow TARGET too.
			args = append([]string{"who", "--api-socket", missing}, tc.args[1:]...)
		}
		out, stderr, code := ghostconn(t, args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || out != "" {
			t.Errorf("ghostconn %v: exit %d, stdout %q, stderr %q; want exit 2 mentioning %q", args, code, out, stderr, tc.want)
		}
		if strings.Contains(stderr, "no agent") || strings.Contains(stderr, "one-shot") {
			t.Errorf("ghostconn %v went on to ask for connections: %q", args, stderr)
		}
	}
	// `who TARGET --flag` parses the flag after the target.
	_, stderr, code := ghostconn(t, "who", "1.2.3.4:5", "-o", "yaml")
	if code != 2 || !strings.Contains(stderr, `-o "yaml"`) {
		t.Errorf("who TARGET -o yaml: exit %d, %q", code, stderr)
	}
}

// TestNoAgentFallback: with no agent, ls and who take a one-shot snapshot
// from the iterators, say so, show holders and mark shared sockets; as a
// user who cannot load BPF they exit 2 naming both problems.
func TestNoAgentFallback(t *testing.T) {
	privtest.Require(t)
	const missing = "/nonexistent/x.sock"
	l := newCLIListener(t)
	c, srv := l.dial(nil)
	fd := cliFD(t, c)
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	pid := uint32(os.Getpid())
	local, remote := c.LocalAddr().String(), c.RemoteAddr().String()
	const notice = "ghostconn: no agent on " + missing + "; one-shot snapshot from the kernel iterators (no history: closers, state durations, ghost and close-wait verdicts need the agent)\n"

	out, stderr, code := ghostconn(t, "ls", "-o", "json", "--api-socket", missing)
	if code != 0 || stderr != notice {
		t.Fatalf("ls without agent: exit %d, stderr %q; want 0 and the one-shot notice", code, stderr)
	}
	var conns []collector.ConnView
	if err := json.Unmarshal([]byte(out), &conns); err != nil {
		t.Fatal(err)
	}
	v := find(conns, local, remote)
	if v == nil {
		t.Fatalf("one-shot snapshot lacks %s -> %s", local, remote)
	}
	var fds []int
	for _, h := range v.Holders {
		if h.PID != pid {
			t.Errorf("holder %+v, want pid %d", h, pid)
		}
		fds = append(fds, int(h.FD))
	}
	slices.Sort(fds)
	if want := []int{min(fd, dup), max(fd, dup)}; !slices.Equal(fds, want) {
		t.Errorf("holders of the dup'd socket have fds %v, want %v", fds, want)
	}
	if p := find(conns, remote, local); p == nil || len(p.Holders) != 1 || p.Holders[0].FD != int32(cliFD(t, srv)) {
		t.Errorf("server end %+v: want one holder, fd %d", p, cliFD(t, srv))
	}

	out, stderr, code = ghostconn(t, "ls", "--api-socket", missing, "--port", l.port())
	if code != 0 || stderr != notice {
		t.Fatalf("ls table without agent: exit %d, stderr %q", code, stderr)
	}
	rows, footer := tableRows(t, out, tableCols)
	if r := rowOf(rows, local, remote); r == nil || r["PROCESS"] != fmt.Sprintf("%s/%d +1*", selfComm(t), pid) {
		t.Errorf("shared row %v, want PROCESS marked +1*", r)
	}
	if !strings.Contains(footer, "* shared") {
		t.Errorf("no footer explaining the mark: %q", footer)
	}
	out, stderr, code = ghostconn(t, "ls", "-o", "wide", "--api-socket", missing, "--port", l.port())
	if code != 0 {
		t.Fatalf("ls wide without agent: exit %d, %s", code, stderr)
	}
	rows, _ = tableRows(t, out, wideCols)
	if r := rowOf(rows, local, remote); r == nil || r["AGE"] != "-" {
		t.Errorf("wide row %v: a snapshot knows no age", r)
	}

	out, stderr, code = ghostconn(t, "who", local, "--api-socket", missing)
	if code != 0 || stderr != notice {
		t.Fatalf("who without agent: exit %d, stderr %q", code, stderr)
	}
	sec := whoSection(t, out, v.Cookie)
	for _, want := range []string{
		"\nHolders\n", fmt.Sprintf("  * shared: 2 fds in 1 process refer to this socket\n"),
		"\nClosed by\n  unknown: a one-shot snapshot has no history",
		"\nHistory\n  none: a one-shot snapshot has no history",
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("who without agent lacks %q:\n%s", want, sec)
		}
	}
	mustMatch(t, "who without agent", sec,
		fmt.Sprintf(`(?m)^  %d\s+\d+\s+%s\s+%d$`, pid, regexp.QuoteMeta(selfComm(t)), fd),
		fmt.Sprintf(`(?m)^  %d\s+\d+\s+%s\s+%d$`, pid, regexp.QuoteMeta(selfComm(t)), dup),
		`(?m)^  state\s+ESTABLISHED$`)

	out, _, code = ghostconn(t, "who", "-o", "json", "--api-socket", missing, strconv.FormatUint(v.Inode, 10))
	var got []collector.ConnView
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 1 || len(got[0].Holders) != 2 {
		t.Errorf("who -o json without agent: exit %d, %s", code, out)
	}

	// watch has no fallback.
	_, stderr, code = ghostconn(t, "watch", "--api-socket", missing)
	if code != 2 || !strings.Contains(stderr, "no agent is listening on "+missing) {
		t.Errorf("watch without agent: exit %d, %q", code, stderr)
	}

	// Without the privileges for a snapshot, both failures are named.
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary, "ls", "--api-socket", missing)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 || !strings.Contains(se.String(), "no agent is listening on "+missing+", and the one-shot snapshot from the kernel iterators failed too: ") {
		t.Errorf("ls as nobody without agent: %v, stderr %q; want exit 2 naming both failures", err, se.String())
	}
}
