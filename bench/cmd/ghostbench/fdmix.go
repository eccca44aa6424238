package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// runFdmix exercises every fd hook (close, dup2, dup3, close_range,
// setsockopt) with the mix a busy host has: mostly files that are not
// sockets, now and then a TCP socket with other references left (the ghost
// path that emits an event), and setsockopt calls the hook must ignore.
// It prints {"iterations": N} when done.
func runFdmix(args []string) int {
	fs := flag.NewFlagSet("fdmix", flag.ExitOnError)
	duration := fs.Duration("duration", 3*time.Second, "how long to run")
	ghostEvery := fs.Int("ghost-every", 64, "one socket close that leaves references (an event) per this many iterations")
	_ = fs.Parse(args)
	runtime.LockOSThread()

	lfd, port, err := listenLoopback([4]byte{127, 0, 0, 1}, 16)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fdmix:", err)
		return 1
	}
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fdmix:", err)
		return 1
	}
	if err := unix.Connect(cfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
		fmt.Fprintln(os.Stderr, "fdmix: connect:", err)
		return 1
	}
	sfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fdmix: accept:", err)
		return 1
	}
	devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fdmix:", err)
		return 1
	}
	var iters uint64
	p := make([]int, 2)
	q := make([]int, 2)
	deadline := time.Now().Add(*duration)
	for time.Now().Before(deadline) {
		for k := 0; k < 64; k++ {
			iters++
			// close of non-sockets, the common case.
			if unix.Pipe2(p, unix.O_CLOEXEC) == nil {
				unix.Close(p[0])
				unix.Close(p[1])
			}
			// dup2 and dup3 over an open non-socket (arm64 has no dup2
			// system call: x/sys makes it a dup3 there).
			if x, err := unix.Dup(devnull); err == nil {
				_ = unix.Dup2(devnull, x)
				_ = unix.Dup3(devnull, x, unix.O_CLOEXEC)
				unix.Close(x)
			}
			// close_range over a few non-sockets.
			if unix.Pipe2(p, unix.O_CLOEXEC) == nil && unix.Pipe2(q, unix.O_CLOEXEC) == nil {
				lo, hi := minInt(p[0], p[1], q[0], q[1]), maxInt(p[0], p[1], q[0], q[1])
				if hi-lo == 3 { // the four are contiguous: nothing else in the range
					_ = unix.CloseRange(uint(lo), uint(hi), 0)
				} else {
					unix.Close(p[0])
					unix.Close(p[1])
					unix.Close(q[0])
					unix.Close(q[1])
				}
			}
			// setsockopt the hook rejects on level/optname.
			_ = unix.SetsockoptInt(cfd, unix.SOL_SOCKET, unix.SO_RCVBUF, 65536)
			if int(iters)%*ghostEvery == 0 {
				// The ghost path: a socket fd closed while a copy remains,
				// by close and by dup2, and a keepalive setsockopt.
				if d, err := unix.Dup(cfd); err == nil {
					unix.Close(d)
				}
				if d, err := unix.Dup(sfd); err == nil {
					_ = unix.Dup2(devnull, d)
					unix.Close(d)
				}
				_ = unix.SetsockoptInt(cfd, unix.SOL_TCP, unix.TCP_KEEPIDLE, 600)
			}
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]uint64{"iterations": iters})
	return 0
}

func minInt(v ...int) int {
	m := v[0]
	for _, x := range v[1:] {
		if x < m {
			m = x
		}
	}
	return m
}

func maxInt(v ...int) int {
	m := v[0]
	for _, x := range v[1:] {
		if x > m {
			m = x
		}
	}
	return m
}
