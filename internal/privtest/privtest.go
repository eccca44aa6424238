// Package privtest decides whether a test that needs root and a BPF-capable
// kernel runs. Outside CI such tests skip with the reason; in CI (CI=true)
// they never skip, so a kernel or privilege problem fails the build.
package privtest

import (
	"os"
	"testing"
)

// Require skips t outside CI when the process is not root, and fails it in
// CI for the same reason.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged eBPF test needs root in CI (euid=%d)", os.Geteuid())
	}
	t.Skipf("skipping privileged eBPF test: needs root (euid=%d); CI=true runs it", os.Geteuid())
}
