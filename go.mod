module github.com/ghostconn/ghostconn

go 1.26.0

require (
	github.com/cilium/ebpf v0.22.0
	golang.org/x/sys v0.49.0
)

require golang.org/x/net v0.59.0 // indirect
