#!/usr/bin/env bash
# Runs ghostconn's privileged test suites on other kernels than the host's:
# each kernel is a Debian linux-image package, booted under qemu
# (qemu-system-x86_64 or qemu-system-aarch64; TCG when there is no KVM) with
# a small initramfs whose /init runs the statically built test binaries as
# root with CI=true.
#
#   kernels/run.sh                          Debian 12's 6.1 kernel, amd64
#   KERNELS='5.10 6.1 6.12' kernels/run.sh  Debian 11's, 12's and 13's
#   ARCH=arm64 SUITES='bpf collector' kernels/run.sh
#   KERNEL_PKGS=bookworm/linux-image-6.1.0-56-amd64 kernels/run.sh
#   TEST_RUN='TestLoad|TestLoopback' kernels/run.sh
#
# Kernel packages, and the guest's userspace (busybox, ip, nft, sysctl,
# setpriv, unshare and their libraries), come from Debian's archive through
# apt with its own sources list, lists, cache and an empty dpkg status under
# $KERNELS_CACHE/apt: the machine's apt sources and package state are never
# changed. The host needs apt, qemu (installed when missing), cpio, kmod,
# gzip and Go.
#
# Exits 0 only when every suite passed on every kernel; 1 when a test failed
# or the guest never printed its result; 2 on a setup problem.
#
# Settings (environment):
#   ARCH           amd64 or arm64: the guest's architecture, the test
#                  binaries' GOARCH and the kernel flavour (default amd64)
#   KERNELS        kernel lines to boot, each the current kernel of one
#                  Debian release (default 6.1):
#                    5.10  Debian 11 (bullseye)
#                    6.1   Debian 12 (bookworm)
#                    6.12  Debian 13 (trixie)
#   KERNEL_PKGS    exact packages instead of KERNELS, each SUITE/PACKAGE
#                  (for example bullseye/linux-image-5.10.0-32-amd64); a bare
#                  PACKAGE is looked up in bookworm
#   SUITES         test binaries to run, among bpf collector cmd
#                  (default: all three on amd64; bpf and collector on arm64,
#                  whose TCG is several times slower)
#   TEST_RUN       -test.run regexp passed to every suite (default: all)
#   TEST_SKIP      -test.skip regexp passed to every suite (default: the
#                  promtool check of the scraped metrics, which does not
#                  depend on the kernel and runs on the host in `make test`;
#                  the guest has no promtool)
#   TEST_TIMEOUT   -test.timeout of each suite inside the guest (default 20m;
#                  40m on arm64, where the collector suite alone took 15)
#   QEMU_TIMEOUT   seconds before one kernel's boot is killed (default 2700;
#                  arm64: its suites' TEST_TIMEOUTs and 300 for the boot)
#   QEMU_MEM, QEMU_SMP  guest size (default 2G, 2)
#   KERNEL_JOBS    guests booted at once (default: the host's CPUs under
#                  single-threaded TCG, which runs a guest on one host
#                  thread; else 1)
#   QEMU_TCG_THREAD  single or multi (default single: under multi-threaded
#                  TCG, QEMU 7.2 sometimes leaves both vCPUs looping on the
#                  int3 of a half-patched jump label in syscall_trace_enter
#                  when a syscall tracepoint is attached or detached, a soft
#                  lockup in the guest that real CPUs do not have)
#   QEMU_ACCEL     kvm or tcg (default: kvm when the guest's architecture is
#                  the host's, /dev/kvm is usable and the CPU flags show vmx
#                  or svm; else tcg)
#   KERNEL_APPEND  extra kernel command line (the default one prints
#                  warnings with their call traces and panics on a soft
#                  lockup, which ends the run at once with the trace)
#   MODULES        kernel modules loaded before the tests (default: veth
#                  nf_tables tcp_diag, with their dependencies)
#   DEBIAN_MIRROR  the archive (default http://deb.debian.org/debian)
#   KERNELS_CACHE  downloads, builds and console logs (default kernels/.cache)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${KERNELS_CACHE:-$ROOT/kernels/.cache}
ARCH=${ARCH:-amd64}
# uname -m's names for the same, as some environments export ARCH.
case $ARCH in
x86_64) ARCH=amd64 ;;
aarch64) ARCH=arm64 ;;
esac
KERNELS=${KERNELS:-6.1}
if [ "$ARCH" = arm64 ]; then
	SUITES=${SUITES:-bpf collector}
else
	SUITES=${SUITES:-bpf collector cmd}
fi
TEST_RUN=${TEST_RUN:-}
TEST_SKIP=${TEST_SKIP-TestAgentServesMetrics/promtool}
if [ "$ARCH" = arm64 ]; then
	TEST_TIMEOUT=${TEST_TIMEOUT:-40m}
else
	TEST_TIMEOUT=${TEST_TIMEOUT:-20m}
fi
# amd64 guests get 45 minutes: CI's 90 run two waves of them, and a hung
# suite meets its own TEST_TIMEOUT (20m) first. arm64 runs (not in CI) get
# all their suites' TEST_TIMEOUTs and five minutes to boot.
if [ "$ARCH" = arm64 ] && [ -z "${QEMU_TIMEOUT:-}" ]; then
	case $TEST_TIMEOUT in
	*h) t=$((${TEST_TIMEOUT%h} * 3600)) ;;
	*m) t=$((${TEST_TIMEOUT%m} * 60)) ;;
	*s) t=${TEST_TIMEOUT%s} ;;
	*) echo "kernels/run.sh: TEST_TIMEOUT=$TEST_TIMEOUT: give whole hours, minutes or seconds (40m), or set QEMU_TIMEOUT" >&2; exit 2 ;;
	esac
	read -ra suites <<<"$SUITES"
	QEMU_TIMEOUT=$((t * ${#suites[@]} + 300))
fi
QEMU_TIMEOUT=${QEMU_TIMEOUT:-2700}
QEMU_MEM=${QEMU_MEM:-2G}
QEMU_SMP=${QEMU_SMP:-2}
MODULES=${MODULES:-veth nf_tables tcp_diag}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
GO=${GO:-go}
# sudo's PATH often lacks the Go toolchain.
if ! command -v "$GO" >/dev/null && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi

log() { printf 'kernels: %s\n' "$*" >&2; }
die() { printf 'kernels: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (installs packages, builds an initramfs with device nodes)"
mkdir -p "$CACHE"

# --- 1. host tools -----------------------------------------------------------

case $ARCH in
amd64) qemu_bin=qemu-system-x86_64 qemu_pkg=qemu-system-x86 goarch=amd64 uname_m=x86_64 ;;
arm64) qemu_bin=qemu-system-aarch64 qemu_pkg=qemu-system-arm goarch=arm64 uname_m=aarch64 ;;
*) die "ARCH=$ARCH: want amd64 or arm64" ;;
esac

host_apt_updated=
host_apt_install() {
	if [ -z "$host_apt_updated" ]; then
		local ok=
		for _ in 1 2 3 4 5 6; do
			if apt-get update -qq; then
				ok=1
				break
			fi
			log "apt-get update failed (lock held?), retrying in 10s"
			sleep 10
		done
		[ -n "$ok" ] || die "apt-get update failed"
		host_apt_updated=1
	fi
	log "installing on the host: $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o DPkg::Lock::Timeout=300 "$@" >/dev/null
}

# shq quotes a value for a POSIX sh (busybox) assignment.
shq() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }

need=()
command -v "$qemu_bin" >/dev/null || need+=("$qemu_pkg")
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v gzip >/dev/null || need+=(gzip)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
[ ${#need[@]} -eq 0 ] || host_apt_install "${need[@]}"
command -v "$GO" >/dev/null || die "$GO not found: the test binaries are built with the host's Go"

# --- 2. packages from Debian's archive ----------------------------------------

# oapt SUITE CMD ARGS...: runs apt-get or apt-cache against SUITE for $ARCH
# with the harness's own sources list, lists, cache and an empty dpkg status
# under $CACHE/apt/SUITE-ARCH, so nothing of the machine's apt changes.
oapt() {
	local suite=$1 cmd=$2 d=$CACHE/apt/$1-$ARCH
	shift 2
	if [ ! -e "$d/sources.list" ]; then
		mkdir -p "$d/state/lists/partial" "$d/cache/archives/partial" "$d/parts"
		: >"$d/status"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $suite main" >"$d/sources.list"
	fi
	"$cmd" -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts="$d/parts" \
		-o Dir::State="$d/state" -o Dir::State::status="$d/status" -o Dir::Cache="$d/cache" \
		-o APT::Architecture="$ARCH" -o APT::Architectures="$ARCH" \
		-o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}

# oapt_update SUITE: refreshes SUITE's lists once per run.
declare -A oapt_updated=()
oapt_update() {
	[ -n "${oapt_updated[$1]:-}" ] && return 0
	local _
	for _ in 1 2 3; do
		if oapt "$1" apt-get update -qq; then
			oapt_updated[$1]=1
			return 0
		fi
		log "apt-get update of $1 ($ARCH) failed, retrying in 10s"
		sleep 10
	done
	die "apt-get update of $1 ($ARCH) from $DEBIAN_MIRROR failed"
}

# suite_of LINE: the Debian release whose current kernel is LINE.
suite_of() {
	case $1 in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12) echo trixie ;;
	*) die "KERNELS: no Debian release is known for kernel line '$1' (want 5.10, 6.1 or 6.12, or set KERNEL_PKGS)" ;;
	esac
}

# current_kernel SUITE: the linux-image package SUITE's linux-image-ARCH
# depends on today.
current_kernel() {
	oapt_update "$1"
	oapt "$1" apt-cache depends "linux-image-$ARCH" 2>/dev/null |
		awk -v a="$ARCH" '$1 == "Depends:" && $2 ~ ("^linux-image-[0-9].*-" a "(-unsigned)?$") { print $2; exit }'
}

if [ -z "${KERNEL_PKGS:-}" ]; then
	KERNEL_PKGS=
	for line in $KERNELS; do
		suite=$(suite_of "$line")
		pkg=$(current_kernel "$suite")
		[ -n "$pkg" ] || die "cannot resolve $suite's kernel package from linux-image-$ARCH"
		KERNEL_PKGS="$KERNEL_PKGS $suite/$pkg"
	done
fi

# fetch_kernel SUITE/PKG: downloads and unpacks PKG into $CACHE/PKG/root
# once, and depmods it so module dependencies can be resolved.
fetch_kernel() {
	local suite=${1%%/*} pkg=${1#*/} dir=$CACHE/${1#*/}
	if [ ! -e "$dir/root/.unpacked" ]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		if ! (cd "$dir" && oapt "$suite" apt-get download -qq "$pkg" >/dev/null 2>&1); then
			oapt_update "$suite"
			(cd "$dir" && oapt "$suite" apt-get download -qq "$pkg" >/dev/null) || die "apt-get download $pkg from $suite failed"
		fi
		log "unpacking $(basename "$dir"/*.deb)"
		dpkg-deb -x "$dir"/*.deb "$dir/root"
		rm -f "$dir"/*.deb
		# Debian 13 ships modules in /usr/lib/modules (merged /usr); the
		# rest of this script, depmod and modprobe -d look in /lib.
		if [ ! -e "$dir/root/lib" ] && [ -d "$dir/root/usr/lib/modules" ]; then
			ln -s usr/lib "$dir/root/lib"
		fi
		local kver
		kver=$(ls "$dir/root/lib/modules")
		depmod -b "$dir/root" "$kver"
		touch "$dir/root/.unpacked"
	fi
}

# The guest's userspace: Debian 12's packages for $ARCH and everything they
# depend on, unpacked into one tree once. /init is busybox sh; the tests run
# ip, nft, sysctl, setpriv and unshare.
USERLAND_PKGS="busybox-static iproute2 nftables procps util-linux"
SYSROOT=$CACHE/userland-$ARCH
if [ ! -e "$SYSROOT/.unpacked" ] || [ "$(cat "$SYSROOT/.unpacked")" != "$USERLAND_PKGS" ]; then
	log "fetching the guest's userspace ($ARCH): $USERLAND_PKGS"
	oapt_update bookworm
	rm -rf "$CACHE/apt/bookworm-$ARCH/cache/archives/"*.deb "$SYSROOT"
	oapt bookworm apt-get install --download-only -y -qq --no-install-recommends $USERLAND_PKGS >/dev/null ||
		die "downloading the guest's userspace ($USERLAND_PKGS) for $ARCH failed"
	mkdir -p "$SYSROOT"
	for deb in "$CACHE/apt/bookworm-$ARCH/cache/archives/"*.deb; do
		dpkg-deb -x "$deb" "$SYSROOT"
	done
	rm -rf "$SYSROOT/usr/share/doc" "$SYSROOT/usr/share/man" "$SYSROOT/usr/share/locale" "$SYSROOT/usr/share/info"
	[ -x "$SYSROOT/bin/busybox" ] || die "busybox-static did not unpack to $SYSROOT/bin/busybox"
	echo "$USERLAND_PKGS" >"$SYSROOT/.unpacked"
fi

# --- 3. test binaries --------------------------------------------------------

BUILD=$CACHE/build
rm -rf "$BUILD"
mkdir -p "$BUILD"
pkgs=()
for s in $SUITES; do
	case $s in
	bpf | collector) pkgs+=("./$s") ;;
	cmd) pkgs+=(./cmd/ghostconn) ;;
	*) die "unknown suite $s (want bpf, collector or cmd)" ;;
	esac
done
log "building static test binaries: ${pkgs[*]}"
log "GOARCH=$goarch"
CGO_ENABLED=0 GOARCH=$goarch "$GO" test -c -trimpath -ldflags='-s -w' -o "$BUILD/" "${pkgs[@]}"
CGO_ENABLED=0 GOARCH=$goarch "$GO" build -trimpath -ldflags='-s -w' -o "$BUILD/ghostconn" ./cmd/ghostconn
# cmd/ghostconn's TestMain runs `go build -o BIN .`; the guest has no Go, so
# a stand-in copies the binary built here.
if [ -e "$BUILD/ghostconn.test" ]; then mv "$BUILD/ghostconn.test" "$BUILD/cmd.test"; fi

# --- 4. initramfs ------------------------------------------------------------

# build_initramfs PKG KVER OUT
build_initramfs() {
	local pkg=$1 kver=$2 out=$3 kroot=$CACHE/$1/root
	local stage=$CACHE/$pkg/stage
	rm -rf "$stage"
	mkdir -p "$stage"
	# The userspace tree first; busybox supplies /bin/sh and, through
	# `busybox --install -s` in /init, every command the packages lack.
	cp -a "$SYSROOT/." "$stage/"
	rm -f "$stage/.unpacked"
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,run,tmp,root,boot,tests,lib/modules/"$kver"}
	mkdir -p "$stage/var"
	rm -rf "$stage/var/run"
	ln -s ../run "$stage/var/run"
	chmod 1777 "$stage/tmp"
	mknod -m 600 "$stage/dev/console" c 5 1
	mknod -m 666 "$stage/dev/null" c 1 3
	[ -e "$stage/bin/sh" ] || ln -s busybox "$stage/bin/sh"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"

	# ghostconn reads CONFIG_HZ from /boot/config-$(uname -r).
	cp "$kroot/boot/config-$kver" "$stage/boot/config-$kver"

	# Modules and their dependencies, in load order, for /init to insmod;
	# a depmod'd subset also lets the kernel autoload through modprobe.
	local m line path order=()
	local deps
	for m in $MODULES; do
		if grep -qE "/$m\.ko" "$kroot/lib/modules/$kver/modules.builtin"; then
			continue
		fi
		deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m") || die "module $m not found in $pkg"
		while read -r line; do
			case $line in
			insmod\ *)
				path=${line#insmod }
				path=${path%% *}
				path=${path#"$kroot"}
				# busybox insmod takes only plain ELF: Debian 13's
				# modules are xz-compressed.
				case $path in
				*.ko.xz)
					mkdir -p "$stage$(dirname "$path")"
					if [ ! -e "$stage${path%.xz}" ]; then
						xz -dc "$kroot$path" >"$stage${path%.xz}" || { rm -f "$stage${path%.xz}"; die "cannot decompress $path of $pkg with xz"; }
						order+=("${path%.xz}")
					fi
					;;
				*.ko.zst)
					mkdir -p "$stage$(dirname "$path")"
					if [ ! -e "$stage${path%.zst}" ]; then
						zstd -qdc "$kroot$path" >"$stage${path%.zst}" || { rm -f "$stage${path%.zst}"; die "cannot decompress $path of $pkg with zstd"; }
						order+=("${path%.zst}")
					fi
					;;
				*)
					if [ ! -e "$stage$path" ]; then
						install -D -m 0644 "$kroot$path" "$stage$path"
						order+=("$path")
					fi
					;;
				esac
				;;
			esac
		done <<<"$deps"
	done
	cp "$kroot/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$stage/lib/modules/$kver/"
	depmod -b "$stage" "$kver"
	printf '%s\n' "${order[@]}" >"$stage/etc/modules-load"

	local s
	for s in $SUITES; do
		install -m 0755 "$BUILD/$s.test" "$stage/tests/$s.test"
	done
	install -m 0755 "$BUILD/ghostconn" "$stage/usr/local/bin/ghostconn"
	cat >"$stage/usr/local/bin/go" <<-'EOF'
		#!/bin/sh
		# Stand-in for `go build -o OUT .` (cmd/ghostconn's TestMain): the
		# binary was built statically on the host.
		out=
		while [ $# -gt 0 ]; do
			[ "$1" = -o ] && out=$2
			shift
		done
		[ -n "$out" ] || { echo "go stand-in: only 'go build -o OUT' is supported" >&2; exit 1; }
		exec cp /usr/local/bin/ghostconn "$out"
	EOF
	chmod 0755 "$stage/usr/local/bin/go"

	install -m 0755 "$ROOT/kernels/init.sh" "$stage/init"
	{
		echo "SUITES=$(shq "$SUITES")"
		echo "TEST_TIMEOUT=$(shq "$TEST_TIMEOUT")"
		echo "TEST_RUN=$(shq "$TEST_RUN")"
		echo "TEST_SKIP=$(shq "$TEST_SKIP")"
	} >"$stage/etc/ktest.env"

	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >"$out"
	rm -rf "$stage"
}

# --- 5. boot -------------------------------------------------------------------

accel=${QEMU_ACCEL:-}
if [ -z "$accel" ]; then
	# /dev/kvm alone is not enough: some hosts expose a KVM (kvm-pvm, for
	# one) that cannot run a stock kernel. Real hardware virtualization
	# shows as vmx or svm in the CPU flags.
	if [ "$(uname -m)" = "$uname_m" ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
		accel=kvm
	else
		accel=tcg
	fi
fi
case $accel in
kvm) accel_args=(-accel kvm -cpu host) ;;
tcg)
	# On arm64, cortex-a72 rather than max: max emulates pointer
	# authentication, which makes TCG several times slower.
	cpu=max
	[ "$ARCH" = arm64 ] && cpu=cortex-a72
	accel_args=(-accel "tcg,thread=${QEMU_TCG_THREAD:-single}" -cpu "$cpu")
	;;
*) die "QEMU_ACCEL=$accel: want kvm or tcg" ;;
esac
case $ARCH in
amd64) machine_args=(-machine q35) console_dev=ttyS0 ;;
arm64) machine_args=(-machine virt,gic-version=3) console_dev=ttyAMA0 ;;
esac

# boot_kernel SPEC: boots one kernel with the suites and writes its summary
# line to $CACHE/logs/KVER.result, its counts to KVER.counts and its
# results to KVER.report; the console goes to KVER.log.
boot_kernel() {
	local spec=$1 pkg kroot kver vmlinuz initrd console start rc secs result why passed failed skipped
	pkg=${spec#*/}
	kroot=$CACHE/$pkg/root
	kver=$(ls "$kroot/lib/modules")
	vmlinuz=$kroot/boot/vmlinuz-$kver
	initrd=$CACHE/$pkg/initramfs.cpio.gz
	console=$CACHE/logs/$kver.log
	log "booting $kver ($spec, $ARCH) under qemu ($accel, ${QEMU_SMP} CPUs, $QEMU_MEM), timeout ${QEMU_TIMEOUT}s; console: $console"
	start=$(date +%s)
	set +e
	timeout --kill-after=30 "$QEMU_TIMEOUT" "$qemu_bin" \
		"${accel_args[@]}" "${machine_args[@]}" -m "$QEMU_MEM" -smp "$QEMU_SMP" \
		-nographic -no-reboot -nic none \
		-kernel "$vmlinuz" -initrd "$initrd" \
		-append "console=$console_dev,115200 panic=-1 loglevel=5 softlockup_panic=1 softlockup_all_cpu_backtrace=1 mitigations=off ${KERNEL_APPEND:-}" \
		</dev/null 2>&1 | sed -u -e 's/\r//g' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' >"$console.part"
	rc=${PIPESTATUS[0]}
	set -e
	mv "$console.part" "$console"
	secs=$(($(date +%s) - start))

	result=FAIL
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		why="qemu killed after ${QEMU_TIMEOUT}s"
	elif grep -q '^GHOSTCONN-KTEST RESULT: PASS$' "$console"; then
		result=PASS
		why="all suites passed"
	elif grep -q '^GHOSTCONN-KTEST RESULT: FAIL$' "$console"; then
		why="tests failed"
	else
		why="guest ended (qemu exit $rc) without printing a result"
	fi
	passed=$(grep -cE '^ *--- PASS: ' "$console" || true)
	failed=$(grep -cE '^ *--- FAIL: ' "$console" || true)
	skipped=$(grep -cE '^ *--- SKIP: ' "$console" || true)
	# A guest that died or timed out counts as one failure even when no
	# test reported one.
	[ "$result" = PASS ] || [ "$failed" -gt 0 ] || failed=1
	{
		echo
		echo "== $kver ($ARCH): $result ($why) in ${secs}s"
		# Top-level results, and any subtest that failed or skipped.
		grep -E '^--- (PASS|FAIL|SKIP): |^ +--- (FAIL|SKIP): |^GHOSTCONN-KTEST SUITE .* rc=' "$console" | sed 's/^/   /' || true
	} >"$CACHE/logs/$kver.report"
	echo "$kver ($ARCH): $result in ${secs}s ($passed passed, $failed failed, $skipped skipped; subtests included)" >"$CACHE/logs/$kver.result"
	echo "$result $passed $failed $skipped" >"$CACHE/logs/$kver.counts"
}

# Every kernel's files first (downloads and initramfs builds use the disk
# and apt, one at a time), then the boots, KERNEL_JOBS at once: TCG runs a
# guest on one host thread, so a 2-CPU host runs two guests in the time of
# one. Consoles of guests run side by side are printed whole as each ends.
mkdir -p "$CACHE/logs"
kvers=() specs=()
for spec in $KERNEL_PKGS; do
	case $spec in
	*/*) ;;
	*) spec=bookworm/$spec ;;
	esac
	fetch_kernel "$spec"
	pkg=${spec#*/}
	kroot=$CACHE/$pkg/root
	kver=$(ls "$kroot/lib/modules")
	grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$kroot/boot/config-$kver" || die "$pkg lacks CONFIG_DEBUG_INFO_BTF=y"
	build_initramfs "$pkg" "$kver" "$CACHE/$pkg/initramfs.cpio.gz"
	rm -f "$CACHE/logs/$kver".{log,result,counts,report}
	kvers+=("$kver")
	specs+=("$spec")
done
jobs_max=${KERNEL_JOBS:-}
if [ -z "$jobs_max" ]; then
	jobs_max=1
	[ "$accel" = tcg ] && [ "${QEMU_TCG_THREAD:-single}" = single ] && jobs_max=$(nproc)
fi
[ "$jobs_max" -ge 1 ] 2>/dev/null || die "KERNEL_JOBS=$KERNEL_JOBS: want a number of at least 1"
log "booting ${#specs[@]} kernel(s), $jobs_max at a time"
# Guests still running when the harness is stopped (Ctrl-C, a CI cancel)
# are stopped with it: timeout passes the TERM on to qemu.
boot_pids=()
trap 'for p in "${boot_pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null; done; exit 130' INT TERM
running=0
for spec in "${specs[@]}"; do
	if [ "$running" -ge "$jobs_max" ]; then
		wait -n || true
		running=$((running - 1))
	fi
	boot_kernel "$spec" &
	boot_pids+=($!)
	running=$((running + 1))
done
wait || true
trap - INT TERM

overall=0
summary=()
total_passed=0 total_failed=0 total_skipped=0
for kver in "${kvers[@]}"; do
	if [ -e "$CACHE/logs/$kver.log" ]; then
		echo "===== console of $kver ($ARCH) ====="
		cat "$CACHE/logs/$kver.log"
	fi
	if [ ! -e "$CACHE/logs/$kver.counts" ]; then
		echo "== $kver ($ARCH): FAIL (the harness did not finish the boot)"
		summary+=("$kver ($ARCH): FAIL (the harness did not finish the boot)")
		overall=1 total_failed=$((total_failed + 1))
		continue
	fi
	cat "$CACHE/logs/$kver.report"
	summary+=("$(cat "$CACHE/logs/$kver.result")")
	read -r result passed failed skipped <"$CACHE/logs/$kver.counts"
	total_passed=$((total_passed + passed))
	total_failed=$((total_failed + failed))
	total_skipped=$((total_skipped + skipped))
	[ "$result" = PASS ] || overall=1
done

echo
printf '%s\n' "${summary[@]}"
echo "test-kernels: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit "$overall"
