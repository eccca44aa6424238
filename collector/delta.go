package collector

import "time"

// liveState reports whether a socket in s is one the table tracks: on its
// way to ESTABLISHED, carrying data, listening, or closing but not closed.
func liveState(s State) bool {
	switch s {
	case StateSynSent, StateSynRecv, StateEstablished, StateCloseWait, StateListen,
		StateFinWait1, StateFinWait2, StateClosing, StateLastAck:
		return true
	}
	return false
}

// applyDelta applies what the kernel folded for one socket since the agent
// last drained it: it announces a connection the table does not know yet,
// moves a known one to a newer state, and adds the process whose connect or
// accept returned it and the options it set. A state older than what the
// table holds (a watch client had the change streamed meanwhile) is
// ignored.
func (t *Table) applyDelta(ev *Event, c *Conn) {
	d := &ev.Delta
	if c == nil {
		if t.staleDelta(ev.Cookie, d) {
			// Its end record came first: the kernel took the entry into
			// the end record while the drain read it too, or a syscall
			// hook wrote it after the end record took the entry. A
			// second life of the socket (a connect after a failed one)
			// began after the end.
			t.stats.Unknown++
			return
		}
		if !liveState(d.State) {
			t.stats.Unknown++
			return
		}
		state, at := d.State, t.deltaTime(d.FirstMono, ev)
		if d.EstMono != 0 {
			state = d.EstFrom
		}
		if c = t.createAs(ev, state, at); c == nil {
			return
		}
		c.LastUpdate = stampOf(at)
		t.stats.Announced++
	} else if !c.ClosedAt.IsZero() {
		return
	}
	if ev.Local.Port() != 0 {
		t.takeTuple(c, ev)
	}
	t.setInode(c, ev.Inode)
	if d.Parts&DeltaTCP != 0 {
		c.Settings = ev.Settings
		t.updateCounters(c, ev)
	}
	if d.Parts&DeltaOwner != 0 {
		mono := d.OwnerMono
		if mono == 0 {
			mono = t.tl.mono(ev.Time)
		}
		t.addOwner(c, d.Owner, mono)
	}
	if d.Parts&DeltaSockopt != 0 {
		for _, o := range d.Sockopts[:d.NSockopts] {
			applySockopt(&c.Settings, o)
		}
		by := t.taskOf(c, d)
		c.SettingsBy, c.ArmedByGhostconn = by, c.ArmedByGhostconn && t.self != 0 && by.PID == t.self
	}
	if d.Parts&DeltaState != 0 && liveState(d.State) {
		// Only an end record ends a connection: a delta's state is a
		// live one, or a syscall hook's reading racing the CLOSE.
		switch {
		case d.EstMono == 0:
		case c.State == StateSynSent || c.State == StateSynRecv:
			t.enterAfter(c, t.tl.at(d.EstMono), StateEstablished)
		case c.State == StateEstablished && len(c.History) == 0:
			// Announced by a close (a dup's, read before this delta was
			// drained): the delta still tells when it was established.
			at := t.tl.at(d.EstMono)
			t.stats.Transitions[StateEstablished]++
			c.addTransition(Transition{At: at, From: d.EstFrom, To: StateEstablished, Source: "kernel"})
			if at.Before(c.FirstSeen.Time()) {
				c.FirstSeen, c.StateSince = stampOf(at), stampOf(at)
			}
		}
		t.enterAfter(c, t.deltaTime(d.StateMono, ev), d.State)
	}
	t.markDirty(c)
	if t.hook != nil {
		t.hook(ev, c)
	}
}

// deltaTime places a delta's monotonic time on the table's timeline; an
// event without one (built by a test) has the event's time.
func (t *Table) deltaTime(mono int64, ev *Event) time.Time {
	if mono == 0 {
		return ev.Time
	}
	return t.tl.at(mono)
}

// enterAfter moves c into state at, unless c is in state already or
// entered its current state later than that. When a snapshot set the
// current state after at (its time is the snapshot's, a guess), the
// kernel's change still goes into the history before it, and replaces it
// when it is the same state.
func (t *Table) enterAfter(c *Conn, at time.Time, state State) {
	if !at.Before(c.StateSince.Time()) {
		if state != c.State {
			t.enter(c, Transition{At: at, From: c.State, To: state, Source: "kernel"})
		}
		return
	}
	n := len(c.History)
	if n == 0 {
		return
	}
	last := &c.History[n-1]
	if (last.Source != "snapshot" && last.Source != "reconcile") || (n > 1 && at.Before(c.History[n-2].At)) {
		return
	}
	kernel := Transition{At: at, From: last.From, To: state, Source: "kernel"}
	t.stats.Transitions[state]++
	t.markDirty(c)
	if state == c.State {
		*last = kernel
		c.StateSince = stampOf(at)
		return
	}
	last.From = state
	c.History = append(c.History[:n-1], kernel, *last)
}

// applyEnd applies a socket's CLOSE: the delta it carries first, when the
// agent had not drained it (a short-lived connection's whole life), then
// the close itself.
func (t *Table) applyEnd(ev *Event, c *Conn) {
	if ev.Delta.Parts != 0 {
		t.applyDelta(ev, c)
		c = t.lookup(ev)
	}
	if c == nil || !c.ClosedAt.IsZero() {
		// A socket that closes before anyone saw it open (one that failed
		// to connect before the agent's first snapshot) has nothing to
		// report.
		return
	}
	t.enter(c, Transition{At: ev.Time, From: ev.OldState, To: StateClose, Task: ev.Task, Source: "kernel"})
	if t.hook != nil {
		t.hook(ev, c)
	}
}

// addOwner adds the process whose connect or accept returned an fd of c to
// its holders, unless it is there already. The holder's cgroup stays
// unresolved until the next holder walk: resolving it reads /proc, which
// the table does not do under its lock.
func (t *Table) addOwner(c *Conn, o Owner, mono int64) {
	if o.Task == nil {
		return
	}
	if c.Opener == nil && o.Op == "connect" {
		c.Opener = o.Task
	}
	for i := range c.Holders {
		if c.Holders[i].PID == o.Task.PID && c.Holders[i].FD == o.FD {
			return
		}
	}
	// A new slice: views share holder slices, so they are never changed
	// in place.
	hs := make([]Holder, len(c.Holders), len(c.Holders)+1)
	copy(hs, c.Holders)
	c.Holders = append(hs, Holder{PID: o.Task.PID, PPID: o.Task.PPID, Comm: o.Task.Comm, FD: o.FD, ownedAt: mono})
}

// taskOf returns the task that set a delta's options: its owner, or a
// holder of c, when the pid is theirs.
func (t *Table) taskOf(c *Conn, d *Delta) *Task {
	if o := d.Owner.Task; o != nil && o.PID == d.SockoptBy {
		return o
	}
	if c.SettingsBy != nil && c.SettingsBy.PID == d.SockoptBy {
		return c.SettingsBy
	}
	for _, h := range c.Holders {
		if h.PID == d.SockoptBy {
			return &Task{PID: h.PID, PPID: h.PPID, Comm: h.Comm}
		}
	}
	return &Task{PID: d.SockoptBy}
}
