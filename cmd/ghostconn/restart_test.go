package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// programsGone fails the test unless every program id no longer exists.
func programsGone(t *testing.T, ids map[string]uint32) {
	t.Helper()
	testutil.ProgramsGone(t, 5*time.Second, ids)
}

func status(t *testing.T, sock string) collector.Status {
	t.Helper()
	st, err := exporter.NewClient(sock).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSIGTERMDetaches(t *testing.T) {
	a := launchAgent(t, "", "")
	ids := status(t, a.sock).ProgramIDs
	a.stop(t)
	programsGone(t, ids)
	if _, err := os.Stat(a.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("api socket left behind: %v", err)
	}
}

func waitGhost(t *testing.T, sock, local string) collector.ConnView {
	t.Helper()
	var ghost collector.ConnView
	testutil.Eventually(t, 15*time.Second, "a ghost on "+local, func() (bool, string) {
		conns, err := exporter.NewClient(sock).Connections(context.Background(), exporter.Filter{Verdict: collector.VerdictGhost})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Local == local {
				ghost = c
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d ghosts, none on %s", len(conns), local)
	})
	return ghost
}

// TestGhostEvidenceSurvivesKill: a ghost, then kill -9 of the agent; the
// restarted agent reports the same ghost with the original closer.
func TestGhostEvidenceSurvivesKill(t *testing.T) {
	pins := tempPinDir(t)
	a := launchAgent(t, "", pins, "--ghost-grace", "1s")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The server side stays open until the test ends.
	testEnd := make(chan struct{})
	t.Cleanup(func() { close(testEnd) })
	go func() {
		if s, err := ln.Accept(); err == nil {
			defer s.Close()
			<-testEnd
		}
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	local := conn.LocalAddr().String()
	conn.Close()

	start := time.Now()
	before := waitGhost(t, a.sock, local)
	t.Logf("ghost after %s", time.Since(start))
	ids := status(t, a.sock).ProgramIDs
	a.cmd.Process.Kill()
	<-a.exited
	programsGone(t, ids)

	b := launchAgent(t, "", pins, "--ghost-grace", "1s")
	defer b.stop(t)
	start = time.Now()
	after := waitGhost(t, b.sock, local)
	t.Logf("ghost after restart in %s", time.Since(start))
	if before.ClosedBy == nil || after.ClosedBy == nil {
		t.Fatalf("closed_by before %+v after %+v", before.ClosedBy, after.ClosedBy)
	}
	x, y := *before.ClosedBy, *after.ClosedBy
	if x.PID != y.PID || x.FD != y.FD || x.Comm != y.Comm || x.Op != y.Op {
		t.Errorf("closer changed across the restart: before %+v, after %+v", x, y)
	}
	if d := x.At.Sub(y.At).Abs(); d > clockPairing {
		t.Errorf("close time moved by %s across the restart (%s vs %s)", d, x.At, y.At)
	}
	if st := status(t, b.sock); st.ClosesReplayed == 0 {
		t.Errorf("restarted agent replayed no close evidence")
	}
	fi, err := os.Stat(filepath.Join(pins, "closes"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pinned map has mode %04o, want 0600", fi.Mode().Perm())
	}
}

// waitGhostBy waits for a ghost on local whose closer matches want, and
// returns it.
func waitGhostBy(t *testing.T, sock, local, what string, want func(*collector.CloseRecord) bool) collector.ConnView {
	t.Helper()
	var found collector.ConnView
	testutil.Eventually(t, 15*time.Second, "a ghost on "+local+" closed by "+what, func() (bool, string) {
		conns, err := exporter.NewClient(sock).Connections(context.Background(), exporter.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Local != local {
				continue
			}
			// The ghost must be the closer's: a verdict from an earlier
			// closer stands until the rules run again.
			if g := hasVerdict(&c, collector.VerdictGhost); c.ClosedBy != nil && want(c.ClosedBy) && g != nil &&
				strings.Contains(g.Detail, fmt.Sprintf("(pid %d)", c.ClosedBy.PID)) {
				found = c
				return true, ""
			}
			return false, fmt.Sprintf("closed_by %+v, holders %+v, verdicts %+v", c.ClosedBy, c.Holders, c.Verdicts)
		}
		return false, "not listed"
	})
	return found
}

// clockPairing is how far two agents may show the same kernel time apart.
// Each pairs the wall clock with CLOCK_MONOTONIC on its own at start
// (collector's pairClocks): under qemu TCG that pairing is good only to a
// few milliseconds (CI saw 1.066ms). A replay that took its time from the
// restart rather than from the kept record would be off by seconds, which
// the restart tests still catch.
const clockPairing = 25 * time.Millisecond

// TestExitEvidenceSurvivesRestart drives the sequence whose evidence a
// restart used to lose: the opener (sh, holding the connection at fd 3)
// has a child P that keeps it; a helper forked by P drops its inherited
// copy with close(2); then the opener exits. The socket is P's alone and P
// never uses it: a ghost whose closer is the opener's exit. An agent that
// ran throughout and one restarted afterwards with the same pin dir must
// show the same closer and the same verdict. (The kernel used to keep only
// the helper's close, which passes for a child's copy: no ghost.)
func TestExitEvidenceSurvivesRestart(t *testing.T) {
	pins := tempPinDir(t)
	steady := launchAgent(t, "", "", "--ghost-grace", "1s")
	defer steady.stop(t)
	if lacks := bpf.KernelLacks(bpf.ProgExit); lacks != "" {
		// Before 5.17 there is no exit hook (it needs bpf_loop): the
		// agent says so, and an exit is no closer there.
		if why := status(t, steady.sock).Programs[bpf.ProgExit]; !strings.Contains(why, lacks) {
			t.Errorf("status of %s: %q, want the missing %s named", bpf.ProgExit, why, lacks)
		}
		return
	}
	restarted := launchAgent(t, "", pins, "--ghost-grace", "1s")

	conn, _ := loopbackPair(t, t, "tcp4", "127.0.0.1:0")
	local := conn.LocalAddr().String()
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	// P is the background subshell: it forks the helper, which closes
	// fd 3, then becomes sleep. The opener prints P's pid and exits when
	// told.
	opener := exec.Command("sh", "-c", "( (exec 3>&-); exec sleep 600 ) & echo $!; read go; exit 0")
	opener.ExtraFiles = []*os.File{f}
	in, err := opener.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := opener.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := opener.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	conn.Close()
	var holder int
	if _, err := fmt.Fscan(out, &holder); err != nil {
		t.Fatalf("read the holder's pid: %v", err)
	}
	defer func() {
		syscall.Kill(holder, syscall.SIGKILL)
	}()
	testutil.Eventually(t, 10*time.Second, "the holder to exec sleep (the helper has closed its copy)", func() (bool, string) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", holder))
		return err == nil && strings.TrimSpace(string(comm)) == "sleep", fmt.Sprintf("comm %q, %v", comm, err)
	})
	openerPID := uint32(opener.Process.Pid)
	// Both agents know the opener as a holder before it exits, so the
	// steady one can tell its exit even from a holder walk.
	for _, a := range []*agentProc{steady, restarted} {
		testutil.Eventually(t, 10*time.Second, "the opener and the holder listed as holders", func() (bool, string) {
			conns, err := exporter.NewClient(a.sock).Connections(context.Background(), exporter.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range conns {
				if c.Local == local {
					pids := map[uint32]bool{}
					for _, h := range c.Holders {
						pids[h.PID] = true
					}
					return pids[openerPID] && pids[uint32(holder)], fmt.Sprintf("holders %+v", c.Holders)
				}
			}
			return false, "not listed"
		})
	}
	in.Close() // the opener's read ends: it exits
	if err := opener.Wait(); err != nil {
		t.Fatalf("opener: %v", err)
	}

	byExit := func(cb *collector.CloseRecord) bool { return cb.Op == "exit" && cb.PID == openerPID }
	want := waitGhostBy(t, steady.sock, local, "the opener's exit", byExit)
	if cb := want.ClosedBy; cb.Comm != "sh" || cb.FD != 3 || cb.PPID != uint32(os.Getpid()) {
		t.Errorf("closed_by %+v, want sh (child of %d) exiting with fd 3", cb, os.Getpid())
	}
	if len(want.Holders) != 1 || want.Holders[0].PID != uint32(holder) || want.Holders[0].FD != 3 {
		t.Errorf("holders %+v, want sleep (pid %d) at fd 3", want.Holders, holder)
	}
	waitGhostBy(t, restarted.sock, local, "the opener's exit, before the restart", byExit)

	restarted.stop(t)
	again := launchAgent(t, "", pins, "--ghost-grace", "1s")
	defer again.stop(t)
	got := waitGhostBy(t, again.sock, local, "the opener's exit, after the restart", byExit)

	x, y := *want.ClosedBy, *got.ClosedBy
	if x.PID != y.PID || x.PPID != y.PPID || x.Comm != y.Comm || x.FD != y.FD || x.Op != y.Op || x.RefsLeft != y.RefsLeft {
		t.Errorf("closer after the restart %+v, without one %+v", y, x)
	}
	if d := x.At.Sub(y.At).Abs(); d > clockPairing {
		t.Errorf("exit time differs by %s after the restart (%s vs %s)", d, y.At, x.At)
	}
	vx, vy := hasVerdict(&want, collector.VerdictGhost), hasVerdict(&got, collector.VerdictGhost)
	if d := vx.Since.Sub(vy.Since).Abs(); d > clockPairing {
		t.Errorf("ghost since %s after the restart, %s without one", vy.Since, vx.Since)
	}
	// The detail names times to the second; compare it exactly unless the
	// two clocks' conversions fell on either side of a second.
	if x.At.Truncate(time.Second).Equal(y.At.Truncate(time.Second)) && vx.Detail != vy.Detail {
		t.Errorf("ghost detail after the restart:\n%s\nwithout one:\n%s", vy.Detail, vx.Detail)
	}
	if st := status(t, again.sock); st.ClosesReplayed < 2 {
		t.Errorf("restarted agent replayed %d close records, want the helper's close and the opener's exit at least", st.ClosesReplayed)
	}
}

// TestPinDirRefused: a pin directory someone else owns or can write to is
// refused with a message that says why.
func TestPinDirRefused(t *testing.T) {
	privtest.Require(t)
	for _, tc := range []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"owned by nobody", func(dir string) error { return os.Chown(dir, 65534, 65534) }, "owned by uid 65534"},
		{"world-writable", func(dir string) error { return os.Chmod(dir, 0o777) }, "writable by group or others"},
		{"symlink", func(dir string) error {
			if err := os.Remove(dir); err != nil {
				return err
			}
			return os.Symlink("/tmp", dir)
		}, "is a symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempPinDir(t)
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tc.setup(dir); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(binary, "agent", "--api-socket", filepath.Join(t.TempDir(), "api.sock"), "--metrics-address", "", "--pin-dir", dir)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Errorf("agent with pin dir %s: %v, want exit 2 mentioning %q\n%s", tc.name, err, tc.want, out)
			}
		})
	}
}

// TestDisabledProgramDegrades: an optional program that does not load
// leaves the agent running, warned about once, and exported as 0.
func TestDisabledProgramDegrades(t *testing.T) {
	addr := freePort(t)
	a := launchAgent(t, "", "", "--disable-programs", "timer_expire_entry,sys_enter_close", "--metrics-address", addr)
	defer a.stop(t)
	st := status(t, a.sock)
	for _, p := range []string{"timer_expire_entry", "sys_enter_close"} {
		if st.Programs[p] == "attached" {
			t.Errorf("%s attached although disabled", p)
		}
	}
	if st.Programs["inet_sock_set_state"] != "attached" {
		t.Errorf("inet_sock_set_state: %s", st.Programs["inet_sock_set_state"])
	}
	_, body := httpGet(t, "http://"+addr+"/metrics")
	for _, want := range []string{`ghostconn_program_attached{program="timer_expire_entry"} 0`, `ghostconn_program_attached{program="sys_enter_close"} 0`, `ghostconn_program_attached{program="tcp_retransmit_skb"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if n := strings.Count(a.logs.String(), "program=timer_expire_entry"); n != 1 {
		t.Errorf("warned %d times about timer_expire_entry, want once:\n%s", n, a.logs.String())
	}
	// Bad names are refused.
	_, stderr, code := ghostconn(t, "agent", "--disable-programs", "inet_sock_set_state")
	if code != 2 || !strings.Contains(stderr, "not an optional program") {
		t.Errorf("disabling a required program: exit %d %s", code, stderr)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
