package collector

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// topTable is a table of n connections: cookie i established i seconds
// after tbT0, with i%7 retransmits; 3 and 9 are flagged (9 the older
// verdict), 5 is in CLOSE_WAIT.
func topTable(t *testing.T, n int) *Table {
	t.Helper()
	tb := NewTable(TableConfig{MaxConns: n + 10, HistoryTTL: 5 * time.Minute, MaxHistory: 100})
	for i := 1; i <= n; i++ {
		tb.Apply([]Event{tbStateEv(uint64(i), tbT0.Add(time.Duration(i)*time.Second), StateSynSent, StateEstablished,
			fmt.Sprintf("10.0.0.1:%d", 1000+i), "10.0.0.2:443")})
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for i, c := range tb.conns {
		c.Counters.TotalRetrans = uint32(i % 7)
	}
	tb.conns[3].Verdicts = []Verdict{{Kind: VerdictSilent, Since: tbT0.Add(50 * time.Second)}}
	tb.conns[9].Verdicts = []Verdict{{Kind: VerdictGhost, Since: tbT0.Add(20 * time.Second)}, {Kind: VerdictSilent, Since: tbT0.Add(40 * time.Second)}}
	tb.conns[5].State = StateCloseWait
	tb.changes++
	return tb
}

func cookies(vs []ConnView) []uint64 {
	out := make([]uint64, len(vs))
	for i := range vs {
		out[i] = vs[i].Cookie
	}
	return out
}

// TestTopCountsAndOrder: counts cover every connection; rows are the
// first Limit in the order asked for, flagged first by default (the
// oldest verdict first, then the longest idle).
func TestTopCountsAndOrder(t *testing.T) {
	tb := topTable(t, 200)
	now := tbT0.Add(time.Hour)
	top := tb.Top(now, TopOptions{Limit: 4})
	if top.Total != 200 || top.Matched != 200 || top.Flagged != 2 || top.ByState["ESTABLISHED"] != 199 || top.ByState["CLOSE_WAIT"] != 1 ||
		top.ByVerdict[VerdictGhost] != 1 || top.ByVerdict[VerdictSilent] != 2 {
		t.Errorf("counts: %+v", top)
	}
	// 9 (verdict at +20s), 3 (+50s), then the longest idle: the oldest
	// connections, 1 and 2.
	if got := cookies(top.Rows); !slices.Equal(got, []uint64{9, 3, 1, 2}) {
		t.Errorf("default order: %v, want [9 3 1 2]", got)
	}
	if got := cookies(tb.Top(now, TopOptions{Limit: 3, Sort: "retransmits"}).Rows); !slices.Equal(got, []uint64{6, 13, 20}) {
		t.Errorf("by retransmits: %v, want [6 13 20]", got)
	}
	if got := cookies(tb.Top(now, TopOptions{Limit: 2, Sort: "age"}).Rows); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("by age: %v, want [1 2]", got)
	}
	m := tb.Top(now, TopOptions{Limit: 10, Match: func(c *Conn) bool { return c.State == StateCloseWait }})
	if m.Matched != 1 || len(m.Rows) != 1 || m.Rows[0].Cookie != 5 || m.Total != 200 {
		t.Errorf("matched CLOSE_WAIT: matched %d, rows %v, total %d", m.Matched, cookies(m.Rows), m.Total)
	}
	if z := tb.Top(now, TopOptions{}); len(z.Rows) != 0 || z.Matched != 200 {
		t.Errorf("limit 0: %d rows, %d matched", len(z.Rows), z.Matched)
	}
}

// TestTopKeepsTheFirstRows: for every order and limit, the rows are the
// first ones of the whole table sorted in that order.
func TestTopKeepsTheFirstRows(t *testing.T) {
	tb := topTable(t, 300)
	now := tbT0.Add(time.Hour)
	for _, key := range TopSortKeys {
		less := topLess(key)
		all := make([]*Conn, 0, len(tb.conns))
		for _, c := range tb.conns {
			all = append(all, c)
		}
		slices.SortFunc(all, func(a, b *Conn) int {
			if less(a, b) {
				return -1
			}
			if less(b, a) {
				return 1
			}
			return 0
		})
		for _, limit := range []int{1, 7, 64, 300, 400} {
			got := cookies(tb.Top(now, TopOptions{Limit: limit, Sort: key}).Rows)
			want := make([]uint64, 0, limit)
			for _, c := range all[:min(limit, len(all))] {
				want = append(want, c.Cookie)
			}
			if !slices.Equal(got, want) {
				t.Errorf("sort %q limit %d: %v, want %v", key, limit, got, want)
			}
		}
	}
}

// TestTopReusesItsPassOnlyWhileNothingChanged: a view of an unchanged
// table does not pass over it again, and after each kind of change
// (events, a verdict raised by time alone, a holder walk, a sweep) the
// view is the one a fresh pass gives.
func TestTopReusesItsPassOnlyWhileNothingChanged(t *testing.T) {
	tb := topTable(t, 50)
	now := tbT0.Add(time.Minute)
	calls := 0
	counting := func(c *Conn) bool { calls++; return c.Cookie%2 == 1 || c.Cookie == 60 }
	check := func(step string, wantPass bool) {
		t.Helper()
		for _, key := range TopSortKeys {
			calls = 0
			got := tb.Top(now, TopOptions{Match: counting, Key: "odd", Sort: key, Limit: 6})
			if passed := calls > 0; passed != wantPass {
				t.Errorf("%s, sort %q: passed over the table %v, want %v", step, key, passed, wantPass)
			}
			fresh := tb.Top(now, TopOptions{Match: func(c *Conn) bool { return c.Cookie%2 == 1 || c.Cookie == 60 }, Sort: key, Limit: 6})
			if g, f := topJSON(t, got), topJSON(t, fresh); g != f {
				t.Errorf("%s, sort %q: reused view\n%s\nwant the fresh one\n%s", step, key, g, f)
			}
			// The same again: nothing changed in between.
			calls = 0
			tb.Top(now, TopOptions{Match: counting, Key: "odd", Sort: key, Limit: 6})
			if calls != 0 {
				t.Errorf("%s, sort %q: a second view of an unchanged table passed over it", step, key)
			}
		}
	}
	check("first view", true)
	now = now.Add(time.Second) // time alone changes no order
	check("a second later", false)

	tb.Apply([]Event{tbStateEv(60, now, StateSynSent, StateEstablished, "10.0.0.1:9060", "10.0.0.2:443")})
	check("after a new connection", true)
	tb.Apply([]Event{tbStateEv(7, now, StateEstablished, StateCloseWait, "10.0.0.1:1007", "10.0.0.2:443")})
	check("after a state change", true)

	now = now.Add(DefaultVerdictConfig.CloseWaitAfter + time.Second)
	rec := vtHolderRec(4242, 1, 5, "keeper")
	rec.Cookie, rec.Ino = 11, 0
	tb.SetHolders([]bpf.GhostconnHolderRec{rec}, now)
	check("after a holder walk", true)

	before := tb.Stats().Raised[VerdictCloseWait]
	tb.Evaluate(now)
	if tb.Stats().Raised[VerdictCloseWait] == before {
		t.Fatal("no close-wait verdict raised: the step below tests nothing")
	}
	check("after verdicts raised by time", true)
	tb.Evaluate(now)
	check("after an evaluation that changed nothing", false)

	// Connections 7 and 60 had events after the sweep's snapshot began.
	tb.Sweep(99, tbT0.Add(55*time.Second), map[uint32]bool{tbNetns: true})
	if n := tb.Len(); n == 0 || n == 51 {
		t.Fatalf("sweep left %d connections: the step below tests nothing", n)
	}
	check("after a sweep", true)
}

func topJSON(t *testing.T, top Top) string {
	t.Helper()
	b, err := json.Marshal(top)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
