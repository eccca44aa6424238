package bpf

import (
	"errors"
	"fmt"
	"strings"
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
	since := map[string][2]int{FeatureSocketCookie: {5, 12}, FeatureTaskBTF: {5, 11}, FeatureLoop: {5, 17}, FeatureSockDestroy: {6, 5}, FeatureIterSockopt: {5, 15}}
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
