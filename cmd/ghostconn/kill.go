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
	fs := newFlags("kill", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: ghostconn kill [TARGET...] [flags]

Aborts the connections that match, by socket cookie in each socket's own
network namespace: the peer gets a RST, the holder ECONNABORTED. With
--graceful it sends the FIN instead, through a holder's fd. The holder's
fd stays open either way: the application still has to close it.

TARGET is what 'who' takes: an ip:port of either end, a socket inode or a
socket cookie. With neither a TARGET nor a filter, kill refuses.

flags:`)
		fs.PrintDefaults()
	}
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "table", "output format: table or json")
	ff := addFilterFlags(fs, false)
	olderThan := fs.Duration("older-than", 0, "only connections whose oldest verdict (or, without --verdict, the connection itself) is older than this")
	graceful := fs.Bool("graceful", false, "send a FIN through a holder's fd (shutdown) instead of aborting: the peer sees a normal close")
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
	matched, snapshot, err := killMatches(ctx, *apiSocket, f, targets, stderr)
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
		fmt.Fprintln(stderr, "ghostconn kill: no connection matches (only ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK and CLOSING sockets are killed; LISTEN only with --state LISTEN)")
		return errNoMatch
	}
	if *output == "table" {
		if err := printTable(stdout, matched, now, false, snapshot, painter(colorEnabled(stdout))); err != nil {
			return err
		}
	}
	plan := fmt.Sprintf("%d connection(s) will be acted on: %s", len(matched), killEffect[*graceful])
	fmt.Fprintf(stderr, "\n%s\n", plan)
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
	req := collector.KillRequest{Graceful: *graceful, AllowListen: allowListen}
	for _, v := range matched {
		req.Cookies = append(req.Cookies, v.Cookie)
	}
	var results []collector.KillResult
	if snapshot {
		results, err = collector.OneShotKill(matched, *graceful, allowListen)
	} else {
		results, err = exporter.NewClient(*apiSocket).Kill(ctx, req)
		if errors.Is(err, exporter.ErrAgentReadOnly) {
			return fmt.Errorf("the agent on %s runs with --read-only and refuses every action: nothing was done", *apiSocket)
		}
		if err != nil {
			err = agentError(*apiSocket, err)
		}
	}
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := writeJSONTo(stdout, results); err != nil {
			return err
		}
	} else {
		printKillResults(stdout, results)
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
func killMatches(ctx context.Context, sock string, f exporter.Filter, targets []exporter.Target, stderr io.Writer) ([]collector.ConnView, bool, error) {
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
		fmt.Fprintf(stderr, "ghostconn: no agent on %s; one-shot snapshot from the kernel iterators, and kill acts itself (ghost and close-wait verdicts need the agent)\n", sock)
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

// printKillResults writes one line per connection acted on, and for each
// one done a reminder of who still holds it.
func printKillResults(w io.Writer, results []collector.KillResult) {
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
		if r.Done && len(r.Holders) > 0 {
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
