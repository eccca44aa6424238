package collector

import (
	"slices"
	"sort"
	"time"
)

// TopSortKeys are the orders Table.Top knows: "" (flagged connections
// first, the oldest verdict first, then the longest idle), "idle"
// (longest first), "age" (oldest first) and "retransmits" (most first).
var TopSortKeys = []string{"", "idle", "age", "retransmits"}

// TopOptions selects and orders what a live view shows of the table.
type TopOptions struct {
	// Match keeps the connections it returns true for; nil keeps all. It
	// runs under the table's read lock and must not keep the entry.
	Match func(*Conn) bool
	// Sort is one of TopSortKeys.
	Sort string
	// Limit is how many rows to return: the screen's, not the table's.
	Limit int
}

// Top is what a live view shows: counts over every live connection, and
// views of only the first Limit connections that match, in order.
type Top struct {
	Total     int            `json:"total"`
	ByState   map[string]int `json:"by_state"`
	Flagged   int            `json:"flagged"`
	ByVerdict map[string]int `json:"by_verdict"`
	Matched   int            `json:"matched"`
	Rows      []ConnView     `json:"rows"`
}

// Top counts the live connections by state and verdict and returns the
// first o.Limit of those o.Match keeps, ordered by o.Sort (ties by
// cookie). It renders views only of the rows it returns, so a view of a
// large table each second costs one pass over it.
func (t *Table) Top(now time.Time, o TopOptions) Top {
	t.mu.RLock()
	defer t.mu.RUnlock()
	top := Top{ByState: map[string]int{}, ByVerdict: map[string]int{}}
	less := topLess(o.Sort, now)
	best := make([]*Conn, 0, o.Limit+1)
	// Counted in an array, named once at the end: a map update per
	// connection was most of a pass at 100k.
	var byState [256]int
	for _, c := range t.conns {
		top.Total++
		byState[c.State]++
		if len(c.Verdicts) > 0 {
			top.Flagged++
			for _, v := range c.Verdicts {
				top.ByVerdict[v.Kind]++
			}
		}
		if o.Match != nil && !o.Match(c) {
			continue
		}
		top.Matched++
		if o.Limit <= 0 || (len(best) == o.Limit && !less(c, best[len(best)-1])) {
			continue
		}
		i := sort.Search(len(best), func(i int) bool { return less(c, best[i]) })
		best = slices.Insert(best, i, c)
		if len(best) > o.Limit {
			best = best[:o.Limit]
		}
	}
	for st, n := range byState {
		if n > 0 {
			top.ByState[State(st).String()] = n
		}
	}
	top.Rows = make([]ConnView, len(best))
	uids := make([]uint32, len(best))
	idles := make([]float64, len(best))
	for i, c := range best {
		top.Rows[i] = c.view(now, t.defaults[c.Netns], false, t.lastWalk, &uids[i], &idles[i])
	}
	return top
}

// topLess returns the order of sort key (see TopSortKeys) at now; ties go
// by cookie, so that rows keep their places between two views.
func topLess(key string, now time.Time) func(a, b *Conn) bool {
	idle := func(c *Conn) time.Duration {
		if d, ok := c.Idle(now); ok {
			return d
		}
		return -1
	}
	var cmp func(a, b *Conn) int
	switch key {
	case "idle":
		cmp = func(a, b *Conn) int { return compareDesc(idle(a), idle(b)) }
	case "age":
		cmp = func(a, b *Conn) int { return a.FirstSeen.Compare(b.FirstSeen) }
	case "retransmits":
		cmp = func(a, b *Conn) int { return compareDesc(a.Counters.TotalRetrans, b.Counters.TotalRetrans) }
	default:
		cmp = func(a, b *Conn) int {
			fa, fb := len(a.Verdicts) > 0, len(b.Verdicts) > 0
			switch {
			case fa != fb:
				if fa {
					return -1
				}
				return 1
			case fa:
				if c := oldestVerdict(a).Compare(oldestVerdict(b)); c != 0 {
					return c
				}
			}
			return compareDesc(idle(a), idle(b))
		}
	}
	return func(a, b *Conn) bool {
		if c := cmp(a, b); c != 0 {
			return c < 0
		}
		return a.Cookie < b.Cookie
	}
}

// compareDesc orders larger values first.
func compareDesc[T int64 | uint32 | time.Duration](a, b T) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// oldestVerdict is when the oldest of c's verdicts was raised.
func oldestVerdict(c *Conn) time.Time {
	var t time.Time
	for _, v := range c.Verdicts {
		if t.IsZero() || v.Since.Before(t) {
			t = v.Since
		}
	}
	return t
}

// Addrs returns the printed local and remote addresses.
func (c *Conn) Addrs() (local, remote string) { return c.tupleStrings() }
