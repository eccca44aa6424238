package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// runHold is the socket holder: it listens on -addr, opens -pairs loopback
// connections to itself and holds both ends (2*pairs established sockets)
// until its stdin closes or it is signalled. It prints "ready N" once all are
// established. Every socket has SO_LINGER 0, so the exit resets them instead
// of leaving TIME_WAIT behind.
func runHold(args []string) int {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	pairs := fs.Int("pairs", 5000, "connections to open (each is two sockets)")
	addrFlag := fs.String("addr", "127.0.1.1", "loopback address to listen on")
	_ = fs.Parse(args)
	addr, err := netip.ParseAddr(*addrFlag)
	if err != nil || !addr.Is4() || !addr.IsLoopback() {
		fmt.Fprintf(os.Stderr, "hold: -addr %q must be an IPv4 loopback address\n", *addrFlag)
		return 2
	}

	need := uint64(2**pairs + 64)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < need {
		if rl.Max < need {
			fmt.Fprintf(os.Stderr, "hold: need %d fds, hard limit is %d\n", need, rl.Max)
			return 2
		}
		rl.Cur = need
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			fmt.Fprintf(os.Stderr, "hold: raise RLIMIT_NOFILE to %d: %v\n", need, err)
			return 2
		}
	}

	a4 := addr.As4()
	lfd, port, err := listenLoopback(a4, 4096)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 1
	}
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	var wg sync.WaitGroup
	var acceptErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		for i := 0; i < *pairs; i++ {
			nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				acceptErr = err
				return
			}
			_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		}
	}()
	sa := &unix.SockaddrInet4{Addr: a4, Port: port}
	for i := 0; i < *pairs; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hold: socket %d: %v\n", i, err)
			return 1
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		if err := unix.Connect(fd, sa); err != nil {
			fmt.Fprintf(os.Stderr, "hold: connect %d to %s:%d: %v\n", i, addr, port, err)
			return 1
		}
	}
	wg.Wait()
	if acceptErr != nil {
		fmt.Fprintln(os.Stderr, "hold: accept:", acceptErr)
		return 1
	}
	// The listener is not needed any more; closing it leaves exactly
	// 2*pairs established sockets.
	unix.Close(lfd)
	fmt.Printf("ready %d\n", 2**pairs)
	// Hold until the parent closes our stdin (or dies, which also closes it).
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return 0
}
