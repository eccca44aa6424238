package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ghostconn/ghostconn/collector"
)

// scalingInterval is the reconcile interval of the scaling phase's agents:
// short, so that the first periodic reconcile comes soon after ready.
// What a reconcile costs does not depend on it.
const scalingInterval = 10 * time.Second

// scalingQuiet is the window after that reconcile in which the agent's
// CPU between reconciles is measured (shorter than scalingInterval, so
// no reconcile falls in it).
const scalingQuiet = 8 * time.Second

// scalePoint is what the scaling phase measured at one table size.
type scalePoint struct {
	sockets, tracked int
	setup            time.Duration // holding the sockets added for this size
	ready            time.Duration
	rss              uint64 // VmRSS right after the first periodic reconcile
	ls               time.Duration
	reconcileWall    time.Duration
	reconcileCPU     time.Duration // the agent's CPU in the reconcile's window, less the rate between reconciles
	quietRate        float64       // cores, between reconciles
	// longRun is the agent's idle CPU in cores with default flags:
	// quietRate plus one reconcile per the wait NextReconcile gives after
	// it.
	longRun  float64
	longWait time.Duration
}

// parseSizes reads the -scaling list of socket counts.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 || n%scalingPerHolder != 0 {
			return nil, fmt.Errorf("-scaling %q: want positive multiples of %d sockets", f, scalingPerHolder)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("-scaling %q: sizes must grow", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// scalingPerHolder is how many sockets each holder of the scaling phase
// holds (10000 fds).
const scalingPerHolder = 10000

// phaseScaling: the same measurements at growing table sizes (10k, 100k,
// 1M sockets by default), to show that each cost grows linearly. The
// holders are added to as the size grows; at each size a fresh agent
// (reconcile interval scalingInterval) is timed to ready, its first
// periodic reconcile is timed and its CPU measured, then its CPU over
// scalingQuiet with nothing happening, its RSS, and one `ghostconn ls -o
// json`.
func phaseScaling(c *config, r *results) error {
	if len(c.scaling) == 0 {
		return nil
	}
	var held sockHolders
	defer held.stop()
	have := 0
	for _, n := range c.scaling {
		t0 := time.Now()
		add := (n - have) / scalingPerHolder
		if err := held.add(c.self, add, scalingPerHolder/2); err != nil {
			return fmt.Errorf("hold %d sockets: %w", n, err)
		}
		have = n
		p := scalePoint{sockets: n, setup: time.Since(t0)}
		logf("scaling: holding %d sockets after %s", n, p.setup.Round(time.Millisecond))
		if err := scaleAt(c, &p); err != nil {
			return fmt.Errorf("at %d sockets: %w", n, err)
		}
		logf("scaling: %d sockets: ready %s, rss %s, ls %s, reconcile %s wall %s CPU, %.2f%% between, %.2f%% long-run",
			n, p.ready.Round(time.Millisecond), fmtBytes(float64(p.rss)), p.ls.Round(time.Millisecond),
			p.reconcileWall.Round(time.Millisecond), p.reconcileCPU.Round(time.Millisecond), 100*p.quietRate, 100*p.longRun)
		r.scaling = append(r.scaling, p)
	}
	return nil
}

// scaleAt measures one fresh agent at the sockets held now.
func scaleAt(c *config, p *scalePoint) error {
	flags := append([]string{"--reconcile-interval", scalingInterval.String()}, c.agentFlags...)
	a, err := startAgent(c.bin, c.workDir, flags...)
	if err != nil {
		return err
	}
	defer a.stop()
	p.ready = a.ready
	s0, err := a.statusHTTP()
	if err != nil {
		return err
	}
	// The reconcile's window: from now until the status counts it. The
	// status is read only from when the reconcile is due (the interval
	// after ready), every 250 ms: each read costs the agent a little.
	c0, err := procCPU(a.pid())
	if err != nil {
		return err
	}
	w0 := time.Now()
	time.Sleep(scalingInterval - 500*time.Millisecond)
	s, err := a.waitReconcile(s0.PeriodicReconciles, 250*time.Millisecond, 5*time.Minute)
	if err != nil {
		return err
	}
	c1, err := procCPU(a.pid())
	if err != nil {
		return err
	}
	w1 := time.Now()
	p.tracked = s.Connections
	p.reconcileWall = time.Duration(s.ReconcileSeconds * float64(time.Second))
	p.rss, _, _ = procMem(a.pid())
	time.Sleep(scalingQuiet)
	c2, err := procCPU(a.pid())
	if err != nil {
		return err
	}
	quiet := time.Since(w1)
	p.quietRate = c2.Seconds() - c1.Seconds()
	p.quietRate /= quiet.Seconds()
	p.reconcileCPU = max(0, c1-c0-time.Duration(p.quietRate*float64(w1.Sub(w0))))
	p.longWait = collector.NextReconcile(defaultReconcileInterval, max(p.reconcileWall, p.reconcileCPU), false)
	p.longRun = p.quietRate + p.reconcileCPU.Seconds()/p.longWait.Seconds()

	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	t := time.Now()
	if err := runTimed(devnull, c.bin, "ls", "-o", "json", "--api-socket", a.sock); err != nil {
		return fmt.Errorf("ghostconn ls: %w", err)
	}
	p.ls = time.Since(t)
	return nil
}

// defaultReconcileInterval is the agent's default --reconcile-interval,
// for the long-run estimate.
const defaultReconcileInterval = 30 * time.Second
