package exporter_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

type fakeSource struct {
	table  *collector.Table
	status collector.Status
	err    error
	// notReady is the reason the source is not ready; empty when ready.
	notReady string
}

func (f *fakeSource) Table() *collector.Table           { return f.table }
func (f *fakeSource) Status() (collector.Status, error) { return f.status, f.err }
func (f *fakeSource) Readiness() (bool, string)         { return f.notReady == "", f.notReady }
func (f *fakeSource) ReconcileDurations() (uint64, float64, map[float64]uint64) {
	b := map[float64]uint64{}
	for _, le := range collector.ReconcileBuckets {
		switch {
		case le >= 0.01:
			b[le] = 3
		case le >= 0.005:
			b[le] = 1
		default:
			b[le] = 0
		}
	}
	return 3, 0.021, b
}

var t0 = time.Unix(1_700_000_000, 0)

func stateEvent(cookie uint64, port uint16, from, to collector.State, at time.Time) collector.Event {
	return collector.Event{
		Kind: collector.KindState, Time: at, Cookie: cookie, Netns: 1, Family: collector.FamilyIPv4,
		Local:    netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", port)),
		Remote:   netip.MustParseAddrPort("127.0.0.1:80"),
		OldState: from, State: to,
	}
}

func holder(cookie uint64, pid uint32, comm string) bpf.GhostconnHolderRec {
	r := bpf.GhostconnHolderRec{Cookie: cookie, Pid: pid, Fd: 5}
	for i := range comm {
		r.Comm[i] = int8(comm[i])
	}
	return r
}

// newFake builds a table with an ESTABLISHED connection, a listener and a
// connection in CLOSE_WAIT long enough to be flagged.
func newFake(t *testing.T) *fakeSource {
	t.Helper()
	tbl := collector.NewTable(collector.TableConfig{MaxConns: 1000, MaxHistory: 10, HistoryTTL: time.Minute, Verdicts: collector.DefaultVerdictConfig})
	tbl.Apply([]collector.Event{
		stateEvent(1, 5001, collector.StateSynSent, collector.StateEstablished, t0),
		stateEvent(2, 5002, collector.StateEstablished, collector.StateCloseWait, t0),
		stateEvent(3, 80, collector.StateClose, collector.StateListen, t0),
	})
	later := t0.Add(61 * time.Second)
	tbl.SetHolders([]bpf.GhostconnHolderRec{holder(2, 42, "srv")}, later)
	tbl.Evaluate(later)
	programs := map[string]string{}
	for _, n := range bpf.ProgramNames() {
		programs[n] = "attached"
	}
	programs[bpf.ProgKeepalive] = "load timer_expire_entry: refused"
	return &fakeSource{
		table: tbl,
		status: collector.Status{
			EventsRead:       120,
			DeltasRead:       80,
			Folded:           map[string]uint64{"state": 11, "owner": 12},
			EventsLost:       map[string]uint64{"state": 7},
			DecodeErrors:     1,
			ReaderErrors:     2,
			SnapshotErrors:   3,
			Transitions:      map[string]uint64{"ESTABLISHED": 10, "CLOSE": 9},
			RetransmitEvents: 4,
			KeepaliveFirings: 6,
			KeepaliveProbes:  2,
			VerdictsRaised:   map[string]uint64{"ghost": 3},
			ReconcileAdded:   5,
			Programs:         programs,
			Features:         []collector.KernelFeature{{Name: "bpf_loop", Available: false, Needs: "bpf_loop() (Linux 5.17)", Without: "close_range not hooked"}, {Name: "socket_cookie", Available: true, Needs: "x"}},
			Actions:          []collector.ActionCount{{Verdict: "ghost", Mode: "graceful", Count: 2}, {Verdict: "none", Mode: "abort", Count: 1}, {Verdict: "silent", Mode: "keepalive", Count: 4}},
		},
	}
}

func TestMetricsText(t *testing.T) {
	src := newFake(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(exporter.NewMetrics(src, exporter.MetricsOptions{}))
	expected := `
# HELP ghostconn_connections TCP connections in the table, by state.
# TYPE ghostconn_connections gauge
ghostconn_connections{state="CLOSE_WAIT"} 1
ghostconn_connections{state="ESTABLISHED"} 1
ghostconn_connections{state="LISTEN"} 1
ghostconn_connections{state="TIME_WAIT"} 0
# HELP ghostconn_flagged_connections Connections that carry a verdict, by verdict.
# TYPE ghostconn_flagged_connections gauge
ghostconn_flagged_connections{verdict="close-wait"} 1
ghostconn_flagged_connections{verdict="ghost"} 0
ghostconn_flagged_connections{verdict="silent"} 0
ghostconn_flagged_connections{verdict="unresponsive"} 0
# HELP ghostconn_events_lost_total Events the kernel could not pass to the agent (ring buffer full, or deltas map full or busy), by event kind.
# TYPE ghostconn_events_lost_total counter
ghostconn_events_lost_total{event="close"} 0
ghostconn_events_lost_total{event="delta"} 0
ghostconn_events_lost_total{event="keepalive"} 0
ghostconn_events_lost_total{event="retransmit"} 0
ghostconn_events_lost_total{event="sockopt"} 0
ghostconn_events_lost_total{event="state"} 7
# HELP ghostconn_state_transitions_total TCP state changes reported by the kernel, by new state.
# TYPE ghostconn_state_transitions_total counter
ghostconn_state_transitions_total{state="CLOSE"} 9
ghostconn_state_transitions_total{state="ESTABLISHED"} 10
# HELP ghostconn_retransmits_total TCP segment retransmissions reported by the kernel.
# TYPE ghostconn_retransmits_total counter
ghostconn_retransmits_total 4
# HELP ghostconn_keepalive_probes_total Keepalive timer expiries that found the connection idle for its keepalive time, so sent a probe or gave up.
# TYPE ghostconn_keepalive_probes_total counter
ghostconn_keepalive_probes_total 2
# HELP ghostconn_verdicts_raised_total Verdicts raised, by verdict; verdict="ghost" counts ghost detections.
# TYPE ghostconn_verdicts_raised_total counter
ghostconn_verdicts_raised_total{verdict="close-wait"} 0
ghostconn_verdicts_raised_total{verdict="ghost"} 3
ghostconn_verdicts_raised_total{verdict="silent"} 0
ghostconn_verdicts_raised_total{verdict="unresponsive"} 0
# HELP ghostconn_reconcile_duration_seconds Time to snapshot every namespace and correct the table.
# TYPE ghostconn_reconcile_duration_seconds histogram
ghostconn_reconcile_duration_seconds_bucket{le="0.001"} 0
ghostconn_reconcile_duration_seconds_bucket{le="0.005"} 1
ghostconn_reconcile_duration_seconds_bucket{le="0.01"} 3
ghostconn_reconcile_duration_seconds_bucket{le="0.025"} 3
ghostconn_reconcile_duration_seconds_bucket{le="0.05"} 3
ghostconn_reconcile_duration_seconds_bucket{le="0.1"} 3
ghostconn_reconcile_duration_seconds_bucket{le="0.25"} 3
ghostconn_reconcile_duration_seconds_bucket{le="0.5"} 3
ghostconn_reconcile_duration_seconds_bucket{le="1"} 3
ghostconn_reconcile_duration_seconds_bucket{le="2.5"} 3
ghostconn_reconcile_duration_seconds_bucket{le="5"} 3
ghostconn_reconcile_duration_seconds_bucket{le="10"} 3
ghostconn_reconcile_duration_seconds_bucket{le="+Inf"} 3
ghostconn_reconcile_duration_seconds_sum 0.021
ghostconn_reconcile_duration_seconds_count 3
# HELP ghostconn_program_attached Whether an eBPF program is loaded and attached (1) or not (0).
# TYPE ghostconn_program_attached gauge
ghostconn_program_attached{program="inet_sock_set_state"} 1
ghostconn_program_attached{program="iter_task_file"} 1
ghostconn_program_attached{program="iter_tcp"} 1
ghostconn_program_attached{program="sched_process_exit"} 1
ghostconn_program_attached{program="sys_enter_close"} 1
ghostconn_program_attached{program="sys_enter_close_range"} 1
ghostconn_program_attached{program="sys_enter_connect"} 1
ghostconn_program_attached{program="sys_enter_dup2"} 1
ghostconn_program_attached{program="sys_enter_dup3"} 1
ghostconn_program_attached{program="sys_enter_setsockopt"} 1
ghostconn_program_attached{program="sys_exit_accept"} 1
ghostconn_program_attached{program="sys_exit_accept4"} 1
ghostconn_program_attached{program="sys_exit_connect"} 1
ghostconn_program_attached{program="tcp_retransmit_skb"} 1
ghostconn_program_attached{program="timer_expire_entry"} 0
# HELP ghostconn_keepalive_armed_total Connections ghostconn keepalive armed with TCP keepalive, counted once the check afterwards saw the values on the socket, by the connection's verdict then (verdict="none" for one without).
# TYPE ghostconn_keepalive_armed_total counter
ghostconn_keepalive_armed_total{verdict="close-wait"} 0
ghostconn_keepalive_armed_total{verdict="ghost"} 0
ghostconn_keepalive_armed_total{verdict="none"} 0
ghostconn_keepalive_armed_total{verdict="silent"} 4
ghostconn_keepalive_armed_total{verdict="unresponsive"} 0
# HELP ghostconn_sockets_killed_total Sockets ghostconn kill aborted (mode=abort) or shut down (mode=graceful), counted once the check afterwards saw it done, by the connection's verdict then (verdict="none" for one without).
# TYPE ghostconn_sockets_killed_total counter
ghostconn_sockets_killed_total{mode="abort",verdict="close-wait"} 0
ghostconn_sockets_killed_total{mode="abort",verdict="ghost"} 0
ghostconn_sockets_killed_total{mode="abort",verdict="none"} 1
ghostconn_sockets_killed_total{mode="abort",verdict="silent"} 0
ghostconn_sockets_killed_total{mode="abort",verdict="unresponsive"} 0
ghostconn_sockets_killed_total{mode="graceful",verdict="close-wait"} 0
ghostconn_sockets_killed_total{mode="graceful",verdict="ghost"} 2
ghostconn_sockets_killed_total{mode="graceful",verdict="none"} 0
ghostconn_sockets_killed_total{mode="graceful",verdict="silent"} 0
ghostconn_sockets_killed_total{mode="graceful",verdict="unresponsive"} 0
# HELP ghostconn_reader_errors_total Failed reads of the event ring buffer (retried; the agent exits when they persist).
# TYPE ghostconn_reader_errors_total counter
ghostconn_reader_errors_total 2
# HELP ghostconn_namespace_snapshot_errors_total Network namespaces a reconcile or verdict refresh could not snapshot (the last error is in ghostconn status).
# TYPE ghostconn_namespace_snapshot_errors_total counter
ghostconn_namespace_snapshot_errors_total 3
# HELP ghostconn_ready Whether the agent is ready (1): the first snapshot has seeded the table and the event reader and servers run; 0 otherwise, with the reason in /readyz and ghostconn status.
# TYPE ghostconn_ready gauge
ghostconn_ready 1
# HELP ghostconn_reconcile_corrections_total Table entries a snapshot corrected: added (no event announced them), removed (the kernel no longer had them), state (the state differed).
# TYPE ghostconn_reconcile_corrections_total counter
ghostconn_reconcile_corrections_total{kind="added"} 5
ghostconn_reconcile_corrections_total{kind="removed"} 0
ghostconn_reconcile_corrections_total{kind="state"} 0
# HELP ghostconn_deltas_read_total Socket deltas drained from the kernel's deltas map: sockets whose state, owner or options changed since the last poll.
# TYPE ghostconn_deltas_read_total counter
ghostconn_deltas_read_total 80
# HELP ghostconn_kernel_folded_total Records the kernel kept out of the ring buffer because no watch client asked for them (state changes, connect and accept returns and socket options folded into the socket's delta, or only counted), by kind.
# TYPE ghostconn_kernel_folded_total counter
ghostconn_kernel_folded_total{kind="owner"} 12
ghostconn_kernel_folded_total{kind="sockopt"} 0
ghostconn_kernel_folded_total{kind="state"} 11
# HELP ghostconn_kernel_feature Whether the running kernel gives the agent an optional feature (1) or it runs degraded without it (0); status says what degrades.
# TYPE ghostconn_kernel_feature gauge
ghostconn_kernel_feature{feature="bpf_loop"} 0
ghostconn_kernel_feature{feature="socket_cookie"} 1
`
	names := []string{
		"ghostconn_connections", "ghostconn_flagged_connections", "ghostconn_events_lost_total",
		"ghostconn_state_transitions_total", "ghostconn_retransmits_total", "ghostconn_keepalive_probes_total",
		"ghostconn_verdicts_raised_total", "ghostconn_reconcile_duration_seconds", "ghostconn_program_attached",
		"ghostconn_ready", "ghostconn_reconcile_corrections_total",
		"ghostconn_reader_errors_total", "ghostconn_namespace_snapshot_errors_total",
		"ghostconn_deltas_read_total", "ghostconn_kernel_folded_total", "ghostconn_kernel_feature",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), names...); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "ghostconn_build_info"); err != nil || n != 1 {
		t.Errorf("build_info series: %d, %v", n, err)
	}
}

// TestMetricsScrapeErrorIsVisible: counters that cannot be read are not
// reported as zero.
func TestMetricsScrapeErrorIsVisible(t *testing.T) {
	src := newFake(t)
	src.err = fmt.Errorf("read stats: map gone")
	reg := prometheus.NewRegistry()
	reg.MustRegister(exporter.NewMetrics(src, exporter.MetricsOptions{}))
	expected := `
# HELP ghostconn_scrape_error Whether reading the agent's own counters failed during this scrape (1) or not (0).
# TYPE ghostconn_scrape_error gauge
ghostconn_scrape_error 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "ghostconn_scrape_error"); err != nil {
		t.Error(err)
	}
	if n, _ := testutil.GatherAndCount(reg, "ghostconn_events_lost_total"); n != 0 {
		t.Errorf("events_lost_total reported (%d series) although the counters could not be read", n)
	}
}

func TestProcessLabelCardinalityCap(t *testing.T) {
	const processes, limit = 300, 50
	tbl := collector.NewTable(collector.TableConfig{MaxConns: 1000, Verdicts: collector.DefaultVerdictConfig})
	var evs []collector.Event
	var holders []bpf.GhostconnHolderRec
	for i := 0; i < processes; i++ {
		cookie := uint64(i + 1)
		evs = append(evs, stateEvent(cookie, uint16(10000+i), collector.StateSynSent, collector.StateEstablished, t0))
		holders = append(holders, holder(cookie, uint32(1000+i), fmt.Sprintf("proc-%03d", i)))
	}
	tbl.Apply(evs)
	tbl.SetHolders(holders, t0)
	src := newFake(t)
	src.table = tbl
	reg := prometheus.NewRegistry()
	reg.MustRegister(exporter.NewMetrics(src, exporter.MetricsOptions{ProcessLabel: true, MaxProcesses: limit}))
	for scrape := 0; scrape < 2; scrape++ {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		values := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "ghostconn_connections_by_process" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "process" {
						values[l.GetValue()] += m.GetGauge().GetValue()
					}
				}
			}
		}
		if len(values) > limit+1 {
			t.Errorf("scrape %d: %d process label values, want at most %d", scrape, len(values), limit+1)
		}
		if values["other"] != processes-limit {
			t.Errorf("scrape %d: other=%v, want %d", scrape, values["other"], processes-limit)
		}
		total := 0.0
		for _, v := range values {
			total += v
		}
		if total != processes {
			t.Errorf("scrape %d: by-process series add up to %v, want %d", scrape, total, processes)
		}
	}
}

func TestMetricsHandlerHealthAndPromtool(t *testing.T) {
	src := newFake(t)
	notReady := newFake(t)
	notReady.notReady = "event reader: read event ring buffer: injected"
	for _, tc := range []struct {
		src  *fakeSource
		path string
		code int
		body string
	}{
		{src, "/healthz", 200, "ok"},
		{src, "/readyz", 200, "ready"},
		{notReady, "/readyz", 503, "not ready: event reader: read event ring buffer: injected"},
		{notReady, "/healthz", 200, "ok"},
	} {
		rec := httptest.NewRecorder()
		exporter.NewMetricsHandler(tc.src, exporter.MetricsOptions{}).ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%s: %d %q, want %d with %q", tc.path, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
	}

	srv := httptest.NewServer(exporter.NewMetricsHandler(src, exporter.MetricsOptions{ProcessLabel: true}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(body, []byte("ghostconn_connections_by_process{process=\"srv\",state=\"CLOSE_WAIT\"} 1")) {
		t.Errorf("per-process series missing:\n%s", body)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not installed in CI (make test installs the prometheus package)")
		}
		t.Skip("promtool not installed (apt-get install prometheus); CI=true runs this check")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
