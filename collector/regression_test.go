package collector

import (
	"errors"
	"reflect"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/ghostconn/ghostconn/bpf"
)

// Regression tests for review fixes. Each fails on the behaviour it
// describes as old.

// rgRaw returns the bytes of k as the ring buffer delivers them.
func rgRaw(k *bpf.GhostconnEvent) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(k)), EventSize)...)
}

// rgKernelEvent is a well-formed IPv4 record of the given type.
func rgKernelEvent(typ bpf.GhostconnEventType) bpf.GhostconnEvent {
	return bpf.GhostconnEvent{
		TsNs:     1_000_000_000,
		Cookie:   0xabc,
		Ino:      77,
		Type:     uint8(typ),
		OldState: uint8(StateEstablished),
		State:    uint8(StateEstablished),
		Tuple:    bpf.GhostconnTuple{Netns: tbNetns, Family: 2, Sport: 40000, Dport: 443},
	}
}

// Old: close and sockopt events decoded without a task (ev.Task nil, which
// Table.apply dereferences for a close) and closes with fewer than two
// references were accepted.
func TestRegressionDecodeCloseAndSockoptNeedTask(t *testing.T) {
	closeEv := func(flags uint8, refs uint32) bpf.GhostconnEvent {
		k := rgKernelEvent(bpf.GhostconnEventTypeEVENT_CLOSE)
		k.Op = uint8(bpf.GhostconnCloseOpCLOSE_OP_CLOSE)
		k.Fd = 5
		k.Flags = flags
		k.Refs = refs
		k.Pid, k.Ppid, k.Comm = 300, 1, tbComm("app")
		k.WriteSeq, k.CopiedSeq = 1234, 5678
		return k
	}
	sockoptEv := func(flags uint8) bpf.GhostconnEvent {
		k := rgKernelEvent(bpf.GhostconnEventTypeEVENT_SOCKOPT)
		k.Level, k.Optname, k.Optval = solTCP, tcpKeepIdle, 30
		k.Fd = 5
		k.Flags = flags
		k.Pid, k.Comm = 300, tbComm("app")
		return k
	}
	tests := []struct {
		name string
		k    bpf.GhostconnEvent
		ok   bool
	}{
		{"close without task flag", closeEv(0, 3), false},
		{"close with only the keepalive flag", closeEv(1, 3), false},
		{"close with one reference", closeEv(2, 1), false},
		{"close with no reference", closeEv(2, 0), false},
		{"close without task and one reference", closeEv(0, 1), false},
		{"close with task and two references", closeEv(2, 2), true},
		{"close with task flag among others", closeEv(3, 4), true},
		{"sockopt without task flag", sockoptEv(0), false},
		{"sockopt with only the keepalive flag", sockoptEv(1), false},
		{"sockopt with task", sockoptEv(2), true},
	}
	d := &Decoder{HZ: 250}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			err := d.Decode(rgRaw(&tc.k), &ev)
			if !tc.ok {
				if !errors.Is(err, ErrDecode) {
					t.Fatalf("Decode = %v (event %+v), want ErrDecode", err, ev)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if ev.Task == nil || ev.Task.PID != 300 || ev.Task.Comm != "app" {
				t.Fatalf("Task = %+v, want pid 300 app", ev.Task)
			}
			switch ev.Kind {
			case KindClose:
				want := Close{FD: 5, Refs: tc.k.Refs, Op: "close", WriteSeq: 1234, CopiedSeq: 5678}
				if ev.Close != want {
					t.Fatalf("Close = %+v, want %+v", ev.Close, want)
				}
			case KindSockopt:
				if want := (Sockopt{Level: solTCP, Name: tcpKeepIdle, Value: 30}); ev.Sockopt != want {
					t.Fatalf("Sockopt = %+v, want %+v", ev.Sockopt, want)
				}
			default:
				t.Fatalf("Kind = %v", ev.Kind)
			}
		})
	}
}

// Old: a snapshot overwrote the settings and counters unconditionally, so
// a snapshot that began before a setsockopt (but was applied after it)
// undid the setsockopt.
func TestRegressionSnapshotKeepsNewerSettings(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	c := tb.conns[1]
	tb.Apply([]Event{
		{
			Kind: KindRetransmit, Time: tbT1, Cookie: 1,
			Counters: TCPCounters{Retransmits: 2, TotalRetrans: 2, HaveCounters: true},
		},
		{
			Kind: KindSockopt, Time: tbT3, Cookie: 1, Task: &Task{PID: 300, Comm: "app"},
			Sockopt: Sockopt{Level: solTCP, Name: tcpKeepIdle, Value: 30},
		},
	})
	if c.Settings.KeepIdle != 30*time.Second || !c.LastUpdate.Equal(tbT3) {
		t.Fatalf("after setsockopt: KeepIdle %v, LastUpdate %v", c.Settings.KeepIdle, c.LastUpdate)
	}

	// Begun at 1002, before the setsockopt at 1003: KaTime 0, no
	// retransmissions.
	r := tbSockRec(1, StateEstablished)
	r.SendAgeJiffies, r.RecvAgeJiffies = 250, 250
	r.SendQueue = 9
	r.WriteSeq, r.CopiedSeq = 11, 22
	tb.Apply([]Event{tbObserve(t, r, tbT2, 1, false)})
	if c.Settings.KeepIdle != 30*time.Second {
		t.Fatalf("KeepIdle = %v after an older snapshot, want 30s from the newer setsockopt", c.Settings.KeepIdle)
	}
	if c.Counters.Retransmits != 2 || !c.RetransSince.Equal(tbT1) {
		t.Fatalf("Counters = %+v, RetransSince %v after an older snapshot, want the event's", c.Counters, c.RetransSince)
	}
	if !c.LastUpdate.Equal(tbT3) {
		t.Fatalf("LastUpdate = %v, want %v", c.LastUpdate, tbT3)
	}
	// Its own measurements still apply.
	if !c.LastDataAt.Equal(tbT2) || !c.LastData.Equal(tbT2.Add(-time.Second)) || c.SendQueue != 9 || c.WriteSeq != 11 || c.CopiedSeq != 22 {
		t.Fatalf("measurements not taken: LastData %v LastDataAt %v SendQueue %d seq %d/%d",
			c.LastData, c.LastDataAt, c.SendQueue, c.WriteSeq, c.CopiedSeq)
	}

	// Begun at 1004, after the setsockopt: the snapshot is the newer truth.
	t4 := time.Unix(1004, 0)
	ev := tbObserve(t, r, t4, 2, false)
	tb.Apply([]Event{ev})
	if c.Settings != ev.Settings || c.Settings.KeepIdle != 0 || !c.Settings.HaveKeepalive {
		t.Fatalf("Settings = %+v after a newer snapshot, want %+v", c.Settings, ev.Settings)
	}
	if c.Counters.Retransmits != 0 || !c.RetransSince.IsZero() {
		t.Fatalf("Counters = %+v, RetransSince %v after a newer snapshot, want none", c.Counters, c.RetransSince)
	}
	if !c.LastUpdate.Equal(t4) {
		t.Fatalf("LastUpdate = %v, want %v", c.LastUpdate, t4)
	}
}

// Old: setInode left the replaced inode in the index, so an event carrying
// the old inode still reached the connection.
func TestRegressionReplacedInodeForgotten(t *testing.T) {
	tb := tbNew(t)
	tb.alive = func(uint32) bool { return true }
	tb.Apply([]Event{tbObserve(t, tbSockRec(1, StateEstablished), tbT0, 1, true)}) // inode 1001
	c := tb.conns[1]
	if c.Inode != 1001 || tb.byInode[1001] != 1 {
		t.Fatalf("Inode = %d, byInode = %v", c.Inode, tb.byInode)
	}
	tb.SetHolders([]bpf.GhostconnHolderRec{{Cookie: 1, Ino: 2001, Pid: 10, Ppid: 1, Fd: 3, Comm: tbComm("app")}}, tbT1)
	if c.Inode != 2001 || tb.byInode[2001] != 1 {
		t.Fatalf("Inode = %d, byInode = %v, want 2001 -> 1", c.Inode, tb.byInode)
	}
	if ck, ok := tb.byInode[1001]; ok {
		t.Fatalf("byInode[1001] = %d, want the replaced inode forgotten", ck)
	}

	before := c.Settings
	tb.Apply([]Event{{
		Kind: KindSockopt, Time: tbT2, Inode: 1001, Task: &Task{PID: 10, Comm: "app"},
		Sockopt: Sockopt{Level: solTCP, Name: tcpKeepIdle, Value: 30},
	}})
	if got := tb.Stats().Unknown; got != 1 {
		t.Fatalf("Unknown = %d, want 1 for an event with the replaced inode", got)
	}
	if c.Settings != before || c.SettingsBy != nil || !c.LastUpdate.Equal(tbT0) {
		t.Fatalf("event with the replaced inode changed the connection: Settings %+v, SettingsBy %+v, LastUpdate %v",
			c.Settings, c.SettingsBy, c.LastUpdate)
	}

	// The current inode still works.
	tb.Apply([]Event{{
		Kind: KindSockopt, Time: tbT3, Inode: 2001, Task: &Task{PID: 10, Comm: "app"},
		Sockopt: Sockopt{Level: solTCP, Name: tcpKeepIdle, Value: 45},
	}})
	if c.Settings.KeepIdle != 45*time.Second || tb.Stats().Unknown != 1 {
		t.Fatalf("event with the current inode: KeepIdle %v, Unknown %d", c.Settings.KeepIdle, tb.Stats().Unknown)
	}
}

// Old: GC dropped only a prefix of the history, assuming it ordered by
// ClosedAt; Sweep retires at the snapshot's start, which can be earlier
// than a close already in the history.
func TestRegressionGCUnorderedHistory(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 10, HistoryTTL: time.Minute, MaxHistory: 10})
	tbEstablished(t, tb, 1, tbT0) // A
	tbEstablished(t, tb, 2, tbT0) // B
	tb.Apply([]Event{tbClose(1, time.Unix(1010, 0))})
	tb.Sweep(7, time.Unix(1005, 0), map[uint32]bool{tbNetns: true})

	var order []uint64
	var at []int64
	for _, c := range tb.closed {
		order = append(order, c.Cookie)
		at = append(at, c.ClosedAt.Time().Unix())
	}
	if !reflect.DeepEqual(order, []uint64{1, 2}) || !reflect.DeepEqual(at, []int64{1010, 1005}) {
		t.Fatalf("history = cookies %v closed at %v, want [1 2] at [1010 1005]", order, at)
	}

	tb.GC(time.Unix(1066, 0)) // A is 56s old, B 61s
	if len(tb.closed) != 1 || tb.closed[0].Cookie != 1 {
		order = order[:0]
		for _, c := range tb.closed {
			order = append(order, c.Cookie)
		}
		t.Fatalf("history after GC = %v, want [1]", order)
	}
	if tb.closedIx[2] != nil {
		t.Fatal("closedIx still holds B")
	}
	if tb.closedIx[1] == nil {
		t.Fatal("closedIx lost A")
	}
	if views := tb.List(time.Unix(1066, 0), ListOptions{Closed: true}); len(views) != 1 || views[0].Cookie != 1 {
		t.Fatalf("List(Closed) = %+v, want only A", views)
	}
}

// TestRecvQueueExcludesFIN: in CLOSE_WAIT rcv_nxt counts the peer's FIN;
// the unread byte count must not.
func TestRecvQueueExcludesFIN(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 10, Verdicts: DefaultVerdictConfig})
	d := Decoder{HZ: 250}
	for _, tc := range []struct {
		state      State
		queue      uint32
		wantUnread uint32
	}{{StateCloseWait, 1, 0}, {StateCloseWait, 6, 5}, {StateEstablished, 6, 6}, {StateCloseWait, 0, 0}} {
		r := bpf.GhostconnSockRec{Cookie: 7, Family: uint8(FamilyIPv4), State: uint8(tc.state), Full: 1, Netns: 1, RecvQueue: tc.queue}
		ev, ok := d.ObservedEvent(&r, time.Unix(1000, 0), 1, true)
		if !ok {
			t.Fatal("record refused")
		}
		tb.Apply([]Event{ev})
		if got := tb.conns[7].RecvQueue; got != tc.wantUnread {
			t.Errorf("%s with rcv_nxt-copied_seq=%d: unread %d, want %d", tc.state, tc.queue, got, tc.wantUnread)
		}
		delete(tb.conns, 7)
	}
}

// TestDeadlinesDoNotPinRetiredConnections: under churn every connection
// evaluated while ESTABLISHED gets a silent deadline minutes ahead; the heap
// must not keep them all (the soak found RSS growing 6.5 MiB/min).
func TestDeadlinesDoNotPinRetiredConnections(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 1 << 20, MaxHistory: 100, HistoryTTL: time.Minute, Verdicts: DefaultVerdictConfig})
	at := time.Unix(1000, 0)
	for i := 0; i < 100_000; i++ {
		evs := lifecycle(uint64(2*i+1), at)
		tb.Apply(evs[:4]) // both ends ESTABLISHED
		tb.Evaluate(at)   // a deadline each, 5 minutes out
		tb.Apply(evs[4:]) // and gone
		at = at.Add(time.Millisecond)
	}
	tb.Evaluate(at)
	if n := len(tb.deadlines); n > 2*len(tb.conns)+1024 {
		t.Fatalf("%d deadlines held for %d live connections", n, len(tb.conns))
	}
}

// TestChurnHeapFlatBesideTimeWait: the soak's table holds about 15,000
// TIME_WAIT sockets found by snapshots, which raised the compaction
// threshold to 31,000 stale deadlines; each pinned a retired connection,
// and the heap grew 6 MiB a minute. Churn beside such a table must leave
// the live heap where it was.
func TestChurnHeapFlatBesideTimeWait(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 1 << 20, MaxHistory: 1000, HistoryTTL: time.Minute, Verdicts: DefaultVerdictConfig})
	d := Decoder{HZ: 250}
	at := time.Unix(1000, 0)
	for i := 0; i < 15000; i++ {
		r := bpf.GhostconnSockRec{Cookie: uint64(1<<40 + i), Family: uint8(FamilyIPv4), State: uint8(StateTimeWait), Netns: 1}
		ev, ok := d.ObservedEvent(&r, at, 1, true)
		if !ok {
			t.Fatal("record refused")
		}
		tb.Apply([]Event{ev})
	}
	// The namespace's sysctls, as the first full snapshot record gives them.
	tb.defaults[1] = NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15}
	churn := func(from, to int) {
		for i := from; i < to; i++ {
			evs := lifecycle(uint64(2*i+1), at)
			tb.Apply(evs[:4])
			if i%8 == 0 {
				tb.Evaluate(at) // some are seen ESTABLISHED: a deadline minutes out
			}
			tb.Apply(evs[4:])
			at = at.Add(100 * time.Microsecond)
		}
		tb.Evaluate(at)
	}
	heapAfter := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	churn(0, 50_000) // history full, heap and maps at their working size
	before := heapAfter()
	// 23,750 more deadlines, kept short of the compaction threshold
	// (2 × 15,000 + 1,024), where the heap is at its largest.
	churn(50_000, 240_000)
	after := heapAfter()
	if tb.Len() != 15000 {
		t.Fatalf("%d live connections, want the 15000 TIME_WAIT", tb.Len())
	}
	// A retained connection costs about 600 bytes, a deadline 16.
	if grew := int64(after) - int64(before); grew > 2<<20 {
		t.Errorf("live heap grew %.1f MiB over 190,000 connections (%d deadlines queued)", float64(grew)/(1<<20), len(tb.deadlines))
	}
}

func TestNextReconcile(t *testing.T) {
	for _, tc := range []struct {
		took time.Duration
		lost bool
		want time.Duration
	}{
		{10 * time.Millisecond, false, 30 * time.Second},   // small table: the interval
		{800 * time.Millisecond, false, 160 * time.Second}, // 100k: at most 0.5% of a core
		{10 * time.Second, false, 300 * time.Second},       // capped at ten intervals
		{800 * time.Millisecond, true, 30 * time.Second},   // losing events: correct soon
		{150 * time.Millisecond, false, 30 * time.Second},  // exactly the interval
	} {
		if got := NextReconcile(30*time.Second, tc.took, tc.lost); got != tc.want {
			t.Errorf("took %s lost %v: %s, want %s", tc.took, tc.lost, got, tc.want)
		}
	}
}
