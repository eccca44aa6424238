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
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func runAgent(args []string, _, stderr io.Writer) error {
	fs := newFlags("agent", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "unix socket for the local query API (mode 0600)")
	reconcile := fs.Duration("reconcile-interval", 30*time.Second, "how often a fresh kernel snapshot corrects the table (at least 1s)")
	ring := fs.Int("ring-buffer-bytes", 1<<20, "size of the event ring buffer: a power of two, at least 4096")
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
	maxProcesses := fs.Int("metrics-max-processes", 100, "distinct process label values before the rest count as \"other\"")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reconcile < time.Second {
		return usagef("--reconcile-interval=%s is too short: use at least 1s", *reconcile)
	}
	if *ring < 4096 || *ring&(*ring-1) != 0 {
		return usagef("--ring-buffer-bytes=%d must be a power of two of at least 4096", *ring)
	}
	if *maxConns <= 0 {
		return usagef("--max-connections=%d must be positive", *maxConns)
	}
	if *history < 0 || *maxHistory < 0 {
		return usagef("--history and --max-history must not be negative")
	}
	if *hz < 0 {
		return usagef("--kernel-hz=%d must not be negative", *hz)
	}
	for name, d := range map[string]time.Duration{"ghost-grace": *ghostGrace, "close-wait-after": *closeWait, "silent-after": *silent} {
		if d <= 0 {
			return usagef("--%s=%s must be positive", name, d)
		}
	}
	if *rtos < 1 {
		return usagef("--unresponsive-after-rtos=%d must be at least 1", *rtos)
	}
	skip := map[string]bool{}
	if *disable != "" {
		for _, name := range strings.Split(*disable, ",") {
			if !slices.Contains(optionalPrograms(), name) {
				return usagef("--disable-programs: %q is not an optional program (optional: %s)", name, strings.Join(optionalPrograms(), ", "))
			}
			skip[name] = true
		}
	}
	if *pinDir != "" && !filepath.IsAbs(*pinDir) {
		return usagef("--pin-dir=%q must be an absolute path", *pinDir)
	}
	if *maxProcesses < 1 {
		return usagef("--metrics-max-processes=%d must be at least 1", *maxProcesses)
	}
	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			return usagef("--metrics-address=%q: %v (want HOST:PORT or :PORT)", *metricsAddr, err)
		}
	}
	if *webConfig != "" {
		if err := web.Validate(*webConfig); err != nil {
			return usagef("--web.config.file=%s: %v", *webConfig, err)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usagef("--log-level=%q: use debug, info, warn or error", *logLevel)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	c, err := collector.New(collector.Config{
		RingBufferBytes:   *ring,
		ReconcileInterval: *reconcile,
		KernelHZ:          *hz,
		Skip:              skip,
		PinDir:            *pinDir,
		Table: collector.TableConfig{
			MaxConns: *maxConns, HistoryTTL: *history, MaxHistory: *maxHistory,
			Verdicts: collector.VerdictConfig{GhostGrace: *ghostGrace, CloseWaitAfter: *closeWait, SilentAfter: *silent, UnresponsiveRTOs: *rtos},
		},
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer c.Close()

	l, err := exporter.ListenUnix(*apiSocket)
	if err != nil {
		return err
	}
	defer os.Remove(*apiSocket)
	srv := &http.Server{Handler: exporter.NewAPI(c), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("api server stopped", "err", err)
		}
	}()
	defer srv.Close()

	if *metricsAddr != "" {
		ml, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", *metricsAddr, err)
		}
		msrv := &http.Server{
			Handler:           exporter.NewMetricsHandler(c, exporter.MetricsOptions{ProcessLabel: *processLabel, MaxProcesses: *maxProcesses}),
			ReadHeaderTimeout: 10 * time.Second,
		}
		go func() {
			// exporter-toolkit adds TLS and basic auth from the web config
			// file; without one it serves plain HTTP.
			flags := &web.FlagConfig{WebConfigFile: webConfig}
			if err := web.Serve(ml, msrv, flags, log); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		defer msrv.Close()
		log.Info("serving metrics", "address", ml.Addr().String())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	go func() {
		select {
		case <-c.Ready():
			log.Info("ready", "connections", c.Table().Len(), "startup", time.Since(start).Round(time.Millisecond), "api", *apiSocket)
		case <-ctx.Done():
		}
	}()
	if err := c.Run(ctx); err != nil {
		return fmt.Errorf("collector: %w", err)
	}
	log.Info("stopping: detaching programs")
	return nil
}

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
