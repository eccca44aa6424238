package exporter_test

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func TestAppendConnViewMatchesEncodingJSON(t *testing.T) {
	uid := uint32(1000)
	idle := 12.5
	tiny := 1e-9
	at := time.Date(2026, 11, 23, 3, 4, 5, 123456789, time.UTC)
	closed := at.Add(time.Minute)
	giveUp := at.Add(15 * time.Minute)
	views := []collector.ConnView{
		{},
		{Cookie: 1, Family: "ipv4", State: collector.StateEstablished, Local: "127.0.0.1:80", Remote: "127.0.0.1:5000",
			Holders: []collector.Holder{}, Verdicts: []collector.Verdict{}, HoldersUnknownReason: "no fd walk has run yet <&>"},
		{Cookie: 1<<64 - 1, Family: "ipv6", State: collector.StateCloseWait, Local: "[::1]:80", Remote: "[::1]:5000", Netns: 4026531840,
			Inode: 123456, UID: &uid, IdleSeconds: &idle, HoldersKnown: true,
			Holders: []collector.Holder{{PID: 1, PPID: 0, Comm: `we"ird\<>&` + "\x01\u2028é\xff", FD: 3,
				Cgroup: &collector.Cgroup{ID: 77, Path: "/kubepods/pod1", PodUID: "u-1", ContainerID: "abc", Runtime: "containerd"}},
				{PID: 2, Comm: "b", FD: -1, Cgroup: &collector.Cgroup{ID: 5}}},
			Keepalive:          collector.Keepalive{Enabled: true, IdleSeconds: 7200, IntervalSeconds: 0.25, Count: 9, Source: "sysctl"},
			UserTimeoutSeconds: tiny, Retransmits: 4, RTORetransmits: 2, ProbesOut: 1, KeepaliveFirings: 3, SendQueue: 10, RecvQueue: 1,
			ClosedBy:  &collector.CloseRecord{PID: 9, PPID: 1, Comm: "closer", FD: 4, At: at, RefsLeft: 1, Op: "dup2"},
			Opener:    &collector.Task{PID: 8, PPID: 2, Comm: "curl"},
			FirstSeen: at, StateSince: at.Add(time.Second), ClosedAt: &closed,
			Verdicts: []collector.Verdict{{Kind: "ghost", Since: at, Detail: "x (pid 1, fd 3)"}, {Kind: "unresponsive", Since: at, Detail: "d", GiveUp: &giveUp}},
			History: []collector.Transition{{At: at, From: 0, To: collector.StateSynSent, Task: &collector.Task{PID: 8, Comm: "curl"}, Source: "kernel"},
				{At: at, From: collector.StateSynSent, To: collector.StateEstablished, Source: "snapshot"},
				{At: at, From: collector.StateCloseWait, To: collector.StateCloseWait, Source: "ghostconn abort",
					Action: &collector.Action{Op: "abort", Mechanism: "sock_diag", UID: 0, PID: 77, Verdicts: []string{"close-wait"}, Error: "still <there>"}}},
		},
	}
	for i := range views {
		want, err := json.Marshal(&views[i])
		if err != nil {
			t.Fatal(err)
		}
		got := exporter.AppendConnView(nil, &views[i])
		if !bytes.Equal(got, want) {
			t.Errorf("view %d:\n got %s\nwant %s", i, got, want)
		}
		var back collector.ConnView
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("view %d does not decode: %v", i, err)
		}
	}
}

// BenchmarkWriteConnViews100k is the encoding side of `ghostconn ls -o json`
// at 100k connections, as the bench's scale phase has them: idle
// connections held by a process, each flagged silent once the threshold
// has passed (a verdict with its detail: the longest string of a line).
func BenchmarkWriteConnViews100k(b *testing.B) {
	uid := uint32(0)
	idle := 3.5
	at := time.Now()
	silent := []collector.Verdict{{Kind: collector.VerdictSilent, Since: at, Detail: "no data either way for 13m4s (threshold 5m0s) and keepalive is off " +
		"(SO_KEEPALIVE not set), so a NAT or load balancer can drop it unseen; keepalive: enabled=false idle=2h0m0s interval=1m15s count=9 (sysctl)"}}
	conns := make([]collector.ConnView, 100_000)
	for i := range conns {
		conns[i] = collector.ConnView{Cookie: uint64(i), Family: "ipv4", State: collector.StateEstablished,
			Local: "127.0.1.7:40000", Remote: "127.0.0.1:8080", Netns: 4026531840, Inode: uint64(1e6 + i), UID: &uid,
			Holders:   []collector.Holder{{PID: 1234, PPID: 1, Comm: "holder", FD: int32(i % 20000)}},
			Keepalive: collector.Keepalive{IdleSeconds: 7200, IntervalSeconds: 75, Count: 9, Source: "sysctl"}, IdleSeconds: &idle,
			FirstSeen: at, StateSince: at, Verdicts: silent}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := exporter.WriteConnViews(io.Discard, conns); err != nil {
			b.Fatal(err)
		}
	}
}

// The numbers of a view print as encoding/json prints them: whole ones
// (the fast path), fractions, the edges of the fast path, negative zero,
// and the exponent forms.
func TestAppendConnViewNumbersMatchEncodingJSON(t *testing.T) {
	negZero := math.Copysign(0, -1)
	for _, f := range []float64{0, negZero, 1, -1, 75, 7200, 12.5, 0.25, 1e14, 1e15 - 1, 1e15, 1e15 + 2, 123456789012345.5,
		1e20, 1e21, 1e22, 1e-6, 1e-7, 2.5e-9, math.MaxInt64, -7200.75, 4503599627370497} {
		idle := f
		v := collector.ConnView{IdleSeconds: &idle, UserTimeoutSeconds: f, Keepalive: collector.Keepalive{IdleSeconds: f, IntervalSeconds: -f}}
		want, err := json.Marshal(&v)
		if err != nil {
			t.Fatal(err)
		}
		if got := exporter.AppendConnView(nil, &v); !bytes.Equal(got, want) {
			t.Errorf("%v:\n got %s\nwant %s", f, got, want)
		}
	}
}
