// Package caps reads and drops Linux capabilities for the whole process.
package caps

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capability numbers from linux/capability.h.
const (
	NetAdmin  = 12
	SysPtrace = 19
	SysAdmin  = 21
	Syslog    = 34
	Perfmon   = 38
	BPF       = 39
)

var names = map[int]string{NetAdmin: "CAP_NET_ADMIN", SysPtrace: "CAP_SYS_PTRACE", SysAdmin: "CAP_SYS_ADMIN", Syslog: "CAP_SYSLOG", Perfmon: "CAP_PERFMON", BPF: "CAP_BPF"}

// Name returns the capability's name, such as CAP_BPF.
func Name(c int) string {
	if n, ok := names[c]; ok {
		return n
	}
	return fmt.Sprintf("CAP_%d", c)
}

// Sets returns the process's effective and bounding sets from
// /proc/self/status.
func Sets() (effective, bounding uint64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, fmt.Errorf("read capabilities: %w", err)
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		for _, f := range []struct {
			prefix string
			dst    *uint64
		}{{"CapEff:", &effective}, {"CapBnd:", &bounding}} {
			if v, ok := strings.CutPrefix(line, f.prefix); ok {
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", f.dst); err != nil {
					return 0, 0, fmt.Errorf("parse %s %q: %w", f.prefix, v, err)
				}
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, errors.New("read capabilities: CapEff or CapBnd missing from /proc/self/status")
	}
	return effective, bounding, nil
}

// Missing returns the names of the capabilities in want that the
// effective set lacks.
func Missing(want ...int) ([]string, error) {
	eff, _, err := Sets()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range want {
		if eff&(1<<c) == 0 {
			out = append(out, Name(c))
		}
	}
	return out, nil
}

// ErrCgo means the binary uses cgo, so capabilities cannot be changed on
// every thread at once.
var ErrCgo = errors.New("capabilities cannot be dropped on all threads of a cgo binary (build with CGO_ENABLED=0)")

// KeepOnly drops every capability but keep from the effective, permitted
// and inheritable sets of every thread of the process, and sets
// no_new_privs so that no execve can regain them. When the process holds
// CAP_SETPCAP it also shrinks the bounding set; without it the bounding set
// stays as the launcher limited it.
func KeepOnly(keep ...int) error {
	var mask uint64
	for _, c := range keep {
		mask |= 1 << c
	}
	eff, bnd, err := Sets()
	if err != nil {
		return err
	}
	// A capability the process does not have stays without: capset
	// cannot add it.
	mask &= eff
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return ErrCgo
		}
		return fmt.Errorf("set no_new_privs: %w", errno)
	}
	// The bounding set first: dropping from it needs CAP_SETPCAP, which the
	// capset below gives up.
	for c := 0; c <= unix.CAP_LAST_CAP && eff&(1<<unix.CAP_SETPCAP) != 0; c++ {
		if mask&(1<<c) != 0 || bnd&(1<<c) == 0 {
			continue
		}
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); errno != 0 {
			if errno == unix.ENOTSUP {
				return ErrCgo
			}
			if errno == unix.EINVAL {
				continue // not known to this kernel
			}
			return fmt.Errorf("drop %s from the bounding set: %w", Name(c), errno)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(mask), Permitted: uint32(mask)},
		{Effective: uint32(mask >> 32), Permitted: uint32(mask >> 32)},
	}
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return ErrCgo
		}
		return fmt.Errorf("capset: %w", errno)
	}
	return nil
}
