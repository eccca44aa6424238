package collector

import (
	"maps"
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
	// Key names what Match keeps (for the API, the filter's query). Top
	// reuses its last pass over the table when nothing in the table
	// changed since and Key, Sort and Limit are the same; with Match set
	// and Key empty it never does. A Match that depends on anything
	// besides the connection must leave Key empty.
	Key string
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
// cookie). It renders views only of the rows it returns. The counts, the
// connections kept and their order change only when the table does (no
// order depends on the time of the view: idle orders by the time of the
// last data), so while nothing changed a view reuses the last pass and
// renders its rows again: one pass over 100k connections costs 35 ms, most
// of it a cache miss per connection.
func (t *Table) Top(now time.Time, o TopOptions) Top {
	t.mu.RLock()
	defer t.mu.RUnlock()
	pass := t.topPassFor(o)
	top := Top{Total: pass.total, ByState: map[string]int{}, Flagged: pass.flagged,
		ByVerdict: maps.Clone(pass.byVerdict), Matched: pass.matched}
	for st, n := range pass.byState {
		if n > 0 {
			top.ByState[State(st).String()] = n
		}
	}
	top.Rows = make([]ConnView, 0, len(pass.best))
	uids := make([]uint32, len(pass.best))
	idles := make([]float64, len(pass.best))
	for i, cookie := range pass.best {
		// Live: a retired connection would have moved t.changes.
		if c := t.conns[cookie]; c != nil {
			top.Rows = append(top.Rows, c.view(now, t.defaults[c.Netns], false, t.lastWalk, &uids[i], &idles[i]))
		}
	}
	return top
}

// topPassFor returns the pass over the table for o: the last one made for
// the same key, sort and limit if the table has not changed since, else a
// new one. Call it with t.mu held for reading.
func (t *Table) topPassFor(o TopOptions) topPass {
	if o.Match != nil && o.Key == "" {
		return t.topScan(o) // nothing to reuse it by
	}
	k := topKey{key: o.Key, sort: o.Sort, limit: o.Limit}
	t.topMu.Lock()
	defer t.topMu.Unlock()
	if t.topChanges != t.changes || len(t.topPasses) >= maxTopPasses {
		clear(t.topPasses)
		t.topChanges = t.changes
	}
	if p, ok := t.topPasses[k]; ok {
		return p
	}
	p := t.topScan(o)
	if t.topPasses == nil {
		t.topPasses = map[topKey]topPass{}
	}
	t.topPasses[k] = p
	return p
}

// maxTopPasses bounds the passes kept: one per live view open with a
// different filter, sort or size.
const maxTopPasses = 16

// topKey names the views a pass serves.
type topKey struct {
	key, sort string
	limit     int
}

// topPass is one pass of Top over the table, kept for the next view while
// the table does not change.
type topPass struct {
	total     int
	byState   [256]int // counted in an array: a map update per connection was most of a pass
	flagged   int
	byVerdict map[string]int
	matched   int
	// best are the rows' cookies, not pointers: a pass kept after its
	// last view must not pin retired connections.
	best []uint64
}

// topScan makes one pass over the live connections for o. Call it with
// t.mu held.
func (t *Table) topScan(o TopOptions) topPass {
	p := topPass{byVerdict: map[string]int{}}
	less := topLess(o.Sort)
	best := make([]*Conn, 0, o.Limit+1)
	for _, c := range t.conns {
		p.total++
		p.byState[c.State]++
		if len(c.Verdicts) > 0 {
			p.flagged++
			for _, v := range c.Verdicts {
				p.byVerdict[v.Kind]++
			}
		}
		if o.Match != nil && !o.Match(c) {
			continue
		}
		p.matched++
		if o.Limit <= 0 || (len(best) == o.Limit && !less(c, best[len(best)-1])) {
			continue
		}
		i := sort.Search(len(best), func(i int) bool { return less(c, best[i]) })
		best = slices.Insert(best, i, c)
		if len(best) > o.Limit {
			best = best[:o.Limit]
		}
	}
	p.best = make([]uint64, len(best))
	for i, c := range best {
		p.best[i] = c.Cookie
	}
	return p
}

// topLess returns the order of sort key (see TopSortKeys); ties go by
// cookie, so that rows keep their places between two views. No order
// depends on the time it is taken at.
func topLess(key string) func(a, b *Conn) bool {
	var cmp func(a, b *Conn) int
	switch key {
	case "idle":
		cmp = compareIdle
	case "age":
		cmp = func(a, b *Conn) int { return compareStamp(a.FirstSeen, b.FirstSeen) }
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
			return compareIdle(a, b)
		}
	}
	return func(a, b *Conn) bool {
		if c := cmp(a, b); c != 0 {
			return c < 0
		}
		return a.Cookie < b.Cookie
	}
}

// compareIdle puts the longest idle first: the connections Idle measures
// (ESTABLISHED, CLOSE_WAIT), the earliest last data first, then the rest.
func compareIdle(a, b *Conn) int {
	la, oka := a.idleFrom()
	lb, okb := b.idleFrom()
	switch {
	case oka != okb:
		if oka {
			return -1
		}
		return 1
	case !oka:
		return 0
	}
	return la.Compare(lb)
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
