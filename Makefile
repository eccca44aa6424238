# ghostconn build, test and code generation.
#
# As root (a minimal Debian has no sudo; from a user account use
# sudo env "PATH=$PATH" make ...):
#   make run             build and run the agent with its defaults
#   make test            install test dependencies, vet, run every test
#   make generate        rebuild the eBPF objects (installs clang-19, llvm-19)
#   make check-generate  fail if the committed objects are stale
#   make fuzz            run every fuzz target for FUZZTIME (60s) each
#   make bench           benchmarks against the goals (~11 min), bench/RESULTS.md

# sudo's secure_path usually lacks the Go toolchain: fall back to where the
# Go tarball installs.
GO        ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go),go)
BIN       := bin/ghostconn
CLANG     := clang-19
LLVMSTRIP := llvm-strip-19

.PHONY: all build image run test test-deploy test-deps vet fuzz bench soak bench-unit cross test-kernels generate generate-deps check-generate vmlinux clean

all: build

# Without cgo, so the agent can drop capabilities on every thread.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/ghostconn

# The agent's OCI image, built offline (buildah, FROM scratch): localhost/ghostconn:dev
# and bin/ghostconn-image.tar. See deploy/README.md.
image: build
	./scripts/image.sh $(BIN)

run: build
	./$(BIN) agent

# Privileged tests load the real programs. Outside CI they skip (with the
# reason) when not root; with CI=true they fail instead.
#
# -p 1: one package at a time. Several packages start agents and drive the
# kernel; run side by side they slow each other's snapshots and the
# latency assertions (a ghost within grace+1s) would measure contention.
test: test-deps vet
	$(GO) test -count=1 -p 1 ./...

# The systemd unit under a real systemd as PID 1 (root): a cached Debian 12 root
# booted under qemu; see deploy/systemd/test.sh and deploy/README.md.
test-deploy:
	./deploy/systemd/test.sh

test-deps:
	@./scripts/deps.sh test

vet:
	$(GO) vet ./...
	$(GO) vet -tags systemdguest ./deploy

# Each target gets FUZZTIME of its own: event decoding, the table under
# arbitrary events, API query and target parsing, agent flag parsing.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./collector:FuzzDecode ./collector:FuzzTableApply ./exporter:FuzzParseFilter ./exporter:FuzzParseTarget ./cmd/ghostconn:FuzzAgentFlags
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME); \
	done

# Benchmarks against the performance goals (root, about 11 min): prints the
# table and writes bench/RESULTS.md. See bench/README.md.
bench: build
	@./scripts/deps.sh bench
	$(GO) run ./bench/cmd/ghostbench --ghostconn $(BIN) --out bench/RESULTS.md $(BENCHFLAGS)

# 10-minute soak at maximum churn (root; not for CI): RSS/goroutine slopes, crashes, loss accounting -> bench/SOAK.md.
soak: build
	$(GO) run ./bench/cmd/ghostbench soak --ghostconn $(BIN) --out bench/SOAK.md $(SOAKFLAGS)

# Unit benchmarks that need no root, with allocations.
bench-unit:
	$(GO) test -run '^$$' -bench . -benchmem ./collector/ ./bench/...

# Build and vet for arm64 (the other architecture with eBPF objects).
cross:
	GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...
	GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...

# The privileged suites on Debian 11's 5.10, Debian 12's 6.1 and Debian 13's
# 6.12 under qemu (root; CI runs it). ARCH=arm64 boots Debian 12's arm64
# kernel under qemu-system-aarch64 with the bpf and collector suites.
# The longest (6.12) goes first, so that two at a time 5.10 follows 6.1
# beside it. See kernels/README.md.
ARCH ?= amd64
KERNELS ?= $(if $(filter arm64 aarch64,$(ARCH)),6.1,6.12 6.1 5.10)
test-kernels:
	ARCH='$(ARCH)' KERNELS='$(KERNELS)' ./kernels/run.sh

generate-deps:
	@./scripts/deps.sh generate

# bpf2go compiles bpf/ghostconn.bpf.c and writes the Go bindings beside it.
# The C sees only bpf/ and bpf/headers (-nostdinc in bpf/gen.go): nothing
# from libbpf-dev or the system's include paths. A failed run leaves the
# previous pair in place (scripts/generate.sh).
generate: generate-deps
	GO=$(GO) ./scripts/generate.sh

# The committed pair must be what the pinned compiler makes of the committed
# C; then a generate whose compiler fails must leave that pair untouched.
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "committed bpf2go output is stale: run 'make generate' and commit bpf/"; exit 1; }
	@test -z "$$(git status --porcelain -- bpf/)" || { git status --porcelain -- bpf/; echo "make generate left new files in bpf/"; exit 1; }
	@./scripts/check-generate-failure.sh

# vmlinux.h is generated from the running kernel's BTF; it is only needed
# again to use kernel types it does not have yet.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/headers/vmlinux.h

clean:
	rm -rf bin
