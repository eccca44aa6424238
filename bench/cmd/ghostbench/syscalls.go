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

// Operations `ghostbench syscalls` times, as the report names them.
const (
	opDupClose = "dup()+close() of a non-socket"
	opGetppid  = "getppid()"
)

// taxOps is the display order of the operations.
var taxOps = []string{opDupClose, opGetppid}

// syscallsResult is what `ghostbench syscalls` prints on stdout.
type syscallsResult struct {
	Ops []syscallsOp `json:"ops"`
}

// syscallsOp is one operation's timing: the median over batches of the
// mean ns per operation within a batch, and every batch's mean.
type syscallsOp struct {
	Name    string    `json:"name"`
	Ns      float64   `json:"ns"`
	Ops     uint64    `json:"ops"`
	Batches []float64 `json:"batches_ns"`
}

// syscallsBatches is how many batches each operation runs in by default
// (the harness uses the default).
const syscallsBatches = 10

// syscallsChunk is how many operations run between two clock reads. The
// clock is the vDSO (no syscall), so its cost spread over a chunk is noise.
const syscallsChunk = 1024

// runSyscalls times tight loops of raw syscalls on one locked OS thread:
// dup() of a /dev/null fd then close() of the copy (a non-socket close, the
// common case every close hook sees), and getppid() (a syscall no program
// hooks, so what it gains is the tracepoint slow path alone). Each operation
// runs in -batches batches of -duration/-batches, the operations alternating
// batch by batch so that a drift in the host's load hits both alike, after
// one unmeasured batch each. The loops allocate nothing. It prints a
// syscallsResult.
func runSyscalls(args []string) int {
	fs := flag.NewFlagSet("syscalls", flag.ExitOnError)
	duration := fs.Duration("duration", time.Second, "measured time per operation")
	batches := fs.Int("batches", syscallsBatches, "batches per operation; the result is their median")
	_ = fs.Parse(args)
	if *batches < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "syscalls: -batches and -duration must be positive")
		return 2
	}
	runtime.LockOSThread()

	devnull, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "syscalls: open %s: %v\n", os.DevNull, err)
		return 1
	}
	// The copy must be a fresh fd (not a socket) and close must succeed, or
	// the loop would time an error path.
	if fd, _, errno := unix.RawSyscall(unix.SYS_DUP, uintptr(devnull), 0, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "syscalls: dup: %v\n", errno)
		return 1
	} else if _, _, errno := unix.RawSyscall(unix.SYS_CLOSE, fd, 0, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "syscalls: close: %v\n", errno)
		return 1
	}

	loops := syscallLoops(devnull)
	res := syscallsResult{Ops: make([]syscallsOp, len(taxOps))}
	for k, name := range taxOps {
		res.Ops[k] = syscallsOp{Name: name, Batches: make([]float64, 0, *batches)}
	}
	batch := *duration / time.Duration(*batches)
	for k := range loops {
		timeBatch(loops[k], batch) // warm-up, not recorded
	}
	for b := 0; b < *batches; b++ {
		for k := range loops {
			ops, took := timeBatch(loops[k], batch)
			res.Ops[k].Ops += ops
			res.Ops[k].Batches = append(res.Ops[k].Batches, float64(took)/float64(ops))
		}
	}
	for k := range res.Ops {
		res.Ops[k].Ns = median(res.Ops[k].Batches)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "syscalls: write result: %v\n", err)
		return 1
	}
	return 0
}

// syscallLoops returns the loops that run n of each of taxOps, in that
// order; dup duplicates fd.
func syscallLoops(fd int) []func(n int) {
	return []func(n int){
		func(n int) {
			for i := 0; i < n; i++ {
				nfd, _, _ := unix.RawSyscall(unix.SYS_DUP, uintptr(fd), 0, 0)
				unix.RawSyscall(unix.SYS_CLOSE, nfd, 0, 0)
			}
		},
		func(n int) {
			for i := 0; i < n; i++ {
				unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
			}
		},
	}
}

// timeBatch runs loop in chunks until at least d has passed and returns the
// operations run and the time they took.
func timeBatch(loop func(n int), d time.Duration) (uint64, time.Duration) {
	var ops uint64
	t0 := time.Now()
	for {
		loop(syscallsChunk)
		ops += syscallsChunk
		if took := time.Since(t0); took >= d {
			return ops, took
		}
	}
}
