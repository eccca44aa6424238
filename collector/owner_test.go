package collector

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// tbOwner is a delta with an owner: pid's connect returned fd, an
// ESTABLISHED socket of cookie.
func tbOwner(cookie uint64, at time.Time, pid uint32, comm string, fd int32) Event {
	return Event{Kind: KindDelta, Time: at, Cookie: cookie, Inode: 7000 + cookie, Family: FamilyIPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:443"),
		Delta: Delta{Parts: DeltaOwner, State: StateEstablished,
			Owner: Owner{Task: &Task{PID: pid, PPID: 1, Comm: comm}, FD: fd, Op: "connect"}}}
}

func tbHolderIs(t *testing.T, what string, hs []Holder, want ...Holder) {
	t.Helper()
	if len(hs) != len(want) {
		t.Fatalf("%s: holders %+v, want %+v", what, hs, want)
	}
	for i := range want {
		h := hs[i]
		if h.PID != want[i].PID || h.PPID != want[i].PPID || h.Comm != want[i].Comm || h.FD != want[i].FD {
			t.Fatalf("%s: holder %d is %+v, want %+v", what, i, h, want[i])
		}
	}
}

// TestTableOwnerEvent: a delta's owner adds its process as a holder at
// once, once, without changing the slice a view shares; a delta of a live
// socket the table does not know announces it, one of a closed socket is
// counted and adds nothing.
func TestTableOwnerEvent(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbStateEv(1, tbT0, StateClose, StateSynSent, "10.0.0.1:40000", "10.0.0.2:443")})
	c := tb.conns[1]
	tb.Evaluate(tbT0) // clears dirty
	tb.Apply([]Event{tbOwner(1, tbT1, 42, "python3", 4)})
	want := Holder{PID: 42, PPID: 1, Comm: "python3", FD: 4}
	tbHolderIs(t, "after connect", c.Holders, want)
	if !c.dirty {
		t.Error("an owner event did not mark the connection dirty")
	}
	if c.Inode != 7001 || tb.byInode[7001] != 1 {
		t.Errorf("Inode = %d, byInode[7001] = %d; want the owner event's inode", c.Inode, tb.byInode[7001])
	}
	if c.LastUpdate.After(tbT0) {
		t.Errorf("LastUpdate = %v: an owner event is no news of the state", c.LastUpdate)
	}
	shared := c.Holders
	tb.Apply([]Event{tbOwner(1, tbT2, 42, "python3", 4), tbOwner(1, tbT2, 43, "worker", 9)})
	tbHolderIs(t, "after a repeat and a second process", c.Holders, want, Holder{PID: 43, PPID: 1, Comm: "worker", FD: 9})
	tbHolderIs(t, "the slice a view shared", shared, want)

	v := tb.List(tbT2, ListOptions{})[0]
	if !v.HoldersKnown || v.HoldersUnknownReason != "" {
		t.Errorf("view: holders_known %t reason %q, want known", v.HoldersKnown, v.HoldersUnknownReason)
	}

	before := tb.Stats().Unknown
	closed := tbOwner(98, tbT2, 42, "python3", 5)
	closed.Delta.State = StateClose
	tb.Apply([]Event{closed})
	if tb.Len() != 1 || tb.Stats().Unknown != before+1 {
		t.Errorf("delta of an unknown closed socket: Len %d, Unknown %d; want 1 and %d", tb.Len(), tb.Stats().Unknown, before+1)
	}
	tb.Apply([]Event{tbOwner(99, tbT2, 42, "python3", 5)})
	if c := tb.conns[99]; c == nil || tb.Stats().Announced != 1 || c.State != StateEstablished {
		t.Fatalf("delta of an unknown ESTABLISHED socket: %+v, announced %d; want it announced", c, tb.Stats().Announced)
	}
	tbHolderIs(t, "announced by its owner", tb.conns[99].Holders, Holder{PID: 42, PPID: 1, Comm: "python3", FD: 5})
	if n := tb.Stats().Applied[KindDelta]; n != 5 {
		t.Errorf("Applied[delta] = %d, want 5", n)
	}

	// A close of the fd (other references left) takes the holder out.
	tb.Apply([]Event{{Kind: KindClose, Time: tbT3, Cookie: 1, Task: &Task{PID: 43}, Close: Close{FD: 9, Refs: 2, Op: "close"}}})
	tbHolderIs(t, "after the worker's close", c.Holders, want)
}

// TestSetHoldersKeepsNewerOwner: a holder walk begun before an owner event
// may have passed the process before its connect returned, so it keeps
// that holder; a walk begun after the event decides alone. The walk's own
// records for the same fd replace the event's (they carry the cgroup).
func TestSetHoldersKeepsNewerOwner(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tbEstablished(t, tb, 2, tbT0)
	tb.Apply([]Event{tbOwner(1, tbT2, 42, "python3", 4), tbOwner(2, tbT2, 50, "srv", 6)})

	// Begun at tbT1, before both events: for 1 it found someone else, for
	// 2 it found the same fd.
	tb.SetHolders([]bpf.GhostconnHolderRec{
		{Cookie: 1, Ino: 601, Pid: 10, Ppid: 1, Fd: 3, Comm: tbComm("nginx")},
		{Cookie: 2, Ino: 602, Pid: 50, Ppid: 1, Fd: 6, Comm: tbComm("srv")},
	}, tbT1)
	tbHolderIs(t, "1 after an older walk", tb.conns[1].Holders,
		Holder{PID: 10, PPID: 1, Comm: "nginx", FD: 3}, Holder{PID: 42, PPID: 1, Comm: "python3", FD: 4})
	tbHolderIs(t, "2 after an older walk", tb.conns[2].Holders, Holder{PID: 50, PPID: 1, Comm: "srv", FD: 6})
	if tb.conns[2].Holders[0].ownedAt != 0 {
		t.Errorf("2: the walk's record did not replace the owner event's holder: %+v", tb.conns[2].Holders[0])
	}

	// Begun at tbT3, after the events, finding nobody: nobody it is.
	tb.SetHolders(nil, tbT3)
	for _, ck := range []uint64{1, 2} {
		tbHolderIs(t, "after a newer walk", tb.conns[ck].Holders)
		if v := tb.List(tbT3, ListOptions{})[ck-1]; !v.HoldersKnown {
			t.Errorf("cookie %d: a walk newer than the connection found no holder, yet holders_known is false", ck)
		}
	}
}

// TestHoldersNotYetKnown: a connection that appeared after the last holder
// walk, with no owner event, has holders "not yet known", with the reason;
// the next walk makes them known, even when it finds none.
func TestHoldersNotYetKnown(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT1)
	v := tb.List(tbT1, ListOptions{})[0]
	if v.HoldersKnown || !strings.Contains(v.HoldersUnknownReason, "no fd walk has run yet") {
		t.Errorf("before any walk: holders_known %t, reason %q", v.HoldersKnown, v.HoldersUnknownReason)
	}

	tb.SetHolders(nil, tbT0.Add(-time.Second))
	tbEstablished(t, tb, 2, tbT2)
	for _, v := range tb.List(tbT2, ListOptions{}) {
		if v.HoldersKnown || len(v.Holders) != 0 {
			t.Errorf("cookie %d, newer than the walk: holders_known %t, holders %+v", v.Cookie, v.HoldersKnown, v.Holders)
		}
		for _, want := range []string{"newer than the last fd walk (at " + tbT0.Add(-time.Second).Format(time.RFC3339Nano) + ")", "no connect or accept"} {
			if !strings.Contains(v.HoldersUnknownReason, want) {
				t.Errorf("cookie %d: reason %q lacks %q", v.Cookie, v.HoldersUnknownReason, want)
			}
		}
	}

	// A walk that began when the connection was first seen (a seed) saw it.
	tb.SetHolders(nil, tbT2)
	for _, v := range tb.List(tbT2, ListOptions{}) {
		if !v.HoldersKnown || v.HoldersUnknownReason != "" {
			t.Errorf("cookie %d after a walk: holders_known %t, reason %q", v.Cookie, v.HoldersKnown, v.HoldersUnknownReason)
		}
	}
	// Closed, a connection holds nothing: known.
	tbEstablished(t, tb, 3, tbT3)
	tb.Apply([]Event{tbClose(3, tbT3.Add(time.Second))})
	for _, v := range tb.List(tbT3.Add(time.Second), ListOptions{Closed: true}) {
		if v.Cookie == 3 && !v.HoldersKnown {
			t.Errorf("closed connection: holders_known false")
		}
	}
}

// BenchmarkApplyOwner is the table's cost of one delta with an owner.
func BenchmarkApplyOwner(b *testing.B) {
	tb := NewTable(TableConfig{MaxConns: 1 << 20})
	const n = 4096
	evs := make([]Event, 0, n)
	for i := range n {
		ck := uint64(i + 1)
		tb.Apply([]Event{{Kind: KindState, Time: tbT0, Cookie: ck, Family: FamilyIPv4, State: StateEstablished}})
		evs = append(evs, Event{Kind: KindDelta, Time: tbT1, Cookie: ck, Family: FamilyIPv4,
			Delta: Delta{Parts: DeltaOwner, State: StateEstablished, Owner: Owner{Task: &Task{PID: 7, Comm: "x"}, FD: int32(i), Op: "accept"}}})
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range tb.conns {
			c.Holders = nil
		}
		tb.Apply(evs)
	}
}
