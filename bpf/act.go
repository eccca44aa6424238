package bpf

import (
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// ErrNoSockDestroy marks a kernel on which the agent cannot abort a socket
// with bpf_sock_destroy(): it came in Linux 6.5, and iter_destroy, which
// calls it, did not load.
var ErrNoSockDestroy = errors.New("bpf_sock_destroy() is not available (Linux 6.5+)")

// MaxActTargets is how many sockets one action iterator run takes.
const MaxActTargets = 4096

// ActResult is what an action iterator found of one socket and did to it.
type ActResult struct {
	// Seen says the iterator met the socket in the namespace; a socket it
	// did not meet was gone (or never there), and nothing was done to it.
	Seen bool
	// State is the socket's TCP state when the iterator met it.
	State uint8
	// Full is false for a request or TIME_WAIT socket, which cannot be
	// destroyed this way.
	Full bool
	// Err is the kernel's refusal, nil when the action was done.
	Err error
}

// SockDestroyAvailable reports whether the running kernel has the
// bpf_sock_destroy kfunc, from its BTF.
func SockDestroyAvailable() bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var fn *btf.Func
	return spec.TypeByName("bpf_sock_destroy", &fn) == nil
}

// Destroy aborts the sockets with the given cookies in the network
// namespace at nsPath ("" for the agent's own) with bpf_sock_destroy(),
// called from iter/tcp on the exact socket: the peer gets a RST, the
// holder ECONNABORTED. It returns what the iterator found of each cookie;
// a socket it did not meet is reported unseen and untouched. One action
// runs at a time.
func (p *Probes) Destroy(nsPath string, cookies []uint64) (map[uint64]ActResult, error) {
	if p.iterDestroy == nil {
		return nil, fmt.Errorf("%w: %v", ErrNoSockDestroy, p.Attached[ProgIterDestroy])
	}
	if len(cookies) > MaxActTargets {
		return nil, fmt.Errorf("destroy %d sockets at once: at most %d", len(cookies), MaxActTargets)
	}
	p.actMu.Lock()
	defer p.actMu.Unlock()
	if err := p.clearActTargets(); err != nil {
		return nil, err
	}
	defer p.clearActTargets()
	for _, c := range cookies {
		if err := p.actTargets.Update(c, GhostconnActReq{}, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("write act_targets: %w", err)
		}
	}
	r, err := openIn(p.iterDestroy, nsPath)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, r)
	r.Close()
	if err != nil {
		return nil, fmt.Errorf("run iter_destroy: %w", err)
	}
	out := make(map[uint64]ActResult, len(cookies))
	for _, c := range cookies {
		var v GhostconnActReq
		if err := p.actTargets.Lookup(c, &v); err != nil {
			return nil, fmt.Errorf("read act_targets: %w", err)
		}
		res := ActResult{Seen: v.Seen != 0, State: v.State, Full: v.Full != 0}
		if v.Result < 0 {
			res.Err = syscall.Errno(-v.Result)
		}
		out[c] = res
	}
	return out, nil
}

// clearActTargets empties act_targets, of an earlier action's entries too.
func (p *Probes) clearActTargets() error {
	var keys []uint64
	var k uint64
	var v GhostconnActReq
	it := p.actTargets.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read act_targets: %w", err)
	}
	for _, k := range keys {
		if err := p.actTargets.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear act_targets: %w", err)
		}
	}
	return nil
}
