#!/usr/bin/env bash
# Runs ghostconn's privileged test suites on other kernels than the host's:
# each kernel is a Debian linux-image package, booted under
# qemu-system-x86_64 (TCG when there is no KVM) with a small initramfs whose
# /init runs the statically built test binaries as root with CI=true.
#
#   sudo kernels/run.sh                   Debian 12's current 6.1 kernel
#   sudo KERNEL_PKGS="linux-image-6.1.0-56-amd64" kernels/run.sh
#   sudo TEST_RUN='TestLoad|TestLoopback' kernels/run.sh
#
# Exits 0 only when every suite passed on every kernel; 1 when a test failed
# or the guest never printed its result; 2 on a setup problem.
#
# Settings (environment):
#   KERNEL_PKGS    Debian linux-image packages to boot (default: the one
#                  linux-image-amd64 depends on, when the host is Debian 12)
#   SUITES         test binaries to run, among bpf collector cmd
#                  (default: all three)
#   TEST_RUN       -test.run regexp passed to every suite (default: all)
#   TEST_SKIP      -test.skip regexp passed to every suite (default: the
#                  promtool check of the scraped metrics, which does not
#                  depend on the kernel and runs on the host in `make test`;
#                  the guest has no promtool)
#   TEST_TIMEOUT   -test.timeout of each suite inside the guest (default 15m)
#   QEMU_TIMEOUT   seconds before the whole boot is killed (default 2400; a
#                  passing TCG run takes about 7 minutes on 2 cores)
#   QEMU_MEM, QEMU_SMP  guest size (default 2G, 2)
#   QEMU_TCG_THREAD  single or multi (default single: under multi-threaded
#                  TCG, QEMU 7.2 sometimes leaves both vCPUs looping on the
#                  int3 of a half-patched jump label in syscall_trace_enter
#                  when a syscall tracepoint is attached or detached, a soft
#                  lockup in the guest that real CPUs do not have)
#   QEMU_ACCEL     kvm or tcg (default: kvm when /dev/kvm is usable and the
#                  CPU flags show vmx or svm, else tcg)
#   KERNEL_APPEND  extra kernel command line (the default one prints
#                  warnings with their call traces and panics on a soft
#                  lockup, which ends the run at once with the trace)
#   MODULES        kernel modules loaded before the tests (default: veth
#                  nf_tables tcp_diag, with their dependencies)
#   KERNELS_CACHE  downloads, builds and console logs (default kernels/.cache)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${KERNELS_CACHE:-$ROOT/kernels/.cache}
SUITES=${SUITES:-bpf collector cmd}
TEST_RUN=${TEST_RUN:-}
TEST_SKIP=${TEST_SKIP-TestAgentServesMetrics/promtool}
TEST_TIMEOUT=${TEST_TIMEOUT:-15m}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-2400}
QEMU_MEM=${QEMU_MEM:-2G}
QEMU_SMP=${QEMU_SMP:-2}
MODULES=${MODULES:-veth nf_tables tcp_diag}
GO=${GO:-go}
# sudo's PATH often lacks the Go toolchain.
if ! command -v "$GO" >/dev/null && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi

log() { printf 'kernels: %s\n' "$*" >&2; }
die() { printf 'kernels: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (installs packages, builds an initramfs with device nodes)"
mkdir -p "$CACHE"

# --- 1. host tools -----------------------------------------------------------

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return 0
	for _ in 1 2 3 4 5 6; do
		if apt-get update -qq; then
			apt_updated=1
			return 0
		fi
		log "apt-get update failed (lock held?), retrying in 10s"
		sleep 10
	done
	die "apt-get update failed"
}

apt_install() {
	apt_update
	log "installing: $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o DPkg::Lock::Timeout=300 "$@" >/dev/null
}

# shq quotes a value for a POSIX sh (busybox) assignment.
shq() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }

is_static() { ! ldd "$1" >/dev/null 2>&1; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if [ ! -x /bin/busybox ] || ! is_static /bin/busybox; then need+=(busybox-static); fi
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v setpriv >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null || need+=(procps)
command -v gzip >/dev/null || need+=(gzip)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
command -v "$GO" >/dev/null || die "$GO not found: the test binaries are built with the host's Go"

# --- 2. kernels --------------------------------------------------------------

if [ -z "${KERNEL_PKGS:-}" ]; then
	# shellcheck disable=SC1091
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ "$codename" = bookworm ] || die "host is not Debian 12 (bookworm): set KERNEL_PKGS to the linux-image package(s) to boot"
	resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ { print $2; exit }'; }
	KERNEL_PKGS=$(resolve)
	if [ -z "$KERNEL_PKGS" ]; then
		apt_update
		KERNEL_PKGS=$(resolve)
	fi
	[ -n "$KERNEL_PKGS" ] || die "cannot resolve Debian 12's kernel package from linux-image-amd64"
fi

# fetch_kernel PKG: downloads and unpacks PKG into $CACHE/PKG/root once, and
# depmods it so module dependencies can be resolved.
fetch_kernel() {
	local pkg=$1 dir=$CACHE/$1
	if [ ! -e "$dir/root/.unpacked" ]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		if ! (cd "$dir" && apt-get download -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1); then
			apt_update
			(cd "$dir" && apt-get download -o APT::Sandbox::User=root "$pkg" >/dev/null) || die "apt-get download $pkg failed"
		fi
		log "unpacking $(basename "$dir"/*.deb)"
		dpkg-deb -x "$dir"/*.deb "$dir/root"
		rm -f "$dir"/*.deb
		local kver
		kver=$(ls "$dir/root/lib/modules")
		depmod -b "$dir/root" "$kver"
		touch "$dir/root/.unpacked"
	fi
}

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
CGO_ENABLED=0 "$GO" test -c -trimpath -ldflags='-s -w' -o "$BUILD/" "${pkgs[@]}"
CGO_ENABLED=0 "$GO" build -trimpath -ldflags='-s -w' -o "$BUILD/ghostconn" ./cmd/ghostconn
# cmd/ghostconn's TestMain runs `go build -o BIN .`; the guest has no Go, so
# a stand-in copies the binary built here.
if [ -e "$BUILD/ghostconn.test" ]; then mv "$BUILD/ghostconn.test" "$BUILD/cmd.test"; fi

# --- 4. initramfs ------------------------------------------------------------

# copy_bin SRC DEST_DIR: copies a host binary and the shared libraries it
# needs, keeping the libraries' paths.
copy_bin() {
	local src=$1 stage=$2 dest=$3 lib
	install -D -m 0755 "$src" "$stage$dest"
	for lib in $(ldd "$src" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
		[ -e "$stage$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
	done
}

# build_initramfs PKG KVER OUT
build_initramfs() {
	local pkg=$1 kver=$2 out=$3 kroot=$CACHE/$1/root
	local stage=$CACHE/$pkg/stage
	rm -rf "$stage"
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,run,tmp,root,boot,tests,lib/modules/"$kver"}
	mkdir -p "$stage/var"
	ln -s ../run "$stage/var/run"
	chmod 1777 "$stage/tmp"
	mknod -m 600 "$stage/dev/console" c 5 1
	mknod -m 666 "$stage/dev/null" c 1 3

	cp /bin/busybox "$stage/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
	done
	copy_bin "$(command -v ip)" "$stage" /usr/sbin/ip
	copy_bin "$(command -v nft)" "$stage" /usr/sbin/nft
	copy_bin "$(command -v sysctl)" "$stage" /usr/sbin/sysctl
	copy_bin "$(command -v setpriv)" "$stage" /usr/bin/setpriv
	copy_bin "$(command -v unshare)" "$stage" /usr/bin/unshare
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"

	# ghostconn reads CONFIG_HZ from /boot/config-$(uname -r).
	cp "$kroot/boot/config-$kver" "$stage/boot/config-$kver"

	# Modules and their dependencies, in load order, for /init to insmod;
	# a depmod'd subset also lets the kernel autoload through modprobe.
	local m line path order=()
	for m in $MODULES; do
		if grep -qE "/$m\.ko" "$kroot/lib/modules/$kver/modules.builtin"; then
			continue
		fi
		while read -r line; do
			case $line in
			insmod\ *)
				path=${line#insmod }
				path=${path%% *}
				path=${path#"$kroot"}
				if [ ! -e "$stage$path" ]; then
					install -D -m 0644 "$kroot$path" "$stage$path"
					order+=("$path")
				fi
				;;
			esac
		done < <(modprobe -d "$kroot" -S "$kver" --show-depends "$m") || die "module $m not found in $pkg"
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
	if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
		accel=kvm
	else
		accel=tcg
	fi
fi
case $accel in
kvm) accel_args=(-accel kvm -cpu host) ;;
tcg) accel_args=(-accel "tcg,thread=${QEMU_TCG_THREAD:-single}" -cpu max) ;;
*) die "QEMU_ACCEL=$accel: want kvm or tcg" ;;
esac

overall=0
summary=()
total_passed=0 total_failed=0 total_skipped=0
for pkg in $KERNEL_PKGS; do
	fetch_kernel "$pkg"
	kroot=$CACHE/$pkg/root
	kver=$(ls "$kroot/lib/modules")
	vmlinuz=$kroot/boot/vmlinuz-$kver
	grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$kroot/boot/config-$kver" || die "$pkg lacks CONFIG_DEBUG_INFO_BTF=y"
	initrd=$CACHE/$pkg/initramfs.cpio.gz
	build_initramfs "$pkg" "$kver" "$initrd"
	mkdir -p "$CACHE/logs"
	console=$CACHE/logs/$kver.log
	log "booting $kver ($pkg) under qemu ($accel, ${QEMU_SMP} CPUs, $QEMU_MEM), timeout ${QEMU_TIMEOUT}s; console: $console"
	start=$(date +%s)
	set +e
	timeout --kill-after=30 "$QEMU_TIMEOUT" qemu-system-x86_64 \
		"${accel_args[@]}" -machine q35 -m "$QEMU_MEM" -smp "$QEMU_SMP" \
		-nographic -no-reboot -nic none \
		-kernel "$vmlinuz" -initrd "$initrd" \
		-append "console=ttyS0,115200 panic=-1 loglevel=5 softlockup_panic=1 softlockup_all_cpu_backtrace=1 mitigations=off ${KERNEL_APPEND:-}" \
		</dev/null 2>&1 | sed -u -e 's/\r//g' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' | tee "$console"
	rc=${PIPESTATUS[0]}
	set -e
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
	echo
	echo "== $kver: $result ($why) in ${secs}s"
	# Top-level results, and any subtest that failed or skipped.
	grep -E '^--- (PASS|FAIL|SKIP): |^ +--- (FAIL|SKIP): |^GHOSTCONN-KTEST SUITE .* rc=' "$console" | sed 's/^/   /' || true
	summary+=("$kver: $result in ${secs}s ($passed passed, $failed failed, $skipped skipped; subtests included)")
	total_passed=$((total_passed + passed))
	total_failed=$((total_failed + failed))
	total_skipped=$((total_skipped + skipped))
	if [ "$result" != PASS ]; then
		overall=1
		# A guest that died or timed out counts as one failure even when no
		# test reported one.
		[ "$failed" -gt 0 ] || total_failed=$((total_failed + 1))
	fi
done

echo
printf '%s\n' "${summary[@]}"
echo "test-kernels: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit "$overall"
