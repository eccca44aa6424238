package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// minimalCaps is the documented set (README, deploy/): setpriv syntax.
var minimalCaps = []string{"bpf", "perfmon", "sys_admin", "sys_ptrace", "syslog"}

// withCaps runs the agent as root but with only the given capabilities in
// every set, as systemd's CapabilityBoundingSet= or Kubernetes'
// capabilities.add would, and with no RLIMIT_MEMLOCK, as the unit's
// LimitMEMLOCK=infinity (it matters before 5.11, see withCapsMemlock).
func withCaps(t *testing.T, capList []string, args ...string) *exec.Cmd {
	if !memlockCharged(t) {
		// Left as it is: raising it needs CAP_SYS_RESOURCE, which the
		// test may not have.
		return withCapsMemlock(t, "", capList, args...)
	}
	return withCapsMemlock(t, "unlimited", capList, args...)
}

// memlockCharged says whether the kernel charges BPF maps to
// RLIMIT_MEMLOCK: before 5.11.
func memlockCharged(t *testing.T) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		t.Fatalf("parse kernel release %q: %v", u.Release, err)
	}
	return major < 5 || major == 5 && minor < 11
}

// withCapsMemlock is withCaps with RLIMIT_MEMLOCK set to memlock (prlimit's
// syntax) before the capabilities go; "" leaves it.
func withCapsMemlock(t *testing.T, memlock string, capList []string, args ...string) *exec.Cmd {
	t.Helper()
	set := "-all"
	for _, c := range capList {
		set += ",+" + c
	}
	full := append([]string{"--bounding-set=" + set, "--inh-caps=" + set, "--ambient-caps=" + set, binary, "agent"}, args...)
	if memlock == "" {
		return exec.Command("setpriv", full...)
	}
	return exec.Command("prlimit", append([]string{"--memlock=" + memlock + ":" + memlock, "setpriv"}, full...)...)
}

// startAgentCmd starts an agent command whose API socket is sock, its
// stderr kept in the agentProc's logs.
func startAgentCmd(t *testing.T, sock string, cmd *exec.Cmd) *agentProc {
	t.Helper()
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{sock: sock, cmd: cmd, logs: &logs, exited: make(chan error, 1)}
	go func() { a.exited <- cmd.Wait() }()
	return a
}

// TestAgentWithoutMemlockNamesIt: with RLIMIT_MEMLOCK at 64 KiB and no
// CAP_SYS_RESOURCE to lift it, an agent on a kernel that charges BPF maps
// to the limit (before 5.11) exits 2 saying so and how to fix it; on a
// later kernel, which charges the memory cgroup, it starts.
func TestAgentWithoutMemlockNamesIt(t *testing.T) {
	privtest.Require(t)
	charged := memlockCharged(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	a := startAgentCmd(t, sock, withCapsMemlock(t, "65536", minimalCaps, "--api-socket", sock, "--metrics-address", "", "--pin-dir", ""))
	logs := a.logs
	if charged {
		select {
		case err := <-a.exited:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(logs.String(), "RLIMIT_MEMLOCK") || !strings.Contains(logs.String(), "LimitMEMLOCK=infinity") {
				t.Errorf("agent with a 64 KiB memlock limit: %v, log:\n%s\nwant exit 2 naming RLIMIT_MEMLOCK and the fix", err, logs.String())
			}
		case <-time.After(90 * time.Second):
			a.stop(t)
			t.Fatalf("agent with a 64 KiB memlock limit on a kernel before 5.11 still runs after 90 s; log:\n%s", logs.String())
		}
		return
	}
	defer a.stop(t)
	testutil.Eventually(t, 90*time.Second, "the agent with a 64 KiB memlock limit to become ready", func() (bool, string) {
		out, stderr, code := ghostconn(t, "status", "--api-socket", sock)
		return code == 0 && strings.Contains(out, `"ready": true`), fmt.Sprintf("status exit %d: %s%s\nagent log:\n%s", code, out, stderr, logs.String())
	})
}

func procCaps(t *testing.T, pid int) (eff, bnd string) {
	t.Helper()
	return procField(t, pid, "CapEff:"), procField(t, pid, "CapBnd:")
}

func procField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// TestRootAgentDropsBoundingSetToo: launched as full root (with
// CAP_SETPCAP), the agent shrinks its bounding set as well.
func TestRootAgentDropsBoundingSetToo(t *testing.T) {
	a := launchAgent(t, "", "")
	defer a.stop(t)
	testutil.Eventually(t, 10*time.Second, "the agent to drop capabilities", func() (bool, string) {
		return status(t, a.sock).CapsDropped, "capabilities_dropped is false; agent log:\n" + a.logs.String()
	})
	// CAP_SYS_ADMIN, CAP_SYS_PTRACE and, for kill through sock_diag,
	// CAP_NET_ADMIN (12).
	const want = "0000000000281000"
	if eff, bnd := procCaps(t, a.cmd.Process.Pid); eff != want || bnd != want {
		t.Errorf("CapEff=%s CapBnd=%s, want both %s", eff, bnd, want)
	}

	// An agent that never acts keeps no CAP_NET_ADMIN.
	ro := launchAgent(t, "", "", "--read-only")
	defer ro.stop(t)
	testutil.Eventually(t, 10*time.Second, "the --read-only agent to drop capabilities", func() (bool, string) {
		return status(t, ro.sock).CapsDropped, "capabilities_dropped is false; agent log:\n" + ro.logs.String()
	})
	if eff, _ := procCaps(t, ro.cmd.Process.Pid); eff != "0000000000280000" {
		t.Errorf("--read-only agent: CapEff=%s, want 0000000000280000", eff)
	}
}

func TestAgentRunsWithMinimalCapsAndDropsAfterAttach(t *testing.T) {
	privtest.Require(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	a := startAgentCmd(t, sock, withCaps(t, minimalCaps, "--api-socket", sock, "--metrics-address", "", "--pin-dir", tempPinDir(t), "--reconcile-interval", "1s"))
	cmd, logs := a.cmd, a.logs
	defer a.stop(t)

	// 90 s: under TCG, with another guest beside it, a start took over 30.
	testutil.Eventually(t, 90*time.Second, "the agent with minimal caps to become ready and drop caps", func() (bool, string) {
		out, stderr, code := ghostconn(t, "status", "--api-socket", sock)
		return code == 0 && strings.Contains(out, `"capabilities_dropped": true`),
			fmt.Sprintf("status exit %d:\n%s%s\nagent log:\n%s", code, out, stderr, logs.String())
	})
	st := status(t, sock)
	for name, s := range st.Programs {
		// A program this kernel cannot load says why; any other state
		// than attached means the caps were not enough.
		if lacks := bpf.KernelLacks(name); lacks != "" {
			if !strings.Contains(s, lacks) {
				t.Errorf("with minimal caps, %s: %q, want it to name what the kernel lacks (%s)", name, s, lacks)
			}
			continue
		}
		if s != "attached" {
			t.Errorf("with minimal caps, %s: %s", name, s)
		}
	}
	// CAP_SYS_ADMIN (21) and CAP_SYS_PTRACE (19) only (it was not given
	// CAP_NET_ADMIN, which it would keep for kill), and no execve can
	// bring the others back. (Without CAP_SETPCAP the bounding set stays as
	// setpriv limited it.)
	const want = "0000000000280000"
	if eff, _ := procCaps(t, cmd.Process.Pid); eff != want {
		t.Errorf("after attach CapEff=%s, want %s (CAP_SYS_ADMIN, CAP_SYS_PTRACE)", eff, want)
	}
	if nnp := procField(t, cmd.Process.Pid, "NoNewPrivs:"); nnp != "1" {
		t.Errorf("NoNewPrivs=%s after dropping, want 1", nnp)
	}
	// It still sees new connections and reconciles without errors.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Two reconciles after the connection was made: one a second, or up
	// to ten seconds apart when reconciles are slow (many sockets on the
	// host stretch the interval to keep their cost at half a percent of a core).
	since := status(t, sock).Reconciles
	testutil.Eventually(t, 25*time.Second, "two reconciles after the connection", func() (bool, string) {
		n := status(t, sock).Reconciles
		return n >= since+2, fmt.Sprintf("%d reconciles, %d before the connection", n, since)
	})
	out, stderr, code := ghostconn(t, "ls", "-o", "json", "--api-socket", sock, "--port", fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	if code != 0 || !strings.Contains(out, c.LocalAddr().String()) {
		t.Errorf("after dropping caps, new connection not listed (exit %d): %s %s", code, out, stderr)
	}
	if st := status(t, sock); st.ReconcileErrors != 0 || st.Reconciles < 2 {
		t.Errorf("after dropping caps: %d reconciles, %d errors", st.Reconciles, st.ReconcileErrors)
	}
}

func TestEachMissingCapabilityIsNamed(t *testing.T) {
	privtest.Require(t)
	for i, missing := range minimalCaps {
		rest := append(append([]string{}, minimalCaps[:i]...), minimalCaps[i+1:]...)
		cmd := withCaps(t, rest, "--api-socket", filepath.Join(t.TempDir(), "api.sock"), "--metrics-address", "", "--pin-dir", "")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		want := "CAP_" + strings.ToUpper(missing)
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "missing capabilities "+want) {
			t.Errorf("without %s: %v\n%s", want, err, out)
		}
	}
}
