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
	Search  string          // a substring of an address, a process's name or pid, a pod or container id
	Sort    string          // "", "idle", "age" or "retransmits"
	Closed  bool            // include recently closed connections
	History bool            // include each connection's transitions
}

// SortKeys lists the accepted sort orders.
var SortKeys = []string{"idle", "age", "retransmits"}

// filterParams are the query parameters ParseFilter knows, in the order it
// checks them.
var filterParams = []string{"verdict", "state", "pid", "comm", "port", "remote", "target", "search", "sort", "closed", "history"}

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
		case "search":
			if v == "" || len(v) > 128 {
				err = fmt.Errorf("search %q: want 1 to 128 characters", v)
			}
			f.Search = strings.ToLower(v)
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
	if f.Search != "" {
		q.Set("search", f.Search)
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

// subject is what the conditions of a Filter read, from a view or from a
// table entry.
type subject struct {
	state               collector.State
	verdicts            []collector.Verdict
	holders             []collector.Holder
	opener              *collector.Task
	closedBy            *collector.CloseRecord
	local, remote       netip.AddrPort
	addrsOK             bool
	localStr, remoteStr string
	cookie, inode       uint64
}

// Match reports whether v passes every condition of f.
func (f Filter) Match(v *collector.ConnView) bool {
	s := subject{state: v.State, verdicts: v.Verdicts, holders: v.Holders, opener: v.Opener, closedBy: v.ClosedBy,
		localStr: v.Local, remoteStr: v.Remote, cookie: v.Cookie, inode: v.Inode}
	if f.Port != 0 || f.Remote.IsValid() {
		l, lerr := netip.ParseAddrPort(v.Local)
		r, rerr := netip.ParseAddrPort(v.Remote)
		s.local, s.remote, s.addrsOK = l, r, lerr == nil && rerr == nil
	}
	return f.match(&s)
}

// MatchConn reports whether the table entry c passes every condition of
// f, without rendering its view (see collector.TopOptions).
func (f Filter) MatchConn(c *collector.Conn) bool {
	s := subject{state: c.State, verdicts: c.Verdicts, holders: c.Holders, opener: c.Opener, closedBy: c.ClosedBy,
		local: c.Local, remote: c.Remote, addrsOK: true, cookie: c.Cookie, inode: c.Inode}
	if f.Search != "" || f.Target != nil {
		s.localStr, s.remoteStr = c.Addrs()
	}
	return f.match(&s)
}

func (f Filter) match(s *subject) bool {
	if f.Verdict != "" && !slices.ContainsFunc(s.verdicts, func(x collector.Verdict) bool { return x.Kind == f.Verdict }) {
		return false
	}
	if f.State != 0 && s.state != f.State {
		return false
	}
	if f.PID != 0 && !s.involves(func(pid uint32, _ string) bool { return pid == f.PID }) {
		return false
	}
	if f.Comm != "" && !s.involves(func(_ uint32, comm string) bool { return comm == f.Comm }) {
		return false
	}
	if f.Port != 0 || f.Remote.IsValid() {
		if !s.addrsOK {
			return false
		}
		if f.Port != 0 && s.local.Port() != f.Port && s.remote.Port() != f.Port {
			return false
		}
		if f.Remote.IsValid() && !f.Remote.Contains(s.remote.Addr().Unmap()) && !f.Remote.Contains(s.remote.Addr()) {
			return false
		}
	}
	if f.Target != nil && !f.Target.match(s) {
		return false
	}
	if f.Search != "" && !s.search(f.Search) {
		return false
	}
	return true
}

// involves reports whether a holder, the opener or the closer satisfies
// match.
func (s *subject) involves(match func(pid uint32, comm string) bool) bool {
	for _, h := range s.holders {
		if match(h.PID, h.Comm) {
			return true
		}
	}
	if s.opener != nil && match(s.opener.PID, s.opener.Comm) {
		return true
	}
	return s.closedBy != nil && match(s.closedBy.PID, s.closedBy.Comm)
}

// search reports whether needle (lower case) is part of either address,
// of a holder's, the opener's or the closer's name or pid, or of a
// holder's pod UID or container id.
func (s *subject) search(needle string) bool {
	if strings.Contains(s.localStr, needle) || strings.Contains(s.remoteStr, needle) {
		return true
	}
	if s.involves(func(pid uint32, comm string) bool {
		return strings.Contains(strings.ToLower(comm), needle) || strings.Contains(strconv.FormatUint(uint64(pid), 10), needle)
	}) {
		return true
	}
	for _, h := range s.holders {
		if h.Cgroup != nil && (strings.Contains(h.Cgroup.PodUID, needle) || strings.Contains(h.Cgroup.ContainerID, needle)) {
			return true
		}
	}
	return false
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
	return t.match(&subject{localStr: v.Local, remoteStr: v.Remote, cookie: v.Cookie, inode: v.Inode})
}

func (t Target) match(s *subject) bool {
	if t.Addr.IsValid() {
		a := t.Addr.String()
		return s.localStr == a || s.remoteStr == a
	}
	return s.inode == t.N || s.cookie == t.N
}
