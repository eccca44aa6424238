#!/usr/bin/env bash
# Runs .ci/run as CI does (root, CI=true, no standard input, a fresh clone)
# inside a scratch Debian 12 root made with debootstrap, so that nothing
# installed on this host by hand or by an earlier run (clang-19, libbpf-dev,
# prometheus, nftables, qemu, kernel packages, Go's module cache) can hide a
# missing install step. The scratch root starts with what a new machine of
# this kind has that the project relies on (Go from the host's
# /usr/local/go, gcc, git, make, iproute2, procps, util-linux, systemd,
# python3) and none of what the project's scripts install; /sys is a new
# sysfs without tracefs or bpffs mounted; the host's cgroup mounts are
# bound in, as a machine boots with them.
#
#   scripts/ci-scratch.sh [REV]        run .ci/run on REV (default HEAD)
#
# Settings (environment):
#   SCRATCH_DIR   where the base root, the run root and logs live
#                 (default /var/tmp/ghostconn-scratch)
#   SCRATCH_KEEP  1 keeps the run root afterwards, for a look inside
#   SCRATCH_BASE_ONLY  1 only makes the base root
#
# Exits with .ci/run's status; 2 on a setup problem. The log is
# $SCRATCH_DIR/ci.log. Everything runs in a private mount namespace, so the
# host's mounts are left as they were.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$PWD
REV=$(git rev-parse "${1:-HEAD}")
DIR=${SCRATCH_DIR:-/var/tmp/ghostconn-scratch}
BASE=$DIR/base
RUN=$DIR/run
GOROOT_HOST=${GOROOT_HOST:-/usr/local/go}

die() { printf 'ci-scratch: %s\n' "$*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mounts)"
[ -x "$GOROOT_HOST/bin/go" ] || die "no Go at $GOROOT_HOST (a machine of this kind has it there)"
mkdir -p "$DIR"

# What a new machine of this kind has that the project may rely on; never
# what the project's own scripts install.
PACKAGES=ca-certificates,git,make,gcc,libc6-dev,iproute2,procps,util-linux,systemd,python3,curl,xz-utils,zstd,lsof,strace,tmux

if [ ! -e "$BASE/.complete" ]; then
	command -v debootstrap >/dev/null || {
		# A new machine's package lists may be stale or absent.
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
			die "installing debootstrap failed"
	}
	rm -rf "$BASE"
	echo "ci-scratch: debootstrap bookworm into $BASE" >&2
	debootstrap --variant=minbase --include="$PACKAGES" bookworm "$BASE" http://deb.debian.org/debian >"$DIR/debootstrap.log" 2>&1 ||
		die "debootstrap failed: see $DIR/debootstrap.log"
	# The same suites as a machine of this kind.
	cat >"$BASE/etc/apt/sources.list" <<-'EOF'
		deb http://deb.debian.org/debian bookworm main
		deb http://deb.debian.org/debian bookworm-updates main
		deb http://deb.debian.org/debian-security bookworm-security main
	EOF
	touch "$BASE/.complete"
fi
[ "${SCRATCH_BASE_ONLY:-}" = 1 ] && exit 0

# From here on, however the script ends (a die, a failed step under set -e,
# .ci/run's own status, a signal), the run root goes as it does after a
# run, unless SCRATCH_KEEP=1 keeps it. Its mounts (proc, sysfs, cgroup,
# /dev, /run and the bind of the root itself) are made only inside the
# private mount namespace below and go with it, so the host has none to
# unmount.
remove_run() {
	[ "${SCRATCH_KEEP:-}" = 1 ] && return
	rm -rf "$RUN" || printf 'ci-scratch: could not remove %s\n' "$RUN" >&2
}
trap remove_run EXIT
rm -rf "$RUN"
cp -a "$BASE" "$RUN"
cp -a "$GOROOT_HOST" "$RUN/usr/local/go"
cp /etc/resolv.conf "$RUN/etc/resolv.conf"
# The machine's own CAs (this workplace's egress proxy among them) are part
# of the machine, not of the project.
if [ -n "$(ls /usr/local/share/ca-certificates 2>/dev/null)" ]; then
	cp -r /usr/local/share/ca-certificates/. "$RUN/usr/local/share/ca-certificates/"
	chroot "$RUN" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the scratch root"
fi
git clone -q --no-hardlinks "$SRC" "$RUN/work/ci"
git -C "$RUN/work/ci" checkout -q "$REV"
# CI copies shared/ beside the clone, without write bits.
if [ -d "$SRC/../shared" ]; then
	cp -r "$SRC/../shared" "$RUN/work/shared"
	chmod -R a-w "$RUN/work/shared"
fi

echo "ci-scratch: .ci/run on $REV in $RUN (log: $DIR/ci.log)" >&2
set +e
unshare --mount --propagation private bash -s "$RUN" <<'EOS' 2>&1 | tee "$DIR/ci.log"
set -eu
R=$1
# The root must be a mount point of its own, as a machine's / is: `ip netns`
# and `unshare --propagation` change the propagation of /, which fails on a
# plain directory.
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
start=$(date +%s)
rc=0
chroot "$R" /usr/bin/env -i \
	HOME=/root CI=true LANG=C.UTF-8 TERM=dumb GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
	SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
	PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	bash -c 'cd /work/ci && bash .ci/run </dev/null' || rc=$?
echo "ci-scratch: .ci/run exited $rc after $(( $(date +%s) - start ))s"
exit $rc
EOS
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
