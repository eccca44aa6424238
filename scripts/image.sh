#!/bin/sh
# Builds the agent's OCI image offline with Debian's buildah: the static
# binary on an empty base (FROM scratch), nothing pulled from a registry.
#   scripts/image.sh [BINARY]   (default bin/ghostconn, built by make build)
# It ends as $GHOSTCONN_IMAGE (default localhost/ghostconn:dev) in the local
# containers storage and as $GHOSTCONN_IMAGE_TAR (default
# bin/ghostconn-image.tar), an
# oci-archive for `podman load`, `kind load image-archive` or
# `ctr images import`. deploy/container/Dockerfile builds the same layout
# where a registry is reachable.
set -eu
die() { echo "image.sh: $*" >&2; exit 1; }
# Paths given relative to where the script was called from.
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
bin=$(abs "${1:-bin/ghostconn}")
cd "$(dirname "$0")/.."
[ -n "${1:-}" ] || bin=$PWD/bin/ghostconn
image=${GHOSTCONN_IMAGE:-localhost/ghostconn:dev}
tar=${GHOSTCONN_IMAGE_TAR:-bin/ghostconn-image.tar}

[ -x "$bin" ] || die "$bin: no such executable (make build first)"
# The image has no libc: a dynamically linked binary would not start.
if ! od -An -c -N 4 "$bin" | grep -q 'E   L   F'; then
	die "$bin is not an ELF executable"
fi
# A program interpreter (glibc's or musl's dynamic loader) in the file.
if LC_ALL=C grep -q -a -E '/lib(64)?/ld-(linux|musl)' "$bin"; then
	die "$bin is dynamically linked; build it with CGO_ENABLED=0 (make build does)"
fi
# The architecture the binary was built for, as OCI names it.
case $(od -An -t x2 -j 18 -N 2 "$bin" | tr -d ' ') in
003e) arch=amd64 ;;
00b7) arch=arm64 ;;
*) die "$bin: an architecture the agent has no eBPF objects for (amd64, arm64)" ;;
esac
./scripts/deps.sh image

ctr=$(buildah from --quiet scratch) || die "buildah from scratch failed"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr") || die "buildah mount failed"
# The same layout as the Dockerfile: the binary, and /tmp for Go's
# os.TempDir (read-only root filesystem: nothing else is written).
install -d -m 1777 "$mnt/tmp"
install -D -m 0755 "$bin" "$mnt/usr/local/bin/ghostconn"
buildah umount "$ctr" >/dev/null
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
buildah config \
	--os linux --arch "$arch" \
	--entrypoint '["/usr/local/bin/ghostconn"]' --cmd agent \
	--label org.opencontainers.image.title=ghostconn \
	--label org.opencontainers.image.source=https://github.com/ghostconn/ghostconn \
	--label org.opencontainers.image.revision="$revision" \
	"$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null || die "buildah commit $image failed"
trap - EXIT
rm -f "$tar"
buildah push --quiet "$image" "oci-archive:$tar:$image" || die "buildah push to $tar failed"
echo "image $image ($arch), archive $tar"
