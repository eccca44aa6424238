package collector

import (
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
)

// Observation is what a snapshot record knows beyond an Event's fields.
type Observation struct {
	// Gen is the reconcile generation that took the snapshot.
	Gen uint64
	// Seed is true for the first snapshot, whose findings are not
	// corrections.
	Seed     bool
	UID      uint32
	Full     bool // false for time-wait and request sockets
	Defaults NetDefaults
	// Ages are measured when the record was written, close to Event.Time.
	SendAge    time.Duration
	RecvAge    time.Duration
	RetransAge time.Duration
	SendQueue  uint32
	RecvQueue  uint32
	WriteSeq   uint32
	CopiedSeq  uint32
}

// ObservedEvent turns an iter/tcp record into a synthetic event taken at
// time at, the start of the snapshot.
func (d *Decoder) ObservedEvent(r *bpf.GhostconnSockRec, at time.Time, gen uint64, seed bool) (Event, bool) {
	var ev Event
	ok := d.observedInto(r, at, gen, seed, &ev, new(Observation))
	return ev, ok
}

// observedInto is ObservedEvent into ev, with its observation in o: a
// snapshot of a big table reuses both, a chunk at a time, rather than
// allocate an observation per socket.
func (d *Decoder) observedInto(r *bpf.GhostconnSockRec, at time.Time, gen uint64, seed bool, ev *Event, o *Observation) bool {
	fam := Family(r.Family)
	if (fam != FamilyIPv4 && fam != FamilyIPv6) || r.State == 0 || r.State > uint8(maxState) || r.Cookie == 0 {
		return false
	}
	st := State(r.State)
	if st == StateNewSynRecv {
		// A request socket is the listener's, not yet a connection.
		st = StateSynRecv
	}
	*o = Observation{
		Gen: gen, Seed: seed, UID: r.Uid, Full: r.Full != 0,
		Defaults: NetDefaults{
			KeepIdle:     d.Jiffies(r.NetKaTime),
			KeepInterval: d.Jiffies(r.NetKaIntvl),
			KeepCount:    int(r.NetKaProbes),
			Retries2:     int(r.NetRetries2),
		},
		SendAge:    d.Jiffies(r.SendAgeJiffies),
		RecvAge:    d.Jiffies(r.RecvAgeJiffies),
		RetransAge: time.Duration(r.RetransAgeMs) * time.Millisecond,
		SendQueue:  r.SendQueue,
		RecvQueue:  r.RecvQueue,
		WriteSeq:   r.WriteSeq,
		CopiedSeq:  r.CopiedSeq,
	}
	*ev = Event{
		Kind:     KindObserved,
		Time:     at,
		Cookie:   r.Cookie,
		Inode:    r.Ino,
		Netns:    r.Netns,
		Family:   fam,
		Local:    addrPort(fam, r.Saddr, r.Sport),
		Remote:   addrPort(fam, r.Daddr, r.Dport),
		State:    st,
		Observed: o,
	}
	if r.Full != 0 {
		d.setTCP(ev, &r.Tcp, true)
	}
	return true
}

// applyObserved merges a snapshot record. State from the snapshot wins only
// when no kernel event about the socket is newer than the snapshot.
func (t *Table) applyObserved(ev *Event, c *Conn) {
	o := ev.Observed
	if ev.State == StateClose {
		// A socket on its way out: the snapshot says it is gone.
		if c != nil && !c.LastUpdate.After(ev.Time) {
			c.addTransition(Transition{At: ev.Time, From: c.State, To: StateClose, Source: "reconcile"})
			t.retire(c, ev.Time)
		}
		return
	}
	if c == nil {
		if old := t.closedIx[ev.Cookie]; old != nil && !old.ClosedAt.Before(ev.Time) && ev.State != StateTimeWait {
			// Closed after the snapshot began: the event is newer.
			return
		}
		if c = t.create(ev); c == nil {
			return
		}
		if !o.Seed {
			t.stats.ReconcileAdds++
		}
		c.addTransition(Transition{At: ev.Time, To: ev.State, Source: "snapshot"})
		if !o.Seed {
			t.publish(c, Change{Time: ev.Time, Type: "state", State: ev.State, Source: "snapshot"})
		}
	} else if !c.LastUpdate.After(ev.Time) && c.State != ev.State {
		t.stats.ReconcileFix++
		c.addTransition(Transition{At: ev.Time, From: c.State, To: ev.State, Source: "reconcile"})
		t.publish(c, Change{Time: ev.Time, Type: "state", From: c.State, State: ev.State, Source: "reconcile"})
		c.State = ev.State
		c.StateSince = stampOf(ev.Time)
	}
	c.observedGen = o.Gen
	t.markDirty(c)
	c.UID, c.HasUID = o.UID, true
	if c.Inode == 0 {
		t.setInode(c, ev.Inode)
	}
	if !o.Full {
		return
	}
	t.defaults[ev.Netns] = o.Defaults
	// Settings and counters from an event newer than the snapshot win; the
	// snapshot's measurements of data and queues are its own.
	if !c.LastUpdate.After(ev.Time) {
		c.Settings = ev.Settings
		t.updateCounters(c, ev)
		if ev.Counters.Retransmits > 0 && o.RetransAge > 0 {
			c.RetransSince = stampOf(ev.Time.Add(-o.RetransAge))
		}
		c.LastUpdate = stampOf(ev.Time)
	}
	c.LastData = stampOf(ev.Time.Add(-min(o.SendAge, o.RecvAge)))
	c.LastDataAt = stampOf(ev.Time)
	c.SendQueue, c.RecvQueue = o.SendQueue, o.RecvQueue
	if c.RecvQueue > 0 && finReceived(ev.State) {
		c.RecvQueue-- // rcv_nxt counts the peer's FIN, which is no data
	}
	c.WriteSeq, c.CopiedSeq = o.WriteSeq, o.CopiedSeq
}

// Sweep retires connections that the snapshot of generation gen, begun at
// start, did not find, in the namespaces it covered, unless an event newer
// than the snapshot vouches for them.
func (t *Table) Sweep(gen uint64, start time.Time, covered map[uint32]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.conns {
		if c.observedGen == gen || c.LastUpdate.After(start) || !covered[c.Netns] {
			continue
		}
		t.stats.ReconcileGone++
		t.changes++
		c.addTransition(Transition{At: start, From: c.State, To: StateClose, Source: "reconcile"})
		t.publish(c, Change{Time: start, Type: "state", From: c.State, State: StateClose, Source: "reconcile"})
		t.retire(c, start)
	}
}

// SetHolders replaces every connection's holders with the result of a
// task_file walk begun at at. Closes seen after at are applied again so the
// walk cannot resurrect an fd that is already gone, and holders that an
// delta's owner newer than at added are kept: the walk may have passed their
// process before the fd was there.
func (t *Table) SetHolders(recs []bpf.GhostconnHolderRec, at time.Time) {
	var cgroups map[uint64]*Cgroup
	if t.cgroups != nil {
		cgroups = t.cgroups.prime(recs) // reads /proc, so outside the lock
	}
	// Sorted by cookie, each connection's holders are one run: the walk
	// goes run by run, then over the connections that had none (a binary
	// search per connection was a third of a reconcile at 100k). The few
	// records without a cookie (sockets in a namespace no snapshot
	// reached) are joined by inode.
	sort.Slice(recs, func(i, j int) bool { return recs[i].Cookie < recs[j].Cookie })
	byInode := map[uint64][]int{}
	for i := 0; i < len(recs) && recs[i].Cookie == 0; i++ {
		byInode[recs[i].Ino] = append(byInode[recs[i].Ino], i)
	}
	comms := map[[16]int8]string{} // one string per process name, not per fd
	comm := func(b [16]int8) string {
		s, ok := comms[b]
		if !ok {
			s = cString(b[:])
			comms[b] = s
		}
		return s
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes++
	atMono := t.tl.mono(at)
	if at.After(t.lastWalk) {
		t.lastWalk = at
	}
	t.walkGen++
	w := holderWalk{t: t, recs: recs, at: at, atMono: atMono, comm: comm, cgroups: cgroups}
	for i := 0; i < len(recs); {
		j := i + 1
		for j < len(recs) && recs[j].Cookie == recs[i].Cookie {
			j++
		}
		if c := t.conns[recs[i].Cookie]; c != nil && recs[i].Cookie != 0 {
			w.idx = w.idx[:0]
			for k := i; k < j; k++ {
				w.idx = append(w.idx, k)
			}
			w.set(c)
		}
		i = j
	}
	for _, c := range t.conns {
		if c.walkGen == t.walkGen {
			continue
		}
		w.idx = w.idx[:0]
		if c.Inode != 0 {
			w.idx = append(w.idx, byInode[c.Inode]...)
		}
		w.set(c)
	}
}

// holderWalk is one SetHolders pass: the walk's records, sorted by
// cookie, and what setting a connection's holders from them needs.
type holderWalk struct {
	t       *Table
	recs    []bpf.GhostconnHolderRec
	at      time.Time
	atMono  int64
	comm    func([16]int8) string
	cgroups map[uint64]*Cgroup
	// idx holds the indexes in recs of the connection being set;
	// scratch its holders as they are built.
	idx     []int
	scratch []Holder
}

// set gives c the holders at w.idx.
func (w *holderWalk) set(c *Conn) {
	t, at := w.t, w.at
	c.walkGen = t.walkGen
	w.scratch = w.scratch[:0]
	for _, i := range w.idx {
		r := &w.recs[i]
		if cb := c.ClosedBy; cb != nil && cb.At.After(at) && cb.PID == r.Pid && cb.FD == int32(r.Fd) {
			continue
		}
		w.scratch = append(w.scratch, Holder{PID: r.Pid, PPID: r.Ppid, Comm: w.comm(r.Comm), FD: int32(r.Fd), Cgroup: w.cgroups[r.CgroupId]})
		// The holder's inode is the one users see in /proc/PID/fd (for
		// MPTCP it differs from the subflow's).
		t.setInode(c, r.Ino)
	}
	for _, h := range c.Holders {
		if h.ownedAt != 0 && h.ownedAt > w.atMono && !heldAt(w.scratch, h.PID, h.FD) {
			w.scratch = append(w.scratch, h)
		}
	}
	c.HoldersAt = stampOf(at)
	old := c.Holders
	if !holdersEqual(old, w.scratch) {
		c.Holders = nil
		if len(w.scratch) > 0 {
			c.Holders = append([]Holder(nil), w.scratch...)
		}
		t.markDirty(c)
		t.noteExits(c, old, at)
	} else if c.ClosedBy != nil || c.State == StateCloseWait {
		// Rules that wait for a walk newer than a deadline decide now.
		t.markDirty(c)
	}
}

func holdersEqual(a, b []Holder) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i], &b[i]
		// A holder the walk confirmed replaces the one a delta's owner
		// added, so the next walk need not keep it.
		if x.PID != y.PID || x.PPID != y.PPID || x.FD != y.FD || x.Comm != y.Comm || x.Cgroup != y.Cgroup || (x.ownedAt != 0) != (y.ownedAt != 0) {
			return false
		}
	}
	return true
}

// noteExits records, as a close, a holder process that has exited while
// other processes still hold the socket: exit closes fds without a close
// call, so no close event told of it.
func (t *Table) noteExits(c *Conn, old []Holder, at time.Time) {
	if len(c.Holders) == 0 || (c.State != StateEstablished && c.State != StateCloseWait) {
		return
	}
	for _, h := range old {
		if heldByPID(c.Holders, h.PID) || t.alive(h.PID) {
			continue
		}
		if heldByPID(c.Holders, h.PPID) {
			// A child whose parent still holds the socket passed through
			// (a fork child between fork and exec, whose close-on-exec fds
			// go without a close syscall). Its exit says nothing about the
			// owner and must not replace the closer of a ghost.
			continue
		}
		c.ClosedBy = &CloseRecord{
			PID: h.PID, PPID: h.PPID, Comm: h.Comm, FD: h.FD, At: at,
			RefsLeft: uint32(len(c.Holders)), Op: "exit",
			writeSeq: c.WriteSeq, copiedSeq: c.CopiedSeq,
		}
		t.markDirty(c)
	}
}

// heldAt reports whether hs has fd of pid.
func heldAt(hs []Holder, pid uint32, fd int32) bool {
	for _, h := range hs {
		if h.PID == pid && h.FD == fd {
			return true
		}
	}
	return false
}

func heldByPID(hs []Holder, pid uint32) bool {
	for _, h := range hs {
		if h.PID == pid {
			return true
		}
	}
	return false
}

// processAlive reports whether pid exists (in the agent's pid namespace,
// the host's when the agent runs there).
func processAlive(pid uint32) bool {
	return unix.Kill(int(pid), 0) != unix.ESRCH
}

// finReceived reports whether a socket in state s has received its peer's
// FIN.
func finReceived(s State) bool {
	switch s {
	case StateCloseWait, StateLastAck, StateClosing, StateTimeWait:
		return true
	}
	return false
}
