#!/bin/sh
# Installs what a make target needs on a Debian machine, only when missing.
#   deps.sh test      iproute2 and nftables (network namespaces, packet drops),
#                     prometheus (promtool checks the metrics), buildah,
#                     podman and runc (the image under a container runtime)
#   deps.sh generate  clang-19 and llvm-19 (pinned compiler for bpf2go)
#   deps.sh bench     libbpf-tools (tcpstates, the comparison observer), lsof
#                     and iproute2 (ss, the comparison listers)
#   deps.sh image     buildah (make image)
set -eu

need=""
case "${1:-}" in
test)
	command -v ip >/dev/null 2>&1 || need="$need iproute2"
	command -v nft >/dev/null 2>&1 || need="$need nftables"
	command -v setpriv >/dev/null 2>&1 || need="$need util-linux"
	command -v promtool >/dev/null 2>&1 || need="$need prometheus"
	command -v buildah >/dev/null 2>&1 || need="$need buildah"
	command -v podman >/dev/null 2>&1 || need="$need podman"
	command -v runc >/dev/null 2>&1 || need="$need runc"
	;;
generate)
	command -v clang-19 >/dev/null 2>&1 || need="$need clang-19"
	command -v llvm-strip-19 >/dev/null 2>&1 || need="$need llvm-19"
	;;
bench)
	[ -x /usr/sbin/tcpstates ] || [ -x /usr/bin/tcpstates ] || command -v tcpstates >/dev/null 2>&1 || need="$need libbpf-tools"
	command -v lsof >/dev/null 2>&1 || need="$need lsof"
	command -v ss >/dev/null 2>&1 || need="$need iproute2"
	;;
image)
	command -v buildah >/dev/null 2>&1 || need="$need buildah"
	;;
*)
	echo "usage: $0 test|generate|bench|image" >&2
	exit 2
	;;
esac
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "missing:$need; install them (apt-get install$need) or run as root" >&2
	exit 1
fi
echo "installing:$need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
