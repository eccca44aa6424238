package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// churnResult is what `ghostbench churn` prints on stdout.
type churnResult struct {
	Conns   uint64  `json:"conns"`
	Seconds float64 `json:"seconds"`
	Errors  uint64  `json:"errors"`
	Rate    float64 `json:"rate"` // connections per second
	// Total counts every connection since start, warm-up included.
	Total uint64 `json:"total"`
}

// churnProgress is what `ghostbench churn -progress` prints on each
// SIGUSR1 before the final churnResult: totals since start, warm-up
// included.
type churnProgress struct {
	Progress bool    `json:"progress"`
	Seconds  float64 `json:"seconds"`
	Conns    uint64  `json:"conns"`
	Errors   uint64  `json:"errors"`
}

// padded keeps each worker's counter on its own cache line.
type padded struct {
	n   atomic.Uint64
	_   [56]byte
	err atomic.Uint64
	_   [56]byte
}

// runChurn is the churn worker: a loopback server and `clients` client
// threads, each looping socket, connect, write 1 byte, read 1 byte, close,
// as fast as it can. The server answers each connection with one byte and
// closes it. Plain blocking syscalls on locked threads keep the loop as
// lean as a C client's: no netpoller, no keepalive, no MPTCP.
func runChurn(args []string) int {
	fs := flag.NewFlagSet("churn", flag.ExitOnError)
	clients := fs.Int("clients", 8, "concurrent client threads")
	servers := fs.Int("servers", 8, "server threads (accept, read, write, close)")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before")
	progress := fs.Bool("progress", false, "print a churnProgress line (totals since start) on each SIGUSR1")
	addrs := fs.Int("addrs", 1, "server addresses (127.0.0.1, then 127.0.2.1 on), clients spread over them: each has its own ephemeral ports, so more TIME_WAIT sockets last before a new connection recycles one")
	_ = fs.Parse(args)
	if *addrs < 1 || *addrs > 250 || *servers < *addrs {
		fmt.Fprintf(os.Stderr, "churn: -addrs %d: want 1 to 250, and at least one server thread each\n", *addrs)
		return 2
	}

	// One P per blocking thread, so leaving a syscall never waits for a P.
	runtime.GOMAXPROCS(*clients + *servers + 2)

	lfds := make([]int, *addrs)
	sas := make([]*unix.SockaddrInet4, *addrs)
	for i := range lfds {
		ip := [4]byte{127, 0, 0, 1}
		if i > 0 {
			ip = [4]byte{127, 0, 2, byte(i)}
		}
		lfd, port, err := listenLoopback(ip, 4096)
		if err != nil {
			fmt.Fprintln(os.Stderr, "churn:", err)
			return 1
		}
		lfds[i], sas[i] = lfd, &unix.SockaddrInet4{Addr: ip, Port: port}
	}
	var stop atomic.Bool
	for i := 0; i < *servers; i++ {
		lfd := lfds[i%len(lfds)]
		go func() {
			runtime.LockOSThread()
			buf := make([]byte, 1)
			for !stop.Load() {
				nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
				if err != nil {
					continue
				}
				_, _ = unix.Read(nfd, buf)
				_, _ = unix.Write(nfd, []byte{'y'})
				unix.Close(nfd)
			}
		}()
	}
	counters := make([]padded, *clients)
	for i := 0; i < *clients; i++ {
		c := &counters[i]
		sa := sas[i%len(sas)]
		go func() {
			runtime.LockOSThread()
			buf := make([]byte, 1)
			msg := []byte{'x'}
			for !stop.Load() {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					c.err.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				if err := unix.Connect(fd, sa); err != nil {
					unix.Close(fd)
					c.err.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				if _, err := unix.Write(fd, msg); err != nil {
					c.err.Add(1)
				} else if n, err := unix.Read(fd, buf); err != nil || n != 1 {
					c.err.Add(1)
				} else {
					c.n.Add(1)
				}
				unix.Close(fd)
			}
		}()
	}
	sum := func() (n, e uint64) {
		for i := range counters {
			n += counters[i].n.Load()
			e += counters[i].err.Load()
		}
		return
	}
	if *progress {
		start := time.Now()
		sig := make(chan os.Signal, 16)
		signal.Notify(sig, syscall.SIGUSR1)
		go func() {
			enc := json.NewEncoder(os.Stdout)
			// A first line says the handler is in place: until then
			// SIGUSR1 would kill the process.
			_ = enc.Encode(churnProgress{Progress: true})
			for range sig {
				n, e := sum()
				_ = enc.Encode(churnProgress{Progress: true, Seconds: time.Since(start).Seconds(), Conns: n, Errors: e})
			}
		}()
	}
	time.Sleep(*warmup)
	n0, e0 := sum()
	t0 := time.Now()
	time.Sleep(*duration)
	n1, e1 := sum()
	secs := time.Since(t0).Seconds()
	stop.Store(true)
	res := churnResult{Conns: n1 - n0, Seconds: secs, Errors: e1 - e0, Rate: float64(n1-n0) / secs, Total: n1}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	// Threads blocked in accept or read die with the process.
	os.Exit(0)
	return 0
}

// listenLoopback listens on addr with an ephemeral port and returns the fd
// and the port.
func listenLoopback(addr [4]byte, backlog int) (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr}); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("bind %v: %w", addr, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}
