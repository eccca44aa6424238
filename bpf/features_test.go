package bpf

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/internal/privtest"
)

// kernelVersion is the running kernel's major and minor version.
func kernelVersion(t *testing.T) [2]int {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var v [2]int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &v[0], &v[1]); err != nil {
		t.Fatalf("parse kernel release %q: %v", u.Release, err)
	}
	return v
}

// TestKernelFeaturesMatchRelease checks each probe against the release
// that brought the feature: a probe that said no on a kernel that has it
// (or yes on one that does not) would run the agent degraded for nothing,
// or load programs the verifier refuses.
func TestKernelFeaturesMatchRelease(t *testing.T) {
	privtest.Require(t)
	since := map[string][2]int{FeatureSocketCookie: {5, 12}, FeatureTaskBTF: {5, 11}, FeatureLoop: {5, 17}, FeatureSockDestroy: {6, 5}, FeatureIterSockopt: {5, 15}, FeatureCast: {6, 2}}
	v := kernelVersion(t)
	fs := KernelFeatures()
	if len(fs) != len(since) {
		t.Fatalf("%d features, want %d", len(fs), len(since))
	}
	for _, f := range fs {
		s, ok := since[f.Name]
		if !ok {
			t.Errorf("feature %s has no release in this test", f.Name)
			continue
		}
		want := v[0] > s[0] || v[0] == s[0] && v[1] >= s[1]
		if got := f.Err == nil; got != want {
			t.Errorf("kernel %d.%d: feature %s available=%v (%v), want %v (it came in %d.%d)", v[0], v[1], f.Name, got, f.Err, want, s[0], s[1])
		}
		if f.Err != nil && !errors.Is(f.Err, ebpf.ErrNotSupported) {
			t.Errorf("feature %s: the probe failed (%v) rather than finding it missing", f.Name, f.Err)
		}
		if !strings.Contains(f.Needs, "Linux") || f.Without == "" {
			t.Errorf("feature %s does not say what it needs and what degrades: %+v", f.Name, f)
		}
		t.Logf("%s: available=%v (%s)", f.Name, f.Err == nil, f.Needs)
	}
	if IDsAreCookies() != HasFeature(FeatureSocketCookie) {
		t.Error("IDsAreCookies disagrees with the socket_cookie feature")
	}
}

// TestSelfTGID: in the host's pid namespace the agent's pid is its own;
// in another one (a container without hostPID) it is not known, and
// SelfTGID says 0 rather than a pid that belongs to another process.
func TestSelfTGID(t *testing.T) {
	if os.Getenv("GHOSTCONN_SELFTGID_CHILD") != "" {
		fmt.Printf("selftgid=%d pid=%d\n", SelfTGID(), os.Getpid())
		return
	}
	privtest.Require(t)
	if link, _ := os.Readlink("/proc/self/ns/pid"); link != fmt.Sprintf("pid:[%d]", initPidNSInode) {
		t.Fatalf("the tests run in pid namespace %s, not the initial one", link)
	}
	if got := SelfTGID(); got != uint32(os.Getpid()) {
		t.Errorf("SelfTGID() = %d in the initial pid namespace, want %d", got, os.Getpid())
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSelfTGID$")
	cmd.Env = append(os.Environ(), "GHOSTCONN_SELFTGID_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in a new pid namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "selftgid=0 pid=1\n") {
		t.Errorf("in a new pid namespace: %s, want SelfTGID 0 (and pid 1)", out)
	}
}

// TestFeatureProbeFailureRefusesLoad: a probe that fails for another
// reason than a missing feature (here EPERM) must not pass for a kernel
// without the feature: Load refuses, naming the probe, and the next call
// probes again.
func TestFeatureProbeFailureRefusesLoad(t *testing.T) {
	privtest.Require(t)
	saved := featureDefs
	calls := 0
	featureDefs = append(featureDefs[:0:0], saved...)
	featureDefs[0].probe = func() error { calls++; return fmt.Errorf("load probe: %w", unix.EPERM) }
	featuresMu.Lock()
	featuresKnown = nil
	featuresMu.Unlock()
	t.Cleanup(func() {
		featureDefs = saved
		featuresMu.Lock()
		featuresKnown = nil
		featuresMu.Unlock()
	})
	p, err := Load(Options{})
	if err == nil {
		p.Close()
		t.Fatal("Load succeeded although a feature probe failed with EPERM")
	}
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "probe for "+featureDefs[0].Name) {
		t.Errorf("Load: %v, want the failed probe of %s named", err, featureDefs[0].Name)
	}
	KernelFeatures()
	if calls < 2 {
		t.Errorf("the failed probe ran %d time(s), want it tried again", calls)
	}
}
