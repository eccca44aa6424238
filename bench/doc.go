// Package bench holds ghostconn's benchmarks: the harness that `make bench`
// runs as root (cmd/ghostbench, see README.md) and unit benchmarks that need
// no privileges (go test -run '^$' -bench . ./bench/).
package bench
