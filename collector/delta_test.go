package collector

import (
	"net/netip"
	"testing"
	"time"
)

// tbMono is the monotonic reading of a fake time on a table's timeline.
func tbMono(tb *Table, at time.Time) int64 { return tb.tl.mono(at) }

// tbDelta is a delta of cookie as the kernel folds a client connection:
// ESTABLISHED at est inside connect (by pid 42's fd 4), then state at st.
func tbDelta(tb *Table, cookie uint64, est time.Time, state State, st time.Time) Event {
	d := Delta{Parts: DeltaState | DeltaOwner, State: state, EstFrom: StateSynSent,
		FirstMono: tbMono(tb, est), EstMono: tbMono(tb, est), StateMono: tbMono(tb, st), OwnerMono: tbMono(tb, est),
		Owner: Owner{Task: &Task{PID: 42, PPID: 1, Comm: "curl"}, FD: 4, Op: "connect"}}
	return Event{Kind: KindDelta, Time: st, Cookie: cookie, Netns: tbNetns, Family: FamilyIPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:443"), Delta: d}
}

func tbStates(c *Conn) []State {
	var out []State
	for _, tr := range c.History {
		out = append(out, tr.To)
	}
	return out
}

// A drained delta announces a connection with its whole folded life: the
// ESTABLISHED at its own time, the later CLOSE_WAIT, the opener and holder.
func TestDeltaAnnounces(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbDelta(tb, 1, tbT0, StateCloseWait, tbT1)})
	c := tb.conns[1]
	if c == nil {
		t.Fatal("the delta announced nothing")
	}
	if got := tbStates(c); len(got) != 2 || got[0] != StateEstablished || got[1] != StateCloseWait {
		t.Errorf("history %v, want ESTABLISHED then CLOSE_WAIT", got)
	}
	if c.State != StateCloseWait || !c.StateSince.Equal(tbT1) || !c.FirstSeen.Equal(tbT0) {
		t.Errorf("state %v since %v, first seen %v", c.State, c.StateSince, c.FirstSeen)
	}
	if c.Opener == nil || c.Opener.PID != 42 {
		t.Errorf("opener %+v, want pid 42", c.Opener)
	}
	tbHolderIs(t, "announced", c.Holders, Holder{PID: 42, PPID: 1, Comm: "curl", FD: 4})
	if tb.Stats().Announced != 1 {
		t.Errorf("announced %d, want 1", tb.Stats().Announced)
	}
}

// A delta older than what a streamed record already said (a watch client
// came and the kernel streamed the newer change) moves nothing back.
func TestDeltaOlderThanStreamedState(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tb.Apply([]Event{tbStateEv(1, tbT2, StateEstablished, StateCloseWait, "10.0.0.1:40000", "10.0.0.2:443")})
	tb.Apply([]Event{tbDelta(tb, 1, tbT0, StateEstablished, tbT1)})
	c := tb.conns[1]
	if c.State != StateCloseWait || !c.StateSince.Equal(tbT2) {
		t.Errorf("state %v since %v, want CLOSE_WAIT since %v", c.State, c.StateSince, tbT2)
	}
	if got := tbStates(c); len(got) != 2 {
		t.Errorf("history %v, want ESTABLISHED and CLOSE_WAIT only", got)
	}
	tbHolderIs(t, "the older delta's owner still counts", c.Holders, Holder{PID: 42, PPID: 1, Comm: "curl", FD: 4})
}

// A short connection's end record carries its delta: the table learns it
// and closes it in one event. A delta drained for it too (the kernel took
// the entry into the end record while the drain read it) brings nothing
// back to life.
func TestEndCarriesDelta(t *testing.T) {
	tb := tbNew(t)
	end := tbDelta(tb, 1, tbT0, StateFinWait1, tbT1)
	end.Kind, end.Time, end.OldState, end.State = KindEnd, tbT2, StateFinWait2, StateClose
	tb.Apply([]Event{end, tbDelta(tb, 1, tbT0, StateFinWait1, tbT1)})
	if tb.Len() != 0 {
		t.Fatalf("%d live connections after the end record, want 0", tb.Len())
	}
	v := tb.List(tbT3, ListOptions{Closed: true})
	if len(v) != 1 || v[0].State != StateClose || v[0].Local != "10.0.0.1:40000" {
		t.Fatalf("closed history %+v, want the one connection with the delta's tuple", v)
	}
	if got := tbStates(tb.closedIx[1]); len(got) != 3 || got[0] != StateEstablished || got[1] != StateFinWait1 || got[2] != StateClose {
		t.Errorf("history %v, want ESTABLISHED, FIN_WAIT1, CLOSE", got)
	}
}

// A dup's close can reach the table before the delta that announces the
// socket: it announces the connection itself (the ghost evidence is not
// dropped), and the delta then adds the holder and when it was
// established.
func TestCloseBeforeDelta(t *testing.T) {
	tb := tbNew(t)
	cl := tbStateEv(1, tbT1, StateEstablished, StateEstablished, "10.0.0.1:40000", "10.0.0.2:443")
	cl.Kind = KindClose
	cl.Task = &Task{PID: 42, PPID: 1, Comm: "curl"}
	cl.Close = Close{FD: 3, Refs: 2, Op: "close"}
	tb.Apply([]Event{cl, tbDelta(tb, 1, tbT0, StateEstablished, tbT0)})
	c := tb.conns[1]
	if c == nil || c.ClosedBy == nil || c.ClosedBy.FD != 3 {
		t.Fatalf("connection %+v: want it announced with its closer", c)
	}
	if got := tbStates(c); len(got) != 1 || got[0] != StateEstablished || !c.FirstSeen.Equal(tbT0) {
		t.Errorf("history %v, first seen %v: want the delta's ESTABLISHED at %v", got, c.FirstSeen, tbT0)
	}
	tbHolderIs(t, "after the delta", c.Holders, Holder{PID: 42, PPID: 1, Comm: "curl", FD: 4})
}

// A snapshot that corrected the state before the delta was drained set it
// with the snapshot's time; the delta's kernel times go into the history
// in its place, or before it.
func TestDeltaRefinesSnapshotState(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tbEstablished(t, tb, 2, tbT0)
	for ck, st := range map[uint64]State{1: StateCloseWait, 2: StateFinWait2} {
		c := tb.conns[ck]
		c.addTransition(Transition{At: tbT2, From: c.State, To: st, Source: "reconcile"})
		c.State, c.StateSince = st, stampOf(tbT2)
	}
	tb.Apply([]Event{tbDelta(tb, 1, tbT0, StateCloseWait, tbT1), tbDelta(tb, 2, tbT0, StateFinWait1, tbT1)})
	c1, c2 := tb.conns[1], tb.conns[2]
	if got := tbStates(c1); len(got) != 2 || got[1] != StateCloseWait || c1.History[1].Source != "kernel" || !c1.StateSince.Equal(tbT1) {
		t.Errorf("same state: history %+v since %v, want the kernel's CLOSE_WAIT at %v in place of the reconcile's", c1.History, c1.StateSince, tbT1)
	}
	if got := tbStates(c2); len(got) != 3 || got[1] != StateFinWait1 || got[2] != StateFinWait2 || c2.History[2].From != StateFinWait1 || !c2.StateSince.Equal(tbT2) {
		t.Errorf("older state: history %+v since %v, want FIN_WAIT1 (kernel) before FIN_WAIT2 (reconcile)", c2.History, c2.StateSince)
	}
}

// A syscall hook can write a socket's delta after its end record took the
// entry (an accept returning as a RST arrives): the drained delta brings
// nothing back, with or without a closed history. A later life of the
// socket (a connect after a failed one) folds a state change after the
// end, and is announced.
func TestDeltaAfterEndBringsNothingBack(t *testing.T) {
	for _, hist := range []int{0, 100} {
		tb := NewTable(TableConfig{MaxConns: 100, HistoryTTL: 5 * time.Minute, MaxHistory: hist})
		end := tbDelta(tb, 1, tbT0, StateEstablished, tbT0)
		end.Kind, end.Time, end.OldState, end.State = KindEnd, tbT1, StateEstablished, StateClose
		late := tbDelta(tb, 1, tbT0, StateEstablished, tbT0)
		late.Delta.Parts = DeltaOwner
		late.Delta.State = StateEstablished // what the hook read before the CLOSE
		late.Delta.FirstMono, late.Delta.OwnerMono = tbMono(tb, tbT2), tbMono(tb, tbT2)
		late.Time = tbT2
		again := tbDelta(tb, 1, tbT0, StateEstablished, tbT0)
		again.Delta.Parts = DeltaState | DeltaOwner
		tb.Apply([]Event{end, late, again})
		if tb.Len() != 0 {
			t.Fatalf("history %d: %d live connections after the end and two late deltas, want 0", hist, tb.Len())
		}
		second := tbDelta(tb, 1, tbT3, StateEstablished, tbT3)
		tb.Apply([]Event{second})
		if tb.Len() != 1 {
			t.Errorf("history %d: a delta established after the end announced %d connections, want 1", hist, tb.Len())
		}
	}
}

// A delta's state is never CLOSE or another non-live state for a live
// connection: a syscall hook read it racing the socket's end, and only the
// end record ends a connection.
func TestDeltaNeverEndsAConnection(t *testing.T) {
	tb := tbNew(t)
	tb.Apply([]Event{tbDelta(tb, 1, tbT0, StateEstablished, tbT0)})
	racing := tbDelta(tb, 1, tbT0, StateClose, tbT1)
	tb.Apply([]Event{racing})
	c := tb.conns[1]
	if c == nil || c.State != StateEstablished {
		t.Fatalf("connection %+v after a delta in CLOSE: want it ESTABLISHED", c)
	}
}
