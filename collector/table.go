package collector

import (
	"sort"
	"sync"
	"time"
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
}

// DefaultTableConfig is what the agent uses unless told otherwise.
var DefaultTableConfig = TableConfig{MaxConns: 1 << 20, HistoryTTL: 5 * time.Minute, MaxHistory: 10000}

// TableStats counts what the table did with its input.
type TableStats struct {
	Applied       map[Kind]uint64
	DroppedFull   uint64 // new connections refused because the table was full
	Unknown       uint64 // close/sockopt events for sockets the table does not know
	ReconcileAdds uint64 // connections a snapshot found that no event announced
	ReconcileGone uint64 // connections a snapshot no longer found
	ReconcileFix  uint64 // connections whose state a snapshot corrected
}

// Table is the live connection table, keyed by socket cookie. It is safe
// for concurrent use.
type Table struct {
	cfg TableConfig

	mu       sync.RWMutex
	conns    map[uint64]*Conn
	byInode  map[uint64]uint64 // inode -> cookie
	closed   []*Conn           // oldest first
	closedIx map[uint64]*Conn  // cookie -> newest closed entry
	defaults map[uint32]NetDefaults
	stats    TableStats
	// hook, when set, is called under the lock for each applied event with
	// the connection it touched.
	hook func(ev *Event, c *Conn)
}

// NewTable returns an empty table.
func NewTable(cfg TableConfig) *Table {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultTableConfig.MaxConns
	}
	if cfg.MaxHistory < 0 {
		cfg.MaxHistory = 0
	}
	return &Table{
		cfg:      cfg,
		conns:    map[uint64]*Conn{},
		byInode:  map[uint64]uint64{},
		closedIx: map[uint64]*Conn{},
		defaults: map[uint32]NetDefaults{},
		stats:    TableStats{Applied: map[Kind]uint64{}},
	}
}

// Apply applies a batch of events in order.
func (t *Table) Apply(evs []Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	if ev.Cookie == 0 {
		t.stats.Unknown++
		return nil
	}
	if len(t.conns) >= t.cfg.MaxConns {
		t.stats.DroppedFull++
		return nil
	}
	c := &Conn{
		Cookie:     ev.Cookie,
		Netns:      ev.Netns,
		Family:     ev.Family,
		State:      ev.State,
		Local:      ev.Local,
		Remote:     ev.Remote,
		FirstSeen:  ev.Time,
		StateSince: ev.Time,
	}
	t.conns[ev.Cookie] = c
	return c
}

func (t *Table) setInode(c *Conn, ino uint64) {
	if ino == 0 || c.Inode == ino {
		return
	}
	c.Inode = ino
	t.byInode[ino] = c.Cookie
}

func (t *Table) apply(ev *Event) {
	t.stats.Applied[ev.Kind]++
	c := t.lookup(ev)
	switch ev.Kind {
	case KindState:
		t.applyState(ev, c)
		return
	case KindObserved:
		t.applyObserved(ev, c)
		return
	}
	if c == nil {
		if ev.Kind == KindClose || ev.Kind == KindSockopt {
			// A socket that has not connected yet (or one whose namespace
			// no snapshot covers): nothing to attach the fact to.
			t.stats.Unknown++
			return
		}
		if c = t.create(ev); c == nil {
			return
		}
	}
	c.LastUpdate = later(c.LastUpdate, ev.Time)
	switch ev.Kind {
	case KindRetransmit:
		c.RetransmitEvents++
		t.updateCounters(c, ev)
		c.Settings = ev.Settings
	case KindKeepalive:
		c.KeepaliveFirings++
		c.LastKeepalive = ev.Time
		t.updateCounters(c, ev)
		c.Settings = ev.Settings
	case KindClose:
		t.setInode(c, ev.Inode)
		c.ClosedBy = &CloseRecord{
			PID: ev.Task.PID, PPID: ev.Task.PPID, Comm: ev.Task.Comm,
			FD: ev.Close.FD, At: ev.Time, RefsLeft: ev.Close.Refs - 1, Op: ev.Close.Op,
		}
		c.Holders = removeHolder(c.Holders, ev.Task.PID, ev.Close.FD)
	case KindSockopt:
		t.setInode(c, ev.Inode)
		applySockopt(&c.Settings, ev.Sockopt)
		c.SettingsBy = ev.Task
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
		c.RetransSince = ev.Time
	}
	if ev.Counters.Retransmits == 0 && ev.Counters.ProbesOut == 0 {
		c.RetransSince = time.Time{}
	}
	c.Counters = ev.Counters
}

// Socket option numbers from the uapi headers.
const (
	solSocket      = 1
	soKeepalive    = 9
	solTCP         = 6
	tcpKeepIdle    = 4
	tcpKeepIntvl   = 5
	tcpKeepCnt     = 6
	tcpUserTimeout = 18
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

func removeHolder(hs []Holder, pid uint32, fd int32) []Holder {
	out := hs[:0]
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
	c.addTransition(Transition{At: ev.Time, From: ev.OldState, To: ev.State, Task: ev.Task, Source: "kernel"})
	c.State = ev.State
	c.StateSince = ev.Time
	c.LastUpdate = later(c.LastUpdate, ev.Time)
	// Take the tuple as the newest event gives it (a connecting socket
	// gets its local port late), but not from a socket already unhashed on
	// its way to CLOSE, whose local port reads 0.
	if ev.Local.Port() != 0 {
		c.Local, c.Remote = ev.Local, ev.Remote
	}
	if ev.Task != nil && (ev.State == StateSynSent || ev.State == StateListen) {
		c.Opener = ev.Task
	}
	if ev.Settings.HaveKeepalive {
		c.Settings = ev.Settings
	}
	t.updateCounters(c, ev)
	if ev.State == StateClose {
		t.retire(c, ev.Time)
	}
	if t.hook != nil {
		t.hook(ev, c)
	}
}

// retire moves c from the live table to the closed history.
func (t *Table) retire(c *Conn, at time.Time) {
	c.ClosedAt = at
	c.State = StateClose
	c.Holders = nil
	delete(t.conns, c.Cookie)
	if c.Inode != 0 && t.byInode[c.Inode] == c.Cookie {
		delete(t.byInode, c.Inode)
	}
	if t.cfg.MaxHistory == 0 {
		return
	}
	if len(t.closed) >= t.cfg.MaxHistory {
		t.dropClosed(1)
	}
	t.closed = append(t.closed, c)
	t.closedIx[c.Cookie] = c
}

// dropClosed forgets the n oldest closed connections.
func (t *Table) dropClosed(n int) {
	for _, c := range t.closed[:n] {
		if t.closedIx[c.Cookie] == c {
			delete(t.closedIx, c.Cookie)
		}
	}
	m := copy(t.closed, t.closed[n:])
	clear(t.closed[m:])
	t.closed = t.closed[:m]
}

// GC drops closed connections older than the history TTL.
func (t *Table) GC(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cut := 0
	for cut < len(t.closed) && now.Sub(t.closed[cut].ClosedAt) > t.cfg.HistoryTTL {
		cut++
	}
	if cut > 0 {
		t.dropClosed(cut)
	}
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
	s.Applied = make(map[Kind]uint64, len(t.stats.Applied))
	for k, v := range t.stats.Applied {
		s.Applied[k] = v
	}
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
	out := make([]ConnView, 0, len(t.conns))
	add := func(c *Conn) {
		v := c.view(now, t.defaults[c.Netns], opts.History)
		if opts.Match == nil || opts.Match(&v) {
			out = append(out, v)
		}
	}
	for _, c := range t.conns {
		add(c)
	}
	if opts.Closed {
		for _, c := range t.closed {
			add(c)
		}
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Cookie < out[j].Cookie })
	return out
}

// CountByState counts live connections per state.
func (t *Table) CountByState() map[State]int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := map[State]int{}
	for _, c := range t.conns {
		out[c.State]++
	}
	return out
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
