package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

// killEffect says what each mode does to each side.
var killEffect = map[bool]string{
	false: "abort: RST to the peer, ECONNABORTED to the holder's next call",
	true:  "graceful: shutdown() on a holder's fd sends the FIN the application meant to send; the peer reads EOF",
}

// stdinTerminal reports whether the CLI can ask for a confirmation; tests
// replace it.
var stdinTerminal = func() bool {
	_, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS)
	return err == nil
}

// confirmInput is where the confirmation is read from.
var confirmInput io.Reader = os.Stdin

func runKill(args []string, stdout, stderr io.Writer) error {
	var graceful *bool
	return runAction(actionCommand{
		name: "kill",
		usage: `usage: ghostconn kill [TARGET...] [flags]

Aborts the connections that match, by socket cookie in each socket's own
network namespace: the peer gets a RST, the holder ECONNABORTED. With
--graceful it sends the FIN instead, through a holder's fd. The holder's
fd stays open either way: the application still has to close it.`,
		flags: func(fs *flag.FlagSet) func() error {
			graceful = fs.Bool("graceful", false, "send a FIN through a holder's fd (shutdown) instead of aborting: the peer sees a normal close")
			return func() error { return nil }
		},
		plan: func() string { return killEffect[*graceful] },
		act: func(ctx context.Context, sock string, matched []collector.ConnView, snapshot, allowListen bool) ([]collector.ActionResult, error) {
			if snapshot {
				return collector.OneShotKill(matched, *graceful, allowListen)
			}
			req := collector.KillRequest{Graceful: *graceful, AllowListen: allowListen}
			for _, v := range matched {
				req.Cookies = append(req.Cookies, v.Cookie)
			}
			return exporter.NewClient(sock).Kill(ctx, req)
		},
	}, args, stdout, stderr)
}

func runKeepalive(args []string, stdout, stderr io.Writer) error {
	var idle, interval, userTimeout *time.Duration
	var count *int
	var req collector.KeepaliveRequest
	return runAction(actionCommand{
		name: "keepalive",
		usage: `usage: ghostconn keepalive [TARGET...] [flags] --idle D --interval D --count N [--user-timeout D]

Arms TCP keepalive (and optionally TCP_USER_TIMEOUT) on the live
connections that match, without restarting the application: a silent
connection survives the NAT or load balancer, and a dead peer is found
after idle + interval x count. The application's own getsockopt sees the
new values.`,
		flags: func(fs *flag.FlagSet) func() error {
			idle = fs.Duration("idle", 0, "idle time before the first probe (TCP_KEEPIDLE; whole seconds, 1s to 32767s)")
			interval = fs.Duration("interval", 0, "time between probes (TCP_KEEPINTVL; whole seconds)")
			count = fs.Int("count", 0, "unanswered probes before the kernel gives up (TCP_KEEPCNT; 1 to 127)")
			userTimeout = fs.Duration("user-timeout", 0, "also set TCP_USER_TIMEOUT: how long sent data may stay unacknowledged (0 leaves it)")
			return func() error {
				for _, d := range []struct {
					name string
					v    time.Duration
				}{{"idle", *idle}, {"interval", *interval}} {
					if d.v <= 0 || d.v%time.Second != 0 {
						return usagef("--%s=%s: want a whole number of seconds, at least 1s", d.name, d.v)
					}
				}
				if *userTimeout < 0 || *userTimeout%time.Millisecond != 0 {
					return usagef("--user-timeout=%s: want a whole number of milliseconds, or 0", *userTimeout)
				}
				req = collector.KeepaliveRequest{IdleSeconds: int32(min(*idle/time.Second, 1<<30)), IntervalSeconds: int32(min(*interval/time.Second, 1<<30)),
					Count: int32(min(max(*count, -1), 1<<30)), UserTimeoutMs: int32(min(*userTimeout/time.Millisecond, 1<<30))}
				if err := req.Check(); err != nil {
					return usageError{err.Error()}
				}
				return nil
			}
		},
		plan: func() string {
			p := fmt.Sprintf("keepalive: idle %s, interval %s, count %d (a dead peer is given up after %s)", *idle, *interval, *count, *idle+*interval*time.Duration(*count))
			if *userTimeout > 0 {
				p += fmt.Sprintf(", TCP_USER_TIMEOUT %s", *userTimeout)
			}
			return p
		},
		act: func(ctx context.Context, sock string, matched []collector.ConnView, snapshot, _ bool) ([]collector.ActionResult, error) {
			r := req
			for _, v := range matched {
				r.Cookies = append(r.Cookies, v.Cookie)
			}
			if snapshot {
				return collector.OneShotKeepalive(matched, r)
			}
			return exporter.NewClient(sock).Keepalive(ctx, r)
		},
	}, args, stdout, stderr)
}

// actionCommand is what kill and keepalive differ in.
type actionCommand struct {
	name, usage string
	// flags registers the command's own flags and returns their check.
	flags func(fs *flag.FlagSet) func() error
	// plan says what will be done to each connection.
	plan func() string
	// act does it, through the agent or (snapshot) alone.
	act func(ctx context.Context, sock string, matched []collector.ConnView, snapshot, allowListen bool) ([]collector.ActionResult, error)
}

// runAction selects connections as ls does, shows them with the plan,
// asks (or takes --yes), acts, and prints what was done: the safety rules
// kill and keepalive share.
func runAction(cmd actionCommand, args []string, stdout, stderr io.Writer) error {
	fs := newFlags(cmd.name, stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, cmd.usage+`

TARGET is what 'who' takes: an ip:port of either end, a socket inode or a
socket cookie. With neither a TARGET nor a filter it refuses.

flags:`)
		fs.PrintDefaults()
	}
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "table", "output format: table or json")
	ff := addFilterFlags(fs, false)
	olderThan := fs.Duration("older-than", 0, "only connections whose oldest verdict (or, without --verdict, the connection itself) is older than this")
	check := cmd.flags(fs)
	dryRun := fs.Bool("dry-run", false, "show what matches and what would be done, and do nothing")
	yes := fs.Bool("yes", false, "act without asking")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := checkOutput(*output, "table", "json"); err != nil {
		return err
	}
	if *olderThan < 0 {
		return usagef("--older-than=%s must not be negative", *olderThan)
	}
	if err := check(); err != nil {
		return err
	}
	targets := make([]exporter.Target, 0, len(pos))
	for _, p := range pos {
		t, err := exporter.ParseTarget(p)
		if err != nil {
			return usageError{err.Error()}
		}
		targets = append(targets, t)
	}
	f, err := ff.filter()
	if err != nil {
		return err
	}
	given := false
	fs.Visit(func(fl *flag.Flag) {
		if _, ok := ff.values[fl.Name]; ok || fl.Name == "older-than" {
			given = true
		}
	})
	if len(targets) == 0 && !given {
		return usagef("refusing to act on every connection: name a TARGET or a filter (--verdict, --state, --pid, --comm, --port, --remote, --older-than)")
	}
	allowListen := f.State == collector.StateListen

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	matched, snapshot, err := killMatches(ctx, *apiSocket, f, targets, stderr, cmd.name)
	if err != nil {
		return err
	}
	now := time.Now()
	kept := matched[:0]
	for _, v := range matched {
		if !collector.Killable(v.State, allowListen) {
			continue
		}
		if *olderThan > 0 && !olderThanAge(&v, f.Verdict, *olderThan, now) {
			continue
		}
		kept = append(kept, v)
	}
	matched = kept
	if len(matched) == 0 {
		fmt.Fprintf(stderr, "ghostconn %s: no connection matches (only ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK and CLOSING sockets are acted on; LISTEN only with --state LISTEN)\n", cmd.name)
		return errNoMatch
	}
	if *output == "table" {
		if err := printTable(stdout, matched, now, false, snapshot, painter(colorEnabled(stdout))); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "\n%d connection(s) will be acted on: %s\n", len(matched), cmd.plan())
	if *dryRun {
		fmt.Fprintln(stderr, "dry run: nothing was done")
		if *output == "json" {
			return writeJSONTo(stdout, matched)
		}
		return nil
	}
	if !*yes {
		if !stdinTerminal() {
			return usagef("refusing to act without --yes: there is no terminal to confirm on (nothing was done; --dry-run shows what would be)")
		}
		fmt.Fprintf(stderr, "Proceed? [y/N] ")
		line, _ := bufio.NewReader(confirmInput).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			fmt.Fprintln(stderr, "nothing was done")
			return errNoMatch
		}
	}
	results, err := cmd.act(ctx, *apiSocket, matched, snapshot, allowListen)
	switch {
	case errors.Is(err, exporter.ErrAgentReadOnly):
		return fmt.Errorf("the agent on %s runs with --read-only and refuses every action: nothing was done", *apiSocket)
	case err != nil && !snapshot:
		return agentError(*apiSocket, err)
	case err != nil:
		return err
	}
	if *output == "json" {
		if err := writeJSONTo(stdout, results); err != nil {
			return err
		}
	} else {
		printActionResults(stdout, results)
	}
	failed := 0
	for _, r := range results {
		if !r.Done && !r.Gone {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d connection(s) not done (each is named above with the reason)", failed, len(results))
	}
	return nil
}

// killMatches returns the connections that pass f and match any of the
// targets (all of them when there is none), each once.
func killMatches(ctx context.Context, sock string, f exporter.Filter, targets []exporter.Target, stderr io.Writer, name string) ([]collector.ConnView, bool, error) {
	if len(targets) == 0 {
		return connections(ctx, sock, f, stderr)
	}
	seen := map[uint64]bool{}
	var out []collector.ConnView
	snapshot := false
	for i := range targets {
		f.Target = &targets[i]
		conns, snap, err := connections(ctx, sock, f, io.Discard)
		if err != nil {
			return nil, false, err
		}
		snapshot = snap
		for _, c := range conns {
			if !seen[c.Cookie] {
				seen[c.Cookie] = true
				out = append(out, c)
			}
		}
	}
	if snapshot {
		fmt.Fprintf(stderr, "ghostconn: no agent on %s; one-shot snapshot from the kernel iterators, and %s acts itself (ghost and close-wait verdicts need the agent)\n", sock, name)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cookie < out[j].Cookie })
	return out, snapshot, nil
}

// olderThanAge reports whether v's oldest verdict (of kind verdict, when
// given), or without a verdict filter the connection itself, is older than
// d.
func olderThanAge(v *collector.ConnView, verdict string, d time.Duration, now time.Time) bool {
	if verdict == "" {
		return now.Sub(v.FirstSeen) > d
	}
	for _, vd := range v.Verdicts {
		if vd.Kind == verdict && now.Sub(vd.Since) > d {
			return true
		}
	}
	return false
}

func writeJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printActionResults writes one line per connection acted on, and for
// each one killed a reminder of who still holds it.
func printActionResults(w io.Writer, results []collector.ActionResult) {
	fmt.Fprintln(w)
	for _, r := range results {
		status := "done"
		switch {
		case r.Gone:
			status = r.Error
		case !r.Done:
			status = "FAILED: " + r.Error
		}
		via := r.Mechanism
		if via == "" {
			via = "-"
		}
		fmt.Fprintf(w, "%-8s %s -> %s (cookie %d, was %s, via %s, now %s): %s\n", r.Mode, r.Local, r.Remote, r.Cookie, r.State, via, orDash(r.After), status)
		if r.Done && r.Mode != collector.ModeKeepalive && len(r.Holders) > 0 {
			var hs []string
			for _, h := range r.Holders {
				hs = append(hs, fmt.Sprintf("pid %d (%s) fd %d", h.PID, h.Comm, h.FD))
			}
			fmt.Fprintf(w, "         still held by %s: the fd stays open until the application closes it or exits; fix or restart it\n", strings.Join(hs, ", "))
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
