// Package collector turns what ghostconn's eBPF programs see into a live
// table of TCP connections. Kernel events and snapshot observations are both
// expressed as Events and go through Table.Apply, so the table has a single
// input path.
package collector

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/ghostconn/ghostconn/bpf"
)

// Kind says what an Event reports.
type Kind uint8

// Event kinds. The first six mirror the kernel's enum event_type; Observed
// is the synthetic event a snapshot record becomes, Delta the one an entry
// drained from the kernel's deltas map becomes.
const (
	KindState      = Kind(bpf.GhostconnEventTypeEVENT_STATE)
	KindRetransmit = Kind(bpf.GhostconnEventTypeEVENT_RETRANSMIT)
	KindKeepalive  = Kind(bpf.GhostconnEventTypeEVENT_KEEPALIVE)
	KindClose      = Kind(bpf.GhostconnEventTypeEVENT_CLOSE)
	KindSockopt    = Kind(bpf.GhostconnEventTypeEVENT_SOCKOPT)
	KindEnd        = Kind(bpf.GhostconnEventTypeEVENT_END)
	KindObserved   = Kind(100)
	KindDelta      = Kind(101)
	KindAction     = Kind(102)
)

var kindNames = map[Kind]string{
	KindState: "state", KindRetransmit: "retransmit", KindKeepalive: "keepalive",
	KindClose: "close", KindSockopt: "sockopt", KindEnd: "end", KindObserved: "observed",
	KindDelta: "delta", KindAction: "action",
}

// ringKinds are the kinds a ring-buffer record may have.
var ringKinds = map[Kind]bool{
	KindState: true, KindRetransmit: true, KindKeepalive: true, KindClose: true, KindSockopt: true, KindEnd: true,
}

func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Task names the process that caused an event.
type Task struct {
	PID  uint32 `json:"pid"`
	PPID uint32 `json:"ppid,omitempty"`
	Comm string `json:"comm"`
}

// SockSettings are a socket's own keepalive and give-up settings. A zero
// duration or count means the socket uses its network namespace's default.
type SockSettings struct {
	Keepalive     bool
	KeepIdle      time.Duration
	KeepInterval  time.Duration
	KeepCount     int
	UserTimeout   time.Duration
	HaveKeepalive bool // the fields above were read from the socket
}

// TCPCounters are retransmission and probe counters read from the socket.
type TCPCounters struct {
	Retransmits   uint32 // consecutive RTO retransmissions (icsk_retransmits)
	TotalRetrans  uint32
	Backoff       uint8
	ProbesOut     uint8
	RTO           time.Duration
	HaveCounters  bool
	KeepaliveIdle time.Duration // keepalive events: time since data was last received
}

// Close describes an fd close that left other references to the socket.
type Close struct {
	FD   int32
	Refs uint32 // references before the close, the closed one included
	Op   string // close, close_range, dup2, dup3
	// WriteSeq and CopiedSeq are the socket's sequence numbers at the
	// close: bytes the application had written and read.
	WriteSeq, CopiedSeq uint32
}

// Sockopt is a setsockopt call on a TCP socket.
type Sockopt struct {
	Level, Name, Value int32
}

// Owner is a new fd of a socket in a process: the fd its connect or accept
// returned (or, for connect, was called with).
type Owner struct {
	Task *Task
	FD   int32
	Op   string // "connect" or "accept"
}

// DeltaParts says which parts of a Delta hold news.
type DeltaParts uint8

// The parts of a delta, as the kernel's enum delta_part numbers them.
const (
	DeltaState   = DeltaParts(bpf.GhostconnDeltaPartDELTA_STATE)
	DeltaOwner   = DeltaParts(bpf.GhostconnDeltaPartDELTA_OWNER)
	DeltaSockopt = DeltaParts(bpf.GhostconnDeltaPartDELTA_SOCKOPT)
	DeltaTCP     = DeltaParts(bpf.GhostconnDeltaPartDELTA_TCP)
)

// Delta is what the kernel folded into one socket's entry of its deltas map
// since the agent last drained it: the latest state change (and when it
// became ESTABLISHED, if that came within the entry), the process whose
// connect or accept returned it, and the options it set. Times are
// CLOCK_MONOTONIC nanoseconds. The event's tuple, Settings and Counters
// (with DeltaTCP) come from the entry too.
type Delta struct {
	Parts     DeltaParts
	State     State // the socket's state when the kernel last wrote the entry
	StateMono int64 // when it entered State (DeltaState)
	EstMono   int64 // when it became ESTABLISHED, 0 when not within this entry
	EstFrom   State // SYN_SENT (connected) or SYN_RECV (accepted), with EstMono
	FirstMono int64 // the first change the entry holds
	Owner     Owner // DeltaOwner
	OwnerMono int64
	// Sockopts[:NSockopts] are the options set (DeltaSockopt), the latest
	// value of each, the last by SockoptBy at SockoptMono.
	Sockopts    [5]Sockopt
	NSockopts   int
	SockoptBy   uint32
	SockoptMono int64
}

// Event is one input to the Table.
type Event struct {
	Kind Kind
	Time time.Time
	// Mono is the kernel's CLOCK_MONOTONIC reading of the event in
	// nanoseconds, or zero when it has none. The table places such an
	// event on its own timeline from it, replacing Time, so an event
	// decoded before a wall-clock step and applied after it (or decoded
	// with an offset from before the step) is not off by the step.
	Mono     int64
	Cookie   uint64
	Inode    uint64
	Netns    uint32
	Family   Family
	Local    netip.AddrPort
	Remote   netip.AddrPort
	OldState State
	State    State
	Task     *Task
	Settings SockSettings
	Counters TCPCounters
	Close    Close
	Sockopt  Sockopt
	// Delta is set on KindDelta events, and on KindEnd events whose
	// socket the agent had not drained yet (Parts nonzero).
	Delta Delta
	// Observed is set on KindObserved events.
	Observed *Observation
	// Action is set on KindAction events: what ghostconn did to the
	// connection at a user's request.
	Action *Action
}

// Family is an address family.
type Family uint8

// Address families as the kernel numbers them.
const (
	FamilyIPv4 Family = 2
	FamilyIPv6 Family = 10
)

func (f Family) String() string {
	switch f {
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Decoder turns raw ring-buffer records into Events. It converts kernel
// monotonic timestamps to wall-clock time and jiffies to durations.
type Decoder struct {
	// HZ is the kernel's CONFIG_HZ.
	HZ int
	// MonoOffset is wall-clock minus CLOCK_MONOTONIC, in nanoseconds.
	MonoOffset int64

	// lastComm and lastCommStr remember the last task name decoded, so a
	// process that opens connection after connection costs no string
	// for its name each time.
	lastComm    [16]int8
	lastCommStr string
	// lastTask is the last task decoded: a process that opens connection
	// after connection shares one Task (the table never changes a Task).
	lastTask *Task
	// delta and sysDelta are where an end record's deltas are copied to
	// be decoded: a local escaped to the heap, one allocation per record.
	delta    bpf.GhostconnStateDelta
	sysDelta bpf.GhostconnSysDelta
}

// ErrDecode marks a record that could not be decoded.
var ErrDecode = errors.New("decode event")

// ErrBadDelta marks an end record whose CLOSE decoded but one of whose
// deltas did not: the event is the CLOSE with the delta that did decode,
// still to be applied (the socket is gone either way), and the bad one is
// counted as a decode error.
var ErrBadDelta = errors.New("end record with an undecodable delta")

// EventSize is the size of a ring-buffer record; EndSize that of an end
// record, which starts as every record does.
const (
	EventSize = int(unsafe.Sizeof(bpf.GhostconnEvent{}))
	EndSize   = int(unsafe.Sizeof(bpf.GhostconnEndEvent{}))
)

var ownerOps = map[uint8]string{
	uint8(bpf.GhostconnOwnerOpOWNER_OP_CONNECT): "connect",
	uint8(bpf.GhostconnOwnerOpOWNER_OP_ACCEPT):  "accept",
}

var closeOps = map[uint8]string{
	uint8(bpf.GhostconnCloseOpCLOSE_OP_CLOSE):       "close",
	uint8(bpf.GhostconnCloseOpCLOSE_OP_CLOSE_RANGE): "close_range",
	uint8(bpf.GhostconnCloseOpCLOSE_OP_DUP2):        "dup2",
	uint8(bpf.GhostconnCloseOpCLOSE_OP_DUP3):        "dup3",
	uint8(bpf.GhostconnCloseOpCLOSE_OP_EXIT):        "exit",
}

// decodeClose checks and builds the close facts of a kernel record (a live
// event or a pinned close record). The kernel reports only closes that
// leave other references behind.
func decodeClose(op uint8, fd int32, refs, writeSeq, copiedSeq uint32) (Close, error) {
	name, ok := closeOps[op]
	if !ok {
		return Close{}, fmt.Errorf("%w: unknown close op %d", ErrDecode, op)
	}
	if refs < 2 {
		return Close{}, fmt.Errorf("%w: close with %d references", ErrDecode, refs)
	}
	return Close{FD: fd, Refs: refs, Op: name, WriteSeq: writeSeq, CopiedSeq: copiedSeq}, nil
}

// Decode fills ev from one raw record. It returns an error wrapping
// ErrDecode for a record that is truncated or holds impossible values; it
// never panics on bad input.
func (d *Decoder) Decode(raw []byte, ev *Event) error {
	if len(raw) < EventSize {
		return fmt.Errorf("%w: record of %d bytes, want %d", ErrDecode, len(raw), EventSize)
	}
	var k bpf.GhostconnEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&k)), EventSize), raw)

	kind := Kind(k.Type)
	if !ringKinds[kind] {
		return fmt.Errorf("%w: unknown event type %d", ErrDecode, k.Type)
	}
	if k.State > uint8(maxState) || k.OldState > uint8(maxState) {
		return fmt.Errorf("%w: impossible tcp state %d -> %d", ErrDecode, k.OldState, k.State)
	}
	*ev = Event{
		Kind:     kind,
		Time:     time.Unix(0, int64(k.TsNs)+d.MonoOffset),
		Mono:     int64(k.TsNs),
		Cookie:   k.Cookie,
		Inode:    k.Ino,
		OldState: State(k.OldState),
		State:    State(k.State),
	}
	if err := setTuple(ev, &k.Tuple); err != nil {
		return err
	}
	if k.Flags&flagTask != 0 {
		ev.Task = d.task(k.Pid, k.Ppid, &k.Comm)
	}
	switch kind {
	case KindState, KindRetransmit, KindKeepalive:
		d.setTCP(ev, &k.Tcp, kind != KindState || k.State == uint8(StateEstablished) || k.State == uint8(StateCloseWait))
		ev.Counters.KeepaliveIdle = d.Jiffies(k.IdleJiffies)
	case KindClose:
		if ev.Task == nil {
			return fmt.Errorf("%w: close event without task", ErrDecode)
		}
		c, err := decodeClose(k.Op, k.Fd, k.Refs, k.WriteSeq, k.CopiedSeq)
		if err != nil {
			return err
		}
		ev.Close = c
	case KindSockopt:
		if ev.Task == nil {
			return fmt.Errorf("%w: sockopt event without task", ErrDecode)
		}
		ev.Close.FD = k.Fd
		ev.Sockopt = Sockopt{Level: k.Level, Name: k.Optname, Value: k.Optval}
	case KindEnd:
		if len(raw) < EndSize {
			return fmt.Errorf("%w: end record of %d bytes, want %d", ErrDecode, len(raw), EndSize)
		}
		if k.State != uint8(StateClose) {
			return fmt.Errorf("%w: end record in state %d", ErrDecode, k.State)
		}
		dl, sys := &d.delta, &d.sysDelta
		copy(unsafe.Slice((*byte)(unsafe.Pointer(dl)), unsafe.Sizeof(*dl)), raw[unsafe.Offsetof(bpf.GhostconnEndEvent{}.D):])
		copy(unsafe.Slice((*byte)(unsafe.Pointer(sys)), unsafe.Sizeof(*sys)), raw[unsafe.Offsetof(bpf.GhostconnEndEvent{}.S):])
		if dl.Parts == 0 && sys.Parts == 0 {
			return nil
		}
		// A delta's tuple is the socket's before it was unhashed on its
		// way to CLOSE.
		// Each side is checked on its own: a bad one is dropped (and
		// counted), the other kept.
		end := *ev
		if dl.Parts != 0 {
			if err := d.decodeState(dl, ev); err != nil {
				*ev = end
				if sys.Parts == 0 || d.decodeSys(sys, ev, true) != nil {
					*ev = end
				}
				return fmt.Errorf("%w: %w", ErrBadDelta, err)
			}
		}
		if sys.Parts != 0 {
			kept := *ev
			if err := d.decodeSys(sys, ev, dl.Parts == 0); err != nil {
				*ev = kept
				return fmt.Errorf("%w: %w", ErrBadDelta, err)
			}
		}
	}
	return nil
}

// flagTask says that pid and comm name the task that caused the record.
const flagTask = uint8(bpf.GhostconnEventFlagEVENT_FLAG_TASK)

// setTuple fills the event's namespace, family and addresses.
func setTuple(ev *Event, t *bpf.GhostconnTuple) error {
	fam := Family(t.Family)
	if fam != FamilyIPv4 && fam != FamilyIPv6 {
		return fmt.Errorf("%w: unknown address family %d", ErrDecode, t.Family)
	}
	ev.Netns = t.Netns
	ev.Family = fam
	ev.Local = addrPort(fam, t.Saddr, t.Sport)
	ev.Remote = addrPort(fam, t.Daddr, t.Dport)
	return nil
}

// setTCP fills the event's settings and counters from what the kernel read
// of the socket; have says it read them.
func (d *Decoder) setTCP(ev *Event, p *bpf.GhostconnTcpPart, have bool) {
	ev.Settings = SockSettings{
		Keepalive:     p.Keepalive != 0,
		KeepIdle:      d.Jiffies(p.KaTime),
		KeepInterval:  d.Jiffies(p.KaIntvl),
		KeepCount:     int(p.KaProbes),
		UserTimeout:   time.Duration(p.UserTimeoutMs) * time.Millisecond,
		HaveKeepalive: have,
	}
	ev.Counters = TCPCounters{
		Retransmits:  p.Retransmits,
		TotalRetrans: p.TotalRetrans,
		Backoff:      p.Backoff,
		ProbesOut:    p.ProbesOut,
		RTO:          d.Jiffies(p.RtoJiffies),
		HaveCounters: have,
	}
}

// DecodeStateDelta fills ev with the KindDelta event of one entry drained
// from the kernel's deltas map (the state hook's). It returns an error
// wrapping ErrDecode for an entry that holds impossible values.
func (d *Decoder) DecodeStateDelta(cookie uint64, dl *bpf.GhostconnStateDelta, ev *Event) error {
	if cookie == 0 {
		return fmt.Errorf("%w: delta without a cookie", ErrDecode)
	}
	d.deltaEvent(cookie, max(dl.StateNs, dl.FirstNs), ev)
	return d.decodeState(dl, ev)
}

// DecodeSysDelta fills ev with the KindDelta event of one entry drained
// from the kernel's sys_deltas map (the syscall hooks').
func (d *Decoder) DecodeSysDelta(cookie uint64, sl *bpf.GhostconnSysDelta, ev *Event) error {
	if cookie == 0 {
		return fmt.Errorf("%w: delta without a cookie", ErrDecode)
	}
	d.deltaEvent(cookie, max(sl.OwnerNs, sl.OptNs, sl.FirstNs), ev)
	return d.decodeSys(sl, ev, true)
}

// deltaEvent starts ev as a delta placed at its latest change.
func (d *Decoder) deltaEvent(cookie, latest uint64, ev *Event) {
	*ev = Event{
		Kind:   KindDelta,
		Time:   time.Unix(0, int64(latest)+d.MonoOffset),
		Mono:   int64(latest),
		Cookie: cookie,
	}
}

// decodeState sets ev.Delta, and the event's tuple and counters, from the
// state hook's delta.
func (d *Decoder) decodeState(dl *bpf.GhostconnStateDelta, ev *Event) error {
	parts := DeltaParts(dl.Parts)
	if parts&^(DeltaState|DeltaTCP) != 0 || parts&DeltaState == 0 {
		return fmt.Errorf("%w: state delta with parts %#x", ErrDecode, dl.Parts)
	}
	if dl.State > uint8(maxState) || dl.EstFrom > uint8(maxState) {
		return fmt.Errorf("%w: delta in impossible tcp state %d", ErrDecode, dl.State)
	}
	if err := setTuple(ev, &dl.Tuple); err != nil {
		return err
	}
	ev.Delta = Delta{Parts: parts, State: State(dl.State), FirstMono: int64(dl.FirstNs), StateMono: int64(dl.StateNs)}
	if dl.EstNs != 0 {
		ev.Delta.EstMono, ev.Delta.EstFrom = int64(dl.EstNs), State(dl.EstFrom)
	}
	if parts&DeltaTCP != 0 {
		d.setTCP(ev, &dl.Tcp, true)
	}
	return nil
}

// decodeSys adds to ev the syscall hooks' delta: the owner and the
// options. alone says ev holds no state delta of the socket: then the
// delta's tuple and the state the hook read announce it.
func (d *Decoder) decodeSys(sl *bpf.GhostconnSysDelta, ev *Event, alone bool) error {
	parts := DeltaParts(sl.Parts)
	if parts&^(DeltaOwner|DeltaSockopt) != 0 || parts == 0 {
		return fmt.Errorf("%w: syscall delta with parts %#x", ErrDecode, sl.Parts)
	}
	if sl.State > uint8(maxState) {
		return fmt.Errorf("%w: delta in impossible tcp state %d", ErrDecode, sl.State)
	}
	dt := &ev.Delta
	if alone {
		if err := setTuple(ev, &sl.Tuple); err != nil {
			return err
		}
		*dt = Delta{Parts: parts, State: State(sl.State), FirstMono: int64(sl.FirstNs)}
	} else {
		dt.Parts |= parts
		if sl.FirstNs != 0 && (dt.FirstMono == 0 || int64(sl.FirstNs) < dt.FirstMono) {
			dt.FirstMono = int64(sl.FirstNs)
		}
	}
	if sl.Ino != 0 {
		ev.Inode = sl.Ino
	}
	if parts&DeltaOwner != 0 {
		op, ok := ownerOps[sl.OwnerOp]
		if !ok {
			return fmt.Errorf("%w: unknown owner op %d", ErrDecode, sl.OwnerOp)
		}
		if sl.OwnerFd < 0 {
			return fmt.Errorf("%w: owner with fd %d", ErrDecode, sl.OwnerFd)
		}
		dt.Owner = Owner{Task: d.task(sl.OwnerPid, sl.OwnerPpid, &sl.OwnerComm), FD: sl.OwnerFd, Op: op}
		dt.OwnerMono = int64(sl.OwnerNs)
	}
	if parts&DeltaSockopt != 0 {
		dt.SockoptBy, dt.SockoptMono = sl.OptPid, int64(sl.OptNs)
		dt.NSockopts = 0
		for _, b := range sockoptBits {
			if sl.OptMask&uint32(b.bit) != 0 {
				dt.Sockopts[dt.NSockopts] = Sockopt{Level: b.level, Name: b.name, Value: b.value(sl)}
				dt.NSockopts++
			}
		}
	}
	return nil
}

// sockoptBits maps the bits of a delta's option mask to the option each
// stands for.
var sockoptBits = []struct {
	bit         bpf.GhostconnSockoptBit
	level, name int32
	value       func(d *bpf.GhostconnSysDelta) int32
}{
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPALIVE, solSocket, soKeepalive, func(d *bpf.GhostconnSysDelta) int32 { return d.OptKeepalive }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPIDLE, solTCP, tcpKeepIdle, func(d *bpf.GhostconnSysDelta) int32 { return d.OptKeepIdle }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPINTVL, solTCP, tcpKeepIntvl, func(d *bpf.GhostconnSysDelta) int32 { return d.OptKeepIntvl }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPCNT, solTCP, tcpKeepCnt, func(d *bpf.GhostconnSysDelta) int32 { return d.OptKeepCnt }},
	{bpf.GhostconnSockoptBitSOCKOPT_USER_TIMEOUT, solTCP, tcpUserTimeout, func(d *bpf.GhostconnSysDelta) int32 { return d.OptUserTimeoutMs }},
}

// task returns the Task of (pid, ppid, comm), the same one as last time
// when it is the same task.
func (d *Decoder) task(pid, ppid uint32, comm *[16]int8) *Task {
	name := d.comm(comm)
	if t := d.lastTask; t != nil && t.PID == pid && t.PPID == ppid && t.Comm == name {
		return t
	}
	d.lastTask = &Task{PID: pid, PPID: ppid, Comm: name}
	return d.lastTask
}

// comm returns the task name b as a string, the same string as last time
// when it is the same name.
func (d *Decoder) comm(b *[16]int8) string {
	if *b != d.lastComm || d.lastCommStr == "" {
		d.lastComm, d.lastCommStr = *b, cString(b[:])
	}
	return d.lastCommStr
}

// Jiffies converts a kernel jiffies count to a duration.
func (d *Decoder) Jiffies(j uint32) time.Duration {
	if d.HZ <= 0 {
		return 0
	}
	return time.Duration(j) * time.Second / time.Duration(d.HZ)
}

func addrPort(fam Family, b [16]uint8, port uint16) netip.AddrPort {
	var a netip.Addr
	if fam == FamilyIPv4 {
		a = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		a = netip.AddrFrom16(b)
	}
	return netip.AddrPortFrom(a, port)
}

func cString(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	out := make([]byte, n)
	for i := range out {
		out[i] = byte(b[i])
	}
	return string(out)
}
