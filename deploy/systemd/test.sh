#!/usr/bin/env bash
# Runs deploy/systemd/ghostconn.service under a real systemd as PID 1: a
# Debian 12 root (debootstrap minbase with systemd, cached), the agent and
# the unit installed in it, booted as the initramfs of Debian 12's kernel
# under qemu (TCG when there is no KVM). In the guest a oneshot unit runs
# TestUnderSystemd (deploy/systemdguest_test.go): start, a ghost flagged,
# SIGKILL and the restart, stop with nothing left attached, and
# `systemd-analyze security` of the unit. Prints the guest's test output
# and its security table; exits non-zero unless the guest test passed.
#
#   make test-deploy        (root; installs debootstrap, qemu, cpio if missing)
#
# Environment: CACHE (default deploy/.cache: the root and the kernel, kept
# between runs), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# QEMU_TIMEOUT (seconds, default 900), QEMU_MEM (default 2G).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${CACHE:-deploy/.cache}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-900}
QEMU_MEM=${QEMU_MEM:-2G}
GO=${GO:-go}
if ! command -v "$GO" >/dev/null && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi

log() { printf 'test-deploy: %s\n' "$*" >&2; }
die() { printf 'test-deploy: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot)"
[ "$(uname -m)" = x86_64 ] || die "amd64 only: the guest is Debian's amd64 kernel under qemu-system-x86_64"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
	log "installing on the host: ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# --- 1. the Debian root with systemd, and Debian's kernel (cached) -----------
base=$CACHE/systemd-root
# What the cached root and kernel are made of; a change rebuilds them.
# A hash of this script stands in for the recipe: any edit rebuilds them.
recipe="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$(cat "$base/.complete" 2>/dev/null)" != "$recipe" ]; then
	rm -rf "$base" "$base.part"
	log "debootstrap of Debian 12 (minbase, systemd) into $base from $DEBIAN_MIRROR"
	debootstrap --variant=minbase --include=systemd,systemd-sysv,kmod bookworm "$base.part" "$DEBIAN_MIRROR" \
		>"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed: $CACHE/debootstrap.log"
	# Not the whole kernel package: its image and config, and the only
	# modules the agent needs (BPF, loopback and the serial console are
	# built in): sock_diag's TCP support, which the kernel loads on demand
	# when ghostconn kill asks (as on any Debian host). No initramfs-tools
	# run either.
	chroot "$base.part" apt-get update -qq >/dev/null 2>&1 || die "apt-get update in the root failed"
	kpkg=$(chroot "$base.part" apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	[ -n "$kpkg" ] || die "no kernel package behind linux-image-amd64"
	chroot "$base.part" sh -c "cd /tmp && apt-get download -qq $kpkg" || die "apt-get download $kpkg failed"
	rm -rf "$CACHE/kernel"
	mkdir -p "$CACHE/kernel"
	# The kernel, and its config as a Debian host has it in /boot (the
	# agent reads CONFIG_HZ there when there is no /proc/config.gz).
	dpkg-deb --fsys-tarfile "$base.part"/tmp/"$kpkg"_*.deb | tar -x -C "$CACHE/kernel" --wildcards \
		'./boot/vmlinuz-*' './boot/config-*' './lib/modules/*/modules.order' './lib/modules/*/modules.builtin*' \
		'./lib/modules/*/kernel/net/ipv4/inet_diag.ko*' './lib/modules/*/kernel/net/ipv4/tcp_diag.ko*' ||
		die "no vmlinuz, config or diag modules in $kpkg"
	rm -f "$base.part"/tmp/*.deb
	chroot "$base.part" apt-get clean
	rm -rf "$base.part"/var/lib/apt/lists/* "$base.part"/usr/share/doc "$base.part"/usr/share/man "$base.part"/usr/share/locale
	echo "$recipe" >"$base.part/.complete"
	mv "$base.part" "$base"
fi
vmlinuz=$(ls "$CACHE"/kernel/boot/vmlinuz-* 2>/dev/null | head -1 || true)
[ -n "$vmlinuz" ] && [ -f "$CACHE/kernel/boot/config-${vmlinuz##*/vmlinuz-}" ] ||
	die "no kernel and config in $CACHE/kernel (remove $base to fetch them again)"

# --- 2. this checkout's agent, unit and guest test in a copy of the root ----
work=$CACHE/run
rm -rf "$work"
mkdir -p "$work"
root=$work/root
cp -a "$base" "$root"
CGO_ENABLED=0 "$GO" build -o "$root/usr/local/bin/ghostconn" ./cmd/ghostconn || die "go build of the agent failed"
CGO_ENABLED=0 "$GO" test -c -tags systemdguest -o "$root/usr/local/bin/deploy.test" ./deploy || die "go test -c of the guest test failed"
install -m 0644 deploy/systemd/ghostconn.service "$root/etc/systemd/system/ghostconn.service"
install -m 0644 "$CACHE"/kernel/boot/config-* "$root/boot/"
cp -a "$CACHE"/kernel/lib/modules "$root/lib/"
kver=${vmlinuz##*/vmlinuz-}
depmod -b "$root" "$kver" || die "depmod of the guest's modules failed"
# The guest test, once the system is up; its output on the serial console,
# then power off whatever the result.
cat >"$root/etc/systemd/system/ghostconn-guest-test.service" <<'EOF'
[Unit]
Description=ghostconn guest test (deploy/systemdguest_test.go)
After=multi-user.target
[Service]
Type=oneshot
Environment=CI=true HOME=/root TMPDIR=/tmp
WorkingDirectory=/tmp
ExecStart=/bin/sh -c '/usr/local/bin/deploy.test -test.run "^TestUnderSystemd$" -test.v -test.count=1 -test.timeout 600s; echo "GHOSTCONN-GUEST RESULT rc=$?"'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=900
ExecStopPost=/bin/systemctl --no-block poweroff --force
[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/ghostconn-guest-test.service "$root/etc/systemd/system/multi-user.target.wants/ghostconn-guest-test.service"
# A quiet console: no login prompt on it.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
echo ghostconn-guest >"$root/etc/hostname"
: >"$root/etc/machine-id"
rm -f "$root/.complete"
log "packing the guest root as an initramfs"
(cd "$root" && find . -xdev -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/root.cpio.gz"

# --- 3. boot it ---------------------------------------------------------------
# As kernels/run.sh: /dev/kvm alone is not enough (kvm-pvm cannot run a
# stock kernel); real hardware virtualization shows as vmx or svm.
accel=(-accel "tcg,thread=${QEMU_TCG_THREAD:-single}" -cpu max)
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=(-accel kvm -cpu host); fi
console=$work/console.log
log "booting $(basename "$vmlinuz") with systemd as PID 1 under qemu (${accel[1]%%,*}), timeout ${QEMU_TIMEOUT}s; console: $console"
start=$(date +%s)
set +e
timeout --kill-after=30 "$QEMU_TIMEOUT" qemu-system-x86_64 "${accel[@]}" -machine q35 -m "$QEMU_MEM" -smp 2 \
	-nographic -no-reboot -nic none \
	-kernel "$vmlinuz" -initrd "$work/root.cpio.gz" \
	-append "console=ttyS0,115200 rdinit=/lib/systemd/systemd panic=-1 mitigations=off systemd.show_status=0 loglevel=4" \
	</dev/null 2>&1 | sed -u -e 's/\r//g' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' >"$console"
rc=${PIPESTATUS[0]}
set -e
secs=$(($(date +%s) - start))
grep -E '^(=== RUN|--- (PASS|FAIL)|    |PASS|FAIL|ok|GHOSTCONN-GUEST)' "$console" | grep -v '^GHOSTCONN-GUEST SECURITY' || true
echo
echo "systemd-analyze security ghostconn.service in the guest:"
sed -n 's/^GHOSTCONN-GUEST SECURITY //p' "$console"
result=$(sed -n 's/^GHOSTCONN-GUEST RESULT rc=//p' "$console" | tail -1)
# Exit 0 alone would also be a binary that ran no test, or skipped it.
if [ "$result" = 0 ] && grep -q '^--- PASS: TestUnderSystemd' "$console" && ! grep -q -- '--- SKIP' "$console"; then
	log "PASS in ${secs}s (console: $console)"
	exit 0
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	log "FAIL: qemu killed after ${QEMU_TIMEOUT}s (console: $console)"
elif [ -z "$result" ]; then
	log "FAIL: the guest ended (qemu exit $rc) without a test result; the console's end:"
	tail -40 "$console" >&2
else
	log "FAIL: the guest test exited $result, or did not pass TestUnderSystemd (console: $console)"
fi
exit 1
