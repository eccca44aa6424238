package collector

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// The verdict rules take the time from their caller: every test uses
// explicit times from this fake clock, never time.Now or sleeps.
var vtT0 = time.Unix(5000, 0) // 1970-01-01T01:23:20Z

// vtCfg differs from DefaultVerdictConfig in every field, so a rule that
// ignored its configuration fails.
var vtCfg = VerdictConfig{
	GhostGrace:       3 * time.Second,
	CloseWaitAfter:   40 * time.Second,
	SilentAfter:      2 * time.Minute,
	UnresponsiveRTOs: 3,
}

// vtDefaults are a namespace's sysctls as the kernel ships them.
var vtDefaults = NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15}

// vtTable returns a table with vtCfg whose processes are all alive unless a
// test says otherwise.
func vtTable(t *testing.T) *Table {
	t.Helper()
	tb := NewTable(TableConfig{MaxConns: 100, HistoryTTL: 5 * time.Minute, MaxHistory: 100, Verdicts: vtCfg})
	tb.alive = func(uint32) bool { return true }
	return tb
}

func vtFind(vs []Verdict, kind string) *Verdict {
	for i := range vs {
		if vs[i].Kind == kind {
			return &vs[i]
		}
	}
	return nil
}

func vtKinds(vs []Verdict) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.Kind)
	}
	return out
}

// vtHolderRec is a task_file walk record for cookie 1 (inode 1001, as
// tbSockRec gives it).
func vtHolderRec(pid, ppid, fd uint32, comm string) bpf.GhostconnHolderRec {
	return bpf.GhostconnHolderRec{Cookie: 1, Ino: 1001, Pid: pid, Ppid: ppid, Fd: fd, Comm: tbComm(comm)}
}

// vtSnapshot is a full snapshot record of cookie 1, ESTABLISHED, with the
// kernel's default sysctls and data last seen age ago (HZ 250).
func vtSnapshot(age time.Duration) bpf.GhostconnSockRec {
	r := tbSockRec(1, StateEstablished)
	r.NetKaTime = 250 * 7200
	r.NetKaIntvl = 250 * 75
	r.NetKaProbes = 9
	r.NetRetries2 = 15
	j := uint32(age * 250 / time.Second)
	r.SendAgeJiffies, r.RecvAgeJiffies = j, j
	return r
}

// ---- ghost ----

// vtGhostConn is an ESTABLISHED connection whose fd 7 pid 100 closed at
// vtT0+10s with one reference left, held by pid 200, with holders and I/O
// positions measured exactly at the end of the grace period. It returns the
// connection and that time.
func vtGhostConn() (*Conn, time.Time) {
	closedAt := vtT0.Add(10 * time.Second) // 01:23:30Z
	due := closedAt.Add(vtCfg.GhostGrace)
	return &Conn{
		Cookie:     1,
		Netns:      tbNetns,
		State:      StateEstablished,
		StateSince: stampOf(vtT0),
		Holders:    []Holder{{PID: 200, PPID: 1, Comm: "keeper", FD: 9}},
		HoldersAt:  stampOf(due),
		LastData:   stampOf(closedAt),
		LastDataAt: stampOf(due),
		WriteSeq:   500,
		CopiedSeq:  600,
		ClosedBy: &CloseRecord{
			PID: 100, PPID: 1, Comm: "closer", FD: 7, At: closedAt, RefsLeft: 1, Op: "close",
			writeSeq: 500, copiedSeq: 600,
		},
	}, due
}

func TestVerdictGhostRule(t *testing.T) {
	const stamp0 = "1970-01-01T01:23:30Z"
	tests := []struct {
		name        string
		mod         func(c *Conn)
		at          time.Duration // now relative to the end of the grace period
		raised      bool
		refresh     bool
		pending     bool
		wantDetail  string
		wantInclude []string
	}{
		{name: "before grace ends", at: -time.Nanosecond, pending: true},
		{name: "well before grace ends", at: -2 * time.Second, pending: true},
		{
			name: "exactly at grace with fresh data", raised: true,
			wantDetail: "closer (pid 100) closed fd 7 (close) at " + stamp0 +
				", but other references kept the socket ESTABLISHED: still held by keeper (pid 200, fd 9); no data written or read since",
		},
		{name: "later with fresh data", at: time.Minute, raised: true},
		{
			name: "holders measured before grace ends",
			mod:  func(c *Conn) { c.HoldersAt = stampOf(c.HoldersAt.Add(-time.Nanosecond)) },
			at:   time.Second, refresh: true, pending: true,
		},
		{
			name: "I/O positions measured before grace ends",
			mod:  func(c *Conn) { c.LastDataAt = stampOf(c.LastDataAt.Add(-time.Nanosecond)) },
			at:   time.Second, refresh: true, pending: true,
		},
		{name: "never measured", mod: func(c *Conn) { c.HoldersAt, c.LastDataAt = stampOf(time.Time{}), stampOf(time.Time{}) }, refresh: true, pending: true},
		{name: "no holders", mod: func(c *Conn) { c.Holders = nil }},
		{name: "no holders, closer without a known parent", mod: func(c *Conn) { c.Holders = nil; c.ClosedBy.PPID = 0 }},
		{name: "holder wrote since the close (handoff)", mod: func(c *Conn) { c.WriteSeq++ }},
		{name: "holder read since the close (handoff)", mod: func(c *Conn) { c.CopiedSeq += 1000 }},
		{
			name: "only the closer's parent holds it",
			mod: func(c *Conn) {
				c.ClosedBy.PPID = 50
				c.Holders = []Holder{{PID: 50, PPID: 1, Comm: "master", FD: 3}, {PID: 50, PPID: 1, Comm: "master", FD: 11}}
			},
		},
		{
			name: "closer's parent and a stranger hold it",
			mod: func(c *Conn) {
				c.ClosedBy.PPID = 50
				c.Holders = []Holder{{PID: 50, PPID: 1, Comm: "master", FD: 3}, {PID: 60, PPID: 1, Comm: "other", FD: 4}}
			},
			raised:      true,
			wantInclude: []string{"still held by master (pid 50, fd 3), other (pid 60, fd 4);"},
		},
		{
			name: "forked child holds it after the parent closed",
			mod: func(c *Conn) {
				c.Holders = []Holder{{PID: 300, PPID: 100, Comm: "child", FD: 7}}
			},
			raised:      true,
			wantInclude: []string{"closer (pid 100) closed fd 7 (close)", "still held by child (pid 300, fd 7);"},
		},
		{
			name: "every holder is named",
			mod: func(c *Conn) {
				c.ClosedBy.Op = "dup2"
				c.Holders = []Holder{{PID: 200, PPID: 1, Comm: "keeper", FD: 9}, {PID: 201, PPID: 200, Comm: "worker", FD: 4}}
			},
			raised: true,
			wantDetail: "closer (pid 100) closed fd 7 (dup2) at " + stamp0 +
				", but other references kept the socket ESTABLISHED: still held by keeper (pid 200, fd 9), worker (pid 201, fd 4); no data written or read since",
		},
		{
			name:   "holder exited",
			mod:    func(c *Conn) { c.ClosedBy.Op = "exit" },
			raised: true,
			wantDetail: "closer (pid 100) exited at " + stamp0 + " while holding fd 7" +
				", but other references kept the socket ESTABLISHED: still held by keeper (pid 200, fd 9); no data written or read since",
		},
		{
			name:        "in CLOSE_WAIT",
			mod:         func(c *Conn) { c.State = StateCloseWait; c.StateSince = stampOf(c.ClosedBy.At) },
			raised:      true,
			wantInclude: []string{"kept the socket CLOSE_WAIT:"},
		},
		{name: "FIN_WAIT1", mod: func(c *Conn) { c.State = StateFinWait1 }},
		{name: "FIN_WAIT1 before grace ends", mod: func(c *Conn) { c.State = StateFinWait1 }, at: -time.Second},
		{name: "no references left", mod: func(c *Conn) { c.ClosedBy.RefsLeft = 0 }},
		{name: "no references left before grace ends", mod: func(c *Conn) { c.ClosedBy.RefsLeft = 0 }, at: -time.Second},
		{name: "never closed", mod: func(c *Conn) { c.ClosedBy = nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, due := vtGhostConn()
			if tc.mod != nil {
				tc.mod(c)
			}
			e := evaluate(c, vtDefaults, due.Add(tc.at), vtCfg)
			g := vtFind(e.verdicts, VerdictGhost)
			if (g != nil) != tc.raised {
				t.Fatalf("ghost raised = %v, want %v (verdicts %+v)", g != nil, tc.raised, e.verdicts)
			}
			if len(e.verdicts) != 0 && !(tc.raised && len(e.verdicts) == 1) {
				t.Fatalf("verdicts = %v, want only the ghost", vtKinds(e.verdicts))
			}
			if e.refresh != tc.refresh || e.pending != tc.pending {
				t.Fatalf("refresh = %v, pending = %v; want %v, %v", e.refresh, e.pending, tc.refresh, tc.pending)
			}
			if g == nil {
				return
			}
			if !g.Since.Equal(due) {
				t.Errorf("Since = %v, want the end of the grace period %v", g.Since, due)
			}
			if g.GiveUp != nil {
				t.Errorf("GiveUp = %v, want nil for a ghost", *g.GiveUp)
			}
			if tc.wantDetail != "" && g.Detail != tc.wantDetail {
				t.Errorf("Detail =\n%s\nwant\n%s", g.Detail, tc.wantDetail)
			}
			for _, s := range tc.wantInclude {
				if !strings.Contains(g.Detail, s) {
					t.Errorf("Detail %q does not contain %q", g.Detail, s)
				}
			}
		})
	}
}

// A close event starts the grace period; the table asks for fresh holders
// and I/O positions, raises the ghost once, keeps its since, and clears it
// as soon as the socket leaves ESTABLISHED.
func TestVerdictGhostTableLifecycle(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	seed := vtSnapshot(0)
	seed.WriteSeq, seed.CopiedSeq = 500, 600
	tb.Apply([]Event{tbObserve(t, seed, vtT0, 1, true)})
	tb.SetHolders([]bpf.GhostconnHolderRec{
		vtHolderRec(100, 1, 7, "closer"),
		vtHolderRec(200, 1, 9, "keeper"),
	}, vtT0.Add(time.Second))
	closedAt := vtT0.Add(10 * time.Second)
	due := closedAt.Add(vtCfg.GhostGrace)
	tb.Apply([]Event{{
		Kind: KindClose, Time: closedAt, Cookie: 1, Inode: 1001, Netns: tbNetns, Family: FamilyIPv4,
		Task:  &Task{PID: 100, PPID: 1, Comm: "closer"},
		Close: Close{FD: 7, Refs: 2, Op: "close", WriteSeq: 500, CopiedSeq: 600},
	}})
	c := tb.conns[1]
	if ok := vtPending(tb, 1); !ok {
		t.Fatal("a close with references left did not make the connection pending")
	}

	// During the grace period: nothing, and nothing to refresh; the
	// decision falls due at the end of it.
	need, next := tb.Evaluate(closedAt.Add(time.Second))
	if len(need) != 0 {
		t.Fatalf("Evaluate during grace asked for %v", need)
	}
	if !next.Equal(due) {
		t.Fatalf("Evaluate during grace: next due %v, want %v", next, due)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts during grace: %+v", c.Verdicts)
	}
	if ok := vtPending(tb, 1); !ok {
		t.Fatal("connection left pending during the grace period")
	}

	// At the end of the grace period the holders (walked at vtT0+1s) and the
	// I/O positions (never measured) are too old: ask for this namespace.
	need, _ = tb.Evaluate(due)
	if want := map[uint32]bool{tbNetns: true}; !reflect.DeepEqual(need, want) {
		t.Fatalf("Evaluate at grace end asked for %v, want %v", need, want)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("ghost raised on stale data: %+v", c.Verdicts)
	}

	// The refresh: a snapshot with the positions of the close, then a walk.
	snapAt := due.Add(100 * time.Millisecond)
	r := vtSnapshot(0)
	r.WriteSeq, r.CopiedSeq = 500, 600
	tb.Apply([]Event{tbObserve(t, r, snapAt, 2, false)})
	tb.SetHolders([]bpf.GhostconnHolderRec{vtHolderRec(200, 1, 9, "keeper")}, snapAt)

	need, next = tb.Evaluate(snapAt.Add(50 * time.Millisecond))
	if len(need) != 0 || !next.After(snapAt) {
		// The next deadline is another rule's (silent), not the ghost's.
		t.Fatalf("Evaluate after refresh asked for %v, next due %v", need, next)
	}
	g := vtFind(c.Verdicts, VerdictGhost)
	if g == nil || len(c.Verdicts) != 1 {
		t.Fatalf("verdicts = %+v, want one ghost", c.Verdicts)
	}
	if !g.Since.Equal(due) {
		t.Fatalf("Since = %v, want %v", g.Since, due)
	}
	for _, s := range []string{"closer (pid 100) closed fd 7 (close) at 1970-01-01T01:23:30Z", "still held by keeper (pid 200, fd 9);"} {
		if !strings.Contains(g.Detail, s) {
			t.Errorf("Detail %q does not contain %q", g.Detail, s)
		}
	}
	if ok := vtPending(tb, 1); ok {
		t.Error("connection still pending after the ghost was decided")
	}
	if got := tb.Stats().Raised[VerdictGhost]; got != 1 {
		t.Fatalf("Raised[ghost] = %d, want 1", got)
	}

	// Evaluating again, partially or fully, keeps the verdict and its since
	// and does not count it again.
	for _, d := range []time.Duration{time.Second, 10 * time.Second, time.Minute} {
		tb.Evaluate(snapAt.Add(d))
		tb.Evaluate(snapAt.Add(d))
		if g := vtFind(c.Verdicts, VerdictGhost); g == nil || !g.Since.Equal(due) {
			t.Fatalf("at +%v: ghost = %+v, want since %v", d, g, due)
		}
	}
	if got := tb.Stats().Raised[VerdictGhost]; got != 1 {
		t.Fatalf("Raised[ghost] = %d after re-evaluation, want 1", got)
	}
	if got := tb.Summarize(nil).ByVerdict; !reflect.DeepEqual(got, map[string]int{VerdictGhost: 1}) {
		t.Fatalf("Summarize ByVerdict = %v", got)
	}
	views := tb.List(snapAt.Add(time.Minute), ListOptions{})
	if len(views) != 1 || len(views[0].Verdicts) != 1 || views[0].Verdicts[0].Kind != VerdictGhost {
		t.Fatalf("List verdicts = %+v", views)
	}

	// Leaving ESTABLISHED clears it at once, without an Evaluate.
	tb.Apply([]Event{tbStateEv(1, snapAt.Add(2*time.Minute), StateEstablished, StateFinWait1, "10.0.0.1:40000", "10.0.0.2:443")})
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts after FIN_WAIT1 = %+v, want none", c.Verdicts)
	}
	if got := tb.Summarize(nil).ByVerdict; len(got) != 0 {
		t.Fatalf("Summarize ByVerdict after FIN_WAIT1 = %v", got)
	}
	if got := tb.Stats().Raised[VerdictGhost]; got != 1 {
		t.Fatalf("Raised[ghost] = %d after clearing, want 1", got)
	}
}

// A close that leaves no reference does not wait for a grace period.
func TestVerdictGhostLastReferenceNotPending(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	tb.Apply([]Event{{
		Kind: KindClose, Time: vtT0.Add(time.Second), Cookie: 1, Task: &Task{PID: 100},
		Close: Close{FD: 3, Refs: 1, Op: "close"},
	}})
	if ok := vtPending(tb, 1); ok {
		t.Fatal("a close with no references left made the connection pending")
	}
	if cb := tb.conns[1].ClosedBy; cb == nil || cb.RefsLeft != 0 {
		t.Fatalf("ClosedBy = %+v, want RefsLeft 0", cb)
	}
}

// ---- close-wait ----

func TestVerdictCloseWaitRule(t *testing.T) {
	since := vtT0.Add(time.Minute) // 01:24:20Z
	tests := []struct {
		name        string
		holders     []Holder
		recvQ       uint32
		after       time.Duration
		walked      time.Duration // HoldersAt - now; zero: walked now
		old         []Verdict
		raised      bool
		refresh     bool
		wantDetail  string
		wantExclude string
	}{
		{name: "1ns under the threshold", after: vtCfg.CloseWaitAfter - time.Nanosecond},
		{name: "just entered", after: 0},
		{
			name: "exactly the threshold, orphaned", after: vtCfg.CloseWaitAfter, raised: true,
			wantDetail: "peer closed its side at 1970-01-01T01:24:20Z (CLOSE_WAIT for 40s); the application never closed it: held by no process (orphaned)",
		},
		{
			name: "held, unread bytes", after: 90 * time.Second, raised: true,
			holders: []Holder{{PID: 42, PPID: 1, Comm: "app", FD: 5}, {PID: 43, PPID: 42, Comm: "worker", FD: 6}},
			recvQ:   17,
			wantDetail: "peer closed its side at 1970-01-01T01:24:20Z (CLOSE_WAIT for 1m30s); the application never closed it: held by app (pid 42, fd 5), worker (pid 43, fd 6)" +
				"; 17 bytes received and never read",
		},
		{
			name: "held, nothing unread", after: vtCfg.CloseWaitAfter, raised: true,
			holders:     []Holder{{PID: 42, PPID: 1, Comm: "app", FD: 5}},
			wantDetail:  "peer closed its side at 1970-01-01T01:24:20Z (CLOSE_WAIT for 40s); the application never closed it: held by app (pid 42, fd 5)",
			wantExclude: "never read",
		},
		{
			name: "holders walked before the threshold", after: vtCfg.CloseWaitAfter, walked: -time.Nanosecond, refresh: true,
			holders: []Holder{{PID: 42, PPID: 1, Comm: "app", FD: 5}},
		},
		{
			name: "holders walked before the threshold, already raised", after: time.Hour, walked: -time.Minute, raised: true,
			holders:    []Holder{{PID: 42, PPID: 1, Comm: "app", FD: 5}},
			old:        []Verdict{{Kind: VerdictCloseWait, Since: since.Add(vtCfg.CloseWaitAfter)}},
			wantDetail: "peer closed its side at 1970-01-01T01:24:20Z (CLOSE_WAIT for 1h0m0s); the application never closed it: held by app (pid 42, fd 5)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := since.Add(tc.after)
			c := &Conn{
				Cookie: 1, Netns: tbNetns, State: StateCloseWait, StateSince: stampOf(since),
				Holders: tc.holders, RecvQueue: tc.recvQ,
				LastData: stampOf(vtT0), LastDataAt: stampOf(now), HoldersAt: stampOf(now.Add(tc.walked)),
				Verdicts: tc.old,
			}
			e := evaluate(c, vtDefaults, now, vtCfg)
			if e.refresh != tc.refresh || e.pending {
				t.Fatalf("refresh = %v, pending = %v; want %v, false", e.refresh, e.pending, tc.refresh)
			}
			v := vtFind(e.verdicts, VerdictCloseWait)
			if (v != nil) != tc.raised {
				t.Fatalf("close-wait raised = %v, want %v (verdicts %+v)", v != nil, tc.raised, e.verdicts)
			}
			if len(e.verdicts) > 1 {
				t.Fatalf("verdicts = %v, want at most close-wait", vtKinds(e.verdicts))
			}
			if v == nil {
				return
			}
			if want := since.Add(vtCfg.CloseWaitAfter); !v.Since.Equal(want) {
				t.Errorf("Since = %v, want %v", v.Since, want)
			}
			if v.Detail != tc.wantDetail {
				t.Errorf("Detail =\n%s\nwant\n%s", v.Detail, tc.wantDetail)
			}
			if tc.wantExclude != "" && strings.Contains(v.Detail, tc.wantExclude) {
				t.Errorf("Detail %q contains %q", v.Detail, tc.wantExclude)
			}
		})
	}
}

func TestVerdictCloseWaitTableClears(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(0), vtT0, 1, true)})
	holders := []bpf.GhostconnHolderRec{vtHolderRec(42, 1, 5, "app")}
	tb.SetHolders(holders, vtT0)
	cwAt := vtT0.Add(5 * time.Second)
	tb.Apply([]Event{tbStateEv(1, cwAt, StateEstablished, StateCloseWait, "10.0.0.1:40000", "10.0.0.2:443")})
	c := tb.conns[1]

	if need, _ := tb.Evaluate(cwAt.Add(vtCfg.CloseWaitAfter - time.Nanosecond)); len(need) != 0 {
		t.Fatalf("Evaluate before the threshold asked for %v", need)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts before the threshold: %+v", c.Verdicts)
	}
	// At the threshold the holders, walked before it, are too old to name.
	due := cwAt.Add(vtCfg.CloseWaitAfter)
	if need, _ := tb.Evaluate(due); !reflect.DeepEqual(need, map[uint32]bool{tbNetns: true}) {
		t.Fatalf("Evaluate at the threshold on an old walk asked for %v, want the namespace", need)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts on an old walk: %+v", c.Verdicts)
	}
	tb.SetHolders(holders, due)
	tb.Evaluate(due)
	v := vtFind(c.Verdicts, VerdictCloseWait)
	if v == nil || !v.Since.Equal(due) {
		t.Fatalf("verdicts = %+v, want close-wait since %v", c.Verdicts, due)
	}
	if !strings.Contains(v.Detail, "held by app (pid 42, fd 5)") {
		t.Fatalf("Detail = %q, want the holder", v.Detail)
	}
	tb.Evaluate(cwAt.Add(10 * time.Minute))
	if v := vtFind(c.Verdicts, VerdictCloseWait); v == nil || !v.Since.Equal(cwAt.Add(vtCfg.CloseWaitAfter)) {
		t.Fatalf("verdicts later = %+v, want the same since", c.Verdicts)
	}
	if got := tb.Stats().Raised[VerdictCloseWait]; got != 1 {
		t.Fatalf("Raised[close-wait] = %d, want 1", got)
	}

	// The application closes: LAST_ACK clears it at once.
	tb.Apply([]Event{tbStateEv(1, cwAt.Add(11*time.Minute), StateCloseWait, StateLastAck, "10.0.0.1:40000", "10.0.0.2:443")})
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts after LAST_ACK = %+v, want none", c.Verdicts)
	}
	// And it stays cleared.
	tb.Evaluate(cwAt.Add(12 * time.Minute))
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts re-raised in LAST_ACK: %+v", c.Verdicts)
	}
}

// ---- silent ----

func TestVerdictSilentRule(t *testing.T) {
	last := vtT0.Add(time.Minute)
	tests := []struct {
		name        string
		state       State
		settings    SockSettings
		defaults    *NetDefaults
		idle        time.Duration // now - LastData
		measured    time.Duration // now - LastDataAt
		old         []Verdict
		raised      bool
		refresh     bool
		wantDetail  string
		wantInclude string
	}{
		{
			name: "idle exactly the threshold, keepalive off", idle: vtCfg.SilentAfter, measured: time.Second, raised: true,
			wantDetail: "no data either way for 2m0s (threshold 2m0s) and keepalive is off (SO_KEEPALIVE not set), so a NAT or load balancer can drop it unseen; " +
				"keepalive: enabled=false idle=2h0m0s interval=1m15s count=9 (sysctl)",
		},
		{name: "idle 1ns under the threshold", idle: vtCfg.SilentAfter - time.Nanosecond, measured: time.Second},
		{name: "idle 1ns under the threshold, stale", idle: vtCfg.SilentAfter - time.Nanosecond, measured: time.Hour},
		{name: "measured just now", idle: vtCfg.SilentAfter, raised: true},
		{name: "measured exactly silentFreshness ago", idle: vtCfg.SilentAfter, measured: silentFreshness, raised: true},
		{name: "stale measurement, not yet raised", idle: time.Hour, measured: silentFreshness + time.Nanosecond, refresh: true},
		{name: "never measured", idle: time.Hour, measured: -1, refresh: true},
		{
			name: "stale measurement keeps a raised verdict", idle: time.Hour, measured: time.Minute,
			old: []Verdict{{Kind: VerdictSilent, Since: last.Add(vtCfg.SilentAfter)}}, raised: true,
		},
		{
			name: "another raised verdict does not count", idle: time.Hour, measured: time.Minute,
			old: []Verdict{{Kind: VerdictCloseWait, Since: last}}, refresh: true,
		},
		{
			name: "socket keepalive idle equal to the threshold", idle: time.Hour, measured: time.Second,
			settings: SockSettings{Keepalive: true, KeepIdle: vtCfg.SilentAfter},
		},
		{
			name: "socket keepalive idle shorter, stale", idle: time.Hour, measured: time.Hour,
			settings: SockSettings{Keepalive: true, KeepIdle: 30 * time.Second},
		},
		{
			name: "socket keepalive idle 1s longer", idle: vtCfg.SilentAfter, measured: time.Second, raised: true,
			settings:    SockSettings{Keepalive: true, KeepIdle: vtCfg.SilentAfter + time.Second},
			wantInclude: "and keepalive idle 2m1s, set on the socket (TCP_KEEPIDLE), is longer than that,",
		},
		{
			name: "sysctl keepalive idle longer", idle: 3 * time.Minute, measured: time.Second, raised: true,
			settings: SockSettings{Keepalive: true},
			wantDetail: "no data either way for 3m0s (threshold 2m0s) and keepalive idle 2h0m0s, from the namespace's net.ipv4.tcp_keepalive_time, is longer than that, " +
				"so a NAT or load balancer can drop it unseen; keepalive: enabled=true idle=2h0m0s interval=1m15s count=9 (sysctl)",
		},
		{
			name: "sysctl keepalive idle equal to the threshold", idle: time.Hour, measured: time.Second,
			settings: SockSettings{Keepalive: true},
			defaults: &NetDefaults{KeepIdle: vtCfg.SilentAfter, KeepInterval: 75 * time.Second, KeepCount: 9, Retries2: 15},
		},
		{
			name: "keepalive off with a short idle set", idle: vtCfg.SilentAfter, measured: time.Second, raised: true,
			settings:    SockSettings{KeepIdle: 10 * time.Second},
			wantInclude: "keepalive is off (SO_KEEPALIVE not set)",
		},
		{name: "CLOSE_WAIT is never silent", state: StateCloseWait, idle: time.Hour, measured: time.Second},
		{name: "CLOSE_WAIT is never silent, stale", state: StateCloseWait, idle: time.Hour, measured: time.Hour},
		{name: "FIN_WAIT2 is never silent", state: StateFinWait2, idle: time.Hour, measured: time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := last.Add(tc.idle)
			st := tc.state
			if st == 0 {
				st = StateEstablished
			}
			c := &Conn{
				Cookie: 1, Netns: tbNetns, State: st,
				StateSince: stampOf(now.Add(-vtCfg.CloseWaitAfter + time.Second)), // never close-wait
				LastData:   stampOf(last),
				Settings:   tc.settings,
				Verdicts:   tc.old,
			}
			if tc.measured >= 0 {
				c.LastDataAt = stampOf(now.Add(-tc.measured))
			}
			d := vtDefaults
			if tc.defaults != nil {
				d = *tc.defaults
			}
			e := evaluate(c, d, now, vtCfg)
			v := vtFind(e.verdicts, VerdictSilent)
			if (v != nil) != tc.raised {
				t.Fatalf("silent raised = %v, want %v (verdicts %+v)", v != nil, tc.raised, e.verdicts)
			}
			if len(e.verdicts) > 1 || (len(e.verdicts) == 1 && v == nil) {
				t.Fatalf("verdicts = %v, want at most silent", vtKinds(e.verdicts))
			}
			if e.refresh != tc.refresh {
				t.Fatalf("refresh = %v, want %v", e.refresh, tc.refresh)
			}
			if e.pending {
				t.Fatal("pending set without a close")
			}
			if v == nil {
				return
			}
			if want := last.Add(vtCfg.SilentAfter); !v.Since.Equal(want) {
				t.Errorf("Since = %v, want %v", v.Since, want)
			}
			if tc.wantDetail != "" && v.Detail != tc.wantDetail {
				t.Errorf("Detail =\n%s\nwant\n%s", v.Detail, tc.wantDetail)
			}
			if tc.wantInclude != "" && !strings.Contains(v.Detail, tc.wantInclude) {
				t.Errorf("Detail %q does not contain %q", v.Detail, tc.wantInclude)
			}
		})
	}
}

// Through the table: a stale measurement asks for a snapshot, a fresh one
// raises the verdict, a stale one keeps it, new data clears it, and each
// raise is counted once.
func TestVerdictSilentTableLifecycle(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	c := tb.conns[1]

	s1 := vtT0.Add(10 * time.Minute)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(130*time.Second), s1, 2, false)})
	lastData := s1.Add(-130 * time.Second)
	if !c.LastData.Equal(lastData) {
		t.Fatalf("LastData = %v, want %v", c.LastData, lastData)
	}

	// 3s after the snapshot the measurement is too old to raise on.
	need, _ := tb.Evaluate(s1.Add(3 * time.Second))
	if want := map[uint32]bool{tbNetns: true}; !reflect.DeepEqual(need, want) {
		t.Fatalf("Evaluate on a stale measurement asked for %v, want %v", need, want)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("raised on a stale measurement: %+v", c.Verdicts)
	}

	// A fresh snapshot with no data since.
	s2 := s1.Add(4 * time.Second)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(134*time.Second), s2, 3, false)})
	if need, _ := tb.Evaluate(s2.Add(time.Second)); len(need) != 0 {
		t.Fatalf("Evaluate on a fresh measurement asked for %v", need)
	}
	since := lastData.Add(vtCfg.SilentAfter)
	v := vtFind(c.Verdicts, VerdictSilent)
	if v == nil || !v.Since.Equal(since) {
		t.Fatalf("verdicts = %+v, want silent since %v", c.Verdicts, since)
	}
	if !strings.Contains(v.Detail, "no data either way for 2m15s (threshold 2m0s) and keepalive is off") {
		t.Fatalf("Detail = %q", v.Detail)
	}

	// A minute later, with no snapshot since, the verdict stays.
	if need, _ := tb.Evaluate(s2.Add(time.Minute)); len(need) != 0 {
		t.Fatalf("Evaluate of a raised verdict on stale data asked for %v", need)
	}
	if v := vtFind(c.Verdicts, VerdictSilent); v == nil || !v.Since.Equal(since) {
		t.Fatalf("verdicts = %+v, want silent kept with since %v", c.Verdicts, since)
	}
	if got := tb.Stats().Raised[VerdictSilent]; got != 1 {
		t.Fatalf("Raised[silent] = %d, want 1", got)
	}

	// Data flowed: the next snapshot clears it.
	s3 := s2.Add(70 * time.Second)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(time.Second), s3, 4, false)})
	tb.Evaluate(s3.Add(500 * time.Millisecond))
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts after data flowed = %+v, want none", c.Verdicts)
	}

	// Silent again later: a second raise, with its own since.
	s4 := s3.Add(200 * time.Second)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(150*time.Second), s4, 5, false)})
	tb.Evaluate(s4)
	since2 := s4.Add(-150 * time.Second).Add(vtCfg.SilentAfter)
	if v := vtFind(c.Verdicts, VerdictSilent); v == nil || !v.Since.Equal(since2) {
		t.Fatalf("verdicts = %+v, want silent since %v", c.Verdicts, since2)
	}
	if got := tb.Stats().Raised[VerdictSilent]; got != 2 {
		t.Fatalf("Raised[silent] = %d, want 2", got)
	}
}

// ---- unresponsive ----

func TestVerdictUnresponsiveRule(t *testing.T) {
	retransSince := vtT0.Add(30 * time.Second) // 01:23:50Z
	lastKA := vtT0.Add(40 * time.Second)       // 01:24:00Z
	now := vtT0.Add(50 * time.Second)
	tests := []struct {
		name        string
		mod         func(c *Conn)
		defaults    *NetDefaults
		since       time.Time
		giveUp      time.Time // zero: not raised
		wantDetail  string
		wantInclude string
	}{
		{name: "one RTO under the threshold", mod: func(c *Conn) { c.Counters.Retransmits = 2 }},
		{
			name: "RTOs at the threshold", mod: func(c *Conn) { c.Counters.Retransmits = 3 },
			since: retransSince, giveUp: retransSince.Add(924600 * time.Millisecond),
			wantDetail: "3 consecutive retransmission timeouts (RTO now 1.6s, 9 retransmits in all) since 1970-01-01T01:23:50Z; " +
				"the kernel gives up around 1970-01-01T01:39:14Z (in 15m5s) under net.ipv4.tcp_retries2=15",
		},
		{
			name: "RTOs above the threshold, retries2 from the namespace", mod: func(c *Conn) { c.Counters.Retransmits = 5 },
			defaults: &NetDefaults{Retries2: 8},
			since:    retransSince, giveUp: retransSince.Add(102200 * time.Millisecond),
			wantInclude: "under net.ipv4.tcp_retries2=8",
		},
		{
			name:  "RTOs with TCP_USER_TIMEOUT",
			mod:   func(c *Conn) { c.Counters.Retransmits = 3; c.Settings.UserTimeout = 30 * time.Second },
			since: retransSince, giveUp: retransSince.Add(30 * time.Second),
			wantInclude: "(in 10s) under TCP_USER_TIMEOUT=30s",
		},
		{
			name:  "RTOs past the give-up time",
			mod:   func(c *Conn) { c.Counters.Retransmits = 3; c.Settings.UserTimeout = 5 * time.Second },
			since: retransSince, giveUp: retransSince.Add(5 * time.Second),
			wantInclude: "(in 0s)",
		},
		{
			name:  "RTOs without a known start count from the last update",
			mod:   func(c *Conn) { c.Counters.Retransmits = 3; c.RetransSince = stampOf(time.Time{}) },
			since: now, giveUp: now.Add(924600 * time.Millisecond),
		},
		{
			name: "one keepalive probe out, sysctl keepalive",
			mod: func(c *Conn) {
				c.Counters.ProbesOut = 1
				c.KeepaliveProbesOut = 1
				c.Settings.Keepalive = true
			},
			since: lastKA, giveUp: lastKA.Add(8 * 75 * time.Second),
			wantDetail: "1 keepalive probe(s) unanswered since 1970-01-01T01:24:00Z; " +
				"the kernel gives up around 1970-01-01T01:34:00Z (in 9m50s) under keepalive count 9 x interval 1m15s (sysctl)",
		},
		{
			name: "two keepalive probes out, socket keepalive",
			mod: func(c *Conn) {
				c.Counters.ProbesOut = 2
				c.KeepaliveProbesOut = 2
				c.Settings = SockSettings{Keepalive: true, KeepIdle: time.Minute, KeepInterval: 10 * time.Second, KeepCount: 3}
			},
			since: lastKA, giveUp: lastKA.Add(10 * time.Second),
			wantInclude: "2 keepalive probe(s) unanswered since 1970-01-01T01:24:00Z; the kernel gives up around 1970-01-01T01:24:10Z (in 0s) under keepalive count 3 x interval 10s (socket)",
		},
		{
			name: "keepalive probe out with TCP_USER_TIMEOUT",
			mod: func(c *Conn) {
				c.Counters.ProbesOut = 1
				c.KeepaliveProbesOut = 1
				c.KeepaliveIdle = 70 * time.Second
				c.Settings = SockSettings{Keepalive: true, UserTimeout: 90 * time.Second}
			},
			since: lastKA, giveUp: lastKA.Add(20 * time.Second),
			wantInclude: "under TCP_USER_TIMEOUT=1m30s",
		},
		{
			name: "keepalive probe out but keepalive off",
			mod:  func(c *Conn) { c.Counters.ProbesOut = 1 },
		},
		{
			name: "probe out with data queued (zero-window probe)",
			mod: func(c *Conn) {
				c.Counters.ProbesOut = 1
				c.Settings.Keepalive = true
				c.SendQueue = 100
			},
		},
		{name: "nothing outstanding"},
		{name: "FIN_WAIT1 is not judged", mod: func(c *Conn) { c.State = StateFinWait1; c.Counters.Retransmits = 10 }},
		{
			name:  "CLOSE_WAIT is judged",
			mod:   func(c *Conn) { c.State = StateCloseWait; c.Counters.Retransmits = 3 },
			since: retransSince, giveUp: retransSince.Add(924600 * time.Millisecond),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Conn{
				Cookie: 1, Netns: tbNetns, State: StateEstablished, StateSince: stampOf(now.Add(-time.Second)),
				LastData: stampOf(now.Add(-time.Second)), LastDataAt: stampOf(now.Add(-time.Second)), LastUpdate: stampOf(now),
				RetransSince:  stampOf(retransSince),
				LastKeepalive: stampOf(lastKA),
				Counters:      TCPCounters{TotalRetrans: 6, RTO: 1600 * time.Millisecond, HaveCounters: true},
			}
			if tc.mod != nil {
				tc.mod(c)
			}
			c.Counters.TotalRetrans += c.Counters.Retransmits
			d := vtDefaults
			if tc.defaults != nil {
				d = *tc.defaults
			}
			e := evaluate(c, d, now, vtCfg)
			v := vtFind(e.verdicts, VerdictUnresponsive)
			raised := !tc.giveUp.IsZero()
			if (v != nil) != raised {
				t.Fatalf("unresponsive raised = %v, want %v (verdicts %+v)", v != nil, raised, e.verdicts)
			}
			if len(e.verdicts) > 1 || (len(e.verdicts) == 1 && v == nil) {
				t.Fatalf("verdicts = %v, want at most unresponsive", vtKinds(e.verdicts))
			}
			if e.refresh {
				t.Fatal("refresh requested on a 1s-old measurement")
			}
			if v == nil {
				return
			}
			if !v.Since.Equal(tc.since) {
				t.Errorf("Since = %v, want %v", v.Since, tc.since)
			}
			if v.GiveUp == nil || !v.GiveUp.Equal(tc.giveUp) {
				t.Errorf("GiveUp = %v, want %v", v.GiveUp, tc.giveUp)
			}
			if tc.wantDetail != "" && v.Detail != tc.wantDetail {
				t.Errorf("Detail =\n%s\nwant\n%s", v.Detail, tc.wantDetail)
			}
			if tc.wantInclude != "" && !strings.Contains(v.Detail, tc.wantInclude) {
				t.Errorf("Detail %q does not contain %q", v.Detail, tc.wantInclude)
			}
		})
	}
}

// An unresponsive connection is measured again every recheckUnresponsive,
// since no event says that a peer recovered.
func TestVerdictUnresponsiveRefresh(t *testing.T) {
	now := vtT0.Add(time.Minute)
	tests := []struct {
		measured time.Duration // now - LastDataAt
		retrans  uint32
		refresh  bool
	}{
		{4 * time.Second, 3, false},
		{5*time.Second - time.Nanosecond, 3, false},
		{5 * time.Second, 3, true},
		{6 * time.Second, 3, true},
		{time.Hour, 3, true},
		// Not unresponsive: no reason to measure.
		{time.Hour, 2, false},
	}
	for _, tc := range tests {
		c := &Conn{
			Cookie: 1, Netns: tbNetns, State: StateEstablished, StateSince: stampOf(now.Add(-time.Second)),
			LastData: stampOf(now.Add(-time.Second)), LastDataAt: stampOf(now.Add(-tc.measured)),
			RetransSince: stampOf(now.Add(-10 * time.Second)),
			Counters:     TCPCounters{Retransmits: tc.retrans, HaveCounters: true},
		}
		e := evaluate(c, vtDefaults, now, vtCfg)
		if got := vtFind(e.verdicts, VerdictUnresponsive) != nil; got != (tc.retrans >= 3) {
			t.Errorf("measured %v ago, %d RTOs: raised = %v", tc.measured, tc.retrans, got)
		}
		if e.refresh != tc.refresh {
			t.Errorf("measured %v ago, %d RTOs: refresh = %v, want %v", tc.measured, tc.retrans, e.refresh, tc.refresh)
		}
	}

	// Through the table the namespace is reported.
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	rt := Event{
		Kind: KindRetransmit, Time: vtT0.Add(time.Second), Cookie: 1, Netns: tbNetns,
		Counters: TCPCounters{Retransmits: 3, HaveCounters: true},
	}
	tb.Apply([]Event{rt})
	if need, _ := tb.Evaluate(vtT0.Add(2 * time.Second)); !reflect.DeepEqual(need, map[uint32]bool{tbNetns: true}) {
		t.Fatalf("Evaluate asked for %v, want the connection's namespace", need)
	}
}

// The since of a verdict that persists does not move when a later
// measurement would compute another one.
func TestVerdictUnresponsiveSinceStable(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	c := tb.conns[1]
	t1, t2 := vtT0.Add(time.Second), vtT0.Add(2*time.Second)
	rt := func(at time.Time, n uint32) Event {
		return Event{
			Kind: KindRetransmit, Time: at, Cookie: 1, Netns: tbNetns,
			Settings: SockSettings{HaveKeepalive: true},
			Counters: TCPCounters{Retransmits: n, TotalRetrans: n, HaveCounters: true},
		}
	}
	tb.Apply([]Event{rt(t1, 1), rt(t1.Add(200*time.Millisecond), 2)})
	tb.Evaluate(t1.Add(500 * time.Millisecond))
	if len(c.Verdicts) != 0 {
		t.Fatalf("raised below the threshold: %+v", c.Verdicts)
	}
	tb.Apply([]Event{rt(t2, 3)})
	tb.Evaluate(t2)
	v := vtFind(c.Verdicts, VerdictUnresponsive)
	if v == nil || !v.Since.Equal(t1) {
		t.Fatalf("verdicts = %+v, want unresponsive since %v", c.Verdicts, t1)
	}

	// A snapshot measures the run from its own clock: 3s before vtT0+5s.
	snapAt := vtT0.Add(5 * time.Second)
	r := vtSnapshot(0)
	r.Tcp.Retransmits, r.Tcp.TotalRetrans = 4, 4
	r.RetransAgeMs = 3000
	tb.Apply([]Event{tbObserve(t, r, snapAt, 2, false)})
	if want := vtT0.Add(2 * time.Second); !c.RetransSince.Equal(want) {
		t.Fatalf("RetransSince after snapshot = %v, want %v", c.RetransSince, want)
	}
	tb.Evaluate(snapAt.Add(time.Second))
	v = vtFind(c.Verdicts, VerdictUnresponsive)
	if v == nil || !v.Since.Equal(t1) {
		t.Fatalf("verdicts = %+v, want since kept at %v", c.Verdicts, t1)
	}
	// The give-up estimate follows the newest measurement.
	if want := vtT0.Add(2 * time.Second).Add(924600 * time.Millisecond); v.GiveUp == nil || !v.GiveUp.Equal(want) {
		t.Fatalf("GiveUp = %v, want %v", v.GiveUp, want)
	}
	if got := tb.Stats().Raised[VerdictUnresponsive]; got != 1 {
		t.Fatalf("Raised[unresponsive] = %d, want 1", got)
	}

	// The peer answers: the next snapshot clears the run and the verdict.
	r.Tcp.Retransmits = 0
	tb.Apply([]Event{tbObserve(t, r, snapAt.Add(10*time.Second), 3, false)})
	tb.Evaluate(snapAt.Add(10 * time.Second))
	if len(c.Verdicts) != 0 || !c.RetransSince.IsZero() {
		t.Fatalf("after recovery: verdicts %+v, RetransSince %v", c.Verdicts, c.RetransSince)
	}
}

// retransTimeout against tcp_model_timeout with TCP_RTO_MIN 200ms and
// TCP_RTO_MAX 120s (linear_backoff_thresh = ilog2(600) = 9).
func TestRetransTimeout(t *testing.T) {
	tests := []struct {
		boundary int
		want     time.Duration
	}{
		{0, 200 * time.Millisecond},
		{1, 600 * time.Millisecond},
		{3, 3 * time.Second}, // ((2<<3)-1) * 200ms
		{8, 102200 * time.Millisecond},
		{9, 204600 * time.Millisecond}, // boundary == thresh
		{10, 324600 * time.Millisecond},
		{15, 924600 * time.Millisecond}, // the default tcp_retries2
	}
	for _, tc := range tests {
		if got := retransTimeout(tc.boundary); got != tc.want {
			t.Errorf("retransTimeout(%d) = %v, want %v", tc.boundary, got, tc.want)
		}
	}
}

func TestParseVerdict(t *testing.T) {
	for _, k := range []string{"ghost", "close-wait", "silent", "unresponsive"} {
		got, err := ParseVerdict(k)
		if err != nil || got != k {
			t.Errorf("ParseVerdict(%q) = %q, %v", k, got, err)
		}
	}
	if len(VerdictKinds) != 4 {
		t.Errorf("VerdictKinds = %v, want 4 kinds", VerdictKinds)
	}
	for _, bad := range []string{"", "Ghost", "ghosts", "close_wait", "closewait", " silent", "zombie"} {
		got, err := ParseVerdict(bad)
		if err == nil {
			t.Errorf("ParseVerdict(%q) = %q, want an error", bad, got)
			continue
		}
		if got != "" {
			t.Errorf("ParseVerdict(%q) returned %q with its error", bad, got)
		}
		msg := err.Error()
		if !strings.Contains(msg, "ghost, close-wait, silent, unresponsive") {
			t.Errorf("ParseVerdict(%q) error %q does not list the kinds", bad, msg)
		}
		if !strings.Contains(msg, `"`+bad+`"`) {
			t.Errorf("ParseVerdict(%q) error %q does not quote the input", bad, msg)
		}
	}
}

// ---- exits noticed by the holder walk ----

func TestVerdictExitOfHolder(t *testing.T) {
	t1, t2 := vtT0.Add(time.Second), vtT0.Add(20*time.Second)
	first := []bpf.GhostconnHolderRec{
		vtHolderRec(100, 1, 7, "parent"),
		vtHolderRec(200, 100, 9, "worker"),
		vtHolderRec(201, 100, 4, "helper"),
	}
	tests := []struct {
		name  string
		state State
		later []bpf.GhostconnHolderRec
		dead  []uint32
		want  *CloseRecord
	}{
		{
			name:  "departed and dead, two fds remain",
			later: first[1:],
			dead:  []uint32{100},
			want: &CloseRecord{
				PID: 100, PPID: 1, Comm: "parent", FD: 7, At: t2, RefsLeft: 2, Op: "exit",
				writeSeq: 77, copiedSeq: 88,
			},
		},
		{
			name:  "departed and dead, one fd remains",
			later: first[2:],
			dead:  []uint32{100},
			want: &CloseRecord{
				PID: 100, PPID: 1, Comm: "parent", FD: 7, At: t2, RefsLeft: 1, Op: "exit",
				writeSeq: 77, copiedSeq: 88,
			},
		},
		{
			// The owner still holds it: the child's exit is no evidence.
			name:  "a child departed and is dead, its parent remains",
			later: []bpf.GhostconnHolderRec{first[0], first[2]},
			dead:  []uint32{200},
		},
		{name: "departed but alive", later: first[1:]},
		{name: "nobody departed", later: first, dead: []uint32{100, 200, 201}},
		{name: "no holder remains", later: nil, dead: []uint32{100, 200, 201}},
		{name: "not ESTABLISHED", state: StateFinWait1, later: first[1:], dead: []uint32{100}},
		{
			name: "CLOSE_WAIT", state: StateCloseWait, later: first[1:], dead: []uint32{100},
			want: &CloseRecord{
				PID: 100, PPID: 1, Comm: "parent", FD: 7, At: t2, RefsLeft: 2, Op: "exit",
				writeSeq: 77, copiedSeq: 88,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := vtTable(t)
			dead := map[uint32]bool{}
			for _, p := range tc.dead {
				dead[p] = true
			}
			var asked []uint32
			tb.alive = func(pid uint32) bool {
				asked = append(asked, pid)
				return !dead[pid]
			}
			tbEstablished(t, tb, 1, vtT0)
			r := vtSnapshot(0)
			r.WriteSeq, r.CopiedSeq = 77, 88
			tb.Apply([]Event{tbObserve(t, r, vtT0, 1, true)})
			tb.SetHolders(first, t1)
			if len(asked) != 0 {
				t.Fatalf("first walk checked liveness of %v", asked)
			}
			if tc.state != 0 {
				tb.Apply([]Event{tbStateEv(1, t1, StateEstablished, tc.state, "10.0.0.1:40000", "10.0.0.2:443")})
			}
			tb.SetHolders(tc.later, t2)
			c := tb.conns[1]
			if !reflect.DeepEqual(c.ClosedBy, tc.want) {
				t.Fatalf("ClosedBy = %+v, want %+v", c.ClosedBy, tc.want)
			}
			pending := vtPending(tb, 1)
			if pending != (tc.want != nil) {
				t.Fatalf("pending = %v, want %v", pending, tc.want != nil)
			}
			for _, p := range asked {
				for _, h := range tc.later {
					if h.Pid == p {
						t.Errorf("liveness of pid %d checked though it still holds the socket", p)
					}
				}
			}
		})
	}
}

// A holder that exits while another process keeps the socket becomes a
// ghost whose detail says it exited.
func TestVerdictGhostFromExit(t *testing.T) {
	tb := vtTable(t)
	tb.alive = func(pid uint32) bool { return pid != 100 }
	tbEstablished(t, tb, 1, vtT0)
	tb.Apply([]Event{tbObserve(t, vtSnapshot(0), vtT0, 1, true)})
	tb.SetHolders([]bpf.GhostconnHolderRec{
		vtHolderRec(100, 1, 7, "parent"),
		vtHolderRec(200, 100, 9, "child"),
	}, vtT0.Add(time.Second))
	exitAt := vtT0.Add(10 * time.Second) // 01:23:30Z
	remaining := []bpf.GhostconnHolderRec{vtHolderRec(200, 100, 9, "child")}
	tb.SetHolders(remaining, exitAt)
	c := tb.conns[1]
	if c.ClosedBy == nil || c.ClosedBy.Op != "exit" {
		t.Fatalf("ClosedBy = %+v, want an exit", c.ClosedBy)
	}
	due := exitAt.Add(vtCfg.GhostGrace)
	if need, _ := tb.Evaluate(due.Add(-time.Nanosecond)); len(need) != 0 || len(c.Verdicts) != 0 {
		t.Fatalf("during grace: need %v, verdicts %+v", need, c.Verdicts)
	}
	tb.Apply([]Event{tbObserve(t, vtSnapshot(0), due, 2, false)})
	tb.SetHolders(remaining, due)
	tb.Evaluate(due)
	g := vtFind(c.Verdicts, VerdictGhost)
	if g == nil || !g.Since.Equal(due) {
		t.Fatalf("verdicts = %+v, want a ghost since %v", c.Verdicts, due)
	}
	want := "parent (pid 100) exited at 1970-01-01T01:23:30Z while holding fd 7, but other references kept the socket ESTABLISHED: still held by child (pid 200, fd 9); no data written or read since"
	if g.Detail != want {
		t.Fatalf("Detail =\n%s\nwant\n%s", g.Detail, want)
	}
}

// TestVerdictGhostSurvivesForkedChild: the ghost's holder forks a child (to
// exec a program); a holder walk between fork and exec sees the child with
// the socket's fd, which close-on-exec then drops without a close syscall.
// The child's departure must neither replace the original closer nor make
// the ghost look like a child's inherited copy. cmd/ghostconn's CLI test
// caught this on 6.1 under qemu, where the fork-to-exec window is wide.
func TestVerdictGhostSurvivesForkedChild(t *testing.T) {
	tb := vtTable(t)
	tb.alive = func(pid uint32) bool { return pid != 365 }
	tbEstablished(t, tb, 1, vtT0)
	r := vtSnapshot(0)
	r.WriteSeq, r.CopiedSeq = 77, 88
	tb.Apply([]Event{tbObserve(t, r, vtT0, 1, true)})
	closeAt := vtT0.Add(time.Second)
	tb.Apply([]Event{{Kind: KindClose, Time: closeAt, Cookie: 1, Inode: 4242,
		Task:  &Task{PID: 176, PPID: 1, Comm: "app"},
		Close: Close{FD: 9, Refs: 2, Op: "close", WriteSeq: 77, CopiedSeq: 88}}})
	holder := vtHolderRec(176, 1, 10, "app")
	child := vtHolderRec(365, 176, 10, "app")
	tb.SetHolders([]bpf.GhostconnHolderRec{holder, child}, vtT0.Add(2*time.Second))
	tb.SetHolders([]bpf.GhostconnHolderRec{holder}, vtT0.Add(3*time.Second))
	c := tb.conns[1]
	if c.ClosedBy == nil || c.ClosedBy.PID != 176 || c.ClosedBy.FD != 9 || !c.ClosedBy.At.Equal(closeAt) {
		t.Fatalf("ClosedBy = %+v, want the close of fd 9 by pid 176 at %v", c.ClosedBy, closeAt)
	}
	due := closeAt.Add(vtCfg.GhostGrace)
	tb.Apply([]Event{tbObserve(t, r, due, 2, false)})
	tb.SetHolders([]bpf.GhostconnHolderRec{holder}, due)
	tb.Evaluate(due)
	if g := vtFind(c.Verdicts, VerdictGhost); g == nil || !g.Since.Equal(due) {
		t.Fatalf("verdicts = %+v, want a ghost since %v", c.Verdicts, due)
	}
}

// vtCloseEv is a close of fd by pid (child of ppid) that leaves refs-1
// references, at the I/O positions of vtSeqSnapshot.
func vtCloseEv(at time.Time, pid, ppid uint32, comm string, fd int32, refs uint32, op string) Event {
	return Event{Kind: KindClose, Time: at, Cookie: 1, Inode: 1001,
		Task:  &Task{PID: pid, PPID: ppid, Comm: comm},
		Close: Close{FD: fd, Refs: refs, Op: op, WriteSeq: 77, CopiedSeq: 88}}
}

// vtSeqSnapshot is vtSnapshot with the I/O positions vtCloseEv uses.
func vtSeqSnapshot() bpf.GhostconnSockRec {
	r := vtSnapshot(0)
	r.WriteSeq, r.CopiedSeq = 77, 88
	return r
}

// vtDecide takes a snapshot and a holder walk at when and evaluates.
func vtDecide(t *testing.T, tb *Table, when time.Time, gen uint64, holders ...bpf.GhostconnHolderRec) *Conn {
	t.Helper()
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), when, gen, false)})
	tb.SetHolders(holders, when)
	tb.Evaluate(when)
	return tb.conns[1]
}

// TestVerdictGhostWhenOpenerDiesAfterHelperClosed: the opener X forks P; a
// helper of P drops its inherited copy (close_range before exec), which
// records a close by a child of P. Then X exits: the socket is P's alone,
// but P never uses it. X's exit is the evidence, and it is a ghost.
func TestVerdictGhostWhenOpenerDiesAfterHelperClosed(t *testing.T) {
	tb := vtTable(t)
	dead := map[uint32]bool{}
	tb.alive = func(pid uint32) bool { return !dead[pid] }
	tbEstablished(t, tb, 1, vtT0)
	x, p := vtHolderRec(100, 1, 7, "opener"), vtHolderRec(200, 100, 9, "child")
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), vtT0, 1, true)})
	tb.SetHolders([]bpf.GhostconnHolderRec{x, p}, vtT0.Add(time.Second))
	tb.Apply([]Event{vtCloseEv(vtT0.Add(2*time.Second), 300, 200, "helper", 9, 3, "close_range")})
	exitAt := vtT0.Add(10 * time.Second)
	dead[100] = true
	tb.SetHolders([]bpf.GhostconnHolderRec{p}, exitAt)
	c := tb.conns[1]
	if c.ClosedBy == nil || c.ClosedBy.PID != 100 || c.ClosedBy.Op != "exit" {
		t.Fatalf("ClosedBy = %+v, want the opener's exit", c.ClosedBy)
	}
	due := exitAt.Add(vtCfg.GhostGrace)
	if c = vtDecide(t, tb, due, 2, p); vtFind(c.Verdicts, VerdictGhost) == nil {
		t.Fatalf("verdicts = %+v, want a ghost held by the child", c.Verdicts)
	}
}

// TestVerdictDaemonHandoffGetsGrace: P owns the socket (a helper of P once
// dropped its copy, which is no ghost); much later P forks C2 and exits, as
// a daemon does. C2 gets the grace period to use the socket: no verdict at
// once, from the helper's stale close.
func TestVerdictDaemonHandoffGetsGrace(t *testing.T) {
	tb := vtTable(t)
	dead := map[uint32]bool{}
	tb.alive = func(pid uint32) bool { return !dead[pid] }
	tbEstablished(t, tb, 1, vtT0)
	p := vtHolderRec(200, 1, 7, "daemon")
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), vtT0, 1, true)})
	tb.SetHolders([]bpf.GhostconnHolderRec{p}, vtT0.Add(time.Second))
	tb.Apply([]Event{vtCloseEv(vtT0.Add(2*time.Second), 300, 200, "helper", 5, 2, "close_range")})
	if c := vtDecide(t, tb, vtT0.Add(time.Minute), 2, p); len(c.Verdicts) != 0 {
		t.Fatalf("a helper's close with the parent holding: verdicts %+v", c.Verdicts)
	}
	handoff := vtT0.Add(2 * time.Minute)
	dead[200] = true
	c2 := vtHolderRec(400, 200, 7, "daemon")
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), handoff, 3, false)})
	tb.SetHolders([]bpf.GhostconnHolderRec{c2}, handoff)
	tb.Evaluate(handoff)
	c := tb.conns[1]
	if c.ClosedBy == nil || c.ClosedBy.PID != 200 || !c.ClosedBy.At.Equal(handoff) {
		t.Fatalf("ClosedBy = %+v, want the daemon parent's exit at %v", c.ClosedBy, handoff)
	}
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts at the handoff: %+v, want none during the grace period", c.Verdicts)
	}
}

// TestVerdictGhostSurvivesChildClosingInheritedCopy: like a fork child
// passing through, but the child closes its inherited copy with a close
// syscall (Python's subprocess, OpenSSH's closefrom). The parent's earlier
// close stays the evidence and the ghost stands.
func TestVerdictGhostSurvivesChildClosingInheritedCopy(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), vtT0, 1, true)})
	closeAt := vtT0.Add(time.Second)
	tb.Apply([]Event{vtCloseEv(closeAt, 176, 1, "app", 9, 2, "close")})
	holder := vtHolderRec(176, 1, 10, "app")
	tb.SetHolders([]bpf.GhostconnHolderRec{holder, vtHolderRec(365, 176, 10, "app")}, vtT0.Add(2*time.Second))
	tb.Apply([]Event{vtCloseEv(vtT0.Add(2500*time.Millisecond), 365, 176, "app", 10, 2, "close_range")})
	c := tb.conns[1]
	if c.ClosedBy == nil || c.ClosedBy.PID != 176 || !c.ClosedBy.At.Equal(closeAt) {
		t.Fatalf("ClosedBy = %+v, want the parent's close at %v", c.ClosedBy, closeAt)
	}
	if len(c.Holders) != 1 || c.Holders[0].PID != 176 {
		t.Fatalf("holders %+v, want the parent's alone", c.Holders)
	}
	if c = vtDecide(t, tb, closeAt.Add(vtCfg.GhostGrace), 2, holder); vtFind(c.Verdicts, VerdictGhost) == nil {
		t.Fatalf("verdicts = %+v, want the ghost", c.Verdicts)
	}
}

// TestEvaluatePastWakeDoesNotHideGrace: a connection quiet for longer than
// the silent threshold but with a frequent keepalive (no verdict) once
// asked to be woken at a time already past. A close that starts a grace
// period must still get its deadline; it used not to, and the ghost waited
// for the next reconcile.
func TestEvaluatePastWakeDoesNotHideGrace(t *testing.T) {
	tb := vtTable(t)
	tbEstablished(t, tb, 1, vtT0)
	r := vtSeqSnapshot()
	r.Full, r.Tcp.Keepalive, r.Tcp.KaTime, r.Tcp.KaIntvl, r.Tcp.KaProbes = 1, 1, 250*30, 250*10, 3
	quiet := 3 * vtCfg.SilentAfter
	j := uint32(quiet * 250 / time.Second)
	r.SendAgeJiffies, r.RecvAgeJiffies = j, j
	now := vtT0.Add(time.Second)
	tb.Apply([]Event{tbObserve(t, r, now, 1, true)})
	tb.SetHolders([]bpf.GhostconnHolderRec{vtHolderRec(176, 1, 10, "app")}, now)
	if _, next := tb.Evaluate(now); !next.IsZero() && !next.After(now) {
		t.Fatalf("next = %v, not after now %v", next, now)
	}
	c := tb.conns[1]
	if len(c.Verdicts) != 0 {
		t.Fatalf("verdicts %+v, want none (keepalive every 30s)", c.Verdicts)
	}
	closeAt := now.Add(time.Second)
	tb.Apply([]Event{vtCloseEv(closeAt, 176, 1, "app", 9, 2, "close")})
	due := closeAt.Add(vtCfg.GhostGrace)
	if _, next := tb.Evaluate(closeAt); !next.Equal(due) {
		t.Fatalf("next = %v after the close, want the end of the grace period %v", next, due)
	}
}

// TestKeepaliveGiveUpSurvivesSnapshot: a snapshot reads probes_out after the
// timer counted its probe and carries no idle time; the give-up estimate
// rests on what the keepalive event saw. Setup: idle 60s, interval 10s,
// count 3; data last received at T0; the timer fires at T0+70s with one
// probe out.
func TestKeepaliveGiveUpSurvivesSnapshot(t *testing.T) {
	t0 := time.Unix(5000, 0)
	for _, ut := range []time.Duration{0, 90 * time.Second} {
		c := &Conn{
			State:    StateEstablished,
			Settings: SockSettings{Keepalive: true, KeepIdle: time.Minute, KeepInterval: 10 * time.Second, KeepCount: 3, UserTimeout: ut},
		}
		tbl := NewTable(TableConfig{MaxConns: 10, Verdicts: DefaultVerdictConfig})
		ev := Event{Kind: KindKeepalive, Time: t0.Add(70 * time.Second), Settings: c.Settings,
			Counters: TCPCounters{ProbesOut: 1, KeepaliveIdle: 70 * time.Second, HaveCounters: true}}
		tbl.stats.Applied = map[Kind]uint64{}
		c.Cookie = 1
		tbl.conns[1] = c
		tbl.Apply([]Event{func() Event { e := ev; e.Cookie = 1; return e }()})
		want := t0.Add(90 * time.Second)
		if at, _ := GiveUp(c, NetDefaults{}); !at.Equal(want) {
			t.Fatalf("user timeout %s, after the event: give-up %v, want %v", ut, at, want)
		}
		// A snapshot five seconds later sees probes_out 2 (counted at the
		// firing) and no keepalive idle.
		c.Counters = TCPCounters{ProbesOut: 2, HaveCounters: true}
		if at, _ := GiveUp(c, NetDefaults{}); !at.Equal(want) {
			t.Errorf("user timeout %s, after a snapshot: give-up %v, want %v", ut, at, want)
		}
	}
}

// TestSilentDetailNamesTheIdleSource: with only TCP_KEEPINTVL on the
// socket, the idle time comes from the namespace's sysctl and the detail
// says so.
func TestSilentDetailNamesTheIdleSource(t *testing.T) {
	now := time.Unix(10000, 0)
	c := &Conn{State: StateEstablished, LastData: stampOf(now.Add(-10 * time.Minute)), LastDataAt: stampOf(now),
		Settings: SockSettings{Keepalive: true, KeepInterval: 5 * time.Second}}
	v, _ := silentRule(c, NetDefaults{KeepIdle: 2 * time.Hour, KeepInterval: 75 * time.Second, KeepCount: 9}, now, DefaultVerdictConfig)
	if v == nil {
		t.Fatal("not flagged")
	}
	if !strings.Contains(v.Detail, "from the namespace's net.ipv4.tcp_keepalive_time") || strings.Contains(v.Detail, "TCP_KEEPIDLE") {
		t.Errorf("detail %q misnames where the idle time comes from", v.Detail)
	}
}

// vtPending reports whether the table will come back to cookie's ghost
// decision: the connection is queued for evaluation, or its next deadline
// is the end of its grace period.
func vtPending(tb *Table, cookie uint64) bool {
	c := tb.conns[cookie]
	if c == nil || c.ClosedBy == nil || c.ClosedBy.RefsLeft == 0 {
		return false
	}
	return c.dirty || (c.hasNextEval && c.nextEval == tb.tl.mono(c.ClosedBy.At.Add(tb.cfg.Verdicts.GhostGrace)))
}
