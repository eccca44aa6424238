//go:build amd64 || arm64

package bpf

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
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
func SockDestroyAvailable() bool { return sockDestroyAvailable() }

var sockDestroyAvailable = sync.OnceValue(func() bool { return kfuncAvailable("bpf_sock_destroy") })

// kfuncAvailable reports whether the running kernel's BTF has the function
// name (a kfunc: helpers are probed by loading a program).
func kfuncAvailable(name string) bool {
	spec, err := kernelSpec()
	if err != nil {
		return false
	}
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}

// Destroy aborts the sockets with the given cookies in the network
// namespace at nsPath ("" for the agent's own) with bpf_sock_destroy(),
// called from iter/tcp on the exact socket: the peer gets a RST, the
// holder ECONNABORTED. It returns what the iterator found of each cookie;
// a socket it did not meet is reported unseen and untouched. One action
// runs at a time.
func (p *Probes) Destroy(nsPath string, cookies []uint64) (map[uint64]ActResult, error) {
	reqs := make(map[uint64]GhostconnActReq, len(cookies))
	for _, c := range cookies {
		reqs[c] = GhostconnActReq{}
	}
	return p.runAct(ProgIterDestroy, nsPath, reqs)
}

// KeepaliveOptions are the options SetKeepalive sets; a zero field is left
// as the socket has it (Keepalive always turns SO_KEEPALIVE on).
type KeepaliveOptions struct {
	IdleSeconds, IntervalSeconds, Count int32
	UserTimeoutMs                       int32
}

// SetKeepalive turns on TCP keepalive, with the given idle time, interval
// and count (and TCP_USER_TIMEOUT when set), on the sockets with the given
// cookies in the network namespace at nsPath, with bpf_setsockopt() from
// iter/tcp: the application's own getsockopt sees the new values. A
// refusal names the option in ActResult.Err.
func (p *Probes) SetKeepalive(nsPath string, cookies []uint64, o KeepaliveOptions) (map[uint64]ActResult, error) {
	req := GhostconnActReq{Mask: uint32(GhostconnSockoptBitSOCKOPT_KEEPALIVE)}
	for _, f := range []struct {
		bit GhostconnSockoptBit
		v   int32
		dst *int32
	}{
		{GhostconnSockoptBitSOCKOPT_KEEPIDLE, o.IdleSeconds, &req.KeepIdle},
		{GhostconnSockoptBitSOCKOPT_KEEPINTVL, o.IntervalSeconds, &req.KeepIntvl},
		{GhostconnSockoptBitSOCKOPT_KEEPCNT, o.Count, &req.KeepCnt},
		{GhostconnSockoptBitSOCKOPT_USER_TIMEOUT, o.UserTimeoutMs, &req.UserTimeoutMs},
	} {
		if f.v > 0 {
			req.Mask |= uint32(f.bit)
			*f.dst = f.v
		}
	}
	reqs := make(map[uint64]GhostconnActReq, len(cookies))
	for _, c := range cookies {
		reqs[c] = req
	}
	return p.runAct(ProgIterKeepalive, nsPath, reqs)
}

// sockoptNames name the options of an act_req's failed bit.
var sockoptNames = map[uint32]string{
	uint32(GhostconnSockoptBitSOCKOPT_KEEPALIVE):    "SO_KEEPALIVE",
	uint32(GhostconnSockoptBitSOCKOPT_KEEPIDLE):     "TCP_KEEPIDLE",
	uint32(GhostconnSockoptBitSOCKOPT_KEEPINTVL):    "TCP_KEEPINTVL",
	uint32(GhostconnSockoptBitSOCKOPT_KEEPCNT):      "TCP_KEEPCNT",
	uint32(GhostconnSockoptBitSOCKOPT_USER_TIMEOUT): "TCP_USER_TIMEOUT",
}

// actionIter returns the action iterator name, loading and attaching it
// the first time (under actMu). A kernel that lacks what it needs is named
// without trying: the loader would look for the kfunc in every module's
// BTF first (seconds under TCG).
func (p *Probes) actionIter(name string) (*link.Iter, error) {
	it := map[string]**link.Iter{ProgIterDestroy: &p.iterDestroy, ProgIterKeepalive: &p.iterKeepalive}[name]
	if *it != nil {
		return *it, nil
	}
	if err, ok := p.actionErrs[name]; ok {
		return nil, err
	}
	var err error
	switch {
	case name == ProgIterDestroy && KernelLacks(name) != "":
		err = ErrNoSockDestroy
	case KernelLacks(name) != "":
		err = fmt.Errorf("this kernel has no %s", KernelLacks(name))
	default:
		err = p.loadAttach(actionPrograms[name])
	}
	if err != nil {
		if name == ProgIterDestroy && !errors.Is(err, ErrNoSockDestroy) {
			err = fmt.Errorf("%w: %w", ErrNoSockDestroy, err)
		}
		p.actionErrs[name] = err
		return nil, err
	}
	return *it, nil
}

// runAct writes reqs into act_targets, runs the action iterator name in
// the namespace at nsPath, and returns what it found of each socket.
func (p *Probes) runAct(name, nsPath string, reqs map[uint64]GhostconnActReq) (map[uint64]ActResult, error) {
	if len(reqs) > MaxActTargets {
		return nil, fmt.Errorf("act on %d sockets at once: at most %d", len(reqs), MaxActTargets)
	}
	p.actMu.Lock()
	defer p.actMu.Unlock()
	it, err := p.actionIter(name)
	if err != nil {
		return nil, err
	}
	if err := p.clearActTargets(); err != nil {
		return nil, err
	}
	defer p.clearActTargets()
	for c, req := range reqs {
		if err := p.actTargets.Update(c, req, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("write act_targets: %w", err)
		}
	}
	r, err := openIn(it, nsPath)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, r)
	r.Close()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	out := make(map[uint64]ActResult, len(reqs))
	for c := range reqs {
		var v GhostconnActReq
		if err := p.actTargets.Lookup(c, &v); err != nil {
			return nil, fmt.Errorf("read act_targets: %w", err)
		}
		res := ActResult{Seen: v.Seen != 0, State: v.State, Full: v.Full != 0}
		if v.Result < 0 {
			res.Err = syscall.Errno(-v.Result)
			if opt, ok := sockoptNames[v.Failed]; ok {
				res.Err = fmt.Errorf("%s: %w", opt, res.Err)
			}
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

// KernelLacks names what the running kernel lacks for the program, or ""
// when it has what the program needs as far as the agent knows: a test (or
// status) can then tell a program this kernel cannot load from one that
// failed.
func KernelLacks(name string) string {
	if name == ProgIterDestroy && !SockDestroyAvailable() {
		return featureNeeds(FeatureSockDestroy)
	}
	if name == ProgIterKeepalive && !HasFeature(FeatureIterSockopt) {
		return featureNeeds(FeatureIterSockopt)
	}
	for _, def := range programs {
		if def.name == name && def.loop && def.noLoop == "" && !HasFeature(FeatureLoop) {
			return featureNeeds(FeatureLoop)
		}
	}
	return ""
}
