package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("median reordered its input: %v", tc.in)
			}
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) is not NaN")
	}
}

func TestPairedRatios(t *testing.T) {
	got := pairedRatios([]float64{9, 8, 5}, []float64{10, 0, 10, 7})
	want := []float64{0.9, 0.5} // the round where bare made 0 is left out
	if len(got) != len(want) {
		t.Fatalf("pairedRatios = %v, want %v", got, want)
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-9 {
			t.Fatalf("pairedRatios = %v, want %v", got, want)
		}
	}
}

func TestDiffProgStats(t *testing.T) {
	before := map[uint32]progStat{
		1: {ID: 1, Name: "inet_sock_set_state", RunNs: 1000, RunCnt: 10},
		2: {ID: 2, Name: "sys_enter_close", RunNs: 50, RunCnt: 1},
	}
	after := map[uint32]progStat{
		1: {ID: 1, Name: "inet_sock_set_state", RunNs: 4000, RunCnt: 20},
		2: {ID: 2, Name: "sys_enter_close", RunNs: 50, RunCnt: 1},
	}
	d := diffProgStats(before, after)
	if got := d["inet_sock_set_state"].meanNs(); got != 300 {
		t.Errorf("mean = %v, want 300", got)
	}
	if d["sys_enter_close"].RunCnt != 0 || d["sys_enter_close"].meanNs() != 0 {
		t.Errorf("idle program: %+v", d["sys_enter_close"])
	}
}

func TestNoiseBetween(t *testing.T) {
	t0 := time.Now()
	a := cpuSnap{at: t0, busy: 10 * time.Second, ours: 2 * time.Second}
	b := cpuSnap{at: t0.Add(10 * time.Second), busy: 25 * time.Second, ours: 12 * time.Second, steal: time.Second}
	n := noiseBetween(a, b)
	if math.Abs(n.other-0.5) > 1e-9 || math.Abs(n.steal-0.1) > 1e-9 {
		t.Errorf("noise = %+v, want other 0.5 steal 0.1", n)
	}
}

func TestGoalsMarkPassAndFail(t *testing.T) {
	c := &config{rounds: 2, clients: 8, skip: map[string]bool{}}
	r := newResults(c)
	r.churn[obsBare] = []float64{100, 100}
	r.churn[obsGhostconn] = []float64{96, 90}
	r.roundsDone = 2
	r.churnObservers = []string{obsBare, obsGhostconn}
	// Each hook against the empty program of its type in the same window.
	r.addWindow(winChurn, time.Second, map[string]progDelta{
		"inet_sock_set_state":                         {Name: "inet_sock_set_state", RunNs: 130 * 2000, RunCnt: 2000},
		"(empty) tp_btf/inet_sock_set_state":          {RunNs: 50 * 2000, RunCnt: 2000},
		"sys_enter_close":                             {Name: "sys_enter_close", RunNs: 120 * 5000, RunCnt: 5000},
		"(empty) tracepoint/syscalls/sys_enter_close": {RunNs: 50 * 5000, RunCnt: 5000},
		"timer_expire_entry":                          {Name: "timer_expire_entry", RunNs: 0, RunCnt: 0},
	})
	// Too few runs to compare: left out, whatever the means.
	r.addWindow(winQuiet, time.Second, map[string]progDelta{
		"inet_sock_set_state":                {Name: "inet_sock_set_state", RunNs: 9000 * 10, RunCnt: 10},
		"(empty) tp_btf/inet_sock_set_state": {RunNs: 50 * 10, RunCnt: 10},
	})
	got := map[string]string{}
	for _, g := range r.goals() {
		got[g.what] = g.result
	}
	for what, want := range map[string]string{
		"churn throughput with ghostconn agent, vs bare": "FAIL", // 0.93x
		"close hooks (close, close_range, dup2, dup3)":   "FAIL", // empty + 70 ns
		"state changes": "PASS", // empty + 80 ns; the quiet window's 10 runs do not count
		"timer hook (no keepalive timers in these windows)": "n/a", // never ran
	} {
		if got[what] != want {
			t.Errorf("%s: %s, want %s", what, got[what], want)
		}
	}
	md := r.markdown()
	for _, s := range []string{"## Goals", "## 1. Churn overhead", "## 2. Kernel cost per program", "| ghostconn | 96 | 90 |"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q", s)
		}
	}
}
