package collector

import (
	"reflect"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// rpStep is one fact of a replay scenario: a close event as the kernel
// reports it (inherited says the closer's parent still had the fd, which
// picks the kernel's slot), or a holder walk.
type rpStep struct {
	ev        *Event
	inherited bool
	walk      []bpf.GhostconnHolderRec
	at        time.Time
}

// rpMono is the monotonic-to-wall offset of the replay tests.
const rpMono = int64(4000 * time.Second)

// rpKeep is what the closes map holds after the steps: per slot, the last
// record written, the exit of an inherited copy never.
func rpKeep(steps []rpStep) map[bpf.GhostconnCloseKey]bpf.GhostconnCloseRec {
	ops := map[string]bpf.GhostconnCloseOp{}
	for op, name := range closeOps {
		ops[name] = bpf.GhostconnCloseOp(op)
	}
	out := map[bpf.GhostconnCloseKey]bpf.GhostconnCloseRec{}
	for _, s := range steps {
		ev := s.ev
		if ev == nil {
			continue
		}
		slot := bpf.GhostconnCloseSlotCLOSE_SLOT_OWN
		if s.inherited {
			if ev.Close.Op == "exit" {
				continue
			}
			slot = bpf.GhostconnCloseSlotCLOSE_SLOT_INHERITED
		}
		r := bpf.GhostconnCloseRec{
			TsNs: uint64(ev.Time.UnixNano() - rpMono), Pid: ev.Task.PID, Ppid: ev.Task.PPID,
			Fd: ev.Close.FD, Refs: ev.Close.Refs, WriteSeq: ev.Close.WriteSeq, CopiedSeq: ev.Close.CopiedSeq,
			Op: uint8(ops[ev.Close.Op]), Comm: tbComm(ev.Task.Comm),
		}
		out[bpf.GhostconnCloseKey{Cookie: ev.Cookie, Slot: uint32(slot)}] = r
	}
	return out
}

func rpClose(at time.Time, pid, ppid uint32, comm string, fd int32, refs uint32, op string, inherited bool) rpStep {
	ev := vtCloseEv(at, pid, ppid, comm, fd, refs, op)
	ev.Inode = 0 // pinned records carry no inode; live ones do not need it here
	return rpStep{ev: &ev, inherited: inherited, at: at}
}

func rpWalk(at time.Time, hs ...bpf.GhostconnHolderRec) rpStep {
	return rpStep{walk: hs, at: at}
}

// TestReplayReachesLiveVerdict: for each sequence of closes, exits and
// holder walks, a table that saw it live and a table seeded afterwards and
// fed only what the kernel's closes map keeps (in random map order) reach
// the same closer and the same verdicts.
func TestReplayReachesLiveVerdict(t *testing.T) {
	sec := func(n int) time.Time { return vtT0.Add(time.Duration(n) * time.Second) }
	x, p := vtHolderRec(100, 1, 7, "opener"), vtHolderRec(200, 100, 9, "child")
	app, kid := vtHolderRec(176, 1, 10, "app"), vtHolderRec(365, 176, 10, "app")
	for _, tc := range []struct {
		name  string
		steps []rpStep
		final []bpf.GhostconnHolderRec
		ghost bool
	}{
		{
			// The issue: the kernel kept only the helper's close, and the
			// restarted agent saw a child's inherited copy, no ghost.
			name: "a helper drops its inherited copy, then the opener exits",
			steps: []rpStep{
				rpWalk(sec(1), x, p),
				rpClose(sec(2), 300, 200, "helper", 9, 3, "close_range", true),
				rpClose(sec(10), 100, 1, "opener", 7, 2, "exit", false),
			},
			final: []bpf.GhostconnHolderRec{p},
			ghost: true,
		},
		{
			name: "the owner closes, then a child drops its inherited copy",
			steps: []rpStep{
				rpClose(sec(1), 176, 1, "app", 9, 2, "close", false),
				rpWalk(sec(2), app, kid),
				rpClose(sec(3), 365, 176, "app", 10, 2, "close_range", true),
			},
			final: []bpf.GhostconnHolderRec{app},
			ghost: true,
		},
		{
			name: "the owner closes, then a fork child exits holding its copy",
			steps: []rpStep{
				rpClose(sec(1), 176, 1, "app", 9, 3, "close", false),
				rpWalk(sec(2), app, kid),
				rpClose(sec(3), 365, 176, "app", 10, 2, "exit", true),
			},
			final: []bpf.GhostconnHolderRec{app},
			ghost: true,
		},
		{
			name: "a child drops its inherited copy while the parent owns the socket",
			steps: []rpStep{
				rpWalk(sec(1), app, kid),
				rpClose(sec(2), 365, 176, "app", 10, 2, "close_range", true),
			},
			final: []bpf.GhostconnHolderRec{app},
		},
		{
			name: "a fork child exits with its copy while the parent owns the socket",
			steps: []rpStep{
				rpWalk(sec(1), app, kid),
				rpClose(sec(2), 365, 176, "app", 10, 2, "exit", true),
			},
			final: []bpf.GhostconnHolderRec{app},
		},
		{
			name: "the opener exits, then the child's own fork child exits",
			steps: []rpStep{
				rpWalk(sec(1), x, p),
				rpClose(sec(5), 100, 1, "opener", 7, 2, "exit", false),
				rpWalk(sec(6), p, vtHolderRec(400, 200, 9, "child")),
				rpClose(sec(7), 400, 200, "child", 9, 2, "exit", true),
			},
			final: []bpf.GhostconnHolderRec{p},
			ghost: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			decideAt := tc.steps[len(tc.steps)-1].at.Add(vtCfg.GhostGrace + time.Second)

			live := vtTable(t)
			tbEstablished(t, live, 1, vtT0)
			live.Apply([]Event{tbObserve(t, vtSeqSnapshot(), vtT0, 1, true)})
			for _, s := range tc.steps {
				if s.ev != nil {
					live.Apply([]Event{*s.ev})
				} else {
					live.SetHolders(s.walk, s.at)
				}
			}
			lc := vtDecide(t, live, decideAt, 2, tc.final...)
			if got := vtFind(lc.Verdicts, VerdictGhost) != nil; got != tc.ghost {
				t.Fatalf("live: ghost %t, want %t (closed_by %+v, verdicts %+v)", got, tc.ghost, lc.ClosedBy, lc.Verdicts)
			}

			kept := rpKeep(tc.steps)
			for i := 0; i < 20; i++ { // map order is random
				re := vtTable(t)
				// The kernel's times are placed on the table's timeline:
				// one whose wall clock is rpMono ahead of the monotonic.
				re.setClock(&fakeClock{wall: decideAt, mono: decideAt.UnixNano() - rpMono})
				re.Apply([]Event{tbObserve(t, vtSeqSnapshot(), decideAt, 1, true)})
				re.SetHolders(tc.final, decideAt)
				evs, bad := replayEvents(kept, func(c, _ uint64) bool { return c == 1 }, rpMono)
				if bad != 0 {
					t.Fatalf("%d records did not decode", bad)
				}
				for j := 1; j < len(evs); j++ {
					if evs[j].Time.Before(evs[j-1].Time) {
						t.Fatalf("replay out of time order: %v", evs)
					}
				}
				re.Apply(evs)
				rc := vtDecide(t, re, decideAt, 2, tc.final...)
				if !reflect.DeepEqual(lc.ClosedBy, rc.ClosedBy) {
					t.Fatalf("closed_by after replay %+v, live %+v", rc.ClosedBy, lc.ClosedBy)
				}
				if !reflect.DeepEqual(lc.Verdicts, rc.Verdicts) {
					t.Fatalf("verdicts after replay %+v, live %+v", rc.Verdicts, lc.Verdicts)
				}
			}
		})
	}
}

// TestReplaySkipsAnotherInode: a kept record whose inode is not the one
// the table knows for that id (an address-derived id a new socket took
// while no agent ran) is not replayed; one of the same inode, or of no
// inode (kept by an older build), is.
func TestReplaySkipsAnotherInode(t *testing.T) {
	tb := tbNew(t)
	tbEstablished(t, tb, 1, tbT0)
	tb.conns[1].Inode = 555
	for _, tc := range []struct {
		ino  uint32
		want int
	}{{555, 1}, {0, 1}, {777, 0}} {
		recs := map[bpf.GhostconnCloseKey]bpf.GhostconnCloseRec{
			{Cookie: 1, Slot: uint32(bpf.GhostconnCloseSlotCLOSE_SLOT_OWN)}: {TsNs: 1, Pid: 9, Fd: 3, Refs: 2, Op: uint8(bpf.GhostconnCloseOpCLOSE_OP_CLOSE), Ino: tc.ino},
		}
		evs, bad := replayEvents(recs, tb.HasInode, 0)
		if bad != 0 || len(evs) != tc.want {
			t.Errorf("record of inode %d: %d events (%d bad), want %d", tc.ino, len(evs), bad, tc.want)
		}
	}
}
