#!/bin/sh
# Runs the real generate step with the real clang-19 failing on a compile
# error (a wrapper first on PATH forces a header with #error on it) and
# checks that the bpf2go pair in bpf/ is byte for byte what it was. clang
# removes its -o output when it fails, so without scripts/generate.sh's
# restore the committed .o would be gone.
set -eu
cd "$(dirname "$0")/.."
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
real=$(command -v clang-19) || { echo "check-generate-failure: clang-19 not found (make generate-deps)" >&2; exit 1; }
echo '#error injected failure' >"$fake/broken.h"
printf '#!/bin/sh\nexec %s "$@" -include %s/broken.h\n' "$real" "$fake" >"$fake/clang-19"
chmod +x "$fake/clang-19"
sum() { cat bpf/ghostconn_*_bpfel.go bpf/ghostconn_*_bpfel.o | cksum; }
before=$(sum)
if PATH="$fake:$PATH" ./scripts/generate.sh >"$fake/log" 2>&1; then
	cat "$fake/log" >&2
	echo "check-generate-failure: generate succeeded with a failing compiler" >&2
	exit 1
fi
grep -q "injected failure" "$fake/log" || { cat "$fake/log" >&2; echo "check-generate-failure: generate failed before it reached the compiler" >&2; exit 1; }
after=$(sum)
if [ "$before" != "$after" ]; then
	git status --short -- bpf/ >&2
	echo "check-generate-failure: a failed generate changed or removed the committed bpf2go pair" >&2
	exit 1
fi
echo "check-generate-failure: a failed generate left the bpf2go pair as it was"
