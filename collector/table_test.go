package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// Fixed fake times: the table takes its times from events, GC from now.
var (
	tbT0 = time.Unix(1000, 0)
	tbT1 = time.Unix(1001, 0)
	tbT2 = time.Unix(1002, 0)
	tbT3 = time.Unix(1003, 0)
)

const tbNetns = 4026531840

func tbNew(t *testing.T) *Table {
	t.Helper()
	return NewTable(TableConfig{MaxConns: 100, HistoryTTL: 5 * time.Minute, MaxHistory: 100})
}

func tbStateEv(cookie uint64, at time.Time, from, to State, local, remote string) Event {
	return Event{
		Kind:     KindState,
		Time:     at,
		Cookie:   cookie,
		Netns:    tbNetns,
		Family:   FamilyIPv4,
		Local:    netip.MustParseAddrPort(local),
		Remote:   netip.MustParseAddrPort(remote),
		OldState: from,
		State:    to,
	}
}

// established puts cookie in the table as ESTABLISHED at at.
func tbEstablished(t *testing.T, tb *Table, cookie uint64, at time.Time) {
	t.Helper()
	tb.Apply([]Event{tbStateEv(cookie, at, StateSynSent, StateEstablished, "10.0.0.1:40000", "10.0.0.2:443")})
	if tb.conns[cookie] == nil {
		t.Fatalf("cookie %d not in the table after ESTABLISHED", cookie)
	}
}

func tbClose(cookie uint64, at time.Time) Event {
	return tbStateEv(cookie, at, StateFinWait1, StateClose, "0.0.0.0:0", "0.0.0.0:0")
}

func TestTableLifecycle(t *testing.T) {
	tb := tbNew(t)
	opener := &Task{PID: 42, PPID: 1, Comm: "curl"}
	syn := tbStateEv(1, tbT0, StateClose, StateSynSent, "10.0.0.1:0", "10.0.0.2:443")
	syn.Task = opener
	est := tbStateEv(1, tbT1, StateSynSent, StateEstablished, "10.0.0.1:40000", "10.0.0.2:443")
	est.Task = &Task{PID: 99, Comm: "ksoftirqd/0"}
	fin := tbStateEv(1, tbT2, StateEstablished, StateFinWait1, "10.0.0.1:40000", "10.0.0.2:443")

	tb.Apply([]Event{syn})
	c := tb.conns[1]
	if c == nil {
		t.Fatal("SYN_SENT did not create a connection")
	}
	if c.State != StateSynSent || !c.FirstSeen.Equal(tbT0) || !c.StateSince.Equal(tbT0) {
		t.Fatalf("after SYN_SENT: state %v first %v since %v", c.State, c.FirstSeen, c.StateSince)
	}
	if c.Opener != opener {
		t.Fatalf("Opener = %+v, want %+v", c.Opener, opener)
	}

	tb.Apply([]Event{est, fin})
	if c.State != StateFinWait1 || !c.StateSince.Equal(tbT2) || !c.LastUpdate.Equal(tbT2) {
		t.Fatalf("after FIN_WAIT1: state %v since %v last %v", c.State, c.StateSince, c.LastUpdate)
	}
	if got := c.Local.String(); got != "10.0.0.1:40000" {
		t.Fatalf("Local = %s, want the port from ESTABLISHED", got)
	}
	if c.Opener != opener {
		t.Fatalf("Opener changed by a non-SYN_SENT event: %+v", c.Opener)
	}

	tb.Apply([]Event{tbClose(1, tbT3)})
	if tb.Len() != 0 {
		t.Fatalf("Len = %d after CLOSE, want 0", tb.Len())
	}
	if tb.closedIx[1] != c || len(tb.closed) != 1 {
		t.Fatalf("closed history = %v, want the connection", tb.closed)
	}
	if !c.ClosedAt.Equal(tbT3) || c.State != StateClose {
		t.Fatalf("ClosedAt = %v state %v, want %v CLOSE", c.ClosedAt, c.State, tbT3)
	}
	if got := c.Local.String(); got != "10.0.0.1:40000" {
		t.Fatalf("Local = %s after CLOSE with port 0, want 10.0.0.1:40000", got)
	}
	if got := c.Remote.String(); got != "10.0.0.2:443" {
		t.Fatalf("Remote = %s after CLOSE with port 0, want 10.0.0.2:443", got)
	}
	want := []Transition{
		{At: tbT0, From: StateClose, To: StateSynSent, Task: opener, Source: "kernel"},
		{At: tbT1, From: StateSynSent, To: StateEstablished, Task: est.Task, Source: "kernel"},
		{At: tbT2, From: StateEstablished, To: StateFinWait1, Source: "kernel"},
		{At: tbT3, From: StateFinWait1, To: StateClose, Source: "kernel"},
	}
	if !reflect.DeepEqual(c.History, want) {
		t.Fatalf("History =\n%+v\nwant\n%+v", c.History, want)
	}

	views := tb.List(tbT3, ListOptions{Closed: true, History: true})
	if len(views) != 1 || views[0].ClosedAt == nil || !views[0].ClosedAt.Equal(tbT3) || len(views[0].History) != 4 {
		t.Fatalf("List(Closed) = %+v", views)
	}
	if v := tb.List(tbT3, ListOptions{}); len(v) != 0 {
		t.Fatalf("List without Closed = %+v, want none", v)
	}
	if s := tb.Stats(); s.Applied[KindState] != 4 {
		t.Fatalf("Applied[state] = %d, want 4", s.Applied[KindState])
	}
}

func TestTableLocalPortUpdate(t *testing.T) {
	tests := []struct {
		name  string
		local string
		want  string
	}{
		{"nonzero port replaces", "10.0.0.1:40001", "10.0.0.1:40001"},
		{"zero port keeps", "0.0.0.0:0", "10.0.0.1:40000"},
		{"zero port with address keeps", "10.0.0.9:0", "10.0.0.1:40000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tbNew(t)
			tbEstablished(t, tb, 1, tbT0)
			tb.Apply([]Event{tbStateEv(1, tbT1, StateEstablished, StateCloseWait, tc.local, "10.0.0.2:443")})
			if got := tb.conns[1].Local.String(); got != tc.want {
				t.Fatalf("Local = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestTableOpener(t *testing.T) {
	task := &Task{PID: 7, Comm: "server"}
	tests := []struct {
		name  string
		state State
		task  *Task
		want  *Task
	}{
		{"SYN_SENT with task", StateSynSent, task, task},
		{"LISTEN with task", StateListen, task, task},
		{"SYN_SENT without task", StateSynSent, nil, nil},
		{"ESTABLISHED with task", StateEstablished, task, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tbNew(t)
			ev := tbStateEv(1, tbT0, StateClose, tc.state, "10.0.0.1:1", "10.0.0.2:2")
			ev.Task = tc.task
			tb.Apply([]Event{ev})
			if got := tb.conns[1].Opener; got != tc.want {
				t.Fatalf("Opener = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTableCloseOfUnseenSocket(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbClose(5, tbT0)})
	if tb.Len() != 0 || len(tb.closed) != 0 {
		t.Fatalf("CLOSE of an unseen socket: %d live, %d closed", tb.Len(), len(tb.closed))
	}
}

func TestTableGCEdge(t *testing.T) {
	const ttl = 5 * time.Minute
	closedAt := time.Unix(1000, 0)
	tests := []struct {
		name string
		now  time.Time
		kept bool
	}{
		{"younger than TTL", closedAt.Add(ttl - time.Nanosecond), true},
		{"exactly TTL", closedAt.Add(ttl), true},
		{"older than TTL", closedAt.Add(ttl + time.Nanosecond), false},
		{"much older", closedAt.Add(time.Hour), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := NewTable(TableConfig{MaxConns: 10, HistoryTTL: ttl, MaxHistory: 10})
			tbEstablished(t, tb, 1, closedAt.Add(-time.Second))
			tb.Apply([]Event{tbClose(1, closedAt)})
			tb.GC(tc.now)
			got := len(tb.closed) == 1 && tb.closedIx[1] != nil
			if got != tc.kept {
				t.Fatalf("kept = %v, want %v (closed %d, index %d)", got, tc.kept, len(tb.closed), len(tb.closedIx))
			}
			if !tc.kept && len(tb.closedIx) != 0 {
				t.Fatalf("closedIx not cleaned: %v", tb.closedIx)
			}
		})
	}
}

func TestTableGCDropsOnlyOld(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 10, HistoryTTL: time.Minute, MaxHistory: 10})
	for i := uint64(1); i <= 3; i++ {
		at := time.Unix(1000+int64(i)*60, 0) // closed at 1060, 1120, 1180
		tbEstablished(t, tb, i, at.Add(-time.Second))
		tb.Apply([]Event{tbClose(i, at)})
	}
	tb.GC(time.Unix(1180, 1)) // 1060 and 1120 are older than a minute by then
	if len(tb.closed) != 1 || tb.closed[0].Cookie != 3 {
		t.Fatalf("closed after GC = %d entries, want only cookie 3", len(tb.closed))
	}
	if tb.closedIx[1] != nil || tb.closedIx[2] != nil || tb.closedIx[3] == nil {
		t.Fatalf("closedIx = %v, want only cookie 3", tb.closedIx)
	}
}

func TestTableMaxHistory(t *testing.T) {
	tests := []struct {
		max  int
		want []uint64
	}{
		{0, nil},
		{-1, nil},
		{1, []uint64{4}},
		{2, []uint64{3, 4}},
		{10, []uint64{1, 2, 3, 4}},
	}
	for _, tc := range tests {
		tb := NewTable(TableConfig{MaxConns: 10, HistoryTTL: time.Hour, MaxHistory: tc.max})
		for i := uint64(1); i <= 4; i++ {
			at := time.Unix(1000+int64(i), 0)
			tbEstablished(t, tb, i, at)
			tb.Apply([]Event{tbClose(i, at.Add(time.Millisecond))})
		}
		var got []uint64
		for _, c := range tb.closed {
			got = append(got, c.Cookie)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("MaxHistory %d: closed = %v, want %v", tc.max, got, tc.want)
		}
		if len(tb.closedIx) != len(tc.want) {
			t.Errorf("MaxHistory %d: closedIx has %d entries, want %d", tc.max, len(tb.closedIx), len(tc.want))
		}
		if tb.Len() != 0 {
			t.Errorf("MaxHistory %d: %d live connections, want 0", tc.max, tb.Len())
		}
	}
}

func TestTableMaxConns(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 2, HistoryTTL: time.Hour, MaxHistory: 10})
	tb.Apply([]Event{
		tbStateEv(1, tbT0, StateClose, StateSynSent, "10.0.0.1:1", "10.0.0.2:80"),
		tbStateEv(2, tbT0, StateClose, StateSynSent, "10.0.0.1:2", "10.0.0.2:80"),
		tbStateEv(3, tbT0, StateClose, StateSynSent, "10.0.0.1:3", "10.0.0.2:80"),
		{Kind: KindRetransmit, Time: tbT1, Cookie: 4, Family: FamilyIPv4},
		// Events for known connections still apply when the table is full.
		tbStateEv(1, tbT1, StateSynSent, StateEstablished, "10.0.0.1:1", "10.0.0.2:80"),
	})
	if tb.Len() != 2 {
		t.Fatalf("Len = %d, want 2", tb.Len())
	}
	if tb.conns[3] != nil || tb.conns[4] != nil {
		t.Fatal("connections beyond MaxConns were added")
	}
	if got := tb.Stats().DroppedFull; got != 2 {
		t.Fatalf("DroppedFull = %d, want 2", got)
	}
	if tb.conns[1].State != StateEstablished {
		t.Fatalf("cookie 1 state = %v, want ESTABLISHED", tb.conns[1].State)
	}
	// A snapshot of a new socket is refused too.
	d := &Decoder{HZ: 250}
	ev, ok := d.ObservedEvent(&bpf.GhostconnSockRec{Cookie: 9, Family: 2, State: 1}, tbT2, 1, false)
	if !ok {
		t.Fatal("ObservedEvent refused a valid record")
	}
	tb.Apply([]Event{ev})
	if got := tb.Stats().DroppedFull; got != 3 || tb.conns[9] != nil {
		t.Fatalf("DroppedFull = %d (cookie 9 present: %v), want 3 and absent", got, tb.conns[9] != nil)
	}
	// Closing one frees a slot.
	tb.Apply([]Event{tbClose(2, tbT2), tbStateEv(3, tbT3, StateClose, StateSynSent, "10.0.0.1:3", "10.0.0.2:80")})
	if tb.conns[3] == nil || tb.Len() != 2 {
		t.Fatalf("after freeing a slot: Len %d, cookie 3 present %v", tb.Len(), tb.conns[3] != nil)
	}
}

func TestTableZeroCookie(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbStateEv(0, tbT0, StateClose, StateSynSent, "10.0.0.1:1", "10.0.0.2:80")})
	if tb.Len() != 0 {
		t.Fatalf("Len = %d, want 0 for cookie 0", tb.Len())
	}
	if got := tb.Stats().Unknown; got != 1 {
		t.Fatalf("Unknown = %d, want 1", got)
	}
}

func TestTableCloseEvent(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tb.SetHolders([]bpf.GhostconnHolderRec{
		{Cookie: 1, Ino: 900, Pid: 10, Ppid: 1, Fd: 3, Comm: tbComm("parent")},
		{Cookie: 1, Ino: 900, Pid: 11, Ppid: 10, Fd: 4, Comm: tbComm("child")},
		{Cookie: 1, Ino: 900, Pid: 10, Ppid: 1, Fd: 5, Comm: tbComm("parent")},
	}, tbT1)
	if len(tb.conns[1].Holders) != 3 {
		t.Fatalf("Holders = %+v, want 3", tb.conns[1].Holders)
	}
	tb.Apply([]Event{{
		Kind: KindClose, Time: tbT2, Cookie: 1, Inode: 900, Family: FamilyIPv4,
		Task:  &Task{PID: 10, PPID: 1, Comm: "parent"},
		Close: Close{FD: 3, Refs: 3, Op: "dup2"},
	}})
	c := tb.conns[1]
	want := &CloseRecord{PID: 10, PPID: 1, Comm: "parent", FD: 3, At: tbT2, RefsLeft: 2, Op: "dup2"}
	if !reflect.DeepEqual(c.ClosedBy, want) {
		t.Fatalf("ClosedBy = %+v, want %+v", c.ClosedBy, want)
	}
	wantH := []Holder{
		{PID: 11, PPID: 10, Comm: "child", FD: 4},
		{PID: 10, PPID: 1, Comm: "parent", FD: 5},
	}
	if !reflect.DeepEqual(c.Holders, wantH) {
		t.Fatalf("Holders = %+v, want %+v", c.Holders, wantH)
	}
	if !c.LastUpdate.Equal(tbT2) {
		t.Fatalf("LastUpdate = %v, want %v", c.LastUpdate, tbT2)
	}
	if c.State != StateEstablished || tb.Len() != 1 {
		t.Fatalf("a close with references left changed the state: %v, Len %d", c.State, tb.Len())
	}
	if got := tb.Stats().Applied[KindClose]; got != 1 {
		t.Fatalf("Applied[close] = %d, want 1", got)
	}
}

func TestTableCloseSetsInode(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tb.Apply([]Event{{
		Kind: KindClose, Time: tbT1, Cookie: 1, Inode: 555,
		Task: &Task{PID: 1}, Close: Close{FD: 3, Refs: 2, Op: "close"},
	}})
	if tb.conns[1].Inode != 555 || tb.byInode[555] != 1 {
		t.Fatalf("Inode = %d, byInode = %v", tb.conns[1].Inode, tb.byInode)
	}
	// A later event that only knows the inode finds the connection.
	tb.Apply([]Event{{
		Kind: KindSockopt, Time: tbT2, Inode: 555,
		Sockopt: Sockopt{Level: solSocket, Name: soKeepalive, Value: 1},
	}})
	if !tb.conns[1].Settings.Keepalive {
		t.Fatal("sockopt by inode did not reach the connection")
	}
	if got := tb.Stats().Unknown; got != 0 {
		t.Fatalf("Unknown = %d, want 0", got)
	}
}

func TestTableUnknownSocket(t *testing.T) {
	tests := []struct {
		name string
		ev   Event
	}{
		{"close", Event{Kind: KindClose, Time: tbT0, Cookie: 77, Task: &Task{PID: 1}, Close: Close{FD: 3, Refs: 2, Op: "close"}}},
		{"sockopt", Event{Kind: KindSockopt, Time: tbT0, Cookie: 77, Sockopt: Sockopt{Level: solTCP, Name: tcpKeepIdle, Value: 30}}},
		{"close by unknown inode", Event{Kind: KindClose, Time: tbT0, Inode: 12, Task: &Task{PID: 1}, Close: Close{FD: 3, Refs: 2, Op: "close"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tbNew(t)
			tbEstablished(t, tb, 1, tbT0)
			tb.Apply([]Event{tc.ev})
			s := tb.Stats()
			if s.Unknown != 1 {
				t.Fatalf("Unknown = %d, want 1", s.Unknown)
			}
			if tb.Len() != 1 || tb.conns[77] != nil {
				t.Fatalf("unknown socket created a connection: Len %d", tb.Len())
			}
			if s.Applied[tc.ev.Kind] != 1 {
				t.Fatalf("Applied[%v] = %d, want 1", tc.ev.Kind, s.Applied[tc.ev.Kind])
			}
		})
	}
}

func TestTableSockopt(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	who := &Task{PID: 300, Comm: "app"}
	opt := func(level, name, value int32) Event {
		return Event{Kind: KindSockopt, Time: tbT1, Cookie: 1, Task: who, Sockopt: Sockopt{Level: level, Name: name, Value: value}}
	}
	tb.Apply([]Event{
		opt(solSocket, soKeepalive, 1),
		opt(solTCP, tcpKeepIdle, 30),
		opt(solTCP, tcpKeepIntvl, 10),
		opt(solTCP, tcpKeepCnt, 4),
		opt(solTCP, tcpUserTimeout, 5000),
		opt(solTCP, 1, 1),       // TCP_NODELAY: ignored
		opt(solSocket, 7, 4096), // SO_SNDBUF: ignored
	})
	c := tb.conns[1]
	want := SockSettings{Keepalive: true, KeepIdle: 30 * time.Second, KeepInterval: 10 * time.Second, KeepCount: 4, UserTimeout: 5 * time.Second}
	if c.Settings != want {
		t.Fatalf("Settings = %+v, want %+v", c.Settings, want)
	}
	if c.SettingsBy != who {
		t.Fatalf("SettingsBy = %+v, want %+v", c.SettingsBy, who)
	}
	tb.Apply([]Event{opt(solSocket, soKeepalive, 0)})
	if c.Settings.Keepalive {
		t.Fatal("SO_KEEPALIVE=0 did not turn keepalive off")
	}

	v := tb.List(tbT2, ListOptions{})[0]
	if v.UserTimeoutSeconds != 5 {
		t.Fatalf("UserTimeoutSeconds = %v, want 5", v.UserTimeoutSeconds)
	}
	if v.Keepalive.Source != "socket" || v.Keepalive.IdleSeconds != 30 || v.Keepalive.Count != 4 {
		t.Fatalf("Keepalive view = %+v", v.Keepalive)
	}
}

func TestTableRetransmitAndKeepalive(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	rt := func(at time.Time, n uint32, probes uint8) Event {
		return Event{
			Kind: KindRetransmit, Time: at, Cookie: 1,
			Settings: SockSettings{Keepalive: true, HaveKeepalive: true},
			Counters: TCPCounters{Retransmits: n, TotalRetrans: n + 10, ProbesOut: probes, HaveCounters: true},
		}
	}
	tb.Apply([]Event{rt(tbT1, 1, 0), rt(tbT2, 2, 0)})
	c := tb.conns[1]
	if c.RetransmitEvents != 2 || !c.RetransSince.Equal(tbT1) || c.Counters.Retransmits != 2 || c.Counters.TotalRetrans != 12 {
		t.Fatalf("after retransmits: events %d since %v counters %+v", c.RetransmitEvents, c.RetransSince, c.Counters)
	}
	if !c.Settings.Keepalive {
		t.Fatal("retransmit event did not carry settings")
	}
	tb.Apply([]Event{{
		Kind: KindKeepalive, Time: tbT3, Cookie: 1,
		Counters: TCPCounters{HaveCounters: true},
	}})
	if c.KeepaliveFirings != 1 || !c.LastKeepalive.Equal(tbT3) || !c.RetransSince.IsZero() {
		t.Fatalf("after keepalive: firings %d last %v retransSince %v", c.KeepaliveFirings, c.LastKeepalive, c.RetransSince)
	}
	if !c.LastUpdate.Equal(tbT3) {
		t.Fatalf("LastUpdate = %v, want %v", c.LastUpdate, tbT3)
	}
}

func TestTableHistoryBound(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	for i := 0; i < 30; i++ {
		from, to := StateEstablished, StateCloseWait
		if i%2 == 1 {
			from, to = to, from
		}
		tb.Apply([]Event{tbStateEv(1, tbT0.Add(time.Duration(i+1)*time.Second), from, to, "10.0.0.1:40000", "10.0.0.2:443")})
	}
	h := tb.conns[1].History
	if len(h) != maxTransitions {
		t.Fatalf("len(History) = %d, want %d", len(h), maxTransitions)
	}
	if last := h[len(h)-1]; !last.At.Equal(tbT0.Add(30 * time.Second)) {
		t.Fatalf("newest transition at %v, want %v", last.At, tbT0.Add(30*time.Second))
	}
	if first := h[0]; !first.At.Equal(tbT0.Add(15 * time.Second)) {
		t.Fatalf("oldest kept transition at %v, want %v", first.At, tbT0.Add(15*time.Second))
	}
}

// ---- reconcile ----

func tbSockRec(cookie uint64, st State) bpf.GhostconnSockRec {
	return bpf.GhostconnSockRec{
		Cookie: cookie,
		Ino:    1000 + cookie,
		Netns:  tbNetns,
		Uid:    1000,
		Family: 2,
		State:  uint8(st),
		Full:   1,
		Sport:  22,
		Dport:  50000,
		Saddr:  [16]uint8{192, 168, 1, 1},
		Daddr:  [16]uint8{192, 168, 1, 2},
	}
}

func tbObserve(t *testing.T, r bpf.GhostconnSockRec, at time.Time, gen uint64, seed bool) Event {
	t.Helper()
	ev, ok := (&Decoder{HZ: 250}).ObservedEvent(&r, at, gen, seed)
	if !ok {
		t.Fatalf("ObservedEvent refused %+v", r)
	}
	return ev
}

func TestObservedEvent(t *testing.T) {
	d := &Decoder{HZ: 250}
	r := tbSockRec(10, StateEstablished)
	r.Tcp.Keepalive = 1
	r.Tcp.KaTime = 250 * 60
	r.Tcp.KaIntvl = 250 * 5
	r.Tcp.KaProbes = 3
	r.Tcp.UserTimeoutMs = 1500
	r.NetKaTime = 250 * 7200
	r.NetKaIntvl = 250 * 75
	r.NetKaProbes = 9
	r.NetRetries2 = 15
	r.SendAgeJiffies = 250 * 3
	r.RecvAgeJiffies = 250 * 2
	r.RetransAgeMs = 1000
	r.Tcp.Retransmits = 2
	r.Tcp.RtoJiffies = 100
	r.SendQueue, r.RecvQueue = 10, 20
	ev, ok := d.ObservedEvent(&r, tbT0, 3, true)
	if !ok {
		t.Fatal("ObservedEvent refused a valid record")
	}
	if ev.Kind != KindObserved || !ev.Time.Equal(tbT0) || ev.Cookie != 10 || ev.Inode != 1010 || ev.State != StateEstablished {
		t.Fatalf("event = %+v", ev)
	}
	if ev.Local.String() != "192.168.1.1:22" || ev.Remote.String() != "192.168.1.2:50000" {
		t.Fatalf("tuple = %s -> %s", ev.Local, ev.Remote)
	}
	wantO := Observation{
		Gen: 3, Seed: true, UID: 1000, Full: true,
		Defaults:   NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15},
		SendAge:    3 * time.Second,
		RecvAge:    2 * time.Second,
		RetransAge: time.Second,
		SendQueue:  10, RecvQueue: 20,
	}
	if *ev.Observed != wantO {
		t.Fatalf("Observed = %+v, want %+v", *ev.Observed, wantO)
	}
	wantS := SockSettings{Keepalive: true, KeepIdle: time.Minute, KeepInterval: 5 * time.Second, KeepCount: 3, UserTimeout: 1500 * time.Millisecond, HaveKeepalive: true}
	if ev.Settings != wantS {
		t.Fatalf("Settings = %+v, want %+v", ev.Settings, wantS)
	}
	if ev.Counters.Retransmits != 2 || ev.Counters.RTO != 400*time.Millisecond || !ev.Counters.HaveCounters {
		t.Fatalf("Counters = %+v", ev.Counters)
	}

	// Not full (time-wait, request sockets): no settings or counters.
	r.Full = 0
	ev, _ = d.ObservedEvent(&r, tbT0, 3, true)
	if ev.Settings != (SockSettings{}) || ev.Counters != (TCPCounters{}) || ev.Observed.Full {
		t.Fatalf("partial record carried settings: %+v %+v", ev.Settings, ev.Counters)
	}

	// A request socket is reported as SYN_RECV.
	ev, _ = d.ObservedEvent(&bpf.GhostconnSockRec{Cookie: 1, Family: 10, State: uint8(StateNewSynRecv)}, tbT0, 1, false)
	if ev.State != StateSynRecv || ev.Family != FamilyIPv6 {
		t.Fatalf("NEW_SYN_RECV became %v %v", ev.State, ev.Family)
	}

	for _, bad := range []bpf.GhostconnSockRec{
		{Cookie: 1, Family: 0, State: 1},
		{Cookie: 1, Family: 1, State: 1},
		{Cookie: 1, Family: 2, State: 0},
		{Cookie: 1, Family: 2, State: 13},
		{Cookie: 0, Family: 2, State: 1},
	} {
		if _, ok := d.ObservedEvent(&bad, tbT0, 1, false); ok {
			t.Errorf("ObservedEvent accepted %+v", bad)
		}
	}
}

func TestReconcileSeed(t *testing.T) {
	for _, seed := range []bool{true, false} {
		tb := tbNew(t)
		r := tbSockRec(10, StateEstablished)
		r.NetKaTime = 250 * 7200
		r.NetKaIntvl = 250 * 75
		r.NetKaProbes = 9
		r.SendAgeJiffies = 250 * 3
		r.RecvAgeJiffies = 250 * 2
		r.Tcp.Retransmits = 1
		r.RetransAgeMs = 4000
		r.SendQueue = 7
		tb.Apply([]Event{tbObserve(t, r, tbT0, 1, seed)})
		c := tb.conns[10]
		if c == nil {
			t.Fatalf("seed=%v: snapshot did not create the connection", seed)
		}
		if c.State != StateEstablished || c.UID != 1000 || !c.HasUID || c.Inode != 1010 || tb.byInode[1010] != 10 {
			t.Fatalf("seed=%v: conn = %+v", seed, c)
		}
		if !c.FirstSeen.Equal(tbT0) || !c.StateSince.Equal(tbT0) {
			t.Fatalf("seed=%v: FirstSeen %v StateSince %v", seed, c.FirstSeen, c.StateSince)
		}
		if !c.LastData.Equal(tbT0.Add(-2*time.Second)) || !c.LastDataAt.Equal(tbT0) {
			t.Fatalf("seed=%v: LastData %v LastDataAt %v", seed, c.LastData, c.LastDataAt)
		}
		if !c.RetransSince.Equal(tbT0.Add(-4 * time.Second)) {
			t.Fatalf("seed=%v: RetransSince = %v", seed, c.RetransSince)
		}
		if c.SendQueue != 7 {
			t.Fatalf("seed=%v: SendQueue = %d", seed, c.SendQueue)
		}
		wantD := NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9}
		if tb.defaults[tbNetns] != wantD {
			t.Fatalf("seed=%v: defaults = %+v, want %+v", seed, tb.defaults[tbNetns], wantD)
		}
		want := []Transition{{At: tbT0, To: StateEstablished, Source: "snapshot"}}
		if !reflect.DeepEqual(c.History, want) {
			t.Fatalf("seed=%v: History = %+v", seed, c.History)
		}
		wantAdds := uint64(1)
		if seed {
			wantAdds = 0
		}
		if s := tb.Stats(); s.ReconcileAdds != wantAdds || s.ReconcileFix != 0 || s.Applied[KindObserved] != 1 {
			t.Fatalf("seed=%v: stats = %+v", seed, s)
		}
	}
}

func TestReconcileFix(t *testing.T) {
	snap := tbT2
	tests := []struct {
		name      string
		eventAt   time.Time
		snapState State
		wantState State
		wantFix   uint64
	}{
		{"event older than snapshot", tbT1, StateCloseWait, StateCloseWait, 1},
		{"event at snapshot time", snap, StateCloseWait, StateCloseWait, 1},
		{"event newer than snapshot", tbT3, StateCloseWait, StateEstablished, 0},
		{"event 1ns newer than snapshot", snap.Add(time.Nanosecond), StateCloseWait, StateEstablished, 0},
		{"same state", tbT1, StateEstablished, StateEstablished, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tbNew(t)
			tbEstablished(t, tb, 10, tc.eventAt)
			tb.Apply([]Event{tbObserve(t, tbSockRec(10, tc.snapState), snap, 2, false)})
			c := tb.conns[10]
			if c.State != tc.wantState {
				t.Fatalf("State = %v, want %v", c.State, tc.wantState)
			}
			s := tb.Stats()
			if s.ReconcileFix != tc.wantFix || s.ReconcileAdds != 0 {
				t.Fatalf("ReconcileFix = %d, ReconcileAdds = %d, want %d, 0", s.ReconcileFix, s.ReconcileAdds, tc.wantFix)
			}
			if tc.wantFix == 1 {
				last := c.History[len(c.History)-1]
				want := Transition{At: snap, From: StateEstablished, To: tc.snapState, Source: "reconcile"}
				if !reflect.DeepEqual(last, want) {
					t.Fatalf("last transition = %+v, want %+v", last, want)
				}
				if !c.StateSince.Equal(snap) {
					t.Fatalf("StateSince = %v, want %v", c.StateSince, snap)
				}
			} else if len(c.History) != 1 {
				t.Fatalf("History = %+v, want only the kernel transition", c.History)
			}
			// Either way the snapshot marks the connection seen.
			if c.observedGen != 2 || !c.HasUID {
				t.Fatalf("observedGen = %d HasUID = %v", c.observedGen, c.HasUID)
			}
		})
	}
}

func TestReconcileSweep(t *testing.T) {
	const otherNetns = 4026532000
	start := tbT2
	tb := tbNew(t)
	// 1: seen by the snapshot of generation 2.
	tbEstablished(t, tb, 1, tbT0)
	// 2: not seen, last event before the snapshot: gone.
	tbEstablished(t, tb, 2, tbT0)
	// 3: not seen, in a namespace the snapshot did not cover.
	ev3 := tbStateEv(3, tbT0, StateSynSent, StateEstablished, "10.0.0.1:3", "10.0.0.2:3")
	ev3.Netns = otherNetns
	// 4: not seen, but an event after the snapshot began vouches for it.
	ev4 := tbStateEv(4, tbT3, StateSynSent, StateEstablished, "10.0.0.1:4", "10.0.0.2:4")
	// 5: seen by the previous generation only: gone.
	ev5 := tbObserve(t, tbSockRec(5, StateEstablished), tbT0, 1, true)
	// 6: not seen, last event exactly at the snapshot start: gone.
	ev6 := tbStateEv(6, start, StateSynSent, StateEstablished, "10.0.0.1:6", "10.0.0.2:6")
	tb.Apply([]Event{ev3, ev4, ev5, ev6, tbObserve(t, tbSockRec(1, StateEstablished), start, 2, false)})

	tb.Sweep(2, start, map[uint32]bool{tbNetns: true})

	for _, ck := range []uint64{1, 3, 4} {
		if tb.conns[ck] == nil {
			t.Errorf("cookie %d was swept, want kept", ck)
		}
	}
	for _, ck := range []uint64{2, 5, 6} {
		if tb.conns[ck] != nil {
			t.Errorf("cookie %d was kept, want swept", ck)
			continue
		}
		c := tb.closedIx[ck]
		if c == nil {
			t.Errorf("cookie %d not in the closed history", ck)
			continue
		}
		if !c.ClosedAt.Equal(start) || c.State != StateClose {
			t.Errorf("cookie %d: ClosedAt %v state %v", ck, c.ClosedAt, c.State)
		}
		last := c.History[len(c.History)-1]
		if want := (Transition{At: start, From: StateEstablished, To: StateClose, Source: "reconcile"}); !reflect.DeepEqual(last, want) {
			t.Errorf("cookie %d: last transition %+v, want %+v", ck, last, want)
		}
	}
	if got := tb.Stats().ReconcileGone; got != 3 {
		t.Fatalf("ReconcileGone = %d, want 3", got)
	}
	if tb.byInode[1005] != 0 {
		t.Fatalf("swept connection left its inode indexed: %v", tb.byInode)
	}
}

func TestReconcileNoResurrect(t *testing.T) {
	tests := []struct {
		name     string
		closedAt time.Time
		snapAt   time.Time
		state    State
		want     bool // the snapshot creates a live connection
	}{
		{"closed after snapshot began", tbT3, tbT2, StateEstablished, false},
		{"closed at snapshot start", tbT2, tbT2, StateEstablished, false},
		{"closed before snapshot began", tbT1, tbT2, StateEstablished, true},
		// The full socket closes when it enters TIME_WAIT; the tw socket
		// keeps the cookie and is a legitimate find.
		{"time-wait after close", tbT3, tbT2, StateTimeWait, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tbNew(t)
			tbEstablished(t, tb, 10, tbT0)
			tb.Apply([]Event{tbClose(10, tc.closedAt)})
			r := tbSockRec(10, tc.state)
			tb.Apply([]Event{tbObserve(t, r, tc.snapAt, 2, false)})
			if got := tb.conns[10] != nil; got != tc.want {
				t.Fatalf("live after snapshot = %v, want %v", got, tc.want)
			}
			if tb.closedIx[10] == nil {
				t.Fatal("closed history entry lost")
			}
			wantAdds := uint64(0)
			if tc.want {
				wantAdds = 1
			}
			if got := tb.Stats().ReconcileAdds; got != wantAdds {
				t.Fatalf("ReconcileAdds = %d, want %d", got, wantAdds)
			}
		})
	}
}

func tbComm(s string) [16]int8 {
	var c [16]int8
	for i := 0; i < len(s) && i < len(c); i++ {
		c[i] = int8(s[i])
	}
	return c
}

func TestSetHolders(t *testing.T) {
	at := tbT2
	tb := tbNew(t)
	// 1: found by cookie; its inode comes from the holder.
	tbEstablished(t, tb, 1, tbT0)
	// 2: known inode, the holder record has no cookie.
	tb.Apply([]Event{tbObserve(t, tbSockRec(2, StateEstablished), tbT0, 1, true)}) // inode 1002
	// 3: one fd closed after the walk began, one still held.
	tbEstablished(t, tb, 3, tbT0)
	// 4: one fd closed before the walk began: the walk's view stands.
	tbEstablished(t, tb, 4, tbT0)
	// 5: held before, no longer found.
	tbEstablished(t, tb, 5, tbT0)
	tb.conns[5].Holders = []Holder{{PID: 99, FD: 9}}
	tb.Apply([]Event{
		{Kind: KindClose, Time: tbT3, Cookie: 3, Task: &Task{PID: 12}, Close: Close{FD: 5, Refs: 2, Op: "close"}},
		{Kind: KindClose, Time: tbT1, Cookie: 4, Task: &Task{PID: 14}, Close: Close{FD: 7, Refs: 2, Op: "close"}},
	})

	tb.SetHolders([]bpf.GhostconnHolderRec{
		{Cookie: 1, Ino: 600, Pid: 10, Ppid: 1, Fd: 3, Comm: tbComm("nginx")},
		{Cookie: 0, Ino: 1002, Pid: 11, Ppid: 1, Fd: 4, Comm: tbComm("redis")},
		{Cookie: 3, Ino: 603, Pid: 12, Ppid: 1, Fd: 5, Comm: tbComm("closer")},
		{Cookie: 3, Ino: 603, Pid: 13, Ppid: 12, Fd: 6, Comm: tbComm("keeper")},
		{Cookie: 4, Ino: 604, Pid: 14, Ppid: 1, Fd: 7, Comm: tbComm("reopen")},
		{Cookie: 0, Ino: 4242, Pid: 15, Fd: 8, Comm: tbComm("stranger")},
	}, at)

	want := map[uint64][]Holder{
		1: {{PID: 10, PPID: 1, Comm: "nginx", FD: 3}},
		2: {{PID: 11, PPID: 1, Comm: "redis", FD: 4}},
		3: {{PID: 13, PPID: 12, Comm: "keeper", FD: 6}},
		4: {{PID: 14, PPID: 1, Comm: "reopen", FD: 7}},
		5: {},
	}
	for ck, w := range want {
		c := tb.conns[ck]
		if len(c.Holders) != len(w) || (len(w) > 0 && !reflect.DeepEqual(c.Holders, w)) {
			t.Errorf("cookie %d: Holders = %+v, want %+v", ck, c.Holders, w)
		}
		if !c.HoldersAt.Equal(at) {
			t.Errorf("cookie %d: HoldersAt = %v, want %v", ck, c.HoldersAt, at)
		}
	}
	if tb.conns[1].Inode != 600 || tb.byInode[600] != 1 {
		t.Errorf("cookie 1: Inode = %d, byInode[600] = %d, want 600 -> 1", tb.conns[1].Inode, tb.byInode[600])
	}
	if tb.conns[2].Inode != 1002 {
		t.Errorf("cookie 2: Inode = %d, want 1002", tb.conns[2].Inode)
	}
	if tb.Len() != 5 {
		t.Errorf("Len = %d, want 5 (a holder of an unknown socket must not add one)", tb.Len())
	}
}

// A cookie match wins over the inode fallback.
func TestSetHoldersCookieBeforeInode(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbObserve(t, tbSockRec(2, StateEstablished), tbT0, 1, true)}) // inode 1002
	tb.SetHolders([]bpf.GhostconnHolderRec{
		{Cookie: 2, Ino: 1002, Pid: 20, Fd: 3, Comm: tbComm("bycookie")},
		{Cookie: 0, Ino: 1002, Pid: 21, Fd: 4, Comm: tbComm("byinode")},
	}, tbT1)
	want := []Holder{{PID: 20, Comm: "bycookie", FD: 3}}
	if got := tb.conns[2].Holders; !reflect.DeepEqual(got, want) {
		t.Fatalf("Holders = %+v, want %+v", got, want)
	}
}

func TestEffectiveKeepalive(t *testing.T) {
	d := NetDefaults{KeepIdle: 7200 * time.Second, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15}
	tests := []struct {
		name string
		s    SockSettings
		d    NetDefaults
		want Keepalive
	}{
		{"all defaults, off", SockSettings{}, d, Keepalive{Enabled: false, IdleSeconds: 7200, IntervalSeconds: 75, Count: 9, Source: "sysctl"}},
		{"enabled, defaults", SockSettings{Keepalive: true}, d, Keepalive{Enabled: true, IdleSeconds: 7200, IntervalSeconds: 75, Count: 9, Source: "sysctl"}},
		{"idle from socket", SockSettings{Keepalive: true, KeepIdle: 30 * time.Second}, d, Keepalive{Enabled: true, IdleSeconds: 30, IntervalSeconds: 75, Count: 9, Source: "socket"}},
		{"interval from socket", SockSettings{KeepInterval: 500 * time.Millisecond}, d, Keepalive{IdleSeconds: 7200, IntervalSeconds: 0.5, Count: 9, Source: "socket"}},
		{"count from socket", SockSettings{KeepCount: 3}, d, Keepalive{IdleSeconds: 7200, IntervalSeconds: 75, Count: 3, Source: "socket"}},
		{"all from socket", SockSettings{Keepalive: true, KeepIdle: time.Minute, KeepInterval: 10 * time.Second, KeepCount: 5}, d, Keepalive{Enabled: true, IdleSeconds: 60, IntervalSeconds: 10, Count: 5, Source: "socket"}},
		{"user timeout is not keepalive", SockSettings{UserTimeout: 5 * time.Second}, d, Keepalive{IdleSeconds: 7200, IntervalSeconds: 75, Count: 9, Source: "sysctl"}},
		{"no defaults known", SockSettings{Keepalive: true}, NetDefaults{}, Keepalive{Enabled: true, Source: "sysctl"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EffectiveKeepalive(tc.s, tc.d); got != tc.want {
				t.Fatalf("EffectiveKeepalive = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestConnIdle(t *testing.T) {
	since := time.Unix(1000, 0)
	now := time.Unix(1010, 0)
	tests := []struct {
		name     string
		state    State
		lastData time.Time
		now      time.Time
		want     time.Duration
		ok       bool
	}{
		{"established, never snapshotted", StateEstablished, time.Time{}, now, 10 * time.Second, true},
		{"established, from LastData", StateEstablished, time.Unix(1005, 0), now, 5 * time.Second, true},
		{"close-wait, from LastData", StateCloseWait, time.Unix(1007, 0), now, 3 * time.Second, true},
		{"close-wait, never snapshotted", StateCloseWait, time.Time{}, now, 10 * time.Second, true},
		{"now before last", StateEstablished, time.Unix(1020, 0), now, 0, true},
		{"syn-sent", StateSynSent, time.Unix(1005, 0), now, 0, false},
		{"fin-wait1", StateFinWait1, time.Unix(1005, 0), now, 0, false},
		{"time-wait", StateTimeWait, time.Time{}, now, 0, false},
		{"listen", StateListen, time.Time{}, now, 0, false},
		{"close", StateClose, time.Unix(1005, 0), now, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Conn{State: tc.state, StateSince: stampOf(since), LastData: stampOf(tc.lastData)}
			got, ok := c.Idle(tc.now)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("Idle = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
			var uid uint32
			var idle float64
			v := c.view(tc.now, NetDefaults{}, false, time.Time{}, &uid, &idle)
			switch {
			case tc.ok && (v.IdleSeconds == nil || *v.IdleSeconds != tc.want.Seconds()):
				t.Fatalf("view IdleSeconds = %v, want %v", v.IdleSeconds, tc.want.Seconds())
			case !tc.ok && v.IdleSeconds != nil:
				t.Fatalf("view IdleSeconds = %v, want nil", *v.IdleSeconds)
			}
		})
	}
}

func TestSummarizeByState(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tbEstablished(t, tb, 2, tbT0)
	tb.Apply([]Event{tbStateEv(3, tbT0, StateClose, StateSynSent, "10.0.0.1:3", "10.0.0.2:3")})
	want := map[State]int{StateEstablished: 2, StateSynSent: 1}
	if got := tb.Summarize(nil).ByState; !reflect.DeepEqual(got, want) {
		t.Fatalf("Summarize ByState = %v, want %v", got, want)
	}
}

// TestClosedHistoryReusesConns churns short connections through a small
// closed history: connections that leave it are reused for new ones, and
// neither the history nor views taken earlier show anything of a
// connection's previous occupant.
func TestClosedHistoryReusesConns(t *testing.T) {
	tb := NewTable(TableConfig{MaxConns: 1 << 10, MaxHistory: 16, HistoryTTL: time.Hour})
	at := time.Unix(1000, 0)
	evs := foldedLifecycle(at)
	seen := map[*Conn]bool{}
	tb.hook = func(_ *Event, c *Conn) { seen[c] = true }
	var early []ConnView
	for n := uint64(1); n <= 200; n++ {
		for i := range evs {
			evs[i].Cookie = 2*n + uint64(i)
			evs[i].Local = netip.AddrPortFrom(evs[i].Local.Addr(), uint16(1000+2*n+uint64(i)))
		}
		tb.Apply(evs)
		if n == 10 {
			early = tb.List(at, ListOptions{Closed: true, History: true})
		}
	}
	if len(seen) >= 400 {
		t.Fatalf("400 connections used %d Conns: none was reused", len(seen))
	}
	views := tb.List(at, ListOptions{Closed: true, History: true})
	if len(views) == 0 || len(views) > 16 {
		t.Fatalf("closed history holds %d connections, want 1..16", len(views))
	}
	check := func(what string, vs []ConnView) {
		t.Helper()
		for _, v := range vs {
			if want := fmt.Sprintf("127.0.0.1:%d", 1000+v.Cookie); v.Local != want && v.Remote != want {
				t.Errorf("%s: cookie %d has local %s remote %s, want one of them %s", what, v.Cookie, v.Local, v.Remote, want)
			}
			from := StateFinWait1 // the connecting end
			if v.Cookie%2 == 1 {
				from = StateCloseWait
			}
			if len(v.History) != 1 || v.History[0].From != from || v.History[0].To != StateClose {
				t.Errorf("%s: cookie %d has history %+v, want only %s to CLOSE", what, v.Cookie, v.History, from)
			}
			if v.ClosedAt == nil {
				t.Errorf("%s: cookie %d in the closed history has no close time", what, v.Cookie)
			}
		}
	}
	check("now", views)
	check("view taken at connection 10", early)
	if last := early[len(early)-1].Cookie; last != 21 {
		t.Errorf("newest connection in the view taken at connection 10 is cookie %d, want 21", last)
	}
}

// TestTableKeepaliveArmedThroughHolder: where keepalive is set through a
// holder's fd (no bpf_setsockopt in iter/tcp), the setsockopt hook sees
// the agent's own calls; they leave ghostconn the source, and the
// application's next setsockopt takes it back.
func TestTableKeepaliveArmedThroughHolder(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	set := SockSettings{Keepalive: true, KeepIdle: 9 * time.Second, KeepInterval: 2 * time.Second, KeepCount: 3, HaveKeepalive: true}
	opt := func(pid uint32, name, value int32) Event {
		return Event{Kind: KindSockopt, Time: tbT1, Cookie: 1, Task: &Task{PID: pid}, Sockopt: Sockopt{Level: solTCP, Name: name, Value: value}}
	}
	tb.self = 4242 // the agent's pid, as the collector sets it
	tb.Apply([]Event{
		{Kind: KindAction, Time: tbT1, Cookie: 1, State: StateEstablished, Settings: set, Action: &Action{Op: ModeKeepalive, Done: true}},
		opt(tb.self, tcpKeepIdle, 9),
	})
	if v := tb.List(tbT2, ListOptions{})[0]; v.Keepalive.Source != "ghostconn" {
		t.Fatalf("after the agent's own setsockopt: source %q, want ghostconn", v.Keepalive.Source)
	}
	tb.Apply([]Event{opt(tb.self+1, tcpKeepIdle, 60)})
	if v := tb.List(tbT2, ListOptions{})[0]; v.Keepalive.Source != "socket" || v.Keepalive.IdleSeconds != 60 {
		t.Fatalf("after the application's setsockopt: %+v, want source socket, idle 60", v.Keepalive)
	}
}

// TestListLiveIsListInChunks holds ListLive, the streamed `ghostconn ls`,
// to List: the same views in the same order, in chunks of at most
// listChunk, for every option; a connection that closes while the list
// is being written is left out of the chunks built after it closed; fn's
// error stops the listing.
func TestListLiveIsListInChunks(t *testing.T) {
	const total = 2*listChunk + 100
	tb, at := bigTable(total)
	now := at.Add(time.Second)
	for name, opts := range map[string]ListOptions{
		"all":     {},
		"history": {History: true},
		"match":   {Match: func(v *ConnView) bool { return v.Cookie%3 == 0 }},
		"none":    {Match: func(*ConnView) bool { return false }},
	} {
		want, err := json.Marshal(tb.List(now, opts))
		if err != nil {
			t.Fatal(err)
		}
		var got []json.RawMessage
		chunks := 0
		n, err := tb.ListLive(now, opts, func(vs []ConnView) error {
			chunks++
			if len(vs) == 0 || len(vs) > listChunk {
				t.Errorf("%s: a chunk of %d views", name, len(vs))
			}
			for i := range vs {
				b, err := json.Marshal(&vs[i])
				if err != nil {
					return err
				}
				got = append(got, b)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got == nil {
			got = []json.RawMessage{}
		}
		gotJSON, _ := json.Marshal(got)
		if n != len(got) || string(gotJSON) != string(want) {
			t.Errorf("%s: ListLive gave %d views (n %d) in %d chunks, not what List gives", name, len(got), n, chunks)
		}
		if name == "all" && chunks != 3 {
			t.Errorf("all: %d chunks, want 3", chunks)
		}
	}

	// The last connection closes while the first chunk is being written.
	last := uint64(total)
	i := int(last - 1)
	closing := Event{Kind: KindState, Time: now, Cookie: last, Netns: 1, Family: FamilyIPv4,
		Local:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 16), byte(i >> 8)}), uint16(i)),
		Remote:   netip.MustParseAddrPort("127.0.0.1:80"),
		OldState: StateEstablished, State: StateClose}
	n, err := tb.ListLive(now, ListOptions{}, func(vs []ConnView) error {
		if vs[0].Cookie == 1 {
			tb.Apply([]Event{closing})
		}
		for _, v := range vs {
			if v.Cookie == last {
				t.Errorf("connection %d listed after it closed", last)
			}
		}
		return nil
	})
	if err != nil || n != total-1 {
		t.Errorf("with one closed mid-list: %d views, %v; want %d", n, err, total-1)
	}
	// Once a spare has been reused, the connections are looked up again:
	// the next to last closes and a spare is taken meanwhile.
	j := i - 1
	closing.Cookie, closing.Local = last-1, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(j >> 16), byte(j >> 8)}), uint16(j))
	n, err = tb.ListLive(now, ListOptions{}, func(vs []ConnView) error {
		if vs[0].Cookie == 1 {
			tb.Apply([]Event{closing})
			tb.mu.Lock()
			tb.reuses++
			tb.mu.Unlock()
		}
		for _, v := range vs {
			if v.Cookie == last-1 {
				t.Errorf("connection %d listed after it closed (a spare reused meanwhile)", last-1)
			}
		}
		return nil
	})
	if err != nil || n != total-2 {
		t.Errorf("with a spare reused mid-list: %d views, %v; want %d", n, err, total-2)
	}

	stop := errors.New("client went away")
	calls := 0
	if _, err := tb.ListLive(now, ListOptions{}, func([]ConnView) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("fn's error: %v after %d calls, want it after 1", err, calls)
	}
}
