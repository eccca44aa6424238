package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// progStat is one program's cumulative kernel counters
// (kernel.bpf_stats_enabled=1 makes the kernel keep them).
type progStat struct {
	ID     uint32
	Name   string // full name: cilium/ebpf resolves the 15-char kernel name through BTF
	RunNs  uint64
	RunCnt uint64
	Misses uint64 // runs skipped because another program was running on the CPU
}

// progDelta is what one program did during a measurement window.
type progDelta struct {
	Name   string
	RunNs  uint64
	RunCnt uint64
	Misses uint64
}

func (d progDelta) meanNs() float64 {
	if d.RunCnt == 0 {
		return 0
	}
	return float64(d.RunNs) / float64(d.RunCnt)
}

// pidProgIDs lists the ids of the bpf programs a process holds, directly or
// through links, from /proc/PID/fdinfo ("prog_id:" lines).
func pidProgIDs(pid int) ([]uint32, error) { return pidFdinfoIDs(pid, "prog_id:") }

// pidFdinfoIDs collects, sorted and without repeats, the numbers after key
// ("prog_id:", "map_id:") in every /proc/PID/fdinfo entry.
func pidFdinfoIDs(pid int, key string) ([]uint32, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	seen := map[uint32]bool{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // fd closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, key); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					seen[uint32(id)] = true
				}
			}
		}
	}
	ids := make([]uint32, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// readProgStats reads the counters of the programs a process holds.
func readProgStats(pid int) (map[uint32]progStat, error) {
	ids, err := pidProgIDs(pid)
	if err != nil {
		return nil, err
	}
	out := map[uint32]progStat{}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			continue
		}
		ps, err := p.Stats()
		p.Close()
		if err != nil {
			continue
		}
		out[id] = progStat{ID: id, Name: info.Name, RunNs: uint64(ps.Runtime), RunCnt: ps.RunCount, Misses: ps.RecursionMisses}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("pid %d holds no bpf programs", pid)
	}
	return out, nil
}

// diffProgStats returns per-program deltas, keyed by program name.
func diffProgStats(before, after map[uint32]progStat) map[string]progDelta {
	out := map[string]progDelta{}
	for id, a := range after {
		b := before[id]
		d := out[a.Name]
		d.Name = a.Name
		d.RunNs += a.RunNs - b.RunNs
		d.RunCnt += a.RunCnt - b.RunCnt
		d.Misses += a.Misses - b.Misses
		out[a.Name] = d
	}
	return out
}

// statsWindow measures what a process's programs do while fn runs, with
// kernel.bpf_stats_enabled=1 for the window only (restored afterwards, and by
// the cleanup if the harness dies inside it). With floor, empty programs on
// the same hooks are measured alongside (see floor.go).
func statsWindow(pid int, floor bool, fn func() error) (map[string]progDelta, error) {
	restore, err := sysctl(bpfStatsSysctl, "1")
	if err != nil {
		return nil, err
	}
	defer restore()
	// Also hold a BPF_ENABLE_STATS fd: the kernel keeps stats on while any
	// is open, so another tool writing 0 to the sysctl meanwhile cannot
	// turn them off under the window.
	if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer st.Close()
	}
	var fl *floorProgs
	if floor {
		fl, err = loadFloor()
		if err != nil {
			logf("floor programs: %v", err)
		}
		undo := onCleanup("detach floor programs", fl.close)
		defer undo()
	}
	before, err := readProgStats(pid)
	if err != nil {
		return nil, err
	}
	var fb map[string]progStat
	if fl != nil {
		fb = fl.read()
	}
	if err := fn(); err != nil {
		return nil, err
	}
	var fa map[string]progStat
	if fl != nil {
		fa = fl.read()
	}
	after, err := readProgStats(pid)
	if err != nil {
		return nil, err
	}
	out := diffProgStats(before, after)
	for row, a := range fa {
		b := fb[row]
		out[row] = progDelta{Name: row, RunNs: a.RunNs - b.RunNs, RunCnt: a.RunCnt - b.RunCnt, Misses: a.Misses - b.Misses}
	}
	return out, nil
}
