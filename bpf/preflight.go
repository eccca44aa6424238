package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/internal/caps"
)

// TracefsPath is where classic tracepoints are looked up.
const TracefsPath = "/sys/kernel/tracing"

// Preflight checks what the agent cannot run without. Each error names
// what is missing and how to fix it.
func Preflight() error {
	if err := checkCaps(); err != nil {
		return err
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return fmt.Errorf("kernel BTF is missing (/sys/kernel/btf/vmlinux: %w): ghostconn needs a kernel built with CONFIG_DEBUG_INFO_BTF=y", err)
	}
	return nil
}

// EnsureTracefs mounts tracefs at TracefsPath unless it is there already.
// Classic tracepoints (the syscall hooks) need it; tp_btf and iterators do not.
func EnsureTracefs() error {
	if _, err := os.Stat(TracefsPath + "/events"); err == nil {
		return nil
	}
	if err := unix.Mount("tracefs", TracefsPath, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at %s failed: %w (mount it with: mount -t tracefs tracefs %s)", TracefsPath, err, TracefsPath)
	}
	return nil
}

// RequiredCaps are the capabilities the agent needs to start: CAP_BPF and
// CAP_PERFMON to load and attach, CAP_SYSLOG to read kernel addresses from
// /proc/kallsyms, CAP_SYS_ADMIN to mount tracefs and bpffs and to enter
// other network namespaces, CAP_SYS_PTRACE to find the namespaces of other
// users' processes.
var RequiredCaps = []int{caps.BPF, caps.Perfmon, caps.SysAdmin, caps.SysPtrace, caps.Syslog}

// ActionCaps are the capabilities the agent uses, when it has them, only to
// act on connections: CAP_NET_ADMIN for kill through sock_diag. The
// deployment grants them; an agent without them (or with --read-only)
// still runs.
var ActionCaps = []int{caps.NetAdmin}

// checkCaps makes sure the effective set holds RequiredCaps.
func checkCaps() error {
	missing, err := caps.Missing(RequiredCaps...)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing capabilities %s: run ghostconn agent as root or grant them (for example with setpriv or AmbientCapabilities=)", strings.Join(missing, ", "))
	}
	return nil
}

// BPFFSPath is where bpffs is mounted.
const BPFFSPath = "/sys/fs/bpf"

const bpfFSMagic = 0xcafe4a11

// EnsureBPFFS mounts bpffs at BPFFSPath unless it is there already.
func EnsureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFSPath, &st); err == nil && st.Type == bpfFSMagic {
		return nil
	}
	if err := unix.Mount("bpf", BPFFSPath, "bpf", 0, ""); err != nil {
		return fmt.Errorf("bpffs is not mounted and mounting it at %s failed: %w (mount it with: mount -t bpf bpf %s, or pass --pin-dir= to run without pins)", BPFFSPath, err, BPFFSPath)
	}
	return nil
}

// PreparePinDir makes sure dir is a safe place for pins: a directory on
// bpffs, not a symlink, owned by the agent's user and writable by no one
// else. bpffs's root is world-writable (1777), so another user could have
// created dir first to plant or read pins. It creates dir (0700) if
// missing.
func PreparePinDir(dir string) error {
	if err := EnsureBPFFS(); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("check pin directory: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("pin directory %s is a symlink: refusing it", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("pin directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("pin directory %s: cannot read its owner", dir)
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("pin directory %s is owned by uid %d, not by the agent (uid %d): refusing it; remove it or choose another --pin-dir", dir, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("pin directory %s has mode %04o, writable by group or others: refusing it (chmod 0700 it)", dir, perm)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("check pin directory: %w", err)
	}
	if fs.Type != bpfFSMagic {
		return fmt.Errorf("pin directory %s is not on bpffs", dir)
	}
	return nil
}
