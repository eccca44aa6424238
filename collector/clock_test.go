package collector

import (
	"reflect"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// fakeClock is a Clock whose wall clock a test can step while the
// monotonic clock moves only as the test advances it.
type fakeClock struct {
	wall time.Time // built with time.Unix: no monotonic reading of Go's
	mono int64
}

func newFakeClock() *fakeClock {
	return &fakeClock{wall: time.Unix(1_700_000_000, 0), mono: int64(42 * time.Hour)}
}

func (c *fakeClock) Now() (time.Time, int64) { return c.wall, c.mono }

// advance lets d pass: both clocks move.
func (c *fakeClock) advance(d time.Duration) {
	c.wall = c.wall.Add(d)
	c.mono += int64(d)
}

// step sets the wall clock by d, as NTP or `date -s` does; no time passes.
func (c *fakeClock) step(d time.Duration) { c.wall = c.wall.Add(d) }

// clockSteps are the wall-clock steps the tests survive.
var clockSteps = []time.Duration{time.Hour, -time.Hour}

func TestTimelineStep(t *testing.T) {
	clk := newFakeClock()
	l := newTimeline(clk)
	start := l.at(clk.mono)
	if !start.Equal(clk.wall) {
		t.Fatalf("timeline at now = %v, want the wall clock %v", start, clk.wall)
	}
	clk.advance(time.Minute)
	if m, step := l.now(); m != clk.mono || step != 0 {
		t.Fatalf("now() = %d, %v after a minute, want %d, no step", m, step, clk.mono)
	}
	// A slewing clock drifts below the tolerance: the timeline stays.
	clk.step(clockStepTolerance / 2)
	if _, step := l.now(); step != 0 {
		t.Fatalf("a drift of %v taken for a step of %v", clockStepTolerance/2, step)
	}
	if got, want := l.mono(l.at(clk.mono)), clk.mono; got != want {
		t.Fatalf("mono(at(%d)) = %d", want, got)
	}
	// Past it, the whole drift is the step, and the timeline follows the
	// wall clock again.
	clk.step(clockStepTolerance)
	if _, step := l.now(); step != clockStepTolerance*3/2 {
		t.Fatalf("step = %v, want %v", step, clockStepTolerance*3/2)
	}
	for _, d := range clockSteps {
		clk.step(d)
		if _, step := l.now(); step != d {
			t.Fatalf("step = %v, want %v", step, d)
		}
		if got := l.at(clk.mono); !got.Equal(clk.wall) {
			t.Fatalf("after a step of %v the timeline's now is %v, want the wall clock %v", d, got, clk.wall)
		}
	}
}

func TestSystemClockReadsOneInstant(t *testing.T) {
	c := newSystemClock()
	w1, m1 := c.Now()
	w2, m2 := c.Now()
	// Both readings carry Go's monotonic clock, so Sub is monotonic and
	// must match the CLOCK_MONOTONIC difference exactly.
	if d := w2.Sub(w1); int64(d) != m2-m1 {
		t.Fatalf("wall readings %v apart, monotonic %v", d, time.Duration(m2-m1))
	}
	if m1 <= 0 {
		t.Fatalf("CLOCK_MONOTONIC reading %d", m1)
	}
}

// TestConnShiftMovesEveryTime guards the rebase on a clock step: every
// time.Time a Conn holds must move, or a field added later would be left
// on the old timeline.
func TestConnShiftMovesEveryTime(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	c := &Conn{
		History:  []Transition{{At: base}},
		ClosedBy: &CloseRecord{At: base},
	}
	giveUp := base
	c.Verdicts = []Verdict{{Kind: VerdictUnresponsive, Since: base, GiveUp: &giveUp}}
	rv := reflect.ValueOf(c).Elem()
	timeType, stampType := reflect.TypeOf(time.Time{}), reflect.TypeOf(stamp(0))
	isTime := func(f reflect.Value) bool { return (f.Type() == timeType || f.Type() == stampType) && f.CanSet() }
	set := func(f reflect.Value, t time.Time) {
		if f.Type() == stampType {
			f.Set(reflect.ValueOf(stampOf(t)))
		} else {
			f.Set(reflect.ValueOf(t))
		}
	}
	get := func(f reflect.Value) time.Time {
		if f.Type() == stampType {
			return f.Interface().(stamp).Time()
		}
		return f.Interface().(time.Time)
	}
	var names []string
	for i := 0; i < rv.NumField(); i++ {
		if f := rv.Field(i); isTime(f) {
			set(f, base.Add(time.Duration(i)*time.Second))
			names = append(names, rv.Type().Field(i).Name)
		}
	}
	oldClosedBy, oldVerdicts := c.ClosedBy, c.Verdicts
	c.HoldersAt = 0 // unset stays unset
	c.shift(time.Hour)
	for i := 0; i < rv.NumField(); i++ {
		f := rv.Field(i)
		if !isTime(f) {
			continue
		}
		name := rv.Type().Field(i).Name
		got := get(f)
		if name == "HoldersAt" {
			if !got.IsZero() {
				t.Errorf("unset HoldersAt shifted to %v", got)
			}
			continue
		}
		if want := base.Add(time.Duration(i)*time.Second + time.Hour); !got.Equal(want) {
			t.Errorf("%s = %v after the shift, want %v", name, got, want)
		}
	}
	if len(names) < 9 {
		t.Fatalf("found only the time fields %v", names)
	}
	want := base.Add(time.Hour)
	if !c.History[0].At.Equal(want) || !c.ClosedBy.At.Equal(want) || !c.Verdicts[0].Since.Equal(want) || !c.Verdicts[0].GiveUp.Equal(want) {
		t.Fatalf("nested times not shifted: history %v, closed by %v, verdict %+v", c.History[0].At, c.ClosedBy.At, c.Verdicts[0])
	}
	// What views and watchers were handed is left alone.
	if !oldClosedBy.At.Equal(base) || !oldVerdicts[0].Since.Equal(base) || !oldVerdicts[0].GiveUp.Equal(base) {
		t.Fatalf("shared records changed in place: %v, %+v", oldClosedBy.At, oldVerdicts[0])
	}
}

// clockGhost puts cookie 1 in a table reading clk: ESTABLISHED, seeded,
// held by the closer (fd 7) and a keeper (fd 9), then fd 7 closed at
// clk's now with one reference left. It returns the table and the keeper.
func clockGhost(t *testing.T, clk *fakeClock) (*Table, bpf.GhostconnHolderRec) {
	t.Helper()
	tb := vtTable(t)
	tb.setClock(clk)
	tbEstablished(t, tb, 1, clk.wall)
	tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), clk.wall, 1, true)})
	keeper := vtHolderRec(200, 1, 9, "keeper")
	tb.SetHolders([]bpf.GhostconnHolderRec{vtHolderRec(100, 1, 7, "closer"), keeper}, clk.wall)
	clk.advance(10 * time.Second)
	tb.Apply([]Event{vtCloseEv(clk.wall, 100, 1, "closer", 7, 2, "close")})
	if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != vtCfg.GhostGrace {
		t.Fatalf("after the close: need %v, wait %v, want none and the grace period %v", need, wait, vtCfg.GhostGrace)
	}
	return tb, keeper
}

// TestClockStepGhostGrace: a wall-clock step of +1h or -1h during a ghost's
// grace period neither decides it early nor delays it. The grace period
// ends when the monotonic clock says; the snapshot taken after the step
// (by the stepped wall clock) is newer than the close, and the verdict
// shows its times as the stepped wall clock does.
func TestClockStepGhostGrace(t *testing.T) {
	for _, step := range clockSteps {
		t.Run(step.String(), func(t *testing.T) {
			clk := newFakeClock()
			tb, keeper := clockGhost(t, clk)
			closedAt := clk.wall
			c := tb.conns[1]

			clk.advance(time.Second)
			clk.step(step)
			left := vtCfg.GhostGrace - time.Second
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != left {
				t.Fatalf("after the step: need %v, wait %v, want none and %v", need, wait, left)
			}
			// A snapshot after the step re-evaluates the connection; its
			// deadline stays where it was.
			tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), clk.wall, 2, false)})
			tb.SetHolders([]bpf.GhostconnHolderRec{keeper}, clk.wall)
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != left || len(c.Verdicts) != 0 {
				t.Fatalf("after a snapshot: need %v, wait %v, verdicts %+v, want none, %v, none", need, wait, left, c.Verdicts)
			}

			clk.advance(left - time.Nanosecond)
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != time.Nanosecond || len(c.Verdicts) != 0 {
				t.Fatalf("1ns before the grace ends: need %v, wait %v, verdicts %+v", need, wait, c.Verdicts)
			}
			clk.advance(time.Nanosecond)
			if need, _ := tb.EvaluateNow(); !need[tbNetns] {
				t.Fatalf("at the end of the grace period: need %v, want a refresh of the namespace", need)
			}
			tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), clk.wall, 3, false)})
			tb.SetHolders([]bpf.GhostconnHolderRec{keeper}, clk.wall)
			if need, _ := tb.EvaluateNow(); len(need) != 0 {
				t.Fatalf("after the refresh: need %v", need)
			}
			g := vtFind(c.Verdicts, VerdictGhost)
			if g == nil {
				t.Fatalf("verdicts %+v at the end of the grace period, want a ghost", c.Verdicts)
			}
			// Wall time at the edges: as the stepped wall clock shows it.
			if want := closedAt.Add(step); !c.ClosedBy.At.Equal(want) {
				t.Errorf("ClosedBy.At = %v, want %v", c.ClosedBy.At, want)
			}
			if want := closedAt.Add(step + vtCfg.GhostGrace); !g.Since.Equal(want) || !g.Since.Equal(clk.wall) {
				t.Errorf("ghost since %v, want %v", g.Since, want)
			}
		})
	}
}

// TestClockStepCloseWait: the same for the CLOSE_WAIT threshold, with the
// step halfway through it.
func TestClockStepCloseWait(t *testing.T) {
	for _, step := range clockSteps {
		t.Run(step.String(), func(t *testing.T) {
			clk := newFakeClock()
			tb := vtTable(t)
			tb.setClock(clk)
			tbEstablished(t, tb, 1, clk.wall)
			tb.Apply([]Event{tbObserve(t, vtSnapshot(0), clk.wall, 1, true)})
			holder := vtHolderRec(100, 1, 7, "app")
			tb.SetHolders([]bpf.GhostconnHolderRec{holder}, clk.wall)
			clk.advance(time.Second)
			peerClosed := clk.wall
			tb.Apply([]Event{tbStateEv(1, clk.wall, StateEstablished, StateCloseWait, "10.0.0.1:40000", "10.0.0.2:443")})
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != vtCfg.CloseWaitAfter {
				t.Fatalf("entering CLOSE_WAIT: need %v, wait %v, want none and %v", need, wait, vtCfg.CloseWaitAfter)
			}
			c := tb.conns[1]

			half := vtCfg.CloseWaitAfter / 2
			clk.advance(half)
			clk.step(step)
			// A snapshot after the step, its sockets and then its holder
			// walk, as observe takes them.
			r := vtSnapshot(0)
			r.State = uint8(StateCloseWait)
			tb.Apply([]Event{tbObserve(t, r, clk.wall, 2, false)})
			tb.SetHolders([]bpf.GhostconnHolderRec{holder}, clk.wall)
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != half || len(c.Verdicts) != 0 {
				t.Fatalf("after the step: need %v, wait %v, verdicts %+v, want none, %v, none", need, wait, half, c.Verdicts)
			}
			clk.advance(half - time.Nanosecond)
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != time.Nanosecond || len(c.Verdicts) != 0 {
				t.Fatalf("1ns before the threshold: need %v, wait %v, verdicts %+v", need, wait, c.Verdicts)
			}
			clk.advance(time.Nanosecond)
			if need, _ := tb.EvaluateNow(); !need[tbNetns] {
				t.Fatalf("at the threshold: need %v, want a refresh of the namespace", need)
			}
			tb.Apply([]Event{tbObserve(t, r, clk.wall, 3, false)})
			tb.SetHolders([]bpf.GhostconnHolderRec{holder}, clk.wall)
			tb.EvaluateNow()
			v := vtFind(c.Verdicts, VerdictCloseWait)
			if v == nil {
				t.Fatalf("verdicts %+v at the threshold, want close-wait", c.Verdicts)
			}
			if want := peerClosed.Add(step + vtCfg.CloseWaitAfter); !v.Since.Equal(want) {
				t.Errorf("close-wait since %v, want %v", v.Since, want)
			}
			if want := peerClosed.Add(step); !c.StateSince.Equal(want) {
				t.Errorf("StateSince = %v, want %v", c.StateSince, want)
			}
		})
	}
}

// TestClockStepCollectorWait: the wait the agent's loop hands its timer is
// a monotonic difference, through steps either way.
func TestClockStepCollectorWait(t *testing.T) {
	clk := newFakeClock()
	tb, _ := clockGhost(t, clk)
	c := &Collector{table: tb}
	if got := c.evaluate(); got != vtCfg.GhostGrace {
		t.Fatalf("wait %v after the close, want %v", got, vtCfg.GhostGrace)
	}
	passed := time.Duration(0)
	for _, step := range []time.Duration{time.Hour, -2 * time.Hour, time.Hour} {
		clk.advance(500 * time.Millisecond)
		passed += 500 * time.Millisecond
		clk.step(step)
		if got, want := c.evaluate(), vtCfg.GhostGrace-passed; got != want {
			t.Fatalf("after a step of %v: wait %v, want %v", step, got, want)
		}
	}
}

// TestClockStepKernelEventTimes: a kernel event decoded with the offset of
// before a wall-clock step (the reader refreshes it only when the ring is
// idle) and applied after it lands on the table's timeline by its
// monotonic time, so the ghost grace period it starts ends on time.
func TestClockStepKernelEventTimes(t *testing.T) {
	for _, step := range clockSteps {
		t.Run(step.String(), func(t *testing.T) {
			clk := newFakeClock()
			tb := vtTable(t)
			tb.setClock(clk)
			tbEstablished(t, tb, 1, clk.wall)
			tb.Apply([]Event{tbObserve(t, vtSeqSnapshot(), clk.wall, 1, true)})
			tb.SetHolders([]bpf.GhostconnHolderRec{vtHolderRec(100, 1, 7, "closer"), vtHolderRec(200, 1, 9, "keeper")}, clk.wall)
			clk.advance(10 * time.Second)
			stale := clk.wall // the decoder's idea of now, from before the step
			clk.step(step)
			ev := vtCloseEv(stale, 100, 1, "closer", 7, 2, "close")
			ev.Mono = clk.mono
			tb.Apply([]Event{ev})
			if need, wait := tb.EvaluateNow(); len(need) != 0 || wait != vtCfg.GhostGrace {
				t.Fatalf("after a close decoded before a step of %v: need %v, wait %v, want none and the grace period %v", step, need, wait, vtCfg.GhostGrace)
			}
			if c := tb.conns[1]; !c.ClosedBy.At.Equal(clk.wall) {
				t.Errorf("ClosedBy.At = %v, want the stepped wall clock's now %v", c.ClosedBy.At, clk.wall)
			}
		})
	}
}
