// Package testnet builds throwaway network namespaces for privileged tests
// and runs code inside them. Everything it creates is removed by t.Cleanup.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Cmd runs a command and fails the test with its output if it fails.
func Cmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Netns creates a network namespace with its loopback up and returns its
// name; `ip netns del` removes it at cleanup.
func Netns(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "gctest-" + hex.EncodeToString(b)
	Cmd(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	Cmd(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Path is the bind mount that opens a namespace made by Netns.
func Path(name string) string { return "/run/netns/" + name }

// In runs fn on an OS thread that has joined namespace name. Sockets fn
// creates stay in that namespace after fn returns.
func In(t testing.TB, name string, fn func()) {
	t.Helper()
	InPath(t, Path(name), fn)
}

// InPath is In for the namespace that path opens, such as
// /proc/PID/ns/net of a process in a container.
func InPath(t testing.TB, path string, fn func()) {
	t.Helper()
	target, err := os.Open(path)
	if err != nil {
		t.Fatalf("open netns %s: %v", path, err)
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatalf("open own netns: %v", err)
	}
	defer self.Close()
	done := make(chan struct{})
	var failed string
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			failed = "setns: " + err.Error()
			return
		}
		fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// Keep the thread locked: it dies with the goroutine.
			failed = "setns back: " + err.Error()
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if failed != "" {
		t.Fatal(failed)
	}
}

// Veth joins namespaces a and b with a veth pair, addressing the ends
// addrA and addrB (CIDR form, for example "10.231.0.1/24").
func Veth(t testing.TB, a, b, addrA, addrB string) {
	t.Helper()
	Cmd(t, "ip", "-n", a, "link", "add", "gca", "type", "veth", "peer", "name", "gcb", "netns", b)
	Cmd(t, "ip", "-n", a, "addr", "add", addrA, "dev", "gca")
	Cmd(t, "ip", "-n", b, "addr", "add", addrB, "dev", "gcb")
	Cmd(t, "ip", "-n", a, "link", "set", "gca", "up")
	Cmd(t, "ip", "-n", b, "link", "set", "gcb", "up")
}

// DropInput makes namespace ns silently drop incoming TCP segments for
// port, so the peer retransmits into the void.
func DropInput(t testing.TB, ns string, port int) {
	t.Helper()
	rules := "table inet gctest {\n chain in {\n  type filter hook input priority 0;\n  tcp dport " + strconv.Itoa(port) + " drop\n  tcp sport " + strconv.Itoa(port) + " drop\n }\n}\n"
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}
