package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ghostconn/ghostconn/bpf"
)

// Soak verdict thresholds (the issue: "RSS and goroutine count stay flat").
const (
	soakRSSSlopeMax       = 1.0 // MiB per minute, absolute
	soakGoroutineSlopeMax = 1.0 // goroutines per minute, absolute
	// Each churn connection has two sockets, and each socket's CLOSE sends
	// exactly one end record (read, or counted lost); the rest of its life
	// is folded in the kernel (drained deltas are counted apart).
	soakEventsPerConn = 2.0
	// At most this share of the expected events may be neither read nor
	// counted lost.
	soakUnaccountedMax = 0.01
)

type soakConfig struct {
	bin        string
	out        string
	self       string
	workDir    string
	duration   time.Duration
	interval   time.Duration
	fitWarmup  time.Duration
	drain      time.Duration
	clients    int
	servers    int
	agentFlags []string
	pinDir     string
}

// soakSample is one look at the agent.
type soakSample struct {
	label     string        // "" for samples under churn
	t         time.Duration // since the churn started
	alive     bool
	rss, hwm  uint64 // /proc/PID/status VmRSS, VmHWM
	threads   int
	fds       int
	cpu       time.Duration // utime+stime so far
	metricsOK bool
	m         map[string]float64 // metric name -> sum over its series
	conns     uint64             // churn connections so far (progress line)
	connsOK   bool               // conns is current (the churn answered)
	churnErrs uint64
}

func (s soakSample) metric(name string) float64 {
	if !s.metricsOK {
		return math.NaN()
	}
	v, ok := s.m[name]
	if !ok {
		return math.NaN()
	}
	return v
}

type soakRun struct {
	c        *soakConfig
	start    time.Time
	elapsed  time.Duration
	a        *agent
	metrics  string
	samples  []soakSample
	crashed  bool
	crashMsg string
	errs     []string
	notes    []string

	churnRes     churnResult
	churnOK      bool
	snmp0        map[string]uint64
	snmp1        map[string]uint64
	progs0       map[uint32]progStat
	progs1       map[uint32]progStat
	status0      agentStatus
	final        soakFinal
	noise        noise
	loadStart    string
	loadEnd      string
	foreign      []foreignProg
	logErrors    int
	logWarns     int
	logPanics    []string
	pinRemoved   error
	keptLog      []byte
	quietSockets int
	exitErr      error // the agent's exit after SIGTERM
	stopped      bool
}

// soakFinal is the loss accounting at the end: the kernel's counters read
// three ways, bracketed by two scrapes.
type soakFinal struct {
	m1, m2        soakSample
	status        agentStatus
	statusErr     error
	kernelLost    map[string]uint64
	kernelErr     error
	consistent    bool
	consistentWhy []string
}

func runSoak(args []string) (code int) {
	c := &soakConfig{}
	fs := flag.NewFlagSet("ghostbench soak", flag.ContinueOnError)
	fs.StringVar(&c.bin, "ghostconn", "bin/ghostconn", "the ghostconn binary to soak")
	fs.StringVar(&c.out, "out", "bench/SOAK.md", "where to write the markdown report (empty: stdout only)")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "churn time")
	fs.DurationVar(&c.interval, "interval", 10*time.Second, "sampling interval")
	fs.DurationVar(&c.fitWarmup, "fit-warmup", time.Minute, "samples before this are left out of the slopes")
	fs.DurationVar(&c.drain, "drain", 3*time.Second, "wait after the churn before the final accounting (the reader's poll picks up the tail)")
	fs.IntVar(&c.clients, "clients", 8, "concurrent churn clients")
	fs.IntVar(&c.servers, "servers", 8, "churn server threads")
	agentFlags := fs.String("agent-flags", "", "extra flags for the agent (space-separated)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c.agentFlags = strings.Fields(*agentFlags)
	if c.interval <= 0 || c.duration < 2*c.interval {
		fmt.Fprintln(os.Stderr, "ghostbench soak: --duration must be at least two --interval")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "ghostbench soak: must run as root (the agent loads eBPF programs)")
		return 2
	}
	if _, err := os.Stat(c.bin); err != nil {
		fmt.Fprintf(os.Stderr, "ghostbench soak: %v (build it: make build)\n", err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ghostbench soak:", err)
		return 2
	}
	c.self = self

	defer runCleanups()
	defer recoverPanic(&code)
	wd, err := prepareRun("ghostsoak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ghostbench soak:", err)
		return 2
	}
	c.workDir = wd

	r := &soakRun{c: c, start: time.Now(), loadStart: loadavg()}
	r.foreign = foreignBPF(nil)
	for _, f := range r.foreign {
		logf("warning: pid %d (%s) holds bpf programs %v: another observer on the same hooks", f.pid, f.cmd, f.names)
	}
	snap0 := snapCPU()
	r.run()
	if r.a != nil {
		// Stop the agent first and keep its log (the work directory goes
		// with the cleanup), so a panic on shutdown is seen too.
		wasAlive := !r.a.p.exited()
		r.a.stop()
		r.stopped = wasAlive
		r.exitErr = r.a.p.err
		r.keptLog, _ = os.ReadFile(r.a.logPath)
	}
	runCleanups() // pin directory and work directory removed
	if c.pinDir != "" {
		if _, err := os.Stat(c.pinDir); err == nil {
			r.errorf("pin directory %s still exists after the cleanup", c.pinDir)
		}
	}
	if r.a != nil {
		r.scanLog()
	}
	r.elapsed = time.Since(r.start)
	r.noise = noiseBetween(snap0, snapCPU())
	r.loadEnd = loadavg()

	md, pass := r.markdown()
	fmt.Print(md)
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "ghostbench soak:", err)
			return 1
		}
		logf("wrote %s", c.out)
	}
	if !pass {
		return 1
	}
	return 0
}

func (r *soakRun) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf("error: %s", msg)
	r.errs = append(r.errs, msg)
}

var metricsAddrRe = regexp.MustCompile(`msg="serving metrics" address=(\S+)`)

// run starts the agent and the churn, samples until the churn ends, and
// does the final accounting. Failures are recorded, not returned: the
// report is written whatever happens.
func (r *soakRun) run() {
	c := r.c
	c.pinDir = fmt.Sprintf("/sys/fs/bpf/gcsoak-%d", os.Getpid())
	if _, err := os.Lstat(c.pinDir); err == nil {
		r.errorf("%s already exists: not ours, left alone", c.pinDir)
		c.pinDir = ""
		return
	}
	// Registered before the agent, so it runs after the agent is stopped.
	pin := c.pinDir
	onCleanup("remove "+pin, func() {
		if err := os.RemoveAll(pin); err != nil {
			logf("remove %s: %v", pin, err)
			r.pinRemoved = err
		}
	})
	r.quietSockets = waitQuietFor(1000, 75*time.Second)
	flags := append([]string{"--metrics-address=127.0.0.1:0", "--pin-dir=" + pin}, c.agentFlags...)
	a, err := startAgent(c.bin, c.workDir, flags...)
	if err != nil {
		r.errorf("start agent: %v", err)
		return
	}
	r.a = a
	logf("agent pid %d ready in %s", a.pid(), a.ready.Round(time.Millisecond))
	for i := 0; i < 250 && r.metrics == ""; i++ {
		b, _ := os.ReadFile(a.logPath)
		if m := metricsAddrRe.FindSubmatch(b); m != nil {
			r.metrics = string(m[1])
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.metrics == "" {
		r.errorf("the agent logged no metrics address; log:\n%s", tail(a.logPath, 20))
		return
	}
	if _, port, _ := net.SplitHostPort(r.metrics); port == "2024" {
		r.errorf("the agent's metrics listener got port 2024, which this harness must not touch")
		return
	}
	logf("agent metrics at http://%s/metrics, pins in %s", r.metrics, pin)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: false}}
	defer hc.CloseIdleConnections()

	r.snmp0 = tcpSNMP()
	r.progs0, _ = readProgStats(a.pid())
	r.status0, _ = a.statusHTTP()
	base := r.sample(hc, 0, 0, 0)
	base.connsOK = true
	base.label = "agent ready, before churn"
	r.samples = append(r.samples, base)

	// The churn, with a progress line per interval.
	outR, outW, err := os.Pipe()
	if err != nil {
		r.errorf("pipe: %v", err)
		return
	}
	p, err := startProc("churn", nil, outW, os.Stderr, c.self, "churn",
		"-clients", strconv.Itoa(c.clients), "-servers", strconv.Itoa(c.servers),
		"-duration", (c.duration + churnSlack).String(), "-warmup", "0s", "-progress")
	outW.Close()
	if err != nil {
		outR.Close()
		r.errorf("start churn: %v", err)
		return
	}
	progCh := make(chan churnProgress, 16)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			line := sc.Bytes()
			var pl churnProgress
			if json.Unmarshal(line, &pl) == nil && pl.Progress {
				select {
				case progCh <- pl:
				default:
				}
				continue
			}
			var res churnResult
			if err := json.Unmarshal(line, &res); err == nil {
				r.churnRes, r.churnOK = res, true
			}
		}
	}()
	// progress asks the churn for its totals now (SIGUSR1 to its pid) and
	// waits for the answer, so the count lines up with the agent's.
	var lastN, lastE uint64
	progress := func() (uint64, uint64, bool) {
		for {
			select {
			case <-progCh: // stale answer
				continue
			default:
			}
			break
		}
		if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			return lastN, lastE, false
		}
		select {
		case pl := <-progCh:
			lastN, lastE = pl.Conns, pl.Errors
			return lastN, lastE, true
		case <-time.After(2 * time.Second):
			logf("churn did not report its progress within 2s")
		case <-p.done:
		}
		return lastN, lastE, false
	}
	// The churn's first line says its SIGUSR1 handler is in place.
	select {
	case <-progCh:
	case <-p.done:
		r.errorf("churn exited at start")
		return
	case <-time.After(30 * time.Second):
		r.errorf("churn did not start within 30s")
		return
	}
	t0 := time.Now()
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	churnDone := false
	for !churnDone {
		select {
		case <-tick.C:
		case <-p.done:
			churnDone = true
			continue
		}
		if time.Since(t0) > c.duration+c.interval/2 {
			continue // the churn's slack: it ends within churnSlack
		}
		n, e, ok := progress()
		s := r.sample(hc, time.Since(t0), n, e)
		s.connsOK = ok
		r.samples = append(r.samples, s)
		last := s
		logf("t=%4.0fs rss %s goroutines %.0f read %.0f lost %.0f conns %d alive %v",
			s.t.Seconds(), fmtBytes(float64(s.rss)), last.metric("go_goroutines"),
			last.metric("ghostconn_events_read_total"), last.metric("ghostconn_events_lost_total"), n, s.alive)
		if !s.alive {
			r.crashed = true
			r.crashMsg = fmt.Sprintf("agent pid %d gone at t=%s (%v); log:\n%s", a.pid(), s.t.Round(time.Second), a.p.err, tail(a.logPath, 30))
			r.errorf("agent crashed: %s", r.crashMsg)
			p.stop()
			break
		}
	}
	if err := p.wait(time.Minute); err != nil && !r.crashed {
		r.errorf("churn: %v", err)
	}
	<-readDone
	if !r.churnOK && !r.crashed {
		r.errorf("churn printed no result")
	}
	if r.crashed {
		return
	}

	// Drain, then account.
	time.Sleep(c.drain)
	end := r.sample(hc, time.Since(t0), r.churnRes.Total, r.churnRes.Errors)
	end.connsOK = r.churnOK
	end.label = fmt.Sprintf("churn over, +%s", c.drain)
	r.samples = append(r.samples, end)
	if !end.alive {
		r.crashed = true
		r.crashMsg = fmt.Sprintf("agent pid %d gone after the churn (%v); log:\n%s", a.pid(), a.p.err, tail(a.logPath, 30))
		r.errorf("agent crashed: %s", r.crashMsg)
		return
	}
	r.snmp1 = tcpSNMP()
	r.progs1, _ = readProgStats(a.pid())
	r.account(hc)
}

// account reads the loss counters three ways (the kernel's per-CPU map
// directly, /metrics, `ghostconn status`) with a scrape before and after,
// so each must lie between the two scrapes.
func (r *soakRun) account(hc *http.Client) {
	f := &r.final
	f.m1 = r.sample(hc, 0, 0, 0)
	f.status, f.statusErr = r.a.status()
	f.kernelLost, f.kernelErr = kernelLost(r.a.pid())
	f.m2 = r.sample(hc, 0, 0, 0)
	f.consistent = true
	fail := func(format string, args ...any) {
		f.consistent = false
		f.consistentWhy = append(f.consistentWhy, fmt.Sprintf(format, args...))
	}
	if !f.m1.metricsOK || !f.m2.metricsOK {
		fail("a /metrics scrape failed")
		return
	}
	between := func(what string, v float64, name string) {
		lo, hi := f.m1.metric(name), f.m2.metric(name)
		if math.IsNaN(lo) || math.IsNaN(hi) {
			fail("/metrics has no %s", name)
			return
		}
		if v < lo || v > hi {
			fail("%s = %.0f, outside the scrapes around it (%.0f .. %.0f)", what, v, lo, hi)
		}
	}
	if f.statusErr != nil {
		fail("`ghostconn status` failed: %v", f.statusErr)
	} else {
		between("`ghostconn status` events_lost", float64(f.status.lost()), "ghostconn_events_lost_total")
		between("`ghostconn status` events_read", float64(f.status.EventsRead), "ghostconn_events_read_total")
	}
	if f.kernelErr != nil {
		fail("kernel stats map: %v", f.kernelErr)
	} else {
		var k uint64
		for _, v := range f.kernelLost {
			k += v
		}
		between("kernel stats map, lost counters", float64(k), "ghostconn_events_lost_total")
	}
}

// sample looks at the agent once.
func (r *soakRun) sample(hc *http.Client, t time.Duration, conns, churnErrs uint64) soakSample {
	pid := r.a.pid()
	s := soakSample{t: t, conns: conns, churnErrs: churnErrs}
	s.alive = !r.a.p.exited()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		s.alive = false
	}
	if !s.alive {
		return s
	}
	s.rss, s.hwm, s.threads = procMemThreads(pid)
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(ents)
	}
	s.cpu, _ = procCPU(pid)
	m, err := scrapeMetrics(hc, "http://"+r.metrics+"/metrics")
	if err != nil {
		r.errorf("t=%s: scrape: %v", t.Round(time.Second), err)
	} else {
		s.m, s.metricsOK = m, true
	}
	return s
}

// waitQuietFor waits up to limit (TIME_WAIT lasts 60s) until the host has
// at most max TCP sockets, so an earlier run's TIME_WAIT sockets are not
// in the table at the start. It returns the count it ended with.
func waitQuietFor(max int, limit time.Duration) int {
	deadline := time.Now().Add(limit)
	for {
		all, _, err := countTCP()
		if err != nil || all <= max || time.Now().After(deadline) {
			return all
		}
		logf("%d TCP sockets on the host (TIME_WAIT from an earlier run?): waiting for them to drain", all)
		time.Sleep(5 * time.Second)
	}
}

// procMemThreads reads VmRSS, VmHWM (bytes) and Threads.
func procMemThreads(pid int) (rss, hwm uint64, threads int) {
	st, err := procStatus(pid)
	if err != nil {
		return 0, 0, 0
	}
	return st["VmRSS"] * 1024, st["VmHWM"] * 1024, int(st["Threads"])
}

// scrapeMetrics fetches a Prometheus text exposition and sums every
// series of each metric name.
func scrapeMetrics(hc *http.Client, url string) (map[string]float64, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("%s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(rd io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		rest := ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name = line[:i]
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			rest = line[j+1:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// kernelLost reads the agent's per-CPU "stats" map itself (found through
// /proc/PID/fdinfo map_id lines): the reserve failures the kernel counted,
// by event kind, independent of the agent.
func kernelLost(pid int) (map[string]uint64, error) {
	ids, err := pidMapIDs(pid)
	if err != nil {
		return nil, err
	}
	kinds := map[string]bpf.GhostconnStatIndex{
		"state":      bpf.GhostconnStatIndexSTAT_LOST_STATE,
		"retransmit": bpf.GhostconnStatIndexSTAT_LOST_RETRANSMIT,
		"keepalive":  bpf.GhostconnStatIndexSTAT_LOST_KEEPALIVE,
		"close":      bpf.GhostconnStatIndexSTAT_LOST_CLOSE,
		"sockopt":    bpf.GhostconnStatIndexSTAT_LOST_SOCKOPT,
		"delta":      bpf.GhostconnStatIndexSTAT_LOST_DELTA,
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := m.Info()
		if err != nil || info.Name != "stats" || info.Type != ebpf.PerCPUArray {
			m.Close()
			continue
		}
		out := map[string]uint64{}
		for kind, idx := range kinds {
			var per []uint64
			if err := m.Lookup(uint32(idx), &per); err != nil {
				m.Close()
				return nil, fmt.Errorf("stats[%d]: %w", idx, err)
			}
			for _, v := range per {
				out[kind] += v
			}
		}
		m.Close()
		return out, nil
	}
	return nil, errors.New("no per-CPU map named stats among the agent's maps")
}

// pidMapIDs lists the ids of the bpf maps a process holds (fdinfo map_id).
func pidMapIDs(pid int) ([]uint32, error) { return pidFdinfoIDs(pid, "map_id:") }

// tcpSNMP reads the Tcp: line pair of /proc/net/snmp (this netns).
func tcpSNMP() map[string]uint64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return nil
	}
	var hdr []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Tcp:") {
			continue
		}
		f := strings.Fields(line)[1:]
		if hdr == nil {
			hdr = f
			continue
		}
		out := map[string]uint64{}
		for i, v := range f {
			if i < len(hdr) {
				n, _ := strconv.ParseInt(v, 10, 64) // CurrEstab may be signed
				out[hdr[i]] = uint64(n)
			}
		}
		return out
	}
	return nil
}

// scanLog counts error and warning lines and looks for a Go panic in the
// agent's log.
func (r *soakRun) scanLog() {
	b := r.keptLog
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(line, "level=ERROR"):
			r.logErrors++
		case strings.Contains(line, "level=WARN"):
			r.logWarns++
		}
		if strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") {
			r.logPanics = append(r.logPanics, line)
		}
	}
}

// fit is a least-squares line y = a + b*x.
type fit struct {
	n         int
	slope, se float64 // per minute; standard error of the slope
	first     float64
	last      float64
	lo, hi    float64
}

func leastSquares(xs, ys []float64) fit {
	f := fit{n: len(xs), slope: math.NaN(), se: math.NaN()}
	if len(xs) == 0 {
		return f
	}
	f.first, f.last = ys[0], ys[len(ys)-1]
	f.lo, f.hi = minMax(ys)
	if len(xs) < 3 {
		return f
	}
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx /= float64(len(xs))
	my /= float64(len(ys))
	var sxx, sxy float64
	for i := range xs {
		sxx += (xs[i] - mx) * (xs[i] - mx)
		sxy += (xs[i] - mx) * (ys[i] - my)
	}
	if sxx == 0 {
		return f
	}
	f.slope = sxy / sxx
	a := my - f.slope*mx
	var rss float64
	for i := range xs {
		e := ys[i] - (a + f.slope*xs[i])
		rss += e * e
	}
	f.se = math.Sqrt(rss / float64(len(xs)-2) / sxx)
	return f
}

// fitOf fits a value of the churn samples at or after the warm-up, against
// minutes.
func (r *soakRun) fitOf(val func(soakSample) float64) fit {
	var xs, ys []float64
	for _, s := range r.samples {
		if s.label != "" || !s.alive || s.t < r.c.fitWarmup {
			continue
		}
		v := val(s)
		if math.IsNaN(v) {
			continue
		}
		xs = append(xs, s.t.Minutes())
		ys = append(ys, v)
	}
	return leastSquares(xs, ys)
}

const (
	mib            = 1 << 20
	reconcileCount = "ghostconn_reconcile_duration_seconds_count"
	reconcileSum   = "ghostconn_reconcile_duration_seconds_sum"
	// churnSlack: the churn runs this much longer than --duration, so
	// the last sample still finds it running.
	churnSlack = 2 * time.Second
)

func (r *soakRun) markdown() (string, bool) {
	c := r.c
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	pass := len(r.errs) == 0 && !r.crashed

	w("# ghostconn soak\n\n")
	w("Written by `make soak` (`ghostbench soak`, bench/cmd/ghostbench/soak.go): one agent, maximum churn for %s, sampled every %s. See bench/README.md.\n\n", c.duration, c.interval)
	w("- date: %s\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	w("- machine: %s\n", machineDesc())
	w("- ghostconn: %s\n", gitDesc())
	if r.a != nil {
		w("- agent: `%s agent --api-socket <tmp> --metrics-address=127.0.0.1:0 --pin-dir=%s%s` (pid %d, ready in %s); pin directory removed at the end: %s\n",
			c.bin, c.pinDir, prefixSpace(strings.Join(c.agentFlags, " ")), r.a.pid(), r.a.ready.Round(time.Millisecond), yesNo(r.pinRemoved == nil))
	}
	w("- TCP sockets on the host before the agent started: %d (waited up to 75 s for an earlier run's TIME_WAIT to drain below 1000)\n", r.quietSockets)
	w("- churn: `ghostbench churn`, %d clients, %d server threads, loopback connect / 1 byte each way / close, no warm-up (every connection counts)\n", c.clients, c.servers)
	w("- harness: %s total, %s; host load outside the harness %.2f cores on average (steal %.2f); loadavg %s at start, %s at end\n",
		r.elapsed.Round(time.Second), runtime.Version(), r.noise.other, r.noise.steal, r.loadStart, r.loadEnd)
	if len(r.foreign) == 0 {
		w("- other eBPF programs: none held by other processes\n\n")
	} else {
		w("- **other eBPF observers were running** (their programs ran on the same hooks):\n")
		for _, f := range r.foreign {
			w("  - pid %d `%s`: %s\n", f.pid, f.cmd, strings.Join(f.names, ", "))
		}
		w("\n")
	}

	// Slopes.
	rssFit := r.fitOf(func(s soakSample) float64 { return float64(s.rss) / mib })
	promRSSFit := r.fitOf(func(s soakSample) float64 { return s.metric("process_resident_memory_bytes") / mib })
	gorFit := r.fitOf(func(s soakSample) float64 { return s.metric("go_goroutines") })
	heapFit := r.fitOf(func(s soakSample) float64 { return s.metric("go_memstats_heap_inuse_bytes") / mib })
	fdFit := r.fitOf(func(s soakSample) float64 { return float64(s.fds) })
	tabFit := r.fitOf(func(s soakSample) float64 { return s.metric("ghostconn_connections") })
	flatRSS := !math.IsNaN(rssFit.slope) && math.Abs(rssFit.slope) < soakRSSSlopeMax
	flatGor := !math.IsNaN(gorFit.slope) && math.Abs(gorFit.slope) < soakGoroutineSlopeMax
	pass = pass && flatRSS && flatGor

	// Loss.
	f := r.final
	var conns, read, lost, kLost uint64
	conns = r.churnRes.Total
	if f.statusErr == nil {
		read, lost = f.status.EventsRead-r.status0.EventsRead, f.status.lost()-r.status0.lost()
	}
	for _, v := range f.kernelLost {
		kLost += v
	}
	var misses uint64
	missBy := map[string]uint64{}
	for id, a := range r.progs1 {
		if bb, ok := r.progs0[id]; ok && a.Misses > bb.Misses {
			misses += a.Misses - bb.Misses
			missBy[a.Name] += a.Misses - bb.Misses
		}
	}
	expected := soakEventsPerConn * float64(conns)
	ratio := float64(read+lost) / math.Max(1, float64(conns))
	unaccounted := expected - float64(read+lost)
	accounted := conns > 0 && f.consistent && unaccounted <= soakUnaccountedMax*expected && misses == 0
	pass = pass && accounted

	w("## Summary\n\n| check | measured | threshold | result |\n|---|---|---|---|\n")
	crash := "agent alive at every sample"
	if r.crashed {
		crash = "**agent died**: " + firstLine(r.crashMsg)
	}
	if len(r.logPanics) > 0 {
		crash += "; panics in the log: " + strings.Join(r.logPanics, "; ")
		pass = false
	}
	if r.stopped {
		ex := "exit 0"
		if r.exitErr != nil {
			ex = r.exitErr.Error()
		}
		crash += "; exit on SIGTERM at the end: " + ex
	}
	w("| crashes | %s (%d samples); log: %d ERROR, %d WARN lines | none | %s |\n", crash, len(r.samples), r.logErrors, r.logWarns, passFail(!r.crashed && len(r.logPanics) == 0))
	w("| agent RSS slope (VmRSS) | %s | \\|slope\\| < %.0f MiB/min | %s |\n", fmtFit(rssFit, "MiB", 3), soakRSSSlopeMax, passFail(flatRSS))
	w("| goroutine slope (go_goroutines) | %s | \\|slope\\| < %.0f /min | %s |\n", fmtFit(gorFit, "", 3), soakGoroutineSlopeMax, passFail(flatGor))
	w("| RSS slope (process_resident_memory_bytes) | %s | (cross-check) | n/a |\n", fmtFit(promRSSFit, "MiB", 3))
	w("| Go heap in use slope (go_memstats_heap_inuse_bytes) | %s | (information) | n/a |\n", fmtFit(heapFit, "MiB", 3))
	w("| open fds slope | %s | (information) | n/a |\n", fmtFit(fdFit, "", 3))
	w("| tracked connections slope (ghostconn_connections) | %s | (information) | n/a |\n", fmtFit(tabFit, "", 1))
	if r.churnOK {
		w("| churn | %d connections in %s (%.0f conn/s), %d client errors | - | n/a |\n", conns, time.Duration(r.churnRes.Seconds*float64(time.Second)).Round(time.Second), float64(conns)/r.churnRes.Seconds, r.churnRes.Errors)
	}
	w("| loss counters agree (kernel stats map = /metrics = `ghostconn status`) | %s | each between two scrapes taken around it | %s |\n", r.agreeText(kLost), passFail(f.consistent))
	w("| events lost (counted) | %d of %d (%.4f%%) | (reported) | n/a |\n", lost, read+lost, 100*float64(lost)/math.Max(1, float64(read+lost)))
	w("| kernel recursion misses (program runs skipped, never counted lost) | %d %s | 0 | %s |\n", misses, missText(missBy), passFail(misses == 0))
	w("| events accounted per connection ((read + lost) / connections) | %.3f (expected %.0f: %.0f expected, %.0f read + lost, %+.0f unaccounted = %.3f%%) | unaccounted <= %.0f%% of expected | %s |\n",
		ratio, soakEventsPerConn, expected, float64(read+lost), unaccounted, 100*unaccounted/math.Max(1, expected), 100*soakUnaccountedMax, passFail(accounted))
	w("\n**Verdict: %s.** Slopes are least-squares fits against minutes over the samples under churn from t = %s on (warm-up left out); "+
		"flat means |VmRSS slope| < %.0f MiB/min and |go_goroutines slope| < %.0f per minute. ± is the standard error of the slope.\n\n",
		map[bool]string{true: "PASS (flat, no crash, every event read or counted lost)", false: "FAIL"}[pass],
		c.fitWarmup, soakRSSSlopeMax, soakGoroutineSlopeMax)

	// Accounting details.
	w("## Loss accounting\n\n")
	w("Counters since the agent was ready (the first sample), read after the churn stopped and %s of drain. ", c.drain)
	w("Every event is either read by the agent (`events_read`) or counted lost in the kernel when the ring-buffer reserve fails (`events_lost`, per-CPU map `stats`, read by the harness directly by map id as well as through /metrics and `ghostconn status`). ")
	w("An event the kernel never produced is not in either: a program run skipped for recursion (the per-program `misses` counter) would be such a loss, and so would a lost event that is not counted. ")
	w("The agent sees every TCP socket in the namespace, so connections not made by the churn (the harness's own scrapes and the status calls, other work on the host) add events too.\n\n")
	w("| source | events read | events lost |\n|---|---|---|\n")
	w("| /metrics before | %.0f | %.0f |\n", f.m1.metric("ghostconn_events_read_total"), f.m1.metric("ghostconn_events_lost_total"))
	if f.statusErr == nil {
		w("| `ghostconn status` | %d | %d %s |\n", f.status.EventsRead, f.status.lost(), lostDetail(f.status.EventsLost))
	} else {
		w("| `ghostconn status` | error: %v | |\n", f.statusErr)
	}
	if f.kernelErr == nil {
		w("| kernel stats map (read by the harness) | - | %d %s |\n", kLost, lostDetail(f.kernelLost))
	} else {
		w("| kernel stats map | - | error: %v |\n", f.kernelErr)
	}
	w("| /metrics after | %.0f | %.0f |\n\n", f.m2.metric("ghostconn_events_read_total"), f.m2.metric("ghostconn_events_lost_total"))
	for _, why := range f.consistentWhy {
		w("- inconsistent: %s\n", why)
	}
	if r.snmp0 != nil && r.snmp1 != nil {
		ao := r.snmp1["ActiveOpens"] - r.snmp0["ActiveOpens"]
		po := r.snmp1["PassiveOpens"] - r.snmp0["PassiveOpens"]
		af := r.snmp1["AttemptFails"] - r.snmp0["AttemptFails"]
		w("Host TCP counters over the same time (/proc/net/snmp): %d active opens, %d passive opens, %d failed attempts, against %d churn connections; "+
			"(read + lost) per active open = %.3f.\n\n", ao, po, af, conns, float64(read+lost)/math.Max(1, float64(ao)))
	}
	if f.statusErr == nil && conns > 0 {
		var parts []string
		keys := make([]string, 0, len(f.status.Transitions))
		for k := range f.status.Transitions {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			d := f.status.Transitions[k] - r.status0.Transitions[k]
			parts = append(parts, fmt.Sprintf("%s %.3f", k, float64(d)/float64(conns)))
		}
		w("State changes the table applied, by new state, per churn connection: %s.\n\n", strings.Join(parts, ", "))
	}

	// Samples.
	w("## Samples\n\n")
	w("t is time since the churn started. Intervals (Δ) are since the previous row. CPU is the agent's utime+stime over the interval, in cores. " +
		"RSS is /proc/PID/status VmRSS; prom RSS is process_resident_memory_bytes; heap is go_memstats_heap_inuse_bytes; tracked is the sum of ghostconn_connections.\n\n")
	w("| t | alive | RSS MiB | prom RSS MiB | heap MiB | goroutines | threads | fds | agent CPU | churn conn/s (Δ) | events read (Δ) | events lost (Δ) | (read+lost)/conn (Δ) | reconciles (Δ, mean time) | tracked |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var prev *soakSample
	for i := range r.samples {
		s := r.samples[i]
		t := fmt.Sprintf("%.0f s", s.t.Seconds())
		if s.label != "" {
			t = s.label
		}
		if s.t < c.fitWarmup && s.label == "" {
			t += " (warm-up)"
		}
		if !s.alive {
			w("| %s | **no** | | | | | | | | | | | | | |\n", t)
			continue
		}
		cpu, rate, dRead, dLost, per, rec := "-", "-", "-", "-", "-", "-"
		if prev != nil {
			dt := (s.t - prev.t).Seconds()
			if s.label != "" || dt <= 0 {
				dt = 0
			}
			connsOK := s.connsOK && prev.connsOK && s.conns >= prev.conns
			if dt > 0 {
				cpu = fmt.Sprintf("%.2f", (s.cpu-prev.cpu).Seconds()/dt)
				if connsOK {
					rate = fmt.Sprintf("%.0f", float64(s.conns-prev.conns)/dt)
				}
			}
			dr := s.metric("ghostconn_events_read_total") - prev.metric("ghostconn_events_read_total")
			dl := s.metric("ghostconn_events_lost_total") - prev.metric("ghostconn_events_lost_total")
			dRead, dLost = fmtF(dr), fmtF(dl)
			if dc := s.conns - prev.conns; connsOK && dc > 0 {
				per = fmt.Sprintf("%.3f", (dr+dl)/float64(dc))
			}
			if n := s.metric(reconcileCount) - prev.metric(reconcileCount); n > 0 {
				rec = fmt.Sprintf("%.0f (%s)", n, fmtMs(1000*(s.metric(reconcileSum)-prev.metric(reconcileSum))/n))
			} else if !math.IsNaN(n) {
				rec = "0"
			}
		}
		w("| %s | yes | %.1f | %.1f | %.1f | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", t,
			float64(s.rss)/mib, s.metric("process_resident_memory_bytes")/mib, s.metric("go_memstats_heap_inuse_bytes")/mib,
			fmtF(s.metric("go_goroutines")), s.threads, s.fds, cpu, rate, dRead, dLost, per, rec, fmtF(s.metric("ghostconn_connections")))
		ps := s
		prev = &ps
	}
	if len(r.samples) > 0 {
		last := r.samples[len(r.samples)-1]
		if last.alive {
			w("\nPeak RSS (VmHWM) at the end: %s.\n", fmtBytes(float64(last.hwm)))
		}
	}
	w("\n")
	if len(r.errs) > 0 || len(r.notes) > 0 {
		w("## Notes\n\n")
		for _, n := range r.notes {
			w("- %s\n", n)
		}
		for _, e := range r.errs {
			w("- ERROR: %s\n", strings.ReplaceAll(e, "\n", " / "))
		}
		w("\n")
	}
	return b.String(), pass
}

func (r *soakRun) agreeText(kLost uint64) string {
	f := r.final
	st := "error"
	if f.statusErr == nil {
		st = fmt.Sprint(f.status.lost())
	}
	k := "error"
	if f.kernelErr == nil {
		k = fmt.Sprint(kLost)
	}
	return fmt.Sprintf("lost: kernel %s, /metrics %s..%s, status %s; status answered: %s",
		k, fmtF(f.m1.metric("ghostconn_events_lost_total")), fmtF(f.m2.metric("ghostconn_events_lost_total")), st, yesNo(f.statusErr == nil))
}

func fmtFit(f fit, unit string, prec int) string {
	if math.IsNaN(f.slope) {
		return fmt.Sprintf("not enough samples (%d)", f.n)
	}
	u := unit
	if u != "" {
		u = " " + u
	}
	return fmt.Sprintf("%+.*f ± %.*f%s/min over %d samples (first %.*f, last %.*f, range %.*f..%.*f%s)",
		prec, f.slope, prec, f.se, u, f.n, 1, f.first, 1, f.last, 1, f.lo, 1, f.hi, u)
}

func fmtF(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func missText(m map[string]uint64) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return "(" + strings.Join(parts, ", ") + ")"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func prefixSpace(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
