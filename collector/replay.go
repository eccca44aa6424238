package collector

import (
	"sort"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// replayEvents turns the close evidence the kernel kept into close events
// for the sockets has knows, in the order the closes happened. The kernel
// keeps up to two records per socket (see enum close_slot): the latest
// close or exit of the closer's own copy, and the latest close of a copy a
// fork child inherited from a parent that still has it. Fed through the
// table in time order, as they came live, they leave the same closer: an
// own close replaces whatever came before it, and an inherited copy's
// close after it passes through. has says whether the table knows the
// socket with this id and inode (a record of a socket freed while no agent
// ran, whose address-derived id a new socket took, names the old inode).
// bad counts records that do not decode.
func replayEvents(recs map[bpf.GhostconnCloseKey]bpf.GhostconnCloseRec, has func(cookie, ino uint64) bool, monoOffset int64) (evs []Event, bad int) {
	type keyed struct {
		slot uint32
		ev   Event
	}
	var ks []keyed
	for k, r := range recs {
		if !has(k.Cookie, uint64(r.Ino)) {
			continue
		}
		cl, err := decodeClose(r.Op, r.Fd, r.Refs, r.WriteSeq, r.CopiedSeq)
		if err != nil {
			bad++
			continue
		}
		ks = append(ks, keyed{slot: k.Slot, ev: Event{
			Kind:   KindClose,
			Time:   time.Unix(0, int64(r.TsNs)+monoOffset),
			Mono:   int64(r.TsNs),
			Cookie: k.Cookie,
			Task:   &Task{PID: r.Pid, PPID: r.Ppid, Comm: cString(r.Comm[:])},
			Close:  cl,
		}})
	}
	// Oldest first; map order is random, so ties go by cookie, then the
	// inherited copy's close before the owner's, which decides.
	sort.Slice(ks, func(i, j int) bool {
		a, b := &ks[i], &ks[j]
		if !a.ev.Time.Equal(b.ev.Time) {
			return a.ev.Time.Before(b.ev.Time)
		}
		if a.ev.Cookie != b.ev.Cookie {
			return a.ev.Cookie < b.ev.Cookie
		}
		return a.slot > b.slot
	})
	evs = make([]Event, len(ks))
	for i := range ks {
		evs[i] = ks[i].ev
	}
	return evs, bad
}
