package deploy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testnet"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// podSpec is what podmanArgs makes of the DaemonSet's pod: podman's
// arguments, and what the test needs to reach the agent inside.
type podSpec struct {
	// args go between `podman run` and the image; command follows it.
	args, command []string
	// readyPath and readyPort are the readiness probe's HTTP GET.
	readyPath string
	readyPort int
	// hostDirs are the host paths mounted, by volume name.
	hostDirs map[string]string
}

// podmanArgs turns the DaemonSet's pod template into `podman run`
// arguments that give the container the same security context: user,
// capabilities, no_new_privs, read-only root, seccomp and AppArmor
// profiles, host namespaces, hostPath mounts and memory limit. A field
// it cannot translate is an error rather than dropped, so that the
// DaemonSet cannot grow a setting the test does not run with. hostPath
// maps a volume's host path to the one to use (the test's own run
// directory instead of the host's /run/ghostconn); args replaces
// container arguments by flag name (--pin-dir=...).
func podmanArgs(ds *appsv1.DaemonSet, hostPath func(name, path string) string, replaceArgs map[string]string) (podSpec, error) {
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		return podSpec{}, fmt.Errorf("want one container and no init containers, have %d and %d", len(pod.Containers), len(pod.InitContainers))
	}
	if psc := pod.SecurityContext; psc != nil && (psc.RunAsUser != nil || psc.RunAsGroup != nil || psc.RunAsNonRoot != nil ||
		psc.SeccompProfile != nil || psc.AppArmorProfile != nil || psc.SELinuxOptions != nil || len(psc.Sysctls) > 0 ||
		len(psc.SupplementalGroups) > 0 || psc.FSGroup != nil) {
		return podSpec{}, fmt.Errorf("pod-level securityContext %+v: not translated to podman; set it on the container", *psc)
	}
	if pod.HostUsers != nil && !*pod.HostUsers {
		return podSpec{}, fmt.Errorf("hostUsers: false (a user namespace changes what the capabilities grant): not translated to podman")
	}
	if pod.RuntimeClassName != nil {
		return podSpec{}, fmt.Errorf("runtimeClassName %s: not translated to podman", *pod.RuntimeClassName)
	}
	c := pod.Containers[0]
	if len(c.EnvFrom) > 0 || len(c.VolumeDevices) > 0 {
		return podSpec{}, fmt.Errorf("container %s: envFrom or volumeDevices: not translated to podman", c.Name)
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 || p.HostIP != "" {
			return podSpec{}, fmt.Errorf("port %s: hostPort or hostIP: not translated to podman", p.Name)
		}
	}
	for name := range c.Resources.Limits {
		if name != corev1.ResourceMemory && name != corev1.ResourceCPU {
			return podSpec{}, fmt.Errorf("limit %s: not translated to podman", name)
		}
	}
	s := podSpec{hostDirs: map[string]string{}}
	if pod.HostPID {
		s.args = append(s.args, "--pid=host")
	}
	if pod.HostIPC {
		s.args = append(s.args, "--ipc=host")
	}
	if pod.HostNetwork {
		s.args = append(s.args, "--network=host")
	} else {
		// A namespace of its own, as a pod has (without the CNI's
		// interface: the agent needs none).
		s.args = append(s.args, "--network=none")
	}

	sc := c.SecurityContext
	if sc == nil {
		return podSpec{}, fmt.Errorf("container %s has no securityContext", c.Name)
	}
	if sc.SELinuxOptions != nil || sc.WindowsOptions != nil || sc.ProcMount != nil || sc.RunAsGroup != nil {
		return podSpec{}, fmt.Errorf("securityContext sets seLinuxOptions, windowsOptions, procMount or runAsGroup: not translated to podman")
	}
	if sc.RunAsUser == nil {
		return podSpec{}, fmt.Errorf("securityContext.runAsUser unset: the image's user would decide")
	}
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && *sc.RunAsUser == 0 {
		return podSpec{}, fmt.Errorf("runAsNonRoot with runAsUser 0: the kubelet would refuse the pod")
	}
	s.args = append(s.args, fmt.Sprintf("--user=%d:0", *sc.RunAsUser))
	if sc.Privileged != nil && *sc.Privileged {
		s.args = append(s.args, "--privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || !*sc.AllowPrivilegeEscalation {
		// Unset counts as false only without CAP_SYS_ADMIN; the manifest
		// test requires it set.
		if sc.AllowPrivilegeEscalation == nil {
			return podSpec{}, fmt.Errorf("allowPrivilegeEscalation unset")
		}
		s.args = append(s.args, "--security-opt=no-new-privileges")
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		// podman would add tmpfs on /run, /tmp and /var/tmp; Kubernetes
		// adds none.
		s.args = append(s.args, "--read-only", "--read-only-tmpfs=false")
	}
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			s.args = append(s.args, "--cap-drop="+podmanCap(string(d)))
		}
		for _, a := range sc.Capabilities.Add {
			s.args = append(s.args, "--cap-add="+podmanCap(string(a)))
		}
	}
	if p := sc.SeccompProfile; p != nil {
		switch p.Type {
		case corev1.SeccompProfileTypeRuntimeDefault: // podman's default profile
		case corev1.SeccompProfileTypeUnconfined:
			s.args = append(s.args, "--security-opt=seccomp=unconfined")
		default:
			return podSpec{}, fmt.Errorf("seccompProfile %s: not translated to podman", p.Type)
		}
	}
	if p := sc.AppArmorProfile; p != nil {
		switch p.Type {
		case corev1.AppArmorProfileTypeRuntimeDefault:
		case corev1.AppArmorProfileTypeUnconfined:
			s.args = append(s.args, "--security-opt=apparmor=unconfined")
		default:
			return podSpec{}, fmt.Errorf("appArmorProfile %s: not translated to podman", p.Type)
		}
	}

	if mem, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		s.args = append(s.args, fmt.Sprintf("--memory=%d", mem.Value()))
	}
	if cpu, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		s.args = append(s.args, "--cpus="+cpu.AsDec().String())
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			return podSpec{}, fmt.Errorf("env %s from %v: not translated to podman", e.Name, e.ValueFrom)
		}
		s.args = append(s.args, "--env="+e.Name+"="+e.Value)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok || v.HostPath == nil {
			return podSpec{}, fmt.Errorf("volume mount %s: only hostPath volumes are translated to podman", m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" || m.RecursiveReadOnly != nil ||
			(m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone) {
			return podSpec{}, fmt.Errorf("volume mount %s: subPath, recursiveReadOnly or mount propagation are not translated to podman", m.Name)
		}
		src := hostPath(m.Name, v.HostPath.Path)
		typ := corev1.HostPathUnset
		if v.HostPath.Type != nil {
			typ = *v.HostPath.Type
		}
		switch typ {
		case corev1.HostPathDirectory:
			if st, err := os.Stat(src); err != nil || !st.IsDir() {
				return podSpec{}, fmt.Errorf("volume %s: hostPath %s must be a directory (type Directory): %v", m.Name, src, err)
			}
		case corev1.HostPathDirectoryOrCreate:
			if err := os.MkdirAll(src, 0o755); err != nil {
				return podSpec{}, fmt.Errorf("volume %s: %w", m.Name, err)
			}
		default:
			return podSpec{}, fmt.Errorf("volume %s: hostPath type %q not translated to podman", m.Name, typ)
		}
		opt := "rw"
		if m.ReadOnly {
			opt = "ro"
		}
		s.args = append(s.args, "--volume="+src+":"+m.MountPath+":"+opt)
		s.hostDirs[m.Name] = src
	}

	if len(c.Command) == 0 {
		return podSpec{}, fmt.Errorf("container %s has no command", c.Name)
	}
	s.args = append(s.args, "--entrypoint="+c.Command[0])
	s.command = append(s.command, c.Command[1:]...)
	for _, a := range c.Args {
		name, _, _ := strings.Cut(a, "=")
		if v, ok := replaceArgs[name]; ok {
			a = name + "=" + v
		}
		s.command = append(s.command, a)
	}

	probe := c.ReadinessProbe
	if probe == nil || probe.HTTPGet == nil {
		return podSpec{}, fmt.Errorf("container %s has no HTTP readiness probe", c.Name)
	}
	s.readyPath = probe.HTTPGet.Path
	s.readyPort = probe.HTTPGet.Port.IntValue()
	for _, p := range c.Ports {
		if p.Name == probe.HTTPGet.Port.String() {
			s.readyPort = int(p.ContainerPort)
		}
	}
	if s.readyPort == 0 {
		return podSpec{}, fmt.Errorf("readiness probe port %s: no such container port", probe.HTTPGet.Port.String())
	}
	return s, nil
}

// podmanCap spells a Kubernetes capability (BPF) as podman does
// (CAP_BPF); ALL stays.
func podmanCap(c string) string {
	if c == "ALL" {
		return "all"
	}
	return "CAP_" + c
}

// TestPodmanArgsRefusesWhatItCannotRun: a DaemonSet setting that has no
// podman equivalent here fails the translation instead of being dropped.
func TestPodmanArgsRefusesWhatItCannotRun(t *testing.T) {
	base := baseObjects(t)["DaemonSet"].(*appsv1.DaemonSet)
	keep := func(_, p string) string { return p }
	if _, err := podmanArgs(base, keep, nil); err != nil {
		t.Fatalf("the DaemonSet itself: %v", err)
	}
	for name, change := range map[string]func(ds *appsv1.DaemonSet){
		"selinux": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].SecurityContext.SELinuxOptions = &corev1.SELinuxOptions{Type: "spc_t"}
		},
		"seccomp localhost": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost}
		},
		"pod-level runAsUser": func(ds *appsv1.DaemonSet) {
			u := int64(0)
			ds.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &u}
		},
		"emptyDir volume": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
		},
		"propagation": func(ds *appsv1.DaemonSet) {
			p := corev1.MountPropagationBidirectional
			ds.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPropagation = &p
		},
		"env from": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].Env = append(ds.Spec.Template.Spec.Containers[0].Env,
				corev1.EnvVar{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}})
		},
		"user namespace": func(ds *appsv1.DaemonSet) {
			f := false
			ds.Spec.Template.Spec.HostUsers = &f
		},
		"host port": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].Ports[0].HostPort = 9977
		},
		"gpu limit": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"] = resource.MustParse("1")
		},
		"sidecar": func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Containers = append(ds.Spec.Template.Spec.Containers, corev1.Container{Name: "other"})
		},
	} {
		ds := base.DeepCopy()
		change(ds)
		if _, err := podmanArgs(ds, keep, nil); err == nil {
			t.Errorf("%s: translated without an error", name)
		}
	}
	s, err := podmanArgs(base, keep, map[string]string{"--pin-dir": "/sys/fs/bpf/x"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--pid=host", "--network=none", "--user=0:0", "--security-opt=no-new-privileges",
		"--read-only", "--cap-drop=all", "--cap-add=CAP_BPF", "--security-opt=apparmor=unconfined",
		"--volume=/sys/kernel/btf:/sys/kernel/btf:ro", "--volume=/sys/fs/bpf:/sys/fs/bpf:rw"} {
		if !slices.Contains(s.args, want) {
			t.Errorf("podman args %q lack %s", s.args, want)
		}
	}
	if slices.Contains(s.args, "--privileged") {
		t.Errorf("podman args %q: privileged", s.args)
	}
	if !slices.Contains(s.command, "--pin-dir=/sys/fs/bpf/x") || s.readyPath != "/readyz" || s.readyPort != 9977 {
		t.Errorf("command %q, readiness %s on %d", s.command, s.readyPath, s.readyPort)
	}
}

// TestImageUnderPodman builds the image as `make image` does, loads it
// back from its oci-archive, and runs it under podman with the DaemonSet's
// security context and mounts, read from kubernetes/daemonset.yaml. The
// agent in the container becomes ready, its readiness probe answers on the
// metrics port in the container's network namespace, and a ghost that this
// test (a host process, outside the container) makes is flagged with this
// process's pid as its holder, read through `ghostconn ls` on the host
// from the API socket the container shares.
func TestImageUnderPodman(t *testing.T) {
	privtest.Require(t)
	podman := requireTool(t, "podman", "podman")
	requireTool(t, "buildah", "buildah")
	// crun refuses hybrid cgroup hierarchies (cgroup v1 with a v2 mount
	// that has controllers, as on this machine kind); runc runs on both.
	runc := requireTool(t, "runc", "runc")
	bin := agentBinary(t)
	hostMounts(t)

	// The image, built by the script behind `make image`, under a name of
	// this test's own, then removed and loaded back from the archive.
	image := fmt.Sprintf("localhost/ghostconn:test-%d", os.Getpid())
	archive := filepath.Join(t.TempDir(), "image.tar")
	build := exec.Command("../scripts/image.sh", bin)
	build.Env = append(os.Environ(), "GHOSTCONN_IMAGE="+image, "GHOSTCONN_IMAGE_TAR="+archive)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(podman, "rmi", "--force", image).Run() })
	run(t, ".", podman, "rmi", image)
	if out := run(t, ".", podman, "load", "--quiet", "--input", archive); !strings.Contains(out, image) {
		t.Fatalf("podman load of %s: %q, want %s", archive, out, image)
	}
	var cfg []struct {
		Architecture string
		Config       struct{ Entrypoint, Cmd []string }
		RootFS       struct{ Layers []string }
	}
	if err := json.Unmarshal([]byte(run(t, ".", podman, "image", "inspect", image)), &cfg); err != nil || len(cfg) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	if cfg[0].Architecture != "amd64" && cfg[0].Architecture != "arm64" || !slices.Equal(cfg[0].Config.Entrypoint, []string{"/usr/local/bin/ghostconn"}) ||
		!slices.Equal(cfg[0].Config.Cmd, []string{"agent"}) || len(cfg[0].RootFS.Layers) != 1 {
		t.Errorf("image config %+v: want one layer, entrypoint /usr/local/bin/ghostconn, cmd agent", cfg[0])
	}

	ds := baseObjects(t)["DaemonSet"].(*appsv1.DaemonSet)
	runDir := t.TempDir()
	pinDir := tempPinDir(t)
	spec, err := podmanArgs(ds, func(name, path string) string {
		if name == "run" {
			return runDir // not the host's /run/ghostconn, which an agent there may use
		}
		return path
	}, map[string]string{"--pin-dir": pinDir})
	if err != nil {
		t.Fatalf("daemonset.yaml: %v", err)
	}
	name := fmt.Sprintf("ghostconn-test-%d", os.Getpid())
	args := append([]string{"--runtime", runc, "run", "--detach", "--name", name,
		// podman as root asks for 1048576 open files and processes unless
		// told, which a host without CAP_SYS_RESOURCE refuses; a kubelet's
		// container inherits the runtime's limits, so these are the test's.
		"--ulimit", "nofile=" + rlimit(t, unix.RLIMIT_NOFILE),
		// RLIMIT_NPROC never binds uid 0: any value the host allows.
		"--ulimit", "nproc=4096:4096",
	}, spec.args...)
	args = append(append(args, image), spec.command...)
	t.Logf("podman %s", strings.Join(args, " "))
	run(t, ".", podman, args...)
	ctr := &container{t: t, podman: podman, name: name}
	t.Cleanup(ctr.remove)

	// The agent's pid as the host sees it, and its network namespace.
	pid := ctr.pid()
	if self, _ := os.Readlink("/proc/self/ns/net"); mustReadlink(t, fmt.Sprintf("/proc/%d/ns/net", pid)) == self {
		t.Fatal("the container shares the host's network namespace: hostNetwork is false")
	}
	if self, _ := os.Readlink("/proc/self/ns/pid"); mustReadlink(t, fmt.Sprintf("/proc/%d/ns/pid", pid)) != self {
		t.Fatal("the container has a pid namespace of its own: hostPID is true")
	}
	// The bounding set is exactly the six (the agent cannot change it: it
	// has no CAP_SETPCAP); no_new_privs came from podman, not only from
	// the agent, which sets it itself once ready.
	if got, want := procStatus(t, pid)["CapBnd"], capMask(requiredCapNumbers()); got != want {
		t.Errorf("agent in the container: CapBnd %s, want %s (the DaemonSet's six)", got, want)
	}
	if opts := run(t, ".", podman, "inspect", "--format", "{{.HostConfig.SecurityOpt}}", name); !strings.Contains(opts, "no-new-privileges") {
		t.Errorf("container security options %s lack no-new-privileges (allowPrivilegeEscalation: false)", opts)
	}

	readyz := fmt.Sprintf("http://127.0.0.1:%d%s", spec.readyPort, spec.readyPath)
	ctr.waitFor(90*time.Second, "agent in the container ready", func() (bool, string) {
		code, body, err := getInNetns(t, pid, spec.readyPort, spec.readyPath)
		return err == nil && code == 200, fmt.Sprintf("GET %s in the container's namespace: %d %q %v", readyz, code, body, err)
	})

	// A ghost on the host, held by this process.
	g := makeGhost(t)
	local, f := g.Local, g.File

	sock := filepath.Join(runDir, "api.sock")
	ctr.waitFor(60*time.Second, "ghost flagged with this process as holder", func() (bool, string) {
		out, err := exec.Command(bin, "ls", "--api-socket", sock, "-o", "json", "--verdict", "ghost").CombinedOutput()
		if err != nil {
			return false, fmt.Sprintf("ghostconn ls: %v: %s", err, out)
		}
		var views []collector.ConnView
		if err := json.Unmarshal(out, &views); err != nil {
			return false, fmt.Sprintf("ghostconn ls -o json: %v: %.300s", err, out)
		}
		for _, v := range views {
			if v.Local != local {
				continue
			}
			for _, h := range v.Holders {
				if int(h.PID) == os.Getpid() && h.FD == int32(f.Fd()) {
					return true, ""
				}
			}
			return false, fmt.Sprintf("ghost %s held by %+v, want pid %d fd %d", local, v.Holders, os.Getpid(), f.Fd())
		}
		return false, fmt.Sprintf("%d ghosts, none from %s", len(views), local)
	})

	// Stopped as the kubelet stops it: SIGTERM, and the agent exits 0.
	run(t, ".", podman, "stop", "--time", "20", name)
	if code := strings.TrimSpace(run(t, ".", podman, "wait", name)); code != "0" {
		t.Errorf("agent in the container exited %s after SIGTERM\n%s", code, tail(ctr.logs(), 4000))
	}
	if logs := ctr.logs(); !strings.Contains(logs, "dropped capabilities") || !strings.Contains(logs, "detaching programs") {
		t.Errorf("agent's log lacks the capability drop or the orderly stop:\n%s", tail(logs, 4000))
	}
}

// container is a podman container the test started, detached.
type container struct {
	t            *testing.T
	podman, name string
}

// pid waits for the container's first process and returns its pid as the
// host sees it.
func (c *container) pid() int {
	c.t.Helper()
	var pid int
	c.waitFor(60*time.Second, "container running", func() (bool, string) {
		out, err := exec.Command(c.podman, "inspect", "--format", "{{.State.Pid}}", c.name).CombinedOutput()
		pid, _ = strconv.Atoi(strings.TrimSpace(string(out)))
		return err == nil && pid > 0, fmt.Sprintf("%s %v", out, err)
	})
	return pid
}

// waitFor is the package's waitFor with the container for a process: it
// fails at once, with the log, when the container stopped.
func (c *container) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	c.t.Helper()
	ok := false
	defer func() {
		if !ok {
			c.t.Logf("--- container log:\n%s", tail(c.logs(), 4000))
		}
	}()
	testutil.Eventually(c.t, timeout, what, func() (bool, string) {
		if done, why := cond(); done {
			return true, ""
		} else if out, err := exec.Command(c.podman, "inspect", "--format", "{{.State.Status}}", c.name).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) == "exited" {
			c.t.Fatalf("%s: the container stopped (%s %v); last: %s", what, strings.TrimSpace(string(out)), err, why)
		} else {
			return false, why
		}
		return false, ""
	})
	ok = true
}

// logs returns what the agent in the container wrote.
func (c *container) logs() string {
	out, err := exec.Command(c.podman, "logs", c.name).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(podman logs: %v) %s", err, out)
	}
	return string(out)
}

// remove stops and removes the container, by its name.
func (c *container) remove() {
	if out, err := exec.Command(c.podman, "rm", "--force", "--time", "10", c.name).CombinedOutput(); err != nil {
		c.t.Errorf("podman rm %s: %v\n%s", c.name, err, out)
	}
}

// hostMounts mounts bpffs and tracefs where the host has not, as systemd
// does at boot on the nodes the DaemonSet runs on (a fresh CI machine has
// neither; the DaemonSet mounts the host's).
func hostMounts(t *testing.T) {
	t.Helper()
	for _, m := range []struct{ fstype, path string }{{"bpf", "/sys/fs/bpf"}, {"tracefs", "/sys/kernel/tracing"}} {
		var st unix.Statfs_t
		if err := unix.Statfs(m.path, &st); err != nil {
			t.Fatalf("statfs %s: %v", m.path, err)
		}
		if (m.fstype == "bpf" && st.Type == unix.BPF_FS_MAGIC) || (m.fstype == "tracefs" && st.Type == unix.TRACEFS_MAGIC) {
			continue
		}
		if err := unix.Mount(m.fstype, m.path, m.fstype, 0, ""); err != nil {
			t.Fatalf("mount %s on %s (as systemd does at boot): %v", m.fstype, m.path, err)
		}
	}
}

// getInNetns makes GET path to 127.0.0.1:port in the network namespace of
// process pid, as the kubelet's probe reaches the pod's IP.
func getInNetns(t *testing.T, pid, port int, path string) (int, string, error) {
	t.Helper()
	var conn net.Conn
	var err error
	testnet.InPath(t, fmt.Sprintf("/proc/%d/ns/net", pid), func() {
		conn, err = net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	})
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path)
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, "", err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, line, fmt.Errorf("status line %q", line)
	}
	code, err := strconv.Atoi(f[1])
	return code, strings.TrimSpace(line), err
}

func mustReadlink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// procStatus reads /proc/PID/status as key -> value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(string(readFile(t, fmt.Sprintf("/proc/%d/status", pid))), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// rlimit is this process's limit as podman's --ulimit takes it.
func rlimit(t *testing.T, resource int) string {
	t.Helper()
	var l unix.Rlimit
	if err := unix.Getrlimit(resource, &l); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", l.Cur, l.Max)
}
