package collector

import (
	"errors"
	"testing"

	"github.com/ghostconn/ghostconn/bpf"
)

func TestParseCgroupPath(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		path                   string
		pod, container, runtim string
	}{
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice/cri-containerd-" + id + ".scope",
			"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", id, "containerd"},
		{"/kubepods/besteffort/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718/" + id,
			"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", id, ""},
		{"/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice/crio-" + id + ".scope",
			"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", id, "cri-o"},
		{"/kubepods/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718/docker-" + id + ".scope",
			"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", id, "docker"},
		{"/system.slice/docker-" + id + ".scope", "", id, "docker"},
		{"/docker/" + id, "", id, "docker"},
		{"/machine.slice/libpod-" + id + ".scope/container", "", id, "podman"},
		{"/user.slice/user-0.slice/session-1.scope", "", "", ""},
		{"/", "", "", ""},
		{"/kubepods.slice/kubepods-podnotauid.slice/cri-containerd-abc.scope", "", "", ""},
	} {
		cg := ParseCgroupPath(tc.path)
		if cg.PodUID != tc.pod || cg.ContainerID != tc.container || cg.Runtime != tc.runtim || cg.Path != tc.path {
			t.Errorf("%s:\n got pod=%q container=%q runtime=%q\nwant pod=%q container=%q runtime=%q", tc.path, cg.PodUID, cg.ContainerID, cg.Runtime, tc.pod, tc.container, tc.runtim)
		}
	}
}

// TestCgroupCacheRetriesUnresolved: a cgroup whose holders exited before
// its path was read is known by id alone for that walk, and resolved on the
// next walk that finds a live process in it; resolved ones are read once.
func TestCgroupCacheRetriesUnresolved(t *testing.T) {
	cc := newCgroupCache()
	reads := 0
	exited := true
	cc.readPath = func(pid uint32) (string, error) {
		reads++
		if exited {
			return "", errors.New("no such process")
		}
		return "/system.slice/app.service", nil
	}
	recs := []bpf.GhostconnHolderRec{{Pid: 10, CgroupId: 7}, {Pid: 11, CgroupId: 7}}
	first := cc.prime(recs)
	if cg := first[7]; cg == nil || cg.ID != 7 || cg.Path != "" || reads != 2 {
		t.Fatalf("first walk: %+v after %d reads, want id 7 alone after trying both holders", cg, reads)
	}
	exited = false
	second := cc.prime(recs)
	if cg := second[7]; cg == nil || cg.Path != "/system.slice/app.service" || reads != 3 {
		t.Fatalf("second walk: %+v after %d reads, want the path after one more read", cg, reads)
	}
	if third := cc.prime(recs); third[7] != second[7] || reads != 3 {
		t.Fatalf("third walk read again (%d reads) or changed the entry", reads)
	}
}
