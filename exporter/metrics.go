package exporter

import (
	"net/http"
	"runtime/debug"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
)

// MetricsSource is what the Prometheus collector reads at scrape time;
// *collector.Collector implements it.
type MetricsSource interface {
	Source
	// Readiness says whether the agent is ready and, when not, why.
	Readiness() (ready bool, reason string)
	ReconcileDurations() (count uint64, sum float64, buckets map[float64]uint64)
}

// MetricsOptions tune the metrics.
type MetricsOptions struct {
	// ProcessLabel adds per-process series (a "process" label with the
	// name of the connection's first holder).
	ProcessLabel bool
	// MaxProcesses caps the distinct process label values; connections of
	// processes beyond it are counted as "other".
	MaxProcesses int
	// PodLabel adds per-pod series (a "pod_uid" label from the first
	// holder's cgroup; "none" outside Kubernetes), capped by MaxPods.
	PodLabel bool
	MaxPods  int
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("ghostconn_"+name, help, labels, nil)
}

var (
	connectionsDesc      = desc("connections", "TCP connections in the table, by state.", "state")
	flaggedDesc          = desc("flagged_connections", "Connections that carry a verdict, by verdict.", "verdict")
	connectionsProcDesc  = desc("connections_by_process", "TCP connections by process name (first holder; capped, see --metrics-max-processes) and state.", "process", "state")
	flaggedProcDesc      = desc("flagged_connections_by_process", "Connections that carry a verdict, by process name (capped) and verdict.", "process", "verdict")
	connectionsPodDesc   = desc("connections_by_pod", "TCP connections by Kubernetes pod UID of the first holder (capped, see --metrics-max-pods) and state.", "pod_uid", "state")
	flaggedPodDesc       = desc("flagged_connections_by_pod", "Connections that carry a verdict, by pod UID (capped) and verdict.", "pod_uid", "verdict")
	eventsReadDesc       = desc("events_read_total", "Events read from the kernel ring buffer.")
	deltasReadDesc       = desc("deltas_read_total", "Socket deltas drained from the kernel's deltas map: sockets whose state, owner or options changed since the last poll.")
	eventsLostDesc       = desc("events_lost_total", "Events the kernel could not pass to the agent (ring buffer full, or deltas map full or busy), by event kind.", "event")
	decodeErrorsDesc     = desc("decode_errors_total", "Ring-buffer records that could not be decoded and were skipped.")
	readerErrorsDesc     = desc("reader_errors_total", "Failed reads of the event ring buffer (retried; the agent exits when they persist).")
	foldedDesc           = desc("kernel_folded_total", "Records the kernel kept out of the ring buffer because no watch client asked for them (state changes, connect and accept returns and socket options folded into the socket's delta, or only counted), by kind.", "kind")
	drainErrorsDesc      = desc("delta_drain_errors_total", "Failed drains of the kernel's deltas map (the last error is in ghostconn status).")
	snapshotErrorsDesc   = desc("namespace_snapshot_errors_total", "Network namespaces a reconcile or verdict refresh could not snapshot (the last error is in ghostconn status).")
	transitionsDesc      = desc("state_transitions_total", "TCP state changes reported by the kernel, by new state.", "state")
	retransmitsDesc      = desc("retransmits_total", "TCP segment retransmissions reported by the kernel.")
	kaFiringsDesc        = desc("keepalive_timer_firings_total", "Expiries of TCP keepalive timers.")
	kaProbesDesc         = desc("keepalive_probes_total", "Keepalive timer expiries that found the connection idle for its keepalive time, so sent a probe or gave up.")
	raisedDesc           = desc("verdicts_raised_total", "Verdicts raised, by verdict; verdict=\"ghost\" counts ghost detections.", "verdict")
	reconcileDesc        = desc("reconcile_duration_seconds", "Time to snapshot every namespace and correct the table.")
	reconcileErrorsDesc  = desc("reconcile_errors_total", "Reconciles and verdict refreshes that failed.")
	correctionsDesc      = desc("reconcile_corrections_total", "Table entries a snapshot corrected: added (no event announced them), removed (the kernel no longer had them), state (the state differed).", "kind")
	refreshesDesc        = desc("verdict_refreshes_total", "Targeted snapshots taken because a verdict needed fresh evidence.")
	tableFullDesc        = desc("table_dropped_total", "New connections not tracked because the table was at --max-connections.")
	unknownSocketDesc    = desc("unknown_socket_events_total", "Close and setsockopt events for sockets the table did not know.")
	kernelFeatureDesc    = desc("kernel_feature", "Whether the running kernel gives the agent an optional feature (1) or it runs degraded without it (0); status says what degrades.", "feature")
	programAttachedDesc  = desc("program_attached", "Whether an eBPF program is loaded and attached (1) or not (0).", "program")
	programMissesDesc    = desc("program_recursion_misses_total", "Runs of an eBPF program the kernel skipped because it was already running on that CPU (an interrupt nested in it): events lost, repaired by the next reconcile.", "program")
	readyDesc            = desc("ready", "Whether the agent is ready (1): the first snapshot has seeded the table and the event reader and servers run; 0 otherwise, with the reason in /readyz and ghostconn status.")
	buildInfoDesc        = desc("build_info", "Build information; always 1.", "version", "revision", "goversion")
	scrapeErrorDesc      = desc("scrape_error", "Whether reading the agent's own counters failed during this scrape (1) or not (0).")
	capsDroppedDesc      = desc("capabilities_dropped", "Whether the agent dropped the capabilities it needed only to start (1) or not (0).")
	killedDesc           = desc("sockets_killed_total", "Sockets ghostconn kill aborted (mode=abort) or shut down (mode=graceful), counted once the check afterwards saw it done, by the connection's verdict then (verdict=\"none\" for one without).", "verdict", "mode")
	armedDesc            = desc("keepalive_armed_total", "Connections ghostconn keepalive armed with TCP keepalive, counted once the check afterwards saw the values on the socket, by the connection's verdict then (verdict=\"none\" for one without).", "verdict")
	descsWithoutProcess  = []*prometheus.Desc{killedDesc, armedDesc, connectionsDesc, flaggedDesc, eventsReadDesc, deltasReadDesc, eventsLostDesc, decodeErrorsDesc, readerErrorsDesc, foldedDesc, drainErrorsDesc, snapshotErrorsDesc, transitionsDesc, retransmitsDesc, kaFiringsDesc, kaProbesDesc, raisedDesc, reconcileDesc, reconcileErrorsDesc, correctionsDesc, refreshesDesc, tableFullDesc, unknownSocketDesc, kernelFeatureDesc, programAttachedDesc, programMissesDesc, readyDesc, buildInfoDesc, scrapeErrorDesc, capsDroppedDesc}
	lostEventKinds       = []string{"state", "retransmit", "keepalive", "close", "sockopt", "delta"}
	correctionKinds      = []string{"added", "removed", "state"}
	build                = buildInfo()
	otherProcess         = "other"
	noProcess            = "none"
	alwaysReportedStates = []collector.State{collector.StateEstablished, collector.StateCloseWait, collector.StateListen, collector.StateTimeWait}
)

// Metrics is a prometheus.Collector that builds every metric from the
// agent's table and counters at scrape time.
type Metrics struct {
	src  MetricsSource
	opts MetricsOptions

	mu        sync.Mutex
	processes *capped
	pods      *capped
}

// capped hands out label values up to a limit; the rest become "other".
// Values once admitted keep their series for the agent's life, so series
// do not flap between scrapes.
type capped struct {
	limit    int
	admitted map[string]bool
}

func (c *capped) value(v string) string {
	if c.admitted[v] {
		return v
	}
	if len(c.admitted) < c.limit {
		c.admitted[v] = true
		return v
	}
	return otherProcess
}

// Default caps on distinct process and pod_uid label values.
const (
	DefaultMaxProcesses = 100
	DefaultMaxPods      = 200
)

// NewMetrics returns the collector over src.
func NewMetrics(src MetricsSource, opts MetricsOptions) *Metrics {
	if opts.MaxProcesses <= 0 {
		opts.MaxProcesses = DefaultMaxProcesses
	}
	if opts.MaxPods <= 0 {
		opts.MaxPods = DefaultMaxPods
	}
	return &Metrics{src: src, opts: opts,
		processes: &capped{limit: opts.MaxProcesses, admitted: map[string]bool{}},
		pods:      &capped{limit: opts.MaxPods, admitted: map[string]bool{}}}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descsWithoutProcess {
		ch <- d
	}
	if m.opts.ProcessLabel {
		ch <- connectionsProcDesc
		ch <- flaggedProcDesc
	}
	if m.opts.PodLabel {
		ch <- connectionsPodDesc
		ch <- flaggedPodDesc
	}
}

// processLabel names a connection's process for the label: its first
// holder, else its opener, else "none"; capped.
func (m *Metrics) processLabel(c *collector.Conn) string {
	name := noProcess
	switch {
	case len(c.Holders) > 0:
		name = c.Holders[0].Comm
	case c.Opener != nil:
		name = c.Opener.Comm
	}
	return m.processes.value(name)
}

// podLabel names a connection's pod by UID, from its first holder's
// cgroup; "none" outside Kubernetes; capped.
func (m *Metrics) podLabel(c *collector.Conn) string {
	uid := noProcess
	if len(c.Holders) > 0 && c.Holders[0].Cgroup != nil && c.Holders[0].Cgroup.PodUID != "" {
		uid = c.Holders[0].Cgroup.PodUID
	}
	return m.pods.value(uid)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	labelers := map[string]func(*collector.Conn) string{}
	if m.opts.ProcessLabel {
		labelers["process"] = m.processLabel
	}
	if m.opts.PodLabel {
		labelers["pod"] = m.podLabel
	}
	m.mu.Lock()
	sum := m.src.Table().Summarize(labelers)
	m.mu.Unlock()
	for _, st := range alwaysReportedStates {
		if _, ok := sum.ByState[st]; !ok {
			sum.ByState[st] = 0
		}
	}
	for st, n := range sum.ByState {
		gauge(connectionsDesc, float64(n), st.String())
	}
	for _, kind := range collector.VerdictKinds {
		gauge(flaggedDesc, float64(sum.ByVerdict[kind]), kind)
	}
	for k, n := range sum.StateBy["process"] {
		gauge(connectionsProcDesc, float64(n), k[0], k[1])
	}
	for k, n := range sum.VerdictBy["process"] {
		gauge(flaggedProcDesc, float64(n), k[0], k[1])
	}
	for k, n := range sum.StateBy["pod"] {
		gauge(connectionsPodDesc, float64(n), k[0], k[1])
	}
	for k, n := range sum.VerdictBy["pod"] {
		gauge(flaggedPodDesc, float64(n), k[0], k[1])
	}

	ready := 0.0
	if ok, _ := m.src.Readiness(); ok {
		ready = 1
	}
	gauge(readyDesc, ready)
	gauge(buildInfoDesc, 1, build.version, build.revision, build.goversion)

	st, err := m.src.Status()
	if err != nil {
		// The kernel counters could not be read: say so rather than report
		// zeros.
		gauge(scrapeErrorDesc, 1)
		return
	}
	gauge(scrapeErrorDesc, 0)
	counter(eventsReadDesc, st.EventsRead)
	counter(deltasReadDesc, st.DeltasRead)
	for _, k := range lostEventKinds {
		counter(eventsLostDesc, st.EventsLost[k], k)
	}
	counter(decodeErrorsDesc, st.DecodeErrors)
	counter(readerErrorsDesc, st.ReaderErrors)
	for _, k := range []string{"state", "sockopt", "owner"} {
		counter(foldedDesc, st.Folded[k], k)
	}
	counter(drainErrorsDesc, st.DeltaDrainErrors)
	counter(snapshotErrorsDesc, st.SnapshotErrors)
	for name, n := range st.Transitions {
		counter(transitionsDesc, n, name)
	}
	counter(retransmitsDesc, st.RetransmitEvents)
	counter(kaFiringsDesc, st.KeepaliveFirings)
	counter(kaProbesDesc, st.KeepaliveProbes)
	for _, kind := range collector.VerdictKinds {
		counter(raisedDesc, st.VerdictsRaised[kind], kind)
	}
	counter(reconcileErrorsDesc, st.ReconcileErrors)
	for i, n := range []uint64{st.ReconcileAdded, st.ReconcileRemoved, st.ReconcileCorrected} {
		counter(correctionsDesc, n, correctionKinds[i])
	}
	counter(refreshesDesc, st.Refreshes)
	dropped := 0.0
	if st.CapsDropped {
		dropped = 1
	}
	gauge(capsDroppedDesc, dropped)
	killed := map[[2]string]uint64{}
	for _, k := range st.Actions {
		killed[[2]string{k.Verdict, k.Mode}] = k.Count
	}
	for _, v := range append(collector.VerdictKinds[:len(collector.VerdictKinds):len(collector.VerdictKinds)], "none") {
		for _, mode := range []string{collector.ModeAbort, collector.ModeGraceful} {
			counter(killedDesc, killed[[2]string{v, mode}], v, mode)
		}
		counter(armedDesc, killed[[2]string{v, collector.ModeKeepalive}], v)
	}
	counter(tableFullDesc, st.TableFullDrops)
	counter(unknownSocketDesc, st.UnknownSocket)
	names := bpf.ProgramNames()
	sort.Strings(names)
	for _, name := range names {
		state, ok := st.Programs[name]
		if !ok {
			// Not needed on this kernel (bpf.ProbeOnly): no series.
			continue
		}
		v := 0.0
		if state == "attached" {
			v = 1
		}
		gauge(programAttachedDesc, v, name)
		if n, ok := st.ProgramMisses[name]; ok {
			counter(programMissesDesc, n, name)
		}
	}
	for _, f := range st.Features {
		v := 0.0
		if f.Available {
			v = 1
		}
		gauge(kernelFeatureDesc, v, f.Name)
	}
	count, total, buckets := m.src.ReconcileDurations()
	ch <- prometheus.MustNewConstHistogram(reconcileDesc, count, total, buckets)
}

type buildInfoT struct{ version, revision, goversion string }

func buildInfo() buildInfoT {
	b := buildInfoT{version: "(devel)", revision: "unknown", goversion: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.goversion = info.GoVersion
	if info.Main.Version != "" {
		b.version = info.Main.Version
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			b.revision = s.Value
		}
	}
	return b
}

// NewMetricsHandler serves /metrics from its own registry (the agent's
// collector plus the Go runtime and process collectors), /healthz (the
// process answers) and /readyz (the table is seeded and nothing the agent
// depends on has stopped; otherwise 503 with the reason).
func NewMetricsHandler(src MetricsSource, opts MetricsOptions) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewMetrics(src, opts),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := src.Readiness(); !ok {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}
