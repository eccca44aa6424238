package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Floor programs are empty programs ("return 0") attached to the same hooks
// as the agent's during a stats window. Their run_time_ns/run_cnt is what
// the kernel charges for a program that does nothing there: the trampoline
// or tracepoint dispatch and the stats' own clock reads, on this machine.
// They tell how much of a hook's mean is the hook's own work.
type floorProgs struct {
	progs map[string]*ebpf.Program // row name -> program
	links []link.Link
}

// floorHooks: row name, kind, hook. Row names sort after the agent's.
var floorHooks = []struct{ row, kind, group, hook string }{
	{"(empty) tp_btf/inet_sock_set_state", "tp_btf", "", "inet_sock_set_state"},
	{"(empty) tp_btf/timer_expire_entry", "tp_btf", "", "timer_expire_entry"},
	{"(empty) tracepoint/syscalls/sys_enter_close", "tracepoint", "syscalls", "sys_enter_close"},
}

func loadFloor() (*floorProgs, error) {
	f := &floorProgs{progs: map[string]*ebpf.Program{}}
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	var errs []error
	for _, h := range floorHooks {
		spec := &ebpf.ProgramSpec{Name: "ghostbench_nop", Instructions: insns, License: "GPL"}
		if h.kind == "tp_btf" {
			spec.Type, spec.AttachType, spec.AttachTo = ebpf.Tracing, ebpf.AttachTraceRawTp, h.hook
		} else {
			spec.Type = ebpf.TracePoint
		}
		prog, err := ebpf.NewProgram(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("load %s: %w", h.row, err))
			continue
		}
		var l link.Link
		if h.kind == "tp_btf" {
			l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		} else {
			l, err = link.Tracepoint(h.group, h.hook, prog, nil)
		}
		if err != nil {
			prog.Close()
			errs = append(errs, fmt.Errorf("attach %s: %w", h.row, err))
			continue
		}
		f.progs[h.row] = prog
		f.links = append(f.links, l)
	}
	return f, errors.Join(errs...)
}

func (f *floorProgs) read() map[string]progStat {
	out := map[string]progStat{}
	for row, p := range f.progs {
		if s, err := p.Stats(); err == nil {
			out[row] = progStat{Name: row, RunNs: uint64(s.Runtime), RunCnt: s.RunCount, Misses: s.RecursionMisses}
		}
	}
	return out
}

func (f *floorProgs) close() {
	for _, l := range f.links {
		l.Close()
	}
	for _, p := range f.progs {
		p.Close()
	}
}
