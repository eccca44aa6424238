package collector

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/ghostconn/ghostconn/bpf"
)

func benchRecord() []byte {
	k := bpf.GhostconnEvent{TsNs: 1e9, Cookie: 42, Type: uint8(KindState),
		OldState: uint8(StateSynSent), State: uint8(StateEstablished),
		Tuple: bpf.GhostconnTuple{Family: uint8(FamilyIPv4), Sport: 5000, Dport: 80}}
	copy(k.Tuple.Saddr[:], []byte{127, 0, 0, 1})
	copy(k.Tuple.Daddr[:], []byte{127, 0, 0, 1})
	raw := make([]byte, EventSize)
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&k)), EventSize))
	return raw
}

// BenchmarkDecode is the per-event user-space decoding cost.
func BenchmarkDecode(b *testing.B) {
	d := Decoder{HZ: 250}
	raw := benchRecord()
	var ev Event
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeEnd is the decoding cost of an end record carrying its
// socket's deltas (the state hook's and the syscall hooks'): a short
// connection's one record per end.
func BenchmarkDecodeEnd(b *testing.B) {
	d := Decoder{HZ: 250}
	tuple := bpf.GhostconnTuple{Family: uint8(FamilyIPv4), Sport: 5000, Dport: 80}
	r := bpf.GhostconnEndEvent{TsNs: 2e9, Cookie: 42, Type: uint8(KindEnd), Flags: flagTask, Pid: 7, Ppid: 1,
		OldState: uint8(StateFinWait1), State: uint8(StateClose), Tuple: tuple}
	r.D = bpf.GhostconnStateDelta{FirstNs: 1e9, StateNs: 1.5e9, EstNs: 1.1e9,
		Parts: uint32(DeltaState), State: uint8(StateFinWait1), EstFrom: uint8(StateSynSent), Tuple: tuple}
	r.S = bpf.GhostconnSysDelta{FirstNs: 1.1e9, OwnerNs: 1.1e9, OwnerPid: 7, OwnerPpid: 1, OwnerFd: 5,
		Parts: uint32(DeltaOwner), State: uint8(StateEstablished), OwnerOp: 1, Tuple: tuple}
	raw := make([]byte, EndSize)
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&r)), EndSize))
	var ev Event
	if err := d.Decode(raw, &ev); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

// lifecycle is the state events of one short loopback connection, both
// ends, as the kernel reports them.
func lifecycle(cookie uint64, at time.Time) []Event {
	l := netip.MustParseAddrPort("127.0.0.1:40000")
	r := netip.MustParseAddrPort("127.0.0.1:80")
	mk := func(c uint64, from, to State, loc, rem netip.AddrPort) Event {
		return Event{Kind: KindState, Time: at, Cookie: c, Netns: 1, Family: FamilyIPv4, Local: loc, Remote: rem, OldState: from, State: to}
	}
	return []Event{
		mk(cookie, StateClose, StateSynSent, l, r),
		mk(cookie+1, StateListen, StateSynRecv, r, l),
		mk(cookie, StateSynSent, StateEstablished, l, r),
		mk(cookie+1, StateSynRecv, StateEstablished, r, l),
		mk(cookie, StateEstablished, StateFinWait1, l, r),
		mk(cookie+1, StateEstablished, StateCloseWait, r, l),
		mk(cookie, StateFinWait1, StateFinWait2, l, r),
		mk(cookie+1, StateCloseWait, StateLastAck, r, l),
		mk(cookie, StateFinWait2, StateClose, l, r),
		mk(cookie+1, StateLastAck, StateClose, r, l),
	}
}

// BenchmarkTableChurn applies the ten state events of one connection's
// life, both ends; ns/op is per connection.
func BenchmarkTableChurn(b *testing.B) {
	t := NewTable(TableConfig{MaxConns: 1 << 20, MaxHistory: 10000, HistoryTTL: time.Minute, Verdicts: DefaultVerdictConfig})
	at := time.Unix(1000, 0)
	evs := lifecycle(0, at)
	b.ReportAllocs()
	var n uint64
	for b.Loop() {
		n += 2
		for i := range evs {
			evs[i].Cookie = n + uint64(i%2)
		}
		t.Apply(evs)
	}
}

// foldedLifecycle is one short loopback connection as the agent gets it
// while nobody watches: one end record per end, each carrying the delta
// the kernel folded (ESTABLISHED, the owner, four keepalive options, the
// state it closed from).
func foldedLifecycle(at time.Time) []Event {
	l := netip.MustParseAddrPort("127.0.0.1:40000")
	r := netip.MustParseAddrPort("127.0.0.1:80")
	task := &Task{PID: 7, PPID: 1, Comm: "client"}
	mk := func(loc, rem netip.AddrPort, from, last State, op string) Event {
		ev := Event{Kind: KindEnd, Time: at, Netns: 1, Family: FamilyIPv4, Local: loc, Remote: rem,
			OldState: last, State: StateClose,
			Delta: Delta{Parts: DeltaState | DeltaOwner | DeltaSockopt | DeltaTCP, State: last,
				EstFrom: from, Owner: Owner{Task: task, FD: 5, Op: op}, SockoptBy: 7}}
		ev.Settings.HaveKeepalive = true
		for i, o := range []Sockopt{{solSocket, soKeepalive, 1}, {solTCP, tcpKeepIdle, 15}, {solTCP, tcpKeepIntvl, 15}, {solTCP, tcpKeepCnt, 9}} {
			ev.Delta.Sockopts[i] = o
		}
		ev.Delta.NSockopts = 4
		return ev
	}
	return []Event{
		mk(l, r, StateSynSent, StateFinWait1, "connect"),
		mk(r, l, StateSynRecv, StateCloseWait, "accept"),
	}
}

// BenchmarkTableChurnFolded applies a short connection's two end records,
// both ends, as the agent gets them while nobody watches; ns/op is per
// connection.
func BenchmarkTableChurnFolded(b *testing.B) {
	t := NewTable(TableConfig{MaxConns: 1 << 20, MaxHistory: 10000, HistoryTTL: time.Minute, Verdicts: DefaultVerdictConfig})
	at := time.Unix(1000, 0)
	evs := foldedLifecycle(at)
	b.ReportAllocs()
	var n uint64
	for b.Loop() {
		n += 2
		for i := range evs {
			evs[i].Cookie = n + uint64(i)
			evs[i].Mono = 0
			evs[i].Time = at
		}
		t.Apply(evs)
	}
}

func bigTable(n int) (*Table, time.Time) {
	t := NewTable(TableConfig{MaxConns: 1 << 20, Verdicts: DefaultVerdictConfig})
	at := time.Unix(1000, 0)
	evs := make([]Event, 0, n)
	for i := 0; i < n; i++ {
		evs = append(evs, Event{Kind: KindState, Time: at, Cookie: uint64(i + 1), Netns: 1, Family: FamilyIPv4,
			Local:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 16), byte(i >> 8)}), uint16(i)),
			Remote:   netip.MustParseAddrPort("127.0.0.1:80"),
			OldState: StateSynSent, State: StateEstablished})
	}
	t.Apply(evs)
	return t, at
}

// BenchmarkList100k is the table side of `ghostconn ls` at 100k
// connections.
func BenchmarkList100k(b *testing.B) {
	t, at := bigTable(100_000)
	b.ReportAllocs()
	for b.Loop() {
		if got := t.List(at.Add(time.Second), ListOptions{}); len(got) != 100_000 {
			b.Fatal(len(got))
		}
	}
}

// BenchmarkEvaluate100k is one full verdict evaluation at 100k
// connections, which the agent runs every second.
func BenchmarkEvaluate100k(b *testing.B) {
	t, at := bigTable(100_000)
	t.defaults[1] = NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15}
	b.ReportAllocs()
	for b.Loop() {
		t.Evaluate(at.Add(time.Second))
	}
}

// BenchmarkReconcile100k is the user-space side of one reconcile at 100k
// sockets: decoding the snapshot, applying it, the holder walk and the
// sweep. The agent runs one every --reconcile-interval.
func BenchmarkReconcile100k(b *testing.B) {
	const n = 100_000
	recs, holders := snapshotInput(n)
	t := NewTable(TableConfig{MaxConns: 1 << 20, Verdicts: DefaultVerdictConfig})
	t.cgroups = nil
	d := Decoder{HZ: 250}
	at := time.Unix(1000, 0)
	chunk := newSnapshotChunk()
	b.ReportAllocs()
	gen := uint64(0)
	for b.Loop() {
		gen++
		at = at.Add(30 * time.Second)
		chunk.apply(t, &d, recs, at, gen, gen == 1)
		t.SetHolders(holders, at)
		t.Sweep(gen, at, map[uint32]bool{1: true})
		t.Evaluate(at)
	}
}

// BenchmarkTableBytesPerConn reports the live heap the table holds per
// connection at 100k connections seeded the way a reconcile seeds them (a
// snapshot record and a holder each), after a GC: the table's share of the
// agent's RSS per connection.
func BenchmarkTableBytesPerConn(b *testing.B) {
	const n = 100_000
	recs, holders := snapshotInput(n)
	var perConn float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		t := NewTable(TableConfig{MaxConns: 1 << 20, Verdicts: DefaultVerdictConfig})
		t.cgroups = nil
		d := Decoder{HZ: 250}
		at := time.Unix(1000, 0)
		newSnapshotChunk().apply(t, &d, recs, at, 1, true)
		t.SetHolders(holders, at)
		t.Evaluate(at)
		runtime.GC()
		runtime.ReadMemStats(&after)
		perConn = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(t)
	}
	b.ReportMetric(perConn, "B/conn")
}

// snapshotInput is what a reconcile reads at n sockets: n ESTABLISHED
// snapshot records and a holder record for each, 20000 per process.
func snapshotInput(n int) ([]bpf.GhostconnSockRec, []bpf.GhostconnHolderRec) {
	recs := make([]bpf.GhostconnSockRec, n)
	holders := make([]bpf.GhostconnHolderRec, n)
	for i := range recs {
		r := &recs[i]
		r.Cookie, r.Ino, r.Netns, r.Family, r.State, r.Full = uint64(i+1), uint64(i+1e6), 1, uint8(FamilyIPv4), uint8(StateEstablished), 1
		r.Sport, r.Dport = uint16(i), 8080
		copy(r.Saddr[:], []byte{127, 0, 1, 7})
		copy(r.Daddr[:], []byte{127, 0, 0, 1})
		r.NetKaTime, r.NetKaIntvl, r.NetKaProbes, r.NetRetries2 = 250*7200, 250*75, 9, 15
		holders[i] = bpf.GhostconnHolderRec{Cookie: uint64(i + 1), Ino: uint64(i + 1e6), Pid: uint32(1000 + i/20000), Fd: uint32(i % 20000)}
		copy(holders[i].Comm[:], []int8{'s', 'e', 'r', 'v', 'e', 'r'})
	}
	return recs, holders
}

// BenchmarkTop100k is the table side of one `ghostconn top` refresh at
// 100k connections, the counts and the first 40 rows in the default order,
// when the table changed since the last one (a pass over it) and when it
// did not (the last pass reused).
func BenchmarkTop100k(b *testing.B) {
	t, at := bigTable(100_000)
	for _, changed := range []bool{true, false} {
		b.Run(map[bool]string{true: "changed", false: "unchanged"}[changed], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if changed {
					t.mu.Lock()
					t.changes++
					t.mu.Unlock()
				}
				if got := t.Top(at.Add(time.Second), TopOptions{Limit: 40}); got.Total != 100_000 || len(got.Rows) != 40 {
					b.Fatal(got.Total, len(got.Rows))
				}
			}
		})
	}
}
