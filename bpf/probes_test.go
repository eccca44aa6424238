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
	err := p.Attached[name]
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
