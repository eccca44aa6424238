package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

var binary string

func TestMain(m *testing.M) {
	if os.Getenv("GHOSTCONN_TEST_HELPER") == "hold" {
		os.Exit(holdHelper())
	}
	dir, err := os.MkdirTemp("", "ghostconn-e2e")
	if err != nil {
		panic(err)
	}
	// Tests run the binary as an unprivileged user too.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "ghostconn")
	// As the Makefile builds it: without cgo, so the agent can drop
	// capabilities on every thread.
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		panic("build ghostconn: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ghostconn runs the binary and returns stdout, stderr and the exit code.
func ghostconn(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// startAgent runs `ghostconn agent` until the test ends and waits until it
// answers on its API socket.
func startAgent(t *testing.T, args ...string) string {
	t.Helper()
	a := launchAgent(t, "", "", args...)
	t.Cleanup(func() { a.stop(t) })
	return a.sock
}

// agentProc is a running `ghostconn agent`.
type agentProc struct {
	sock   string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	exited chan error
}

// stop sends SIGTERM and expects a clean exit.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.exited:
		if err != nil {
			t.Errorf("agent exited with %v after SIGTERM\n%s", err, a.logs.String())
		}
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		t.Errorf("agent did not stop within 10s of SIGTERM")
	}
}

// tempPinDir returns a fresh pin directory under bpffs, removed at cleanup.
func tempPinDir(t *testing.T) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/gctest-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// agentReadyWait bounds the wait for an agent to become ready: a second
// under KVM or natively, but two agents starting at once under TCG (the
// 6.1 suite in CI) took over 30 s.
const agentReadyWait = 90 * time.Second

// launchAgent starts an agent with its own API socket (in sockDir, or a
// temp dir), metrics port and pin directory (pinDir, or a temp one); args
// come last and override those. It waits until the agent is ready.
func launchAgent(t *testing.T, sockDir, pinDir string, args ...string) *agentProc {
	t.Helper()
	privtest.Require(t)
	if sockDir == "" {
		sockDir = t.TempDir()
	}
	if pinDir == "" {
		pinDir = tempPinDir(t)
	}
	a := &agentProc{sock: filepath.Join(sockDir, "api.sock"), logs: &bytes.Buffer{}, exited: make(chan error, 1)}
	a.cmd = exec.Command(binary, append([]string{"agent", "--api-socket", a.sock, "--metrics-address", "127.0.0.1:0", "--pin-dir", pinDir}, args...)...)
	a.cmd.Stderr = a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		err := a.cmd.Wait()
		close(done)
		a.exited <- err
	}()
	// A test that fails before it stops the agent must not leave it
	// running (attached to the host) after the test: kill it by its pid.
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			a.cmd.Process.Kill()
			<-done
		}
	})
	sock, logs, exited := a.sock, a.logs, a.exited
	client := exporter.NewClient(sock)
	testutil.Eventually(t, agentReadyWait, "the agent to be ready", func() (bool, string) {
		st, err := client.Status(context.Background())
		if err == nil && st.Ready {
			return true, ""
		}
		select {
		case err := <-exited:
			t.Fatalf("agent exited early: %v\n%s", err, logs.String())
		default:
		}
		return false, fmt.Sprintf("status: ready %t, error %v\n%s", st.Ready, err, logs.String())
	})
	return a
}

func TestLsJSONHasEveryField(t *testing.T) {
	sock := startAgent(t)
	// Both ends stay open until the test ends.
	client, _ := loopbackPair(t, t, "tcp6", "[::1]:0")

	var conn map[string]any
	testutil.Eventually(t, 10*time.Second, "ls to list the client "+client.LocalAddr().String()+" as ESTABLISHED", func() (bool, string) {
		out, stderr, code := ghostconn(t, "ls", "-o", "json", "--api-socket", sock)
		if code != 0 {
			t.Fatalf("ls exit %d: %s", code, stderr)
		}
		var conns []map[string]any
		if err := json.Unmarshal([]byte(out), &conns); err != nil {
			t.Fatalf("ls -o json is not a JSON array: %v\n%s", err, out)
		}
		for _, c := range conns {
			if c["local"] == client.LocalAddr().String() && c["state"] == "ESTABLISHED" {
				conn = c
			}
		}
		return conn != nil, "ls -o json:\n" + out
	})
	for _, k := range []string{"cookie", "family", "state", "local", "remote", "inode", "uid", "holders", "keepalive", "idle_seconds", "retransmits", "probes_out", "closed_by", "verdicts"} {
		if _, ok := conn[k]; !ok {
			t.Errorf("connection lacks field %q: %v", k, conn)
		}
	}
	if conn["family"] != "ipv6" || conn["remote"] != client.RemoteAddr().String() {
		t.Errorf("family %v remote %v, want ipv6 %s", conn["family"], conn["remote"], client.RemoteAddr())
	}
	ka, _ := conn["keepalive"].(map[string]any)
	for _, k := range []string{"enabled", "idle_seconds", "interval_seconds", "count"} {
		if _, ok := ka[k]; !ok {
			t.Errorf("keepalive lacks %q: %v", k, ka)
		}
	}
	if v, ok := conn["verdicts"].([]any); !ok || v == nil {
		t.Errorf("verdicts is %v, want an array", conn["verdicts"])
	}
}

func TestBadInputExitsTwo(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"ls", "--no-such-flag"}, "flag provided but not defined"},
		{[]string{"ls", "-o", "yaml"}, `-o "yaml": use table, wide or json`},
		// ls and who fall back to a one-shot snapshot (TestNoAgentFallback);
		// watch has no fallback.
		{[]string{"watch", "--api-socket", missing}, "no agent is listening on " + missing},
		{[]string{"agent", "--reconcile-interval", "0s"}, "--reconcile-interval=0s is too short"},
		{[]string{"agent", "--ring-buffer-bytes", "5000"}, "must be a power of two"},
		{[]string{"agent", "--reconcile-interval", "soon"}, "invalid value"},
		{[]string{"agent", "extra"}, `unexpected argument "extra"`},
	} {
		_, stderr, code := ghostconn(t, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("ghostconn %v: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestAgentNamesMissingCapabilities(t *testing.T) {
	privtest.Require(t)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		binary, "agent", "--api-socket", filepath.Join(t.TempDir(), "api.sock"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("unprivileged agent: %v, want exit 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "missing capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN") {
		t.Errorf("error does not name the missing capabilities:\n%s", out)
	}
}

// TestAgentMountsTracefs runs the agent in a private mount namespace where
// tracefs is not mounted: it must mount it and attach the syscall hooks.
func TestAgentMountsTracefs(t *testing.T) {
	privtest.Require(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	script := `umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null
if [ -e /sys/kernel/tracing/events ]; then echo "tracefs still mounted" >&2; exit 3; fi
exec "$0" agent --api-socket "$1" --metrics-address 127.0.0.1:0`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, binary, sock)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	}()
	client := exporter.NewClient(sock)
	var st collector.Status
	testutil.Eventually(t, agentReadyWait, "the agent to be ready", func() (bool, string) {
		var err error
		st, err = client.Status(context.Background())
		if err == nil && st.Ready {
			return true, ""
		}
		select {
		case err := <-exited:
			exited <- err // for the deferred stop, which waits for it
			t.Fatalf("agent exited: %v\n%s", err, logs.String())
		default:
		}
		return false, fmt.Sprintf("status: ready %t, error %v\n%s", st.Ready, err, logs.String())
	})
	if st.Programs["sys_enter_close"] != "attached" {
		t.Errorf("sys_enter_close: %s", st.Programs["sys_enter_close"])
	}
}
