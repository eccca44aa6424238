package collector

import (
	"net/netip"
	"time"
)

// Holder is a process that holds an fd referring to a socket.
type Holder struct {
	PID    uint32  `json:"pid"`
	PPID   uint32  `json:"ppid"`
	Comm   string  `json:"comm"`
	FD     int32   `json:"fd"`
	Cgroup *Cgroup `json:"cgroup,omitempty"`

	// ownedAt is, for a holder a delta's owner (connect, accept) added, the
	// monotonic reading of that event, so that a holder walk begun before
	// it does not drop the holder; zero for a holder a walk found.
	ownedAt int64
}

// CloseRecord says who closed an fd of a socket while other references to
// it remained.
type CloseRecord struct {
	PID      uint32    `json:"pid"`
	PPID     uint32    `json:"ppid"`
	Comm     string    `json:"comm"`
	FD       int32     `json:"fd"`
	At       time.Time `json:"at"`
	RefsLeft uint32    `json:"refs_left"`
	Op       string    `json:"op"`

	// The application's write and read positions at the close; if a
	// holder moves them later, the close was a handoff.
	writeSeq, copiedSeq uint32
}

// NetDefaults are a network namespace's TCP sysctls that sockets fall back
// to.
type NetDefaults struct {
	KeepIdle     time.Duration
	KeepInterval time.Duration
	KeepCount    int
	Retries2     int
}

// Transition is one state change in a connection's history.
type Transition struct {
	At   time.Time `json:"at"`
	From State     `json:"from"`
	To   State     `json:"to"`
	Task *Task     `json:"task,omitempty"`
	// Source is "kernel" for tracepoint events and "reconcile" for changes
	// found by comparing with a snapshot; "ghostconn abort" and "ghostconn
	// graceful" mark an action (From and To are the state it found).
	Source string `json:"source"`
	// Action is what ghostconn did, on an action's entry.
	Action *Action `json:"action,omitempty"`
}

// maxTransitions bounds the per-connection history.
const maxTransitions = 16

// Conn is one TCP socket in the table.
type Conn struct {
	Cookie uint64
	Netns  uint32
	Family Family
	State  State
	Local  netip.AddrPort
	Remote netip.AddrPort
	Inode  uint64
	UID    uint32
	HasUID bool

	FirstSeen  stamp
	StateSince stamp
	// LastUpdate is the time of the newest event applied, kernel or
	// snapshot; reconcile uses it to tell stale snapshot data from news.
	LastUpdate stamp
	ClosedAt   stamp // set once the connection left the kernel

	Opener  *Task
	Holders []Holder
	// HoldersAt is when the last holder walk that saw the connection
	// began; zero until one has. Holders a delta's owner added since count
	// on top of what that walk found.
	HoldersAt stamp
	ClosedBy  *CloseRecord

	Settings SockSettings
	// SettingsBy names the process whose setsockopt last changed the
	// keepalive settings, if ghostconn saw it.
	SettingsBy *Task
	// ArmedByGhostconn says ghostconn keepalive set the keepalive
	// settings, and the application has not set its own since.
	ArmedByGhostconn bool

	Counters         TCPCounters
	RetransmitEvents uint64
	KeepaliveFirings uint64
	// LastKeepalive is when the keepalive timer last fired; KeepaliveProbesOut
	// and KeepaliveIdle are what it found then (probes unanswered before
	// that firing, time since data was received). Snapshots do not touch
	// them: they read probes_out after the timer has counted its probe.
	LastKeepalive      stamp
	KeepaliveProbesOut uint8
	KeepaliveIdle      time.Duration

	// LastData is when data last went either way, as of LastDataAt (the
	// snapshot that measured it). Zero until a snapshot has seen the socket.
	LastData   stamp
	LastDataAt stamp
	SendQueue  uint32
	RecvQueue  uint32
	// WriteSeq and CopiedSeq are the application's write and read
	// positions as of LastDataAt.
	WriteSeq  uint32
	CopiedSeq uint32
	// RetransSince is when the current run of retransmissions began.
	RetransSince stamp

	History  []Transition
	Verdicts []Verdict

	observedGen uint64
	// walkGen is the holder walk (Table.walkGen) that last set Holders.
	walkGen uint64
	// dirty marks a connection changed since its last evaluation, and
	// listed one that the table's dirty list holds (an evaluation between
	// two changes clears dirty but leaves it listed); nextEval is when time
	// alone could change its verdicts, a monotonic reading (see timeline),
	// if hasNextEval. A full evaluation skips connections that are neither.
	dirty       bool
	listed      bool
	hasNextEval bool
	nextEval    int64
	// localStr and remoteStr print Local and Remote (see tupleStrings).
	localStr, remoteStr string
}

// shift moves every time c holds by d, a wall-clock step, to keep them on
// the table's timeline (see Table.sync). The close record and the verdicts
// are replaced, not changed: views and watchers share them.
func (c *Conn) shift(d time.Duration) {
	for _, t := range [...]*stamp{&c.FirstSeen, &c.StateSince, &c.LastUpdate, &c.ClosedAt, &c.HoldersAt,
		&c.LastKeepalive, &c.LastData, &c.LastDataAt, &c.RetransSince} {
		if *t != 0 {
			*t += stamp(d)
		}
	}
	for i := range c.History {
		shiftTime(&c.History[i].At, d)
	}
	if c.ClosedBy != nil {
		cb := *c.ClosedBy
		shiftTime(&cb.At, d)
		c.ClosedBy = &cb
	}
	if len(c.Verdicts) > 0 {
		vs := append([]Verdict(nil), c.Verdicts...)
		for i := range vs {
			shiftTime(&vs[i].Since, d)
			if vs[i].GiveUp != nil {
				at := vs[i].GiveUp.Add(d)
				vs[i].GiveUp = &at
			}
		}
		c.Verdicts = vs
	}
}

// shiftTime moves *t by d unless it is zero (unset).
func shiftTime(t *time.Time, d time.Duration) {
	if !t.IsZero() {
		*t = t.Add(d)
	}
}

func (c *Conn) addTransition(t Transition) {
	if len(c.History) >= maxTransitions {
		copy(c.History, c.History[1:])
		c.History = c.History[:maxTransitions-1]
	}
	c.History = append(c.History, t)
}

// Keepalive is a socket's effective keepalive configuration.
type Keepalive struct {
	Enabled         bool    `json:"enabled"`
	IdleSeconds     float64 `json:"idle_seconds"`
	IntervalSeconds float64 `json:"interval_seconds"`
	Count           int     `json:"count"`
	// Source is "socket" when any value comes from a socket option and
	// "sysctl" when all come from the network namespace's defaults.
	Source string `json:"source"`
}

// EffectiveKeepalive merges the socket's own settings with its namespace's
// defaults the way the kernel does (keepalive_time_when and friends).
func EffectiveKeepalive(s SockSettings, d NetDefaults) Keepalive {
	k := Keepalive{Enabled: s.Keepalive, Source: "sysctl"}
	idle, intvl, cnt := d.KeepIdle, d.KeepInterval, d.KeepCount
	if s.KeepIdle > 0 {
		idle, k.Source = s.KeepIdle, "socket"
	}
	if s.KeepInterval > 0 {
		intvl, k.Source = s.KeepInterval, "socket"
	}
	if s.KeepCount > 0 {
		cnt, k.Source = s.KeepCount, "socket"
	}
	k.IdleSeconds, k.IntervalSeconds, k.Count = idle.Seconds(), intvl.Seconds(), cnt
	return k
}

// keepalive is c's effective keepalive, with "ghostconn" as the source of
// values ghostconn keepalive set.
func (c *Conn) keepalive(d NetDefaults) Keepalive {
	k := EffectiveKeepalive(c.Settings, d)
	if c.ArmedByGhostconn && k.Source == "socket" {
		k.Source = "ghostconn"
	}
	return k
}

// ConnView is the JSON form of a connection, as `ghostconn ls -o json` and
// the API print it.
type ConnView struct {
	Cookie  uint64   `json:"cookie"`
	Family  string   `json:"family"`
	State   State    `json:"state"`
	Local   string   `json:"local"`
	Remote  string   `json:"remote"`
	Netns   uint32   `json:"netns"`
	Inode   uint64   `json:"inode"`
	UID     *uint32  `json:"uid"`
	Holders []Holder `json:"holders"`
	// HoldersKnown is false while Holders is empty only because nothing
	// has looked yet: no holder walk has run since the connection
	// appeared and no connect or accept of it was seen.
	// HoldersUnknownReason then says so, with the times.
	HoldersKnown         bool         `json:"holders_known"`
	HoldersUnknownReason string       `json:"holders_unknown_reason,omitempty"`
	Keepalive            Keepalive    `json:"keepalive"`
	UserTimeoutSeconds   float64      `json:"user_timeout_seconds"`
	IdleSeconds          *float64     `json:"idle_seconds"`
	Retransmits          uint32       `json:"retransmits"`
	RTORetransmits       uint32       `json:"rto_retransmits"`
	ProbesOut            uint8        `json:"probes_out"`
	KeepaliveFirings     uint64       `json:"keepalive_firings"`
	SendQueue            uint32       `json:"send_queue_bytes"`
	RecvQueue            uint32       `json:"recv_queue_bytes"`
	ClosedBy             *CloseRecord `json:"closed_by"`
	Opener               *Task        `json:"opener,omitempty"`
	FirstSeen            time.Time    `json:"first_seen"`
	StateSince           time.Time    `json:"state_since"`
	ClosedAt             *time.Time   `json:"closed_at,omitempty"`
	Verdicts             []Verdict    `json:"verdicts"`
	History              []Transition `json:"history,omitempty"`
}

// view renders c at now; lastWalk is when the table's last holder walk
// began (zero if none has). Holders and Verdicts are shared, not copied:
// the table replaces those slices rather than changing them in place. uid
// and idle are where the view's pointers point, so a caller rendering many
// connections can hand out slots of one slab instead of two allocations
// each.
func (c *Conn) view(now time.Time, d NetDefaults, withHistory bool, lastWalk time.Time, uid *uint32, idle *float64) ConnView {
	local, remote := c.tupleStrings()
	v := ConnView{
		Cookie:             c.Cookie,
		Family:             c.Family.String(),
		State:              c.State,
		Local:              local,
		Remote:             remote,
		Netns:              c.Netns,
		Inode:              c.Inode,
		Holders:            c.Holders,
		Keepalive:          c.keepalive(d),
		UserTimeoutSeconds: c.Settings.UserTimeout.Seconds(),
		Retransmits:        c.Counters.TotalRetrans,
		RTORetransmits:     c.Counters.Retransmits,
		ProbesOut:          c.Counters.ProbesOut,
		KeepaliveFirings:   c.KeepaliveFirings,
		SendQueue:          c.SendQueue,
		RecvQueue:          c.RecvQueue,
		Opener:             c.Opener,
		FirstSeen:          c.FirstSeen.Time(),
		StateSince:         c.StateSince.Time(),
		Verdicts:           c.Verdicts,
	}
	if v.Holders == nil {
		v.Holders = []Holder{}
	}
	v.HoldersKnown = c.holdersKnown()
	if !v.HoldersKnown {
		v.HoldersUnknownReason = holdersUnknownReason(c.FirstSeen.Time(), lastWalk)
	}
	if v.Verdicts == nil {
		v.Verdicts = []Verdict{}
	}
	if c.HasUID {
		*uid = c.UID
		v.UID = uid
	}
	if c.ClosedBy != nil {
		cb := *c.ClosedBy
		v.ClosedBy = &cb
	}
	if !c.ClosedAt.IsZero() {
		at := c.ClosedAt.Time()
		v.ClosedAt = &at
	}
	if d, ok := c.Idle(now); ok {
		*idle = d.Seconds()
		v.IdleSeconds = idle
	}
	if withHistory {
		v.History = append([]Transition{}, c.History...)
	}
	return v
}

// holdersKnown reports whether c's holders are known: it has some, it is
// closed (and holds none), or a holder walk has run since it appeared. A
// connection first seen at the walk's start (a seeding snapshot) was seen
// by that walk.
func (c *Conn) holdersKnown() bool {
	return len(c.Holders) > 0 || !c.ClosedAt.IsZero() || (!c.HoldersAt.IsZero() && !c.HoldersAt.Before(c.FirstSeen.Time()))
}

// holdersUnknownReason says why the holders of a connection first seen at
// firstSeen are not known, lastWalk being the table's last holder walk.
func holdersUnknownReason(firstSeen, lastWalk time.Time) string {
	const owner = "and no connect or accept by a process was seen for it (they are known at the next walk)"
	if lastWalk.IsZero() {
		return "no fd walk has run yet, " + owner
	}
	return "the connection (first seen at " + firstSeen.Format(time.RFC3339Nano) + ") is newer than the last fd walk (at " +
		lastWalk.Format(time.RFC3339Nano) + "), " + owner
}

// setTuple sets the addresses and caches their printed form, which views
// read under the table's read lock.
func (c *Conn) setTuple(local, remote netip.AddrPort) {
	if c.localStr != "" && c.Local == local && c.Remote == remote {
		return // printed already: most events repeat the tuple
	}
	c.Local, c.Remote = local, remote
	c.localStr, c.remoteStr = local.String(), remote.String()
}

// tupleStrings returns the printed addresses cached by setTuple (printed
// now for a Conn that never went through it).
func (c *Conn) tupleStrings() (local, remote string) {
	if c.localStr == "" {
		return c.Local.String(), c.Remote.String()
	}
	return c.localStr, c.remoteStr
}

// Idle is how long no data has gone either way on a connection that can
// carry data (ESTABLISHED or CLOSE_WAIT). It is measured by the last
// snapshot and extended by the time since; a connection no snapshot has
// seen yet counts from when it was established.
func (c *Conn) Idle(now time.Time) (time.Duration, bool) {
	last, ok := c.idleFrom()
	if !ok {
		return 0, false
	}
	if now.Before(last) {
		return 0, true
	}
	return now.Sub(last), true
}

// idleFrom is when c's idle time began (the last data, else the state's
// start), and whether c is in a state whose idle time counts.
func (c *Conn) idleFrom() (time.Time, bool) {
	if c.State != StateEstablished && c.State != StateCloseWait {
		return time.Time{}, false
	}
	if c.LastData.IsZero() {
		return c.StateSince.Time(), true
	}
	return c.LastData.Time(), true
}
