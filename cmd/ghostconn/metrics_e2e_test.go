package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
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
	// A connection so that the table has something to count.
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
	time.Sleep(300 * time.Millisecond)

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
		`ghostconn_connections{state="ESTABLISHED"}`,
		`ghostconn_build_info{`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, ln.Addr().String()) || strings.Contains(body, "port=") {
		t.Errorf("/metrics carries per-connection labels")
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader([]byte(body))
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics on the live agent: %v\n%s", err, out)
		}
	}

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
