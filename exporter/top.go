package exporter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
)

// DefaultTopLimit and MaxTopLimit bound the rows of a /v1/top answer.
const (
	DefaultTopLimit = 100
	MaxTopLimit     = 1000
)

// TopAnswer is the body of GET /v1/top: the table's counts, the rows a
// live view shows, and the agent's own state, so that `ghostconn top`
// asks once a second for one screen, not for the whole table.
type TopAnswer struct {
	collector.Top
	At     time.Time `json:"at"`
	Ready  bool      `json:"ready"`
	Reason string    `json:"not_ready_reason,omitempty"`
	// EventsRead counts ring records and deltas read; EventsLost every
	// loss the agent counts (the client makes rates of both).
	EventsRead uint64 `json:"events_read"`
	EventsLost uint64 `json:"events_lost"`
	// CPUSeconds is the agent's CPU time so far, user and system; RSSBytes
	// its resident memory.
	CPUSeconds float64 `json:"cpu_seconds"`
	RSSBytes   uint64  `json:"rss_bytes"`
}

// top answers GET /v1/top?FILTER&limit=N: FILTER as for /v1/connections
// without target, closed and history; sort "" puts flagged connections
// first (see collector.TopSortKeys).
func (a *API) top(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := parseLimit(q)
	if err != nil {
		badRequest(w, err)
		return
	}
	q.Del("limit")
	f, err := ParseFilter(q)
	if err != nil {
		badRequest(w, err)
		return
	}
	if f.Closed || f.History || f.Target != nil {
		badRequest(w, errors.New("top takes verdict, state, pid, comm, port, remote, search, sort and limit"))
		return
	}
	st, err := a.src.Status()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, Error{Error: err.Error()})
		return
	}
	now := a.now()
	match := f.MatchConn
	if f.Verdict == "" && f.State == 0 && f.PID == 0 && f.Comm == "" && f.Port == 0 && !f.Remote.IsValid() && f.Search == "" {
		match = nil // every connection: no call per entry
	}
	ans := TopAnswer{
		// The filter's query names what match keeps, so that a view of an
		// unchanged table reuses the last pass over it.
		Top:        a.src.Table().Top(now, collector.TopOptions{Match: match, Key: f.Values().Encode(), Sort: f.Sort, Limit: limit}),
		At:         now,
		Ready:      st.Ready,
		Reason:     st.NotReadyReason,
		EventsRead: st.EventsRead + st.DeltasRead,
	}
	for _, n := range st.EventsLost {
		ans.EventsLost += n
	}
	ans.CPUSeconds, ans.RSSBytes = selfUsage()
	writeJSON(w, http.StatusOK, ans)
}

// parseLimit reads limit: 1 to MaxTopLimit, DefaultTopLimit when absent.
func parseLimit(q url.Values) (int, error) {
	vals, ok := q["limit"]
	if !ok {
		return DefaultTopLimit, nil
	}
	if len(vals) != 1 {
		return 0, fmt.Errorf("parameter limit given %d times", len(vals))
	}
	n, err := strconv.Atoi(vals[0])
	if err != nil || n < 1 || n > MaxTopLimit {
		return 0, fmt.Errorf("limit %q: want a number of rows from 1 to %d", vals[0], MaxTopLimit)
	}
	return n, nil
}

// selfUsage returns this process's CPU time and resident memory; zeros
// when the kernel does not say.
func selfUsage() (cpuSeconds float64, rss uint64) {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		cpuSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	// statm: size resident shared ... in pages.
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if pages, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				rss = pages * uint64(os.Getpagesize())
			}
		}
	}
	return cpuSeconds, rss
}

// Top asks the agent for a live view's counts and the first limit rows
// that pass f (see TopAnswer).
func (c *Client) Top(ctx context.Context, f Filter, limit int) (TopAnswer, error) {
	q := f.Values()
	q.Set("limit", strconv.Itoa(limit))
	var out TopAnswer
	return out, c.get(ctx, "/v1/top", q, &out)
}
