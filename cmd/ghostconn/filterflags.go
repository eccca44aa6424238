package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"syscall"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

// filterFlags are the connection filters `ls` and `watch` share. They are
// kept as strings and validated with the API's own parser, so the CLI and
// the agent accept exactly the same values.
type filterFlags struct {
	fs     *flag.FlagSet
	values map[string]*string
	closed *bool
}

// filterFlagOrder is the order filters are checked in, so that with several
// bad flags the message is always about the same one.
var filterFlagOrder = []string{"verdict", "state", "pid", "comm", "port", "remote", "sort"}

// addFilterFlags registers --verdict, --state, --pid, --comm, --port and
// --remote on fs, and --sort and --closed when listing is true.
func addFilterFlags(fs *flag.FlagSet, listing bool) *filterFlags {
	ff := &filterFlags{fs: fs, values: map[string]*string{}}
	ff.values["verdict"] = fs.String("verdict", "", "only connections with this verdict: "+strings.Join(collector.VerdictKinds, ", "))
	ff.values["state"] = fs.String("state", "", "only connections in this TCP state (ESTABLISHED, close-wait, ...)")
	ff.values["pid"] = fs.String("pid", "", "only connections a process with this pid holds, opened or closed")
	ff.values["comm"] = fs.String("comm", "", "only connections a process with this name holds, opened or closed")
	ff.values["port"] = fs.String("port", "", "only connections with this port at either end")
	ff.values["remote"] = fs.String("remote", "", "only connections whose remote address is in this CIDR (10.0.0.0/8) or is this address")
	if listing {
		ff.values["sort"] = fs.String("sort", "", "order by "+strings.Join(exporter.SortKeys, ", ")+" (longest or most first); default by cookie")
		ff.closed = fs.Bool("closed", false, "include recently closed connections")
	}
	return ff
}

// filter validates every filter flag the user gave, one at a time in a fixed
// order, and returns the Filter they make. A bad value is a usage error
// that names the problem.
func (ff *filterFlags) filter() (exporter.Filter, error) {
	given := map[string]bool{}
	ff.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	q := url.Values{}
	for _, name := range filterFlagOrder {
		p, ok := ff.values[name]
		if !ok || !given[name] {
			continue
		}
		if name == "remote" {
			// The API names the parameter; the CLI names the flag.
			if _, err := exporter.ParseCIDR(*p); err != nil {
				return exporter.Filter{}, usagef("--remote: %v", err)
			}
		}
		if _, err := exporter.ParseFilter(url.Values{name: {*p}}); err != nil {
			return exporter.Filter{}, usageError{err.Error()}
		}
		q.Set(name, *p)
	}
	if ff.closed != nil && *ff.closed {
		q.Set("closed", "true")
	}
	f, err := exporter.ParseFilter(q)
	if err != nil {
		return exporter.Filter{}, usageError{err.Error()}
	}
	return f, nil
}

// checkOutput validates -o against the formats a command knows.
func checkOutput(o string, known ...string) error {
	for _, k := range known {
		if o == k {
			return nil
		}
	}
	return usagef("-o %q: use %s or %s", o, strings.Join(known[:len(known)-1], ", "), known[len(known)-1])
}

// agentError makes a failure to reach the agent say what to do about it.
func agentError(sock string, err error) error {
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("cannot connect to the agent on %s: permission denied (the API socket is mode 0600, for the agent's user only; run as root)", sock)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("agent on %s: %w", sock, ue.Err)
	}
	return err
}

// connections asks the agent on sock for the connections that pass f. With
// no agent there, it takes a one-shot snapshot from the kernel iterators
// instead, filters and sorts it the way the agent would, and says so on
// stderr. The bool is true for a snapshot.
func connections(ctx context.Context, sock string, f exporter.Filter, stderr io.Writer) ([]collector.ConnView, bool, error) {
	conns, err := exporter.NewClient(sock).Connections(ctx, f)
	if err == nil {
		return conns, false, nil
	}
	if !errors.Is(err, exporter.ErrNoAgent) {
		return nil, false, agentError(sock, err)
	}
	all, serr := collector.OneShot(0, collector.DefaultVerdictConfig)
	if serr != nil {
		return nil, true, fmt.Errorf("no agent is listening on %s, and the one-shot snapshot from the kernel iterators failed too: %v", sock, serr)
	}
	fmt.Fprintf(stderr, "ghostconn: no agent on %s; one-shot snapshot from the kernel iterators (no history: closers, state durations, ghost and close-wait verdicts need the agent)\n", sock)
	conns = make([]collector.ConnView, 0, len(all))
	for i := range all {
		if f.Match(&all[i]) {
			conns = append(conns, all[i])
		}
	}
	exporter.Sort(conns, f.Sort)
	return conns, true, nil
}
