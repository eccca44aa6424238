package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func runWho(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("who", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ghostconn who [flags] TARGET\n\nTARGET is an ip:port of either end (127.0.0.1:80, [::1]:80), a socket inode or a socket cookie.\n\nflags:")
		fs.PrintDefaults()
	}
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "text", "output format: text or json")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := checkOutput(*output, "text", "json"); err != nil {
		return err
	}
	switch len(pos) {
	case 0:
		return usagef("missing TARGET: an ip:port of either end, a socket inode or a socket cookie")
	case 1:
	default:
		return usagef("unexpected argument %q: who takes one TARGET", pos[1])
	}
	target, err := exporter.ParseTarget(pos[0])
	if err != nil {
		return usageError{err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := exporter.Filter{Target: &target, History: true, Closed: true}
	conns, snapshot, err := connections(ctx, *apiSocket, f, stderr)
	if err != nil {
		return err
	}
	// Live connections first, then the closed ones; by cookie within.
	sort.SliceStable(conns, func(i, j int) bool { return conns[i].ClosedAt == nil && conns[j].ClosedAt != nil })
	if *output == "json" {
		if conns == nil {
			conns = []collector.ConnView{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(conns); err != nil {
			return err
		}
	}
	if len(conns) == 0 {
		what := "connection"
		if snapshot {
			what = "open connection"
		}
		fmt.Fprintf(stderr, "ghostconn who: no %s matches %s\n", what, target.Raw)
		return errNoMatch
	}
	if *output == "json" {
		return nil
	}
	p := painter(colorEnabled(stdout))
	now := time.Now()
	var b strings.Builder
	for i := range conns {
		if i > 0 {
			b.WriteString("\n")
		}
		if len(conns) > 1 {
			fmt.Fprintf(&b, "%s\n", p.bold(fmt.Sprintf("=== %d of %d connections matching %s ===", i+1, len(conns), target.Raw)))
		}
		describe(&b, &conns[i], now, snapshot, p)
	}
	_, err = io.WriteString(stdout, b.String())
	return err
}

// parseInterspersed parses flags that may come before or after the
// positional arguments (`who 10.0.0.1:80 -o json`), and returns the
// positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// describe writes everything known about one connection, in sections.
func describe(b *strings.Builder, v *collector.ConnView, now time.Time, snapshot bool, p painter) {
	section := func(name string) { fmt.Fprintf(b, "%s\n", p.bold(name)) }
	kv := func(k, format string, args ...any) { fmt.Fprintf(b, "  %-13s %s\n", k, fmt.Sprintf(format, args...)) }

	section("Connection")
	kv("cookie", "%d", v.Cookie)
	kv("inode", "%d", v.Inode)
	kv("family", "%s (netns %d)", v.Family, v.Netns)
	kv("local", "%s", v.Local)
	kv("remote", "%s", v.Remote)
	if snapshot {
		kv("state", "%s", v.State)
	} else {
		kv("state", "%s for %s (since %s)", v.State, ago(now, v.StateSince), clock(now, v.StateSince))
	}
	if v.UID != nil {
		kv("uid", "%d", *v.UID)
	} else {
		kv("uid", "unknown (no snapshot has seen the socket yet)")
	}
	if !snapshot {
		kv("first seen", "%s (%s ago)", clock(now, v.FirstSeen), ago(now, v.FirstSeen))
	}
	if v.Opener != nil {
		kv("opened by", "%s (pid %d)", v.Opener.Comm, v.Opener.PID)
	}
	if v.ClosedAt != nil {
		kv("closed at", "%s (%s ago)", clock(now, *v.ClosedAt), ago(now, *v.ClosedAt))
	}

	b.WriteString("\n")
	section("Verdicts")
	if len(v.Verdicts) == 0 {
		if v.ClosedAt != nil {
			b.WriteString("  none (closed connections carry no verdicts)\n")
		} else {
			b.WriteString("  none\n")
		}
	}
	for _, x := range v.Verdicts {
		fmt.Fprintf(b, "  %s since %s (%s ago)\n", p.verdict(x.Kind), clock(now, x.Since), ago(now, x.Since))
		fmt.Fprintf(b, "    evidence: %s\n", x.Detail)
		if x.GiveUp != nil {
			fmt.Fprintf(b, "    the kernel gives up at %s\n", clock(now, *x.GiveUp))
		}
	}
	if snapshot {
		b.WriteString("  (one-shot snapshot: ghost and close-wait need the agent's history)\n")
	}

	b.WriteString("\n")
	section("Holders")
	if len(v.Holders) == 0 {
		switch {
		case v.ClosedAt != nil:
			b.WriteString("  none (closed)\n")
		case !v.HoldersKnown:
			// No walk has looked since the connection appeared: saying
			// nobody holds it would be a guess.
			fmt.Fprintf(b, "  not yet known: %s\n", v.HoldersUnknownReason)
		default:
			b.WriteString("  none: no process has an fd of this socket (orphaned, or a kernel socket)\n")
		}
	} else {
		t := table{indent: "  ", header: []string{"PID", "PPID", "COMM", "FD"}}
		for _, h := range v.Holders {
			t.add(plain(fmt.Sprint(h.PID)), plain(fmt.Sprint(h.PPID)), plain(h.Comm), plain(fmt.Sprint(h.FD)))
		}
		t.write(b)
		if shared(v.Holders) {
			fmt.Fprintf(b, "  * shared: %s refer to this socket\n", sharedSummary(v.Holders))
		}
	}

	b.WriteString("\n")
	section("Closed by")
	switch {
	case snapshot:
		b.WriteString("  unknown: a one-shot snapshot has no history (run the agent to see closers)\n")
	case v.ClosedBy == nil:
		b.WriteString("  nobody: no fd of this socket was closed while other references remained\n")
	default:
		cb := v.ClosedBy
		var what string
		if cb.Op == "exit" {
			what = fmt.Sprintf("exited while holding fd %d", cb.FD)
		} else {
			what = fmt.Sprintf("closed fd %d (%s)", cb.FD, cb.Op)
		}
		fmt.Fprintf(b, "  %s (pid %d, ppid %d) %s at %s (%s ago); %s left\n",
			cb.Comm, cb.PID, cb.PPID, what, clock(now, cb.At), ago(now, cb.At), plural(int(cb.RefsLeft), "reference", "references"))
	}

	b.WriteString("\n")
	section("Keepalive")
	k := v.Keepalive
	if k.Enabled {
		src := "from the namespace's sysctls"
		if k.Source == "socket" {
			src = "set on the socket"
		}
		fmt.Fprintf(b, "  on: idle %s, interval %s, count %d (%s)\n", secondsDuration(k.IdleSeconds), secondsDuration(k.IntervalSeconds), k.Count, src)
	} else {
		fmt.Fprintf(b, "  off (SO_KEEPALIVE not set)\n")
	}
	if v.UserTimeoutSeconds > 0 {
		kv("user timeout", "%s (TCP_USER_TIMEOUT)", secondsDuration(v.UserTimeoutSeconds))
	}
	kv("timer fired", "%s", plural(int(v.KeepaliveFirings), "time", "times"))

	b.WriteString("\n")
	section("Idle, retransmits, probes")
	kv("idle", "%s", idleText(v))
	kv("retransmits", "%d in all, %d consecutive timeouts now", v.Retransmits, v.RTORetransmits)
	kv("probes out", "%d unanswered", v.ProbesOut)
	kv("queues", "send %d bytes, receive %d bytes", v.SendQueue, v.RecvQueue)

	b.WriteString("\n")
	section("History")
	switch {
	case snapshot:
		b.WriteString("  none: a one-shot snapshot has no history (run the agent to record state changes)\n")
	case len(v.History) == 0:
		b.WriteString("  no state change seen (the connection predates the agent or was found by a snapshot)\n")
	default:
		t := table{indent: "  ", header: []string{"TIME", "FROM", "TO", "SOURCE", "BY"}}
		for _, h := range v.History {
			from := "-"
			if h.From != 0 {
				from = h.From.String()
			}
			by := "-"
			if h.Task != nil {
				by = proc(h.Task.Comm, h.Task.PID)
			}
			t.add(plain(clock(now, h.At)), plain(from), plain(h.To.String()), plain(h.Source), plain(by))
		}
		t.write(b)
	}
}
