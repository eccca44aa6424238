package collector_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"golang.org/x/sys/unix"
)

// evRaw returns the bytes of k as the ring buffer would deliver them.
func evRaw(k *bpf.GhostconnEvent) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(k)), collector.EventSize)
	return append([]byte(nil), b...)
}

func evComm(s string) [16]int8 {
	var c [16]int8
	for i := 0; i < len(s) && i < len(c); i++ {
		c[i] = int8(s[i])
	}
	return c
}

func evAddr16(s string) [16]uint8 {
	a := netip.MustParseAddr(s)
	var b [16]uint8
	if a.Is4() {
		a4 := a.As4()
		copy(b[:], a4[:])
		return b
	}
	return a.As16()
}

// evBase is a well-formed IPv4 state event: SYN_SENT -> ESTABLISHED.
func evBase() bpf.GhostconnEvent {
	return bpf.GhostconnEvent{
		TsNs:     5_000_000_000,
		Cookie:   0xc0ffee,
		Ino:      4242,
		Type:     uint8(bpf.GhostconnEventTypeEVENT_STATE),
		OldState: uint8(collector.StateSynSent),
		State:    uint8(collector.StateEstablished),
		Tuple: bpf.GhostconnTuple{Netns: 4026531840, Family: 2, Sport: 8080, Dport: 443,
			Saddr: evAddr16("127.0.0.1"), Daddr: evAddr16("10.1.2.3")},
	}
}

func evMustDecode(t *testing.T, d *collector.Decoder, k *bpf.GhostconnEvent) collector.Event {
	t.Helper()
	var ev collector.Event
	if err := d.Decode(evRaw(k), &ev); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	return ev
}

// TestEventSizeMatchesKernelBTF compares the record size the decoder
// expects, and the generated Go struct's layout, with struct event as the
// compiled kernel object's BTF records it. A field added to the C struct
// without regenerating the Go bindings fails here, without root.
func TestEventSizeMatchesKernelBTF(t *testing.T) {
	spec, err := bpf.LoadGhostconn()
	if err != nil {
		t.Fatalf("load the compiled object's spec: %v", err)
	}
	var s *btf.Struct
	if err := spec.Types.TypeByName("event", &s); err != nil {
		t.Fatalf("struct event in the object's BTF: %v", err)
	}
	if got, want := collector.EventSize, int(s.Size); got != want {
		t.Fatalf("EventSize = %d, BTF struct event is %d bytes", got, want)
	}
	if got := unsafe.Sizeof(bpf.GhostconnEvent{}); got != uintptr(s.Size) {
		t.Fatalf("bpf.GhostconnEvent is %d bytes, BTF struct event is %d", got, s.Size)
	}
	// Every C member sits at the same offset in the Go struct (bpf2go
	// names ts_ns TsNs).
	goType := reflect.TypeFor[bpf.GhostconnEvent]()
	for _, m := range s.Members {
		name := ""
		for _, part := range strings.Split(m.Name, "_") {
			if part != "" {
				name += strings.ToUpper(part[:1]) + part[1:]
			}
		}
		f, ok := goType.FieldByName(name)
		if !ok {
			t.Errorf("struct event member %s has no Go field %s", m.Name, name)
			continue
		}
		if got, want := f.Offset, uintptr(m.Offset.Bytes()); got != want {
			t.Errorf("member %s: Go field %s at offset %d, BTF at %d", m.Name, name, got, want)
		}
	}
}

func TestDecodeStateIPv4(t *testing.T) {
	d := &collector.Decoder{HZ: 250, MonoOffset: 1_000_000_000_000} // +1000s
	k := evBase()
	ev := evMustDecode(t, d, &k)

	if ev.Kind != collector.KindState {
		t.Errorf("Kind = %v, want state", ev.Kind)
	}
	if want := time.Unix(1005, 0); !ev.Time.Equal(want) {
		t.Errorf("Time = %v, want %v", ev.Time, want)
	}
	if ev.Cookie != 0xc0ffee || ev.Inode != 4242 || ev.Netns != 4026531840 {
		t.Errorf("ids = cookie %#x inode %d netns %d", ev.Cookie, ev.Inode, ev.Netns)
	}
	if ev.Family != collector.FamilyIPv4 {
		t.Errorf("Family = %v, want ipv4", ev.Family)
	}
	if got := ev.Local.String(); got != "127.0.0.1:8080" {
		t.Errorf("Local = %q, want 127.0.0.1:8080", got)
	}
	if got := ev.Remote.String(); got != "10.1.2.3:443" {
		t.Errorf("Remote = %q, want 10.1.2.3:443", got)
	}
	if !ev.Local.Addr().Is4() {
		t.Errorf("Local addr %v is not a plain IPv4 address", ev.Local.Addr())
	}
	if ev.OldState != collector.StateSynSent || ev.State != collector.StateEstablished {
		t.Errorf("states = %v -> %v, want SYN_SENT -> ESTABLISHED", ev.OldState, ev.State)
	}
	if ev.Task != nil {
		t.Errorf("Task = %+v, want nil without the task flag", ev.Task)
	}
	if ev.Observed != nil {
		t.Errorf("Observed = %+v, want nil", ev.Observed)
	}
}

func TestDecodeStateIPv6(t *testing.T) {
	d := &collector.Decoder{HZ: 250}
	k := evBase()
	k.Tuple.Family = 10
	k.Tuple.Saddr = evAddr16("::1")
	k.Tuple.Sport = 80
	k.Tuple.Daddr = evAddr16("2001:db8::7")
	k.Tuple.Dport = 51000
	ev := evMustDecode(t, d, &k)
	if ev.Family != collector.FamilyIPv6 {
		t.Errorf("Family = %v, want ipv6", ev.Family)
	}
	if got := ev.Local.String(); got != "[::1]:80" {
		t.Errorf("Local = %q, want [::1]:80", got)
	}
	if got := ev.Remote.String(); got != "[2001:db8::7]:51000" {
		t.Errorf("Remote = %q, want [2001:db8::7]:51000", got)
	}
}

func TestDecodeTimestamp(t *testing.T) {
	tests := []struct {
		name   string
		ts     uint64
		offset int64
		want   time.Time
	}{
		{"zero offset", 1_500_000_000, 0, time.Unix(1, 500_000_000)},
		{"positive offset", 7, 1_700_000_000_000_000_000, time.Unix(1_700_000_000, 7)},
		{"negative offset", 3_000_000_000, -1_000_000_000, time.Unix(2, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &collector.Decoder{HZ: 100, MonoOffset: tt.offset}
			k := evBase()
			k.TsNs = tt.ts
			ev := evMustDecode(t, d, &k)
			if !ev.Time.Equal(tt.want) {
				t.Fatalf("Time = %v, want %v", ev.Time, tt.want)
			}
		})
	}
}

func TestDecodeTask(t *testing.T) {
	tests := []struct {
		name  string
		flags uint8
		comm  string
		want  *collector.Task
	}{
		{"no flags", 0, "curl", nil},
		{"keepalive flag only", 1, "curl", nil},
		{"task flag", 2, "curl", &collector.Task{PID: 42, PPID: 7, Comm: "curl"}},
		{"task and keepalive", 3, "nginx", &collector.Task{PID: 42, PPID: 7, Comm: "nginx"}},
		{"unterminated comm", 2, "0123456789abcdef", &collector.Task{PID: 42, PPID: 7, Comm: "0123456789abcdef"}},
		{"empty comm", 2, "", &collector.Task{PID: 42, PPID: 7, Comm: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := evBase()
			k.Flags = tt.flags
			k.Pid, k.Ppid = 42, 7
			k.Comm = evComm(tt.comm)
			ev := evMustDecode(t, &collector.Decoder{HZ: 250}, &k)
			switch {
			case tt.want == nil && ev.Task != nil:
				t.Fatalf("Task = %+v, want nil", *ev.Task)
			case tt.want != nil && ev.Task == nil:
				t.Fatalf("Task = nil, want %+v", *tt.want)
			case tt.want != nil && *ev.Task != *tt.want:
				t.Fatalf("Task = %+v, want %+v", *ev.Task, *tt.want)
			}
		})
	}
}

func TestDecodeKeepaliveSettings(t *testing.T) {
	d := &collector.Decoder{HZ: 250}
	k := evBase()
	k.Tcp.Keepalive = 1
	k.Tcp.KaTime = 250 * 7200
	k.Tcp.KaIntvl = 250 * 75
	k.Tcp.KaProbes = 9
	k.Tcp.UserTimeoutMs = 5000
	k.Tcp.RtoJiffies = 50 // 200ms
	k.IdleJiffies = 125   // 500ms
	k.Tcp.Retransmits = 3
	k.Tcp.TotalRetrans = 11
	k.Tcp.Backoff = 2
	k.Tcp.ProbesOut = 1
	ev := evMustDecode(t, d, &k)

	wantS := collector.SockSettings{
		Keepalive:     true,
		KeepIdle:      2 * time.Hour,
		KeepInterval:  75 * time.Second,
		KeepCount:     9,
		UserTimeout:   5 * time.Second,
		HaveKeepalive: true,
	}
	if ev.Settings != wantS {
		t.Errorf("Settings = %+v, want %+v", ev.Settings, wantS)
	}
	wantC := collector.TCPCounters{
		Retransmits:   3,
		TotalRetrans:  11,
		Backoff:       2,
		ProbesOut:     1,
		RTO:           200 * time.Millisecond,
		HaveCounters:  true,
		KeepaliveIdle: 500 * time.Millisecond,
	}
	if ev.Counters != wantC {
		t.Errorf("Counters = %+v, want %+v", ev.Counters, wantC)
	}
}

// HaveKeepalive (and HaveCounters) are only claimed for state events into
// states where the kernel fields are meaningful, but always for retransmit
// and keepalive events.
func TestDecodeHaveKeepalive(t *testing.T) {
	tests := []struct {
		typ   bpf.GhostconnEventType
		state collector.State
		want  bool
	}{
		{bpf.GhostconnEventTypeEVENT_STATE, collector.StateEstablished, true},
		{bpf.GhostconnEventTypeEVENT_STATE, collector.StateCloseWait, true},
		{bpf.GhostconnEventTypeEVENT_STATE, collector.StateSynSent, false},
		{bpf.GhostconnEventTypeEVENT_STATE, collector.StateFinWait1, false},
		{bpf.GhostconnEventTypeEVENT_STATE, collector.StateClose, false},
		{bpf.GhostconnEventTypeEVENT_RETRANSMIT, collector.StateSynSent, true},
		{bpf.GhostconnEventTypeEVENT_KEEPALIVE, collector.StateEstablished, true},
	}
	for _, tt := range tests {
		t.Run(collector.Kind(tt.typ).String()+"/"+tt.state.String(), func(t *testing.T) {
			k := evBase()
			k.Type = uint8(tt.typ)
			k.State = uint8(tt.state)
			k.Tcp.KaTime = 250
			ev := evMustDecode(t, &collector.Decoder{HZ: 250}, &k)
			if ev.Settings.HaveKeepalive != tt.want || ev.Counters.HaveCounters != tt.want {
				t.Fatalf("HaveKeepalive = %v, HaveCounters = %v, want %v", ev.Settings.HaveKeepalive, ev.Counters.HaveCounters, tt.want)
			}
			if ev.Settings.KeepIdle != time.Second {
				t.Fatalf("KeepIdle = %v, want 1s", ev.Settings.KeepIdle)
			}
		})
	}
}

func TestDecoderJiffies(t *testing.T) {
	tests := []struct {
		hz   int
		j    uint32
		want time.Duration
	}{
		{250, 250, time.Second},
		{250, 1, 4 * time.Millisecond},
		{1000, 1, time.Millisecond},
		{100, 30, 300 * time.Millisecond},
		{250, 0, 0},
		{0, 250, 0},
		{-1, 250, 0},
		{250, ^uint32(0), time.Duration(^uint32(0)) * 4 * time.Millisecond},
	}
	for _, tt := range tests {
		d := collector.Decoder{HZ: tt.hz}
		if got := d.Jiffies(tt.j); got != tt.want {
			t.Errorf("HZ=%d Jiffies(%d) = %v, want %v", tt.hz, tt.j, got, tt.want)
		}
	}
}

func TestDecodeClose(t *testing.T) {
	tests := []struct {
		op   bpf.GhostconnCloseOp
		want string
	}{
		{bpf.GhostconnCloseOpCLOSE_OP_CLOSE, "close"},
		{bpf.GhostconnCloseOpCLOSE_OP_CLOSE_RANGE, "close_range"},
		{bpf.GhostconnCloseOpCLOSE_OP_DUP2, "dup2"},
		{bpf.GhostconnCloseOpCLOSE_OP_DUP3, "dup3"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			k := evBase()
			k.Type = uint8(bpf.GhostconnEventTypeEVENT_CLOSE)
			k.Op = uint8(tt.op)
			k.Fd = 7
			k.Refs = 3
			k.Flags = 2
			k.Pid, k.Ppid, k.Comm = 100, 1, evComm("sshd")
			ev := evMustDecode(t, &collector.Decoder{HZ: 250}, &k)
			if ev.Kind != collector.KindClose {
				t.Errorf("Kind = %v, want close", ev.Kind)
			}
			want := collector.Close{FD: 7, Refs: 3, Op: tt.want}
			if ev.Close != want {
				t.Errorf("Close = %+v, want %+v", ev.Close, want)
			}
			if ev.Task == nil || ev.Task.PID != 100 || ev.Task.Comm != "sshd" {
				t.Errorf("Task = %+v, want pid 100 sshd", ev.Task)
			}
			if ev.Settings != (collector.SockSettings{}) {
				t.Errorf("Settings = %+v, want zero for a close event", ev.Settings)
			}
		})
	}
}

func TestDecodeSockopt(t *testing.T) {
	k := evBase()
	k.Type = uint8(bpf.GhostconnEventTypeEVENT_SOCKOPT)
	k.Level = 6   // SOL_TCP
	k.Optname = 4 // TCP_KEEPIDLE
	k.Optval = 30
	k.Fd = 5
	k.Flags = 2
	k.Pid, k.Comm = 77, evComm("app")
	k.Tcp.KaTime = 999 // ignored for sockopt events
	ev := evMustDecode(t, &collector.Decoder{HZ: 250}, &k)
	if ev.Kind != collector.KindSockopt {
		t.Errorf("Kind = %v, want sockopt", ev.Kind)
	}
	if want := (collector.Sockopt{Level: 6, Name: 4, Value: 30}); ev.Sockopt != want {
		t.Errorf("Sockopt = %+v, want %+v", ev.Sockopt, want)
	}
	if ev.Close.FD != 5 {
		t.Errorf("Close.FD = %d, want 5", ev.Close.FD)
	}
	if ev.Close.Op != "" || ev.Close.Refs != 0 {
		t.Errorf("Close = %+v, want only FD set", ev.Close)
	}
	if ev.Settings != (collector.SockSettings{}) {
		t.Errorf("Settings = %+v, want zero for a sockopt event", ev.Settings)
	}
	if ev.Task == nil || ev.Task.PID != 77 || ev.Task.Comm != "app" {
		t.Errorf("Task = %+v, want pid 77 app", ev.Task)
	}
}

// evDeltas are the deltas the kernel folds for a short client connection:
// it became ESTABLISHED inside connect, connect returned fd 9 to python3,
// the application set keepalive idle and count, and the peer closed. The
// state hook's goes to deltas, the syscall hooks' to sys_deltas.
func evDeltas() (bpf.GhostconnStateDelta, bpf.GhostconnSysDelta) {
	tuple := bpf.GhostconnTuple{Netns: 4026531840, Family: 10, Sport: 40000, Dport: 443,
		Saddr: evAddr16("::1"), Daddr: evAddr16("::1")}
	return bpf.GhostconnStateDelta{
			FirstNs: 7_000_000_000, EstNs: 7_000_000_000, StateNs: 7_300_000_000, Tuple: tuple,
			Tcp:   bpf.GhostconnTcpPart{Keepalive: 1, KaTime: 250 * 30, Retransmits: 0, TotalRetrans: 2, RtoJiffies: 50},
			Parts: uint32(bpf.GhostconnDeltaPartDELTA_STATE | bpf.GhostconnDeltaPartDELTA_TCP),
			State: uint8(collector.StateCloseWait), EstFrom: uint8(collector.StateSynSent),
		}, bpf.GhostconnSysDelta{
			FirstNs: 7_000_100_000, OwnerNs: 7_000_100_000, OptNs: 7_000_200_000, Ino: 5151, Tuple: tuple,
			Parts:   uint32(bpf.GhostconnDeltaPartDELTA_OWNER | bpf.GhostconnDeltaPartDELTA_SOCKOPT),
			State:   uint8(collector.StateEstablished),
			OwnerOp: uint8(bpf.GhostconnOwnerOpOWNER_OP_CONNECT), OwnerPid: 321, OwnerPpid: 1, OwnerFd: 9,
			OwnerComm:   evComm("python3"),
			OptPid:      321,
			OptMask:     uint32(bpf.GhostconnSockoptBitSOCKOPT_KEEPIDLE | bpf.GhostconnSockoptBitSOCKOPT_KEEPCNT),
			OptKeepIdle: 30, OptKeepCnt: 4, OptKeepIntvl: 99, // the interval was not set: ignored
		}
}

// checkState compares a decoded state delta with evDeltas'.
func checkState(t *testing.T, ev collector.Event) {
	t.Helper()
	d := ev.Delta
	if d.State != collector.StateCloseWait || d.StateMono != 7_300_000_000 ||
		d.EstMono != 7_000_000_000 || d.EstFrom != collector.StateSynSent || d.FirstMono != 7_000_000_000 {
		t.Errorf("delta states: %+v", d)
	}
	if !ev.Settings.HaveKeepalive || !ev.Settings.Keepalive || ev.Settings.KeepIdle != 30*time.Second ||
		!ev.Counters.HaveCounters || ev.Counters.TotalRetrans != 2 || ev.Counters.RTO != 200*time.Millisecond {
		t.Errorf("delta settings %+v counters %+v", ev.Settings, ev.Counters)
	}
	checkTuple(t, ev)
}

// checkTuple compares a decoded delta's tuple with evDeltas'.
func checkTuple(t *testing.T, ev collector.Event) {
	t.Helper()
	if ev.Family != collector.FamilyIPv6 || ev.Local != netip.MustParseAddrPort("[::1]:40000") ||
		ev.Remote != netip.MustParseAddrPort("[::1]:443") || ev.Netns != 4026531840 {
		t.Errorf("delta tuple: %v %v -> %v netns %d", ev.Family, ev.Local, ev.Remote, ev.Netns)
	}
}

// checkSys compares a decoded syscall delta with evDeltas'.
func checkSys(t *testing.T, ev collector.Event) {
	t.Helper()
	d := ev.Delta
	if d.Owner.Task == nil || *d.Owner.Task != (collector.Task{PID: 321, PPID: 1, Comm: "python3"}) ||
		d.Owner.FD != 9 || d.Owner.Op != "connect" || d.OwnerMono != 7_000_100_000 {
		t.Errorf("delta owner: %+v task %+v", d.Owner, d.Owner.Task)
	}
	want := []collector.Sockopt{{Level: unix.SOL_TCP, Name: unix.TCP_KEEPIDLE, Value: 30}, {Level: unix.SOL_TCP, Name: unix.TCP_KEEPCNT, Value: 4}}
	if got := d.Sockopts[:d.NSockopts]; !reflect.DeepEqual(got, want) || d.SockoptBy != 321 || d.SockoptMono != 7_000_200_000 {
		t.Errorf("delta options %+v by %d at %d, want %+v by 321", got, d.SockoptBy, d.SockoptMono, want)
	}
	if ev.Inode != 5151 {
		t.Errorf("delta inode %d, want 5151", ev.Inode)
	}
}

// Deltas drained from the kernel's maps become KindDelta events with
// everything the kernel folded, placed at their latest change; impossible
// values are decode errors.
func TestDecodeDelta(t *testing.T) {
	d := &collector.Decoder{HZ: 250, MonoOffset: 1_000_000_000}
	st, sys := evDeltas()
	var ev collector.Event
	if err := d.DecodeStateDelta(0xbeef, &st, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != collector.KindDelta || ev.Kind.String() != "delta" || ev.Cookie != 0xbeef || ev.Mono != 7_300_000_000 ||
		ev.Delta.Parts != collector.DeltaState|collector.DeltaTCP {
		t.Errorf("kind %v cookie %#x mono %d parts %v", ev.Kind, ev.Cookie, ev.Mono, ev.Delta.Parts)
	}
	checkState(t, ev)
	if err := d.DecodeSysDelta(0xbeef, &sys, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Mono != 7_000_200_000 || ev.Delta.Parts != collector.DeltaOwner|collector.DeltaSockopt ||
		ev.Delta.State != collector.StateEstablished || ev.Delta.FirstMono != 7_000_100_000 {
		t.Errorf("syscall delta: mono %d %+v", ev.Mono, ev.Delta)
	}
	checkSys(t, ev)
	checkTuple(t, ev)

	for name, mod := range map[string]func(k *bpf.GhostconnStateDelta, cookie *uint64){
		"no cookie":    func(_ *bpf.GhostconnStateDelta, c *uint64) { *c = 0 },
		"no parts":     func(k *bpf.GhostconnStateDelta, _ *uint64) { k.Parts = 0 },
		"owner part":   func(k *bpf.GhostconnStateDelta, _ *uint64) { k.Parts |= uint32(collector.DeltaOwner) },
		"tcp alone":    func(k *bpf.GhostconnStateDelta, _ *uint64) { k.Parts = uint32(collector.DeltaTCP) },
		"state 13":     func(k *bpf.GhostconnStateDelta, _ *uint64) { k.State = 13 },
		"family 0":     func(k *bpf.GhostconnStateDelta, _ *uint64) { k.Tuple.Family = 0 },
		"est from 200": func(k *bpf.GhostconnStateDelta, _ *uint64) { k.EstFrom = 200 },
	} {
		k, _ := evDeltas()
		cookie := uint64(0xbeef)
		mod(&k, &cookie)
		if err := d.DecodeStateDelta(cookie, &k, &ev); !errors.Is(err, collector.ErrDecode) {
			t.Errorf("state delta, %s: %v, want ErrDecode", name, err)
		}
	}
	for name, mod := range map[string]func(k *bpf.GhostconnSysDelta, cookie *uint64){
		"no cookie":    func(_ *bpf.GhostconnSysDelta, c *uint64) { *c = 0 },
		"no parts":     func(k *bpf.GhostconnSysDelta, _ *uint64) { k.Parts = 0 },
		"unknown part": func(k *bpf.GhostconnSysDelta, _ *uint64) { k.Parts |= 64 },
		"state part":   func(k *bpf.GhostconnSysDelta, _ *uint64) { k.Parts |= uint32(collector.DeltaState) },
		"state 13":     func(k *bpf.GhostconnSysDelta, _ *uint64) { k.State = 13 },
		"family 0":     func(k *bpf.GhostconnSysDelta, _ *uint64) { k.Tuple.Family = 0 },
		"owner op 0":   func(k *bpf.GhostconnSysDelta, _ *uint64) { k.OwnerOp = 0 },
		"owner fd -1":  func(k *bpf.GhostconnSysDelta, _ *uint64) { k.OwnerFd = -1 },
	} {
		_, k := evDeltas()
		cookie := uint64(0xbeef)
		mod(&k, &cookie)
		if err := d.DecodeSysDelta(cookie, &k, &ev); !errors.Is(err, collector.ErrDecode) {
			t.Errorf("syscall delta, %s: %v, want ErrDecode", name, err)
		}
	}
}

// endRecord is an end record with e's head and the two deltas.
func endRecord(e bpf.GhostconnEvent, st bpf.GhostconnStateDelta, sys bpf.GhostconnSysDelta) bpf.GhostconnEndEvent {
	return bpf.GhostconnEndEvent{TsNs: e.TsNs, Cookie: e.Cookie, Ino: e.Ino, Pid: e.Pid, Ppid: e.Ppid, Fd: e.Fd,
		Type: e.Type, OldState: e.OldState, State: e.State, Flags: e.Flags, Op: e.Op, Tuple: e.Tuple, Comm: e.Comm, D: st, S: sys}
}

// An end record starts as every record does: the reader finds its type,
// tuple and task where it finds them in any record.
func TestEndRecordHead(t *testing.T) {
	var e bpf.GhostconnEvent
	var r bpf.GhostconnEndEvent
	for _, f := range []struct {
		name      string
		end, head uintptr
	}{
		{"type", unsafe.Offsetof(r.Type), unsafe.Offsetof(e.Type)},
		{"state", unsafe.Offsetof(r.State), unsafe.Offsetof(e.State)},
		{"tuple", unsafe.Offsetof(r.Tuple), unsafe.Offsetof(e.Tuple)},
		{"comm", unsafe.Offsetof(r.Comm), unsafe.Offsetof(e.Comm)},
	} {
		if f.end != f.head {
			t.Errorf("%s at %d in an end record, %d in a record", f.name, f.end, f.head)
		}
	}
	if collector.EndSize <= collector.EventSize {
		t.Errorf("end record of %d bytes, a record of %d: the reader copies the head of every record", collector.EndSize, collector.EventSize)
	}
}

// An end record carries the socket's CLOSE and, when the agent had not
// drained them, its deltas (the state hook's, the syscall hooks' or both);
// without one it is the CLOSE alone.
func TestDecodeEnd(t *testing.T) {
	d := &collector.Decoder{HZ: 250, MonoOffset: 1_000_000_000}
	head := evBase()
	head.Type = uint8(bpf.GhostconnEventTypeEVENT_END)
	head.OldState, head.State = uint8(collector.StateLastAck), uint8(collector.StateClose)
	head.Tuple.Sport = 0 // unhashed on its way to CLOSE
	st, sys := evDeltas()
	r := endRecord(head, st, sys)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&r)), collector.EndSize)
	var ev collector.Event
	if err := d.Decode(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != collector.KindEnd || ev.State != collector.StateClose || ev.OldState != collector.StateLastAck || ev.Mono != 5_000_000_000 {
		t.Errorf("kind %v %v -> %v mono %d", ev.Kind, ev.OldState, ev.State, ev.Mono)
	}
	if ev.Delta.Parts != collector.DeltaState|collector.DeltaTCP|collector.DeltaOwner|collector.DeltaSockopt {
		t.Errorf("end with both deltas: parts %v", ev.Delta.Parts)
	}
	checkState(t, ev) // the delta's tuple, with its local port
	checkSys(t, ev)

	// The drain took the state hook's delta: the syscall hooks' alone
	// carries the owner, the options, and the state and tuple they read.
	r.D = bpf.GhostconnStateDelta{}
	if err := d.Decode(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if dl := ev.Delta; dl.Parts != collector.DeltaOwner|collector.DeltaSockopt || dl.State != collector.StateEstablished ||
		dl.FirstMono != 7_000_100_000 {
		t.Errorf("end with the syscall hooks' delta alone: %+v", dl)
	}
	checkSys(t, ev)
	checkTuple(t, ev)

	r.D, r.S = bpf.GhostconnStateDelta{}, bpf.GhostconnSysDelta{}
	if err := d.Decode(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Delta.Parts != 0 || ev.Local.Port() != 0 || ev.Remote.Port() != 443 {
		t.Errorf("end without a delta: parts %v, %v -> %v", ev.Delta.Parts, ev.Local, ev.Remote)
	}
	if err := d.Decode(raw[:collector.EndSize-1], &ev); !errors.Is(err, collector.ErrDecode) {
		t.Errorf("truncated end record: %v, want ErrDecode", err)
	}
	r.State = uint8(collector.StateEstablished)
	if err := d.Decode(raw, &ev); !errors.Is(err, collector.ErrDecode) {
		t.Errorf("end record in ESTABLISHED: %v, want ErrDecode", err)
	}

	// A delta that does not decode is dropped, the other kept, and the
	// CLOSE applied as the end record has it: the socket is gone either way.
	r.State = uint8(collector.StateClose)
	r.D, r.S = evDeltas()
	r.S.OwnerOp = 0
	err := d.Decode(raw, &ev)
	if !errors.Is(err, collector.ErrBadDelta) || !errors.Is(err, collector.ErrDecode) {
		t.Fatalf("end record with owner op 0: %v, want ErrBadDelta and ErrDecode", err)
	}
	if ev.Kind != collector.KindEnd || ev.State != collector.StateClose || ev.Cookie != r.Cookie ||
		ev.Delta.Parts != collector.DeltaState|collector.DeltaTCP || ev.Delta.Owner.Task != nil {
		t.Errorf("end record with a bad syscall delta decoded as %+v, want its CLOSE with the state delta", ev)
	}
	checkState(t, ev)

	// A bad state delta: the CLOSE with the syscall delta alone.
	r.D, r.S = evDeltas()
	r.D.State = 13
	err = d.Decode(raw, &ev)
	if !errors.Is(err, collector.ErrBadDelta) {
		t.Fatalf("end record with state 13: %v, want ErrBadDelta", err)
	}
	if ev.Kind != collector.KindEnd || ev.State != collector.StateClose || ev.Delta.Parts != collector.DeltaOwner|collector.DeltaSockopt {
		t.Errorf("end record with a bad state delta decoded as %+v, want its CLOSE with the syscall delta", ev)
	}
	checkSys(t, ev)

	// Both bad: the CLOSE alone.
	r.S.OwnerOp = 0
	if err := d.Decode(raw, &ev); !errors.Is(err, collector.ErrBadDelta) || ev.Delta.Parts != 0 || ev.Local.Port() != 0 || ev.Remote.Port() != 443 {
		t.Errorf("end record with both deltas bad: %v, %+v; want its CLOSE alone", err, ev)
	}
}

// The decoder hands the same string for the same task name twice in a
// row, so a process churning connections costs no name string each.
func TestDecodeCommReused(t *testing.T) {
	d := &collector.Decoder{HZ: 250}
	k := evBase()
	k.Flags, k.Pid, k.Comm = 2, 5, evComm("nginx")
	a := evMustDecode(t, d, &k)
	b := evMustDecode(t, d, &k)
	if a.Task.Comm != "nginx" || unsafe.StringData(a.Task.Comm) != unsafe.StringData(b.Task.Comm) {
		t.Errorf("comms %q and %q are not one string", a.Task.Comm, b.Task.Comm)
	}
	k.Comm = evComm("curl")
	if c := evMustDecode(t, d, &k); c.Task.Comm != "curl" {
		t.Errorf("comm after a change = %q, want curl", c.Task.Comm)
	}
}

func TestDecodeLongerRecord(t *testing.T) {
	k := evBase()
	raw := append(evRaw(&k), 0xff, 0xff, 0xff, 0xff)
	var ev collector.Event
	if err := (&collector.Decoder{HZ: 250}).Decode(raw, &ev); err != nil {
		t.Fatalf("Decode of a padded record: %v", err)
	}
	if ev.Cookie != k.Cookie {
		t.Fatalf("Cookie = %#x, want %#x", ev.Cookie, k.Cookie)
	}
}

func TestDecodeTruncated(t *testing.T) {
	k := evBase()
	raw := evRaw(&k)
	d := &collector.Decoder{HZ: 250}
	for n := 0; n < collector.EventSize; n++ {
		var ev collector.Event
		err := d.Decode(raw[:n], &ev)
		if !errors.Is(err, collector.ErrDecode) {
			t.Errorf("Decode(%d bytes) = %v, want ErrDecode", n, err)
		}
	}
	var ev collector.Event
	if err := d.Decode(nil, &ev); !errors.Is(err, collector.ErrDecode) {
		t.Errorf("Decode(nil) = %v, want ErrDecode", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		mod  func(k *bpf.GhostconnEvent)
	}{
		{"type 0", func(k *bpf.GhostconnEvent) { k.Type = 0 }},
		{"type 6", func(k *bpf.GhostconnEvent) { k.Type = 6 }},
		{"type observed", func(k *bpf.GhostconnEvent) { k.Type = uint8(collector.KindObserved) }},
		{"type 255", func(k *bpf.GhostconnEvent) { k.Type = 255 }},
		{"family 0", func(k *bpf.GhostconnEvent) { k.Tuple.Family = 0 }},
		{"family AF_UNIX", func(k *bpf.GhostconnEvent) { k.Tuple.Family = 1 }},
		{"family 11", func(k *bpf.GhostconnEvent) { k.Tuple.Family = 11 }},
		{"state 13", func(k *bpf.GhostconnEvent) { k.State = 13 }},
		{"state 255", func(k *bpf.GhostconnEvent) { k.State = 255 }},
		{"old state 13", func(k *bpf.GhostconnEvent) { k.OldState = 13 }},
		{"close op 0", func(k *bpf.GhostconnEvent) {
			k.Type = uint8(bpf.GhostconnEventTypeEVENT_CLOSE)
			k.Op = 0
		}},
		{"close op 5", func(k *bpf.GhostconnEvent) {
			k.Type = uint8(bpf.GhostconnEventTypeEVENT_CLOSE)
			k.Op = 5
		}},
		{"end record of an event's size", func(k *bpf.GhostconnEvent) {
			k.Type = uint8(bpf.GhostconnEventTypeEVENT_END)
			k.State = uint8(collector.StateClose)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := evBase()
			tt.mod(&k)
			var ev collector.Event
			err := (&collector.Decoder{HZ: 250}).Decode(evRaw(&k), &ev)
			if err == nil {
				t.Fatalf("Decode succeeded: %+v", ev)
			}
			if !errors.Is(err, collector.ErrDecode) {
				t.Fatalf("error %v does not wrap ErrDecode", err)
			}
		})
	}
}

// The close op is only checked for close events: other kinds carry op 0.
func TestDecodeOpIgnoredForOtherKinds(t *testing.T) {
	k := evBase()
	k.Op = 200
	evMustDecode(t, &collector.Decoder{HZ: 250}, &k)
}

func FuzzDecode(f *testing.F) {
	seeds := []bpf.GhostconnEvent{evBase()}
	for typ := uint8(1); typ <= 5; typ++ {
		k := evBase()
		k.Type = typ
		k.Op = 1
		k.Flags = 3
		k.Comm = evComm("fuzz")
		seeds = append(seeds, k)
	}
	v6 := evBase()
	v6.Tuple.Family = 10
	v6.Tuple.Saddr = evAddr16("::1")
	seeds = append(seeds, v6)
	for i := range seeds {
		f.Add(evRaw(&seeds[i]))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		d := &collector.Decoder{HZ: 250, MonoOffset: 1 << 40}
		var ev collector.Event
		err := d.Decode(raw, &ev)
		if err != nil {
			if !errors.Is(err, collector.ErrDecode) {
				t.Fatalf("error %v does not wrap ErrDecode", err)
			}
			return
		}
		if len(raw) < collector.EventSize {
			t.Fatalf("decoded a %d-byte record", len(raw))
		}
		if ev.Kind < collector.KindState || ev.Kind > collector.KindEnd {
			t.Fatalf("decoded kind %v", ev.Kind)
		}
		if ev.Family != collector.FamilyIPv4 && ev.Family != collector.FamilyIPv6 {
			t.Fatalf("decoded family %v", ev.Family)
		}
		if ev.Kind == collector.KindClose && ev.Close.Op == "" {
			t.Fatalf("close event without op")
		}
	})
}

// TestBadRecordsCountedAndSkipped: the reader's path for one record. A
// truncated or corrupted record is counted as read and as a decode error,
// and skipped; the good records around it are kept.
func TestBadRecordsCountedAndSkipped(t *testing.T) {
	good := evBase()
	bad := evBase()
	bad.Type = 255
	raws := [][]byte{evRaw(&good), evRaw(&good)[:collector.EventSize/2], evRaw(&bad), nil, evRaw(&good)}
	c := &collector.Collector{}
	d := &collector.Decoder{HZ: 250}
	var batch []collector.Event
	var read, errs uint64
	for _, raw := range raws {
		batch, read, errs = c.Take(d, raw, batch)
	}
	if len(batch) != 2 || read != 5 || errs != 3 {
		t.Fatalf("kept %d, read %d, decode errors %d; want 2, 5, 3", len(batch), read, errs)
	}
	for _, ev := range batch {
		if ev.Cookie != good.Cookie {
			t.Errorf("kept %+v, want the good records", ev)
		}
	}
}
