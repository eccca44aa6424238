package collector

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/ghostconn/ghostconn/bpf"
)

// Cgroup says which cgroup v2 a holder runs in and, for containers, which
// pod and container that is.
type Cgroup struct {
	ID   uint64 `json:"id"`
	Path string `json:"path,omitempty"`
	// PodUID and ContainerID are parsed from Path for Kubernetes and
	// container runtimes; Runtime is "containerd", "cri-o" or "docker"
	// when the path says.
	PodUID      string `json:"pod_uid,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
}

var (
	// kubelet writes the pod UID with dashes (cgroupfs driver) or
	// underscores (systemd driver): kubepods-besteffort-pod<uid>.slice,
	// /kubepods/burstable/pod<uid>/.
	podUIDRe = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
	// cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope,
	// libpod-<id>.scope, or a bare <id> directory (cgroupfs driver).
	containerRe = regexp.MustCompile(`^(cri-containerd-|crio-|docker-|libpod-|containerd-)?([0-9a-f]{64})(\.scope)?$`)
	runtimes    = map[string]string{"cri-containerd-": "containerd", "containerd-": "containerd", "crio-": "cri-o", "docker-": "docker", "libpod-": "podman"}
)

// ParseCgroupPath fills PodUID, ContainerID and Runtime from a cgroup v2
// path such as
// /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_..._.slice/cri-containerd-<64 hex>.scope.
func ParseCgroupPath(path string) Cgroup {
	cg := Cgroup{Path: path}
	if m := podUIDRe.FindStringSubmatch(path); m != nil {
		cg.PodUID = strings.ReplaceAll(m[1], "_", "-")
	}
	elems := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(elems) - 1; i >= 0; i-- {
		m := containerRe.FindStringSubmatch(elems[i])
		if m == nil {
			continue
		}
		cg.ContainerID, cg.Runtime = m[2], runtimes[m[1]]
		if cg.Runtime == "" && i > 0 && elems[i-1] == "docker" {
			cg.Runtime = "docker" // /docker/<id>
		}
		break
	}
	return cg
}

// cgroupCache maps cgroup ids to what their paths say. Paths are read from
// /proc/PID/cgroup of a process in the cgroup, outside the table's lock,
// once per cgroup.
type cgroupCache struct {
	mu   sync.Mutex
	byID map[uint64]*Cgroup // shared by every holder in the cgroup; never changed
	// readPath returns the cgroup v2 path of pid; tests replace it.
	readPath func(pid uint32) (string, error)
}

func newCgroupCache() *cgroupCache {
	return &cgroupCache{byID: map[uint64]*Cgroup{}, readPath: procCgroupPath}
}

// prime resolves every cgroup id in recs and returns the cgroups by id for
// this walk. It forgets ids no holder is in any more, so the cache stays as
// large as the number of cgroups that hold TCP sockets. An id whose every
// process exited before its path could be read gets an entry with the id
// alone, so holders in it compare equal; the next walk tries it again.
func (cc *cgroupCache) prime(recs []bpf.GhostconnHolderRec) map[uint64]*Cgroup {
	cc.mu.Lock()
	old := cc.byID
	cc.mu.Unlock()
	next := make(map[uint64]*Cgroup, len(old))
	for i := range recs {
		id := recs[i].CgroupId
		if id == 0 {
			continue
		}
		if cg, ok := next[id]; ok && cg.Path != "" {
			continue
		}
		if cg, ok := old[id]; ok && cg.Path != "" {
			next[id] = cg
			continue
		}
		path, err := cc.readPath(recs[i].Pid)
		if err != nil {
			// Exited; another holder in the cgroup may tell.
			if _, ok := next[id]; !ok {
				next[id] = &Cgroup{ID: id}
			}
			continue
		}
		cg := ParseCgroupPath(path)
		cg.ID = id
		next[id] = &cg
	}
	cc.mu.Lock()
	cc.byID = next
	cc.mu.Unlock()
	return next
}

// procCgroupPath reads the unified (v2) hierarchy line, "0::/path", of
// /proc/PID/cgroup.
func procCgroupPath(pid uint32) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no cgroup v2 line in /proc/%d/cgroup", pid)
}
