package collector

import (
	"fmt"
	"strings"
	"time"
)

// Verdict kinds.
const (
	VerdictGhost        = "ghost"
	VerdictCloseWait    = "close-wait"
	VerdictSilent       = "silent"
	VerdictUnresponsive = "unresponsive"
)

// VerdictKinds lists every verdict kind.
var VerdictKinds = []string{VerdictGhost, VerdictCloseWait, VerdictSilent, VerdictUnresponsive}

// ParseVerdict checks a verdict kind given by a user.
func ParseVerdict(s string) (string, error) {
	for _, k := range VerdictKinds {
		if s == k {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown verdict %q (want one of %s)", s, strings.Join(VerdictKinds, ", "))
}

// Verdict is one finding about a connection, with its evidence.
type Verdict struct {
	Kind   string    `json:"kind"`
	Since  time.Time `json:"since"`
	Detail string    `json:"detail"`
	// GiveUp is when the kernel will abort the connection (unresponsive
	// only); null means never.
	GiveUp *time.Time `json:"give_up,omitempty"`
}

// VerdictConfig holds the thresholds of the rules.
type VerdictConfig struct {
	// GhostGrace is how long a socket may stay open after an fd of it was
	// closed with other references left before it counts as a ghost.
	GhostGrace time.Duration
	// CloseWaitAfter is how long CLOSE_WAIT may last.
	CloseWaitAfter time.Duration
	// SilentAfter is how long an ESTABLISHED connection may carry no data
	// without a keepalive at least that frequent.
	SilentAfter time.Duration
	// UnresponsiveRTOs is how many consecutive retransmission timeouts make
	// a peer unresponsive.
	UnresponsiveRTOs int
}

// DefaultVerdictConfig holds the documented defaults.
var DefaultVerdictConfig = VerdictConfig{
	GhostGrace:       5 * time.Second,
	CloseWaitAfter:   60 * time.Second,
	SilentAfter:      5 * time.Minute,
	UnresponsiveRTOs: 2,
}

// Freshness of snapshot data before a verdict that rests on it is raised:
// a silent verdict needs a measurement of idleness no older than this.
const silentFreshness = 2 * time.Second

// recheckUnresponsive is how often a connection flagged unresponsive is
// measured again, since no event says that a peer recovered.
const recheckUnresponsive = 5 * time.Second

// evaluation is what the rules conclude about one connection.
type evaluation struct {
	verdicts []Verdict
	// refresh is true when a rule needs a newer snapshot of the socket
	// (and its holders) before it can decide.
	refresh bool
	// pending is true while a ghost decision waits for its grace period.
	pending bool
	// next is the earliest time the verdicts could change with no new
	// event or snapshot; zero means not before one.
	next time.Time
	now  time.Time
}

// wake asks for an evaluation at t. A time already past is ignored: what
// it marked has been decided at now, and a rule still waiting for evidence
// asks for now+1s itself. Keeping a past time would also hide later ones,
// since the caller queues a deadline only when next moves.
func (e *evaluation) wake(t time.Time) {
	if !t.IsZero() && t.After(e.now) && (e.next.IsZero() || t.Before(e.next)) {
		e.next = t
	}
}

// evaluate applies every rule to c at now. now and every time c holds are
// on the table's timeline (see timeline), so the rules' comparisons and
// durations are monotonic ones; a wall-clock step changes none of them.
func evaluate(c *Conn, d NetDefaults, now time.Time, cfg VerdictConfig) evaluation {
	ev := evaluation{now: now}
	if c.State != StateEstablished && c.State != StateCloseWait {
		return ev
	}
	if v, refresh, pending := ghostRule(c, now, cfg); v != nil {
		ev.verdicts = append(ev.verdicts, *v)
	} else {
		ev.refresh = ev.refresh || refresh
		ev.pending = pending
	}
	if v, refresh := closeWaitRule(c, now, cfg); v != nil {
		ev.verdicts = append(ev.verdicts, *v)
	} else {
		ev.refresh = ev.refresh || refresh
	}
	if v, refresh := silentRule(c, d, now, cfg); v != nil {
		ev.verdicts = append(ev.verdicts, *v)
	} else {
		ev.refresh = ev.refresh || refresh
	}
	if v := unresponsiveRule(c, d, now, cfg); v != nil {
		ev.verdicts = append(ev.verdicts, *v)
		if now.Sub(c.LastDataAt.Time()) >= recheckUnresponsive {
			ev.refresh = true
		}
		ev.wake(c.LastDataAt.Add(recheckUnresponsive))
	}
	// When could time alone change the verdicts?
	if ev.refresh {
		ev.wake(now.Add(time.Second))
	}
	if ev.pending && c.ClosedBy != nil {
		ev.wake(c.ClosedBy.At.Add(cfg.GhostGrace))
	}
	if c.State == StateCloseWait && !has(ev.verdicts, VerdictCloseWait) {
		ev.wake(c.StateSince.Add(cfg.CloseWaitAfter))
	}
	if c.State == StateEstablished && !has(ev.verdicts, VerdictSilent) {
		if idle, ok := c.Idle(now); ok {
			ev.wake(now.Add(cfg.SilentAfter - idle))
		}
	}
	return ev
}

func has(vs []Verdict, kind string) bool {
	for _, v := range vs {
		if v.Kind == kind {
			return true
		}
	}
	return false
}

// ghostRule: an fd of the socket was closed while other references
// remained, and after the grace period the socket is still open, held by
// some process, and nobody has written to it or read from it since.
func ghostRule(c *Conn, now time.Time, cfg VerdictConfig) (v *Verdict, refresh, pending bool) {
	cb := c.ClosedBy
	if cb == nil || cb.RefsLeft == 0 {
		return nil, false, false
	}
	due := cb.At.Add(cfg.GhostGrace)
	if now.Before(due) {
		return nil, false, true
	}
	// Decide only on holders and I/O positions measured after the grace
	// period; until then ask for them.
	if c.HoldersAt.Before(due) || c.LastDataAt.Before(due) {
		return nil, true, true
	}
	if len(c.Holders) == 0 {
		return nil, false, false
	}
	if c.WriteSeq != cb.writeSeq || c.CopiedSeq != cb.copiedSeq {
		// A remaining holder reads or writes: the close handed the
		// connection over (a forking server, an fd passed to a worker).
		return nil, false, false
	}
	if cb.PPID != 0 && allHeldBy(c.Holders, cb.PPID) {
		// A child closed its inherited copy; the parent that still holds
		// it is the owner.
		return nil, false, false
	}
	var what string
	if cb.Op == "exit" {
		what = fmt.Sprintf("%s (pid %d) exited at %s while holding fd %d", cb.Comm, cb.PID, rfc3339(cb.At), cb.FD)
	} else {
		what = fmt.Sprintf("%s (pid %d) closed fd %d (%s) at %s", cb.Comm, cb.PID, cb.FD, cb.Op, rfc3339(cb.At))
	}
	return &Verdict{
		Kind:  VerdictGhost,
		Since: due,
		Detail: fmt.Sprintf("%s, but other references kept the socket %s: still held by %s; no data written or read since",
			what, c.State, holdersText(c.Holders)),
	}, false, false
}

func allHeldBy(hs []Holder, pid uint32) bool {
	for _, h := range hs {
		if h.PID != pid {
			return false
		}
	}
	return true
}

// closeWaitRule: the peer closed its side longer ago than the threshold
// and the application has not closed its own.
func closeWaitRule(c *Conn, now time.Time, cfg VerdictConfig) (*Verdict, bool) {
	if c.State != StateCloseWait || now.Sub(c.StateSince.Time()) < cfg.CloseWaitAfter {
		return nil, false
	}
	due := c.StateSince.Add(cfg.CloseWaitAfter)
	if !has(c.Verdicts, VerdictCloseWait) && c.HoldersAt.Before(due) {
		// Name the holder as of now, not as of an older walk.
		return nil, true
	}
	holder := "no process (orphaned)"
	if len(c.Holders) > 0 {
		holder = holdersText(c.Holders)
	}
	d := fmt.Sprintf("peer closed its side at %s (CLOSE_WAIT for %s); the application never closed it: held by %s",
		rfc3339(c.StateSince.Time()), round(now.Sub(c.StateSince.Time())), holder)
	if c.RecvQueue > 0 {
		d += fmt.Sprintf("; %d bytes received and never read", c.RecvQueue)
	}
	return &Verdict{Kind: VerdictCloseWait, Since: due, Detail: d}, false
}

// silentRule: ESTABLISHED, no data either way for at least the threshold,
// and no keepalive that would probe the path within it.
func silentRule(c *Conn, d NetDefaults, now time.Time, cfg VerdictConfig) (*Verdict, bool) {
	if c.State != StateEstablished {
		return nil, false
	}
	idle, ok := c.Idle(now)
	if !ok || idle < cfg.SilentAfter {
		return nil, false
	}
	ka := EffectiveKeepalive(c.Settings, d)
	kaIdle := time.Duration(ka.IdleSeconds * float64(time.Second))
	if ka.Enabled && kaIdle <= cfg.SilentAfter {
		return nil, false
	}
	// Raise the verdict only on a fresh measurement; keep it on an old one
	// (the next snapshot clears it if data flowed).
	if !has(c.Verdicts, VerdictSilent) && now.Sub(c.LastDataAt.Time()) > silentFreshness {
		return nil, true
	}
	var why string
	switch {
	case !ka.Enabled:
		why = "keepalive is off (SO_KEEPALIVE not set)"
	case c.Settings.KeepIdle > 0:
		why = fmt.Sprintf("keepalive idle %s, set on the socket (TCP_KEEPIDLE), is longer than that", round(kaIdle))
	default:
		why = fmt.Sprintf("keepalive idle %s, from the namespace's net.ipv4.tcp_keepalive_time, is longer than that", round(kaIdle))
	}
	return &Verdict{
		Kind:  VerdictSilent,
		Since: now.Add(-idle).Add(cfg.SilentAfter),
		Detail: fmt.Sprintf("no data either way for %s (threshold %s) and %s, so a NAT or load balancer can drop it unseen; keepalive: enabled=%t idle=%s interval=%s count=%d (%s)",
			round(idle), cfg.SilentAfter, why, ka.Enabled, round(kaIdle), round(time.Duration(ka.IntervalSeconds*float64(time.Second))), ka.Count, ka.Source),
	}, false
}

// unresponsiveRule: consecutive retransmission timeouts, or keepalive
// probes the peer has not answered.
func unresponsiveRule(c *Conn, d NetDefaults, now time.Time, cfg VerdictConfig) *Verdict {
	n := c.Counters
	var what string
	var since time.Time
	switch {
	case int(n.Retransmits) >= cfg.UnresponsiveRTOs:
		since = c.RetransSince.Time()
		what = fmt.Sprintf("%d consecutive retransmission timeouts (RTO now %s, %d retransmits in all)", n.Retransmits, round(n.RTO), n.TotalRetrans)
	case n.ProbesOut > 0 && c.Settings.Keepalive && c.SendQueue == 0:
		since = c.LastKeepalive.Time()
		what = fmt.Sprintf("%d keepalive probe(s) unanswered", n.ProbesOut)
	default:
		return nil
	}
	if since.IsZero() {
		since = c.LastUpdate.Time()
	}
	v := &Verdict{Kind: VerdictUnresponsive, Since: since}
	at, how := GiveUp(c, d)
	if at.IsZero() {
		v.Detail = fmt.Sprintf("%s since %s; the kernel will never give up on it (%s)", what, rfc3339(since), how)
	} else {
		v.GiveUp = &at
		left := at.Sub(now)
		if left < 0 {
			left = 0
		}
		v.Detail = fmt.Sprintf("%s since %s; the kernel gives up around %s (in %s) under %s", what, rfc3339(since), rfc3339(at), round(left), how)
	}
	return v
}

// Kernel constants of the retransmission model (include/net/tcp.h).
const (
	tcpRTOMin = 200 * time.Millisecond
	tcpRTOMax = 120 * time.Second
)

// GiveUp estimates when the kernel aborts a connection whose peer does not
// answer, and says which setting decides. A zero time means never.
func GiveUp(c *Conn, d NetDefaults) (time.Time, string) {
	n := c.Counters
	ut := c.Settings.UserTimeout
	if n.Retransmits > 0 {
		start := c.RetransSince
		if start.IsZero() {
			start = c.LastUpdate
		}
		if ut > 0 {
			return start.Add(ut), fmt.Sprintf("TCP_USER_TIMEOUT=%s", ut)
		}
		return start.Add(retransTimeout(d.Retries2)), fmt.Sprintf("net.ipv4.tcp_retries2=%d", d.Retries2)
	}
	if n.ProbesOut > 0 && c.Settings.Keepalive && !c.LastKeepalive.IsZero() {
		ka := EffectiveKeepalive(c.Settings, d)
		intvl := time.Duration(ka.IntervalSeconds * float64(time.Second))
		if ut > 0 {
			// tcp_keepalive_timer aborts once nothing was received for the
			// user timeout and a probe is out.
			lastRecv := c.LastKeepalive.Add(-c.KeepaliveIdle)
			return lastRecv.Add(ut), fmt.Sprintf("TCP_USER_TIMEOUT=%s", ut)
		}
		// At each firing the timer gives up once the probes already out
		// reach the count, else sends one more and waits an interval.
		left := ka.Count - int(c.KeepaliveProbesOut)
		if left < 0 {
			left = 0
		}
		return c.LastKeepalive.Add(time.Duration(left) * intvl), fmt.Sprintf("keepalive count %d x interval %s (%s)", ka.Count, intvl, ka.Source)
	}
	return time.Time{}, "no retransmission pending and no keepalive probe out"
}

// retransTimeout mirrors tcp_model_timeout: the time from the first
// retransmission until the boundary-th times out, with exponential backoff
// from TCP_RTO_MIN capped at TCP_RTO_MAX.
func retransTimeout(boundary int) time.Duration {
	thresh := 0
	for r := tcpRTOMax / tcpRTOMin; r > 1; r >>= 1 {
		thresh++ // ilog2(TCP_RTO_MAX / TCP_RTO_MIN)
	}
	if boundary <= thresh {
		return time.Duration((2<<boundary)-1) * tcpRTOMin
	}
	return time.Duration((2<<thresh)-1)*tcpRTOMin + time.Duration(boundary-thresh)*tcpRTOMax
}

func holdersText(hs []Holder) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = fmt.Sprintf("%s (pid %d, fd %d)", h.Comm, h.PID, h.FD)
	}
	return strings.Join(parts, ", ")
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
