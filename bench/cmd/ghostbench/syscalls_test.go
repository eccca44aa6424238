package main

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSyscallLoopsAllocateNothing(t *testing.T) {
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	before := devNullFDs(t)
	loops := syscallLoops(fd)
	if len(loops) != len(taxOps) {
		t.Fatalf("%d loops for %d operations", len(loops), len(taxOps))
	}
	for k, loop := range loops {
		// A zero duration runs one chunk.
		if n := testing.AllocsPerRun(5, func() { timeBatch(loop, 0) }); n != 0 {
			t.Errorf("%s: %v allocations per batch", taxOps[k], n)
		}
	}
	// The dup copies were all closed: the same fds refer to /dev/null as
	// before. (Counting by fd number would not do: the runtime opens files
	// of its own meanwhile, such as the cgroup's cpu.max it keeps reading.)
	if after := devNullFDs(t); after != before {
		t.Errorf("fds that are /dev/null: %s before the loops, %s after: the loop leaks fds", before, after)
	}
}

// devNullFDs lists the fds of this process that refer to /dev/null.
func devNullFDs(t *testing.T) string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == os.DevNull {
			fds = append(fds, e.Name())
		}
	}
	return strings.Join(fds, ",")
}

func TestRoundOrderRotates(t *testing.T) {
	obs := []string{obsBare, obsGhostconn, obsTcpstates}
	for round, want := range []string{
		"bare ghostconn tcpstates",
		"ghostconn tcpstates bare",
		"tcpstates bare ghostconn",
		"bare ghostconn tcpstates",
	} {
		if got := strings.Join(roundOrder(obs, round), " "); got != want {
			t.Errorf("round %d: %s, want %s", round, got, want)
		}
	}
}

func TestTaxGoalsUsePerRoundRatios(t *testing.T) {
	c := &config{taxRounds: 3, taxDur: 1e9, skip: map[string]bool{}}
	r := newResults(c)
	r.taxObservers = []string{obsBare, obsGhostconn, obsTcpstates}
	r.taxRoundsDone = 3
	r.tax[obsBare] = map[string][]float64{opDupClose: {90, 100, 120}, opGetppid: {76, 77, 78}}
	// dup+close: per-round ratios 1.1, 1.2, 1.0 (median 1.1) while the
	// medians give 120/100 = 1.2: the goal must read the former.
	r.tax[obsGhostconn] = map[string][]float64{opDupClose: {99, 120, 120}, opGetppid: {91.2, 92.4, 93.6}} // getppid 1.2x
	r.tax[obsTcpstates] = map[string][]float64{opDupClose: {90, 100, 120}, opGetppid: {76, 77, 78}}
	got := map[string]goal{}
	for _, g := range r.goals() {
		got[g.what] = g
	}
	dc := got["syscall tax on an unrelated process: dup()+close() of a non-socket, agent vs bare"]
	if dc.result != "PASS" || !strings.HasPrefix(dc.measured, "1.100x") {
		t.Errorf("dup+close goal: %+v, want PASS at 1.100x", dc)
	}
	if g := got["syscall tax on an unrelated process: getppid(), agent vs bare"]; g.result != "FAIL" {
		t.Errorf("getppid goal: %+v, want FAIL", g)
	}
	if g := got["syscall tax with tcpstates, vs bare (reference)"]; g.result != "n/a" || !strings.Contains(g.measured, "getppid() 1.000x") {
		t.Errorf("tcpstates reference: %+v", g)
	}
	md := r.markdown()
	for _, s := range []string{"## 5. Syscall tax on an unrelated process", "| ghostconn | dup()+close() of a non-socket | 99.0 | 120.0 | 120.0 | 120.0 ns | 1.100x |"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}
