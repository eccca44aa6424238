package collector

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Change is one entry of the watch stream: a state change or a verdict
// raised or cleared.
type Change struct {
	Time   time.Time `json:"time"`
	Type   string    `json:"type"` // "state", "verdict", "cleared", "action" or "lost"
	Cookie uint64    `json:"cookie,omitempty"`
	Family string    `json:"family,omitempty"`
	Local  string    `json:"local,omitempty"`
	Remote string    `json:"remote,omitempty"`
	From   State     `json:"from,omitempty"`
	State  State     `json:"state,omitempty"`
	// Source is "kernel", "snapshot" or "reconcile" for state changes.
	Source  string   `json:"source,omitempty"`
	Task    *Task    `json:"task,omitempty"`
	Holders []Holder `json:"holders,omitempty"`
	Verdict *Verdict `json:"verdict,omitempty"`
	// Action is what ghostconn did, on an "action" change.
	Action *Action `json:"action,omitempty"`
	// Lost counts changes this watcher missed because it read too slowly.
	Lost uint64 `json:"lost,omitempty"`
}

// View renders the change as a connection view, for filters.
func (ch *Change) View() ConnView {
	v := ConnView{Cookie: ch.Cookie, Family: ch.Family, State: ch.State, Local: ch.Local, Remote: ch.Remote, Holders: ch.Holders, Opener: ch.Task}
	if ch.Verdict != nil {
		v.Verdicts = []Verdict{*ch.Verdict}
	}
	return v
}

// Subscription receives changes until Cancel.
type Subscription struct {
	C    <-chan Change
	ch   chan Change
	lost atomic.Uint64
	t    *Table
}

// Lost returns how many changes were dropped because the subscriber did not
// keep up, and resets the count.
func (s *Subscription) Lost() uint64 { return s.lost.Swap(0) }

// Cancel stops the subscription. The last one to go tells the watch hook
// that nobody watches any more.
func (s *Subscription) Cancel() {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	if _, ok := s.t.subs[s]; !ok {
		return
	}
	delete(s.t.subs, s)
	if len(s.t.subs) == 0 && s.t.watchHook != nil {
		// A failure leaves the kernel streaming every transition: more
		// records, nothing missed. The hook counts it.
		_ = s.t.watchHook(false)
	}
}

// Subscribe returns a subscription with a buffer of size changes; a
// subscriber that falls further behind loses changes, counted by Lost. The
// first subscriber asks the watch hook for every state change; if it
// cannot have them, Subscribe fails.
func (t *Table) Subscribe(size int) (*Subscription, error) {
	s := &Subscription{ch: make(chan Change, size), t: t}
	s.C = s.ch
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.subs) == 0 && t.watchHook != nil {
		if err := t.watchHook(true); err != nil {
			return nil, fmt.Errorf("ask the kernel for every state change: %w", err)
		}
	}
	t.subs[s] = struct{}{}
	return s, nil
}

// SetWatchHook sets the function told, under the table's lock, when the
// first watcher arrives (true) and when the last one leaves (false). The
// collector uses it to have the kernel stream the transitions it otherwise
// folds.
func (t *Table) SetWatchHook(fn func(watching bool) error) {
	t.mu.Lock()
	t.watchHook = fn
	t.mu.Unlock()
}

// publish sends a change to every subscriber without blocking. It is called
// with t.mu held; with no subscribers it costs a map length check.
func (t *Table) publish(c *Conn, ch Change) {
	if len(t.subs) == 0 {
		return
	}
	ch.Cookie, ch.Family = c.Cookie, c.Family.String()
	ch.Local, ch.Remote = c.tupleStrings()
	if ch.State == 0 {
		ch.State = c.State
	}
	ch.Holders = c.Holders // replaced, never changed in place
	if ch.Task == nil {
		ch.Task = c.Opener
	}
	for s := range t.subs {
		select {
		case s.ch <- ch:
		default:
			s.lost.Add(1)
		}
	}
}
