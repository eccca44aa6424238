package collector

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/bpf"
)

// Kill modes and the mechanisms that carry them out.
const (
	ModeAbort    = "abort"    // RST to the peer, ECONNABORTED to the holder
	ModeGraceful = "graceful" // the FIN the application meant to send

	MechSockDestroy = "bpf_sock_destroy"
	MechSockDiag    = "sock_diag"
	MechShutdown    = "shutdown"

	ModeKeepalive  = "keepalive" // keepalive (and a give-up time) armed
	MechSetsockopt = "bpf_setsockopt"
	// MechHolderSetsockopt: setsockopt on a copy of a holder's fd, where
	// the kernel has no bpf_setsockopt in iter/tcp (before 5.15).
	MechHolderSetsockopt = "setsockopt"
)

// KillableStates are the states kill acts on; LISTEN only when asked for by
// name, TIME_WAIT and closed sockets never.
var KillableStates = map[State]bool{
	StateEstablished: true, StateSynSent: true, StateSynRecv: true, StateCloseWait: true,
	StateFinWait1: true, StateFinWait2: true, StateLastAck: true, StateClosing: true,
}

// Killable reports whether kill may act on a socket in state s.
func Killable(s State, allowListen bool) bool {
	return KillableStates[s] || (allowListen && s == StateListen)
}

// ActionResult is what kill did to one connection, as verified afterwards.
type ActionResult struct {
	Cookie   uint64   `json:"cookie"`
	Family   string   `json:"family"`
	Local    string   `json:"local"`
	Remote   string   `json:"remote"`
	Netns    uint32   `json:"netns"`
	State    State    `json:"state"`
	Verdicts []string `json:"verdicts"`
	// Holders are the processes that still have an fd of the socket: a
	// kill does not close it, so the application still has to.
	Holders   []Holder `json:"holders"`
	Mode      string   `json:"mode"`
	Mechanism string   `json:"mechanism,omitempty"`
	// Done is true only when the check after acting saw the effect: the
	// socket gone (abort), or past its FIN (graceful).
	Done bool `json:"done"`
	// Gone is true when the socket had closed before kill came to act on
	// it (the other end of a connection kill also aborted, often): there
	// was nothing to do, and that is not a failure.
	Gone bool `json:"gone"`
	// After is the socket's state at that check, or "gone".
	After string `json:"after,omitempty"`
	Error string `json:"error,omitempty"`

	// diagGone is set when sock_diag did not find the socket.
	diagGone bool
}

// Actor aborts or shuts down sockets by cookie, in each socket's own
// network namespace, and checks each one afterwards. The agent and the
// CLI (without an agent) share it.
type Actor struct {
	Probes *bpf.Probes
	// Namespaces maps a namespace inode to a path that opens it ("" for
	// the caller's own); nil means Namespaces().
	Namespaces func() (map[uint32]string, error)
	// NoSockDestroy and NoSockDiag turn a mechanism off (tests, and
	// --kill-via).
	NoSockDestroy, NoSockDiag bool
	// HZ converts the socket's keepalive times (jiffies) for the check
	// after Keepalive; Keep is what Keepalive was asked to set.
	HZ   int
	Keep *bpf.KeepaliveOptions
}

// keepaliveDiff compares a socket's options with k.Keep, naming what
// differs.
func (k *Actor) keepaliveDiff(p bpf.GhostconnTcpPart) string {
	var diffs []string
	o := k.Keep
	if p.Keepalive == 0 {
		diffs = append(diffs, "SO_KEEPALIVE is off")
	}
	hz := uint32(max(k.HZ, 1))
	for _, f := range []struct {
		name      string
		want, got uint32
	}{
		{"TCP_KEEPIDLE", uint32(o.IdleSeconds) * hz, p.KaTime},
		{"TCP_KEEPINTVL", uint32(o.IntervalSeconds) * hz, p.KaIntvl},
		{"TCP_KEEPCNT", uint32(o.Count), p.KaProbes},
		{"TCP_USER_TIMEOUT", uint32(o.UserTimeoutMs), p.UserTimeoutMs},
	} {
		if f.want != 0 && f.want != f.got {
			diffs = append(diffs, fmt.Sprintf("%s is %d, not %d", f.name, f.got, f.want))
		}
	}
	return strings.Join(diffs, ", ")
}

// Kill acts on each connection in views: abort, or with graceful a
// shutdown through a holder's fd. It never acts on a socket in a state
// Killable refuses, and never on another socket than the one with the
// view's cookie (where ids are not cookies: the connection at the view's
// two addresses, never a listener).
func (k *Actor) Kill(views []ConnView, graceful, allowListen bool) []ActionResult {
	mode := ModeAbort
	if graceful {
		mode = ModeGraceful
	}
	return k.act(views, mode, allowListen, func(path string, out []ActionResult, idx []int) {
		if graceful {
			for _, i := range idx {
				k.shutdown(&views[i], &out[i])
			}
		} else {
			k.abort(path, views, out, idx)
		}
	})
}

// Keepalive arms TCP keepalive with o (and TCP_USER_TIMEOUT when o sets
// it) on each connection in views, and checks afterwards that the socket
// has the new values.
func (k *Actor) Keepalive(views []ConnView, o bpf.KeepaliveOptions) []ActionResult {
	ka := *k
	ka.Keep = &o
	k = &ka
	return k.act(views, ModeKeepalive, false, func(path string, out []ActionResult, idx []int) {
		if k.Probes == nil {
			for _, i := range idx {
				out[i].Error = "no iterator to set options with"
			}
			return
		}
		if !bpf.HasFeature(bpf.FeatureIterSockopt) {
			for _, i := range idx {
				k.keepaliveVia(&views[i], &out[i], o)
			}
			return
		}
		cookies := make([]uint64, len(idx))
		for j, i := range idx {
			cookies[j] = views[i].Cookie
		}
		res, err := k.Probes.SetKeepalive(path, cookies, o)
		for _, i := range idx {
			out[i].Mechanism = MechSetsockopt
			r := res[views[i].Cookie]
			switch {
			case err != nil:
				out[i].Error = err.Error()
			case !r.Seen:
				out[i].Gone = true
				out[i].Error = "already closed when keepalive came to it: nothing to do"
			case !r.Full:
				out[i].Error = fmt.Sprintf("a %s request or TIME_WAIT socket has no options to set", State(r.State))
			case r.Err != nil:
				out[i].Error = fmt.Sprintf("bpf_setsockopt %v", r.Err)
			}
		}
	})
}

// act runs do for the connections of views whose state mode may act on,
// grouped by network namespace, then checks each one.
func (k *Actor) act(views []ConnView, mode string, allowListen bool, do func(path string, out []ActionResult, idx []int)) []ActionResult {
	out := make([]ActionResult, len(views))
	byNS := map[uint32][]int{}
	for i := range views {
		v := &views[i]
		r := &out[i]
		*r = ActionResult{Cookie: v.Cookie, Family: v.Family, Local: v.Local, Remote: v.Remote, Netns: v.Netns,
			State: v.State, Holders: v.Holders, Mode: mode}
		for _, vd := range v.Verdicts {
			r.Verdicts = append(r.Verdicts, vd.Kind)
		}
		if !Killable(v.State, allowListen) {
			r.Error = fmt.Sprintf("not acted on: %s sockets are never acted on", v.State)
			if v.State == StateListen {
				r.Error = "not acted on: a LISTEN socket is acted on only with --state LISTEN"
			}
			continue
		}
		byNS[v.Netns] = append(byNS[v.Netns], i)
	}
	if len(byNS) == 0 {
		return out
	}
	nsFn := k.Namespaces
	if nsFn == nil {
		nsFn = Namespaces
	}
	paths, err := nsFn()
	if err != nil {
		for _, idx := range byNS {
			for _, i := range idx {
				out[i].Error = fmt.Sprintf("find network namespaces: %v", err)
			}
		}
		return out
	}
	for ns, idx := range byNS {
		path, ok := paths[ns]
		if !ok {
			for _, i := range idx {
				out[i].Error = fmt.Sprintf("network namespace %d is gone (no process or bind mount opens it)", ns)
			}
			continue
		}
		do(path, out, idx)
		k.verify(path, out, idx)
	}
	return out
}

// abort destroys the sockets at idx in the namespace at path: with
// bpf_sock_destroy where the kernel has it, else through sock_diag.
func (k *Actor) abort(path string, views []ConnView, out []ActionResult, idx []int) {
	var viaDiag []int
	if k.NoSockDestroy || k.Probes == nil {
		viaDiag = idx
	} else {
		cookies := make([]uint64, len(idx))
		for j, i := range idx {
			cookies[j] = views[i].Cookie
		}
		res, err := k.Probes.Destroy(path, cookies)
		switch {
		case errors.Is(err, bpf.ErrNoSockDestroy):
			viaDiag = idx
		case err != nil:
			for _, i := range idx {
				out[i].Error = err.Error()
			}
			return
		default:
			for _, i := range idx {
				r := res[views[i].Cookie]
				out[i].Mechanism = MechSockDestroy
				switch {
				case !r.Seen:
					out[i].Gone = true
					out[i].Error = "already closed when kill came to it: nothing to do"
				case !r.Full:
					out[i].Error = fmt.Sprintf("a %s request or TIME_WAIT socket cannot be destroyed", State(r.State))
				case r.Err != nil && !k.NoSockDiag:
					// A socket it refuses (6.18 refuses LISTEN ones
					// with EINVAL) may still go through sock_diag.
					viaDiag = append(viaDiag, i)
					out[i].Error = fmt.Sprintf("bpf_sock_destroy: %v", r.Err)
				case r.Err != nil:
					out[i].Error = fmt.Sprintf("bpf_sock_destroy: %v", r.Err)
				}
			}
		}
	}
	for _, i := range viaDiag {
		v := &views[i]
		first := out[i].Error
		out[i].Error = ""
		out[i].Mechanism = MechSockDiag
		if k.NoSockDiag {
			out[i].Mechanism = ""
			out[i].Error = noMechanism(k)
			continue
		}
		fam := FamilyIPv4
		if v.Family == FamilyIPv6.String() {
			fam = FamilyIPv6
		}
		local, err1 := netip.ParseAddrPort(v.Local)
		remote, err2 := netip.ParseAddrPort(v.Remote)
		if err := errors.Join(err1, err2); err != nil {
			out[i].Error = fmt.Sprintf("socket address: %v", err)
			continue
		}
		cookie := v.Cookie
		var err error
		if !bpf.IDsAreCookies() {
			// The id is not the kernel's cookie: ask sock_diag for the
			// cookie of the socket at these addresses with this inode,
			// and destroy that exact socket.
			cookie, err = DiagCookie(path, fam, local, remote, v.Inode)
		}
		if err == nil {
			err = DiagDestroy(path, fam, local, remote, cookie)
		}
		if err != nil {
			out[i].Error = err.Error()
			out[i].diagGone = errors.Is(err, ErrDiagGone)
			if errors.Is(err, ErrNoDiagDestroy) {
				out[i].Error = noMechanism(k) + ": " + err.Error()
			}
			if first != "" {
				out[i].Error = first + "; then sock_diag: " + out[i].Error
			}
		}
	}
}

// noMechanism says why no mechanism is left to abort a socket with.
func noMechanism(k *Actor) string {
	var why []string
	switch {
	case k.NoSockDestroy:
		why = append(why, "bpf_sock_destroy is turned off")
	case k.Probes == nil || !bpf.SockDestroyAvailable():
		why = append(why, "this kernel has no bpf_sock_destroy() (Linux 6.5+)")
	}
	if k.NoSockDiag {
		why = append(why, "sock_diag is turned off")
	}
	if len(why) == 0 {
		why = append(why, "sock_diag cannot destroy sockets (CONFIG_INET_DIAG_DESTROY, tcp_diag)")
	}
	return "cannot abort sockets: " + strings.Join(why, ", and ")
}

// shutdown sends the socket's FIN by shutdown(SHUT_RDWR) on a copy of a
// holder's fd taken with pidfd_getfd, after checking that the fd is still
// this socket (an fd number can be reused).
func (k *Actor) shutdown(v *ConnView, r *ActionResult) {
	r.Mechanism = MechShutdown
	viaHolder(v, r, "--graceful needs a process that holds the socket, and none is known: nothing done (use kill without --graceful to abort it)",
		func(h Holder, fd int) error {
			if err := unix.Shutdown(fd, unix.SHUT_RDWR); err != nil {
				return fmt.Errorf("shutdown fd %d of pid %d: %w", h.FD, h.PID, err)
			}
			return nil
		})
}

// keepaliveVia arms keepalive with o through a holder's fd: the way left
// where the kernel has no bpf_setsockopt in iter/tcp.
func (k *Actor) keepaliveVia(v *ConnView, r *ActionResult, o bpf.KeepaliveOptions) {
	r.Mechanism = MechHolderSetsockopt
	viaHolder(v, r, "this kernel has no bpf_setsockopt() in iter/tcp (Linux 5.15), and no process is known to hold the socket to set the options through: nothing done",
		func(h Holder, fd int) error { return setKeepaliveVia(h, fd, o) })
}

// viaHolder runs do on a copy of each holder's fd of v (see holderFD) until
// one succeeds; r.Error gets every failure, or none when v has no holder.
func viaHolder(v *ConnView, r *ActionResult, none string, do func(h Holder, fd int) error) {
	if len(v.Holders) == 0 {
		r.Error = none
		return
	}
	var errs []string
	for _, h := range v.Holders {
		fd, err := holderFD(h, v)
		if err == nil {
			err = do(h, fd)
			unix.Close(fd)
		}
		if err == nil {
			return
		}
		errs = append(errs, err.Error())
	}
	r.Error = strings.Join(errs, "; ")
}

func setKeepaliveVia(h Holder, fd int, o bpf.KeepaliveOptions) error {
	opts := []struct {
		level, name int
		what        string
		val         int32
	}{
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", o.IdleSeconds},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", o.IntervalSeconds},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", o.Count},
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", o.UserTimeoutMs},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 1},
	}
	for _, op := range opts {
		if op.val == 0 && op.name != unix.SO_KEEPALIVE {
			continue
		}
		if err := unix.SetsockoptInt(fd, op.level, op.name, int(op.val)); err != nil {
			return fmt.Errorf("setsockopt %s on fd %d of pid %d: %w", op.what, h.FD, h.PID, err)
		}
	}
	return nil
}

// holderFD takes a copy of a holder's fd with pidfd_getfd and checks that
// it is still v's socket (an fd number can be reused). The caller closes
// it.
func holderFD(h Holder, v *ConnView) (int, error) {
	pidfd, err := unix.PidfdOpen(int(h.PID), 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open pid %d: %w", h.PID, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, int(h.FD), 0)
	if errors.Is(err, syscall.EPERM) {
		return -1, fmt.Errorf("take fd %d of pid %d: %w (it needs ptrace permission over the process: CAP_SYS_PTRACE)", h.FD, h.PID, err)
	}
	if err != nil {
		return -1, fmt.Errorf("take fd %d of pid %d: %w", h.FD, h.PID, err)
	}
	if err := sameSocket(fd, v); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("fd %d of pid %d: %w", h.FD, h.PID, err)
	}
	return fd, nil
}

// sameSocket checks that fd is still the socket of v: by cookie, or where
// ids are not cookies (see bpf.IDsAreCookies) by its inode (where the
// table knows it) and its two addresses.
func sameSocket(fd int, v *ConnView) error {
	if bpf.IDsAreCookies() {
		got, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err != nil {
			return fmt.Errorf("no longer a socket: %w", err)
		}
		if got != v.Cookie {
			return fmt.Errorf("another socket now (cookie %d): nothing done", got)
		}
		return nil
	}
	if v.Inode != 0 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("no longer open: %w", err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Ino != v.Inode {
			return fmt.Errorf("another file now (inode %d, not %d): nothing done", st.Ino, v.Inode)
		}
	}
	if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || proto != unix.IPPROTO_TCP {
		return fmt.Errorf("no longer a TCP socket (protocol %d, %v): nothing done", proto, err)
	}
	la, err1 := unix.Getsockname(fd)
	ra, err2 := unix.Getpeername(fd)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("no longer a connected socket: %w", err)
	}
	local, remote := sockaddrPort(la), sockaddrPort(ra)
	if !sameAddrPort(local, v.Local) || !sameAddrPort(remote, v.Remote) {
		return fmt.Errorf("another socket now (%s to %s): nothing done", local, remote)
	}
	return nil
}

// sockaddrPort turns an inet socket address into an AddrPort.
func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// sameAddrPort says whether a is the table's address s, an IPv4-mapped
// address equal to its IPv4 one.
func sameAddrPort(a netip.AddrPort, s string) bool {
	b, err := netip.ParseAddrPort(s)
	return err == nil && a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// verify looks at the namespace's sockets again and marks done the
// results whose effect it sees.
func (k *Actor) verify(path string, out []ActionResult, idx []int) {
	var recs []bpf.GhostconnSockRec
	var err error
	if k.Probes != nil {
		recs, err = k.Probes.Sockets(path)
	} else {
		err = errors.New("no iterator to check with")
	}
	state := map[uint64]State{}
	recIx := map[uint64]int{}
	for i, r := range recs {
		state[r.Cookie] = State(r.State)
		recIx[r.Cookie] = i
	}
	for _, i := range idx {
		r := &out[i]
		if err != nil {
			r.Error = strings.TrimPrefix(r.Error+"; ", "; ") + fmt.Sprintf("cannot check the result: %v", err)
			continue
		}
		s, there := state[r.Cookie]
		r.After = "gone"
		if there {
			r.After = s.String()
		}
		switch {
		case there && s == StateListen && r.Mode == ModeAbort && strings.Contains(r.Error, syscall.EINVAL.Error()):
			r.Error = "this kernel refuses to abort LISTEN sockets (" + r.Error + "): stop or reconfigure the listening process instead"
		case r.diagGone && !there:
			r.Gone = true
			r.Error = "already closed when kill came to it: nothing to do"
		case r.diagGone && there:
			r.Error = "sock_diag did not find the socket although it is there: its TCP support (tcp_diag) is not loaded; run 'modprobe tcp_diag'"
		case r.Mode == ModeAbort && there && r.Error == "":
			r.Error = fmt.Sprintf("still there in %s after %s", s, r.Mechanism)
		case r.Mode == ModeGraceful && there && (s == StateEstablished || s == StateCloseWait) && r.Error == "":
			r.Error = fmt.Sprintf("still %s after shutdown: no FIN went out", s)
		case r.Mode == ModeKeepalive && !there && r.Error == "":
			r.Gone = true
			r.Error = "closed before the check: the options cannot be confirmed"
		case r.Mode == ModeKeepalive && there && r.Error == "" && k.Keep != nil:
			if diff := k.keepaliveDiff(recs[recIx[r.Cookie]].Tcp); diff != "" {
				r.Error = "the socket does not have the values asked for: " + diff
			} else {
				r.Done = true
			}
		case r.Error == "":
			r.Done = true
		}
	}
}
