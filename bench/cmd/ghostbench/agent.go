package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ghostconn/ghostconn/collector"
)

// agentStatus is what `ghostconn status` prints: the agent's own type,
// not a copy of it, with the harness's helpers.
type agentStatus struct{ collector.Status }

// lost is the agent's events lost: ring-buffer reserve failures, deltas
// the kernel's map refused, and program runs the kernel skipped.
func (s agentStatus) lost() uint64 {
	var n uint64
	for _, v := range s.EventsLost {
		n += v
	}
	for _, v := range s.ProgramMisses {
		n += v
	}
	return n
}

// records is everything the kernel had for the agent: records read from
// the ring, deltas drained from the map, and what was lost.
func (s agentStatus) records() uint64 {
	return s.EventsRead + s.DeltasRead + s.lost()
}

// agent is a running `ghostconn agent`.
type agent struct {
	bin     string
	sock    string
	p       *proc
	ready   time.Duration // from exec to the first status that says ready
	seed    time.Duration // the agent's own "startup=" (API up to ready: the seeding snapshot), 0 if not logged
	logPath string
	hc      *http.Client
}

var agentSeq int

// startAgent runs `ghostconn agent` with its defaults (plus extra flags) on
// its own API socket and waits until its status says ready.
func startAgent(bin, workDir string, extra ...string) (*agent, error) {
	agentSeq++
	sock := filepath.Join(workDir, fmt.Sprintf("agent%d.sock", agentSeq))
	logPath := filepath.Join(workDir, fmt.Sprintf("agent%d.log", agentSeq))
	logf_, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf_.Close()
	args := append([]string{"agent", "--api-socket", sock}, extra...)
	a := &agent{bin: bin, sock: sock, logPath: logPath}
	a.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 60 * time.Second}
	p, err := startProc("ghostconn agent", nil, logf_, logf_, bin, args...)
	if err != nil {
		return nil, err
	}
	a.p = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		if p.exited() {
			return nil, fmt.Errorf("agent exited before ready (%v); log:\n%s", p.err, tail(logPath, 20))
		}
		if s, err := a.statusHTTP(); err == nil && s.Ready {
			a.ready = time.Since(p.start)
			a.seed = seedTime(logPath)
			return a, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("agent not ready after 60s; log:\n%s", tail(logPath, 20))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (a *agent) pid() int { return a.p.pid() }

// statusHTTP asks the API directly (used to poll for readiness without the
// cost of an exec per poll).
func (a *agent) statusHTTP() (agentStatus, error) {
	var s agentStatus
	resp, err := a.hc.Get("http://ghostconn/v1/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("status: %s", resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// waitReconcile reads the agent's status every poll until it counts a
// periodic reconcile past after (done, with its collection and the choice
// of the next wait), for at most limit, and returns that status.
func (a *agent) waitReconcile(after uint64, poll, limit time.Duration) (agentStatus, error) {
	deadline := time.Now().Add(limit)
	for {
		time.Sleep(poll)
		s, err := a.statusHTTP()
		if err != nil {
			return s, err
		}
		if s.PeriodicReconciles > after {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("no periodic reconcile in %s (%d done)", limit, s.PeriodicReconciles)
		}
	}
}

// status runs `ghostconn status`, the way a user reads the counters.
func (a *agent) status() (agentStatus, error) {
	var s agentStatus
	out, err := exec.Command(a.bin, "status", "--api-socket", a.sock).Output()
	if err != nil {
		return s, fmt.Errorf("ghostconn status: %w", err)
	}
	return s, json.Unmarshal(out, &s)
}

// listRaw fetches /v1/connections and discards the body: the server's share
// of `ghostconn ls`.
func (a *agent) listRaw() (int64, error) {
	resp, err := a.hc.Get("http://ghostconn/v1/connections")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

func (a *agent) stop() {
	a.p.stop()
	a.hc.CloseIdleConnections()
}

var startupRe = regexp.MustCompile(`msg=ready .*startup=(\S+)`)

// seedTime reads the agent's "ready ... startup=D" log line (logged just
// after it turns ready), waiting briefly for it.
func seedTime(logPath string) time.Duration {
	for i := 0; i < 50; i++ {
		b, _ := os.ReadFile(logPath)
		if m := startupRe.FindSubmatch(b); m != nil {
			d, _ := time.ParseDuration(string(m[1]))
			return d
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// defaultAgentFlags adapts to the agent's flags: a metrics listener on a
// fixed port (":9977") would collide with any other agent on the host and
// listen beyond loopback, so it is moved to an ephemeral loopback port.
func defaultAgentFlags(bin string, user []string) []string {
	out, _ := exec.Command(bin, "agent", "-h").CombinedOutput()
	flags := append([]string(nil), user...)
	if bytes.Contains(out, []byte("metrics-address")) && !strings.Contains(strings.Join(user, " "), "metrics-address") {
		flags = append(flags, "--metrics-address=127.0.0.1:0")
	}
	return flags
}

// ringBufferDefault reads the agent's default --ring-buffer-bytes from its
// -h ("(default N)"), for the report; "" when it cannot tell.
func ringBufferDefault(bin string) string {
	out, _ := exec.Command(bin, "agent", "-h").CombinedOutput()
	m := regexp.MustCompile(`-ring-buffer-bytes[^\n]*\n[^\n]*\(default (\d+)\)`).FindSubmatch(out)
	if m == nil {
		return ""
	}
	var n float64
	if _, err := fmt.Sscan(string(m[1]), &n); err != nil {
		return ""
	}
	return fmtBytes(n)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
