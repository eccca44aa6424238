package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestAgentServesMetrics(t *testing.T) {
	addr := freePort(t)
	sock := startAgent(t, "--metrics-address", addr)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(p); code != 200 {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
	// The ESTABLISHED gauge counts connections in the table, and on
	// loopback each connection is two of them (the client's socket and the
	// one accepted from the listener). The test's own connections must
	// move it by at least that much. (Other connections on the host can
	// come and go meanwhile; the checks are at least, not exactly.)
	const n = 10
	established := func() float64 {
		code, body := get("/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		return metricValue(t, body, `ghostconn_connections{state="ESTABLISHED"}`)
	}
	before := established()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		conns = append(conns, c, s)
	}
	var peak float64
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("ESTABLISHED to rise by %d from %v", 2*n, before), func() (bool, string) {
		peak = established()
		return peak-before >= 2*n, fmt.Sprintf("ghostconn_connections{state=\"ESTABLISHED\"} %v", peak)
	})

	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`ghostconn_ready 1`,
		`ghostconn_program_attached{program="inet_sock_set_state"} 1`,
		`ghostconn_program_attached{program="sys_enter_close"} 1`,
		`ghostconn_events_lost_total{event="state"} 0`,
		`ghostconn_flagged_connections{verdict="ghost"} 0`,
		`ghostconn_build_info{`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// One gauge per optional kernel feature, 0 where this kernel lacks it.
	for _, f := range bpf.KernelFeatures() {
		v := 0
		if f.Err == nil {
			v = 1
		}
		if want := fmt.Sprintf("ghostconn_kernel_feature{feature=%q} %d", f.Name, v); !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q (this kernel: %v)", want, f.Err)
		}
	}
	if strings.Contains(body, ln.Addr().String()) || strings.Contains(body, "port=") {
		t.Errorf("/metrics carries per-connection labels")
	}
	// Without promtool the check skips outside CI and fails in CI, as
	// privtest.Require does for privileges.
	t.Run("promtool", func(t *testing.T) {
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("promtool check metrics needs promtool in CI: %v", err)
			}
			t.Skipf("skipping promtool check metrics: %v; CI=true makes this a failure", err)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader([]byte(body))
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics on the live agent: %v\n%s", err, out)
		}
	})

	// Closing both ends takes them out of ESTABLISHED.
	for _, c := range conns {
		c.Close()
	}
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("ESTABLISHED to fall by %d from %v after the close", 2*n, peak), func() (bool, string) {
		now := established()
		return peak-now >= 2*n, fmt.Sprintf("ghostconn_connections{state=\"ESTABLISHED\"} %v", now)
	})
	// Profiles are served on the root-only API socket, never on the
	// metrics listener.
	if code, _ := get("/debug/pprof/heap"); code != http.StatusNotFound {
		t.Errorf("metrics listener /debug/pprof/heap: %d, want 404", code)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://ghostconn/debug/pprof/heap?gc=1")
	if err != nil {
		t.Fatal(err)
	}
	prof, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
		t.Errorf("API /debug/pprof/heap: %s, %d bytes; want 200 with a gzipped profile", resp.Status, len(prof))
	}
}

// metricValue returns the value of the sample named series (name and
// labels exactly as exposed) in a text exposition, and fails t if it is
// missing.
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s has value %q: %v", series, v, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics lacks %s", series)
	return 0
}
