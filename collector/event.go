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
// is the synthetic event a snapshot record becomes.
const (
	KindState      = Kind(bpf.GhostconnEventTypeEVENT_STATE)
	KindRetransmit = Kind(bpf.GhostconnEventTypeEVENT_RETRANSMIT)
	KindKeepalive  = Kind(bpf.GhostconnEventTypeEVENT_KEEPALIVE)
	KindClose      = Kind(bpf.GhostconnEventTypeEVENT_CLOSE)
	KindSockopt    = Kind(bpf.GhostconnEventTypeEVENT_SOCKOPT)
	KindOwner      = Kind(bpf.GhostconnEventTypeEVENT_OWNER)
	KindObserved   = Kind(100)
)

var kindNames = map[Kind]string{
	KindState: "state", KindRetransmit: "retransmit", KindKeepalive: "keepalive",
	KindClose: "close", KindSockopt: "sockopt", KindOwner: "owner", KindObserved: "observed",
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

// Owner is a new fd of a socket in the process of the event's Task: the fd
// its connect or accept returned (or, for connect, was called with).
type Owner struct {
	FD int32
	Op string // "connect" or "accept"
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
	Owner    Owner
	// Observed is set on KindObserved events.
	Observed *Observation
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
}

// ErrDecode marks a record that could not be decoded.
var ErrDecode = errors.New("decode event")

// EventSize is the size of a ring-buffer record.
const EventSize = int(unsafe.Sizeof(bpf.GhostconnEvent{}))

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
	if kind < KindState || kind > KindOwner {
		return fmt.Errorf("%w: unknown event type %d", ErrDecode, k.Type)
	}
	fam := Family(k.Family)
	if fam != FamilyIPv4 && fam != FamilyIPv6 {
		return fmt.Errorf("%w: unknown address family %d", ErrDecode, k.Family)
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
		Netns:    k.Netns,
		Family:   fam,
		Local:    addrPort(fam, k.Saddr, k.Sport),
		Remote:   addrPort(fam, k.Daddr, k.Dport),
		OldState: State(k.OldState),
		State:    State(k.State),
	}
	if k.Flags&2 != 0 { // EVENT_FLAG_TASK
		ev.Task = d.task(k.Pid, k.Ppid, &k.Comm)
	}
	switch kind {
	case KindState, KindRetransmit, KindKeepalive:
		ev.Settings = SockSettings{
			Keepalive:     k.Flags&1 != 0, // EVENT_FLAG_KEEPALIVE
			KeepIdle:      d.Jiffies(k.KaTime),
			KeepInterval:  d.Jiffies(k.KaIntvl),
			KeepCount:     int(k.KaProbes),
			UserTimeout:   time.Duration(k.UserTimeoutMs) * time.Millisecond,
			HaveKeepalive: kind != KindState || k.State == uint8(StateEstablished) || k.State == uint8(StateCloseWait),
		}
		ev.Counters = TCPCounters{
			Retransmits:   k.Retransmits,
			TotalRetrans:  k.TotalRetrans,
			Backoff:       k.Backoff,
			ProbesOut:     k.ProbesOut,
			RTO:           d.Jiffies(k.RtoJiffies),
			HaveCounters:  ev.Settings.HaveKeepalive,
			KeepaliveIdle: d.Jiffies(k.IdleJiffies),
		}
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
	case KindOwner:
		if ev.Task == nil {
			return fmt.Errorf("%w: owner event without task", ErrDecode)
		}
		op, ok := ownerOps[k.Op]
		if !ok {
			return fmt.Errorf("%w: unknown owner op %d", ErrDecode, k.Op)
		}
		if k.Fd < 0 || k.Cookie == 0 {
			return fmt.Errorf("%w: owner event with fd %d, cookie %d", ErrDecode, k.Fd, k.Cookie)
		}
		ev.Owner = Owner{FD: k.Fd, Op: op}
	}
	return nil
}

// sockoptBits maps the bits of a folded sockopt record to the option each
// stands for.
var sockoptBits = []struct {
	bit         bpf.GhostconnSockoptBit
	level, name int32
	value       func(f *bpf.GhostconnSockoptFold) int32
}{
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPALIVE, solSocket, soKeepalive, func(f *bpf.GhostconnSockoptFold) int32 { return f.Keepalive }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPIDLE, solTCP, tcpKeepIdle, func(f *bpf.GhostconnSockoptFold) int32 { return f.KeepIdle }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPINTVL, solTCP, tcpKeepIntvl, func(f *bpf.GhostconnSockoptFold) int32 { return f.KeepIntvl }},
	{bpf.GhostconnSockoptBitSOCKOPT_KEEPCNT, solTCP, tcpKeepCnt, func(f *bpf.GhostconnSockoptFold) int32 { return f.KeepCnt }},
	{bpf.GhostconnSockoptBitSOCKOPT_USER_TIMEOUT, solTCP, tcpUserTimeout, func(f *bpf.GhostconnSockoptFold) int32 { return f.UserTimeoutMs }},
}

// foldedSockopts appends to evs one sockopt event for each option the
// kernel folded for the socket cookie: the same events a watched
// setsockopt would have sent, at the time of the socket's latest call.
func foldedSockopts(evs []Event, cookie uint64, f *bpf.GhostconnSockoptFold) []Event {
	if cookie == 0 {
		return evs
	}
	for _, b := range sockoptBits {
		if f.Mask&uint32(b.bit) == 0 {
			continue
		}
		evs = append(evs, Event{
			Kind:    KindSockopt,
			Mono:    int64(f.TsNs), // the table puts it on its timeline
			Cookie:  cookie,
			Task:    &Task{PID: f.Pid},
			Sockopt: Sockopt{Level: b.level, Name: b.name, Value: b.value(f)},
		})
	}
	return evs
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
