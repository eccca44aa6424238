package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Everything the harness changes on the host (processes, sysctls, temporary
// files) registers an undo here. The undos run in reverse order exactly once:
// at the end of main, on a panic, or on SIGINT/SIGTERM/SIGHUP.
var (
	cleanupMu   sync.Mutex
	cleanups    []cleanupFn
	cleanupDone bool
	nextCleanID int
)

type cleanupFn struct {
	id   int
	name string
	fn   func()
}

// onCleanup registers fn and returns a function that runs it early (and
// unregisters it), for things undone before the end of the run.
func onCleanup(name string, fn func()) (undo func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	nextCleanID++
	id := nextCleanID
	cleanups = append(cleanups, cleanupFn{id: id, name: name, fn: fn})
	var once sync.Once
	return func() {
		once.Do(func() {
			cleanupMu.Lock()
			for i, c := range cleanups {
				if c.id == id {
					cleanups = append(cleanups[:i], cleanups[i+1:]...)
					break
				}
			}
			cleanupMu.Unlock()
			fn()
		})
	}
}

// runCleanups undoes everything still registered, newest first.
func runCleanups() {
	cleanupMu.Lock()
	if cleanupDone {
		cleanupMu.Unlock()
		return
	}
	cleanupDone = true
	list := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					logf("cleanup %s panicked: %v", list[i].name, r)
				}
			}()
			list[i].fn()
		}()
	}
}

// handleSignals makes an interrupted run clean up before it exits.
func handleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-ch
		logf("got %v: cleaning up", s)
		runCleanups()
		os.Exit(130)
	}()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s ghostbench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// proc is a child process the harness started. It is stopped by its own pid
// only, and the kernel kills it if the harness dies (Pdeathsig).
type proc struct {
	name  string
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	start time.Time
	undo  func()
}

// liveProcs are the processes started and not yet reaped.
var (
	procsMu   sync.Mutex
	liveProcs = map[*proc]bool{}
)

// startProc starts name with args. stdout and stderr may be nil (discarded)
// or files/writers.
func startProc(label string, stdin io.Reader, stdout, stderr io.Writer, name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdin
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: label, cmd: cmd, done: make(chan struct{})}
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	procsMu.Lock()
	liveProcs[p] = true
	procsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		procsMu.Lock()
		delete(liveProcs, p)
		procsMu.Unlock()
		close(p.done)
	}()
	p.undo = onCleanup("stop "+label, func() { p.kill(3 * time.Second) })
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGTERM, waits up to grace, then SIGKILL, and reaps.
func (p *proc) kill(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	logf("%s (pid %d) ignored SIGTERM for %s: SIGKILL", p.name, p.pid(), grace)
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		logf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid())
	}
}

// stop stops the process now and unregisters its cleanup.
func (p *proc) stop() { p.undo() }

// wait waits for the process to exit on its own, up to timeout.
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %s", p.name, p.pid(), timeout)
	}
}

// restoreFile records sysctls the harness changed, so that a run killed
// with SIGKILL (no cleanup possible) is undone by the next run.
const restoreFile = "/run/ghostbench-restore"

// recoverStale restores what a killed run left changed.
func recoverStale() {
	b, err := os.ReadFile(restoreFile)
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		path, val, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(path, "/proc/sys/") {
			continue
		}
		if err := os.WriteFile(path, []byte(val), 0o644); err == nil {
			logf("restored %s=%s, left changed by a run that was killed", path, val)
		}
	}
	os.Remove(restoreFile)
}

// sysctl sets a /proc/sys value and registers the restore of the old one.
// The returned function restores it early.
func sysctl(path, value string) (restore func(), err error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	oldv := strings.TrimSpace(string(old))
	if oldv == value {
		return func() {}, nil
	}
	_ = os.WriteFile(restoreFile, []byte(path+"="+oldv+"\n"), 0o600)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		os.Remove(restoreFile)
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	logf("set %s=%s (was %s)", path, value, oldv)
	return onCleanup("restore "+path, func() {
		if err := os.WriteFile(path, []byte(oldv), 0o644); err != nil {
			logf("restore %s=%s: %v", path, oldv, err)
		} else {
			logf("restored %s=%s", path, oldv)
			os.Remove(restoreFile)
		}
	}), nil
}

// procStat reads a process's user+system CPU time.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// comm may hold spaces: fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat times")
	}
	const clkTck = 100 // USER_HZ, fixed at 100 in the Linux ABI
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procStatus reads the numeric fields of /proc/PID/status ("VmRSS:" and
// the like, in the units the file gives).
func procStatus(pid int) (map[string]uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out, nil
}

// procMem returns VmRSS and VmHWM in bytes.
func procMem(pid int) (rss, hwm uint64, err error) {
	st, err := procStatus(pid)
	if err != nil {
		return 0, 0, err
	}
	return st["VmRSS"] * 1024, st["VmHWM"] * 1024, nil
}
