package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func runLs(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ls", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "table", "output format: table or json")
	closed := fs.Bool("closed", false, "include recently closed connections")
	verdict := fs.String("verdict", "", "only connections with this verdict: "+strings.Join(collector.VerdictKinds, ", "))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *verdict != "" {
		if _, err := collector.ParseVerdict(*verdict); err != nil {
			return usageError{err.Error()}
		}
	}
	if *output != "table" && *output != "json" {
		return usagef("-o %q: use table or json", *output)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conns, err := exporter.NewClient(*apiSocket).Connections(ctx, exporter.Filter{Closed: *closed, Verdict: *verdict})
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(conns); err != nil {
			return err
		}
	} else {
		printTable(stdout, conns, time.Now())
	}
	if len(conns) == 0 {
		return errNoMatch
	}
	return nil
}

func printTable(w io.Writer, conns []collector.ConnView, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tLOCAL\tREMOTE\tPROCESS\tIDLE\tRETRANS\tVERDICTS")
	for _, c := range conns {
		idle := "-"
		if c.IdleSeconds != nil {
			idle = humanDuration(time.Duration(*c.IdleSeconds * float64(time.Second)))
		}
		var verdicts []string
		for _, v := range c.Verdicts {
			verdicts = append(verdicts, v.Kind)
		}
		vs := strings.Join(verdicts, ",")
		if vs == "" {
			vs = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c.State, c.Local, c.Remote, holdersText(c.Holders), idle, c.Retransmits, vs)
	}
	tw.Flush()
}

func holdersText(hs []collector.Holder) string {
	if len(hs) == 0 {
		return "-"
	}
	s := fmt.Sprintf("%s/%d fd=%d", hs[0].Comm, hs[0].PID, hs[0].FD)
	if len(hs) > 1 {
		s += fmt.Sprintf(" +%d", len(hs)-1)
	}
	return s
}

// humanDuration prints durations the way people read them: 850ms, 42s,
// 3m12s, 5h4m, 2d3h.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
