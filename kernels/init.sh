#!/bin/sh
# /init of the test initramfs that kernels/run.sh builds (busybox sh). The
# initramfs is Debian 12's busybox-static, iproute2, nftables, procps and
# util-linux for the guest's architecture, unpacked. It links every busybox
# applet the packages do not provide, mounts what ghostconn and its tests
# need, loads modules, runs each test binary as root with CI=true, prints
# one result line that run.sh reads, and powers off. run.sh writes
# /etc/ktest.env (SUITES, TEST_TIMEOUT, TEST_RUN, TEST_SKIP).
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Symlinks for the applets, where no packaged command has the name already.
/bin/busybox --install -s 2>/dev/null
export HOME=/root TMPDIR=/tmp CI=true
# 2 GiB under TCG: the holder test keeps 10k other sockets here, not 100k.
export GHOSTCONN_TEST_BUSY_SOCKETS=10000
# shellcheck disable=SC1091
. /etc/ktest.env

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# The root is the initramfs itself; ip netns exec wants shared propagation
# to make its own mounts slaves of.
mount --make-rshared / 2>/dev/null
hostname ghostconn-ktest
ip link set lo up

kver=$(uname -r)
echo "GHOSTCONN-KTEST kernel $kver, $(nproc) CPUs, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
while read -r mod; do
	[ -n "$mod" ] || continue
	# A module whose hardware is missing (crc32c-intel without SSE4.2)
	# refuses to load; the generic one beside it does the job.
	insmod "$mod" 2>/dev/null || echo "GHOSTCONN-KTEST note: insmod $mod failed"
done </etc/modules-load
echo /sbin/modprobe >/proc/sys/kernel/modprobe
for f in /sys/kernel/btf/vmlinux /sys/kernel/tracing/events/syscalls /boot/config-"$kver"; do
	[ -e "$f" ] || echo "GHOSTCONN-KTEST note: $f missing"
done
echo "GHOSTCONN-KTEST modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

result=PASS
for suite in $SUITES; do
	echo "GHOSTCONN-KTEST SUITE $suite START"
	start=$(date +%s)
	set -- -test.v -test.count=1 -test.timeout="$TEST_TIMEOUT"
	[ -n "$TEST_RUN" ] && set -- "$@" -test.run "$TEST_RUN"
	[ -n "$TEST_SKIP" ] && set -- "$@" -test.skip "$TEST_SKIP"
	(cd /tmp && /tests/"$suite".test "$@")
	rc=$?
	echo "GHOSTCONN-KTEST SUITE $suite rc=$rc $(($(date +%s) - start))s"
	[ "$rc" -eq 0 ] || result=FAIL
done

# Kernel messages from the run (verifier warnings, BPF splats) for the log.
echo "GHOSTCONN-KTEST dmesg (warnings and errors):"
dmesg -r 2>/dev/null | grep -E '^<[0-4]>' | tail -n 50
echo "GHOSTCONN-KTEST RESULT: $result"
sync
poweroff -f
# If power-off did not take, leaving init panics the kernel, and
# panic=-1 with qemu -no-reboot ends qemu.
sleep 5
exit 1
