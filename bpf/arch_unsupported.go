//go:build !amd64 && !arm64

package bpf

// The eBPF objects are generated for amd64 and arm64 only (-target in
// gen.go), and the files that use them build only there. A build for
// another architecture stops here, on purpose, with this message.
const _ = "ghostconn: no eBPF objects for this GOARCH; they exist for amd64 and arm64: add the target to -target in bpf/gen.go and run make generate" - 0
