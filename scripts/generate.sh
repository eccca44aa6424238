#!/bin/sh
# Rebuilds the bpf2go pair in bpf/ (ghostconn_<arch>_bpfel.go and .o) from
# the C beside it, with the pinned compiler named in bpf/gen.go.
#
# bpf2go truncates its outputs before it compiles and deletes them when the
# compiler fails, which would leave the tree without the committed objects
# (and `go vet` failing on the missing embed). This keeps a copy of the pair
# and puts it back when generation fails or is interrupted.
set -eu
cd "$(dirname "$0")/../bpf"
GO=${GO:-go}
keep=$(mktemp -d)
ok=
restore() {
	if [ -z "$ok" ]; then
		for f in "$keep"/*; do
			[ -e "$f" ] && cp -p "$f" .
		done
		echo "generate: failed; the previous bpf2go output in bpf/ was left as it was" >&2
	fi
	rm -rf "$keep"
}
trap restore EXIT
trap 'exit 130' INT TERM
for f in ghostconn_*_bpfel.go ghostconn_*_bpfel.o; do
	[ -e "$f" ] && cp -p "$f" "$keep/"
done
"$GO" generate ./...
ok=1
