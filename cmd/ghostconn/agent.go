package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/caps"
)

// agentConfig is the agent's validated configuration.
type agentConfig struct {
	apiSocket    string
	metricsAddr  string
	webConfig    string
	processLabel bool
	maxProcesses int
	podLabel     bool
	maxPods      int
	logLevel     slog.Level
	collector    collector.Config
}

// parseAgentFlags parses and validates the agent's flags. Every problem is a
// usageError that names the flag.
func parseAgentFlags(args []string, stderr io.Writer) (*agentConfig, error) {
	fs := newFlags("agent", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "unix socket for the local query API (mode 0600)")
	reconcile := fs.Duration("reconcile-interval", 30*time.Second, "how often a fresh kernel snapshot corrects the table (at least 1s; stretched up to 10x on a large table to stay under half a percent of a core, unless events are being lost)")
	ring := fs.Int("ring-buffer-bytes", collector.DefaultRingBufferBytes, "size of the event ring buffer: a power of two, at least 4096")
	maxConns := fs.Int("max-connections", collector.DefaultTableConfig.MaxConns, "most live connections the table holds; more are counted as dropped")
	history := fs.Duration("history", collector.DefaultTableConfig.HistoryTTL, "how long closed connections stay queryable")
	maxHistory := fs.Int("max-history", collector.DefaultTableConfig.MaxHistory, "most closed connections kept")
	hz := fs.Int("kernel-hz", 0, "kernel CONFIG_HZ; 0 reads it from the kernel config")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	vd := collector.DefaultVerdictConfig
	ghostGrace := fs.Duration("ghost-grace", vd.GhostGrace, "how long a socket may stay open after an fd of it was closed with other references left")
	closeWait := fs.Duration("close-wait-after", vd.CloseWaitAfter, "how long CLOSE_WAIT may last before it is flagged")
	silent := fs.Duration("silent-after", vd.SilentAfter, "how long an ESTABLISHED connection may carry no data without a keepalive at least as frequent")
	rtos := fs.Int("unresponsive-after-rtos", vd.UnresponsiveRTOs, "consecutive retransmission timeouts that make a peer unresponsive")
	pinDir := fs.String("pin-dir", "/sys/fs/bpf/ghostconn", "bpffs directory that keeps close evidence across restarts (0700, owned by the agent); empty disables pinning")
	disable := fs.String("disable-programs", "", "comma-separated optional programs not to load: "+strings.Join(optionalPrograms(), ", "))
	metricsAddr := fs.String("metrics-address", ":9977", "listen address for /metrics, /healthz and /readyz; empty disables")
	webConfig := fs.String("web.config.file", "", "exporter-toolkit web config file enabling TLS and/or basic auth on the metrics listener")
	processLabel := fs.Bool("metrics-process-label", false, "add per-process series (label process, capped by --metrics-max-processes)")
	maxProcesses := fs.Int("metrics-max-processes", exporter.DefaultMaxProcesses, "distinct process label values before the rest count as \"other\"")
	podLabel := fs.Bool("metrics-pod-label", false, "add per-pod series (label pod_uid from the holder's cgroup, capped by --metrics-max-pods)")
	maxPods := fs.Int("metrics-max-pods", exporter.DefaultMaxPods, "distinct pod_uid label values before the rest count as \"other\"")
	readOnly := fs.Bool("read-only", false, "refuse every action (ghostconn kill): observe only")
	probeReads := fs.Bool("probe-reads", false, "load the hooks' probe-read variants even where the kernel has bpf_rdonly_cast (6.2+), as older kernels run them: to compare their cost, or to step around a kernel that mishandles the direct loads")
	killVia := fs.String("kill-via", "bpf_sock_destroy,sock_diag", "comma-separated mechanisms ghostconn kill may abort sockets with, in order: bpf_sock_destroy (Linux 6.5+), sock_diag; empty allows none")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *apiSocket == "" || !filepath.IsAbs(*apiSocket) {
		return nil, usagef("--api-socket=%q must be an absolute path", *apiSocket)
	}
	if *reconcile < time.Second {
		return nil, usagef("--reconcile-interval=%s is too short: use at least 1s", *reconcile)
	}
	if *ring < 4096 || *ring&(*ring-1) != 0 || *ring > 1<<30 {
		return nil, usagef("--ring-buffer-bytes=%d must be a power of two from 4096 to 1073741824", *ring)
	}
	if *maxConns <= 0 {
		return nil, usagef("--max-connections=%d must be positive", *maxConns)
	}
	if *history < 0 || *maxHistory < 0 {
		return nil, usagef("--history and --max-history must not be negative")
	}
	if *hz < 0 || *hz > 100000 {
		return nil, usagef("--kernel-hz=%d: want 0 (detect) or the kernel's CONFIG_HZ, such as 100, 250 or 1000", *hz)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ghost-grace", *ghostGrace}, {"close-wait-after", *closeWait}, {"silent-after", *silent}} {
		if d.v <= 0 {
			return nil, usagef("--%s=%s must be positive", d.name, d.v)
		}
	}
	if *rtos < 1 || *rtos > 255 {
		return nil, usagef("--unresponsive-after-rtos=%d must be from 1 to 255", *rtos)
	}
	skip := map[string]bool{}
	if *disable != "" {
		for _, name := range strings.Split(*disable, ",") {
			if !slices.Contains(optionalPrograms(), name) {
				return nil, usagef("--disable-programs: %q is not an optional program (optional: %s)", name, strings.Join(optionalPrograms(), ", "))
			}
			skip[name] = true
		}
	}
	if *pinDir != "" && !filepath.IsAbs(*pinDir) {
		return nil, usagef("--pin-dir=%q must be an absolute path", *pinDir)
	}
	if *maxProcesses < 1 {
		return nil, usagef("--metrics-max-processes=%d must be at least 1", *maxProcesses)
	}
	if *maxPods < 1 {
		return nil, usagef("--metrics-max-pods=%d must be at least 1", *maxPods)
	}
	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			return nil, usagef("--metrics-address=%q: %v (want HOST:PORT or :PORT)", *metricsAddr, err)
		}
	}
	if *webConfig != "" {
		if err := web.Validate(*webConfig); err != nil {
			return nil, usagef("--web.config.file=%s: %v", *webConfig, err)
		}
	}
	via := map[string]bool{}
	if *killVia != "" {
		for _, m := range strings.Split(*killVia, ",") {
			if m != collector.MechSockDestroy && m != collector.MechSockDiag {
				return nil, usagef("--kill-via: %q is not a mechanism (use bpf_sock_destroy, sock_diag, or both)", m)
			}
			via[m] = true
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, usagef("--log-level=%q: use debug, info, warn or error", *logLevel)
	}
	return &agentConfig{
		apiSocket:    *apiSocket,
		metricsAddr:  *metricsAddr,
		webConfig:    *webConfig,
		processLabel: *processLabel,
		maxProcesses: *maxProcesses,
		podLabel:     *podLabel,
		maxPods:      *maxPods,
		logLevel:     level,
		collector: collector.Config{
			RingBufferBytes:   *ring,
			ReconcileInterval: *reconcile,
			KernelHZ:          *hz,
			Skip:              skip,
			PinDir:            *pinDir,
			IgnoreOwnCloses:   true,
			ProbeReads:        *probeReads,
			ReadOnly:          *readOnly,
			NoSockDestroy:     !via[collector.MechSockDestroy],
			NoSockDiag:        !via[collector.MechSockDiag],
			Table: collector.TableConfig{
				MaxConns: *maxConns, HistoryTTL: *history, MaxHistory: *maxHistory,
				Verdicts: collector.VerdictConfig{GhostGrace: *ghostGrace, CloseWaitAfter: *closeWait, SilentAfter: *silent, UnresponsiveRTOs: *rtos},
			},
		},
	}, nil
}

func runAgent(args []string, _, stderr io.Writer) error {
	cfg, err := parseAgentFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	if os.Getenv("GOGC") == "" {
		// The table is long-lived and allocation is low once it is built:
		// a heap target of 1.5x live rather than 2x keeps RSS near the
		// table's size for little extra GC work. GOGC overrides.
		debug.SetGCPercent(50)
	}
	cfg.collector.Logger = log
	c, err := collector.New(cfg.collector)
	if err != nil {
		return err
	}
	defer c.Close()

	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// fail stops the agent with an error: it exits non-zero so that systemd
	// or Kubernetes restarts it.
	ctx, fail := context.WithCancelCause(sigCtx)
	defer fail(nil)
	serve := func(what string, run func() error) {
		go superviseServer(what, run, func(err error) {
			c.SetNotReady(err.Error())
			log.Error("stopping: a server stopped", "err", err)
			fail(err)
		})
	}

	l, err := exporter.ListenUnix(cfg.apiSocket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.apiSocket)
	srv := &http.Server{Handler: exporter.NewAPI(c), ReadHeaderTimeout: 10 * time.Second, ConnContext: exporter.ConnContext}
	serve("api server on "+cfg.apiSocket, func() error { return srv.Serve(l) })
	defer srv.Close()

	if cfg.metricsAddr != "" {
		ml, err := net.Listen("tcp", cfg.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", cfg.metricsAddr, err)
		}
		msrv := &http.Server{
			Handler:           exporter.NewMetricsHandler(c, exporter.MetricsOptions{ProcessLabel: cfg.processLabel, MaxProcesses: cfg.maxProcesses, PodLabel: cfg.podLabel, MaxPods: cfg.maxPods}),
			ReadHeaderTimeout: 10 * time.Second,
		}
		// exporter-toolkit adds TLS and basic auth from the web config
		// file; without one it serves plain HTTP.
		flags := &web.FlagConfig{WebConfigFile: &cfg.webConfig}
		serve("metrics server on "+ml.Addr().String(), func() error { return web.Serve(ml, msrv, flags, log) })
		defer msrv.Close()
		log.Info("serving metrics", "address", ml.Addr().String())
	}

	start := time.Now()
	go func() {
		select {
		case <-c.Ready():
			log.Info("ready", "connections", c.Table().Len(), "startup", time.Since(start).Round(time.Millisecond), "api", cfg.apiSocket)
		case <-ctx.Done():
			return
		}
		// Everything is loaded, attached, mounted and listening: keep only
		// what reconcile needs.
		keep, kept := runtimeCaps, "CAP_SYS_ADMIN (enter network namespaces), CAP_SYS_PTRACE (read other processes' namespaces, take a holder's fd for kill --graceful)"
		if !cfg.collector.ReadOnly {
			keep, kept = append(keep, caps.NetAdmin), kept+", CAP_NET_ADMIN (kill through sock_diag)"
		}
		err := caps.KeepOnly(keep...)
		switch {
		case err == nil:
			c.SetCapsDropped(true)
			log.Info("dropped capabilities", "kept", kept)
		case errors.Is(err, caps.ErrCgo):
			log.Warn("capabilities not dropped", "err", err)
		default:
			fail(fmt.Errorf("drop capabilities: %w", err))
		}
	}()
	if err := c.Run(ctx); err != nil {
		log.Error("stopping: detaching programs", "err", err)
		return fmt.Errorf("collector: %w", err)
	}
	// A signal cancels sigCtx (cause context.Canceled); fail gives the
	// cause of any other stop.
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("stopping: detaching programs", "err", err)
		return err
	}
	log.Info("stopping: detaching programs")
	return nil
}

// superviseServer runs a server until it is closed at shutdown. A server
// that stops on its own (its listener failed or was closed under it) is
// reported to stopped, which makes the agent not ready and stops it: the
// agent must not run on without its API or metrics unnoticed.
func superviseServer(what string, run func() error, stopped func(error)) {
	err := run()
	if errors.Is(err, http.ErrServerClosed) {
		return
	}
	if err == nil {
		err = errors.New("returned without an error")
	}
	stopped(fmt.Errorf("%s stopped: %w", what, err))
}

// runtimeCaps are the capabilities the agent keeps once it is ready:
// reconcile enters other network namespaces (setns needs CAP_SYS_ADMIN) and
// finds them through /proc/PID/ns of any process (CAP_SYS_PTRACE, which
// kill --graceful needs too, for pidfd_getfd). Unless --read-only it also
// keeps CAP_NET_ADMIN, if it has it, for kill through sock_diag.
var runtimeCaps = []int{caps.SysAdmin, caps.SysPtrace}

// optionalPrograms lists the programs the agent can run without.
func optionalPrograms() []string {
	var out []string
	for _, name := range bpf.ProgramNames() {
		if !bpf.Required(name) {
			out = append(out, name)
		}
	}
	return out
}
