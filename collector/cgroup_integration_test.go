package collector_test

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// cgroup2Mount finds where the unified hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 2 && fields[2] == "cgroup2" {
			return fields[1]
		}
	}
	t.Fatal("no cgroup2 mount")
	return ""
}

// TestContainerAttribution puts a process holding a connection into a
// cgroup v2 laid out as the kubelet and containerd lay it out, and expects
// its holder record to carry the cgroup, the pod UID and the container id.
func TestContainerAttribution(t *testing.T) {
	c := startCollector(t, collector.Config{})
	root := cgroup2Mount(t)
	b := make([]byte, 32)
	rand.Read(b)
	container := hex.EncodeToString(b)
	pod := "1f2e3d4c-5b6a-4980-a1b2-c3d4e5f60718"
	rel := filepath.Join(fmt.Sprintf("gctest-%d", os.Getpid()), "kubepods.slice", "kubepods-besteffort.slice",
		"kubepods-besteffort-pod"+strings.ReplaceAll(pod, "-", "_")+".slice", "cri-containerd-"+container+".scope")
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Remove bottom-up once the process has left.
		for d := dir; d != root; d = filepath.Dir(d) {
			os.Remove(d)
		}
	})

	client, server := pair(t, "tcp4", "127.0.0.1:0")
	defer server.Close()
	f, err := client.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "60")
	child.ExtraFiles = []*os.File{f}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
	})
	f.Close()
	local, remote := client.LocalAddr().String(), client.RemoteAddr().String()
	client.Close()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the holder into %s: %v", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel's cgroup id is the inode of the cgroup's directory.
	ino := fi.Sys().(*syscall.Stat_t).Ino

	if err := c.Reconcile(); err != nil {
		t.Fatal(err)
	}
	var h collector.Holder
	testutil.Eventually(t, 10*time.Second, "the holder to carry its cgroup", func() (bool, string) {
		views := c.Table().List(time.Now(), collector.ListOptions{Match: tuple(local, remote, collector.StateEstablished)})
		if len(views) == 1 && len(views[0].Holders) == 1 && views[0].Holders[0].Cgroup != nil && views[0].Holders[0].Cgroup.Path != "" {
			h = views[0].Holders[0]
			return true, ""
		}
		c.RefreshHolders()
		return false, fmt.Sprintf("%+v", views)
	})
	if h.PID != uint32(child.Process.Pid) {
		t.Errorf("holder pid %d, want %d", h.PID, child.Process.Pid)
	}
	cg := h.Cgroup
	if cg.Path != "/"+rel || cg.PodUID != pod || cg.ContainerID != container || cg.Runtime != "containerd" || cg.ID != ino {
		t.Errorf("cgroup %+v, want id %d path /%s pod %s container %s runtime containerd", cg, ino, rel, pod, container)
	}
}
