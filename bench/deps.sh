#!/bin/sh
# Installs what `make bench` needs on a Debian machine, only when missing:
# libbpf-tools (tcpstates, the comparison observer), lsof and iproute2 (ss,
# the comparison listers).
set -eu

need=""
[ -x /usr/sbin/tcpstates ] || [ -x /usr/bin/tcpstates ] || command -v tcpstates >/dev/null 2>&1 || need="$need libbpf-tools"
command -v lsof >/dev/null 2>&1 || need="$need lsof"
command -v ss >/dev/null 2>&1 || need="$need iproute2"
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
