package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Namespaces finds the host's network namespaces: those of every process
// and those bind-mounted under /run/netns (`ip netns add`). It maps each
// namespace's inode number to a path that opens it; the agent's own
// namespace maps to "".
func Namespaces() (map[uint32]string, error) {
	self, err := nsInode("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("read own network namespace: %w", err)
	}
	out := map[uint32]string{self: ""}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			if ino, err := nsInode(p); err == nil {
				if _, ok := out[ino]; !ok {
					out[ino] = p
				}
			}
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		p := "/proc/" + e.Name() + "/ns/net"
		ino, err := nsInode(p)
		if err != nil {
			continue // exited, or a kernel thread
		}
		if _, ok := out[ino]; !ok {
			out[ino] = p
		}
	}
	return out, nil
}

// nsInode reads the inode of a namespace file from its link text,
// "net:[4026531840]", or from stat for bind mounts.
func nsInode(path string) (uint32, error) {
	if l, err := os.Readlink(path); err == nil {
		if s, ok := strings.CutPrefix(l, "net:["); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32)
			return uint32(n), err
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}
