//go:build amd64 || arm64

package bpf

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Optional kernel features, as they appear in ghostconn_kernel_feature{feature}
// and in status. Without one the agent runs degraded, as Feature.Without says.
const (
	FeatureSocketCookie = "socket_cookie"
	FeatureTaskBTF      = "task_btf"
	FeatureLoop         = "bpf_loop"
	FeatureSockDestroy  = "sock_destroy"
	FeatureIterSockopt  = "iter_setsockopt"
	FeatureCast         = "rdonly_cast"
)

// Feature is one optional kernel feature and whether this kernel has it.
type Feature struct {
	Name string
	// Needs names what the kernel must give, and since which Linux.
	Needs string
	// Without says what the agent does when the kernel lacks it.
	Without string
	// Err is nil when the kernel has the feature, else why the probe says
	// it does not.
	Err error
}

// featureDefs are the optional features in report order; probe returns nil
// when the kernel has the feature.
var featureDefs = []struct {
	Feature
	probe func() error
}{
	{Feature{Name: FeatureSocketCookie, Needs: "bpf_get_socket_cookie() in tracing programs (Linux 5.12)",
		Without: "socket ids are derived from the socket's address instead of its cookie; kill aborts through sock_diag by address"},
		func() error {
			return probeTracingHelper(ebpf.AttachTraceRawTp, "inet_sock_set_state", asm.FnGetSocketCookie)
		}},
	{Feature{Name: FeatureTaskBTF, Needs: "bpf_get_current_task_btf() (Linux 5.11)",
		Without: "the close and dup hooks find the fd with probe reads, a little slower"},
		func() error { return features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetCurrentTaskBtf) }},
	{Feature{Name: FeatureLoop, Needs: "bpf_loop() (Linux 5.17)",
		Without: "close_range and process-exit hooks are not attached (their closes are learned at the next holder walk); a close counts a forked copy only when the parent holds it at the same fd"},
		func() error { return features.HaveProgramHelper(ebpf.TracePoint, asm.FnLoop) }},
	{Feature{Name: FeatureSockDestroy, Needs: "the bpf_sock_destroy() kfunc (Linux 6.5)",
		Without: "kill aborts through sock_diag (CONFIG_INET_DIAG_DESTROY) instead of on the exact socket"},
		func() error {
			if sockDestroyAvailable() {
				return nil
			}
			return fmt.Errorf("no bpf_sock_destroy in the kernel's BTF: %w", ebpf.ErrNotSupported)
		}},
	{Feature{Name: FeatureIterSockopt, Needs: "bpf_setsockopt() in iter/tcp (Linux 5.15)",
		Without: "keepalive sets the options through a holder's fd (pidfd_getfd), so a socket no process holds cannot be armed"},
		func() error { return probeTracingHelper(ebpf.AttachTraceIter, "tcp", asm.FnSetsockopt) }},
	{Feature{Name: FeatureCast, Needs: "the bpf_rdonly_cast() kfunc (Linux 6.2)",
		Without: "the close, dup, setsockopt, connect, accept and keepalive hooks read kernel memory with probe-read helpers, a few hundred ns more a run"},
		func() error {
			if kfuncAvailable("bpf_rdonly_cast") {
				return nil
			}
			return fmt.Errorf("no bpf_rdonly_cast in the kernel's BTF: %w", ebpf.ErrNotSupported)
		}},
}

// KernelFeatures probes which optional features this kernel has, once
// the probes have given an answer (see FeatureProbeError).
func KernelFeatures() []Feature {
	featuresMu.Lock()
	defer featuresMu.Unlock()
	if featuresKnown != nil {
		return featuresKnown
	}
	out := make([]Feature, len(featureDefs))
	answered := true
	for i, d := range featureDefs {
		out[i] = d.Feature
		out[i].Err = d.probe()
		answered = answered && (out[i].Err == nil || errors.Is(out[i].Err, ebpf.ErrNotSupported))
	}
	if answered {
		featuresKnown = out
	}
	return out
}

var (
	featuresMu    sync.Mutex
	featuresKnown []Feature // nil until every probe gave an answer
)

// FeatureProbeError returns the probes that failed for another reason
// than the kernel lacking the feature (a missing capability, a memory
// limit): the agent must not run degraded by mistake. They are probed
// again at the next call.
func FeatureProbeError() error {
	var errs []error
	for _, f := range KernelFeatures() {
		if f.Err != nil && !errors.Is(f.Err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("probe for %s (%s): %w", f.Name, f.Needs, f.Err))
		}
	}
	return errors.Join(errs...)
}

// HasFeature reports whether this kernel has the named optional feature.
func HasFeature(name string) bool {
	for _, f := range KernelFeatures() {
		if f.Name == name {
			return f.Err == nil
		}
	}
	return false
}

// featureNeeds says what the named feature needs of the kernel.
func featureNeeds(name string) string {
	for _, d := range featureDefs {
		if d.Name == name {
			return d.Needs
		}
	}
	return name
}

// IDsAreCookies reports whether the socket ids the programs report are the
// kernel's socket cookies (SO_COOKIE, sock_diag's cookie). Where they are
// not, they are derived from the socket's address (see addr_id in the C).
func IDsAreCookies() bool { return HasFeature(FeatureSocketCookie) }

// probeTracingHelper loads a tracing program attached as at to the
// target that calls helper with its context's first field: the verifier
// refuses a helper unknown to the program type (EINVAL, "unknown func")
// before it checks the arguments (EACCES when they are wrong, which still
// means the helper is there). bpf_get_socket_cookie came to tracing
// programs in 5.12, bpf_setsockopt to iter/tcp in 5.15.
func probeTracingHelper(at ebpf.AttachType, target string, helper asm.BuiltinFunc) error {
	spec := &ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: at,
		AttachTo:   target,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R1, asm.R1, 0, asm.DWord),
			helper.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}
	prog, err := ebpf.NewProgramWithOptions(spec, ebpf.ProgramOptions{LogLevel: ebpf.LogLevelBranch})
	if err == nil {
		prog.Close()
		return nil
	}
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve) && errors.Is(err, unix.EACCES) && !slices.ContainsFunc(ve.Log, func(l string) bool { return strings.Contains(l, "unknown func") }):
		return nil
	case errors.As(err, &ve) && errors.Is(err, unix.EINVAL):
		return fmt.Errorf("the verifier refused it (%s): %w", strings.Join(lastLines(ve.Log, 2), " | "), ebpf.ErrNotSupported)
	}
	return fmt.Errorf("probe %s in %s: %w", helper, target, err)
}

// kernelSpec is the kernel's BTF, read once: each btf.LoadKernelSpec and
// the first lookup in it cost about 100 ms here (a copy and its index),
// far more under emulation, and the start needs it twice.
var kernelSpec = sync.OnceValues(btf.LoadKernelSpec)

// checkFloor refuses a kernel below what the agent cannot run without,
// naming the feature: BPF ring buffers (Linux 5.8) and the TCP and
// task-file iterators (Linux 5.9).
func checkFloor() error {
	if err := features.HaveMapType(ebpf.RingBuf); errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8): ghostconn needs Linux 5.10 or later: %w", err)
	} else if err != nil {
		return fmt.Errorf("probe for BPF ring buffers: %w", err)
	}
	spec, err := kernelSpec()
	if err != nil {
		return fmt.Errorf("read kernel BTF: %w", err)
	}
	for _, it := range []string{"bpf_iter__tcp", "bpf_iter__task_file"} {
		var st *btf.Struct
		if err := spec.TypeByName(it, &st); err != nil {
			return fmt.Errorf("this kernel has no %s iterator (%s in its BTF, Linux 5.9): ghostconn needs Linux 5.10 or later", strings.TrimPrefix(it, "bpf_iter__"), it)
		}
	}
	return nil
}

// removeMemlock lifts RLIMIT_MEMLOCK where the kernel still charges BPF
// memory to it (before 5.11); later kernels charge the memory cgroup, and
// this does nothing.
func removeMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("this kernel (before 5.11) charges BPF maps to RLIMIT_MEMLOCK and it could not be lifted: %w (grant CAP_SYS_RESOURCE, or raise the limit: LimitMEMLOCK=infinity in the unit, ulimit -l unlimited)", err)
	}
	return nil
}

// sockIDKeys are the keys of address-derived socket ids: a hash of the
// boot id and of kernel addresses that only CAP_SYSLOG reads in
// /proc/kallsyms (secrets, as long as the API socket is root's), so ids
// stay the same across agent restarts in one boot (the pinned close
// evidence is keyed by them) and change across boots.
func sockIDKeys(secrets ...uint64) (k1, k2 uint64, err error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return 0, 0, fmt.Errorf("read the boot id for socket ids: %w", err)
	}
	msg := append([]byte("ghostconn socket id\x00"), b...)
	for _, v := range secrets {
		msg = binary.LittleEndian.AppendUint64(msg, v)
	}
	sum := sha256.Sum256(msg)
	return binary.LittleEndian.Uint64(sum[:8]), binary.LittleEndian.Uint64(sum[8:16]), nil
}

// setFeatureConsts tells the programs what the kernel gives
// (have_cookie_helper, have_task_btf), the keys of address-derived ids
// (from secrets, see sockIDKeys) and the pid whose closes to skip
// (self_tgid; 0 for none).
func setFeatureConsts(spec *ebpf.CollectionSpec, self uint32, secrets ...uint64) error {
	k1, k2, err := sockIDKeys(secrets...)
	if err != nil {
		return err
	}
	for name, v := range map[string]any{
		"have_cookie_helper": HasFeature(FeatureSocketCookie),
		"have_task_btf":      HasFeature(FeatureTaskBTF),
		"sock_id_key":        k1,
		"sock_id_key2":       k2,
		"self_tgid":          self,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// initPidNSInode is the inode of the initial pid namespace
// (PROC_PID_INIT_INO in the kernel), the namespace of the pids the
// programs report.
const initPidNSInode = 0xEFFFFFFC

// SelfTGID returns this process's pid as the programs see it (in the
// initial pid namespace), or 0 where the agent runs in another pid
// namespace (a container without the host's pid namespace), where its
// own pid is not the one the kernel reports and no other is known.
func SelfTGID() uint32 {
	link, err := os.Readlink("/proc/self/ns/pid")
	if err != nil || link != fmt.Sprintf("pid:[%d]", initPidNSInode) {
		return 0
	}
	return uint32(os.Getpid())
}
