package collector

import (
	"cmp"
	"container/heap"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TableConfig bounds the table's memory.
type TableConfig struct {
	// MaxConns caps live connections; events for new connections beyond it
	// are dropped and counted.
	MaxConns int
	// HistoryTTL is how long closed connections stay queryable.
	HistoryTTL time.Duration
	// MaxHistory caps how many closed connections are kept.
	MaxHistory int
	// Verdicts holds the rules' thresholds; zero means the defaults.
	Verdicts VerdictConfig
}

// DefaultTableConfig is what the agent uses unless told otherwise.
var DefaultTableConfig = TableConfig{MaxConns: 1 << 20, HistoryTTL: 5 * time.Minute, MaxHistory: 10000, Verdicts: DefaultVerdictConfig}

// TableStats counts what the table did with its input.
type TableStats struct {
	Applied       map[Kind]uint64
	DroppedFull   uint64 // new connections refused because the table was full
	Unknown       uint64 // close/sockopt events for sockets the table does not know
	Announced     uint64 // connections the kernel announced with a delta (their handshake was folded)
	ReconcileAdds uint64 // connections a snapshot found that no event announced
	ReconcileGone uint64 // connections a snapshot no longer found
	ReconcileFix  uint64 // connections whose state a snapshot corrected
	// Raised counts verdicts newly raised, by kind.
	Raised map[string]uint64
	// Transitions counts kernel-reported state changes by the new state.
	Transitions [maxState + 1]uint64
	// KeepaliveProbes counts keepalive timer expiries (Applied[KindKeepalive])
	// that found the connection idle long enough to send a probe.
	KeepaliveProbes uint64
}

// Table is the live connection table, keyed by socket cookie. It is safe
// for concurrent use.
type Table struct {
	cfg TableConfig
	// self is this process's pid as the kernel reports it (bpf.SelfTGID,
	// set by the collector; 0 when not known): options it sets through a
	// holder's fd (keepalive where iter/tcp has no bpf_setsockopt) are
	// still ghostconn's, not the application's.
	self uint32

	mu       sync.RWMutex
	conns    map[uint64]*Conn
	byInode  map[uint64]uint64 // inode -> cookie
	closed   []*Conn           // oldest first
	closedIx map[uint64]*Conn  // cookie -> newest closed entry
	// reuses counts spares given to new connections: while it stands, a
	// *Conn is the connection it was (ListLive).
	reuses   uint64
	defaults map[uint32]NetDefaults
	stats    TableStats
	// alive reports whether a process still exists.
	alive func(pid uint32) bool
	// subs are the watchers of changes.
	subs map[*Subscription]struct{}
	// watchHook is told when the first watcher comes and the last goes.
	watchHook func(watching bool) error
	// cgroups resolves holders' cgroup ids; nil leaves them unresolved.
	cgroups *cgroupCache
	// dirtyList holds the connections changed since the last evaluation;
	// deadlines the times at which time alone could change a connection's
	// verdicts. Together they keep evaluation proportional to change.
	dirtyList []*Conn
	deadlines deadlineHeap
	// hook, when set, is called under the lock for each applied event with
	// the connection it touched.
	hook func(ev *Event, c *Conn)
	// tl is the timeline of every time the table holds; deadlines are
	// monotonic readings, so a wall-clock step moves none of them.
	tl timeline
	// lastWalk is when the last holder walk (SetHolders) began; zero
	// before the first.
	lastWalk time.Time
	// walkGen counts holder walks (see Conn.walkGen).
	walkGen uint64
	// changes counts the changes that can alter what Top counts, keeps
	// or how it orders: events applied, holder walks, sweeps, verdicts
	// raised or cleared, wall-clock steps. topPasses are Top's passes made
	// when changes was topChanges, reused until it moves on; topMu guards
	// them (Top runs under the read lock, perhaps for two views at once).
	changes    uint64
	topMu      sync.Mutex
	topChanges uint64
	topPasses  map[topKey]topPass
	// spare holds connections dropped from the closed history that nothing
	// refers to any more, for createAs to reuse: under churn every short
	// connection would otherwise allocate a Conn and its history, and the
	// garbage collector was half of the agent's CPU per record.
	spare []*Conn
	// ended remembers sockets that ended, with the monotonic time of their
	// end, in the slot their cookie picks: a newer end takes the slot of
	// an older one. A delta a syscall hook wrote after the socket's end
	// record took its entry (or one drained after that record was read)
	// would otherwise bring the socket back, whatever the closed history
	// keeps. A map and a ring doing the same cost 180 ns per end record
	// under churn.
	ended []endedSlot
}

// endedSlot is one socket the table remembers as ended.
type endedSlot struct {
	cookie uint64
	mono   int64
}

// endedCap is how many slots remember ended sockets: the kernel hands out
// cookies in order, so they are the last 65536 ends or so; at 100k ends a
// second, more than half a second of them, where such a delta is drained
// within a poll (100ms).
const endedCap = 1 << 16

// NewTable returns an empty table.
func NewTable(cfg TableConfig) *Table {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultTableConfig.MaxConns
	}
	if cfg.MaxHistory < 0 {
		cfg.MaxHistory = 0
	}
	if cfg.Verdicts == (VerdictConfig{}) {
		cfg.Verdicts = DefaultVerdictConfig
	}
	return &Table{
		cfg:      cfg,
		conns:    map[uint64]*Conn{},
		byInode:  map[uint64]uint64{},
		closedIx: map[uint64]*Conn{},
		defaults: map[uint32]NetDefaults{},
		stats:    TableStats{Applied: map[Kind]uint64{}, Raised: map[string]uint64{}},
		alive:    processAlive,
		subs:     map[*Subscription]struct{}{},
		cgroups:  newCgroupCache(),
		tl:       newTimeline(hostClock),
	}
}

// setClock makes the table read c instead of the host's clock. Call it
// before the table holds anything.
func (t *Table) setClock(c Clock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tl = newTimeline(c)
}

// sync reads the clock, under the lock, and returns the monotonic reading.
// After a wall-clock step it first moves every time the table holds by the
// step, so that they stay on the timeline with the times that come in from
// now on (taken from the stepped wall clock) and show as wall-clock times
// again. Deadlines, being monotonic, stay.
func (t *Table) sync() int64 {
	mono, step := t.tl.now()
	if step != 0 {
		t.changes++
		for _, c := range t.conns {
			c.shift(step)
		}
		for _, c := range t.closed {
			c.shift(step)
		}
		shiftTime(&t.lastWalk, step)
	}
	return mono
}

// Apply applies a batch of events in order.
func (t *Table) Apply(evs []Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(evs) > 0 {
		t.changes++
	}
	t.sync()
	for i := range evs {
		t.apply(&evs[i])
	}
}

func (t *Table) lookup(ev *Event) *Conn {
	if ev.Cookie != 0 {
		if c := t.conns[ev.Cookie]; c != nil {
			return c
		}
	}
	if ev.Inode != 0 {
		if ck, ok := t.byInode[ev.Inode]; ok {
			return t.conns[ck]
		}
	}
	return nil
}

// create adds a connection for ev, or returns nil when the table is full.
func (t *Table) create(ev *Event) *Conn {
	return t.createAs(ev, ev.State, ev.Time)
}

// createAs adds a connection for ev's socket, in state since at.
func (t *Table) createAs(ev *Event, state State, at time.Time) *Conn {
	if ev.Cookie == 0 {
		t.stats.Unknown++
		return nil
	}
	if len(t.conns) >= t.cfg.MaxConns {
		t.stats.DroppedFull++
		return nil
	}
	// Room for a short connection's whole life without regrowth; a
	// connection found by a snapshot has lived most of its life already,
	// and gets one transition (the snapshot's) that most never outgrow: at
	// 100k seeded connections, each slot costs 6 MiB.
	hist := 3
	if ev.Kind == KindObserved {
		hist = 1
	}
	c := t.newConn(hist)
	c.Cookie, c.Netns, c.Family = ev.Cookie, ev.Netns, ev.Family
	c.State, c.FirstSeen, c.StateSince = state, stampOf(at), stampOf(at)
	t.takeTuple(c, ev)
	t.conns[ev.Cookie] = c
	t.markDirty(c)
	return c
}

// newConn returns an empty connection with room for hist transitions: a
// spare one when there is one, else a new one.
func (t *Table) newConn(hist int) *Conn {
	n := len(t.spare)
	if n == 0 {
		return &Conn{History: make([]Transition, 0, hist)}
	}
	c := t.spare[n-1]
	t.spare[n-1] = nil
	t.spare = t.spare[:n-1]
	t.reuses++
	h := c.History[:0]
	clear(h[:cap(h)])
	*c = Conn{History: h}
	return c
}

// forget drops c, a connection leaving the closed history, keeping it as
// a spare unless the dirty list still holds it (until the next
// evaluation). The history index is cleared of it.
// Views and watchers never hold a *Conn, and what they share with one (its
// holders, verdicts, close record) is replaced, not reused.
func (t *Table) forget(c *Conn) {
	if t.closedIx[c.Cookie] == c {
		delete(t.closedIx, c.Cookie)
	}
	if c.listed || len(t.spare) >= maxSpare {
		return
	}
	t.spare = append(t.spare, c)
}

// maxSpare bounds the spare connections kept: one drop of the history
// (an eighth of it) is enough to feed the churn until the next.
const maxSpare = 2048

// takeTuple gives c the event's tuple. An end record's connection retires
// within the event, so its addresses are printed only if someone lists the
// closed history: they are not printed now.
func (t *Table) takeTuple(c *Conn, ev *Event) {
	if ev.Kind == KindEnd && c.localStr == "" {
		c.Local, c.Remote = ev.Local, ev.Remote
		return
	}
	c.setTuple(ev.Local, ev.Remote)
}

func (t *Table) setInode(c *Conn, ino uint64) {
	if ino == 0 || c.Inode == ino {
		return
	}
	if c.Inode != 0 && t.byInode[c.Inode] == c.Cookie {
		delete(t.byInode, c.Inode)
	}
	c.Inode = ino
	t.byInode[ino] = c.Cookie
}

func (t *Table) apply(ev *Event) {
	t.stats.Applied[ev.Kind]++
	if ev.Mono != 0 {
		// A kernel time: on the table's timeline, whatever the wall
		// clock did since the event was decoded.
		ev.Time = t.tl.at(ev.Mono)
	}
	c := t.lookup(ev)
	switch ev.Kind {
	case KindState:
		t.applyState(ev, c)
		return
	case KindObserved:
		t.applyObserved(ev, c)
		return
	case KindDelta:
		t.applyDelta(ev, c)
		return
	case KindEnd:
		t.applyEnd(ev, c)
		return
	case KindAction:
		t.applyAction(ev, c)
		return
	}
	if c == nil {
		if ev.Kind == KindSockopt || ev.State == StateClose ||
			(ev.Kind == KindClose && ev.State != StateEstablished && ev.State != StateCloseWait) {
			// A socket that has not connected yet (or one whose namespace
			// no snapshot covers): nothing to attach the fact to. A
			// connected socket's close can come before the delta that
			// announces it (drained at the next poll): the close
			// announces it then.
			t.stats.Unknown++
			return
		}
		if c = t.create(ev); c == nil {
			return
		}
	}
	c.LastUpdate = max(c.LastUpdate, stampOf(ev.Time))
	t.markDirty(c)
	switch ev.Kind {
	case KindRetransmit:
		c.RetransmitEvents++
		t.updateCounters(c, ev)
		c.Settings = ev.Settings
	case KindKeepalive:
		c.KeepaliveFirings++
		ka := EffectiveKeepalive(ev.Settings, t.defaults[c.Netns])
		if ka.Enabled && ev.Counters.KeepaliveIdle.Seconds() >= ka.IdleSeconds {
			// tcp_keepalive_timer sends a probe (or gives up) when nothing
			// was received for the keepalive time.
			t.stats.KeepaliveProbes++
		}
		c.LastKeepalive = stampOf(ev.Time)
		c.KeepaliveProbesOut = ev.Counters.ProbesOut
		c.KeepaliveIdle = ev.Counters.KeepaliveIdle
		t.updateCounters(c, ev)
		c.Settings = ev.Settings
	case KindClose:
		t.setInode(c, ev.Inode)
		c.Holders = removeHolder(c.Holders, ev.Task.PID, ev.Close.FD)
		if passingChild(c, ev) {
			break
		}
		c.ClosedBy = &CloseRecord{
			PID: ev.Task.PID, PPID: ev.Task.PPID, Comm: ev.Task.Comm,
			FD: ev.Close.FD, At: ev.Time, RefsLeft: ev.Close.Refs - 1, Op: ev.Close.Op,
			writeSeq: ev.Close.WriteSeq, copiedSeq: ev.Close.CopiedSeq,
		}
	case KindSockopt:
		t.setInode(c, ev.Inode)
		applySockopt(&c.Settings, ev.Sockopt)
		c.SettingsBy, c.ArmedByGhostconn = ev.Task, c.ArmedByGhostconn && ev.Task != nil && t.self != 0 && ev.Task.PID == t.self
	}
	if t.hook != nil {
		t.hook(ev, c)
	}
}

func (t *Table) updateCounters(c *Conn, ev *Event) {
	if !ev.Counters.HaveCounters {
		return
	}
	if ev.Counters.Retransmits > 0 && c.Counters.Retransmits == 0 {
		c.RetransSince = stampOf(ev.Time)
	}
	if ev.Counters.Retransmits == 0 && ev.Counters.ProbesOut == 0 {
		c.RetransSince = 0
	}
	c.Counters = ev.Counters
}

// Socket option numbers, from the uapi headers by way of x/sys/unix.
const (
	solSocket      = unix.SOL_SOCKET
	soKeepalive    = unix.SO_KEEPALIVE
	solTCP         = unix.SOL_TCP
	tcpKeepIdle    = unix.TCP_KEEPIDLE
	tcpKeepIntvl   = unix.TCP_KEEPINTVL
	tcpKeepCnt     = unix.TCP_KEEPCNT
	tcpUserTimeout = unix.TCP_USER_TIMEOUT
)

func applySockopt(s *SockSettings, o Sockopt) {
	switch {
	case o.Level == solSocket && o.Name == soKeepalive:
		s.Keepalive = o.Value != 0
	case o.Level == solTCP && o.Name == tcpKeepIdle:
		s.KeepIdle = time.Duration(o.Value) * time.Second
	case o.Level == solTCP && o.Name == tcpKeepIntvl:
		s.KeepInterval = time.Duration(o.Value) * time.Second
	case o.Level == solTCP && o.Name == tcpKeepCnt:
		s.KeepCount = int(o.Value)
	case o.Level == solTCP && o.Name == tcpUserTimeout:
		s.UserTimeout = time.Duration(o.Value) * time.Millisecond
	}
}

// passingChild reports whether a close is a child dropping the copy it
// inherited (before exec, as Python's subprocess and OpenSSH's closefrom
// do) while its parent still holds the socket and an earlier close, with no
// I/O since, already explains it. That earlier close stays the evidence;
// replacing it would pass a ghost off as a child's inherited copy. The exit
// of a child whose parent still holds the socket is never evidence, as in
// noteExits.
func passingChild(c *Conn, ev *Event) bool {
	if ev.Close.Op == "exit" && ev.Task.PPID != 0 && heldByPID(c.Holders, ev.Task.PPID) {
		return true
	}
	cb := c.ClosedBy
	return cb != nil && cb.RefsLeft > 0 && ev.Task.PPID != 0 && heldByPID(c.Holders, ev.Task.PPID) &&
		cb.writeSeq == ev.Close.WriteSeq && cb.copiedSeq == ev.Close.CopiedSeq
}

// removeHolder returns hs without (pid, fd), in a new slice: views share
// holder slices, so they are never changed in place.
func removeHolder(hs []Holder, pid uint32, fd int32) []Holder {
	out := make([]Holder, 0, len(hs))
	for _, h := range hs {
		if h.PID != pid || h.FD != fd {
			out = append(out, h)
		}
	}
	return out
}

func (t *Table) applyState(ev *Event, c *Conn) {
	if c == nil {
		if ev.State == StateClose {
			// A socket that closes before anyone saw it open (for example
			// one that failed to connect before the agent's first snapshot)
			// has nothing to report.
			return
		}
		if c = t.create(ev); c == nil {
			return
		}
	} else if !c.ClosedAt.IsZero() {
		return
	}
	// Take the tuple as the newest event gives it (a connecting socket
	// gets its local port late), but not from a socket already unhashed on
	// its way to CLOSE, whose local port reads 0. Before publishing, so
	// that watchers see the ESTABLISHED change with its local port.
	if ev.Local.Port() != 0 {
		c.setTuple(ev.Local, ev.Remote)
	}
	if ev.Task != nil && (ev.State == StateSynSent || ev.State == StateListen) {
		c.Opener = ev.Task
	}
	if ev.Settings.HaveKeepalive {
		c.Settings = ev.Settings
	}
	t.updateCounters(c, ev)
	t.enter(c, Transition{At: ev.Time, From: ev.OldState, To: ev.State, Task: ev.Task, Source: "kernel"})
	if t.hook != nil {
		t.hook(ev, c)
	}
}

// enter moves c into tr.To: the one place where a kernel state change
// lands, whether a record streamed it, a delta folded it or an end record
// ends the connection. Leaving ESTABLISHED or CLOSE_WAIT clears verdicts at
// once; CLOSE retires the connection.
func (t *Table) enter(c *Conn, tr Transition) {
	t.stats.Transitions[tr.To]++
	t.markDirty(c)
	c.addTransition(tr)
	t.publish(c, Change{Time: tr.At, Type: "state", From: tr.From, State: tr.To, Source: "kernel", Task: tr.Task})
	c.State = tr.To
	c.StateSince = stampOf(tr.At)
	c.LastUpdate = max(c.LastUpdate, stampOf(tr.At))
	if tr.To == StateClose {
		t.retire(c, tr.At)
	} else if len(c.Verdicts) > 0 {
		t.evaluateOne(c, tr.At)
	}
}

// retire moves c from the live table to the closed history.
func (t *Table) retire(c *Conn, at time.Time) {
	c.ClosedAt = stampOf(at)
	c.State = StateClose
	for i := range c.Verdicts {
		t.publish(c, Change{Time: at, Type: "cleared", Verdict: &c.Verdicts[i]})
	}
	c.Holders = nil
	c.Verdicts = nil
	t.noteEnded(c.Cookie, t.tl.mono(at))
	c.dirty = false // retired: nothing to evaluate
	if n := len(t.dirtyList); c.listed && t.dirtyList[n-1] == c {
		// Retired by the event that created or changed it (an end
		// record): out of the list it can be a spare once it leaves the
		// history.
		t.dirtyList[n-1] = nil
		t.dirtyList = t.dirtyList[:n-1]
		c.listed = false
	}
	delete(t.conns, c.Cookie)
	if c.Inode != 0 && t.byInode[c.Inode] == c.Cookie {
		delete(t.byInode, c.Inode)
	}
	if t.cfg.MaxHistory == 0 {
		return
	}
	if len(t.closed) >= t.cfg.MaxHistory {
		// Drop an eighth at once: shifting the slice on every close made
		// each close cost O(MaxHistory).
		t.dropClosed(min(len(t.closed), t.cfg.MaxHistory/8+1))
	}
	t.closed = append(t.closed, c)
	t.closedIx[c.Cookie] = c
}

// noteEnded remembers that the socket cookie ended at mono.
func (t *Table) noteEnded(cookie uint64, mono int64) {
	if t.ended == nil {
		t.ended = make([]endedSlot, endedCap)
	}
	t.ended[cookie%endedCap] = endedSlot{cookie: cookie, mono: mono}
}

// staleDelta reports whether d, a delta of the socket cookie, is of a life
// of the socket that ended: the table remembers its end, and no state
// change folded after that end (a connect after a failed one) says the
// socket lives again. A syscall hook's delta alone (owner, options) never
// does: it may have read the socket just before its end.
func (t *Table) staleDelta(cookie uint64, d *Delta) bool {
	if t.ended == nil {
		return false
	}
	e := t.ended[cookie%endedCap]
	return e.cookie == cookie && (d.Parts&DeltaState == 0 || d.StateMono == 0 || d.StateMono <= e.mono)
}

// dropClosed forgets the n oldest closed connections.
func (t *Table) dropClosed(n int) {
	for _, c := range t.closed[:n] {
		t.forget(c)
	}
	m := copy(t.closed, t.closed[n:])
	clear(t.closed[m:])
	t.closed = t.closed[:m]
}

// GC drops closed connections older than the history TTL.
func (t *Table) GC(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sync()
	// Reconcile retires with the snapshot's start time, so the history is
	// not strictly ordered by ClosedAt: filter it all.
	kept := t.closed[:0]
	for _, c := range t.closed {
		if now.Sub(c.ClosedAt.Time()) > t.cfg.HistoryTTL {
			t.forget(c)
			continue
		}
		kept = append(kept, c)
	}
	clear(t.closed[len(kept):])
	t.closed = kept
}

// Len returns the number of live connections.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.conns)
}

// Stats returns a copy of the table's counters.
func (t *Table) Stats() TableStats {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s := t.stats
	s.Applied = maps.Clone(t.stats.Applied)
	s.Raised = maps.Clone(t.stats.Raised)
	return s
}

// ListOptions select what List returns.
type ListOptions struct {
	// Closed includes connections from the closed history.
	Closed bool
	// History includes each connection's state transitions.
	History bool
	// Match, when set, keeps only the connections it returns true for.
	Match func(*ConnView) bool
}

// List returns views of the connections at now, ordered by cookie.
func (t *Table) List(now time.Time, opts ListOptions) []ConnView {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := len(t.conns)
	if opts.Closed {
		n += len(t.closed)
	}
	// Sort pointers, not views: a view is a few hundred bytes.
	conns := make([]*Conn, 0, n)
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	if opts.Closed {
		conns = append(conns, t.closed...)
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].Cookie < conns[j].Cookie })
	out := make([]ConnView, 0, len(conns))
	uids := make([]uint32, len(conns))
	idles := make([]float64, len(conns))
	for i, c := range conns {
		// Built in place (see ListLive).
		k := len(out)
		out = append(out, c.view(now, t.defaults[c.Netns], opts.History, t.lastWalk, &uids[i], &idles[i]))
		if opts.Match != nil && !opts.Match(&out[k]) {
			out = out[:k]
		}
	}
	return out
}

// listChunk is how many views ListLive builds under one hold of the read
// lock.
const listChunk = 1024

// listed is a connection ListLive is to list, with its cookie.
type listed struct {
	cookie uint64
	conn   *Conn
}

// ListLive is List of the live connections (ListOptions.Closed is
// ignored), handed to fn a chunk at a time in cookie order instead of
// returned at once: at 100k connections, List's views take 37 MB for as
// long as the answer takes to write. Each chunk is built under the read
// lock and given to fn with the lock released, so a slow reader holds up
// no event; fn must not keep the slice, nor the views' UID and IdleSeconds
// pointers: the next chunk reuses them. A connection that closes while
// the list is written is left out if its chunk is built after it closed.
// It returns how many views fn was given, and fn's first error.
func (t *Table) ListLive(now time.Time, opts ListOptions, fn func([]ConnView) error) (int, error) {
	// The connections are taken with their cookies: while no spare has
	// been reused since (reuses), each is still the connection it was, live
	// unless retired (ClosedAt), and needs no lookup, which at 100k was a
	// cache miss a connection and a sixth of the listing.
	t.mu.RLock()
	conns := make([]listed, 0, len(t.conns))
	for k, c := range t.conns {
		conns = append(conns, listed{k, c})
	}
	reuses := t.reuses
	t.mu.RUnlock()
	slices.SortFunc(conns, func(a, b listed) int { return cmp.Compare(a.cookie, b.cookie) })
	cookies := conns
	views := make([]ConnView, 0, min(listChunk, len(cookies)))
	var uids [listChunk]uint32
	var idles [listChunk]float64
	n := 0
	for len(cookies) > 0 {
		part := cookies[:min(listChunk, len(cookies))]
		cookies = cookies[len(part):]
		views = views[:0]
		clear(views[:cap(views)]) // drop what the last chunk pointed to
		t.mu.RLock()
		same := t.reuses == reuses
		for _, l := range part {
			c := l.conn
			if !same {
				c = t.conns[l.cookie]
			}
			if c == nil || !c.ClosedAt.IsZero() {
				continue // closed since the cookies were taken
			}
			// Built in place: a view handed to Match from a local would
			// escape, one allocation of a few hundred bytes a connection.
			i := len(views)
			views = append(views, c.view(now, t.defaults[c.Netns], opts.History, t.lastWalk, &uids[i], &idles[i]))
			if opts.Match != nil && !opts.Match(&views[i]) {
				views = views[:i]
			}
		}
		t.mu.RUnlock()
		if len(views) == 0 {
			continue
		}
		n += len(views)
		if err := fn(views); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Evaluate applies the verdict rules at now to the connections that
// changed since the last evaluation and to those whose deadline (a
// threshold, a grace period, a recheck) has come. The cost is proportional
// to what changed, not to the size of the table. It returns the network
// namespaces whose sockets need a fresh snapshot before a rule can decide,
// and the earliest deadline still ahead (zero if none), so the caller can
// evaluate again right then.
//
// now and next are times as the table holds them: wall-clock times as of
// the last wall-clock step. A caller that schedules on next must not
// compare it with a wall clock that may have been stepped since; the agent
// uses EvaluateNow.
func (t *Table) Evaluate(now time.Time) (need map[uint32]bool, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sync()
	need, at, ok := t.evaluateAll(now, t.tl.mono(now))
	if ok {
		next = t.tl.at(at)
	}
	return need, next
}

// EvaluateNow is Evaluate at the table clock's now. Instead of the next
// deadline it returns how long until it comes, measured on the monotonic
// clock (zero if there is none): the wait for a timer, which a wall-clock
// step neither shortens nor stretches.
func (t *Table) EvaluateNow() (need map[uint32]bool, wait time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	mono := t.sync()
	need, at, ok := t.evaluateAll(t.tl.at(mono), mono)
	if ok {
		wait = time.Duration(at - mono)
	}
	return need, wait
}

// evaluateAll is Evaluate under the lock at now, whose monotonic reading
// is mono. It returns the monotonic reading of the earliest deadline ahead
// and whether there is one.
func (t *Table) evaluateAll(now time.Time, mono int64) (need map[uint32]bool, next int64, ok bool) {
	need = map[uint32]bool{}
	visit := func(c *Conn) {
		if !c.ClosedAt.IsZero() {
			return // retired
		}
		if t.evaluateOne(c, now) {
			need[c.Netns] = true
		}
	}
	dirty := t.dirtyList
	t.dirtyList = nil
	for _, c := range dirty {
		c.listed = false
		if c.dirty { // else evaluated since it was listed (see enter)
			visit(c)
		}
	}
	if len(t.dirtyList) == 0 && cap(dirty) <= maxReusedDirty {
		// Reuse the list: under churn it grew from nothing every poll.
		clear(dirty)
		t.dirtyList = dirty[:0]
	}
	for len(t.deadlines) > 0 && t.deadlines[0].at <= mono {
		d := heap.Pop(&t.deadlines).(deadline)
		if c := t.due(d); c != nil && !c.dirty {
			visit(c)
		}
	}
	t.compactDeadlines()
	if len(t.deadlines) > 0 {
		return need, t.deadlines[0].at, true
	}
	return need, 0, false
}

// due returns the live connection d is for, or nil if the entry is stale:
// the connection was retired or its deadline moved.
func (t *Table) due(d deadline) *Conn {
	c := t.conns[d.cookie]
	if c == nil || !c.hasNextEval || c.nextEval != d.at {
		return nil
	}
	return c
}

// compactDeadlines drops stale entries (connections retired, or whose
// deadline moved) once they outnumber the live ones. Without it, an entry
// for a connection that lived for a moment would stay until its silent
// threshold, minutes later: under churn, the heap grew without bound.
func (t *Table) compactDeadlines() {
	if len(t.deadlines) <= 2*len(t.conns)+1024 {
		return
	}
	live := t.deadlines[:0]
	for _, d := range t.deadlines {
		if t.due(d) != nil {
			live = append(live, d)
		}
	}
	t.deadlines = live
	heap.Init(&t.deadlines)
}

// markDirty queues c for the next evaluation.
func (t *Table) markDirty(c *Conn) {
	c.dirty = true
	if !c.listed {
		c.listed = true
		t.dirtyList = append(t.dirtyList, c)
	}
}

// maxReusedDirty bounds the dirty list kept for reuse between
// evaluations; a larger one (after a snapshot of a big table) is let go.
const maxReusedDirty = 1 << 16

// deadline is a time at which a connection must be evaluated again. It
// names the connection by cookie, not by pointer: a stale entry must not
// keep a retired connection (its history, tuple strings and holders)
// alive. The soak found 30,000 of them pinned at maximum churn, a heap
// that grew 6 MiB a minute until compaction.
type deadline struct {
	at     int64 // monotonic reading, in nanoseconds
	cookie uint64
}

// deadlineHeap is a min-heap of deadlines. Entries go stale when a
// connection's deadline moves; Evaluate skips those.
type deadlineHeap []deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}

// evaluateOne updates c's verdicts, keeping the since of those that
// persist, and reports whether a rule asked for fresher data.
func (t *Table) evaluateOne(c *Conn, now time.Time) bool {
	d, known := t.defaults[c.Netns]
	e := evaluate(c, d, now, t.cfg.Verdicts)
	if !known && (c.State == StateEstablished || c.State == StateCloseWait) {
		// No snapshot has read this namespace's sysctls yet; the evidence
		// needs them.
		e.refresh = true
		e.wake(now.Add(time.Second))
	}
	c.dirty = false
	var next int64
	if !e.next.IsZero() {
		next = t.tl.mono(e.next)
	}
	if next != c.nextEval || !e.next.IsZero() != c.hasNextEval {
		c.nextEval, c.hasNextEval = next, !e.next.IsZero()
		if c.hasNextEval {
			heap.Push(&t.deadlines, deadline{at: next, cookie: c.Cookie})
		}
	}
	for i := range e.verdicts {
		v := &e.verdicts[i]
		found := false
		for _, old := range c.Verdicts {
			if old.Kind == v.Kind {
				v.Since, found = old.Since, true
				break
			}
		}
		if !found {
			t.changes++
			t.stats.Raised[v.Kind]++
			t.publish(c, Change{Time: now, Type: "verdict", Verdict: v})
		}
	}
	for i := range c.Verdicts {
		if !has(e.verdicts, c.Verdicts[i].Kind) {
			t.changes++
			t.publish(c, Change{Time: now, Type: "cleared", Verdict: &c.Verdicts[i]})
		}
	}
	if len(e.verdicts) > 0 || len(c.Verdicts) > 0 {
		c.Verdicts = e.verdicts
	}
	return e.refresh
}

// Summary is the table counted for metrics.
type Summary struct {
	ByState   map[State]int
	ByVerdict map[string]int
	// StateBy and VerdictBy count by (label value, state) and (label
	// value, verdict) for each labeler given to Summarize, by its name.
	StateBy   map[string]map[[2]string]int
	VerdictBy map[string]map[[2]string]int
}

// Summarize counts live connections by state and verdict, and by the value
// each labeler gives a connection (a process name, a pod). Labelers are
// called under the table's lock and must not block.
func (t *Table) Summarize(labelers map[string]func(c *Conn) string) Summary {
	s := Summary{ByState: map[State]int{}, ByVerdict: map[string]int{},
		StateBy: map[string]map[[2]string]int{}, VerdictBy: map[string]map[[2]string]int{}}
	for name := range labelers {
		s.StateBy[name], s.VerdictBy[name] = map[[2]string]int{}, map[[2]string]int{}
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, c := range t.conns {
		s.ByState[c.State]++
		for _, v := range c.Verdicts {
			s.ByVerdict[v.Kind]++
		}
		for name, label := range labelers {
			l := label(c)
			s.StateBy[name][[2]string{l, c.State.String()}]++
			for _, v := range c.Verdicts {
				s.VerdictBy[name][[2]string{l, v.Kind}]++
			}
		}
	}
	return s
}

// Has reports whether the live table holds cookie.
func (t *Table) Has(cookie uint64) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.conns[cookie]
	return ok
}

// HasInode is Has, and false too when the table knows the connection's
// inode and it is not ino (0: not known).
func (t *Table) HasInode(cookie, ino uint64) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	c, ok := t.conns[cookie]
	return ok && (ino == 0 || c.Inode == 0 || c.Inode == ino)
}
