package collector

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testnet"
)

// The SOCK_DESTROY request is inet_diag_req_v2 behind a netlink header,
// with the ports in network order and the cookie split in two native
// halves, low first, as sock_diag_check_cookie compares them.
func TestDiagDestroyRequest(t *testing.T) {
	if n := unsafe.Sizeof(inetDiagReqV2{}); n != 56 {
		t.Fatalf("inet_diag_req_v2 is %d bytes, want 56", n)
	}
	msg := diagDestroyRequest(FamilyIPv4, netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("10.1.2.3:443"), 0x1122334455667788, 7)
	if len(msg) != 16+56 || binary.NativeEndian.Uint32(msg[0:]) != 72 || binary.NativeEndian.Uint16(msg[4:]) != unix.SOCK_DESTROY ||
		binary.NativeEndian.Uint16(msg[6:]) != unix.NLM_F_REQUEST|unix.NLM_F_ACK || binary.NativeEndian.Uint32(msg[8:]) != 7 {
		t.Fatalf("netlink header % x", msg[:16])
	}
	r := msg[16:]
	if r[0] != unix.AF_INET || r[1] != unix.IPPROTO_TCP || binary.BigEndian.Uint16(r[8:]) != 40000 || binary.BigEndian.Uint16(r[10:]) != 443 {
		t.Errorf("request head % x", r[:12])
	}
	if netip.AddrFrom4([4]byte(r[12:16])) != netip.MustParseAddr("127.0.0.1") || netip.AddrFrom4([4]byte(r[28:32])) != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("addresses % x / % x", r[12:28], r[28:44])
	}
	if binary.NativeEndian.Uint32(r[48:]) != 0x55667788 || binary.NativeEndian.Uint32(r[52:]) != 0x11223344 {
		t.Errorf("cookie % x", r[48:56])
	}
	v6 := diagDestroyRequest(FamilyIPv6, netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddrPort("[fe80::2]:2"), 1, 1)[16:]
	if v6[0] != unix.AF_INET6 || netip.AddrFrom16([16]byte(v6[28:44])) != netip.MustParseAddr("fe80::2") {
		t.Errorf("ipv6 request % x", v6)
	}
}

// parseDiagAck reads the errno of the acknowledgement of its request.
func TestParseDiagAck(t *testing.T) {
	ack := func(seq uint32, code int32) []byte {
		b := make([]byte, 16+4+16)
		binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_ERROR)
		binary.NativeEndian.PutUint32(b[8:], seq)
		binary.NativeEndian.PutUint32(b[16:], uint32(code))
		return b
	}
	if err := parseDiagAck(ack(3, 0), 3); err != nil {
		t.Errorf("ack 0: %v", err)
	}
	if err := parseDiagAck(ack(3, -int32(syscall.ESTALE)), 3); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("ack -ESTALE: %v", err)
	}
	if err := parseDiagAck(ack(2, 0), 3); err == nil {
		t.Error("an acknowledgement of another request was taken")
	}
	if err := parseDiagAck([]byte{1, 2, 3}, 3); err == nil {
		t.Error("a truncated answer was taken")
	}
}

// TestDiagDestroyByCookie: from the host, DiagDestroy aborts a socket in
// another network namespace when its cookie is the socket's, and refuses
// (ErrDiagGone) when it is not, leaving the connection up.
func TestDiagDestroyByCookie(t *testing.T) {
	privtest.Require(t)
	ns := testnet.Netns(t)
	var client, server net.Conn
	testnet.In(t, ns, func() {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Error(err)
			return
		}
		defer ln.Close()
		if client, err = net.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Error(err)
			return
		}
		if server, err = ln.Accept(); err != nil {
			t.Error(err)
		}
	})
	if client == nil || server == nil {
		t.FailNow()
	}
	defer client.Close()
	defer server.Close()
	raw, err := client.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	raw.Control(func(fd uintptr) { cookie, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(client.LocalAddr().String())
	remote := netip.MustParseAddrPort(client.RemoteAddr().String())

	if err := DiagDestroy(testnet.Path(ns), FamilyIPv4, local, remote, cookie+1); !errors.Is(err, ErrDiagGone) {
		t.Fatalf("destroy with another cookie: %v, want ErrDiagGone", err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatalf("connection after a refused destroy: %v", err)
	}
	if err := DiagDestroy(testnet.Path(ns), FamilyIPv4, local, remote, cookie); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	server.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 8)
	n, err := server.Read(buf) // the byte written before, then the RST
	if err == nil && n == 1 {
		_, err = server.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer read after destroy: %v, want ECONNRESET", err)
	}
	if err := DiagDestroy(testnet.Path(ns), FamilyIPv4, local, remote, cookie); !errors.Is(err, ErrDiagGone) {
		t.Errorf("destroy of a destroyed socket: %v, want ErrDiagGone", err)
	}
}

// TestDiagCookieByAddress: DiagCookie finds the cookie of the connection
// at two addresses (the way to an exact destroy where socket ids are not
// cookies), and once that connection is gone it refuses the listener the
// kernel's lookup falls back to on the same local address.
func TestDiagCookieByAddress(t *testing.T) {
	privtest.Require(t)
	ns := testnet.Netns(t)
	var ln net.Listener
	var client, server net.Conn
	testnet.In(t, ns, func() {
		var err error
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Error(err)
			return
		}
		if client, err = net.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Error(err)
			return
		}
		if server, err = ln.Accept(); err != nil {
			t.Error(err)
		}
	})
	if ln == nil || client == nil || server == nil {
		t.FailNow()
	}
	defer ln.Close()
	defer client.Close()
	want, ino := sockIdentity(t, server.(*net.TCPConn))
	lnCookie, lnIno := sockIdentity(t, ln.(*net.TCPListener))
	local := netip.MustParseAddrPort(server.LocalAddr().String())
	remote := netip.MustParseAddrPort(server.RemoteAddr().String())
	for _, i := range []uint64{0, ino} {
		if got, err := DiagCookie(testnet.Path(ns), FamilyIPv4, local, remote, i); err != nil || got != want {
			t.Fatalf("DiagCookie of the server end (inode %d): %d, %v; want %d", i, got, err, want)
		}
	}
	// The wrong inode at the right addresses is another socket.
	if got, err := DiagCookie(testnet.Path(ns), FamilyIPv4, local, remote, ino+1); !errors.Is(err, ErrDiagGone) {
		t.Errorf("DiagCookie with another inode: %d, %v; want ErrDiagGone", got, err)
	}
	// A listener is found by its inode, and only so. (6.18 answers the
	// lookup of one listener with a cookie other than its SO_COOKIE, one
	// above it, while a dump gives SO_COOKIE; a destroy by the answered
	// cookie goes through the same lookup.)
	lnAddr := netip.MustParseAddrPort(ln.Addr().String())
	anyAddr := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if got, err := DiagCookie(testnet.Path(ns), FamilyIPv4, lnAddr, anyAddr, lnIno); err != nil || got == 0 {
		t.Errorf("DiagCookie of the listener (cookie %d) by its inode: %d, %v; want its cookie", lnCookie, got, err)
	}
	if got, err := DiagCookie(testnet.Path(ns), FamilyIPv4, lnAddr, anyAddr, 0); !errors.Is(err, ErrDiagGone) {
		t.Errorf("DiagCookie of the listener without its inode: %d, %v; want ErrDiagGone", got, err)
	}
	// An RST close leaves no TIME_WAIT socket: only the listener is at
	// the local address now.
	server.(*net.TCPConn).SetLinger(0)
	server.Close()
	for _, ino := range []uint64{0, ino} {
		if got, err := DiagCookie(testnet.Path(ns), FamilyIPv4, local, remote, ino); !errors.Is(err, ErrDiagGone) {
			t.Errorf("DiagCookie (inode %d) after the connection closed: %d, %v; want ErrDiagGone (never the listener)", ino, got, err)
		}
	}
}

// sockIdentity returns the cookie and inode of a socket.
func sockIdentity(t *testing.T, c syscall.Conn) (cookie, ino uint64) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var ctlErr error
	if err := raw.Control(func(fd uintptr) {
		cookie, ctlErr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
		ctlErr = errors.Join(ctlErr, unix.Fstat(int(fd), &st))
	}); err != nil || ctlErr != nil {
		t.Fatal(err, ctlErr)
	}
	return cookie, st.Ino
}
