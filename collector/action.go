package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// Action is one thing ghostconn did to a connection at a user's request:
// the audit record that goes into the agent's log, the connection's
// history and the watch stream.
type Action struct {
	Op        string   `json:"op"` // ModeAbort or ModeGraceful
	Mechanism string   `json:"mechanism,omitempty"`
	UID       uint32   `json:"uid"`
	PID       uint32   `json:"pid"`
	Verdicts  []string `json:"verdicts,omitempty"`
	Done      bool     `json:"done"`
	Error     string   `json:"error,omitempty"`
}

// Caller is who asked for an action: the peer credentials of the API
// socket's client.
type Caller struct {
	UID, PID uint32
}

// KillRequest asks the agent to act on the connections with these
// cookies, exactly those the CLI showed the user.
type KillRequest struct {
	Cookies     []uint64 `json:"cookies"`
	Graceful    bool     `json:"graceful"`
	AllowListen bool     `json:"allow_listen"`
}

// ErrReadOnly is the answer of an agent started with --read-only to any
// action.
var ErrReadOnly = errors.New("the agent runs with --read-only: it observes and never acts on connections")

// actionCounts counts actions by verdict and mode, for metrics.
type actionCounts struct {
	mu sync.Mutex
	// killed counts verified actions by "verdict\x00mode"; "none"
	// stands for a connection without verdicts.
	killed map[string]uint64
}

func (a *actionCounts) add(verdicts []string, mode string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killed == nil {
		a.killed = map[string]uint64{}
	}
	if len(verdicts) == 0 {
		verdicts = []string{"none"}
	}
	for _, v := range verdicts {
		a.killed[v+"\x00"+mode]++
	}
}

// ActionCount is one row of ghostconn_sockets_killed_total.
type ActionCount struct {
	Verdict string `json:"verdict"`
	Mode    string `json:"mode"`
	Count   uint64 `json:"count"`
}

func (a *actionCounts) snapshot() []ActionCount {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ActionCount, 0, len(a.killed))
	for k, n := range a.killed {
		v, m, _ := strings.Cut(k, "\x00")
		out = append(out, ActionCount{Verdict: v, Mode: m, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Verdict != out[j].Verdict {
			return out[i].Verdict < out[j].Verdict
		}
		return out[i].Mode < out[j].Mode
	})
	return out
}

// Kill acts on the live connections with the request's cookies, as the
// table knows them now: a cookie the table no longer has, or whose
// connection closed, is reported and left alone. Each action is logged
// with the caller, recorded in the connection's history and sent to watch
// clients; verified kills are counted by verdict and mode.
func (c *Collector) Kill(req KillRequest, by Caller) ([]ActionResult, error) {
	return c.runAction(req.Cookies, modeOf(req.Graceful), by, nil, func(views []ConnView) []ActionResult {
		return c.actor.Kill(views, req.Graceful, req.AllowListen)
	})
}

// KeepaliveRequest asks the agent to arm TCP keepalive on the connections
// with these cookies: the idle time, interval and count are required, the
// user timeout (TCP_USER_TIMEOUT) optional.
type KeepaliveRequest struct {
	Cookies         []uint64 `json:"cookies"`
	IdleSeconds     int32    `json:"idle_seconds"`
	IntervalSeconds int32    `json:"interval_seconds"`
	Count           int32    `json:"count"`
	UserTimeoutMs   int32    `json:"user_timeout_ms"`
}

// Check reports what is wrong with the request's values, as the kernel's
// limits have it (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
func (r KeepaliveRequest) Check() error {
	switch {
	case r.IdleSeconds < 1 || r.IdleSeconds > 32767:
		return fmt.Errorf("keepalive idle time %ds: want 1s to 32767s", r.IdleSeconds)
	case r.IntervalSeconds < 1 || r.IntervalSeconds > 32767:
		return fmt.Errorf("keepalive interval %ds: want 1s to 32767s", r.IntervalSeconds)
	case r.Count < 1 || r.Count > 127:
		return fmt.Errorf("keepalive count %d: want 1 to 127", r.Count)
	case r.UserTimeoutMs < 0:
		return fmt.Errorf("user timeout %dms must not be negative", r.UserTimeoutMs)
	}
	return nil
}

// Options returns the request's values as the kernel takes them.
func (r KeepaliveRequest) Options() bpf.KeepaliveOptions {
	return bpf.KeepaliveOptions{IdleSeconds: r.IdleSeconds, IntervalSeconds: r.IntervalSeconds, Count: r.Count, UserTimeoutMs: r.UserTimeoutMs}
}

// Settings returns the socket settings the request gives a connection.
func (r KeepaliveRequest) Settings() SockSettings {
	return SockSettings{Keepalive: true, KeepIdle: time.Duration(r.IdleSeconds) * time.Second,
		KeepInterval: time.Duration(r.IntervalSeconds) * time.Second, KeepCount: int(r.Count),
		UserTimeout: time.Duration(r.UserTimeoutMs) * time.Millisecond, HaveKeepalive: true}
}

// Keepalive arms keepalive on the live connections with the request's
// cookies, as Kill acts on them: logged, in the history and watch, counted
// by verdict once verified. A connection armed shows the new values, with
// "ghostconn" as their source.
func (c *Collector) Keepalive(req KeepaliveRequest, by Caller) ([]ActionResult, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	set := req.Settings()
	return c.runAction(req.Cookies, ModeKeepalive, by, &set, func(views []ConnView) []ActionResult {
		return c.actor.Keepalive(views, req.Options())
	})
}

// runAction acts with do on the live connections with these cookies and
// audits each result. settings, when set, are what a done action gave the
// connection.
func (c *Collector) runAction(cookies []uint64, mode string, by Caller, settings *SockSettings, do func([]ConnView) []ActionResult) ([]ActionResult, error) {
	if c.cfg.ReadOnly {
		return nil, ErrReadOnly
	}
	want := make(map[uint64]bool, len(cookies))
	for _, ck := range cookies {
		want[ck] = true
	}
	start := time.Now()
	views := c.table.List(start, ListOptions{Match: func(v *ConnView) bool { return want[v.Cookie] }})
	found := make(map[uint64]bool, len(views))
	for _, v := range views {
		found[v.Cookie] = true
	}
	results := do(views)
	for _, ck := range cookies {
		if !found[ck] {
			results = append(results, ActionResult{Cookie: ck, Mode: mode, After: "gone", Gone: true,
				Error: "no live connection with this cookie: closed since it was listed, nothing to do"})
		}
	}
	evs := make([]Event, 0, len(results))
	for i := range results {
		r := &results[i]
		act := &Action{Op: r.Mode, Mechanism: r.Mechanism, UID: by.UID, PID: by.PID, Verdicts: r.Verdicts, Done: r.Done, Error: r.Error}
		level := slog.LevelInfo
		if !r.Done {
			level = slog.LevelWarn
		}
		c.cfg.Logger.Log(context.Background(), level, "action", "op", r.Mode, "cookie", r.Cookie, "local", r.Local, "remote", r.Remote,
			"netns", r.Netns, "state", r.State.String(), "verdicts", strings.Join(r.Verdicts, ","), "mechanism", r.Mechanism,
			"caller_uid", by.UID, "caller_pid", by.PID, "done", r.Done, "after", r.After, "err", r.Error)
		if r.Done {
			c.actions.add(r.Verdicts, r.Mode)
		}
		if found[r.Cookie] {
			ev := Event{Kind: KindAction, Time: start, Cookie: r.Cookie, State: r.State, Action: act}
			if settings != nil && r.Done {
				ev.Settings = *settings
			}
			evs = append(evs, ev)
		}
	}
	c.table.Apply(evs)
	return results, nil
}

func modeOf(graceful bool) string {
	if graceful {
		return ModeGraceful
	}
	return ModeAbort
}

// applyAction records what ghostconn did to c in its history and tells
// watch clients.
func (t *Table) applyAction(ev *Event, c *Conn) {
	if c == nil {
		// The kill closed it and its end record came first: the entry
		// goes into the closed connection's history.
		c = t.closedIx[ev.Cookie]
	}
	if c == nil {
		t.stats.Unknown++
		return
	}
	tr := Transition{At: ev.Time, From: ev.State, To: ev.State, Source: "ghostconn " + ev.Action.Op, Action: ev.Action}
	c.addTransition(tr)
	// In time order: the action began before the changes it caused.
	for i := len(c.History) - 1; i > 0 && c.History[i-1].At.After(tr.At); i-- {
		c.History[i], c.History[i-1] = c.History[i-1], c.History[i]
	}
	if c.ClosedAt.IsZero() {
		if ev.Action.Op == ModeKeepalive && ev.Action.Done {
			// The socket has these now (checked): the verdicts see
			// them at once, and the view names ghostconn as their
			// source until the application sets its own.
			c.Settings = ev.Settings
			c.ArmedByGhostconn = true
		}
		t.markDirty(c)
	}
	t.publish(c, Change{Time: ev.Time, Type: "action", State: ev.State, Source: "ghostconn " + ev.Action.Op, Action: ev.Action})
}
