package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func runLs(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ls", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "table", "output format: table, wide or json")
	ff := addFilterFlags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkOutput(*output, "table", "wide", "json"); err != nil {
		return err
	}
	f, err := ff.filter()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if *output == "json" {
		// The agent's answer is already the JSON to print: copy it
		// through (at 100k connections decoding and re-encoding would
		// take most of the time).
		n, err := exporter.NewClient(*apiSocket).ConnectionsRaw(ctx, f, stdout)
		switch {
		case err == nil && n == 0:
			fmt.Fprintln(stderr, "ghostconn ls: no connection matches")
			return errNoMatch
		case err == nil:
			return nil
		case !errors.Is(err, exporter.ErrNoAgent):
			return agentError(*apiSocket, err)
		}
	}
	conns, snapshot, err := connections(ctx, *apiSocket, f, stderr)
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := exporter.WriteConnViews(stdout, conns); err != nil {
			return err
		}
	} else if len(conns) > 0 {
		if err := printTable(stdout, conns, time.Now(), *output == "wide", snapshot, painter(colorEnabled(stdout))); err != nil {
			return err
		}
	}
	if len(conns) == 0 {
		fmt.Fprintln(stderr, "ghostconn ls: no connection matches")
		return errNoMatch
	}
	return nil
}

// printTable prints connections as aligned columns:
//
//	table: STATE LOCAL REMOTE PROCESS IDLE RETRANS VERDICTS
//	wide:  the same, then COOKIE INODE UID KEEPALIVE SENDQ RECVQ AGE HOLDERS
//
// A socket held by more than one fd is marked "+N*" in PROCESS, and a
// footer explains the mark. A one-shot snapshot knows no ages.
func printTable(w io.Writer, conns []collector.ConnView, now time.Time, wide, snapshot bool, p painter) error {
	t := table{header: []string{"STATE", "LOCAL", "REMOTE", "PROCESS", "IDLE", "RETRANS", "VERDICTS"}}
	if wide {
		t.header = append(t.header, "COOKIE", "INODE", "UID", "KEEPALIVE", "SENDQ", "RECVQ", "AGE", "HOLDERS")
	}
	anyShared := false
	for i := range conns {
		c := &conns[i]
		anyShared = anyShared || shared(c.Holders)
		row := []cell{
			plain(c.State.String()), plain(c.Local), plain(c.Remote), plain(processText(c)),
			plain(idleText(c)), plain(strconv.FormatUint(uint64(c.Retransmits), 10)), verdictsCell(p, c.Verdicts),
		}
		if wide {
			uid := "-"
			if c.UID != nil {
				uid = strconv.FormatUint(uint64(*c.UID), 10)
			}
			age := ago(now, c.FirstSeen)
			if snapshot {
				age = "-"
			}
			row = append(row,
				plain(strconv.FormatUint(c.Cookie, 10)), plain(strconv.FormatUint(c.Inode, 10)), plain(uid),
				plain(keepaliveText(c.Keepalive)),
				plain(strconv.FormatUint(uint64(c.SendQueue), 10)), plain(strconv.FormatUint(uint64(c.RecvQueue), 10)),
				plain(age), plain(holdersList(c.Holders)))
		}
		t.add(row...)
	}
	if err := t.write(w); err != nil {
		return err
	}
	if anyShared {
		hint := "-o wide"
		if wide {
			hint = "HOLDERS"
		}
		_, err := fmt.Fprintf(w, "\n* shared: more than one fd refers to the socket, in one process or several (+N more holders; see %s or 'ghostconn who')\n", hint)
		return err
	}
	return nil
}
