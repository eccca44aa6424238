package bpf

import (
	"net"
	"strings"
	"testing"

	"github.com/ghostconn/ghostconn/internal/privtest"
)

func TestLoadAttachesEveryProgram(t *testing.T) {
	privtest.Require(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	for _, name := range ProgramNames() {
		checkAttached(t, p, name)
	}

	if p.iterDestroy != nil || p.iterKeepalive != nil {
		t.Error("the action iterators were loaded at start, not on first use")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	socks, err := p.Sockets("")
	if err != nil {
		t.Fatalf("iter/tcp: %v", err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	found := false
	for _, s := range socks {
		if s.Sport == port && s.State == 10 {
			found = true
			if s.Cookie == 0 || s.Ino == 0 {
				t.Errorf("listener record lacks cookie or inode: %+v", s)
			}
		}
	}
	if !found {
		t.Fatalf("listener on port %d not in iter/tcp output (%d records)", port, len(socks))
	}
	holders, err := p.Holders()
	if err != nil {
		t.Fatalf("iter/task_file: %v", err)
	}
	if len(holders) == 0 {
		t.Fatal("iter/task_file returned no TCP socket holders although this test holds a listener")
	}
}

// checkAttached fails the test unless the program is attached or this
// kernel lacks what it needs and its error says so.
func checkAttached(t *testing.T, p *Probes, name string) {
	t.Helper()
	err, ok := p.Attached[name]
	if ProbeOnly(name) && p.DirectLoads() {
		// Not needed beside the direct-load hooks: not loaded at all.
		if ok {
			t.Errorf("program %s loaded beside the direct-load hooks, which do not need it: %v", name, err)
		}
		return
	}
	if !ok {
		t.Errorf("program %s neither attached nor said why not", name)
		return
	}
	lacks := KernelLacks(name)
	switch {
	case lacks == "" && err != nil:
		t.Errorf("program %s not attached: %v", name, err)
	case lacks != "" && err == nil:
		t.Errorf("program %s attached although this kernel lacks %s", name, lacks)
	case lacks != "" && !strings.Contains(err.Error(), lacks):
		t.Errorf("program %s not attached for %q, want the missing %s named", name, err, lacks)
	case lacks != "":
		t.Logf("program %s not attached, as expected on this kernel: %v", name, err)
	}
}

// TestVariantPicksByKernel: each hook runs as its direct-load program where
// the kernel has bpf_loop and bpf_rdonly_cast, as its probe-read variant
// where it has only bpf_loop, and as its variant without bpf_loop (probe
// reads too) where it has neither; a hook with no such variant runs as
// itself or, needing bpf_loop, not at all.
func TestVariantPicksByKernel(t *testing.T) {
	byName := map[string]program{}
	for _, p := range programs {
		byName[p.name] = p
	}
	for _, c := range []struct {
		name       string
		loop, cast bool
		want       string
	}{
		{ProgClose, true, true, "sys_enter_close"},
		{ProgClose, true, false, "sys_enter_close_probe"},
		{ProgClose, false, false, "sys_enter_close_noloop"},
		{ProgCloseRange, true, true, "sys_enter_close_range"},
		{ProgCloseRange, true, false, "sys_enter_close_range_probe"},
		{ProgCloseRange, false, false, ""},
		{ProgExit, true, false, "sched_process_exit_probe"},
		{ProgConnectExit, true, true, "sys_exit_connect"},
		{ProgConnectExit, false, false, "sys_exit_connect_probe"},
		{ProgKeepalive, false, false, "timer_expire_entry_probe"},
		{ProgConnect, false, false, "sys_enter_connect"},
		{ProgStateChange, false, false, "inet_sock_set_state"},
	} {
		def, ok := byName[c.name]
		if !ok {
			t.Fatalf("no program %s", c.name)
		}
		if got := variant(def, c.loop, c.cast); got != c.want {
			t.Errorf("%s with bpf_loop=%v rdonly_cast=%v: %q, want %q", c.name, c.loop, c.cast, got, c.want)
		}
	}
}

// TestProbeReadVariantsLoad loads the probe-read variants on a kernel that
// would run the direct-load ones, so that a kernel of 6.2 or later checks
// both: every program attaches either way.
func TestProbeReadVariantsLoad(t *testing.T) {
	privtest.Require(t)
	for _, probe := range []bool{false, true} {
		p, err := Load(Options{ProbeReads: probe})
		if err != nil {
			t.Fatalf("load (probe reads %v): %v", probe, err)
		}
		for _, name := range ProgramNames() {
			checkAttached(t, p, name)
		}
		if want := HasFeature(FeatureCast) && !probe; p.cast != want {
			t.Errorf("probe reads %v: direct loads %v, want %v", probe, p.cast, want)
		}
		p.Close()
	}
}

// TestPatchPlaceholder: the timer hook's compare takes tcp_keepalive_timer's
// address as an immediate, written over the placeholder in both variants;
// an object without the placeholder is refused with the program named.
func TestPatchPlaceholder(t *testing.T) {
	spec, err := LoadGhostconn()
	if err != nil {
		t.Fatal(err)
	}
	const addr = 0xffffffff81234560
	progs := []string{GhostconnProgTimerExpireEntry, GhostconnProgTimerExpireEntryProbe}
	if err := patchPlaceholder(spec, GhostconnPlaceholderPLACEHOLDER_KEEPALIVE_FN, addr, progs...); err != nil {
		t.Fatal(err)
	}
	for _, name := range progs {
		found := false
		for _, ins := range spec.Programs[name].Instructions {
			if ins.OpCode.IsDWordLoad() && uint64(ins.Constant) == uint64(GhostconnPlaceholderPLACEHOLDER_KEEPALIVE_FN) {
				t.Errorf("%s still has the placeholder: %v", name, ins)
			}
			found = found || ins.OpCode.IsDWordLoad() && uint64(ins.Constant) == addr
		}
		if !found {
			t.Errorf("%s: no immediate load of %#x after the patch", name, uint64(addr))
		}
	}
	err = patchPlaceholder(spec, GhostconnPlaceholderPLACEHOLDER_KEEPALIVE_FN, addr, progs...)
	if err == nil || !strings.Contains(err.Error(), "program timer_expire_entry") {
		t.Errorf("second patch, placeholder gone: %v, want the program named", err)
	}
}
