package bpf

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/ghostconn/ghostconn/internal/privtest"
)

// TestOptionalAttachFailureDegrades forces real attach failures, as a
// kernel without a hook gives them: the keepalive program and the
// setsockopt hook are pointed at tracepoints that do not exist. Load must
// still succeed, say why each is detached, and attach every other program.
func TestOptionalAttachFailureDegrades(t *testing.T) {
	privtest.Require(t)
	saved := programs
	t.Cleanup(func() { programs = saved })
	programs = append([]program(nil), saved...)
	broken := map[string]bool{ProgKeepalive: true, ProgSetsockopt: true}
	for i := range programs {
		if broken[programs[i].name] {
			programs[i].kind, programs[i].group = "tracepoint", "ghostconn_no_such_group"
		}
	}
	p, err := Load(Options{})
	if err != nil {
		t.Fatalf("load with two optional programs failing: %v", err)
	}
	defer p.Close()
	for _, name := range ProgramNames() {
		err := p.Attached[name]
		switch {
		case broken[name] && err == nil:
			t.Errorf("%s attached to a tracepoint that does not exist", name)
		case broken[name] && (errors.Is(err, ErrSkipped) || !strings.Contains(err.Error(), "attach tracepoint/ghostconn_no_such_group/"+name)):
			t.Errorf("%s: %v, want the attach failure named", name, err)
		case !broken[name]:
			checkAttached(t, p, name)
		}
	}
}

// TestRefusedProgramLoadsOthersAlone: the programs load in one collection,
// and when the verifier refuses one of them, the others still load, each
// on its own, and the refused one is named with the verifier's reason.
func TestRefusedProgramLoadsOthersAlone(t *testing.T) {
	privtest.Require(t)
	spec, err := LoadGhostconn()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["closes"].Pinning = ebpf.PinNone
	// As Load does, so that a kernel without a helper (5.10: no socket
	// cookies in tracing programs) sees its calls as dead code.
	if err := setFeatureConsts(spec, 0); err != nil {
		t.Fatal(err)
	}
	// Exit without setting R0: the verifier refuses that in any program.
	spec.Programs[ProgRetransmit].Instructions = asm.Instructions{asm.Return()}
	defs := []program{}
	for _, def := range programs {
		if def.name == ProgRetransmit || def.name == ProgStateChange || def.name == ProgIterTCP {
			defs = append(defs, def)
		}
	}
	progs, errs := loadPrograms(spec, defs, nil, HasFeature(FeatureCast))
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	if err := errs[ProgRetransmit]; err == nil || !strings.Contains(err.Error(), "load "+ProgRetransmit) || !strings.Contains(err.Error(), "R0") {
		t.Errorf("refused program: %v, want its load named with the verifier's reason", err)
	}
	for _, name := range []string{ProgStateChange, ProgIterTCP} {
		if progs[name] == nil || errs[name] != nil {
			t.Errorf("%s not loaded beside the refused program: %v", name, errs[name])
		}
	}
	if progs[ProgRetransmit] != nil {
		t.Errorf("%s loaded although refused", ProgRetransmit)
	}
}
