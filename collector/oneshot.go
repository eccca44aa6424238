package collector

import (
	"errors"
	"fmt"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
)

// OneShot takes a snapshot straight from the iterators, without an agent:
// every TCP socket in every namespace with its holders. There is no history,
// so no closer and no state durations; verdicts that need them (ghost,
// close-wait) cannot be given, while silent and unresponsive can, from the
// sockets' own counters.
func OneShot(hz int, vcfg VerdictConfig) ([]ConnView, error) {
	if hz == 0 {
		var err error
		if hz, err = KernelHZ(); err != nil {
			return nil, err
		}
	}
	probes, err := bpf.Load(bpf.Options{IteratorsOnly: true, RingBufferBytes: 4096})
	if err != nil {
		return nil, err
	}
	defer probes.Close()
	if vcfg == (VerdictConfig{}) {
		vcfg = DefaultVerdictConfig
	}
	t := NewTable(TableConfig{MaxConns: DefaultTableConfig.MaxConns, Verdicts: vcfg})
	dec := Decoder{HZ: hz}
	namespaces, err := Namespaces()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	covered, errs, err := observe(probes, t, &dec, namespaces, now, 1, true)
	if err != nil {
		return nil, err
	}
	if len(covered) == 0 {
		return nil, fmt.Errorf("no network namespace could be read: %w", errors.Join(errs...))
	}
	// Without history the ghost and close-wait rules have nothing to go
	// on: a seeded connection's state began "now".
	t.Evaluate(now)
	return t.List(now, ListOptions{}), nil
}

// OneShotKill acts on views as the agent's kill does, with probes of its
// own (for the CLI when no agent runs). Nothing is logged or counted: the
// CLI prints the results.
func OneShotKill(views []ConnView, graceful, allowListen bool) ([]ActionResult, error) {
	probes, err := bpf.Load(bpf.Options{IteratorsOnly: true, RingBufferBytes: 4096})
	if err != nil {
		return nil, err
	}
	defer probes.Close()
	k := &Actor{Probes: probes}
	return k.Kill(views, graceful, allowListen), nil
}

// OneShotKeepalive arms keepalive on views as the agent's keepalive does,
// with probes of its own.
func OneShotKeepalive(views []ConnView, req KeepaliveRequest) ([]ActionResult, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	hz, err := KernelHZ()
	if err != nil {
		return nil, err
	}
	probes, err := bpf.Load(bpf.Options{IteratorsOnly: true, RingBufferBytes: 4096})
	if err != nil {
		return nil, err
	}
	defer probes.Close()
	k := &Actor{Probes: probes, HZ: hz}
	return k.Keepalive(views, req.Options()), nil
}
