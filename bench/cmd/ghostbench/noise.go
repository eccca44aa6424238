package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cpuSnap is the host's CPU counters and the harness's own CPU (itself and
// every child it reaped) at one moment.
type cpuSnap struct {
	at    time.Time
	busy  time.Duration // user+nice+system+irq+softirq over all CPUs
	steal time.Duration // time the hypervisor ran something else
	ours  time.Duration
}

func snapCPU() cpuSnap {
	s := cpuSnap{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line := strings.SplitN(string(b), "\n", 2)[0]
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		val := func(i int) time.Duration {
			if i >= len(f) {
				return 0
			}
			v, _ := strconv.ParseUint(f[i], 10, 64)
			return time.Duration(v) * time.Second / 100
		}
		// Tick accounting charges softirq time to the interrupted task's
		// stime too, so it belongs on both sides of busy - ours.
		s.busy = val(1) + val(2) + val(3) + val(6) + val(7)
		s.steal = val(8)
	}
	var self, kids unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &self)
	_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
	tv := func(t unix.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	s.ours = tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
	return s
}

// noise is the load outside the harness between two snapshots, in cores.
type noise struct {
	other float64 // CPU busy outside the harness (cores)
	steal float64 // stolen by the hypervisor (cores)
}

// noiseSince measures from a to now. The harness's children count only
// once reaped, so take b after the runs in the window have exited.
func noiseBetween(a, b cpuSnap) noise {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return noise{}
	}
	other := (b.busy - a.busy - (b.ours - a.ours)).Seconds() / wall
	if other < 0 {
		other = 0
	}
	return noise{other: other, steal: (b.steal - a.steal).Seconds() / wall}
}

func (n noise) String() string {
	return fmt.Sprintf("%.2f", n.other)
}

// foreignProg is a process outside the harness that holds bpf programs.
type foreignProg struct {
	pid   int
	cmd   string
	names []string
}

// foreignBPF lists processes holding bpf programs, other than the harness
// and its children: other observers whose programs run on the same hooks
// make "bare" not bare.
func foreignBPF(ours map[int]bool) []foreignProg {
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []foreignProg
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == self || ours[pid] {
			continue
		}
		ids, err := pidProgIDs(pid)
		if err != nil || len(ids) == 0 {
			continue
		}
		// Only processes, not threads: /proc/PID lists thread-group leaders.
		stats, err := readProgStats(pid)
		if err != nil {
			continue
		}
		seen := map[string]bool{}
		var names []string
		for _, s := range stats {
			if !seen[s.Name] {
				seen[s.Name] = true
				names = append(names, s.Name)
			}
		}
		sort.Strings(names)
		cmd, _ := os.ReadFile(d + "/cmdline")
		c := strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
		if len(c) > 100 {
			c = c[:100] + "…"
		}
		out = append(out, foreignProg{pid: pid, cmd: c, names: names})
	}
	return out
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ourPids are the live processes the harness started.
func ourPids() map[int]bool {
	procsMu.Lock()
	defer procsMu.Unlock()
	out := map[int]bool{}
	for p := range liveProcs {
		out[p.pid()] = true
	}
	return out
}
