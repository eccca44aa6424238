package collector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoDiagDestroy marks a kernel whose sock_diag cannot destroy sockets:
// built without CONFIG_INET_DIAG_DESTROY, or without tcp_diag.
var ErrNoDiagDestroy = errors.New("sock_diag cannot destroy sockets on this kernel (it needs CONFIG_INET_DIAG_DESTROY=y and the tcp_diag module)")

// ErrDiagGone marks a socket that sock_diag did not find with the cookie
// asked for: closed since, or another socket now at its address.
var ErrDiagGone = errors.New("no such socket (closed, or another socket at its address)")

// diagNoCookie is INET_DIAG_NOCOOKIE in both halves of the request's
// cookie: the kernel then matches the socket by its addresses alone.
const diagNoCookie = ^uint64(0)

// inetDiagReqV2 is struct inet_diag_req_v2 from linux/inet_diag.h, which
// golang.org/x/sys/unix does not define. The request is built by hand
// because the netlink libraries' SocketDestroy matches by address alone,
// and this one must name the socket's cookie too: the kernel then refuses
// a socket at that address that is not the one the user saw.
type inetDiagReqV2 struct {
	Family   uint8
	Protocol uint8
	Ext      uint8
	Pad      uint8
	States   uint32
	Sport    [2]byte // big endian
	Dport    [2]byte
	Src      [16]byte
	Dst      [16]byte
	If       uint32
	Cookie   [2]uint32
}

// diagDestroyRequest builds the netlink message of SOCK_DESTROY for the TCP
// socket with this cookie at local and remote.
func diagDestroyRequest(family Family, local, remote netip.AddrPort, cookie uint64, seq uint32) []byte {
	return diagRequest(unix.SOCK_DESTROY, family, local, remote, cookie, seq)
}

// diagRequest builds a netlink message of type typ (SOCK_DESTROY, or
// SOCK_DIAG_BY_FAMILY for one socket) for the TCP socket with this cookie
// at local and remote.
func diagRequest(typ uint16, family Family, local, remote netip.AddrPort, cookie uint64, seq uint32) []byte {
	req := inetDiagReqV2{Family: uint8(family), Protocol: unix.IPPROTO_TCP, States: ^uint32(0),
		Cookie: [2]uint32{uint32(cookie), uint32(cookie >> 32)}}
	binary.BigEndian.PutUint16(req.Sport[:], local.Port())
	binary.BigEndian.PutUint16(req.Dport[:], remote.Port())
	if family == FamilyIPv4 {
		a, b := local.Addr().Unmap().As4(), remote.Addr().Unmap().As4()
		copy(req.Src[:], a[:])
		copy(req.Dst[:], b[:])
	} else {
		req.Src, req.Dst = local.Addr().As16(), remote.Addr().As16()
	}
	n := unix.SizeofNlMsghdr + int(unsafe.Sizeof(req))
	msg := make([]byte, n)
	hdr := (*unix.NlMsghdr)(unsafe.Pointer(&msg[0]))
	*hdr = unix.NlMsghdr{Len: uint32(n), Type: typ, Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK, Seq: seq}
	copy(msg[unix.SizeofNlMsghdr:], unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req)))
	return msg
}

// parseDiagAck returns the errno of the netlink acknowledgement in b for the
// request seq: nil for success.
func parseDiagAck(b []byte, seq uint32) error {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return fmt.Errorf("parse sock_diag answer: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
			continue
		}
		if len(m.Data) < 4 {
			return fmt.Errorf("sock_diag answer of %d bytes", len(m.Data))
		}
		if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code < 0 {
			return syscall.Errno(-code)
		}
		return nil
	}
	return errors.New("sock_diag gave no acknowledgement")
}

// DiagDestroy aborts one TCP socket with sock_diag's SOCK_DESTROY, from a
// netlink socket opened in the network namespace at nsPath ("" for the
// caller's own): the socket at local and remote whose cookie is cookie, and
// no other. The kernel loads tcp_diag when it is a module. A kernel that
// cannot destroy sockets gives ErrNoDiagDestroy; a socket no longer there
// (or another one at its address) gives ErrDiagGone.
func DiagDestroy(nsPath string, family Family, local, remote netip.AddrPort, cookie uint64) error {
	fd, err := netlinkIn(nsPath)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	const seq = 1
	if err := unix.Sendto(fd, diagDestroyRequest(family, local, remote, cookie, seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send SOCK_DESTROY: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("read SOCK_DESTROY answer: %w", err)
	}
	err = parseDiagAck(buf[:n], seq)
	switch {
	case errors.Is(err, syscall.EOPNOTSUPP):
		return fmt.Errorf("%w: %w", ErrNoDiagDestroy, err)
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESTALE):
		return fmt.Errorf("%w: %w", ErrDiagGone, err)
	case errors.Is(err, syscall.EPERM):
		return fmt.Errorf("sock_diag SOCK_DESTROY needs CAP_NET_ADMIN in the socket's network namespace: %w", err)
	}
	return err
}

// DiagCookie asks sock_diag for the cookie of the TCP socket at local and
// remote, by address alone: for kernels whose socket ids are not cookies
// (see bpf.IDsAreCookies), so that a destroy can still name the exact
// socket. Where inode is known (not 0) the answer must be that socket's
// inode, a listener included; where it is not, it must be a connection
// to remote (the kernel's lookup falls back to a listener on the local
// address). Any other answer gives ErrDiagGone.
func DiagCookie(nsPath string, family Family, local, remote netip.AddrPort, inode uint64) (uint64, error) {
	fd, err := netlinkIn(nsPath)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	const seq = 1
	if err := unix.Sendto(fd, diagRequest(unix.SOCK_DIAG_BY_FAMILY, family, local, remote, diagNoCookie, seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("send SOCK_DIAG_BY_FAMILY: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("read SOCK_DIAG_BY_FAMILY answer: %w", err)
	}
	return parseDiagMsg(buf[:n], seq, family, remote, inode)
}

// inetDiagMsg is struct inet_diag_msg from linux/inet_diag.h, which
// golang.org/x/sys/unix does not define.
type inetDiagMsg struct {
	Family  uint8
	State   uint8
	Timer   uint8
	Retrans uint8
	Sport   [2]byte
	Dport   [2]byte
	Src     [16]byte
	Dst     [16]byte
	If      uint32
	Cookie  [2]uint32
	Expires uint32
	Rqueue  uint32
	Wqueue  uint32
	UID     uint32
	Inode   uint32
}

// parseDiagMsg returns the cookie of the socket sock_diag answered request
// seq with, when it is the socket with this inode (where inode is not 0),
// or else a connection (not a listener) to remote.
func parseDiagMsg(b []byte, seq uint32, family Family, remote netip.AddrPort, inode uint64) (uint64, error) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return 0, fmt.Errorf("parse sock_diag answer: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Seq != seq {
			continue
		}
		if m.Header.Type == unix.NLMSG_ERROR {
			if err := parseDiagAck(b, seq); err != nil {
				if errors.Is(err, syscall.ENOENT) {
					return 0, fmt.Errorf("%w: %w", ErrDiagGone, err)
				}
				return 0, fmt.Errorf("sock_diag lookup: %w", err)
			}
			continue
		}
		var msg inetDiagMsg
		if len(m.Data) < int(unsafe.Sizeof(msg)) {
			return 0, fmt.Errorf("sock_diag answer of %d bytes", len(m.Data))
		}
		msg = *(*inetDiagMsg)(unsafe.Pointer(&m.Data[0]))
		dst := netip.AddrFrom16(msg.Dst)
		if family == FamilyIPv4 {
			dst = netip.AddrFrom4([4]byte(msg.Dst[:4]))
		}
		got := netip.AddrPortFrom(dst, binary.BigEndian.Uint16(msg.Dport[:]))
		switch {
		case inode != 0 && uint64(msg.Inode) != inode:
			return 0, fmt.Errorf("%w: sock_diag found another socket there (inode %d, not %d: %s to %s)", ErrDiagGone, msg.Inode, inode, State(msg.State), got)
		case inode == 0 && (State(msg.State) == StateListen || got.Addr().Unmap() != remote.Addr().Unmap() || got.Port() != remote.Port()):
			return 0, fmt.Errorf("%w: sock_diag found a %s socket to %s there", ErrDiagGone, State(msg.State), got)
		}
		return uint64(msg.Cookie[0]) | uint64(msg.Cookie[1])<<32, nil
	}
	return 0, errors.New("sock_diag gave no answer")
}

// netlinkIn opens a NETLINK_SOCK_DIAG socket in the network namespace at
// nsPath: a socket keeps the namespace it was created in.
func netlinkIn(nsPath string) (int, error) {
	open := func() (int, error) {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return -1, fmt.Errorf("open sock_diag socket: %w", err)
		}
		tv := unix.Timeval{Sec: 5}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("set sock_diag timeout: %w", err)
		}
		return fd, nil
	}
	if nsPath == "" {
		return open()
	}
	target, err := os.Open(nsPath)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return -1, fmt.Errorf("open own netns: %w", err)
	}
	defer self.Close()
	runtime.LockOSThread()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	fd, openErr := open()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it.
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("return from netns %s: %w", nsPath, err)
	}
	runtime.UnlockOSThread()
	return fd, openErr
}
