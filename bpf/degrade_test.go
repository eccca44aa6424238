package bpf

import (
	"errors"
	"strings"
	"testing"

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
