package exporter

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ghostconn/ghostconn/collector"
)

// Filter selects connections. The CLI builds it from flags and sends it as
// query parameters; the API parses it back and applies it. Every field is
// optional.
type Filter struct {
	Verdict string          // a verdict kind
	State   collector.State // 0 means any
	PID     uint32          // a holder's or the opener's pid
	Comm    string          // a holder's or the opener's process name
	Port    uint16          // either end's port
	Remote  netip.Prefix    // the remote address is in this prefix
	Target  *Target         // `who`: one connection by address, inode or cookie
	Sort    string          // "", "idle", "age" or "retransmits"
	Closed  bool            // include recently closed connections
	History bool            // include each connection's transitions
}

// SortKeys lists the accepted sort orders.
var SortKeys = []string{"idle", "age", "retransmits"}

// filterParams are the query parameters ParseFilter knows, in the order it
// checks them.
var filterParams = []string{"verdict", "state", "pid", "comm", "port", "remote", "target", "sort", "closed", "history"}

// ParseFilter reads a Filter from query parameters. Unknown parameters and
// bad values are errors that say what is wrong.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for name := range q {
		if !slices.Contains(filterParams, name) {
			return f, fmt.Errorf("unknown parameter %q (known: %s)", name, strings.Join(filterParams, ", "))
		}
	}
	// In a fixed order, so that with several bad values the answer names
	// the same one every time.
	for _, name := range filterParams {
		vals, ok := q[name]
		if !ok {
			continue
		}
		if len(vals) != 1 {
			return f, fmt.Errorf("parameter %s given %d times", name, len(vals))
		}
		v := vals[0]
		var err error
		switch name {
		case "verdict":
			f.Verdict, err = collector.ParseVerdict(v)
		case "state":
			f.State, err = collector.ParseState(v)
		case "pid":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				err = fmt.Errorf("pid %q is not a process id", v)
			}
			f.PID = uint32(n)
		case "comm":
			if v == "" || len(v) > 15 {
				err = fmt.Errorf("comm %q: want a process name of 1 to 15 characters", v)
			}
			f.Comm = v
		case "port":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				err = fmt.Errorf("port %q is not a port number (1-65535)", v)
			}
			f.Port = uint16(n)
		case "remote":
			if f.Remote, err = ParseCIDR(v); err != nil {
				err = fmt.Errorf("remote %w", err)
			}
		case "target":
			var t Target
			t, err = ParseTarget(v)
			f.Target = &t
		case "sort":
			f.Sort, err = parseSort(v)
		case "closed":
			f.Closed, err = parseBool(name, v)
		case "history":
			f.History, err = parseBool(name, v)
		}
		if err != nil {
			return Filter{}, err
		}
	}
	return f, nil
}

func parseBool(name, v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("parameter %s=%q is not a boolean (use true or false)", name, v)
	}
	return b, nil
}

func parseSort(v string) (string, error) {
	for _, k := range SortKeys {
		if v == k {
			return v, nil
		}
	}
	return "", fmt.Errorf("unknown sort %q (want one of %s)", v, strings.Join(SortKeys, ", "))
}

// ParseCIDR accepts a prefix ("10.0.0.0/8", "fd00::/8") or a bare address,
// which means that address alone.
func ParseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix or an IP address (for example 10.0.0.0/8 or ::1)", s)
}

// Values encodes f as query parameters.
func (f Filter) Values() url.Values {
	q := url.Values{}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	if f.State != 0 {
		q.Set("state", f.State.String())
	}
	if f.PID != 0 {
		q.Set("pid", strconv.FormatUint(uint64(f.PID), 10))
	}
	if f.Comm != "" {
		q.Set("comm", f.Comm)
	}
	if f.Port != 0 {
		q.Set("port", strconv.Itoa(int(f.Port)))
	}
	if f.Remote.IsValid() {
		q.Set("remote", f.Remote.String())
	}
	if f.Target != nil {
		q.Set("target", f.Target.Raw)
	}
	if f.Sort != "" {
		q.Set("sort", f.Sort)
	}
	if f.Closed {
		q.Set("closed", "true")
	}
	if f.History {
		q.Set("history", "true")
	}
	return q
}

// Match reports whether v passes every condition of f.
func (f Filter) Match(v *collector.ConnView) bool {
	if f.Verdict != "" && !hasVerdict(v, f.Verdict) {
		return false
	}
	if f.State != 0 && v.State != f.State {
		return false
	}
	if f.PID != 0 && !involves(v, func(pid uint32, _ string) bool { return pid == f.PID }) {
		return false
	}
	if f.Comm != "" && !involves(v, func(_ uint32, comm string) bool { return comm == f.Comm }) {
		return false
	}
	if f.Port != 0 || f.Remote.IsValid() {
		l, lerr := netip.ParseAddrPort(v.Local)
		r, rerr := netip.ParseAddrPort(v.Remote)
		if lerr != nil || rerr != nil {
			return false
		}
		if f.Port != 0 && l.Port() != f.Port && r.Port() != f.Port {
			return false
		}
		if f.Remote.IsValid() && !f.Remote.Contains(r.Addr().Unmap()) && !f.Remote.Contains(r.Addr()) {
			return false
		}
	}
	if f.Target != nil && !f.Target.Match(v) {
		return false
	}
	return true
}

func hasVerdict(v *collector.ConnView, kind string) bool {
	for _, x := range v.Verdicts {
		if x.Kind == kind {
			return true
		}
	}
	return false
}

// involves reports whether a holder or the opener satisfies match.
func involves(v *collector.ConnView, match func(pid uint32, comm string) bool) bool {
	for _, h := range v.Holders {
		if match(h.PID, h.Comm) {
			return true
		}
	}
	if v.Opener != nil && match(v.Opener.PID, v.Opener.Comm) {
		return true
	}
	return v.ClosedBy != nil && match(v.ClosedBy.PID, v.ClosedBy.Comm)
}

// Sort orders connections in place: idle and age longest first,
// retransmits most first; ties by cookie.
func Sort(conns []collector.ConnView, key string) {
	less := func(a, b *collector.ConnView) bool { return a.Cookie < b.Cookie }
	var metric func(v *collector.ConnView) float64
	switch key {
	case "idle":
		metric = func(v *collector.ConnView) float64 {
			if v.IdleSeconds == nil {
				return -1
			}
			return *v.IdleSeconds
		}
	case "age":
		metric = func(v *collector.ConnView) float64 { return -float64(v.FirstSeen.UnixNano()) }
	case "retransmits":
		metric = func(v *collector.ConnView) float64 { return float64(v.Retransmits) }
	default:
		return // Table.List already orders by cookie
	}
	sort.SliceStable(conns, func(i, j int) bool {
		mi, mj := metric(&conns[i]), metric(&conns[j])
		if mi != mj {
			return mi > mj
		}
		return less(&conns[i], &conns[j])
	})
}

// Target names one connection for `ghostconn who`: an ip:port of either
// end, a socket inode, or a socket cookie.
type Target struct {
	Raw  string
	Addr netip.AddrPort // valid for an address target
	N    uint64         // inode or cookie for a number target
}

// ParseTarget parses TARGET.
func ParseTarget(s string) (Target, error) {
	t := Target{Raw: s}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		t.Addr = ap
		return t, nil
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSuffix(strings.TrimPrefix(s, "socket:["), "]"), "sk:"), 10, 64); err == nil && n > 0 {
		t.N = n
		return t, nil
	}
	return Target{}, fmt.Errorf("target %q is not an ip:port (127.0.0.1:80, [::1]:80), a socket inode or a socket cookie", s)
}

// Match reports whether v is the target connection (either end's address,
// or the inode or cookie).
func (t Target) Match(v *collector.ConnView) bool {
	if t.Addr.IsValid() {
		a := t.Addr.String()
		return v.Local == a || v.Remote == a
	}
	return v.Inode == t.N || v.Cookie == t.N
}
