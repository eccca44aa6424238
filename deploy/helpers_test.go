package deploy

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/caps"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite generated files (kubernetes/prometheus-operator/prometheusrule.yaml)")

// buildDir holds the agent binary built for the privileged tests.
var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// agentBinary builds cmd/ghostconn once, as the Makefile does (without
// cgo, so that the agent can drop capabilities on every thread).
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ghostconn-deploy")
		if buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "ghostconn")
		cmd := exec.Command("go", "build", "-o", buildPath, "github.com/ghostconn/ghostconn/cmd/ghostconn")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build ghostconn: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// requireTool returns the path of a command-line tool. Without it the test
// skips outside CI and fails in CI (CI=true), where `make test` installs
// it.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (Debian package %s; `make test` installs test dependencies): %v", name, pkg, err)
	}
	t.Skipf("skipping: %s not found (apt-get install %s; CI=true fails instead): %v", name, pkg, err)
	return ""
}

// optionalTool returns the path of a tool that the project cannot install
// from Debian's packages, skipping the test (in CI too) without it.
func optionalTool(t *testing.T, name, why string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipping: %s not found (%s): %v", name, why, err)
	}
	return p
}

// run runs a command and fails the test with its output when it fails.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// requiredCaps are the capabilities the deployment grants as Kubernetes
// spells them (BPF, SYS_ADMIN, ...), from the agent's own lists: the
// start-up set and the one used to act on connections.
func requiredCaps() []string {
	var out []string
	for _, c := range append(append([]int{}, bpf.RequiredCaps...), bpf.ActionCaps...) {
		out = append(out, strings.TrimPrefix(caps.Name(c), "CAP_"))
	}
	return out
}

// requiredCapNumbers are requiredCaps as capability numbers.
func requiredCapNumbers() []int {
	return append(append([]int{}, bpf.RequiredCaps...), bpf.ActionCaps...)
}

// capMask is caps as /proc/PID/status prints a capability set.
func capMask(caps []int) string {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return fmt.Sprintf("%016x", m)
}

// freeAddr returns a loopback address nobody listens on right now (never
// port 2024).
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 10 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !strings.HasSuffix(addr, ":2024") {
			return addr
		}
	}
	t.Fatal("no free loopback port")
	return ""
}

// tempPinDir returns a fresh pin directory under bpffs, removed at cleanup.
func tempPinDir(t *testing.T) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/gctest-deploy-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// proc is a process the test started and stops at cleanup, by its pid.
type proc struct {
	name   string
	cmd    *exec.Cmd
	logs   *testutil.SyncBuffer
	exited chan error
}

// start runs cmd until the test ends: SIGTERM at cleanup, SIGKILL if it
// has not exited 10s later.
func start(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, logs: &testutil.SyncBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		return // already stopped (and reported by whoever waited)
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM\n%s", p.name, err, p.logs.String())
		}
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("%s did not stop within 10s of SIGTERM; killed", p.name)
	}
}

// alive fails the test when the process has exited.
func (p *proc) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("%s exited early: %v\n%s", p.name, err, p.logs.String())
	default:
	}
}

// waitFor polls cond until it holds, failing the test after timeout with
// cond's last explanation and the tail of each process's log, or as soon
// as one of procs exits.
func waitFor(t *testing.T, timeout time.Duration, what string, procs []*proc, cond func() (bool, string)) {
	t.Helper()
	done := false
	defer func() {
		if done {
			return
		}
		for _, p := range procs {
			t.Logf("--- %s:\n%s", p.name, tail(p.logs.String(), 4000))
		}
	}()
	testutil.Eventually(t, timeout, what, func() (bool, string) {
		ok, why := cond()
		if !ok {
			for _, p := range procs {
				p.alive(t)
			}
		}
		return ok, why
	})
	done = true
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// httpGet returns the status and body of a GET with a short timeout.
func httpGet(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// agent is a running `ghostconn agent`.
type agent struct {
	*proc
	sock, metrics string
	client        *exporter.Client
}

// startAgent runs the agent with its own API socket, metrics address and
// pin directory, then args, through wrap (nil: directly), and waits until
// it is ready.
func startAgent(t *testing.T, wrap func(sockDir string, argv []string) *exec.Cmd, args ...string) *agent {
	t.Helper()
	sockDir := t.TempDir()
	a := &agent{sock: filepath.Join(sockDir, "api.sock"), metrics: freeAddr(t)}
	argv := append([]string{agentBinary(t), "agent", "--api-socket", a.sock, "--metrics-address", a.metrics, "--pin-dir", tempPinDir(t)}, args...)
	var cmd *exec.Cmd
	if wrap != nil {
		cmd = wrap(sockDir, argv)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	a.proc = start(t, "agent", cmd)
	a.client = exporter.NewClient(a.sock)
	waitFor(t, 60*time.Second, "agent ready", []*proc{a.proc}, func() (bool, string) {
		code, body, err := httpGet("http://" + a.metrics + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == 200, fmt.Sprintf("/readyz %d %s", code, body)
	})
	return a
}

// ghost is a ghost connection this process made on loopback: the
// application closed its end, the dup TCPConn.File made keeps the socket
// open.
type ghost struct {
	// Local is the closed end's address; File the dup that holds it.
	Local string
	File  *os.File
	// Peer is the accepted end; Listener accepts more connections.
	Peer     net.Conn
	Listener net.Listener
}

// makeGhost makes a ghost; everything is closed at cleanup.
func makeGhost(t *testing.T) ghost {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var peer net.Conn
	select {
	case peer = <-accepted:
	case <-time.After(10 * time.Second):
	}
	if peer == nil {
		t.Fatal("accept of the ghost's peer failed or timed out")
	}
	t.Cleanup(func() { peer.Close() })
	g := ghost{Local: conn.LocalAddr().String(), File: f, Peer: peer, Listener: ln}
	conn.Close()
	return g
}
