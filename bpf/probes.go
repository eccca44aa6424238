//go:build amd64 || arm64

// Package bpf loads and attaches ghostconn's eBPF programs and reads their
// iterators. The C source is ghostconn.bpf.c; the Go bindings are generated
// by bpf2go (see gen.go).
package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Program names, as they appear in ghostconn_program_attached{program}.
const (
	ProgStateChange   = "inet_sock_set_state"
	ProgRetransmit    = "tcp_retransmit_skb"
	ProgKeepalive     = "timer_expire_entry"
	ProgClose         = "sys_enter_close"
	ProgCloseRange    = "sys_enter_close_range"
	ProgDup2          = "sys_enter_dup2"
	ProgDup3          = "sys_enter_dup3"
	ProgSetsockopt    = "sys_enter_setsockopt"
	ProgExit          = "sched_process_exit"
	ProgConnect       = "sys_enter_connect"
	ProgConnectExit   = "sys_exit_connect"
	ProgAccept        = "sys_exit_accept"
	ProgAccept4       = "sys_exit_accept4"
	ProgIterTCP       = "iter_tcp"
	ProgIterFiles     = "iter_task_file"
	ProgIterDestroy   = "iter_destroy"
	ProgIterKeepalive = "iter_keepalive"
)

// program describes how one program attaches and whether the agent can run
// without it.
type program struct {
	name     string
	required bool
	// tracepoint group for classic tracepoints; empty for tp_btf and iterators.
	group string
	kind  string // "tp_btf", "tracepoint" or "iter"
	// loop says the program calls bpf_loop; noLoop names its variant
	// without the call, loaded where the kernel has no bpf_loop. A loop
	// program with no such variant stays detached there.
	loop   bool
	noLoop string
	// probeRead names its variant that reads kernel memory with probe-read
	// helpers, loaded where the kernel has no bpf_rdonly_cast (before 6.2);
	// the program itself uses direct loads.
	probeRead string
	// probeOnly says only the probe-read variants need the program: where
	// the direct-load ones run it is not loaded, and absent from Attached
	// (it is not missing: nothing needs it).
	probeOnly bool
}

var programs = []program{
	{name: ProgStateChange, required: true, kind: "tp_btf"},
	{name: ProgIterTCP, required: true, kind: "iter"},
	{name: ProgIterFiles, required: true, kind: "iter"},
	{name: ProgRetransmit, kind: "tp_btf"},
	{name: ProgKeepalive, kind: "tp_btf", probeRead: GhostconnProgTimerExpireEntryProbe},
	{name: ProgClose, group: "syscalls", kind: "tracepoint", loop: true, noLoop: GhostconnProgSysEnterCloseNoloop,
		probeRead: GhostconnProgSysEnterCloseProbe},
	{name: ProgCloseRange, group: "syscalls", kind: "tracepoint", loop: true, probeRead: GhostconnProgSysEnterCloseRangeProbe},
	{name: ProgDup2, group: "syscalls", kind: "tracepoint", loop: true, noLoop: GhostconnProgSysEnterDup2Noloop,
		probeRead: GhostconnProgSysEnterDup2Probe},
	{name: ProgDup3, group: "syscalls", kind: "tracepoint", loop: true, noLoop: GhostconnProgSysEnterDup3Noloop,
		probeRead: GhostconnProgSysEnterDup3Probe},
	{name: ProgSetsockopt, group: "syscalls", kind: "tracepoint", probeRead: GhostconnProgSysEnterSetsockoptProbe},
	{name: ProgExit, kind: "tp_btf", loop: true, probeRead: GhostconnProgSchedProcessExitProbe},
	// The owner hooks: who holds a new connection, at once. Without them
	// holders are known from the next holder walk.
	// sys_enter_connect keeps the fd for sys_exit_connect_probe; the
	// direct-load sys_exit_connect reads it from the task's registers.
	{name: ProgConnect, group: "syscalls", kind: "tracepoint", probeOnly: true},
	{name: ProgConnectExit, group: "syscalls", kind: "tracepoint", probeRead: GhostconnProgSysExitConnectProbe},
	{name: ProgAccept, group: "syscalls", kind: "tracepoint", probeRead: GhostconnProgSysExitAcceptProbe},
	{name: ProgAccept4, group: "syscalls", kind: "tracepoint", probeRead: GhostconnProgSysExitAccept4Probe},
}

// actionPrograms are the iterators that act on sockets: loaded on first
// use, not at start (two more program loads added 0.4 s to every start,
// for a command most agents never run). See Probes.actionIter.
var actionPrograms = map[string]program{
	// ghostconn kill's abort: bpf_sock_destroy (6.5+). Without it the
	// agent aborts through sock_diag.
	ProgIterDestroy: {name: ProgIterDestroy, kind: "iter"},
	// ghostconn keepalive: bpf_setsockopt from iter/tcp.
	ProgIterKeepalive: {name: ProgIterKeepalive, kind: "iter"},
}

// DirectLoads reports whether the hooks loaded are the direct-load
// variants (bpf_rdonly_cast) rather than the probe-read ones.
func (p *Probes) DirectLoads() bool { return p.cast }

// ProbeOnly reports whether only the probe-read variants need the named
// program, so that it is not loaded (nor in Attached) beside the
// direct-load ones.
func ProbeOnly(name string) bool {
	for _, p := range programs {
		if p.name == name {
			return p.probeOnly
		}
	}
	return false
}

// Required reports whether the agent cannot run without the program.
func Required(name string) bool {
	for _, p := range programs {
		if p.name == name {
			return p.required
		}
	}
	return false
}

// ProgramNames lists every program in attach order.
func ProgramNames() []string {
	names := make([]string, len(programs))
	for i, p := range programs {
		names[i] = p.name
	}
	return names
}

// Options tune the load.
type Options struct {
	// RingBufferBytes is the size of the event ring buffer, a power of two
	// and a multiple of the page size.
	RingBufferBytes int
	// Skip names programs not to load, for tests of degraded operation.
	Skip map[string]bool
	// IteratorsOnly loads just the two iterators, for a one-shot snapshot
	// without an agent.
	IteratorsOnly bool
	// PinDir is the bpffs directory where the closes map is pinned so that
	// ghost evidence survives a restart. Empty means no pinning.
	PinDir string
	// IgnoreOwnCloses makes the close hooks skip closes by this process
	// (self_tgid in the C), where its pid is known (see SelfTGID).
	IgnoreOwnCloses bool
	// ProbeReads loads the hooks' probe-read variants even where the
	// kernel has bpf_rdonly_cast, as a kernel before 6.2 runs them: for
	// tests of those variants, and to compare their cost.
	ProbeReads bool
}

// Probes holds the loaded maps and the attached programs.
type Probes struct {
	Events *ebpf.Map
	Stats  *ebpf.Map
	Closes *ebpf.Map

	// PinReset says that a pinned closes map from an earlier, incompatible
	// build was replaced, losing the evidence it held.
	PinReset bool
	// ProgramIDs maps each loaded program to its kernel id.
	ProgramIDs map[string]uint32

	// Attached maps each program name to nil when it is attached, or to the
	// reason it is not.
	Attached map[string]error

	// cast says the hooks loaded are the direct-load variants (see
	// Options.ProbeReads); the action iterators load as they did.
	cast bool
	// connectFds is the kernel's own scratch map of the connect hooks.
	connectFds *ebpf.Map
	// watch, deltas and sysDeltas: see SetWatching and DrainDeltas.
	watch, deltas, sysDeltas *ebpf.Map
	// actTargets and actMu: see Destroy.
	actTargets *ebpf.Map
	actMu      sync.Mutex
	// hostSockets and holders are how many records the last snapshot of
	// the host's sockets and of the holders read (see readRecords).
	hostSockets, holders atomic.Int64
	// drainKeys, drainState and drainSys are DrainDeltas' batch buffers.
	drainKeys  []uint64
	drainState []GhostconnStateDelta
	drainSys   []GhostconnSysDelta
	// percpu is DeltasCreated's buffer.
	percpu []uint64

	iterTCP       *link.Iter
	iterFiles     *link.Iter
	iterDestroy   *link.Iter
	iterKeepalive *link.Iter
	// spec and replacements load the action programs on first use;
	// actionErrs keeps why one could not be (under actMu).
	spec         *ebpf.CollectionSpec
	replacements map[string]*ebpf.Map
	actionErrs   map[string]error
	links        []link.Link
	progs        []*ebpf.Program
	// byName holds the loaded programs by name, for RecursionMisses;
	// byLink their links.
	byName map[string]*ebpf.Program
	byLink map[string]link.Link
}

// Load loads the maps, then the programs (see loadPrograms), and attaches
// each on its own, so that an optional program that the kernel refuses
// leaves the others working. It fails only when a required program cannot
// be attached.
func Load(opts Options) (*Probes, error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if err := removeMemlock(); err != nil {
		return nil, err
	}
	if err := checkFloor(); err != nil {
		return nil, err
	}
	if err := FeatureProbeError(); err != nil {
		return nil, fmt.Errorf("cannot tell which optional kernel features there are: %w", err)
	}
	spec, err := LoadGhostconn()
	if err != nil {
		return nil, fmt.Errorf("parse embedded bpf object: %w", err)
	}
	if opts.RingBufferBytes > 0 {
		spec.Maps["events"].MaxEntries = uint32(opts.RingBufferBytes)
	}
	syms, err := kallsyms("tcp_keepalive_timer", "sock_close")
	if err != nil {
		return nil, err
	}
	if err := spec.Variables["sock_close_fn"].Set(syms["sock_close"]); err != nil {
		return nil, fmt.Errorf("set sock_close_fn: %w", err)
	}
	if err := patchPlaceholder(spec, GhostconnPlaceholderPLACEHOLDER_KEEPALIVE_FN, syms["tcp_keepalive_timer"],
		GhostconnProgTimerExpireEntry, GhostconnProgTimerExpireEntryProbe); err != nil {
		return nil, err
	}
	var self uint32
	if opts.IgnoreOwnCloses {
		self = SelfTGID()
	}
	if err := setFeatureConsts(spec, self, syms["sock_close"], syms["tcp_keepalive_timer"]); err != nil {
		return nil, err
	}

	var maps GhostconnMaps
	var pinReset bool
	if opts.PinDir == "" || opts.IteratorsOnly {
		spec.Maps["closes"].Pinning = ebpf.PinNone
		err = spec.LoadAndAssign(&maps, nil)
	} else {
		if err := PreparePinDir(opts.PinDir); err != nil {
			return nil, err
		}
		mopts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}
		err = spec.LoadAndAssign(&maps, mopts)
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			// Pinned by a build with another layout: start afresh.
			if rmErr := os.Remove(filepath.Join(opts.PinDir, "closes")); rmErr != nil {
				return nil, fmt.Errorf("replace incompatible pinned map: %w", rmErr)
			}
			pinReset = true
			err = spec.LoadAndAssign(&maps, mopts)
		}
		if err == nil {
			// Pins are created 0600; make sure an older pin is too.
			err = os.Chmod(filepath.Join(opts.PinDir, "closes"), 0o600)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create bpf maps: %w", err)
	}
	p := &Probes{Events: maps.Events, Stats: maps.Stats, Closes: maps.Closes, connectFds: maps.ConnectFds,
		watch: maps.Watch, deltas: maps.Deltas, sysDeltas: maps.SysDeltas, actTargets: maps.ActTargets, PinReset: pinReset,
		Attached: map[string]error{}, ProgramIDs: map[string]uint32{}, byName: map[string]*ebpf.Program{}, byLink: map[string]link.Link{}}
	replacements := map[string]*ebpf.Map{"events": maps.Events, "stats": maps.Stats, "closes": maps.Closes,
		"connect_fds": maps.ConnectFds, "watch": maps.Watch, "deltas": maps.Deltas, "sys_deltas": maps.SysDeltas,
		"act_targets": maps.ActTargets}

	// Only the syscall hooks need tracefs, and they are optional: without
	// it they stay detached, with the reason.
	var tracefsErr error
	if !opts.IteratorsOnly {
		tracefsErr = EnsureTracefs()
	}
	p.spec, p.replacements, p.actionErrs = spec, replacements, map[string]error{}
	p.cast = HasFeature(FeatureCast) && !opts.ProbeReads
	var load []program
	for _, def := range programs {
		switch {
		case opts.IteratorsOnly && def.kind != "iter", def.probeOnly && p.cast:
			continue
		case opts.Skip[def.name]:
			p.Attached[def.name] = ErrSkipped
		case def.kind == "tracepoint" && tracefsErr != nil:
			p.Attached[def.name] = tracefsErr
		default:
			load = append(load, def)
		}
	}
	progs, loadErrs := loadPrograms(spec, load, replacements, p.cast)
	for _, def := range programs {
		if opts.IteratorsOnly && def.kind != "iter" || def.probeOnly && p.cast {
			continue
		}
		err, done := p.Attached[def.name]
		if !done {
			if err = loadErrs[def.name]; err == nil {
				err = p.attach(def, progs[def.name])
				delete(progs, def.name)
			}
			p.Attached[def.name] = err
		}
		if err != nil && def.required {
			for _, prog := range progs {
				prog.Close()
			}
			p.Close()
			return nil, fmt.Errorf("attach required program %s: %w", def.name, err)
		}
	}
	// sys_enter_connect without sys_exit_connect would only fill
	// connect_fds with entries nothing reads.
	if err, ok := p.Attached[ProgConnect]; ok && err == nil && p.Attached[ProgConnectExit] != nil {
		l := p.byLink[ProgConnect]
		p.links = slices.DeleteFunc(p.links, func(x link.Link) bool { return x == l })
		delete(p.byLink, ProgConnect)
		if err := l.Close(); err != nil {
			p.Close()
			return nil, fmt.Errorf("detach %s: %w", ProgConnect, err)
		}
		p.Attached[ProgConnect] = fmt.Errorf("detached because %s is not attached: %w", ProgConnectExit, p.Attached[ProgConnectExit])
	}
	return p, nil
}

// patchPlaceholder writes value over every 64-bit immediate load of
// placeholder in spec's programs: a setting the hot path compares with as
// an immediate, not as a load from .rodata. Each program in must has at
// least one, or the object is not the one this loader was written for.
func patchPlaceholder(spec *ebpf.CollectionSpec, placeholder GhostconnPlaceholder, value uint64, must ...string) error {
	for name, ps := range spec.Programs {
		n := 0
		for i := range ps.Instructions {
			ins := &ps.Instructions[i]
			if ins.OpCode.IsDWordLoad() && ins.Src == asm.R0 && uint64(ins.Constant) == uint64(placeholder) {
				ins.Constant = int64(value)
				n++
			}
		}
		if n == 0 && slices.Contains(must, name) {
			return fmt.Errorf("program %s has no placeholder %#x to set: the embedded object does not match the loader", name, uint64(placeholder))
		}
	}
	return nil
}

// noSyscall lists, per architecture, the hooked system calls it does not
// have: arm64's libc makes dup2 a dup3. Their programs are left out of
// programs there, not reported as detached.
var noSyscall = map[string][]string{"arm64": {"dup2"}}

func init() {
	programs = slices.DeleteFunc(programs, func(p program) bool {
		return p.group == "syscalls" && slices.Contains(noSyscall[runtime.GOARCH], strings.TrimPrefix(p.name, "sys_enter_"))
	})
}

// ErrSkipped marks a program left out on request.
var ErrSkipped = errors.New("skipped by configuration")

// programSpec picks def's program in spec: its variant without bpf_loop
// where the kernel has none, its probe-read variant where it has no
// bpf_rdonly_cast. It fails when def cannot run on this kernel.
func programSpec(spec *ebpf.CollectionSpec, def program, cast bool) (*ebpf.ProgramSpec, error) {
	objName := variant(def, HasFeature(FeatureLoop), cast)
	if objName == "" {
		return nil, fmt.Errorf("this kernel has no %s", featureNeeds(FeatureLoop))
	}
	progSpec, ok := spec.Programs[objName]
	if !ok {
		return nil, fmt.Errorf("program %s missing from object", objName)
	}
	return progSpec, nil
}

// variant names the object program that runs def on a kernel with or
// without bpf_loop and bpf_rdonly_cast, or "" when none can.
func variant(def program, loop, cast bool) string {
	switch {
	case def.loop && !loop:
		// The variants without bpf_loop read with probe reads too.
		return def.noLoop
	case def.probeRead != "" && !cast:
		return def.probeRead
	}
	return def.name
}

// loadPrograms loads the programs of defs, keyed by their names, or says
// why each one that did not load could not. All load in one collection
// first, so that the object's BTF and its .rodata are loaded into the
// kernel once: one collection per program cost 30 to 60 ms each natively
// (a 25-instruction program as much as the others), about a second per
// start, and ten to twenty times that under TCG. Only if the kernel
// refuses one does each load on its own, so that the refused ones are
// named and the others still attach.
func loadPrograms(spec *ebpf.CollectionSpec, defs []program, maps map[string]*ebpf.Map, cast bool) (map[string]*ebpf.Program, map[string]error) {
	progs, errs := map[string]*ebpf.Program{}, map[string]error{}
	specs := map[string]*ebpf.ProgramSpec{}
	for _, def := range defs {
		ps, err := programSpec(spec, def, cast)
		if err != nil {
			errs[def.name] = err
			continue
		}
		specs[def.name] = ps
	}
	collection := func(specs map[string]*ebpf.ProgramSpec) (*ebpf.Collection, error) {
		return ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
			Maps:      spec.Maps,
			Programs:  specs,
			Variables: spec.Variables,
			Types:     spec.Types,
			ByteOrder: spec.ByteOrder,
		}, ebpf.CollectionOptions{MapReplacements: maps})
	}
	take := func(coll *ebpf.Collection) {
		for name := range coll.Programs {
			progs[name] = coll.DetachProgram(name)
		}
		coll.Close()
	}
	if coll, err := collection(specs); err == nil {
		take(coll)
		return progs, errs
	}
	for name, ps := range specs {
		coll, err := collection(map[string]*ebpf.ProgramSpec{name: ps})
		if err != nil {
			errs[name] = fmt.Errorf("load %s: %w", name, explainVerifier(err))
			continue
		}
		take(coll)
	}
	return progs, errs
}

// loadAttach loads def's program on its own and attaches it: the action
// iterators, loaded on first use.
func (p *Probes) loadAttach(def program) error {
	progs, errs := loadPrograms(p.spec, []program{def}, p.replacements, p.cast)
	if err := errs[def.name]; err != nil {
		return err
	}
	return p.attach(def, progs[def.name])
}

// attach attaches def's loaded program, which p owns from then on, even
// when attaching fails.
func (p *Probes) attach(def program, prog *ebpf.Program) error {
	p.progs = append(p.progs, prog)
	p.byName[def.name] = prog
	if info, err := prog.Info(); err == nil {
		if id, ok := info.ID(); ok {
			p.ProgramIDs[def.name] = uint32(id)
		}
	}

	switch def.kind {
	case "tp_btf":
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attach tp_btf/%s: %w", def.name, err)
		}
		p.links = append(p.links, l)
		p.byLink[def.name] = l
	case "tracepoint":
		l, err := link.Tracepoint(def.group, def.name, prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint/%s/%s: %w", def.group, def.name, err)
		}
		p.links = append(p.links, l)
		p.byLink[def.name] = l
	case "iter":
		it, err := link.AttachIter(link.IterOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attach iter %s: %w", def.name, err)
		}
		p.links = append(p.links, it)
		switch def.name {
		case ProgIterTCP:
			p.iterTCP = it
		case ProgIterFiles:
			p.iterFiles = it
		case ProgIterDestroy:
			p.iterDestroy = it
		case ProgIterKeepalive:
			p.iterKeepalive = it
		}
	}
	return nil
}

func explainVerifier(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		// The last lines of the log say why; the whole log is too long for
		// an error message.
		return fmt.Errorf("%w (verifier: %s)", err, strings.Join(lastLines(ve.Log, 5), " | "))
	}
	return err
}

func lastLines(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// Close detaches every program and releases the maps.
func (p *Probes) Close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	for _, prog := range p.progs {
		errs = append(errs, prog.Close())
	}
	errs = append(errs, p.Events.Close(), p.Stats.Close(), p.Closes.Close(), p.connectFds.Close(),
		p.watch.Close(), p.deltas.Close(), p.sysDeltas.Close(), p.actTargets.Close())
	return errors.Join(errs...)
}

// RecursionMisses returns, for each loaded tracing program, how often the
// kernel skipped it because it was already running on that CPU (an
// interrupt, and the softirqs after it, nested in it): each skip is an
// event lost. The kernel counts them from 5.12; older kernels report 0.
func (p *Probes) RecursionMisses() (map[string]uint64, error) {
	out := make(map[string]uint64, len(p.byName))
	for name, prog := range p.byName {
		if strings.HasPrefix(name, "iter_") { // iterators run on request, never nested
			continue
		}
		st, err := prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("read the stats of %s: %w", name, err)
		}
		out[name] = st.RecursionMisses
	}
	return out, nil
}

// SetWatching tells the state and setsockopt hooks whether a watch client
// wants every state change and socket option as its own record (on), or
// only the socket's CLOSE, with the rest folded into the deltas map (off).
func (p *Probes) SetWatching(on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := p.watch.Update(uint32(GhostconnWatchFlagWATCH_STATES), v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set the watch flag: %w", err)
	}
	return nil
}

// drainBatch is how many deltas DrainDeltas takes per syscall.
const drainBatch = 256

// DrainDeltas takes what the kernel folded into the deltas maps since the
// last drain, deleting it from the maps, and calls state for each entry of
// the state hook's (deltas), then sys for each of the syscall hooks'
// (sys_deltas), so a socket in both gets its state before its owner. The
// callbacks must not keep the delta past their call.
func (p *Probes) DrainDeltas(state func(cookie uint64, d *GhostconnStateDelta), sys func(cookie uint64, d *GhostconnSysDelta)) (int, error) {
	if p.drainKeys == nil {
		p.drainKeys = make([]uint64, drainBatch)
		p.drainState = make([]GhostconnStateDelta, drainBatch)
		p.drainSys = make([]GhostconnSysDelta, drainBatch)
	}
	n1, err := drainMap(p.deltas, "deltas", p.drainKeys, p.drainState, state)
	if err != nil {
		return n1, err
	}
	n2, err := drainMap(p.sysDeltas, "sys_deltas", p.drainKeys, p.drainSys, sys)
	return n1 + n2, err
}

// drainMap takes every entry of m, in batches of len(keys), calling fn for
// each.
func drainMap[V any](m *ebpf.Map, name string, keys []uint64, vals []V, fn func(uint64, *V)) (int, error) {
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], &vals[i])
		}
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("drain the %s map: %w", name, err)
		}
	}
}

// CloseRecords returns the close evidence kept in the kernel: for each
// socket cookie, up to one record per GhostconnCloseSlot.
func (p *Probes) CloseRecords() (map[GhostconnCloseKey]GhostconnCloseRec, error) {
	out := map[GhostconnCloseKey]GhostconnCloseRec{}
	var k GhostconnCloseKey
	var v GhostconnCloseRec
	it := p.Closes.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read closes map: %w", err)
	}
	return out, nil
}

// ForgetCloses deletes the close evidence (every slot) of every socket for
// which live returns false. It returns how many records it deleted.
func (p *Probes) ForgetCloses(live func(cookie uint64) bool) (int, error) {
	var gone []GhostconnCloseKey
	var k GhostconnCloseKey
	var v GhostconnCloseRec
	it := p.Closes.Iterate()
	for it.Next(&k, &v) {
		if !live(k.Cookie) {
			gone = append(gone, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read closes map: %w", err)
	}
	for _, c := range gone {
		if err := p.Closes.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("delete from closes map: %w", err)
		}
	}
	return len(gone), nil
}

// ReadStats returns the kernel-side counters summed over CPUs, indexed by
// GhostconnStatIndex.
func (p *Probes) ReadStats() ([]uint64, error) {
	out := make([]uint64, GhostconnStatIndexSTAT_MAX)
	for i := range out {
		var percpu []uint64
		if err := p.Stats.Lookup(uint32(i), &percpu); err != nil {
			return nil, fmt.Errorf("read stats[%d]: %w", i, err)
		}
		for _, v := range percpu {
			out[i] += v
		}
	}
	return out, nil
}

// DeltasCreated returns how many entries the hooks have created in the
// deltas maps: when it has not moved since a drain began, the map holds
// nothing that drain did not take.
func (p *Probes) DeltasCreated() (uint64, error) {
	if err := p.Stats.Lookup(uint32(GhostconnStatIndexSTAT_DELTA_NEW), &p.percpu); err != nil {
		return 0, fmt.Errorf("read stats[%d]: %w", GhostconnStatIndexSTAT_DELTA_NEW, err)
	}
	var n uint64
	for _, v := range p.percpu {
		n += v
	}
	return n, nil
}

// Sockets runs iter/tcp inside the network namespace at nsPath (for example
// /proc/1234/ns/net) and returns its records. An empty nsPath means the
// agent's own namespace.
func (p *Probes) Sockets(nsPath string) ([]GhostconnSockRec, error) {
	r, err := openIn(p.iterTCP, nsPath)
	if err != nil {
		return nil, err
	}
	if nsPath != "" {
		return readRecords[GhostconnSockRec](r, nil)
	}
	return readRecords[GhostconnSockRec](r, &p.hostSockets)
}

// socketChunk is how many records EachSocket hands over at a time.
const socketChunk = 4096

// EachSocket is Sockets handed over in pieces as the iterator writes them:
// fn gets up to socketChunk records at a time, in a buffer the next call
// reuses, so a snapshot of 100k sockets never holds 20 MB of records at
// once. It returns how many records there were; after an error, fn has had
// the whole chunks read before it.
func (p *Probes) EachSocket(nsPath string, fn func([]GhostconnSockRec)) (int, error) {
	r, err := openIn(p.iterTCP, nsPath)
	if err != nil {
		return 0, err
	}
	n, err := eachRecord(r, socketChunk, fn)
	if err == nil && nsPath == "" {
		p.hostSockets.Store(int64(n))
	}
	return n, err
}

// SocketID returns the id the programs give the TCP socket at fd, a socket
// of the caller's network namespace: its cookie, or where ids are not
// cookies (see IDsAreCookies) the id iter/tcp reports for its inode.
func (p *Probes) SocketID(fd int) (uint64, error) {
	if IDsAreCookies() {
		c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			return 0, fmt.Errorf("read the cookie of fd %d: %w", fd, err)
		}
		return c, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat fd %d: %w", fd, err)
	}
	recs, err := p.Sockets("")
	if err != nil {
		return 0, err
	}
	for _, r := range recs {
		if r.Ino == st.Ino {
			return r.Cookie, nil
		}
	}
	return 0, fmt.Errorf("fd %d (inode %d) is not a TCP socket of this network namespace", fd, st.Ino)
}

// Holders runs iter/task_file and returns every (process, fd) on the host
// that refers to a TCP socket.
func (p *Probes) Holders() ([]GhostconnHolderRec, error) {
	r, err := p.iterFiles.Open()
	if err != nil {
		return nil, fmt.Errorf("open iter/task_file: %w", err)
	}
	return readRecords[GhostconnHolderRec](r, &p.holders)
}

// openIn opens an iterator from a thread that has joined the network
// namespace at nsPath: iter/tcp walks the namespace of its opener.
func openIn(it *link.Iter, nsPath string) (io.ReadCloser, error) {
	if nsPath == "" {
		r, err := it.Open()
		if err != nil {
			return nil, fmt.Errorf("open iter/tcp: %w", err)
		}
		return r, nil
	}
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open own netns: %w", err)
	}
	defer self.Close()

	runtime.LockOSThread()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	r, openErr := it.Open()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime then discards it rather than
		// reuse a thread stuck in a foreign namespace.
		if r != nil {
			r.Close()
		}
		return nil, fmt.Errorf("return from netns %s: %w", nsPath, err)
	}
	runtime.UnlockOSThread()
	if openErr != nil {
		return nil, fmt.Errorf("open iter/tcp in %s: %w", nsPath, openErr)
	}
	return r, nil
}

// readRecords reads fixed-size records written by an iterator. The record
// types are generated by bpf2go with the kernel's layout, so the iterator's
// output is read straight into the records' memory, without per-field
// decoding or a copy. hint, when not nil, holds how many records the last
// read of this iterator returned: the next read starts with room for a
// few more, so a snapshot of a big table allocates once (reading into a
// growing byte buffer and copying it out allocated three times the
// output).
func readRecords[T any](r io.ReadCloser, hint *atomic.Int64) ([]T, error) {
	defer r.Close()
	var zero T
	size := int(unsafe.Sizeof(zero))
	n := 1024
	if hint != nil {
		n = max(n, int(hint.Load())+int(hint.Load())/8)
	}
	out := make([]T, 0, n)
	// A record split across reads waits at the start of the free
	// capacity, which is where it belongs: in out[len(out)]. It never
	// spans a grow, which happens only with no free record left.
	partial := 0 // bytes of the next record read so far
	for {
		if len(out) == cap(out) {
			out = slices.Grow(out, cap(out))
		}
		free := recordBytes(out[len(out):cap(out)], size)
		m, err := r.Read(free[partial:])
		partial += m
		out = out[:len(out)+partial/size]
		partial %= size
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read iterator: %w", err)
		}
	}
	if partial != 0 {
		return nil, fmt.Errorf("iterator output ends %d bytes into a %d-byte record", partial, size)
	}
	if hint != nil {
		hint.Store(int64(len(out)))
	}
	return out, nil
}

// eachRecord reads r's records of type T to the end, handing them to fn
// n at a time (fewer at the end) in one buffer, and closes r.
func eachRecord[T any](r io.ReadCloser, n int, fn func([]T)) (int, error) {
	defer r.Close()
	var zero T
	size := int(unsafe.Sizeof(zero))
	buf := make([]T, n)
	raw := recordBytes(buf, size)
	filled, total := 0, 0
	for {
		m, err := r.Read(raw[filled:])
		filled += m
		eof := errors.Is(err, io.EOF)
		if err != nil && !eof {
			return total, fmt.Errorf("read iterator: %w", err)
		}
		if filled == len(raw) || eof {
			k := filled / size
			if k > 0 {
				fn(buf[:k])
				total += k
			}
			rest := filled - k*size
			if eof {
				if rest != 0 {
					return total, fmt.Errorf("iterator output ends %d bytes into a %d-byte record", rest, size)
				}
				return total, nil
			}
			filled = 0 // a full buffer holds whole records only
		}
	}
}

// recordBytes is the memory of recs, records of size bytes, as bytes.
func recordBytes[T any](recs []T, size int) []byte {
	if len(recs) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&recs[0])), len(recs)*size)
}

// kallsyms returns the addresses of the named symbols from /proc/kallsyms.
func kallsyms(names ...string) (map[string]uint64, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		// "ffffffff8202b5f0 t tcp_keepalive_timer"
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || !want[line[sp+1:]] {
			continue
		}
		addr, err := strconv.ParseUint(line[:strings.IndexByte(line, ' ')], 16, 64)
		if err != nil {
			continue
		}
		out[line[sp+1:]] = addr
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	for _, n := range names {
		if out[n] == 0 {
			return nil, fmt.Errorf("kernel symbol %s not found or hidden in /proc/kallsyms (is kernel.kptr_restrict=2, or is the agent missing CAP_SYSLOG?)", n)
		}
	}
	return out, nil
}
