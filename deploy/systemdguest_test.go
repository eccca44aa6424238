//go:build systemdguest

package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// TestUnderSystemd runs inside the qemu guest that deploy/systemd/test.sh
// boots with systemd as PID 1 (Debian 12's systemd and kernel, the unit
// installed as /etc/systemd/system/ghostconn.service, the agent as
// /usr/local/bin/ghostconn). It starts the unit, finds a ghost this test
// makes and kills it through the agent, kills the agent with SIGKILL and
// waits for the unit's restart, stops the unit, checks that no program of
// the agent is left, and prints `systemd-analyze security` of the unit for
// test.sh to record.
func TestUnderSystemd(t *testing.T) {
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd: this test runs in the guest deploy/systemd/test.sh boots", comm)
	}
	const unit = "ghostconn.service"
	sock := exporter.DefaultAPISocket
	systemctl(t, "start", unit)
	first := readyUnit(t, unit, sock)
	// The sandbox is in force, not skipped with a warning: the system call
	// filter (seccomp mode 2), no_new_privs and exactly the six
	// capabilities in the bounding set.
	st := procStatus(t, atoi(t, unitProp(t, unit, "MainPID")))
	if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" || st["CapBnd"] != capMask(requiredCapNumbers()) {
		t.Errorf("agent under the unit: Seccomp %s NoNewPrivs %s CapBnd %s, want 2, 1, %s",
			st["Seccomp"], st["NoNewPrivs"], st["CapBnd"], capMask(requiredCapNumbers()))
	}

	// A ghost, held by this process.
	g := makeGhost(t)
	local, f, srv, ln := g.Local, g.File, g.Peer, g.Listener
	testutil.Eventually(t, 60*time.Second, "the ghost flagged, held by this process", func() (bool, string) {
		out, err := exec.Command("/usr/local/bin/ghostconn", "ls", "-o", "json", "--verdict", "ghost").CombinedOutput()
		if err != nil {
			return false, fmt.Sprintf("ghostconn ls: %v: %s", err, out)
		}
		var views []collector.ConnView
		if err := json.Unmarshal(out, &views); err != nil {
			return false, fmt.Sprintf("%v: %.300s", err, out)
		}
		for _, v := range views {
			for _, h := range v.Holders {
				if v.Local == local && int(h.PID) == os.Getpid() && h.FD == int32(f.Fd()) {
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("no ghost from %s held by pid %d fd %d in %d ghosts", local, os.Getpid(), f.Fd(), len(views))
	})
	t.Logf("ghost %s flagged, held by pid %d fd %d", local, os.Getpid(), f.Fd())

	// The remedy, from inside the unit's sandbox: ghostconn kill aborts the
	// ghost (through sock_diag before 6.5), and its peer gets the RST.
	ghostconnOK(t, unit, "kill", "--yes", "--verdict", "ghost", local)
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the killed ghost's peer read %v, want ECONNRESET", err)
	}

	// kill --graceful and keepalive act through the holder's fd
	// (pidfd_getfd, allowed by the unit's system call filter).
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c2, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	s2 := <-accepted
	if s2 == nil {
		t.Fatal("accept failed")
	}
	defer s2.Close()
	cookie := cookieOf(t, c2.LocalAddr().String(), c2.RemoteAddr().String())
	ghostconnOK(t, unit, "keepalive", "--yes", "--idle", "30s", "--interval", "5s", "--count", "3", cookie)
	fd := int(fdOf(t, c2))
	on, err1 := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	idle, err2 := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
	if on != 1 || idle != 30 || err1 != nil || err2 != nil {
		t.Errorf("after ghostconn keepalive: SO_KEEPALIVE %d (%v), TCP_KEEPIDLE %d (%v), want 1 and 30", on, err1, idle, err2)
	}
	ghostconnOK(t, unit, "kill", "--graceful", "--yes", cookie)
	s2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := s2.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("the gracefully killed connection's peer read %d, %v, want EOF (a FIN)", n, err)
	}

	// SIGKILL: Restart=on-failure brings it back after RestartSec.
	oldPID := unitProp(t, unit, "MainPID")
	systemctl(t, "kill", "--signal=KILL", unit)
	killedAt := time.Now()
	testutil.Eventually(t, 60*time.Second, "the unit restarted after SIGKILL", func() (bool, string) {
		pid, state, restarts := unitProp(t, unit, "MainPID"), unitProp(t, unit, "ActiveState"), unitProp(t, unit, "NRestarts")
		return pid != "0" && pid != oldPID && state == "active" && restarts == "1",
			fmt.Sprintf("MainPID %s (was %s), ActiveState %s, NRestarts %s", pid, oldPID, state, restarts)
	})
	t.Logf("restarted %s after SIGKILL (pid %s -> %s)", time.Since(killedAt).Round(100*time.Millisecond), oldPID, unitProp(t, unit, "MainPID"))
	second := readyUnit(t, unit, sock)
	testutil.ProgramsGone(t, 10*time.Second, first.ProgramIDs) // the SIGKILLed agent's

	systemctl(t, "stop", unit)
	if state := unitProp(t, unit, "ActiveState"); state != "inactive" {
		t.Errorf("after systemctl stop: ActiveState %s, want inactive (Result %s)", state, unitProp(t, unit, "Result"))
	}
	testutil.ProgramsGone(t, 10*time.Second, second.ProgramIDs)
	// Nothing the agent did was refused by the sandbox.
	if j := unitDiag(unit); strings.Contains(strings.ToLower(j), "operation not permitted") {
		t.Errorf("the agent's journal has a refusal:\n%s", j)
	}

	out, _ := exec.Command("systemd-analyze", "security", "--no-pager", unit).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		fmt.Printf("GHOSTCONN-GUEST SECURITY %s\n", line)
	}
	// The score deploy/README.md records (3.7); dropping a setting shows.
	_, score, ok := strings.Cut(string(out), "Overall exposure level for "+unit+": ")
	if f := strings.Fields(score); !ok || len(f) == 0 {
		t.Errorf("systemd-analyze security %s: no overall exposure level:\n%s", unit, out)
	} else if v, err := strconv.ParseFloat(f[0], 64); err != nil || v > 4.0 {
		t.Errorf("systemd-analyze security %s: exposure %s, want at most 4.0", unit, f[0])
	}
}

// readyUnit waits until unit is active and its agent answers ready on the
// API socket and on /readyz, and returns the agent's status.
func readyUnit(t *testing.T, unit, sock string) collector.Status {
	t.Helper()
	var st collector.Status
	testutil.Eventually(t, 90*time.Second, unit+" active and ready", func() (bool, string) {
		if state := unitProp(t, unit, "ActiveState"); state == "failed" {
			t.Fatalf("%s failed:\n%s", unit, unitDiag(unit))
		} else if state != "active" {
			return false, "ActiveState " + state + ", SubState " + unitProp(t, unit, "SubState")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		st, err = exporter.NewClient(sock).Status(ctx)
		if err != nil || !st.Ready {
			return false, fmt.Sprintf("status: ready %v %s %v", st.Ready, st.NotReadyReason, err)
		}
		code, body, err := httpGet("http://127.0.0.1:9977/readyz")
		return err == nil && code == 200, fmt.Sprintf("/readyz %d %q %v", code, body, err)
	})
	return st
}

func systemctl(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
		t.Fatalf("systemctl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, unitDiag("ghostconn.service"))
	}
}

// ghostconnOK runs the ghostconn CLI and fails t, with the unit's journal,
// unless it exits 0.
func ghostconnOK(t *testing.T, unit string, args ...string) {
	t.Helper()
	out, err := exec.Command("/usr/local/bin/ghostconn", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ghostconn %s: %v\n%s\n%s", strings.Join(args, " "), err, out, unitDiag(unit))
	}
	t.Logf("ghostconn %s:\n%s", strings.Join(args, " "), out)
}

// cookieOf is the agent's cookie of the connection from local to remote.
func cookieOf(t *testing.T, local, remote string) string {
	t.Helper()
	var cookie uint64
	testutil.Eventually(t, 30*time.Second, "the agent to list "+local, func() (bool, string) {
		out, err := exec.Command("/usr/local/bin/ghostconn", "ls", "-o", "json").CombinedOutput()
		var views []collector.ConnView
		if err == nil {
			err = json.Unmarshal(out, &views)
		}
		for _, v := range views {
			if v.Local == local && v.Remote == remote {
				cookie = v.Cookie
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d connections, %v", len(views), err)
	})
	return strconv.FormatUint(cookie, 10)
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fdOf is the fd of c, without taking it out of the runtime's poller.
func fdOf(t *testing.T, c net.Conn) uintptr {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	rc.Control(func(f uintptr) { fd = f })
	return fd
}

// unitDiag is the unit's status and its journal's end.
func unitDiag(unit string) string {
	st, _ := exec.Command("systemctl", "status", "--no-pager", "--lines=0", unit).CombinedOutput()
	j, _ := exec.Command("journalctl", "--no-pager", "--unit="+unit, "--lines=60", "--output=cat").CombinedOutput()
	return string(st) + "\n--- journal:\n" + string(j)
}

// unitProp is one property of unit, as systemctl show prints it.
func unitProp(t *testing.T, unit, prop string) string {
	t.Helper()
	out, err := exec.Command("systemctl", "show", "--value", "--property="+prop, unit).Output()
	if err != nil {
		t.Fatalf("systemctl show %s %s: %v", prop, unit, err)
	}
	return strings.TrimSpace(string(out))
}
