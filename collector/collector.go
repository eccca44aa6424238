package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
)

// Config configures a Collector.
type Config struct {
	// RingBufferBytes sizes the event ring buffer (power of two, at least a
	// page). Zero means 8 MiB: at 100ms between polls that holds about
	// 500k events a second.
	RingBufferBytes int
	// PollInterval is how often the reader drains the ring while few
	// records come (the kernel never wakes it); while many do, it drains
	// ten times as often. Zero means 100ms.
	PollInterval time.Duration
	// ReconcileInterval is how often a fresh snapshot corrects the table.
	// Zero means 30s.
	ReconcileInterval time.Duration
	// KernelHZ overrides CONFIG_HZ detection when non-zero.
	KernelHZ int
	Table    TableConfig
	// Skip names programs not to load (tests of degraded operation, and
	// --disable-programs).
	Skip map[string]bool
	// PinDir is where the close evidence is pinned (see bpf.Options).
	PinDir string
	// IgnoreOwnCloses leaves this process's own closes out of the close
	// evidence (see bpf.Options): the agent sets it, so that the copies of
	// holders' fds it takes for an action are not taken for the
	// application's. Tests that run the collector in the process whose
	// closes they check leave it off.
	IgnoreOwnCloses bool
	// ProbeReads loads the hooks' probe-read variants even where the
	// kernel has bpf_rdonly_cast (bpf.Options.ProbeReads).
	ProbeReads bool
	// ReaderGiveUp is how long the ring-buffer reader may fail without a
	// single record read before the collector gives up: it becomes not
	// ready and Run returns the error, so a supervisor restarts the agent.
	// Zero means 30s.
	ReaderGiveUp time.Duration
	Logger       *slog.Logger
	// ReadOnly refuses every action (kill): for hosts where only
	// observation is allowed.
	ReadOnly bool
	// NoSockDestroy and NoSockDiag turn off a mechanism kill aborts with.
	NoSockDestroy, NoSockDiag bool
}

func (c *Config) defaults() {
	if c.RingBufferBytes == 0 {
		c.RingBufferBytes = DefaultRingBufferBytes
	}
	if c.PollInterval == 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 30 * time.Second
	}
	if c.ReaderGiveUp == 0 {
		c.ReaderGiveUp = 30 * time.Second
	}
	if c.Table == (TableConfig{}) {
		c.Table = DefaultTableConfig
	}
	if c.Table.Verdicts == (VerdictConfig{}) {
		c.Table.Verdicts = DefaultVerdictConfig
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// DefaultRingBufferBytes is the default size of the event ring buffer.
const DefaultRingBufferBytes = 8 << 20

// Collector owns the eBPF probes and the connection table and keeps the
// one in step with the other.
type Collector struct {
	cfg    Config
	probes *bpf.Probes
	table  *Table
	dec    Decoder
	reader ringReader

	ready     chan struct{}
	readyOnce sync.Once
	// notReady is why the agent is no longer ready (the reader gave up, a
	// server stopped); nil while it is.
	notReady atomic.Pointer[string]

	decodeErrors    atomic.Uint64
	readerErrors    atomic.Uint64
	eventsRead      atomic.Uint64
	deltasRead      atomic.Uint64
	reconciles      atomic.Uint64
	reconcileErrors atomic.Uint64
	lastReconcile   atomic.Int64 // duration in ns
	reconcileWait   atomic.Int64 // the wait before the next periodic reconcile, in ns
	// periodicReconciles counts periodic reconciles done, each with the
	// collection after it and the choice of the next wait.
	periodicReconciles atomic.Uint64
	gen                atomic.Uint64
	refreshes          atomic.Uint64
	replayed           atomic.Uint64
	// snapshotErrors counts namespaces that a reconcile or refresh could
	// not snapshot; lastSnapshotErr is the latest of those failures.
	snapshotErrors  atomic.Uint64
	lastSnapshotErr atomic.Pointer[TimedError]
	// deltasRead counts entries drained from the kernel's deltas map;
	// drainErrors counts failed drains, lastDrainErr is the latest. watchFlagErrors counts failed
	// flips of the kernel's watch flag.
	drainErrors     atomic.Uint64
	lastDrainErr    atomic.Pointer[TimedError]
	watchFlagErrors atomic.Uint64
	// reconcileMu serialises snapshots; nsPaths is the namespace list the
	// last reconcile found, under it.
	reconcileMu sync.Mutex
	nsPaths     map[uint32]string

	reconcileHist histogram
	capsDropped   atomic.Bool

	// actor carries out actions; actions counts them.
	actor   *Actor
	actions actionCounts
}

// ringReader is what readLoop needs of the ring-buffer reader; the seam
// lets tests inject read failures. *ringbuf.Reader implements it.
type ringReader interface {
	SetDeadline(time.Time)
	ReadInto(*ringbuf.Record) error
	Close() error
}

// TimedError is an error with the time it happened, for Status.
type TimedError struct {
	Time  time.Time `json:"time"`
	Error string    `json:"error"`
}

// SetCapsDropped records that the agent gave up the capabilities it needed
// only to start.
func (c *Collector) SetCapsDropped(v bool) { c.capsDropped.Store(v) }

// ReconcileBuckets are the upper bounds of the reconcile duration
// histogram, in seconds.
var ReconcileBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// histogram is a fixed-bucket histogram safe for concurrent use.
type histogram struct {
	mu     sync.Mutex
	counts [13]uint64 // len(ReconcileBuckets)+1, the last is +Inf
	sum    float64
}

func (h *histogram) observe(v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := sort.SearchFloat64s(ReconcileBuckets, v)
	h.counts[i]++
	h.sum += v
}

// ReconcileDurations returns the reconcile duration histogram: the count,
// the sum in seconds, and cumulative counts per bucket of ReconcileBuckets.
func (c *Collector) ReconcileDurations() (count uint64, sum float64, buckets map[float64]uint64) {
	h := &c.reconcileHist
	h.mu.Lock()
	defer h.mu.Unlock()
	buckets = make(map[float64]uint64, len(ReconcileBuckets))
	var cum uint64
	for i, b := range ReconcileBuckets {
		cum += h.counts[i]
		buckets[b] = cum
	}
	return cum + h.counts[len(ReconcileBuckets)], h.sum, buckets
}

// New loads and attaches the probes. Call Run to start collecting and
// Close to detach.
func New(cfg Config) (*Collector, error) {
	cfg.defaults()
	hz := cfg.KernelHZ
	if hz == 0 {
		var err error
		if hz, err = KernelHZ(); err != nil {
			return nil, err
		}
	}
	probes, err := bpf.Load(bpf.Options{
		RingBufferBytes: cfg.RingBufferBytes,
		Skip:            cfg.Skip,
		PinDir:          cfg.PinDir,
		IgnoreOwnCloses: cfg.IgnoreOwnCloses,
		ProbeReads:      cfg.ProbeReads,
	})
	if err != nil {
		return nil, err
	}
	if probes.PinReset {
		cfg.Logger.Warn("the pinned close evidence was from an incompatible build and has been replaced", "pin_dir", cfg.PinDir)
	}
	for _, name := range bpf.ProgramNames() {
		if err := probes.Attached[name]; err != nil {
			cfg.Logger.Warn("program not attached; the agent runs without it", "program", name, "err", err)
		}
	}
	rd, err := ringbuf.NewReader(probes.Events)
	if err != nil {
		probes.Close()
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	c := &Collector{
		cfg:    cfg,
		probes: probes,
		table:  NewTable(cfg.Table),
		dec:    Decoder{HZ: hz, MonoOffset: monoOffset()},
		reader: rd,
		ready:  make(chan struct{}),
		actor:  &Actor{Probes: probes, NoSockDestroy: cfg.NoSockDestroy, NoSockDiag: cfg.NoSockDiag, HZ: hz},
	}
	c.table.self = bpf.SelfTGID()
	// While a watch client is connected, the kernel streams the transitions
	// and options it otherwise folds.
	c.table.SetWatchHook(func(on bool) error {
		err := probes.SetWatching(on)
		if err != nil {
			c.watchFlagErrors.Add(1)
		}
		return err
	})
	return c, nil
}

// Table returns the live connection table.
func (c *Collector) Table() *Table { return c.table }

// Ready is closed once the first snapshot has seeded the table.
func (c *Collector) Ready() <-chan struct{} { return c.ready }

// Readiness says whether the agent is ready to answer: seeded, and nothing
// it depends on has stopped. When it is not, reason says why.
func (c *Collector) Readiness() (ready bool, reason string) {
	if r := c.notReady.Load(); r != nil {
		return false, *r
	}
	select {
	case <-c.ready:
		return true, ""
	default:
		return false, "the first snapshot has not seeded the table yet"
	}
}

// SetNotReady marks the agent not ready for good, with the reason (for
// example a server that stopped). The first reason stays.
func (c *Collector) SetNotReady(reason string) {
	c.notReady.CompareAndSwap(nil, &reason)
}

// Close detaches the programs and releases the ring buffer.
func (c *Collector) Close() error {
	return errors.Join(c.reader.Close(), c.probes.Close())
}

// Run reads events and reconciles until ctx ends. The programs were
// attached by New, before the seeding snapshot that Run takes first, so no
// connection opened in between is missed.
//
// Run returns an error when the event reader cannot go on (see
// Config.ReaderGiveUp); the collector is then not ready.
func (c *Collector) Run(ctx context.Context) error {
	readCtx, stopReading := context.WithCancel(ctx)
	readErr := make(chan error, 1)
	go func() { readErr <- c.readLoop(readCtx) }()
	readerDone := false
	defer func() {
		// Closing the reader interrupts a pending read; the loop applies
		// what it holds and returns. Close may close it again.
		stopReading()
		c.reader.Close()
		if !readerDone {
			<-readErr
		}
	}()

	if err := c.reconcile(true); err != nil {
		return fmt.Errorf("seed connection table: %w", err)
	}
	if err := c.replayCloses(); err != nil {
		return fmt.Errorf("replay close evidence: %w", err)
	}
	c.readyOnce.Do(func() { close(c.ready) })
	debug.FreeOSMemory() // the seeding's holder records and the programs' load, as after a reconcile

	recon := time.NewTimer(c.cfg.ReconcileInterval)
	c.reconcileWait.Store(int64(c.cfg.ReconcileInterval))
	defer recon.Stop()
	lost := c.lostTotal()
	lastRecon, lastTook := time.Now(), time.Duration(0)
	// A loss (a full ring, a skipped program run) brings the next
	// reconcile forward once it has stopped (a second without more), so
	// the table converges in seconds, not at the next interval. While
	// losses go on, the interval stands: a reconcile in the middle of a
	// storm is stale at once, and its walk competes with the storm.
	lossCheck := time.NewTicker(time.Second)
	lastCheck := lost
	defer lossCheck.Stop()
	verdicts := time.NewTicker(verdictTick)
	defer verdicts.Stop()
	// due fires when the earliest ghost grace period ends, so the decision
	// does not wait for the next tick.
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	// The wait is a monotonic difference: a wall-clock step moves no
	// deadline.
	schedule := func(wait time.Duration) {
		if wait > 0 {
			due.Reset(wait + time.Millisecond)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			readerDone = true
			if ctx.Err() != nil {
				// Stopping: the loop left its backoff because ctx ended.
				return nil
			}
			if err == nil {
				// Only Close ends the loop without an error, and only
				// this function closes the reader.
				err = errors.New("the ring buffer reader was closed")
			}
			err = fmt.Errorf("event reader: %w", err)
			c.SetNotReady(err.Error())
			return err
		case <-recon.C:
			start, cpu0 := time.Now(), processCPU()
			if err := c.reconcile(false); err != nil {
				c.reconcileErrors.Add(1)
				c.cfg.Logger.Error("reconcile", "err", err)
			}
			c.table.GC(time.Now())
			// A reconcile reads every holder record before it applies
			// them (6 MB at 100k sockets) and allocates as it applies
			// the snapshot, and the collection that runs meanwhile sets
			// the heap's next goal from that peak; an idle agent then
			// allocates too little to collect again for minutes.
			// Collecting now and handing the pages back puts RSS near
			// the table's own size at once (at 100k, 175 -> about 126
			// MB), for one collection of the table a reconcile (in the
			// CPU budget below).
			debug.FreeOSMemory()
			now := c.lostTotal()
			lastRecon, lastTook = time.Now(), time.Since(start)
			// The budget is of CPU, which is more than the wall time:
			// the holder walk runs beside the snapshot (observe), and
			// the garbage collector beside both.
			wait := NextReconcile(c.cfg.ReconcileInterval, max(lastTook, processCPU()-cpu0), now != lost)
			c.reconcileWait.Store(int64(wait))
			c.periodicReconciles.Add(1)
			recon.Reset(wait)
			lost = now
		case <-lossCheck.C:
			now := c.lostTotal()
			if now != lost && now == lastCheck && time.Since(lastRecon) >= lossReconcileGap(lastTook) {
				recon.Reset(0)
			}
			lastCheck = now
		case <-verdicts.C:
			schedule(c.evaluate())
		case <-due.C:
			schedule(c.evaluate())
		}
	}
}

// lossReconcileGap is how soon after the last reconcile a loss brings the
// next one: 5s, or ten times as long as the last took, so that a storm of
// losses costs at most a tenth of a core in reconciles.
func lossReconcileGap(took time.Duration) time.Duration {
	return max(5*time.Second, 10*took)
}

// reconcileBudget bounds the share of a core reconcile may take: the next
// one waits at least this many times as long as the last one took, in CPU
// time (half a percent of a core). Reconcile is the safety net: owners
// come from connect and accept as they return, verdicts that need fresh
// measurements ask for their namespace's snapshot (refresh), and a loss
// brings the next reconcile forward.
const reconcileBudget = 200

// maxReconcileStretch bounds how far the budget may stretch the interval.
const maxReconcileStretch = 10

// NextReconcile is the wait before the next reconcile, whose last run
// took took (CPU or wall time, the larger): the configured interval,
// stretched so that reconcile takes at most half a percent of a core on a
// large table (up to ten times the interval), but never stretched while
// events are being lost, since then the table needs the correction.
func NextReconcile(interval, took time.Duration, lostSinceLast bool) time.Duration {
	if lostSinceLast {
		return interval
	}
	return min(max(interval, took*reconcileBudget), interval*maxReconcileStretch)
}

// lostTotal sums the kernel's lost-event counters and the programs'
// recursion misses; 0 if they cannot be read (Status reports that failure).
func (c *Collector) lostTotal() uint64 {
	st, err := c.probes.ReadStats()
	if err != nil {
		return 0
	}
	var n uint64
	for _, idx := range lostIndex {
		n += st[idx]
	}
	if misses, err := c.probes.RecursionMisses(); err == nil {
		for _, m := range misses {
			n += m
		}
	}
	return n
}

// verdictTick is how often the connections that changed are evaluated;
// deadlines (a grace period ending) also wake the loop on their own.
const verdictTick = 250 * time.Millisecond

// evaluate runs the verdict rules; when a rule needs fresher evidence it
// takes a snapshot of just the namespaces concerned and evaluates again.
// It returns how long until the next deadline (a grace period ending), on
// the monotonic clock; zero if there is none.
func (c *Collector) evaluate() time.Duration {
	need, wait := c.table.EvaluateNow()
	if len(need) == 0 {
		return wait
	}
	if err := c.refresh(need); err != nil {
		c.reconcileErrors.Add(1)
		c.cfg.Logger.Warn("refresh for verdicts", "err", err)
		return wait
	}
	_, wait = c.table.EvaluateNow()
	return wait
}

// refresh snapshots the sockets of the given namespaces and every holder.
// Unlike reconcile it retires nothing: it only brings measurements up to
// date.
func (c *Collector) refresh(netns map[uint32]bool) error {
	c.reconcileMu.Lock()
	defer c.reconcileMu.Unlock()
	start := time.Now()
	paths := c.nsPaths
	for ino := range netns {
		if _, ok := paths[ino]; !ok {
			var err error
			if paths, err = Namespaces(); err != nil {
				return err
			}
			c.nsPaths = paths
			break
		}
	}
	want := make(map[uint32]string, len(netns))
	for ino := range netns {
		if path, ok := paths[ino]; ok { // else the namespace is gone
			want[ino] = path
		}
	}
	_, errs, err := observe(c.probes, c.table, &c.dec, want, start, c.gen.Load(), false)
	c.snapshotFailed(errs)
	if err != nil {
		return err
	}
	c.refreshes.Add(1)
	return nil
}

// snapshotFailed counts the namespaces a snapshot could not read and keeps
// the last failure for Status. A namespace that went away between listing
// and snapshot fails too: the count says how often, the last error which.
func (c *Collector) snapshotFailed(errs []error) {
	if len(errs) == 0 {
		return
	}
	c.snapshotErrors.Add(uint64(len(errs)))
	c.lastSnapshotErr.Store(&TimedError{Time: time.Now(), Error: errs[len(errs)-1].Error()})
}

// readLoop drains the ring buffer in batches. The kernel never wakes it
// (see submit in the C source): it reads until the ring is empty, then
// waits PollInterval, or a tenth of it when the last wait ended with
// busyRecords or more records pending, and drains again.
//
// Only a closed reader ends the loop without an error. Any other read
// error is counted, logged once per run of failures, and retried with a
// backoff; when reads keep failing for ReaderGiveUp without one record
// read, the loop returns the error, since the table would otherwise drift
// unseen.
func (c *Collector) readLoop(ctx context.Context) error {
	dec := c.dec // the loop's own copy: it refreshes MonoOffset
	var rec ringbuf.Record
	batch := make([]Event, 0, 256)
	var deltas []Event // drained from the kernel's deltas map
	var lastDrain, lastFullDrain time.Time
	lastCreated := ^uint64(0) // none read yet: the first poll drains
	flush := func() {
		if len(batch) > 0 {
			c.table.Apply(batch)
			batch = batch[:0]
		}
		if time.Since(lastDrain) < c.cfg.PollInterval {
			return
		}
		// After the ring records read so far: a socket's end record is
		// in the ring only once its delta left the map (into the end
		// record itself, or into a drain before this one).
		lastDrain = time.Now()
		// A drain visits every bucket of the map, which costs more than
		// the drain of an idle host's few entries: skip it while the
		// hooks have created none since the last one began (but drain at
		// least every drainAtLeast, whatever the counter says).
		created, cerr := c.probes.DeltasCreated()
		if cerr == nil && created == lastCreated && lastDrain.Sub(lastFullDrain) < drainAtLeast {
			return
		}
		if cerr != nil {
			c.drainErrors.Add(1)
			c.lastDrainErr.Store(&TimedError{Time: lastDrain, Error: cerr.Error()})
		}
		// The count is trusted only after a drain that worked, begun after
		// it was read; otherwise the next poll drains again.
		lastCreated, lastFullDrain = ^uint64(0), lastDrain
		deltas = deltas[:0]
		keep := func(err error) {
			c.deltasRead.Add(1)
			if err != nil {
				c.decodeErrors.Add(1)
				deltas = deltas[:len(deltas)-1]
			}
		}
		if _, err := c.probes.DrainDeltas(func(cookie uint64, d *bpf.GhostconnStateDelta) {
			deltas = append(deltas, Event{})
			keep(dec.DecodeStateDelta(cookie, d, &deltas[len(deltas)-1]))
		}, func(cookie uint64, d *bpf.GhostconnSysDelta) {
			deltas = append(deltas, Event{})
			keep(dec.DecodeSysDelta(cookie, d, &deltas[len(deltas)-1]))
		}); err != nil {
			c.drainErrors.Add(1)
			c.lastDrainErr.Store(&TimedError{Time: lastDrain, Error: err.Error()})
		} else if cerr == nil {
			lastCreated = created
		}
		if len(deltas) > 0 {
			c.table.Apply(deltas)
		}
	}
	var failing int // consecutive failed reads
	var failingSince time.Time
	wait, read := c.cfg.PollInterval, 0
	for {
		c.reader.SetDeadline(time.Now().Add(wait))
		err := c.reader.ReadInto(&rec)
		switch {
		case err == nil:
			read++
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			// Drained: everything submitted before the deadline (or a
			// Flush) has been read.
			flush()
			wait = c.cfg.PollInterval
			if read >= busyRecords {
				wait /= 10
			}
			read = 0
			dec.MonoOffset = monoOffset()
			if failing > 0 {
				c.readerRecovered(failing, failingSince)
				failing = 0
			}
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			flush()
			return nil
		default:
			flush()
			c.readerErrors.Add(1)
			if failing == 0 {
				failingSince = time.Now()
				c.cfg.Logger.Error("reading the event ring buffer failed; retrying", "err", err)
			}
			failing++
			if since := time.Since(failingSince); since >= c.cfg.ReaderGiveUp {
				return fmt.Errorf("read event ring buffer: %d reads failed over %s, the last: %w", failing, since.Round(time.Millisecond), err)
			}
			if !sleepCtx(ctx, readerBackoff(failing)) {
				return nil
			}
			continue
		}
		if failing > 0 {
			c.readerRecovered(failing, failingSince)
			failing = 0
		}
		batch = c.take(&dec, rec.RawSample, batch)
		if len(batch) == cap(batch) {
			flush()
		}
	}
}

// drainAtLeast bounds how long the reader trusts the kernel's count of
// new deltas to skip draining the map.
const drainAtLeast = 5 * time.Second

// busyRecords is how many records one drain must read for the reader to
// poll ten times as often until a drain reads fewer: 8 MiB of ring holds
// 50k records, which a churning host fills in a fifth of a second.
const busyRecords = 1024

// readerRecovered logs the end of a run of failed reads.
func (c *Collector) readerRecovered(failed int, since time.Time) {
	c.cfg.Logger.Info("reading the event ring buffer works again", "failed_reads", failed, "for", time.Since(since).Round(time.Millisecond))
}

// readerBackoff is the pause after the n-th consecutive failed read: 1ms,
// doubling up to 1s.
func readerBackoff(n int) time.Duration {
	return time.Millisecond << min(n-1, 10)
}

// sleepCtx waits for d, or less when ctx ends; it reports whether ctx is
// still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// take decodes one ring-buffer record onto batch. Every record counts as
// read; one that does not decode (truncated, corrupted, unknown) is
// counted as a decode error and skipped. An end record whose delta does
// not decode is counted too, and its CLOSE is kept.
func (c *Collector) take(dec *Decoder, raw []byte, batch []Event) []Event {
	c.eventsRead.Add(1)
	batch = append(batch, Event{})
	if err := dec.Decode(raw, &batch[len(batch)-1]); err != nil {
		c.decodeErrors.Add(1)
		if errors.Is(err, ErrBadDelta) {
			return batch
		}
		return batch[:len(batch)-1]
	}
	return batch
}

// replayCloses feeds the close evidence the kernel kept (across agent
// restarts, when pinned) to the table as close events, the same path a live
// close takes, for the sockets the seed snapshot found: every record of
// every socket, in the order the closes happened.
func (c *Collector) replayCloses() error {
	recs, err := c.probes.CloseRecords()
	if err != nil {
		return err
	}
	evs, bad := replayEvents(recs, c.table.HasInode, c.dec.MonoOffset)
	c.decodeErrors.Add(uint64(bad))
	c.table.Apply(evs)
	c.replayed.Add(uint64(len(evs)))
	return nil
}

// snapshotChunk is where a snapshot's records become events, a chunk at a
// time: an event is a few hundred bytes, and a namespace may hold a
// million sockets. The table keeps nothing of an event or its observation
// once applied, so both are reused chunk after chunk.
type snapshotChunk struct {
	evs []Event
	obs []Observation
}

func newSnapshotChunk() *snapshotChunk {
	return &snapshotChunk{evs: make([]Event, observeChunk), obs: make([]Observation, observeChunk)}
}

// apply applies the snapshot records recs, taken at start by generation
// gen, to t.
func (s *snapshotChunk) apply(t *Table, dec *Decoder, recs []bpf.GhostconnSockRec, start time.Time, gen uint64, seed bool) {
	n := 0
	for i := range recs {
		if dec.observedInto(&recs[i], start, gen, seed, &s.evs[n], &s.obs[n]) {
			n++
		}
		if n == len(s.evs) {
			t.Apply(s.evs)
			n = 0
		}
	}
	t.Apply(s.evs[:n])
}

// observeChunk is how many snapshot events observe applies at a time.
const observeChunk = 4096

// observe snapshots the sockets of the given namespaces (inode -> path)
// into t, as events taken at start, and walks every holder. It returns
// the namespaces it could read and the errors of those it could not (they
// may have gone away since they were listed); err is a failed holder walk.
//
// The holder walk (iter/task_file, every fd on the host) runs in the
// kernel while the socket snapshots are read and applied: on two cores
// that takes a third off a reconcile at 100k sockets, and off start-up.
// Its holders are applied after the snapshots, so every connection a
// snapshot found is there to take them.
func observe(p *bpf.Probes, t *Table, dec *Decoder, namespaces map[uint32]string, start time.Time, gen uint64, seed bool) (covered map[uint32]bool, errs []error, err error) {
	type walk struct {
		holders []bpf.GhostconnHolderRec
		err     error
	}
	walked := make(chan walk, 1)
	go func() {
		h, err := p.Holders()
		walked <- walk{h, err}
	}()
	covered = map[uint32]bool{}
	chunk := newSnapshotChunk()
	for ino, path := range namespaces {
		// Applied as read: a failed read leaves what it read applied (it
		// is what the kernel said) and the namespace not covered, so its
		// sweep retires nothing.
		_, err := p.EachSocket(path, func(recs []bpf.GhostconnSockRec) {
			chunk.apply(t, dec, recs, start, gen, seed)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("snapshot netns %d: %w", ino, err))
			continue
		}
		covered[ino] = true
	}
	w := <-walked
	if w.err != nil {
		return covered, errs, fmt.Errorf("snapshot socket holders: %w", w.err)
	}
	// The walk counts as begun just before start: a socket the snapshot
	// found for the first time (first seen at start) may have been made
	// after the walk passed its process, so when the walk found no holder
	// for it, its holders stay "not yet known" (holdersKnown) until the
	// next walk or its owner's connect or accept, instead of "none".
	t.SetHolders(w.holders, start.Add(-time.Nanosecond))
	return covered, errs, nil
}

// Reconcile takes a fresh snapshot now and corrects the table with it.
func (c *Collector) Reconcile() error { return c.reconcile(false) }

func (c *Collector) reconcile(seed bool) error {
	c.reconcileMu.Lock()
	defer c.reconcileMu.Unlock()
	start := time.Now()
	gen := c.gen.Add(1)
	namespaces, err := Namespaces()
	if err != nil {
		return err
	}
	c.nsPaths = namespaces
	covered, errs, err := observe(c.probes, c.table, &c.dec, namespaces, start, gen, seed)
	c.snapshotFailed(errs)
	if err != nil {
		return err
	}
	c.table.Sweep(gen, start, covered)
	if !seed {
		// Evidence of sockets that are gone is no longer needed.
		if _, err := c.probes.ForgetCloses(c.table.Has); err != nil {
			return fmt.Errorf("forget close evidence: %w", err)
		}
	}
	c.reconciles.Add(1)
	took := time.Since(start)
	c.lastReconcile.Store(int64(took))
	c.reconcileHist.observe(took.Seconds())
	if len(errs) > 0 && len(covered) == 0 {
		return errors.Join(errs...)
	}
	return nil
}

// RefreshHolders re-reads who holds each socket.
func (c *Collector) RefreshHolders() error {
	start := time.Now()
	holders, err := c.probes.Holders()
	if err != nil {
		return fmt.Errorf("snapshot socket holders: %w", err)
	}
	c.table.SetHolders(holders, start)
	return nil
}

// Status is the collector's account of itself.
type Status struct {
	Ready       bool   `json:"ready"`
	Connections int    `json:"connections"`
	EventsRead  uint64 `json:"events_read"`
	// DeltasRead counts entries drained from the kernel's deltas map:
	// sockets whose state, owner or options changed since the last poll.
	DeltasRead   uint64            `json:"deltas_read"`
	EventsLost   map[string]uint64 `json:"events_lost"`
	DecodeErrors uint64            `json:"decode_errors"`
	ReaderErrors uint64            `json:"reader_errors"`
	// Folded counts what the kernel kept out of the ring buffer because no
	// watch client asked for it, by kind ("state", "sockopt", "owner"):
	// into a socket's delta, or only counted.
	Folded map[string]uint64 `json:"folded"`
	// DeltaDrainErrors counts failed drains of the kernel's deltas map;
	// LastDeltaDrainError is the latest.
	DeltaDrainErrors    uint64      `json:"delta_drain_errors"`
	LastDeltaDrainError *TimedError `json:"last_delta_drain_error,omitempty"`
	// ProgramMisses counts, by program, the runs the kernel skipped
	// because the program was already running on that CPU: events lost.
	ProgramMisses map[string]uint64 `json:"program_recursion_misses"`
	// WatchFlagErrors counts failed changes of the kernel's watch flag.
	WatchFlagErrors uint64 `json:"watch_flag_errors"`
	// Announced counts connections the kernel announced with a delta (or
	// an end record carrying one) before any snapshot found them.
	Announced         uint64      `json:"announced"`
	NotReadyReason    string      `json:"not_ready_reason,omitempty"`
	TableFullDrops    uint64      `json:"table_full_drops"`
	UnknownSocket     uint64      `json:"unknown_socket_events"`
	Reconciles        uint64      `json:"reconciles"`
	ReconcileErrors   uint64      `json:"reconcile_errors"`
	SnapshotErrors    uint64      `json:"namespace_snapshot_errors"`
	LastSnapshotError *TimedError `json:"last_namespace_snapshot_error,omitempty"`
	ReconcileSeconds  float64     `json:"last_reconcile_seconds"`
	// ReconcileWaitSeconds is the wait before the next periodic reconcile
	// that the agent chose after the last one (see NextReconcile).
	ReconcileWaitSeconds float64 `json:"reconcile_wait_seconds"`
	// PeriodicReconciles counts the reconciles the agent's own schedule
	// ran (Reconciles also counts the seeding), each counted once done:
	// its collection and the choice of the next wait included.
	PeriodicReconciles uint64            `json:"periodic_reconciles"`
	ReconcileAdded     uint64            `json:"reconcile_added"`
	ReconcileRemoved   uint64            `json:"reconcile_removed"`
	ReconcileCorrected uint64            `json:"reconcile_corrected"`
	Refreshes          uint64            `json:"verdict_refreshes"`
	VerdictsRaised     map[string]uint64 `json:"verdicts_raised"`
	Transitions        map[string]uint64 `json:"state_transitions"`
	RetransmitEvents   uint64            `json:"retransmit_events"`
	KeepaliveFirings   uint64            `json:"keepalive_timer_firings"`
	KeepaliveProbes    uint64            `json:"keepalive_probes"`
	Programs           map[string]string `json:"programs"` // "attached" or the reason not
	// HookReads says how the hooks read kernel memory: "direct loads"
	// (bpf_rdonly_cast, 6.2+) or "probe reads" (older kernels, or
	// --probe-reads).
	HookReads string `json:"hook_reads"`
	// Kernel is the running kernel's release and architecture; Features
	// says which optional features it gave the agent.
	Kernel         string            `json:"kernel"`
	Features       []KernelFeature   `json:"kernel_features"`
	ProgramIDs     map[string]uint32 `json:"program_ids"`
	ClosesReplayed uint64            `json:"closes_replayed"`
	CapsDropped    bool              `json:"capabilities_dropped"`
	// ReadOnly says the agent refuses every action; Actions counts the
	// actions it carried out and verified, by verdict and mode.
	ReadOnly     bool          `json:"read_only"`
	Actions      []ActionCount `json:"actions"`
	KernelHZ     int           `json:"kernel_hz"`
	CloseLastRef uint64        `json:"close_last_ref"`
}

// lostIndex maps the kernel's loss counters to event kinds.
var lostIndex = map[string]bpf.GhostconnStatIndex{
	"state":      bpf.GhostconnStatIndexSTAT_LOST_STATE,
	"retransmit": bpf.GhostconnStatIndexSTAT_LOST_RETRANSMIT,
	"keepalive":  bpf.GhostconnStatIndexSTAT_LOST_KEEPALIVE,
	"close":      bpf.GhostconnStatIndexSTAT_LOST_CLOSE,
	"sockopt":    bpf.GhostconnStatIndexSTAT_LOST_SOCKOPT,
	"delta":      bpf.GhostconnStatIndexSTAT_LOST_DELTA,
}

// Status reads the counters. Kernel counters that cannot be read make it
// fail rather than report zero.
func (c *Collector) Status() (Status, error) {
	kstats, err := c.probes.ReadStats()
	if err != nil {
		return Status{}, err
	}
	ts := c.table.Stats()
	s := Status{
		Connections:  c.table.Len(),
		EventsRead:   c.eventsRead.Load(),
		DeltasRead:   c.deltasRead.Load(),
		EventsLost:   map[string]uint64{},
		DecodeErrors: c.decodeErrors.Load(),
		ReaderErrors: c.readerErrors.Load(),
		Folded: map[string]uint64{
			"state":   kstats[bpf.GhostconnStatIndexSTAT_FOLDED_STATE],
			"sockopt": kstats[bpf.GhostconnStatIndexSTAT_FOLDED_SOCKOPT],
			"owner":   kstats[bpf.GhostconnStatIndexSTAT_FOLDED_OWNER],
		},
		DeltaDrainErrors:     c.drainErrors.Load(),
		LastDeltaDrainError:  c.lastDrainErr.Load(),
		WatchFlagErrors:      c.watchFlagErrors.Load(),
		Announced:            ts.Announced,
		TableFullDrops:       ts.DroppedFull,
		UnknownSocket:        ts.Unknown,
		Reconciles:           c.reconciles.Load(),
		ReconcileErrors:      c.reconcileErrors.Load(),
		SnapshotErrors:       c.snapshotErrors.Load(),
		LastSnapshotError:    c.lastSnapshotErr.Load(),
		ReconcileSeconds:     time.Duration(c.lastReconcile.Load()).Seconds(),
		ReconcileWaitSeconds: time.Duration(c.reconcileWait.Load()).Seconds(),
		PeriodicReconciles:   c.periodicReconciles.Load(),
		ReconcileAdded:       ts.ReconcileAdds,
		ReconcileRemoved:     ts.ReconcileGone,
		ReconcileCorrected:   ts.ReconcileFix,
		Refreshes:            c.refreshes.Load(),
		VerdictsRaised:       ts.Raised,
		Transitions:          map[string]uint64{},
		RetransmitEvents:     ts.Applied[KindRetransmit],
		KeepaliveFirings:     ts.Applied[KindKeepalive],
		KeepaliveProbes:      ts.KeepaliveProbes,
		Programs:             map[string]string{},
		ProgramIDs:           c.probes.ProgramIDs,
		ClosesReplayed:       c.replayed.Load(),
		CapsDropped:          c.capsDropped.Load(),
		ReadOnly:             c.cfg.ReadOnly,
		Actions:              c.actions.snapshot(),
		KernelHZ:             c.dec.HZ,
		CloseLastRef:         kstats[bpf.GhostconnStatIndexSTAT_CLOSE_LAST_REF],
	}
	if s.ProgramMisses, err = c.probes.RecursionMisses(); err != nil {
		return Status{}, err
	}
	s.Ready, s.NotReadyReason = c.Readiness()
	for k, idx := range lostIndex {
		s.EventsLost[k] = kstats[idx]
	}
	for st, n := range ts.Transitions {
		if n > 0 {
			s.Transitions[State(st).String()] = n
		}
	}
	for name, err := range c.probes.Attached {
		if err == nil {
			s.Programs[name] = "attached"
		} else {
			s.Programs[name] = err.Error()
		}
	}
	s.HookReads = "probe reads"
	if c.probes.DirectLoads() {
		s.HookReads = "direct loads"
	}
	s.Kernel, s.Features = kernelRelease(), kernelFeatures()
	return s, nil
}

// KernelFeature is one optional kernel feature in Status.
type KernelFeature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	// Needs says what the kernel must give; Without, only when it does
	// not, what the agent does instead, and Reason why the probe says so.
	Needs   string `json:"needs"`
	Without string `json:"without,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func kernelFeatures() []KernelFeature {
	fs := bpf.KernelFeatures()
	out := make([]KernelFeature, len(fs))
	for i, f := range fs {
		out[i] = KernelFeature{Name: f.Name, Available: f.Err == nil, Needs: f.Needs}
		if f.Err != nil {
			out[i].Without, out[i].Reason = f.Without, f.Err.Error()
		}
	}
	return out
}

// kernelRelease is uname's release and machine, as "6.1.0-28-amd64 (x86_64)".
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown: " + err.Error()
	}
	return unix.ByteSliceToString(u.Release[:]) + " (" + unix.ByteSliceToString(u.Machine[:]) + ")"
}

// monoOffset is wall-clock time minus CLOCK_MONOTONIC, the clock of
// bpf_ktime_get_ns.
func monoOffset() int64 {
	w, m := pairClocks()
	return w.UnixNano() - m
}

// processCPU is the CPU time the agent has used, user and system, all
// threads; 0 if the kernel does not say.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
