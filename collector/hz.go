package collector

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelHZ returns the kernel's CONFIG_HZ, which converts the jiffies the
// kernel keeps TCP timers in. It reads the kernel config from
// /proc/config.gz or /boot/config-$(uname -r).
func KernelHZ() (int, error) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		hz, err := hzFromConfig(path)
		if err == nil {
			return hz, nil
		}
	}
	return 0, fmt.Errorf("cannot find CONFIG_HZ in /proc/config.gz or /boot/config-%s: pass --kernel-hz", release)
}

func hzFromConfig(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return 0, err
		}
		defer gz.Close()
		r = gz
	}
	return parseHZ(r)
}

func parseHZ(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
			hz, err := strconv.Atoi(v)
			if err != nil || hz <= 0 {
				return 0, fmt.Errorf("bad CONFIG_HZ=%q", v)
			}
			return hz, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no CONFIG_HZ line")
}
