package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Goals from the benchmark issue.
const (
	goalChurnRatio = 0.95
	// The hook goals are over the empty program of the same type on the
	// same hook (or, for close_range, dup2 and dup3, the empty syscall
	// tracepoint on close) in the same window.
	goalCloseNs = 40.0
	goalTimerNs = 10.0
	goalStateNs = 100.0
	// minHookRuns is the fewest runs of a program and of the empty one in
	// a window for the window to count towards a hook goal: a mean of a
	// few dozen cold runs says more about caches than about the program.
	minHookRuns     = 1000
	goalLsMs        = 150.0
	goalLsVsSS      = 20.0
	goalReady       = time.Second
	goalRSS         = 150e6 // bytes (150 MB)
	goalCPUFraction = 0.01
	// goalTopCPUFraction bounds the agent and `ghostconn top` each, with top
	// open at scale.
	goalTopCPUFraction = 0.05
	goalTaxDupClose    = 1.15 // ratio to bare
	goalTaxGetppid     = 1.12 // ratio to bare
	goalHarnessLimit   = 13 * time.Minute
	// goalLinear bounds, for each cost of the scaling phase, its cost per
	// socket at the largest size over that at the middle one: linear
	// growth is 1.
	goalLinear = 1.5
)

// Program names as the agent's bpf/probes.go calls them.
var (
	closeHooks = []string{"sys_enter_close", "sys_enter_close_range", "sys_enter_dup2", "sys_enter_dup3"}
	timerHook  = "timer_expire_entry"
	stateHook  = "inet_sock_set_state"
	// Display order; programs not listed here follow by name.
	progOrder = []string{"inet_sock_set_state", "tcp_retransmit_skb", "timer_expire_entry",
		"sys_enter_close", "sys_enter_close_range", "sys_enter_dup2", "sys_enter_dup3",
		"sys_enter_setsockopt", "sys_enter_connect", "sys_exit_connect", "sys_exit_accept", "sys_exit_accept4",
		"iter_tcp", "iter_task_file"}
)

type lossRun struct {
	stats bool   // the run with bpf stats enabled
	conns uint64 // connections made in the measured time
	total uint64 // connections made, warm-up included: what the agent saw
	s     agentStatus
	cores float64 // agent CPU during the churn, in cores
	secs  float64 // churn time including warm-up
}

type results struct {
	c         *config
	start     time.Time
	elapsed   time.Duration
	phaseTime map[string]time.Duration
	notes     []string
	errors    []string

	// churn
	churnObservers []string
	churn          map[string][]float64
	churnErrors    map[string]uint64
	churnNoise     map[string][]noise
	obsCores       map[string][]float64
	statsChurnRate float64
	lastRound      time.Duration
	roundsDone     int
	loss           []lossRun

	// kernel cost
	windows    []string
	windowDur  map[string]time.Duration
	kcost      map[string]map[string]progDelta
	fdmixIters uint64
	fdmixLost  uint64

	// syscall tax: ns per operation by observer, then operation, per round
	taxObservers  []string
	tax           map[string]map[string][]float64
	taxNoise      map[string][]noise
	taxRoundsDone int

	// scale and start-up
	readyQuiet   []time.Duration
	readyScale   []time.Duration
	seedQuiet    []time.Duration
	seedScale    []time.Duration
	rssQuiet     uint64
	quietSockets int
	connsQuiet   int
	scaleTarget  int
	established  int
	holdSetup    time.Duration
	connsScale   int
	rssReady     uint64
	rssIdle      uint64
	hwmIdle      uint64
	rssAfterLs   uint64
	hwmAfterLs   uint64
	idleCPU      time.Duration
	idleWall     time.Duration
	// reconcileWait is the wait the agent chose after its first periodic
	// reconcile at scale: the idle window's length.
	reconcileWait time.Duration
	// scaling is the scaling phase, by growing size.
	scaling []scalePoint
	// tw is the window while a churn burst's TIME_WAIT sockets expire at
	// scale.
	tw twWindow
	// topAgentCPU and topCPU are the agent's and `ghostconn top`'s CPU
	// over topWall with top open at scale.
	topAgentCPU, topCPU, topWall time.Duration
	reconcileSecs                float64
	lsEntries                    int
	lsTimes                      map[string][]time.Duration
	missingProgs                 []string

	// host noise
	loadStart, loadEnd string
	foreignStart       []foreignProg
	foreignChurn       []foreignProg
	phaseNoise         map[string]noise
	runNoise           noise
}

func newResults(c *config) *results {
	return &results{
		c: c, start: time.Now(),
		phaseTime:   map[string]time.Duration{},
		churn:       map[string][]float64{},
		churnErrors: map[string]uint64{},
		churnNoise:  map[string][]noise{},
		obsCores:    map[string][]float64{},
		phaseNoise:  map[string]noise{},
		windowDur:   map[string]time.Duration{},
		kcost:       map[string]map[string]progDelta{},
		lsTimes:     map[string][]time.Duration{},
		tax:         map[string]map[string][]float64{},
		taxNoise:    map[string][]noise{},
	}
}

func (r *results) notef(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *results) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf("error: %s", msg)
	r.errors = append(r.errors, msg)
}

func (r *results) addWindow(name string, d time.Duration, deltas map[string]progDelta) {
	if _, ok := r.kcost[name]; !ok {
		r.windows = append(r.windows, name)
	}
	r.kcost[name] = deltas
	r.windowDur[name] = d
}

func (r *results) checkPrograms(s agentStatus) {
	for name, st := range s.Programs {
		if st != "attached" {
			msg := name + ": " + st
			for _, m := range r.missingProgs {
				if m == msg {
					return
				}
			}
			r.missingProgs = append(r.missingProgs, msg)
		}
	}
}

// goal is one line of the summary.
type goal struct {
	id, what, measured, target, result string
}

func (r *results) goals() []goal {
	var gs []goal
	add := func(id, what, measured, target string, ok *bool) {
		res := "n/a"
		if ok != nil {
			res = passFail(*ok)
		}
		gs = append(gs, goal{id, what, measured, target, res})
	}
	bp := func(b bool) *bool { return &b }

	// 1. Churn.
	bare := median(r.churn[obsBare])
	if len(r.churn[obsBare]) > 0 && len(r.churn[obsGhostconn]) > 0 {
		ratio := median(r.churn[obsGhostconn]) / bare
		paired := median(pairedRatios(r.churn[obsGhostconn], r.churn[obsBare]))
		add("1", "churn throughput with ghostconn agent, vs bare",
			fmt.Sprintf("%s (per-round median %s)", fmtRatio(ratio), fmtRatio(paired)),
			fmt.Sprintf(">= %.2fx", goalChurnRatio), bp(ratio >= goalChurnRatio))
	} else {
		add("1", "churn throughput with ghostconn agent, vs bare", "not measured", fmt.Sprintf(">= %.2fx", goalChurnRatio), nil)
	}
	if len(r.churn[obsTcpstates]) > 0 {
		add("1", "churn throughput with tcpstates (reference)",
			fmtRatio(median(r.churn[obsTcpstates])/bare), "about 0.53x on this machine kind", nil)
	}

	// 2. Kernel cost per program, over every window where it ran, each
	// beside the empty program of its type in the same window.
	hookGoal := func(names []string, floor string, limit float64, label string, windows []string) {
		worst := math.NaN()
		var parts []string
		for _, name := range names {
			for _, w := range windows {
				d, ok := r.kcost[w][name]
				if !ok || d.RunCnt == 0 {
					continue
				}
				e, ok := r.kcost[w][floor]
				if !ok || e.RunCnt < minHookRuns || d.RunCnt < minHookRuns {
					parts = append(parts, fmt.Sprintf("%s %.0f ns (%s, %d runs; too few of it or the empty program, %d, to compare)", name, d.meanNs(), w, d.RunCnt, e.RunCnt))
					continue
				}
				over := d.meanNs() - e.meanNs()
				if math.IsNaN(worst) || over > worst {
					worst = over
				}
				parts = append(parts, fmt.Sprintf("%s %.0f ns vs %.0f empty, %+.0f (%s)", name, d.meanNs(), e.meanNs(), over, w))
			}
		}
		target := fmt.Sprintf("<= empty + %.0f ns", limit)
		if math.IsNaN(worst) {
			add("2", label, "no runs measured beside the empty program", target, nil)
			return
		}
		add("2", label, fmt.Sprintf("worst %+.0f ns over empty: %s", worst, strings.Join(parts, "; ")), target, bp(worst <= limit))
	}
	ghostWindows := []string{winQuiet, winIdle, winChurn, winFdmix}
	hookGoal(closeHooks, "(empty) tracepoint/syscalls/sys_enter_close", goalCloseNs, "close hooks (close, close_range, dup2, dup3)", ghostWindows)
	hookGoal([]string{timerHook}, "(empty) tp_btf/timer_expire_entry", goalTimerNs, "timer hook (no keepalive timers in these windows)", ghostWindows)
	hookGoal([]string{stateHook}, "(empty) tp_btf/inet_sock_set_state", goalStateNs, "state changes", ghostWindows)

	// 3. Loss at maximum churn.
	if len(r.loss) > 0 {
		var lost, read, records, conns, total uint64
		for _, l := range r.loss {
			lost += l.s.lost()
			read += l.s.EventsRead + l.s.DeltasRead
			records += l.s.records()
			conns += l.conns
			total += l.total
		}
		add("3", "events lost under churn, default buffers",
			fmt.Sprintf("%d lost of %d over %d agent runs (%d connections)", lost, read+lost, len(r.loss), conns),
			"0", bp(lost == 0))
		if total > 0 {
			per := float64(records) / float64(total)
			add("3", "records per connection under churn (ring records read + deltas drained + lost, both ends; warm-up included)",
				fmt.Sprintf("%.2f (%d records, %d connections)", per, records, total), "<= 2", bp(per <= 2))
		}
	} else {
		add("3", "events lost under churn, default buffers", "not measured", "0", nil)
	}

	// 4. Scale.
	gl := durationsMs(r.lsTimes[listerGC])
	ss := durationsMs(r.lsTimes[listerSS])
	target := fmt.Sprintf("%d sockets", r.scaleTarget)
	if len(gl) > 0 {
		m := median(gl)
		add("4", "`ghostconn ls -o json` at "+target, fmt.Sprintf("%s median (%d entries)", fmtMs(m), r.lsEntries),
			fmt.Sprintf("<= %.0f ms", goalLsMs), bp(m <= goalLsMs))
		if len(ss) > 0 {
			ratio := median(ss) / m
			add("4", "`ss -tanp` time / `ghostconn ls` time", fmt.Sprintf("%.1fx (%s vs %s)", ratio, fmtMs(median(ss)), fmtMs(m)),
				fmt.Sprintf(">= %.0fx", goalLsVsSS), bp(ratio >= goalLsVsSS))
		}
	} else if !r.c.skip["scale"] {
		add("4", "`ghostconn ls -o json` at "+target, "not measured", fmt.Sprintf("<= %.0f ms", goalLsMs), nil)
	}
	if len(r.readyScale) > 0 {
		m := time.Duration(median(durationsMs(r.readyScale)) * float64(time.Millisecond))
		add("4", "agent start to ready at "+target, fmt.Sprintf("%s median of %d", m.Round(time.Millisecond), len(r.readyScale)),
			"<= 1 s", bp(m <= goalReady))
	}
	if r.rssIdle > 0 {
		add("4", "agent RSS with "+fmt.Sprint(r.connsScale)+" connections tracked (steady, after the idle window)",
			fmt.Sprintf("%s (%s/connection)", fmtBytes(float64(r.rssIdle)), fmtBytes(r.bytesPerConn(r.rssIdle))),
			"<= 150 MB", bp(float64(r.rssIdle) <= goalRSS))
		peak := max(r.hwmIdle, r.hwmAfterLs)
		add("4", "agent peak RSS (VmHWM: start-up, the TIME_WAIT burst and ls included)", fmtBytes(float64(peak)), "<= 150 MB", bp(float64(peak) <= goalRSS))
	}
	if r.idleWall > 0 {
		frac := r.idleCPU.Seconds() / r.idleWall.Seconds()
		add("4", fmt.Sprintf("agent CPU over %s idle with %s (one reconcile cycle: a reconcile and the wait the agent chose after it)", r.idleWall.Round(time.Second), target),
			fmt.Sprintf("%.2f%% of a core (%s)", 100*frac, r.idleCPU.Round(10*time.Millisecond)),
			"<= 1%", bp(frac <= goalCPUFraction))
	}
	if r.tw.wall > 0 {
		frac := r.tw.cpu.Seconds() / r.tw.wall.Seconds()
		add("4", fmt.Sprintf("agent CPU over %s while %d TIME_WAIT sockets expire (after a churn burst), with %s", r.tw.wall.Round(time.Second), r.tw.timeWait, target),
			fmt.Sprintf("%.2f%% of a core (%s; %d reconciles in it, %d events lost in the burst)", 100*frac, r.tw.cpu.Round(10*time.Millisecond), r.tw.reconciles, r.tw.lost),
			"<= 1%", bp(frac <= goalCPUFraction))
	}
	if r.topWall > 0 {
		af, tf := r.topAgentCPU.Seconds()/r.topWall.Seconds(), r.topCPU.Seconds()/r.topWall.Seconds()
		add("4", fmt.Sprintf("agent CPU with `ghostconn top` open (120x40, 1 s refresh) over %s with %s", r.topWall.Round(time.Second), target),
			fmt.Sprintf("%.2f%% of a core (%s)%s", 100*af, r.topAgentCPU.Round(10*time.Millisecond), overIdle(r, af)), "<= 5%", bp(af <= goalTopCPUFraction))
		add("4", "`ghostconn top`'s own CPU over the same window",
			fmt.Sprintf("%.2f%% of a core (%s)", 100*tf, r.topCPU.Round(10*time.Millisecond)), "<= 5%", bp(tf <= goalTopCPUFraction))
	}
	// 5. Syscall tax on an unrelated process.
	taxGoal := func(what, op string, limit float64) {
		target := fmt.Sprintf("<= %.2fx", limit)
		gc, bare := r.tax[obsGhostconn][op], r.tax[obsBare][op]
		if len(gc) == 0 || len(bare) == 0 {
			if !r.c.skip["tax"] {
				add("5", what, "not measured", target, nil)
			}
			return
		}
		ratio := r.taxRatio(obsGhostconn, op)
		add("5", what, fmt.Sprintf("%s (median of per-round ratios; %s vs %s bare, medians)", fmtRatio(ratio), fmtNs(median(gc)), fmtNs(median(bare))),
			target, bp(ratio <= limit))
	}
	taxGoal("syscall tax on an unrelated process: "+opDupClose+", agent vs bare", opDupClose, goalTaxDupClose)
	taxGoal("syscall tax on an unrelated process: "+opGetppid+", agent vs bare", opGetppid, goalTaxGetppid)
	if len(r.tax[obsTcpstates]) > 0 {
		var parts []string
		for _, op := range taxOps {
			parts = append(parts, fmt.Sprintf("%s %s", op, fmtRatio(r.taxRatio(obsTcpstates, op))))
		}
		add("5", "syscall tax with tcpstates, vs bare (reference)", strings.Join(parts, "; "),
			"about 1.00x (it attaches no syscall tracepoint)", nil)
	}
	if len(r.scaling) >= 2 {
		worst, what := r.scalingGrowth()
		add("4", fmt.Sprintf("scaling %s to %s sockets: worst growth of a cost per socket, largest size over the one before (ready, RSS, ls, reconcile wall and CPU)",
			fmtCount(r.scaling[0].sockets), fmtCount(r.scaling[len(r.scaling)-1].sockets)),
			fmt.Sprintf("%.2fx (%s)", worst, what), fmt.Sprintf("<= %.1fx (1 is linear)", goalLinear), bp(worst <= goalLinear))
	}
	if r.elapsed > 0 {
		add("-", "harness wall time", r.elapsed.Round(time.Second).String(), "< 13 min", bp(r.elapsed < goalHarnessLimit))
	}
	return gs
}

func (r *results) bytesPerConn(rss uint64) float64 {
	dc := r.connsScale - r.connsQuiet
	if dc <= 0 || r.rssQuiet == 0 {
		return math.NaN()
	}
	return (float64(rss) - float64(r.rssQuiet)) / float64(dc)
}

// taxRatio is obs's syscall tax on op against bare: the median of the
// per-round ratios, each round's against that round's bare run.
func (r *results) taxRatio(obs, op string) float64 {
	return median(pairedRatios(r.tax[obs][op], r.tax[obsBare][op]))
}

func (r *results) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# ghostconn benchmark results\n\n")
	w("Written by `make bench` (bench/cmd/ghostbench). What each row means: bench/README.md.\n\n")
	w("- date: %s\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	w("- machine: %s\n", machineDesc())
	w("- ghostconn: %s\n", gitDesc())
	if len(r.c.agentFlags) > 0 {
		w("- agent flags added to the defaults: `%s`\n", strings.Join(r.c.agentFlags, " "))
	}
	w("- harness: %s total (%s), %s\n", r.elapsed.Round(time.Second), r.phaseSummary(), runtime.Version())
	w("- host load outside the harness: %.2f cores on average (hypervisor steal %.2f cores); per phase: %s; loadavg %s at start, %s at end\n",
		r.runNoise.other, r.runNoise.steal, r.phaseNoiseSummary(), r.loadStart, r.loadEnd)
	foreign := r.foreignStart
	if len(r.foreignChurn) > len(foreign) {
		foreign = r.foreignChurn
	}
	if len(foreign) == 0 {
		w("- other eBPF programs: none held by other processes\n\n")
	} else {
		w("- **other eBPF observers were running** (their programs ran in every run, bare included; results are not clean):\n")
		for _, f := range foreign {
			w("  - pid %d `%s`: %s\n", f.pid, f.cmd, strings.Join(f.names, ", "))
		}
		w("\n")
	}

	w("## Goals\n\n| # | what | measured | goal | result |\n|---|---|---|---|---|\n")
	for _, g := range r.goals() {
		w("| %s | %s | %s | %s | %s |\n", g.id, g.what, g.measured, g.target, g.result)
	}
	w("\n")

	if len(r.churnObservers) > 0 {
		w("## 1. Churn overhead\n\n")
		w("%d clients, loopback connect, 1 byte each way, close; %s measured per run after %s warm-up; "+
			"%d rounds, observers interleaved (order rotates each round); kernel.bpf_stats_enabled=0.\n\n",
			r.c.clients, r.c.churnDur, r.c.warmup, r.roundsDone)
		w("| observer |")
		for i := 0; i < r.roundsDone; i++ {
			w(" round %d conn/s |", i+1)
		}
		w(" median conn/s | vs bare (ratio of medians) | vs bare (median of per-round ratios) |\n|---|")
		for i := 0; i < r.roundsDone+3; i++ {
			w("---|")
		}
		w("\n")
		bare := median(r.churn[obsBare])
		for _, obs := range r.churnObservers {
			w("| %s |", obs)
			for i := 0; i < r.roundsDone; i++ {
				if i < len(r.churn[obs]) {
					w(" %s |", fmtRate(r.churn[obs][i]))
				} else {
					w(" - |")
				}
			}
			m := median(r.churn[obs])
			w(" %s | %s | %s |\n", fmtRate(m), fmtRatio(m/bare), fmtRatio(median(pairedRatios(r.churn[obs], r.churn[obsBare]))))
		}
		w("\nCPU used by the observer process during each run (cores), and load outside the harness (cores busy with other work):\n\n")
		w("| observer | observer CPU per round | median | other load per round |\n|---|---|---|---|\n")
		for _, obs := range r.churnObservers {
			var cs, ns []string
			for _, v := range r.obsCores[obs] {
				cs = append(cs, fmt.Sprintf("%.2f", v))
			}
			for _, n := range r.churnNoise[obs] {
				ns = append(ns, n.String())
			}
			w("| %s | %s | %.2f | %s |\n", obs, strings.Join(cs, " / "), median(r.obsCores[obs]), strings.Join(ns, " / "))
		}
		for obs, n := range r.churnErrors {
			w("\n%s: %d client errors during measured runs.\n", obs, n)
		}
		w("\n")
	}

	if len(r.windows) > 0 {
		w("## 2. Kernel cost per program\n\n")
		w("run_time_ns/run_cnt deltas over each window with kernel.bpf_stats_enabled=1 (the value before is restored after). ")
		w("Windows: **quiet host** (agent alone, %s); **100k idle** (%d held sockets, no churn, %s, includes reconciles); "+
			"**churn** (%s of churn at %s conn/s); **fd-op mix** (%s of `ghostbench fdmix`: non-socket close/dup2/dup3/close_range, "+
			"one socket close with references left per 64 iterations, %d iterations, %d events lost); "+
			"**fd-op mix, probe reads** (the same under an agent with `--probe-reads`: the probe-read variants kernels before 6.2 run, "+
			"where this one runs the direct loads; not a goal window). "+
			"**churn, tcpstates** is libbpf-tools tcpstates' own program under the same churn, for reference.\n\n",
			r.c.quietDur, r.scaleTarget, r.windowDur[winIdle].Round(time.Second), r.c.statsChurnDur, fmtRate(r.statsChurnRate),
			r.c.fdmixDur, r.fdmixIters, r.fdmixLost)
		w("| program |")
		for _, win := range r.windows {
			w(" %s: runs | %s: mean ns |", win, win)
		}
		w(" goal |\n|---|")
		for range r.windows {
			w("---|---|")
		}
		w("---|\n")
		for _, name := range r.progNames() {
			w("| %s |", name)
			for _, win := range r.windows {
				d, ok := r.kcost[win][name]
				if !ok {
					w(" - | - |")
				} else if d.RunCnt == 0 {
					w(" 0 | - |")
				} else {
					w(" %d | %.0f |", d.RunCnt, d.meanNs())
				}
			}
			w(" %s |\n", progGoal(name))
		}
		w("\n")
	}

	for _, win := range r.windows {
		for _, name := range r.progNames() {
			if d := r.kcost[win][name]; d.Misses > 0 {
				r.notef("%s: %d runs of %s skipped by the kernel (recursion misses: another program was running on the CPU), events the agent never saw", win, d.Misses, name)
			}
		}
	}
	if len(r.loss) > 0 {
		ring := "the default ring buffer"
		if r.c.ringSize != "" {
			ring = "the agent's default ring buffer, " + r.c.ringSize
		}
		w("## 3. Loss\n\n`ghostconn status` after each churn run (a fresh agent per run; default flags, so %s, unless the header lists agent flags).\n\n", ring)
		w("| run | connections made (measured) | ring records read | deltas drained | events lost | records per connection (warm-up included) | decode errors | unknown-socket events | agent CPU (cores) | agent CPU per record |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for i, l := range r.loss {
			label := fmt.Sprintf("churn %d", i+1)
			if l.stats {
				label += " (bpf stats on)"
			}
			perEv, perConn := "-", "-"
			if n := l.s.EventsRead + l.s.DeltasRead; n > 0 {
				perEv = fmt.Sprintf("%.2f µs", l.cores*l.secs*1e6/float64(n))
			}
			if l.total > 0 {
				perConn = fmt.Sprintf("%.2f", float64(l.s.records())/float64(l.total))
			}
			w("| %s | %d | %d | %d | %d %s | %s | %d | %d | %.2f | %s |\n", label, l.conns, l.s.EventsRead, l.s.DeltasRead, l.s.lost(), lostDetail(l.s.EventsLost),
				perConn, l.s.DecodeErrors, l.s.UnknownSocket, l.cores, perEv)
		}
		w("\n")
	}

	if r.scaleTarget > 0 {
		w("## 4. Scale\n\n")
		w("%d loopback connections (%d sockets) held by %d processes (%d fds each, SO_LINGER 0); %d ESTABLISHED on the host; set up in %s.\n\n",
			r.scaleTarget/2, r.scaleTarget, r.c.holders, r.scaleTarget/r.c.holders, r.established, r.holdSetup.Round(time.Millisecond))
		w("| measurement | value |\n|---|---|\n")
		w("| agent start to ready, quiet host (exec to status ready) | %s |\n", fmtDurs(r.readyQuiet))
		w("| agent start to ready, %d sockets | %s |\n", r.scaleTarget, fmtDurs(r.readyScale))
		w("| of which seeding (the agent's own `startup=`: API up to ready), quiet / at scale | %s / %s |\n", fmtDurs(r.seedQuiet), fmtDurs(r.seedScale))
		w("| TCP sockets on the host at the quiet start | %d |\n", r.quietSockets)
		w("| connections tracked, quiet / at scale | %d / %d |\n", r.connsQuiet, r.connsScale)
		w("| agent RSS quiet host | %s |\n", fmtBytes(float64(r.rssQuiet)))
		w("| agent RSS at scale: ready+2s / after idle / after the ls runs | %s / %s / %s |\n",
			fmtBytes(float64(r.rssReady)), fmtBytes(float64(r.rssIdle)), fmtBytes(float64(r.rssAfterLs)))
		w("| agent peak RSS (VmHWM) after idle / after ls | %s / %s |\n", fmtBytes(float64(r.hwmIdle)), fmtBytes(float64(r.hwmAfterLs)))
		w("| bytes per tracked connection ((RSS after idle - quiet RSS) / added connections) | %s |\n", fmtBytes(r.bytesPerConn(r.rssIdle)))
		if r.idleWall > 0 {
			w("| agent CPU over %s idle (utime+stime) | %s = %.2f%% of a core |\n", r.idleWall.Round(time.Second), r.idleCPU.Round(10*time.Millisecond), 100*r.idleCPU.Seconds()/r.idleWall.Seconds())
		}
		if r.tw.wall > 0 {
			w("| TIME_WAIT window: churn burst (connections), TIME_WAIT sockets at its start / end, agent CPU over %s, reconciles in it, events lost | %d, %d / %d, %s = %.2f%% of a core, %d, %d |\n",
				r.tw.wall.Round(time.Second), r.tw.burst, r.tw.timeWait, r.tw.left, r.tw.cpu.Round(10*time.Millisecond), 100*r.tw.cpu.Seconds()/r.tw.wall.Seconds(), r.tw.reconciles, r.tw.lost)
		}
		w("| last reconcile (snapshot of all sockets and holders), wall time / the wait the agent chose after its first periodic one | %.0f ms / %s |\n\n", r.reconcileSecs*1000, r.reconcileWait.Round(time.Second))
		w("Listing all connections, output to /dev/null, interleaved rounds (a tool stops repeating after %s in total):\n\n", r.c.toolBudget)
		w("| lister | runs | median | min | max |\n|---|---|---|---|---|\n")
		for _, name := range []string{listerGC, listerAPI, listerSS, listerLsof} {
			ms := durationsMs(r.lsTimes[name])
			if len(ms) == 0 {
				w("| %s | 0 | - | - | - |\n", name)
				continue
			}
			lo, hi := minMax(ms)
			w("| %s | %d | %s | %s | %s |\n", name, len(ms), fmtMs(median(ms)), fmtMs(lo), fmtMs(hi))
		}
		w("\n")
	}

	if len(r.scaling) > 0 {
		w("## 4b. Scaling\n\n")
		w("The scale measurements at growing sizes: holders of %d sockets each (5000 loopback connections, SO_LINGER 0) are added as the size grows; "+
			"at each size a fresh agent with `--reconcile-interval %s` (what a reconcile costs does not depend on it) is timed from exec to ready, "+
			"its first periodic reconcile is timed (wall: the agent's own `last_reconcile_seconds`; CPU: the agent's CPU from ready until the status counts the reconcile, "+
			"read every 250 ms from when it is due, less the rate between reconciles over that time), then its CPU over %s with nothing happening and nothing asked (between reconciles), its RSS right after the reconcile, and one `ghostconn ls -o json` to /dev/null. "+
			"Long-run idle CPU is what the agent would use with default flags: the rate between reconciles plus one reconcile per the wait it then chooses (collector.NextReconcile: 200x its CPU, 30 s to 300 s).\n\n",
			scalingPerHolder, scalingInterval, scalingQuiet)
		w("| sockets | tracked | setup | ready | RSS after a reconcile | RSS per socket | `ls -o json` | reconcile wall | reconcile CPU | CPU between reconciles | long-run idle CPU (wait) |\n")
		w("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.scaling {
			w("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %.2f%% | %.2f%% (%s) |\n", fmtCount(p.sockets), p.tracked, p.setup.Round(time.Millisecond),
				p.ready.Round(time.Millisecond), fmtBytes(float64(p.rss)), fmtBytes(float64(p.rss)/float64(p.sockets)), p.ls.Round(time.Millisecond),
				p.reconcileWall.Round(time.Millisecond), p.reconcileCPU.Round(10*time.Millisecond), 100*p.quietRate, 100*p.longRun, p.longWait.Round(time.Second))
		}
		w("\n")
	}

	if r.taxRoundsDone > 0 {
		w("## 5. Syscall tax on an unrelated process\n\n")
		w("`ghostbench syscalls`, a child of the harness (not of the observer), on one locked OS thread: raw `dup()` of a /dev/null fd "+
			"then `close()` of the copy, and `getppid()` (no program hooks it: the syscall-tracepoint slow path alone), "+
			"%d batches of %s each, the two alternating; ns per operation (one operation is a dup()+close() pair, two syscalls, or one getppid()) "+
			"is the median of the batch means. "+
			"%d rounds, observers interleaved (order rotates each round); the agent ready and idle; kernel.bpf_stats_enabled=0.\n\n",
			syscallsBatches, r.c.taxDur/syscallsBatches, r.taxRoundsDone)
		w("| observer | operation |")
		for i := 0; i < r.taxRoundsDone; i++ {
			w(" round %d ns |", i+1)
		}
		w(" median ns | vs bare (median of per-round ratios) |\n|---|---|")
		for i := 0; i < r.taxRoundsDone+2; i++ {
			w("---|")
		}
		w("\n")
		for _, obs := range r.taxObservers {
			for _, op := range taxOps {
				w("| %s | %s |", obs, op)
				ns := r.tax[obs][op]
				for i := 0; i < r.taxRoundsDone; i++ {
					if i < len(ns) {
						w(" %.1f |", ns[i])
					} else {
						w(" - |")
					}
				}
				w(" %s | %s |\n", fmtNs(median(ns)), fmtRatio(r.taxRatio(obs, op)))
			}
		}
		w("\nLoad outside the harness and the observer during each run (cores busy with other work):\n\n")
		w("| observer | other load per round |\n|---|---|\n")
		for _, obs := range r.taxObservers {
			var ns []string
			for _, n := range r.taxNoise[obs] {
				ns = append(ns, n.String())
			}
			w("| %s | %s |\n", obs, strings.Join(ns, " / "))
		}
		w("\n")
	}

	if len(r.missingProgs) > 0 || len(r.notes) > 0 || len(r.errors) > 0 {
		w("## Notes\n\n")
		for _, m := range r.missingProgs {
			w("- program not attached: %s\n", m)
		}
		for _, n := range r.notes {
			w("- %s\n", n)
		}
		for _, e := range r.errors {
			w("- ERROR: %s\n", e)
		}
		w("\n")
	}
	return b.String()
}

func (r *results) phaseSummary() string {
	var parts []string
	for _, p := range phaseNames() {
		if d, ok := r.phaseTime[p]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", p, d.Round(time.Second)))
		}
	}
	return strings.Join(parts, ", ")
}

func (r *results) phaseNoiseSummary() string {
	var parts []string
	for _, p := range phaseNames() {
		if n, ok := r.phaseNoise[p]; ok {
			parts = append(parts, fmt.Sprintf("%s %.2f", p, n.other))
		}
	}
	return strings.Join(parts, ", ")
}

func (r *results) progNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range progOrder {
		for _, win := range r.windows {
			if _, ok := r.kcost[win][n]; ok && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	var rest []string
	for _, win := range r.windows {
		for n := range r.kcost[win] {
			if !seen[n] {
				seen[n] = true
				rest = append(rest, n)
			}
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

func progGoal(name string) string {
	switch {
	case name == stateHook:
		return fmt.Sprintf("<= empty + %.0f ns", goalStateNs)
	case name == timerHook:
		return fmt.Sprintf("<= empty + %.0f ns (non-keepalive)", goalTimerNs)
	}
	for _, h := range closeHooks {
		if h == name {
			return fmt.Sprintf("<= empty + %.0f ns", goalCloseNs)
		}
	}
	return ""
}

func lostDetail(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return ""
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func fmtDurs(ds []time.Duration) string {
	if len(ds) == 0 {
		return "not measured"
	}
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.Round(time.Millisecond).String())
	}
	m := time.Duration(median(durationsMs(ds)) * float64(time.Millisecond))
	return fmt.Sprintf("median %s (%s)", m.Round(time.Millisecond), strings.Join(parts, ", "))
}

func machineDesc() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	kernel := unix.ByteSliceToString(u.Release[:])
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				if i := strings.IndexByte(line, ':'); i >= 0 {
					model = strings.TrimSpace(line[i+1:])
				}
				break
			}
		}
	}
	mem := ""
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		mem = fmtBytes(float64(si.Totalram) * float64(si.Unit))
	}
	osName := ""
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "PRETTY_NAME=") {
				osName = strings.Trim(strings.TrimPrefix(line, "PRETTY_NAME="), `"`)
			}
		}
	}
	return fmt.Sprintf("%d cores (nproc) %s, %s RAM, Linux %s, %s", runtime.NumCPU(), model, mem, kernel, osName)
}

func gitDesc() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	desc := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		desc += " with uncommitted changes"
	}
	return desc
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// overIdle says how much of the agent's CPU fraction af with top open is
// top's doing: the idle window's fraction beside it.
func overIdle(r *results, af float64) string {
	if r.idleWall <= 0 {
		return ""
	}
	idle := r.idleCPU.Seconds() / r.idleWall.Seconds()
	return fmt.Sprintf("; idle without top %.2f%%, so top's share %+.2f points", 100*idle, 100*(af-idle))
}

// scalingGrowth is the worst growth, from the second largest size of the
// scaling phase to the largest, of a cost per socket, and which cost it
// is. RSS counts above the agent's RSS on a quiet host; the times are
// taken whole (ready and ls include fixed costs, which only make growth
// look smaller than linear).
func (r *results) scalingGrowth() (float64, string) {
	a, b := r.scaling[len(r.scaling)-2], r.scaling[len(r.scaling)-1]
	scale := float64(b.sockets) / float64(a.sockets)
	worst, what := 0.0, ""
	for _, m := range []struct {
		name string
		x, y float64
	}{
		{"ready", a.ready.Seconds(), b.ready.Seconds()},
		{"RSS", float64(a.rss) - float64(r.rssQuiet), float64(b.rss) - float64(r.rssQuiet)},
		{"ls", a.ls.Seconds(), b.ls.Seconds()},
		{"reconcile wall", a.reconcileWall.Seconds(), b.reconcileWall.Seconds()},
		{"reconcile CPU", a.reconcileCPU.Seconds(), b.reconcileCPU.Seconds()},
	} {
		if m.x <= 0 {
			continue
		}
		if g := m.y / m.x / scale; g > worst {
			worst, what = g, m.name
		}
	}
	return worst, what
}

// fmtCount prints a socket count as 10k, 1M.
func fmtCount(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dM", n/1e6)
	case n >= 1e3 && n%1e3 == 0:
		return fmt.Sprintf("%dk", n/1e3)
	}
	return strconv.Itoa(n)
}

// twWindow is the agent's CPU while TIME_WAIT sockets expire at scale.
type twWindow struct {
	burst      uint64 // connections the burst made, warm-up included
	timeWait   int    // TIME_WAIT sockets on the host when the window began
	left       int    // and when it ended
	cpu, wall  time.Duration
	lost       uint64 // events lost from before the burst to the window's end
	reconciles uint64 // reconciles in the same time
}
