// Command ghostconn watches every TCP connection on a Linux host from inside
// the kernel and tells which ones have gone quietly wrong.
//
//	ghostconn agent    run the agent (root)
//	ghostconn ls       list connections
//	ghostconn who      everything about one connection
//	ghostconn watch    a live stream of state and verdict changes
//	ghostconn status   the agent's account of itself
//	ghostconn kill       abort or close matching connections
//	ghostconn keepalive  arm keepalive on matching connections
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Exit codes: results, no match, error.
const (
	exitOK      = 0
	exitNoMatch = 1
	exitError   = 2
)

// usageError is bad input from the user: it is printed with a hint and
// exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// errNoMatch makes a command exit 1 without a message.
var errNoMatch = errors.New("no match")

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"agent", "run the agent: load the eBPF programs, keep the table, serve the API", runAgent},
	{"ls", "list connections with their verdicts", runLs},
	{"who", "show everything about one connection: verdicts, holders, closer, history", runWho},
	{"watch", "stream state and verdict changes as they happen", runWatch},
	{"top", "a live full-screen view: counts, rates and the flagged connections first", runTop},
	{"status", "show the agent's counters: events read and lost, programs attached", runStatus},
	{"kill", "abort (or, with --graceful, close) the connections that match: exact, confirmed, audited", runKill},
	{"keepalive", "arm TCP keepalive on the connections that match, without restarting the application", runKeepalive},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitError
		}
		return exitOK
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.Is(err, errNoMatch):
			return exitNoMatch
		}
		fmt.Fprintf(stderr, "ghostconn %s: %v\n", c.name, err)
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "run 'ghostconn %s -h' for usage\n", c.name)
		}
		return exitError
	}
	fmt.Fprintf(stderr, "ghostconn: unknown command %q\n", args[0])
	usage(stderr)
	return exitError
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ghostconn COMMAND [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
}

// newFlags returns a flag set whose parse errors are usage errors (exit 2)
// and whose -h prints to stderr and exits 0.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ghostconn "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
