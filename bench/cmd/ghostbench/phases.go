package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Observers compared in the churn phase.
const (
	obsBare      = "bare"
	obsGhostconn = "ghostconn"
	obsTcpstates = "tcpstates"
)

// reconcilePoll is how often the idle window reads the agent's status
// while it waits for a reconcile.
const reconcilePoll = 5 * time.Second

// Kernel-cost windows.
const (
	winQuiet = "quiet host"
	winIdle  = "100k idle"
	winChurn = "churn"
	winFdmix = "fd-op mix"
	// winFdmixProbe is winFdmix under an agent with --probe-reads.
	winFdmixProbe = "fd-op mix, probe reads"
	winTcpst      = "churn, tcpstates"
	listerGC      = "ghostconn ls -o json"
	listerAPI     = "GET /v1/connections (API only)"
	listerSS      = "ss -tanp"
	listerLsof    = "lsof -nP -iTCP"
)

// phaseQuiet: agent start on a quiet host, its RSS there, and what its
// programs cost when nothing in particular happens.
func phaseQuiet(c *config, r *results) error {
	r.quietSockets = waitQuietFor(1000, 30*time.Second)
	for i := 0; i < c.starts; i++ {
		a, err := startAgent(c.bin, c.workDir, c.agentFlags...)
		if err != nil {
			return err
		}
		r.readyQuiet = append(r.readyQuiet, a.ready)
		r.seedQuiet = append(r.seedQuiet, a.seed)
		if i < c.starts-1 {
			a.stop()
			continue
		}
		defer a.stop()
		time.Sleep(time.Second)
		d, err := statsWindow(a.pid(), true, func() error { time.Sleep(c.quietDur); return nil })
		if err != nil {
			return err
		}
		r.addWindow(winQuiet, c.quietDur, d)
		rss, _, err := procMem(a.pid())
		if err != nil {
			return err
		}
		r.rssQuiet = rss
		s, err := a.status()
		if err != nil {
			return err
		}
		r.connsQuiet = s.Connections
		r.checkPrograms(s)
	}
	return nil
}

// phaseFdmix: every fd hook with a realistic mix of non-socket fds and the
// occasional ghost close. Where the hooks load directly (bpf_rdonly_cast),
// the same mix runs again under an agent with --probe-reads, the variants
// older kernels run, for their cost beside it.
func phaseFdmix(c *config, r *results) error {
	direct, err := fdmixWindow(c, r, winFdmix)
	if err != nil || !direct {
		return err
	}
	_, err = fdmixWindow(c, r, winFdmixProbe, "--probe-reads")
	return err
}

// fdmixWindow runs `ghostbench fdmix` under an agent started with extra
// flags, as window win. It reports whether the agent's hooks loaded
// directly.
func fdmixWindow(c *config, r *results, win string, extra ...string) (bool, error) {
	a, err := startAgent(c.bin, c.workDir, append(slices.Clone(c.agentFlags), extra...)...)
	if err != nil {
		return false, err
	}
	defer a.stop()
	var iters uint64
	d, err := statsWindow(a.pid(), true, func() error {
		var out bytes.Buffer
		p, err := startProc("fdmix", nil, &out, os.Stderr, c.self, "fdmix", "-duration", c.fdmixDur.String())
		if err != nil {
			return err
		}
		defer p.stop()
		if err := p.wait(c.fdmixDur + 30*time.Second); err != nil {
			return fmt.Errorf("fdmix: %w", err)
		}
		var res map[string]uint64
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return fmt.Errorf("fdmix output %q: %w", out.String(), err)
		}
		iters = res["iterations"]
		return nil
	})
	if err != nil {
		return false, err
	}
	// A variant's program is in the row of the hook it stands for.
	for name, pd := range d {
		if hook, ok := strings.CutSuffix(name, "_probe"); ok {
			pd.Name = hook
			d[hook] = pd
			delete(d, name)
		}
	}
	r.addWindow(win, c.fdmixDur, d)
	s, err := a.status()
	if err != nil {
		return false, err
	}
	if win == winFdmix {
		r.fdmixIters = iters
		r.fdmixLost = s.lost()
	}
	return s.HookReads == "direct loads", nil
}

// phaseTax: the syscall tax on an unrelated process. Rounds of
// `ghostbench syscalls` bare, under a ready and idle ghostconn agent and
// under tcpstates, interleaved with the order rotating each round. The
// timed process is a child of the harness, not of the observer: any
// attached syscall tracepoint puts every task on the syscall slow path, and
// the close hook runs for every close on the host.
func phaseTax(c *config, r *results) error {
	observers := observerList(c, r)
	r.taxObservers = observers
	for round := 0; round < c.taxRounds; round++ {
		for _, obs := range roundOrder(observers, round) {
			run, err := taxWith(c, r, obs)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", round+1, obs, err)
			}
			if r.tax[obs] == nil {
				r.tax[obs] = map[string][]float64{}
			}
			var parts []string
			for _, op := range taxOps {
				r.tax[obs][op] = append(r.tax[obs][op], run.ns[op])
				parts = append(parts, fmt.Sprintf("%s %.1f ns", op, run.ns[op]))
			}
			r.taxNoise[obs] = append(r.taxNoise[obs], run.noise)
			logf("tax round %d %-9s %s  other load %.2f cores, steal %.2f",
				round+1, obs, strings.Join(parts, ", "), run.noise.other, run.noise.steal)
		}
		r.taxRoundsDone = round + 1
	}
	return nil
}

type taxRun struct {
	ns    map[string]float64 // ns per operation, by taxOps name
	noise noise              // load outside the harness and the observer
}

// taxWith runs `ghostbench syscalls` once under obs.
func taxWith(c *config, r *results, obs string) (taxRun, error) {
	var out taxRun
	o, err := startObserver(c, obs)
	if err != nil {
		return out, err
	}
	defer o.stop()
	if o.agent != nil {
		// Ready means seeded; let what follows readiness settle, so the
		// agent is idle as on a host where it has run for a while.
		time.Sleep(500 * time.Millisecond)
	}
	var o0, o1 time.Duration
	if o.pid != 0 {
		o0, _ = procCPU(o.pid)
	}
	s0 := snapCPU()
	var buf bytes.Buffer
	p, err := startProc("syscalls", nil, &buf, os.Stderr, c.self, "syscalls", "-duration", c.taxDur.String())
	if err != nil {
		return out, err
	}
	defer p.stop()
	if err := p.wait(3*c.taxDur + 30*time.Second); err != nil {
		return out, fmt.Errorf("syscalls: %w", err)
	}
	if o.pid != 0 {
		o1, _ = procCPU(o.pid)
	}
	s1 := snapCPU()
	out.noise = noiseBetween(s0, s1)
	out.noise.other = max(0, out.noise.other-(o1-o0).Seconds()/s1.at.Sub(s0.at).Seconds())
	var res syscallsResult
	if err := json.Unmarshal(buf.Bytes(), &res); err != nil {
		return out, fmt.Errorf("syscalls output %q: %w", buf.String(), err)
	}
	out.ns = map[string]float64{}
	for _, op := range res.Ops {
		out.ns[op.Name] = op.Ns
	}
	for _, op := range taxOps {
		if out.ns[op] <= 0 {
			return out, fmt.Errorf("syscalls output %q: no time for %s", buf.String(), op)
		}
	}
	if o.agent != nil {
		s, err := o.agent.status()
		if err != nil {
			return out, err
		}
		r.checkPrograms(s)
	}
	return out, nil
}

// phaseScale: 100k established sockets held by several processes; agent
// start, RSS, idle CPU, and how long listing takes against ss and lsof.
func phaseScale(c *config, r *results) error {
	pairs := c.sockets / 2 / c.holders
	if pairs*2 > 19900 {
		return fmt.Errorf("%d sockets over %d holders is %d fds each: use more holders to stay under 20k", c.sockets, c.holders, pairs*2)
	}
	r.scaleTarget = pairs * 2 * c.holders
	t0 := time.Now()
	var held sockHolders
	defer held.stop()
	if err := held.add(c.self, c.holders, pairs); err != nil {
		return err
	}
	r.holdSetup = time.Since(t0)
	est, err := countEstablished()
	if err != nil {
		return err
	}
	r.established = est
	logf("holding %d sockets (%d established on the host) after %s", r.scaleTarget, est, r.holdSetup.Round(time.Millisecond))

	var a *agent
	for i := 0; i < c.starts; i++ {
		a, err = startAgent(c.bin, c.workDir, c.agentFlags...)
		if err != nil {
			return err
		}
		r.readyScale = append(r.readyScale, a.ready)
		r.seedScale = append(r.seedScale, a.seed)
		logf("agent ready in %s", a.ready.Round(time.Millisecond))
		if i < c.starts-1 {
			a.stop()
		}
	}
	defer a.stop()
	time.Sleep(2 * time.Second)
	s, err := a.status()
	if err != nil {
		return err
	}
	r.connsScale = s.Connections
	r.checkPrograms(s)
	r.rssReady, _, _ = procMem(a.pid())

	// Idle: no churn, nothing asked of the agent, over one whole reconcile
	// cycle, the agent's own average as long as nothing happens: the
	// window starts now, holds the first periodic reconcile (the
	// reconcile interval after ready) and lasts as long as the wait the
	// agent then chose before the next (its CPU budget stretches it on a
	// large table), so it ends before that one. At least idleDur. The
	// agent's status is read every reconcilePoll meanwhile, which costs it
	// a few milliseconds in all.
	var cpu time.Duration
	var wall time.Duration
	d, err := statsWindow(a.pid(), true, func() error {
		c0, err := procCPU(a.pid())
		if err != nil {
			return err
		}
		w0 := time.Now()
		s0, err := a.statusHTTP()
		if err != nil {
			return err
		}
		s, err := a.waitReconcile(s0.PeriodicReconciles, reconcilePoll, 10*time.Minute)
		if err != nil {
			return err
		}
		r.reconcileWait = time.Duration(s.ReconcileWaitSeconds * float64(time.Second))
		length := max(c.idleDur, r.reconcileWait)
		time.Sleep(time.Until(w0.Add(length)))
		c1, err := procCPU(a.pid())
		if err != nil {
			return err
		}
		cpu, wall = c1-c0, time.Since(w0)
		return nil
	})
	if err != nil {
		return err
	}
	r.addWindow(winIdle, wall, d)
	r.idleCPU, r.idleWall = cpu, wall
	r.rssIdle, r.hwmIdle, _ = procMem(a.pid())
	if s, err := a.status(); err == nil {
		r.reconcileSecs = s.ReconcileSeconds
		r.connsScale = s.Connections
	}

	// TIME_WAIT, right after the idle window (which ends just before the
	// next reconcile): the window then ends about three minutes after the
	// held sockets were made, before they reach the silent threshold
	// (5 minutes) and the agent flags 100k of them, work of its own.
	if c.twDur > 0 {
		if err := timeWaitWindow(c, r, a); err != nil {
			r.errorf("TIME_WAIT window: %v", err)
		}
	}

	// The listers, interleaved. Each prints to /dev/null.
	n, err := countLs(c.bin, a.sock)
	if err != nil {
		r.errorf("count ghostconn ls entries: %v", err)
	}
	r.lsEntries = n
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	listers := []struct {
		name string
		run  func() error
	}{
		{listerGC, func() error { return runTimed(devnull, c.bin, "ls", "-o", "json", "--api-socket", a.sock) }},
		{listerAPI, func() error { _, err := a.listRaw(); return err }},
		{listerSS, func() error { return runTimed(devnull, "ss", "-tanp") }},
		{listerLsof, func() error { return runTimed(devnull, "lsof", "-nP", "-iTCP") }},
	}
	spent := map[string]time.Duration{}
	for round := 0; round < c.lsRounds; round++ {
		for _, l := range listers {
			if round > 0 && spent[l.name] > c.toolBudget {
				continue
			}
			t := time.Now()
			err := l.run()
			dt := time.Since(t)
			spent[l.name] += dt
			if err != nil {
				r.errorf("%s: %v", l.name, err)
				continue
			}
			r.lsTimes[l.name] = append(r.lsTimes[l.name], dt)
			logf("%s: %s", l.name, dt.Round(100*time.Microsecond))
		}
	}
	r.rssAfterLs, r.hwmAfterLs, _ = procMem(a.pid())

	// `ghostconn top` open at scale: its CPU and the agent's.
	if r.topAgentCPU, r.topCPU, r.topWall, err = topWindow(c.bin, a.sock, a.pid(), c.topDur); err != nil {
		r.errorf("top at scale: %v", err)
	} else {
		logf("top for %s: agent %s, top %s", r.topWall.Round(time.Second), r.topAgentCPU, r.topCPU)
	}
	return nil
}

// timeWaitWindow: a burst of churn leaves tens of thousands of sockets in
// TIME_WAIT, which the kernel keeps for 60 s; the agent's CPU while they
// expire, with the scale phase's sockets still held. A TIME_WAIT socket is
// a connection that ended: it should cost the agent nothing per second.
func timeWaitWindow(c *config, r *results, a *agent) error {
	// Just after a periodic reconcile, so that the next one (at least 30 s
	// later, 80 s at 100k) falls after the window: reconciles are the idle
	// window's, not what TIME_WAIT costs.
	s, err := a.statusHTTP()
	if err != nil {
		return err
	}
	s0, err := a.waitReconcile(s.PeriodicReconciles, time.Second, 6*time.Minute)
	if err != nil {
		return err
	}
	res, err := runChurnProc(c, c.twBurst, "-addrs", strconv.Itoa(twAddrs))
	if err != nil {
		return err
	}
	tw, err := countTCPState(tcpTimeWait)
	if err != nil {
		return err
	}
	c0, err := procCPU(a.pid())
	if err != nil {
		return err
	}
	w0 := time.Now()
	time.Sleep(c.twDur)
	c1, err := procCPU(a.pid())
	if err != nil {
		return err
	}
	s1, err := a.statusHTTP()
	if err != nil {
		return err
	}
	r.tw = twWindow{burst: res.Total, timeWait: tw, cpu: c1 - c0, wall: time.Since(w0),
		lost: s1.lost() - s0.lost(), reconciles: s1.Reconciles - s0.Reconciles}
	left, _ := countTCPState(tcpTimeWait)
	r.tw.left = left
	logf("TIME_WAIT: %d after a burst of %d connections; agent %s over %s (%d reconciles), %d left",
		tw, res.Total, r.tw.cpu, r.tw.wall.Round(time.Second), r.tw.reconciles, left)
	return nil
}

// twAddrs is how many server addresses the TIME_WAIT burst spreads its
// clients over: on loopback the kernel recycles a TIME_WAIT socket for a
// new connection of the same four-tuple (net.ipv4.tcp_tw_reuse), which
// holds one address's TIME_WAIT to about 14,000 at this rate.
const twAddrs = 4

// tcpTimeWait is TIME_WAIT's number in /proc/net/tcp.
const tcpTimeWait = 0x06

// countTCPState counts the TCP sockets in this namespace in state st,
// from /proc/net/tcp and tcp6.
func countTCPState(st int) (int, error) {
	n := 0
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return 0, err
		}
		want := fmt.Sprintf(" %02X ", st)
		for i, line := range strings.Split(string(b), "\n") {
			// sl local rem st: the state is the fourth field.
			if f := strings.Fields(line); i > 0 && len(f) > 3 && " "+f[3]+" " == want {
				n++
			}
		}
	}
	return n, nil
}

// runTimed runs a command to completion with stdout to w; stderr is kept
// for the error.
func runTimed(w io.Writer, name string, args ...string) error {
	var stderr bytes.Buffer
	p, err := startProc(name, nil, w, &stderr, name, args...)
	if err != nil {
		return err
	}
	defer p.stop()
	if err := p.wait(5 * time.Minute); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// countLs runs `ghostconn ls -o json` once and counts its entries.
func countLs(bin, sock string) (int, error) {
	var out bytes.Buffer
	if err := runTimed(&out, bin, "ls", "-o", "json", "--api-socket", sock); err != nil {
		return 0, err
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(out.Bytes(), &arr); err != nil {
		return 0, err
	}
	return len(arr), nil
}

// countEstablished counts ESTABLISHED TCP sockets in this namespace.
func countEstablished() (int, error) {
	_, est, err := countTCP()
	return est, err
}

// countTCP counts the TCP sockets in this namespace, all and ESTABLISHED
// (state 01), from /proc/net/tcp and tcp6.
func countTCP() (all, est int, err error) {
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 64*1024)
		first := true
		for sc.Scan() {
			if first {
				first = false
				continue
			}
			all++
			fields := strings.Fields(sc.Text())
			if len(fields) > 3 && fields[3] == "01" {
				est++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return 0, 0, err
		}
	}
	return all, est, nil
}

// phaseChurn: rounds of [bare, ghostconn, tcpstates] churn, interleaved (the
// order rotates each round), then one churn run of each observer with
// kernel.bpf_stats_enabled=1 for per-program cost. Stats stay off during the
// throughput runs: they add two clock reads to every program run.
func phaseChurn(c *config, r *results) error {
	r.foreignChurn = foreignBPF(ourPids())
	observers := observerList(c, r)
	r.churnObservers = observers
	statsRuns := time.Duration(len(observers)-1) * (c.statsChurnDur + c.warmup + 3*time.Second)
	for round := 0; round < c.rounds; round++ {
		t0 := time.Now()
		if round >= 3 && r.lastRound > 0 && time.Since(r.start)+r.lastRound+statsRuns > c.budget {
			r.notef("churn stopped after %d of %d rounds to stay within the %s budget", round, c.rounds, c.budget)
			break
		}
		for _, obs := range roundOrder(observers, round) {
			run, err := churnWith(c, r, obs, c.churnDur, false)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", round+1, obs, err)
			}
			r.churn[obs] = append(r.churn[obs], run.rate)
			r.churnNoise[obs] = append(r.churnNoise[obs], run.noise)
			r.obsCores[obs] = append(r.obsCores[obs], run.obsCores)
			logf("round %d %-9s %8.0f conn/s  observer %.2f cores  other load %.2f cores, steal %.2f",
				round+1, obs, run.rate, run.obsCores, run.noise.other, run.noise.steal)
		}
		r.lastRound = time.Since(t0)
		r.roundsDone = round + 1
	}
	if _, err := churnWith(c, r, obsGhostconn, c.statsChurnDur, true); err != nil {
		return fmt.Errorf("stats run: %w", err)
	}
	if c.tcpstates != "" {
		if _, err := churnWith(c, r, obsTcpstates, c.statsChurnDur, true); err != nil {
			return fmt.Errorf("tcpstates stats run: %w", err)
		}
	}
	return nil
}

// observerList returns the observers every interleaved comparison runs:
// bare, ghostconn, and tcpstates when it was found (noted once otherwise).
func observerList(c *config, r *results) []string {
	observers := []string{obsBare, obsGhostconn}
	if c.tcpstates != "" {
		return append(observers, obsTcpstates)
	}
	const note = "tcpstates not found: install libbpf-tools (scripts/deps.sh bench) for the reference column"
	for _, n := range r.notes {
		if n == note {
			return observers
		}
	}
	r.notef(note)
	return observers
}

// roundOrder returns the observers in the order round runs them: rotated
// by one each round, so no observer always runs first or after another.
func roundOrder(observers []string, round int) []string {
	out := make([]string, len(observers))
	for k := range observers {
		out[k] = observers[(k+round)%len(observers)]
	}
	return out
}

// observer is a running observer: nothing for bare, else its process.
type observer struct {
	pid   int    // 0 for bare
	agent *agent // for ghostconn
	stop  func()
}

// startObserver starts obs and returns once it watches: a ghostconn agent
// ready, tcpstates with its programs loaded and attached.
func startObserver(c *config, obs string) (observer, error) {
	switch obs {
	case obsGhostconn:
		a, err := startAgent(c.bin, c.workDir, c.agentFlags...)
		if err != nil {
			return observer{}, err
		}
		return observer{pid: a.pid(), agent: a, stop: a.stop}, nil
	case obsTcpstates:
		p, err := startTcpstates(c.tcpstates)
		if err != nil {
			return observer{}, err
		}
		return observer{pid: p.pid(), stop: p.stop}, nil
	}
	return observer{stop: func() {}}, nil
}

type churnRun struct {
	rate     float64 // connections per second
	obsCores float64 // CPU the observer process used, in cores
	noise    noise   // load outside the harness and the observer
}

// churnWith runs one churn under obs. With stats, it records the observer's
// per-program kernel cost.
func churnWith(c *config, r *results, obs string, dur time.Duration, stats bool) (churnRun, error) {
	var out churnRun
	o, err := startObserver(c, obs)
	if err != nil {
		return out, err
	}
	defer o.stop()
	observerPid, a := o.pid, o.agent
	var res churnResult
	run := func() error {
		var o0, o1 time.Duration
		if observerPid != 0 {
			o0, _ = procCPU(observerPid)
		}
		s0 := snapCPU()
		var err error
		res, err = runChurnProc(c, dur)
		if observerPid != 0 {
			o1, _ = procCPU(observerPid)
		}
		s1 := snapCPU()
		wall := s1.at.Sub(s0.at).Seconds()
		out.obsCores = (o1 - o0).Seconds() / wall
		out.noise = noiseBetween(s0, s1)
		out.noise.other = max(0, out.noise.other-out.obsCores)
		return err
	}
	if stats {
		d, err := statsWindow(observerPid, obs == obsGhostconn, run)
		if err != nil {
			return out, err
		}
		if obs == obsGhostconn {
			r.addWindow(winChurn, dur, d)
			r.statsChurnRate = res.Rate
		} else {
			r.addWindow(winTcpst, dur, d)
		}
	} else if err := run(); err != nil {
		return out, err
	}
	out.rate = res.Rate
	if res.Errors > 0 {
		r.churnErrors[obs] += res.Errors
	}
	if a != nil {
		s, err := a.status()
		if err != nil {
			return out, err
		}
		r.loss = append(r.loss, lossRun{stats: stats, conns: res.Conns, total: res.Total, s: s, cores: out.obsCores, secs: res.Seconds + c.warmup.Seconds()})
	}
	return out, nil
}
func runChurnProc(c *config, dur time.Duration, extra ...string) (churnResult, error) {
	var res churnResult
	var out bytes.Buffer
	args := append([]string{"churn", "-clients", strconv.Itoa(c.clients), "-servers", strconv.Itoa(c.servers),
		"-duration", dur.String(), "-warmup", c.warmup.String()}, extra...)
	p, err := startProc("churn", nil, &out, os.Stderr, c.self, args...)
	if err != nil {
		return res, err
	}
	defer p.stop()
	if err := p.wait(dur + c.warmup + time.Minute); err != nil {
		return res, fmt.Errorf("churn: %w", err)
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("churn output %q: %w", out.String(), err)
	}
	if res.Conns == 0 {
		return res, fmt.Errorf("churn made no connections (%d errors)", res.Errors)
	}
	return res, nil
}

// startTcpstates runs tcpstates with its output to /dev/null and waits until
// its programs are loaded, plus a moment for the attach that follows.
func startTcpstates(bin string) (*proc, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	var stderr bytes.Buffer
	p, err := startProc("tcpstates", nil, devnull, &stderr, bin)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			return nil, fmt.Errorf("tcpstates exited: %v: %s", p.err, stderr.String())
		}
		if _, err := readProgStats(p.pid()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("tcpstates loaded no program in 30s: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	return p, nil
}
