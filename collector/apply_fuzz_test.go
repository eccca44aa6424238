package collector

import (
	"net/netip"
	"testing"
	"time"
)

// FuzzTableApply drives the table with arbitrary event sequences: it must
// never panic, and what it lists must stay consistent.
func FuzzTableApply(f *testing.F) {
	f.Add([]byte{1, 2, 1, 7, 3, 4, 4, 2, 100, 1})
	f.Add([]byte{4, 1, 5, 0, 100, 1, 1, 8, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		tbl := NewTable(TableConfig{MaxConns: 8, MaxHistory: 4, HistoryTTL: time.Minute, Verdicts: DefaultVerdictConfig})
		base := time.Unix(1000, 0)
		var evs []Event
		for i := 0; i+4 < len(data); i += 5 {
			kind := []Kind{KindState, KindRetransmit, KindKeepalive, KindClose, KindSockopt, KindObserved, KindDelta, KindEnd}[int(data[i])%8]
			ev := Event{
				Kind:     kind,
				Time:     base.Add(time.Duration(data[i+1]) * time.Second),
				Cookie:   uint64(data[i+2] % 6),
				Inode:    uint64(data[i+3] % 4),
				Netns:    1,
				Family:   FamilyIPv4,
				Local:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(data[i+4])),
				Remote:   netip.MustParseAddrPort("127.0.0.1:80"),
				OldState: State(data[i+3] % 13),
				State:    State(data[i+4] % 13),
				Task:     &Task{PID: uint32(data[i+1]), Comm: "x"},
				Close:    Close{FD: int32(data[i+2]), Refs: uint32(data[i+3]%4 + 2), Op: "close"},
				Sockopt:  Sockopt{Level: 6, Name: int32(data[i+3] % 20), Value: int32(data[i+4])},
			}
			if kind == KindDelta || (kind == KindEnd && data[i+1]%2 == 0) {
				ev.Delta = Delta{Parts: DeltaParts(data[i+2]%15 + 1), State: State(data[i+3] % 13), EstFrom: StateSynRecv,
					StateMono: int64(data[i+1]) * 1e9, EstMono: int64(data[i+4]%2) * 1e9,
					Owner: Owner{Task: ev.Task, FD: int32(data[i+2] % 8), Op: "accept"}}
				ev.Delta.Sockopts[0] = ev.Sockopt
				ev.Delta.NSockopts = 1
			}
			if kind == KindEnd {
				ev.State = StateClose
			}
			ev.Counters = TCPCounters{Retransmits: uint32(data[i+3] % 4), ProbesOut: data[i+4] % 3, HaveCounters: true}
			if kind == KindObserved {
				ev.Observed = &Observation{Gen: uint64(data[i+1] % 3), Full: data[i+2]%2 == 0, Seed: data[i+3]%2 == 0}
			}
			evs = append(evs, ev)
		}
		tbl.Apply(evs)
		now := base.Add(10 * time.Minute)
		tbl.Evaluate(now)
		tbl.Sweep(2, base.Add(time.Minute), map[uint32]bool{1: true})
		tbl.GC(now)
		live := tbl.List(now, ListOptions{})
		if len(live) > 8 {
			t.Fatalf("%d live connections beyond MaxConns 8", len(live))
		}
		for _, v := range live {
			if v.State == StateClose {
				t.Fatalf("a CLOSE connection is listed as live: %+v", v)
			}
		}
	})
}
