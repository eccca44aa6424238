// Command ghostbench measures ghostconn's cost and scale on the machine it
// runs on and writes a markdown table (bench/RESULTS.md). See bench/README.md.
//
//	ghostbench [flags]          run every phase (root)
//	ghostbench soak [flags]     long churn under one agent: leaks, crashes, loss (root)
//	ghostbench churn [flags]    churn worker (started by the harness)
//	ghostbench hold [flags]     socket holder (started by the harness)
//	ghostbench fdmix [flags]    fd-hook exerciser (started by the harness)
//	ghostbench syscalls [flags] syscall timing loops (started by the harness)
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

type config struct {
	bin       string
	tcpstates string
	out       string
	workDir   string
	self      string

	rounds        int
	churnDur      time.Duration
	warmup        time.Duration
	clients       int
	servers       int
	statsChurnDur time.Duration

	quietDur time.Duration
	fdmixDur time.Duration

	taxRounds int
	taxDur    time.Duration

	sockets    int
	holders    int
	starts     int
	idleDur    time.Duration
	topDur     time.Duration
	lsRounds   int
	toolBudget time.Duration
	scaling    []int // socket counts of the scaling phase
	twBurst    time.Duration
	twDur      time.Duration

	skip       map[string]bool
	agentFlags []string
	budget     time.Duration
	ringSize   string // the agent's default ring buffer, for the report
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "soak":
			os.Exit(runSoak(os.Args[2:]))
		case "churn":
			os.Exit(runChurn(os.Args[2:]))
		case "hold":
			os.Exit(runHold(os.Args[2:]))
		case "fdmix":
			os.Exit(runFdmix(os.Args[2:]))
		case "syscalls":
			os.Exit(runSyscalls(os.Args[2:]))
		}
	}
	os.Exit(runBench(os.Args[1:]))
}

func runBench(args []string) (code int) {
	var c config
	fs := flag.NewFlagSet("ghostbench", flag.ContinueOnError)
	fs.StringVar(&c.bin, "ghostconn", "bin/ghostconn", "the ghostconn binary to measure")
	fs.StringVar(&c.tcpstates, "tcpstates", "", "libbpf-tools tcpstates (default: found in /usr/sbin, /usr/bin, PATH; none: leave it out)")
	fs.StringVar(&c.out, "out", "bench/RESULTS.md", "where to write the markdown results (empty: stdout only)")
	fs.IntVar(&c.rounds, "rounds", 5, "churn rounds; each runs bare, ghostconn and tcpstates once, interleaved")
	fs.DurationVar(&c.churnDur, "churn-duration", 11*time.Second, "measured time of one churn run (at least 10s for the goal)")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured churn before each measured run")
	fs.IntVar(&c.clients, "clients", 8, "concurrent churn clients")
	fs.IntVar(&c.servers, "servers", 8, "churn server threads")
	fs.DurationVar(&c.statsChurnDur, "stats-churn-duration", 10*time.Second, "churn run with kernel.bpf_stats_enabled=1 for per-program cost")
	fs.DurationVar(&c.quietDur, "quiet-duration", 10*time.Second, "quiet-host window for per-program cost")
	fs.DurationVar(&c.fdmixDur, "fdmix-duration", 3*time.Second, "fd-hook exerciser window")
	fs.IntVar(&c.taxRounds, "tax-rounds", 5, "syscall-tax rounds; each times the syscalls bare, under ghostconn and under tcpstates, interleaved")
	fs.DurationVar(&c.taxDur, "tax-duration", time.Second, "measured time per syscall operation in one syscall-tax run")
	fs.IntVar(&c.sockets, "sockets", 100000, "established loopback sockets to hold for the scale phase (two per connection)")
	fs.IntVar(&c.holders, "holders", 10, "holder processes sharing the sockets (each stays under the 20k fd limit)")
	fs.IntVar(&c.starts, "starts", 3, "agent starts timed at scale")
	fs.DurationVar(&c.idleDur, "idle-duration", 60*time.Second, "shortest idle window for the agent's CPU at scale (the window is one whole reconcile cycle, at least this long)")
	fs.DurationVar(&c.topDur, "top-duration", 60*time.Second, "window with `ghostconn top` open at scale, for its CPU and the agent's (it may hold a reconcile or none; see the idle window)")
	fs.IntVar(&c.lsRounds, "ls-rounds", 5, "interleaved rounds of ghostconn ls, ss -tanp, lsof")
	fs.DurationVar(&c.toolBudget, "tool-budget", 20*time.Second, "stop repeating a lister once its runs took this long in total")
	fs.DurationVar(&c.budget, "budget", 11*time.Minute+30*time.Second, "wall-time budget: churn rounds beyond the third are dropped when the next would overrun it")
	fs.DurationVar(&c.twBurst, "tw-burst", 3*time.Second, "churn burst (after its warm-up) that leaves TIME_WAIT sockets at scale")
	fs.DurationVar(&c.twDur, "tw-duration", 60*time.Second, "window for the agent's CPU while the burst's TIME_WAIT sockets expire; 0 skips it")
	scaling := fs.String("scaling", "10000,100000,1000000", "socket counts of the scaling phase, growing, in multiples of 10000 (a holder each); empty skips it")
	agentFlags := fs.String("agent-flags", "", "extra flags for every `ghostconn agent` (space-separated), to compare settings")
	skip := fs.String("skip", "", "comma-separated phases to skip: "+strings.Join(phaseNames(), ","))
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if c.scaling, err = parseSizes(*scaling); err != nil {
		fmt.Fprintln(os.Stderr, "ghostbench:", err)
		return 2
	}
	c.agentFlags = strings.Fields(*agentFlags)
	c.skip = map[string]bool{}
	for _, s := range splitComma(*skip) {
		c.skip[s] = true
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "ghostbench: must run as root (it loads eBPF programs, holds 100k sockets and sets kernel.bpf_stats_enabled)")
		return 2
	}
	if _, err := os.Stat(c.bin); err != nil {
		fmt.Fprintf(os.Stderr, "ghostbench: %v (build it: go build -o bin/ghostconn ./cmd/ghostconn)\n", err)
		return 2
	}
	c.agentFlags = defaultAgentFlags(c.bin, c.agentFlags)
	c.ringSize = ringBufferDefault(c.bin)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ghostbench:", err)
		return 2
	}
	c.self = self
	switch c.tcpstates {
	case "":
		c.tcpstates = findTcpstates()
	case "none":
		c.tcpstates = ""
	}

	defer runCleanups()
	defer recoverPanic(&code)
	wd, err := prepareRun("ghostbench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ghostbench:", err)
		return 2
	}
	c.workDir = wd

	r := newResults(&c)
	r.loadStart = loadavg()
	r.foreignStart = foreignBPF(nil)
	for _, f := range r.foreignStart {
		logf("warning: pid %d (%s) holds bpf programs %v: other observers make every run slower, bare included", f.pid, f.cmd, f.names)
	}
	runSnap0 := snapCPU()
	for _, ph := range phases {
		if c.skip[ph.name] {
			r.notef("phase %s skipped (--skip)", ph.name)
			continue
		}
		logf("phase %s", ph.name)
		t0 := time.Now()
		s0 := snapCPU()
		if err := ph.fn(&c, r); err != nil {
			logf("phase %s failed: %v", ph.name, err)
			r.errorf("phase %s: %v", ph.name, err)
		}
		r.phaseTime[ph.name] = time.Since(t0)
		r.phaseNoise[ph.name] = noiseBetween(s0, snapCPU())
		logf("phase %s done in %s", ph.name, time.Since(t0).Round(time.Second))
	}
	runCleanups()
	r.elapsed = time.Since(r.start)
	r.runNoise = noiseBetween(runSnap0, snapCPU())
	r.loadEnd = loadavg()

	md := r.markdown()
	fmt.Print(md)
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "ghostbench:", err)
			return 1
		}
		logf("wrote %s", c.out)
	}
	if len(r.errors) > 0 {
		return 1
	}
	return 0
}

// phase is one step of a harness run.
type phase struct {
	name string
	fn   func(*config, *results) error
}

// phases are the harness's phases in the order they run: the one list that
// the run, --skip and the report's per-phase summaries follow.
var phases = []phase{
	{"quiet", phaseQuiet},
	{"fdmix", phaseFdmix},
	{"tax", phaseTax},
	{"scale", phaseScale},
	{"scaling", phaseScaling},
	{"churn", phaseChurn},
}

// phaseNames returns the names of phases, in order.
func phaseNames() []string {
	names := make([]string, len(phases))
	for i, ph := range phases {
		names[i] = ph.name
	}
	return names
}

func findTcpstates() string {
	for _, p := range []string{"/usr/sbin/tcpstates", "/usr/bin/tcpstates"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := lookPath("tcpstates"); err == nil {
		return p
	}
	return ""
}

func splitComma(s string) []string {
	var out []string
	cur := ""
	for _, ch := range s {
		if ch == ',' {
			if cur != "" {
				out = append(out, cur)
			}
			cur = ""
			continue
		}
		if ch != ' ' {
			cur += string(ch)
		}
	}
	if cur != "" {
		out = append(out, cur)
	}
	return out
}

// prepareRun readies a harness run: it reclaims what a killed earlier run
// left, turns SIGINT/SIGTERM into an orderly cleanup, and makes the work
// directory (removed by runCleanups). The caller defers runCleanups and
// recoverPanic first.
func prepareRun(prefix string) (string, error) {
	recoverStale()
	handleSignals()
	wd, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	onCleanup("remove "+wd, func() { os.RemoveAll(wd) })
	return wd, nil
}

// recoverPanic, deferred, turns a panic into exit code 3 with its stack, so
// the deferred cleanups still run.
func recoverPanic(code *int) {
	if r := recover(); r != nil {
		logf("panic: %v\n%s", r, debug.Stack())
		*code = 3
	}
}
